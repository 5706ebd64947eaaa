"""One way to build a run: ``setup(config) -> Run``.

The trainer, the benchmarks and the sweeps all start here. ``setup`` trusts
its input (the CLI validated it) and traces the train state once: one
``jax.eval_shape`` gives the abstract state, its shardings follow from the
parameters' logical axes.

The jitted train and eval steps and the state initializer are cached per
*static* config: runs that differ only in runtime values (learning rates and
weight decay, which live in the optimizer state; ``train.seed``, which only
changes the initial state) get the very same jitted functions, so JAX compiles
them once per process (``signflax.train.optimizer.runtime_hyperparams``). The
initializer takes the runtime values as arguments for the same reason.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

from signflax import data as data_lib
from signflax import model as model_lib
from signflax import parallel
from signflax.train import faults as faults_lib
from signflax.train import optimizer as optimizer_lib
from signflax.train import preemption
from signflax.train import step as step_lib


def transformer_config(config, vocab_size: int | None = None) -> model_lib.TransformerConfig:
  """``config.model`` as a TransformerConfig; vocab_size None = the tokenizer's, padded to 128."""
  cfg = model_lib.TransformerConfig.from_config(config.model)
  if config.model.vocab_size is None:
    vocab_size = vocab_size or data_lib.build_tokenizer(config.data).vocab_size
    cfg = dataclasses.replace(cfg, vocab_size=-(-vocab_size // 128) * 128)
  return cfg


@dataclasses.dataclass(frozen=True)
class Run:
  """Everything a training run is built from; see ``setup``."""
  config: Any
  model_config: model_lib.TransformerConfig
  mesh: Mesh
  graphdef: Any
  param_axes: Any
  num_params: int
  tx: optax.GradientTransformation
  learning_rate_fn: Callable[[Any], jax.Array]  # opt_state -> the rate the next update applies
  abstract_state: step_lib.TrainState           # ShapeDtypeStructs carrying their shardings
  shardings: step_lib.TrainState
  batch_sharding: NamedSharding
  train_step: Callable                          # jitted: (state, batch) -> (state, metrics)
  eval_step: Callable                           # jitted: (params, batch) -> mean loss
  init_fn: Callable                             # jitted: (rng, hyperparams) -> state

  def init_state(self, seed: int | None = None, params: Any = None) -> step_lib.TrainState:
    """A fresh state from ``seed`` (default ``config.train.seed``), born sharded; with
    ``params`` (e.g. imported weights), those parameters and a fresh optimizer state."""
    if params is not None:
      init = lambda p: step_lib.TrainState(jnp.zeros((), jnp.int32), p, self.tx.init(p))
      with jax.set_mesh(self.mesh):
        return jax.jit(init, out_shardings=self.shardings)(params)
    seed = self.config.train.seed if seed is None else seed
    wanted = getattr(self.abstract_state.opt_state, "hyperparams", None) or {}
    values = (optimizer_lib.injected_hyperparams(self.config.optimizer, self.config.train.steps)
              if wanted else {})
    hyperparams = {k: np.asarray(values[k], v.dtype) for k, v in wanted.items()}
    with jax.set_mesh(self.mesh):
      return self.init_fn(jax.random.key(seed), hyperparams)

  def abstract_batch(self) -> dict[str, jax.ShapeDtypeStruct]:
    t = self.config.train
    return {k: jax.ShapeDtypeStruct((t.global_batch_size, t.seq_len), jnp.int32,
                                    sharding=self.batch_sharding)
            for k in ("inputs", "targets")}


def _static_key(config, noise_stats: bool) -> str:
  """The config with every runtime value blanked: equal keys share one compiled step."""
  plain = json.loads(config.to_json_best_effort())
  if config.train.gradient_exchange == "sign_vote":  # its hyperparameters are compiled in
    return json.dumps(plain, sort_keys=True)
  opt = plain["optimizer"]
  runtime, _ = optimizer_lib.runtime_hyperparams(config.optimizer, None)
  for name in runtime:
    opt.pop(name, None)
    opt.get(config.optimizer.name, {}).pop(name, None)
  plain["train"].pop("seed", None)
  plain.pop("checkpoint", None)
  plain["nan_policy"] = config.checkpoint.nan_policy
  plain["noise_stats"] = noise_stats
  return json.dumps(plain, sort_keys=True)


_STEPS: dict[tuple[str, Mesh], tuple[Callable, Callable, Callable]] = {}


def _jitted_steps(key: str, mesh: Mesh, build: Callable) -> tuple[Callable, Callable, Callable]:
  """The jitted (train, eval, init) functions of a static config; ``build`` runs on a
  miss only."""
  if (key, mesh) not in _STEPS:
    if len(_STEPS) >= 16:  # a long sweep over static values: keep memory bounded
      _STEPS.pop(next(iter(_STEPS)))
    _STEPS[key, mesh] = build()
  return _STEPS[key, mesh]


def _init_with(model, tx, rng, hyperparams) -> step_lib.TrainState:
  """The initial state with the injected hyperparameters given (not compiled in)."""
  state = step_lib.init_state(model, tx, rng)
  if not hyperparams:
    return state
  return state._replace(opt_state=state.opt_state._replace(hyperparams=hyperparams))


def setup(config, *, vocab_size: int | None = None, noise_stats: bool | None = None,
          mesh: Mesh | None = None) -> Run:
  """Mesh, model, optimizer, abstract state and shardings, jitted steps of ``config``.

  ``vocab_size``: the tokenizer's (None = build it from ``config.data``).
  ``noise_stats``: overrides ``config.train.noise_stats`` (benchmarks turn it off).
  ``mesh``: a mesh built elsewhere (None = ``config.mesh`` over all of this job's
  devices), e.g. over the compile-only devices of a TPU topology (``signflax.tpu``).
  """
  t = config.train
  noise_stats = t.noise_stats if noise_stats is None else noise_stats
  model = transformer_config(config, vocab_size)
  mesh = parallel.make_mesh(config.mesh) if mesh is None else mesh
  graphdef, param_shapes, param_axes = model_lib.abstract_model(model)
  if t.gradient_exchange == "sign_vote":
    tx, learning_rate_fn = step_lib.make_sign_vote_optimizer(config.optimizer, t.steps,
                                                             param_axes, param_shapes, mesh)
  else:
    tx, learning_rate_fn = optimizer_lib.make_optimizer(config.optimizer, t.steps, param_axes)
  abstract = jax.eval_shape(lambda: step_lib.init_state(model, tx, jax.random.key(0)))
  shardings = parallel.state_shardings(abstract, param_axes, mesh)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)

  faults = faults_lib.from_config(t.get("faults"), mesh.shape["data"])
  vote_fn = (step_lib.make_vote_fn(param_axes, param_shapes, mesh)
             if faults is not None and t.gradient_exchange == "sign_vote" else None)

  def build():
    step = step_lib.make_train_step(graphdef, tx, learning_rate_fn, grad_accum=t.grad_accum,
                                    noise_stats=noise_stats, loss_chunk_len=t.loss_chunk_len,
                                    gradient_exchange=t.gradient_exchange, faults=faults,
                                    vote_fn=vote_fn)
    if config.checkpoint.nan_policy == "skip":
      step = preemption.guard_nonfinite(step)
    return (step_lib.jit_train_step(step, mesh, shardings),
            step_lib.jit_eval_step(step_lib.make_eval_step(graphdef, t.loss_chunk_len),
                                   mesh, shardings),
            jax.jit(functools.partial(_init_with, model, tx), out_shardings=shardings))

  train_step, eval_step, init_fn = _jitted_steps(_static_key(config, noise_stats), mesh, build)
  return Run(config=config, model_config=model, mesh=mesh, graphdef=graphdef, param_axes=param_axes,
             num_params=sum(x.size for x in jax.tree.leaves(param_shapes)), tx=tx,
             learning_rate_fn=learning_rate_fn, abstract_state=abstract, shardings=shardings,
             batch_sharding=parallel.batch_sharding(mesh), train_step=train_step,
             eval_step=eval_step, init_fn=init_fn)
