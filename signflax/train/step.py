"""Train state, the sharded train step (with gradient accumulation) and the eval step."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, PartitionSpec

from signflax import model as model_lib
from signflax import optim
from signflax import parallel
from signflax.parallel import sign_vote
from signflax.train import faults as faults_lib
from signflax.train import loss as loss_lib
from signflax.train import optimizer as optimizer_lib

Batch = dict[str, jax.Array]


class TrainState(NamedTuple):
  """Everything a step changes: a plain pytree (Orbax saves it as is)."""
  step: jax.Array       # int32 scalar
  params: Any           # nested dict of float32 arrays (see model.init_params)
  opt_state: Any        # the Optax state


def make_loss_fn(graphdef, loss_chunk_len: int = 0) -> Callable[[Any, Batch], jax.Array]:
  """params, batch -> mean next-token cross entropy (nats).

  ``loss_chunk_len = 0`` builds the whole ``[b, t, vocab]`` logits; ``c > 0`` fuses
  the output projection into the loss and holds ``[b, c, vocab]`` at a time
  (``loss.linear_cross_entropy``: same loss and gradients, a fraction of the memory).
  """
  def loss_fn(params, batch):
    if loss_chunk_len:
      hidden, head = model_lib.apply_features(graphdef, params, batch["inputs"])
      return loss_lib.linear_cross_entropy(hidden, head, batch["targets"],
                                           chunk_len=loss_chunk_len)
    return loss_lib.cross_entropy(model_lib.apply(graphdef, params, batch["inputs"]),
                                  batch["targets"])
  return loss_fn


def _tree_sum(fn, tree) -> jax.Array:
  return sum(jnp.sum(fn(x.astype(jnp.float32))) for x in jax.tree.leaves(tree))


def _microbatches(batch: Batch, num: int) -> Batch:
  """[B, T] -> [num, B/num, T], microbatch i holding examples i, i+num, ...

  Interleaving keeps each microbatch spread over every data-parallel shard (a
  contiguous split would put microbatch 0 on the first devices only).
  """
  def split(x):
    x = x.reshape((x.shape[0] // num, num) + x.shape[1:]).swapaxes(0, 1)
    return parallel.constrain(x, (None,) + parallel.BATCH_AXES + (None,) * (x.ndim - 3))
  return jax.tree.map(split, batch)


GRADIENT_EXCHANGES = ("mean", "sign_vote")
SIGN_VOTE_OPTIMIZERS = ("sign_sgd", "signum")


def make_train_step(graphdef, tx: optax.GradientTransformation,
                    learning_rate_fn: Callable[[Any], jax.Array], *, grad_accum: int = 1,
                    noise_stats: bool = True, loss_chunk_len: int = 0,
                    gradient_exchange: str = "mean", faults: faults_lib.Faults | None = None,
                    vote_fn: Callable[..., Any] | None = None
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
  """The (unjitted) train step: state, {inputs, targets} -> new state, scalar metrics.

  With ``grad_accum = A >= 2`` the batch is split into A microbatches run by
  ``lax.scan``; the step's gradient is their mean. With ``noise_stats`` the A
  per-microbatch gradients are kept (A x parameter memory) and summarized by
  ``optim.gradient_noise_stats`` (noise density of Tao et al.). ``loss_chunk_len``:
  see ``make_loss_fn``. ``learning_rate_fn(opt_state)`` is the rate the update
  applies (``optimizer.make_optimizer``), logged as ``learning_rate``.

  ``gradient_exchange = "sign_vote"``: each data-parallel replica keeps its own
  gradient (``per_replica_gradients``) and ``tx`` (from ``make_sign_vote_optimizer``)
  exchanges 1-bit votes instead of all-reducing floats. Scalar metrics are means
  over replicas; ``replica_grad_l1/l2`` (the norms of each replica's gradient,
  averaged) replace ``grad_l1/l2`` (the norms of the mean gradient, never formed);
  ``abstentions`` counts the replicas whose gradient is not finite (they do not vote).

  ``faults`` (``signflax.train.faults``; None = none) corrupts the faulty replicas'
  gradients before the exchange: the mean exchange then also takes per-replica
  gradients and averages them itself. ``vote_fn(stacked, abstain=, step=)``, the
  sign_vote exchange's vote, gives the honest-only vote logged with faults.
  """
  if gradient_exchange not in GRADIENT_EXCHANGES:
    raise ValueError(f"gradient_exchange: {gradient_exchange!r} is not one of "
                     f"{', '.join(GRADIENT_EXCHANGES)}")
  grad_fn = jax.value_and_grad(make_loss_fn(graphdef, loss_chunk_len))

  def gradients(params, batch):
    metrics = {}
    if grad_accum == 1:
      loss, grads = grad_fn(params, batch)
    elif noise_stats:
      _, (losses, stacked) = jax.lax.scan(
          lambda c, mb: (c, grad_fn(params, mb)), None, _microbatches(batch, grad_accum))
      loss, grads = jnp.mean(losses), jax.tree.map(lambda g: jnp.mean(g, axis=0), stacked)
      stats = optim.gradient_noise_stats(stacked)
      metrics.update({k: v for k, v in stats.items() if k != "per_module"})
      metrics.update({f"noise_density/{m}": s["noise_density"]
                      for m, s in stats["per_module"].items()})
    else:
      def accumulate(carry, mb):
        loss, grads = grad_fn(params, mb)
        return jax.tree.map(jnp.add, carry, (loss, grads)), None
      zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
      (loss, grads), _ = jax.lax.scan(accumulate, zeros, _microbatches(batch, grad_accum))
      loss, grads = jax.tree.map(lambda x: x / grad_accum, (loss, grads))
    return loss, grads, metrics

  def train_step(state: TrainState, batch: Batch):
    if gradient_exchange == "sign_vote":
      metrics, grads = per_replica_gradients(gradients, state.params, batch)
      if faults is not None:
        grads, active = faults_lib.corrupt(grads, faults, state.step)
        metrics.update(faults_lib.vote_metrics(grads, active, state.step, vote_fn))
      # a float: the one scalar summed over `data` stays a float all-reduce like the metrics
      metrics["abstentions"] = jnp.sum(sign_vote.nonfinite_replicas(grads).astype(jnp.float32))
    elif faults is not None:  # branch at trace time: without faults none of this is traced
      metrics, grads = per_replica_gradients(gradients, state.params, batch)
      grads, active = faults_lib.corrupt(grads, faults, state.step)
      grads, fault_metrics = faults_lib.mean_metrics(grads, active)
      metrics.update(fault_metrics, grad_l1=_tree_sum(jnp.abs, grads),
                     grad_l2=jnp.sqrt(_tree_sum(jnp.square, grads)))
    else:
      loss, grads, metrics = gradients(state.params, batch)
      metrics.update(loss=loss, grad_l1=_tree_sum(jnp.abs, grads),
                     grad_l2=jnp.sqrt(_tree_sum(jnp.square, grads)))
    # Read before the update: the rate this update applies, from the optimizer's own count.
    learning_rate = learning_rate_fn(state.opt_state)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    num_params = float(sum(x.size for x in jax.tree.leaves(params)))  # > 2**31 for 8B models
    metrics.update(
        learning_rate=learning_rate,
        update_rms=jnp.sqrt(_tree_sum(jnp.square, updates) / num_params),
        param_l2=jnp.sqrt(_tree_sum(jnp.square, params)),
    )
    return TrainState(state.step + 1, params, opt_state), metrics

  return train_step


def per_replica_gradients(gradients, params, batch: Batch, axis: str = "data"):
  """Each replica's gradient of its own rows, stacked: ``(scalar metrics, grads [R, ...])``.

  ``gradients(params, batch) -> (loss, grads, metrics)`` runs inside a ``shard_map``
  manual over ``axis`` only: a replica sees its ``B/R`` rows, and the other mesh
  axes (fsdp, tensor) keep their automatic sharding and reductions inside it.
  Nothing gradient-sized is reduced over ``axis``; the scalars are ``pmean``-ed.
  """
  def one_replica(params, batch):
    loss, grads, metrics = gradients(params, batch)
    metrics.update(loss=loss, replica_grad_l1=_tree_sum(jnp.abs, grads),
                   replica_grad_l2=jnp.sqrt(_tree_sum(jnp.square, grads)))
    return jax.lax.pmean(metrics, axis), jax.tree.map(lambda g: g[None], grads)

  # check_vma off: with it, jax casts the replicated params to varying inside the
  # loss, and that cast's transpose psums every gradient over `axis` (the very
  # all-reduce the vote replaces); the scans' float carries would need casts too.
  return jax.shard_map(one_replica, in_specs=(PartitionSpec(), PartitionSpec(axis)),
                       out_specs=(PartitionSpec(), PartitionSpec(axis)),
                       axis_names={axis}, check_vma=False)(params, batch)


def make_sign_vote_optimizer(opt_config, total_steps: int, param_axes, param_shapes,
                             mesh: Mesh, *, exchange: str = "all_to_all"
                             ) -> tuple[optax.GradientTransformation, Callable[[Any], jax.Array]]:
  """``(tx, applied_learning_rate)`` for sign_sgd / signum with a 1-bit majority vote over ``data``.

  The replicas run the local part (signum: their own momentum; sign_sgd: nothing;
  ``grad_clip_norm`` per replica, before the momentum), vote, and every replica
  applies ``sign_sgd`` (weight decay and learning rate) to the voted signs: the
  update rule of ``config.optimizer.name`` with ``sign(m)`` replaced by the vote.
  ``tx.update`` takes stacked per-replica gradients (see ``per_replica_gradients``).
  ``opt_config.name`` is one of ``SIGN_VOTE_OPTIMIZERS`` (``signflax.train.schema``'s rule).
  """
  schedule = optimizer_lib.make_schedule(opt_config, total_steps)
  kwargs = optimizer_lib.optimizer_kwargs(opt_config, param_axes)
  outer = optim.sign_sgd(schedule, weight_decay=kwargs.pop("weight_decay"),
                         weight_decay_mask=kwargs.pop("weight_decay_mask", None))
  local = optim.scale_by_signum(**kwargs) if opt_config.name == "signum" else optax.identity()
  if opt_config.grad_clip_norm:
    local = optax.chain(optax.clip_by_global_norm(opt_config.grad_clip_norm), local)
  specs = vote_specs(param_axes, param_shapes, mesh)
  tx = sign_vote.majority_vote(local, outer, mesh=mesh, specs=specs, exchange=exchange)
  # The hyperparameters are compile-time constants here (no inject_hyperparams), so
  # setup's step cache keys sign-vote runs on their whole config.
  return tx, lambda opt_state: schedule(opt_state.count)


def vote_specs(param_axes, param_shapes, mesh: Mesh) -> Any:
  """Each parameter's ``PartitionSpec`` over the mesh: what ``sign_vote.vote`` takes."""
  return jax.tree.map(
      lambda axes, x: parallel.logical_to_mesh_spec(axes, shape=x.shape, mesh=mesh),
      param_axes, param_shapes, is_leaf=lambda x: isinstance(x, tuple))


def make_vote_fn(param_axes, param_shapes, mesh: Mesh, *, exchange: str = "all_to_all"):
  """``(stacked, abstain=, step=) -> voted signs``: the sign_vote exchange's vote over ``data``."""
  specs = vote_specs(param_axes, param_shapes, mesh)
  return lambda stacked, *, abstain, step: sign_vote.vote(
      stacked, specs, mesh=mesh, step=step, exchange=exchange, abstain=abstain)


def make_eval_step(graphdef, loss_chunk_len: int = 0) -> Callable[[Any, Batch], jax.Array]:
  """params, batch -> mean cross entropy of the batch."""
  return make_loss_fn(graphdef, loss_chunk_len)


def init_state(model_config, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
  """The initial train state (unjitted; see ``create_sharded_state``)."""
  params = model_lib.init_params(model_config, rng)
  return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))


def state_shardings(model_config, tx, mesh: Mesh, param_axes) -> TrainState:
  """NamedShardings of the train state from the parameters' logical axes."""
  abstract = jax.eval_shape(lambda: init_state(model_config, tx, jax.random.key(0)))
  return parallel.state_shardings(abstract, param_axes, mesh)


def create_sharded_state(model_config, tx, mesh: Mesh, param_axes, seed: int
                         ) -> tuple[TrainState, TrainState]:
  """Initializes the state directly into its shardings; returns (state, shardings)."""
  shardings = state_shardings(model_config, tx, mesh, param_axes)
  with jax.set_mesh(mesh):
    state = jax.jit(lambda rng: init_state(model_config, tx, rng),
                    out_shardings=shardings)(jax.random.key(seed))
  return state, shardings


def jit_train_step(train_step, mesh: Mesh, shardings: TrainState):
  """jit with explicit in/out shardings; the input state is donated."""
  batch = {"inputs": parallel.batch_sharding(mesh), "targets": parallel.batch_sharding(mesh)}
  return jax.jit(train_step, in_shardings=(shardings, batch),
                 out_shardings=(shardings, parallel.replicated(mesh)), donate_argnums=0)


def jit_eval_step(eval_step, mesh: Mesh, shardings: TrainState):
  batch = {"inputs": parallel.batch_sharding(mesh), "targets": parallel.batch_sharding(mesh)}
  return jax.jit(eval_step, in_shardings=(shardings.params, batch),
                 out_shardings=parallel.replicated(mesh))
