"""``config.optimizer`` -> an Optax transformation and its learning-rate schedule."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from signflax import config_schema as cs
from signflax import optim

SCHEDULES = ("wsd", "cosine", "constant")
# Keywords the trainer fills in itself: weight decay from config.optimizer.weight_decay,
# the masks from the model's logical axes.
FROM_TRAINER = ("weight_decay", "weight_decay_mask", "muon_params", "dimension_numbers")


def config_keywords(name: str) -> tuple[str, ...]:
  """The keywords of optimizer ``name`` settable in ``config.optimizer.<name>``."""
  return tuple(k for k in optim.optimizer_keywords(name) if k not in FROM_TRAINER)


# Types of the per-optimizer keywords (config.optimizer.<name>.<keyword>; None = the
# optimizer's default). Named choices (Muon's coeffs, scale, fallback; dtypes) are the
# library's to check: ``check_optimizer`` builds the optimizer once and names the field.
_KEYWORD_TYPES = {
    "beta": cs.real(0, 1, high_open=True, optional=True),
    "b1": cs.real(0, 1, high_open=True, optional=True),
    "b2": cs.real(0, 1, high_open=True, optional=True),
    "eps": cs.real(0, low_open=True, optional=True),
    "nesterov": cs.boolean(optional=True),
    "steps": cs.integer(1, optional=True),
    "rms_target": cs.real(0, low_open=True, optional=True),
    "fallback_learning_rate": cs.real(0, low_open=True, optional=True),
    **{k: cs.string(optional=True) for k in ("coeffs", "scale", "fallback", "mu_dtype",
                                             "ns_dtype")},
    "ns_impl": cs.choice(*optim.NS_IMPLS, optional=True),
}
# Keyword defaults the trainer sets where the library's would not suit it.
_KEYWORD_DEFAULTS = {
    ("muon", "ns_dtype"): ("auto", "Newton-Schulz in float32 on CPU, bfloat16 on GPU/TPU"),
}


def _keyword_group(name: str) -> cs.Schema:
  """``config.optimizer.<name>``: the optimizer's keywords, None = its own default."""
  parameters = inspect.signature(optim.OPTIMIZERS[name]).parameters
  fields = {}
  for key in optim.optimizer_keywords(name):
    if key in FROM_TRAINER:
      continue  # the trainer fills these in: config.optimizer.weight_decay, the masks
    library = parameters[key].default
    field = _KEYWORD_TYPES.get(
        key, cs.real(optional=True) if isinstance(library, float) else cs.anything())
    default, doc = _KEYWORD_DEFAULTS.get((name, key), (None, ""))
    doc = doc or f"None = the library default ({library!r})"
    fields[key] = dataclasses.replace(field, default=default, doc=doc)
  return cs.Schema(fields, doc=f"Keywords of ``signflax.optim.{name}`` (used when "
                               f"config.optimizer.name is {name!r}).")


SCHEMA = cs.Schema({
    "name": cs.choice(*optim.OPTIMIZERS, default="adamw",
                      doc="one of signflax.optim.OPTIMIZERS; only its keyword group is used"),
    "learning_rate": cs.real(0, low_open=True, default=1e-3,
                             doc="the peak learning rate"),
    "schedule": cs.choice(*SCHEDULES, default="wsd",
                          doc="after warmup_steps of linear warmup: warmup-stable-decay, "
                              "cosine or constant"),
    "warmup_steps": cs.integer(0, default=0, doc="linear warmup steps"),
    "decay_fraction": cs.real(0, 1, default=0.2,
                              doc="wsd: the share of the steps spent decaying"),
    "decay_shape": cs.string(default="linear",
                             doc="wsd decay shape (see signflax.optim.wsd_schedule)"),
    "final_lr_fraction": cs.real(0, 1, default=0.0,
                                 doc="the rate at the end, as a fraction of the peak"),
    "weight_decay": cs.real(0, default=0.1,
                            doc="decoupled, applied to weight matrices only"),
    "grad_clip_norm": cs.real(0, default=0.0,
                              doc="global-norm clipping, 0 = off (a no-op before a sign)"),
    **{name: _keyword_group(name) for name in optim.OPTIMIZERS},
}, doc="The optimizer and its learning-rate schedule. Each optimizer has its own keyword "
       "group, so switching config.optimizer.name keeps every group valid.")


def default_optimizer_config() -> ml_collections.ConfigDict:
  """The ``config.optimizer`` fields at their defaults (declared in ``SCHEMA``)."""
  return SCHEMA.defaults()


def check_keyword_groups(opt_config) -> None:
  """Raises a one-line ValueError for a keyword the group's optimizer does not take."""
  for name in optim.OPTIMIZERS:
    group = opt_config.get(name) or {}
    allowed = config_keywords(name)
    wrong = sorted(k for k in group if k not in allowed)
    if wrong:
      raise ValueError(f"config.optimizer.{name}: {', '.join(wrong)} not accepted by "
                       f"{name!r}; allowed: {', '.join(allowed)}")


def check_optimizer(opt_config, total_steps: int) -> None:
  """Builds the schedule and the optimizer once with plain values, so the library checks
  every hyperparameter; its error is re-raised naming the config field."""
  runtime, static = runtime_hyperparams(opt_config, None)
  try:
    make_schedule(opt_config, total_steps)
    optim.get_optimizer(opt_config.name, **runtime, **static)
  except (ValueError, TypeError) as e:
    argument, _, message = str(e).partition(": ")
    group = opt_config.get(opt_config.name) or {}
    field = (f"{opt_config.name}.{argument}" if argument in group else argument
             if argument in opt_config else None)
    if field is None:
      raise ValueError(f"config.optimizer ({opt_config.name}): {e}") from e
    raise ValueError(f"config.optimizer.{field}: {message}") from e


def make_schedule(opt_config, total_steps: int, peak: float | None = None) -> optax.Schedule:
  """Warmup-stable-decay (default), warmup + cosine, or warmup + constant.

  ``peak`` overrides ``opt_config.learning_rate``; ``peak=1.0`` gives the
  shape of the schedule; ``make_optimizer`` passes each injected peak rate.
  """
  peak = opt_config.learning_rate if peak is None else peak
  warmup = opt_config.warmup_steps
  end = peak * opt_config.final_lr_fraction
  if opt_config.schedule == "wsd":
    return optim.wsd_schedule(peak, total_steps, warmup_steps=warmup,
                              decay_fraction=opt_config.decay_fraction, end_value=end,
                              decay_shape=opt_config.decay_shape)
  if opt_config.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total_steps, warmup + 1),
                                              end_value=end)
  if not warmup:
    return optax.constant_schedule(peak)
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup),
                               optax.constant_schedule(peak)], [warmup])


def _is_matrix(axes: tuple[str, ...]) -> bool:
  """A weight matrix (per layer): two or more axes besides the stacked 'layers' axis."""
  return sum(a != "layers" for a in axes) >= 2


def optimizer_kwargs(opt_config, param_axes: Any) -> dict[str, Any]:
  """Keyword arguments for ``optim.get_optimizer`` from the config and the model's axes.

  The group ``config.optimizer.<name>`` of the chosen optimizer gives its keywords;
  entries left at None mean "the optimizer's default". Weight
  decay applies to matrices only (not norm scales); Muon gets the hidden matrices
  (no ``vocab`` axis, i.e. not the embedding or head) from the logical axes, so
  layer-stacked norm scales (``[layers, embed]``, 2-D) are not mistaken for matrices.
  """
  group = opt_config.get(opt_config.name) or {}
  kwargs = {k: v for k, v in dict(group).items() if v is not None}
  allowed = optim.optimizer_keywords(opt_config.name)
  kwargs.setdefault("weight_decay", opt_config.weight_decay)
  is_axes = lambda x: isinstance(x, tuple)
  if "weight_decay_mask" in allowed:
    kwargs.setdefault("weight_decay_mask", jax.tree.map(_is_matrix, param_axes, is_leaf=is_axes))
  if "muon_params" in allowed:
    kwargs.setdefault("muon_params", jax.tree.map(
        lambda axes: _is_matrix(axes) and "vocab" not in axes, param_axes, is_leaf=is_axes))
  if "dimension_numbers" in allowed:  # which axes form each matrix, from the same names
    kwargs.setdefault("dimension_numbers", optim.dims_from_logical_axes(param_axes))
  return kwargs


def _is_rate(name: str) -> bool:
  return name.endswith("learning_rate")


def runtime_hyperparams(opt_config, param_axes: Any) -> tuple[dict[str, float], dict[str, Any]]:
  """Splits the optimizer's keywords into ``(runtime, static)``.

  Runtime values (the peak rates and weight decay) live in the optimizer state
  through ``optax.inject_hyperparams`` (each rate as its ``rate_table``), so runs
  that differ only in them share one compiled train step and get the very numbers
  compiled-in constants give. Everything else is static,
  betas included: optax computes ``1 - beta`` in Python's float64 for a constant
  but in float32 for an injected value, which would change every update in its
  last bits (and a run's loss curve with it).
  """
  kwargs = optimizer_kwargs(opt_config, param_axes)
  defaults = inspect.signature(optim.OPTIMIZERS[opt_config.name]).parameters
  runtime, static = {"learning_rate": float(opt_config.learning_rate)}, {}
  for name in optim.optimizer_keywords(opt_config.name):
    value = kwargs.get(name, defaults[name].default)
    if ((_is_rate(name) or name == "weight_decay") and isinstance(value, (int, float))
        and not isinstance(value, bool)):
      runtime[name] = float(value)
    elif name in kwargs:
      static[name] = value
  return runtime, static


def rate_table(opt_config, total_steps: int, peak: float) -> np.ndarray:
  """``float32[total_steps + 1]``: the schedule of ``peak`` at every step ``0..total_steps``.

  Computed by the schedule compiled with ``peak`` as a constant, one scalar step at
  a time: the very numbers a schedule compiled into the train step gives. (XLA
  folds constants, e.g. ``peak * t / W`` into ``t * (peak / W)``, so the same
  formula with a traced peak differs in the last bit at some steps, and a run's
  loss curve with it.)
  """
  key = (*(opt_config[k] for k in _SCHEDULE_FIELDS), total_steps, float(peak))
  if key not in _RATE_TABLES:  # memoized: a seed sweep compiles it once
    if len(_RATE_TABLES) >= 64:
      _RATE_TABLES.pop(next(iter(_RATE_TABLES)))
    schedule = make_schedule(opt_config, total_steps, peak=peak)
    steps = jnp.arange(total_steps + 1, dtype=jnp.int32)
    def schedule_table(steps):  # named for the compile log
      return jax.lax.map(schedule, steps)
    table = np.asarray(jax.jit(schedule_table)(steps), np.float32)
    table.flags.writeable = False
    _RATE_TABLES[key] = table
  return _RATE_TABLES[key]


_SCHEDULE_FIELDS = ("schedule", "warmup_steps", "decay_fraction", "decay_shape",
                    "final_lr_fraction")
_RATE_TABLES: dict[tuple, np.ndarray] = {}


def injected_hyperparams(opt_config, total_steps: int) -> dict[str, Any]:
  """The values ``make_optimizer`` puts in ``opt_state.hyperparams``: each rate's
  ``rate_table``, and weight decay as a float."""
  runtime, _ = runtime_hyperparams(opt_config, None)
  return {k: rate_table(opt_config, total_steps, v) if _is_rate(k) else v
          for k, v in runtime.items()}


def _lookup(table: jax.Array) -> optax.Schedule:
  """The schedule reading ``table`` at the optimizer's count (its last entry past the end)."""
  return lambda count: table[jnp.minimum(count, table.shape[0] - 1)]


def make_optimizer(opt_config, total_steps: int, param_axes: Any
                   ) -> tuple[optax.GradientTransformation, Callable[[Any], jax.Array]]:
  r"""Returns ``(tx, applied_learning_rate)``.

  ``tx``: optional global-norm clipping, then the optimizer, wrapped in
  ``optax.inject_hyperparams`` (see ``runtime_hyperparams``). Every rate (the
  peak ``learning_rate`` and, for Muon, ``fallback_learning_rate``) is
  :math:`\eta_t = \eta_{peak} \cdot s(t)` with one schedule shape ``s`` on the
  optimizer's own step count, so a fallback rate warms up and decays with the
  main one. Each rate sits in the state as its ``rate_table`` (one float per
  step), so runs that differ in their peaks share one compiled step and apply
  the numbers a compiled-in schedule gives. ``applied_learning_rate(opt_state)``
  is the main rate the next update applies, read from the optimizer's own count:
  a step skipped by ``nan_policy="skip"`` does not advance it.

  Clipping rescales the whole gradient by one positive factor, so before a sign
  it changes nothing: sign_sgd's update is identical with or without it. Where a
  momentum sits before the sign (signum, lion, Muon's momentum) it only reweights
  steps inside that average; for SGD, momentum and AdamW it bounds the step.
  """
  _, static = runtime_hyperparams(opt_config, param_axes)
  injected = injected_hyperparams(opt_config, total_steps)
  name, clip_norm = opt_config.name, opt_config.grad_clip_norm

  def build(**hyperparams):
    rates = {k: _lookup(v) for k, v in hyperparams.items() if _is_rate(k)}
    tx = optim.get_optimizer(name, **{**hyperparams, **rates, **static})
    if clip_norm:
      tx = optax.chain(optax.clip_by_global_norm(clip_norm), tx)
    return tx

  build.__signature__ = inspect.Signature(
      [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY) for k in injected])
  tx = optax.inject_hyperparams(build)(**injected)

  def applied_learning_rate(opt_state) -> jax.Array:
    return _lookup(opt_state.hyperparams["learning_rate"])(opt_state.count)

  return tx, applied_learning_rate
