"""``config.optimizer`` -> an Optax transformation and its learning-rate schedule."""

from __future__ import annotations

from typing import Any

import jax
import optax

from signflax import optim

SCHEDULES = ("wsd", "cosine", "constant")


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

  ``optimizer.kwargs`` entries left at None mean "the optimizer's default". Weight
  decay applies to matrices only (not norm scales); Muon gets the hidden matrices
  (no ``vocab`` axis, i.e. not the embedding or head) from the logical axes, so
  layer-stacked norm scales (``[layers, embed]``, 2-D) are not mistaken for matrices.
  """
  kwargs = {k: v for k, v in dict(opt_config.kwargs).items() if v is not None}
  allowed = optim.optimizer_keywords(opt_config.name)
  kwargs.setdefault("weight_decay", opt_config.weight_decay)
  is_axes = lambda x: isinstance(x, tuple)
  if "weight_decay_mask" in allowed:
    kwargs.setdefault("weight_decay_mask", jax.tree.map(_is_matrix, param_axes, is_leaf=is_axes))
  if "muon_params" in allowed:
    kwargs.setdefault("muon_params", jax.tree.map(
        lambda axes: _is_matrix(axes) and "vocab" not in axes, param_axes, is_leaf=is_axes))
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
