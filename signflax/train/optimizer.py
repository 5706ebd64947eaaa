"""``config.optimizer`` -> an Optax transformation and its learning-rate schedule."""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax

from signflax import optim

SCHEDULES = ("wsd", "cosine", "constant")
# Keywords the trainer fills in itself: weight decay from config.optimizer.weight_decay,
# the masks from the model's logical axes.
_FROM_TRAINER = ("weight_decay", "weight_decay_mask", "muon_params", "dimension_numbers")
_SHARED_FIELDS = ("name", "learning_rate", "schedule", "warmup_steps", "decay_fraction",
                  "decay_shape", "final_lr_fraction", "weight_decay", "grad_clip_norm")


def config_keywords(name: str) -> tuple[str, ...]:
  """The keywords of optimizer ``name`` settable in ``config.optimizer.<name>``."""
  return tuple(k for k in optim.optimizer_keywords(name) if k not in _FROM_TRAINER)


def default_optimizer_config() -> ml_collections.ConfigDict:
  """The ``config.optimizer`` fields and their defaults.

  Fields:
    name: one of ``signflax.optim.OPTIMIZERS`` (sgd, momentum, adamw, lion,
      sign_sgd, signum, muon).
    learning_rate: the peak learning rate.
    schedule: "wsd" | "cosine" | "constant", each after ``warmup_steps`` of
      linear warmup; wsd decays over the last ``decay_fraction`` of the steps
      with ``decay_shape`` (see ``signflax.optim.wsd_schedule``) to
      ``final_lr_fraction`` x peak.
    weight_decay: decoupled, applied to weight matrices only.
    grad_clip_norm: global-norm clipping, 0 = off (a no-op before a sign).
    <optimizer name>: one group per optimizer with its own keywords (None = the
      optimizer's default), e.g. ``adamw.b1`` or ``signum.beta``. Only the group
      of ``name`` is used, so switching ``--config.optimizer.name`` keeps every
      optimizer's settings valid.
  """
  config = ml_collections.ConfigDict(dict(
      name="adamw", learning_rate=1e-3, schedule="wsd", warmup_steps=0, decay_fraction=0.2,
      decay_shape="linear", final_lr_fraction=0.0, weight_decay=0.1, grad_clip_norm=0.0))
  for name in optim.OPTIMIZERS:
    config[name] = ml_collections.ConfigDict({k: None for k in config_keywords(name)})
  return config


def validate(opt_config) -> None:
  """Raises a one-line ValueError naming the bad ``config.optimizer`` field."""
  if "kwargs" in opt_config:
    raise ValueError("config.optimizer.kwargs: replaced by one group per optimizer, e.g. "
                     "config.optimizer.adamw.b1 or config.optimizer.signum.beta (see "
                     "signflax.train.optimizer.default_optimizer_config)")
  unknown = sorted(set(opt_config) - set(_SHARED_FIELDS) - set(optim.OPTIMIZERS))
  if unknown:
    raise ValueError(f"config.optimizer: unknown field(s) {', '.join(unknown)}; fields: "
                     f"{', '.join(_SHARED_FIELDS)} and one group per optimizer "
                     f"({', '.join(optim.OPTIMIZERS)})")
  if opt_config.name not in optim.OPTIMIZERS:
    raise ValueError(f"config.optimizer.name: {opt_config.name!r} is not one of "
                     f"{', '.join(optim.OPTIMIZERS)}")
  for name in optim.OPTIMIZERS:
    group = opt_config.get(name) or {}
    allowed = config_keywords(name)
    wrong = sorted(k for k in group if k not in allowed)
    if wrong:
      raise ValueError(f"config.optimizer.{name}: {', '.join(wrong)} not accepted by "
                       f"{name!r}; allowed: {', '.join(allowed)}")
  if opt_config.schedule not in SCHEDULES:
    raise ValueError(f"config.optimizer.schedule: {opt_config.schedule!r} is not one of "
                     f"{', '.join(SCHEDULES)}")
  if not opt_config.learning_rate > 0:
    raise ValueError(f"config.optimizer.learning_rate: must be > 0, got "
                     f"{opt_config.learning_rate!r}")


def make_schedule(opt_config, total_steps: int) -> optax.Schedule:
  """Warmup-stable-decay (default), warmup + cosine, or warmup + constant."""
  peak, warmup = opt_config.learning_rate, opt_config.warmup_steps
  end = peak * opt_config.final_lr_fraction
  if opt_config.schedule == "wsd":
    return optim.wsd_schedule(peak, total_steps, warmup_steps=warmup,
                              decay_fraction=opt_config.decay_fraction, end_value=end,
                              decay_shape=opt_config.decay_shape)
  if opt_config.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total_steps, warmup + 1),
                                              end_value=end)
  if opt_config.schedule == "constant":
    if not warmup:
      return optax.constant_schedule(peak)
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup),
                                 optax.constant_schedule(peak)], [warmup])
  raise ValueError(f"config.optimizer.schedule: {opt_config.schedule!r} is not one of "
                   f"{list(SCHEDULES)}")


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


def make_optimizer(opt_config, total_steps: int, param_axes: Any
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns ``(tx, schedule)``: optional global-norm clipping, then the optimizer.

  Clipping rescales the whole gradient by one positive factor, so before a sign
  it changes nothing: sign_sgd's update is identical with or without it. Where a
  momentum sits before the sign (signum, lion, Muon's momentum) it only reweights
  steps inside that average; for SGD, momentum and AdamW it bounds the step.
  """
  schedule = make_schedule(opt_config, total_steps)
  tx = optim.get_optimizer(opt_config.name, schedule,
                           **optimizer_kwargs(opt_config, param_axes))
  if opt_config.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(opt_config.grad_clip_norm), tx)
  return tx, schedule
