"""Learning-rate schedules: warmup-stable-decay (WSD) and batch-size scaling rules."""

from __future__ import annotations

from typing import Any, Callable, Union

import jax.numpy as jnp
import numpy as np
import optax

from signflax.optim import _checks

DECAY_SHAPES = ("linear", "cosine", "1-sqrt", "exponential")
BATCH_RULES = ("sqrt", "linear")


def _decay_factor(progress: jnp.ndarray, shape: str, peak: float, end: float) -> jnp.ndarray:
  """Value at ``progress`` in [0, 1] of a decay from ``peak`` to ``end``."""
  if shape == "linear":
    return peak + (end - peak) * progress
  if shape == "cosine":
    return end + (peak - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
  if shape == "1-sqrt":
    return end + (peak - end) * (1.0 - jnp.sqrt(progress))
  # exponential: geometric interpolation, needs peak, end > 0.
  return peak * jnp.power(end / peak, progress)


def wsd_schedule(peak_value: float, total_steps: int, *, warmup_steps: int = 0,
                 decay_steps: int | None = None, decay_fraction: float = 0.2,
                 init_value: float = 0.0, end_value: float = 0.0,
                 decay_shape: str = "linear") -> optax.Schedule:
  r"""Warmup-stable-decay schedule.

  With :math:`W` warmup steps, :math:`T` total steps and :math:`D` decay steps
  (``decay_steps``, or ``round(decay_fraction * T)``), the value at step :math:`t` is

  .. math::
    \eta(t) = \begin{cases}
      \eta_0 + (\eta_{peak} - \eta_0)\, t / W & t < W \\
      \eta_{peak} & W \le t < T - D \\
      f\big((t - T + D) / D\big) & T - D \le t < T \\
      \eta_{end} & t \ge T
    \end{cases}

  where :math:`f(p)` goes from :math:`\eta_{peak}` at :math:`p = 0` to
  :math:`\eta_{end}` at :math:`p = 1`: ``"linear"``, ``"cosine"``
  (half cosine), ``"1-sqrt"`` (:math:`\eta_{end} + (\eta_{peak} - \eta_{end})(1 - \sqrt p)`,
  Hägele et al. 2024) or ``"exponential"`` (geometric, needs :math:`\eta_{end} > 0`).
  The decay ends exactly at ``total_steps``.

  The returned function maps an integer step (Python or traced) to a float32
  scalar, so it works as an Optax learning rate, inside ``jax.jit`` and with
  ``optax.inject_hyperparams``.

  References:
    Hu et al., MiniCPM: Unveiling the Potential of Small Language Models, 2024.
    Hägele et al., Scaling Laws and Compute-Optimal Training Beyond Fixed Training
    Durations, 2024.
    Kim et al., Scaling Laws of SignSGD with Warmup-Stable-Decay Schedules, 2026.
  """
  _checks.check_int("total_steps", total_steps, 1)
  _checks.check_int("warmup_steps", warmup_steps, 0)
  _checks.check_range("decay_fraction", decay_fraction, 0.0, 1.0)
  _checks.check_choice("decay_shape", decay_shape, DECAY_SHAPES)
  _checks.check_non_negative("peak_value", peak_value)
  _checks.check_non_negative("init_value", init_value)
  _checks.check_non_negative("end_value", end_value)
  if decay_steps is None:
    decay_steps = round(decay_fraction * total_steps)
  _checks.check_int("decay_steps", decay_steps, 0)
  if warmup_steps + decay_steps > total_steps:
    raise ValueError(f"decay_steps: warmup_steps + decay_steps must be <= total_steps="
                     f"{total_steps}, got {warmup_steps} + {decay_steps}")
  if decay_shape == "exponential" and not (end_value > 0 and peak_value > 0):
    raise ValueError(f"end_value: decay_shape='exponential' needs end_value > 0 and "
                     f"peak_value > 0, got end_value={end_value}, peak_value={peak_value}")
  decay_start = total_steps - decay_steps

  def schedule(count):
    step = jnp.asarray(count, jnp.float32)
    value = jnp.full_like(step, peak_value)
    if warmup_steps > 0:
      warm = init_value + (peak_value - init_value) * step / warmup_steps
      value = jnp.where(step < warmup_steps, warm, value)
    if decay_steps > 0:
      progress = jnp.clip((step - decay_start) / decay_steps, 0.0, 1.0)
      decayed = _decay_factor(progress, decay_shape, peak_value, end_value)
      value = jnp.where(step >= decay_start, decayed, value)
    return jnp.where(step >= total_steps, jnp.float32(end_value), value).astype(jnp.float32)

  return schedule


def batch_scale_factor(batch_size: Any, base_batch_size: Any, rule: str) -> Any:
  r"""The factor a batch-size rule puts on the learning rate: :math:`\sqrt{B/B_0}`
  (``"sqrt"``) or :math:`B/B_0` (``"linear"``). Works on numbers and NumPy arrays."""
  _checks.check_choice("rule", rule, BATCH_RULES)
  ratio = np.asarray(batch_size, np.float64) / np.asarray(base_batch_size, np.float64)
  factor = np.sqrt(ratio) if rule == "sqrt" else ratio
  return float(factor) if np.ndim(factor) == 0 else factor


def batch_scaled_learning_rate(base_lr: Union[float, optax.Schedule], batch_size: int,
                               base_batch_size: int, rule: str
                               ) -> Union[float, Callable]:
  r"""Transfers a learning rate tuned at ``base_batch_size`` to ``batch_size``.

  .. math::
    \eta(B) = \eta(B_0) \sqrt{B / B_0} \ \ (\texttt{"sqrt"}) \qquad
    \eta(B) = \eta(B_0)\, B / B_0 \ \ (\texttt{"linear"})

  ``"sqrt"`` is the rule for signSGD, Signum and Adam: their loss at fixed data depends
  on :math:`\eta/\sqrt{B}` (Li et al. 2026, Thm. 3.1; Malladi et al. 2022 for Adam).
  ``"linear"`` is SGD's: its loss depends on :math:`\eta/B`. ``base_lr`` may be a
  schedule; the result is then the scaled schedule.
  """
  _checks.check_int("batch_size", batch_size, 1)
  _checks.check_int("base_batch_size", base_batch_size, 1)
  factor = batch_scale_factor(batch_size, base_batch_size, rule)
  if callable(base_lr):
    return lambda count: factor * base_lr(count)
  _checks.check_non_negative("base_lr", base_lr)
  return base_lr * factor
