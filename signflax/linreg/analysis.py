"""Fits and reductions: power-law exponents, best-over-grid losses, scaling-law
constants and critical batch sizes."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from signflax.linreg import _checks, theory


class PowerLawFit(NamedTuple):
  """:math:`y \\approx c\\, x^{-e}` fitted by least squares in log-log space.

  Attributes:
    exponent: :math:`e` (positive for a decay).
    prefactor: :math:`c`.
    stderr: standard error of :math:`e` (0 with two points).
  """
  exponent: float
  prefactor: float
  stderr: float


def fit_power_law(x, y) -> PowerLawFit:
  """Fits :math:`\\log y = \\log c - e \\log x` over finite, positive points."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  ok = np.isfinite(y) & (y > 0) & (x > 0)
  if ok.sum() < 2:
    raise ValueError(f"fit_power_law: needs >= 2 finite positive points, got {ok.sum()}")
  lx, ly = np.log(x[ok]), np.log(y[ok])
  (slope, intercept), residuals, *_ = np.linalg.lstsq(np.stack([lx, np.ones_like(lx)], 1), ly,
                                                      rcond=None)
  n = lx.size
  stderr = 0.0
  if n > 2 and residuals.size:
    stderr = float(np.sqrt(residuals[0] / (n - 2) / np.sum((lx - lx.mean()) ** 2)))
  return PowerLawFit(float(-slope), float(np.exp(intercept)), stderr)


def seed_mean(loss, axis: int = 0) -> np.ndarray:
  """Mean over seeds; a run that diverged (non-finite) makes its config infinite."""
  loss = np.asarray(loss, np.float64)
  return np.where(np.all(np.isfinite(loss), axis=axis), np.mean(loss, axis=axis), np.inf)


def seed_stderr(loss, axis: int = 0) -> np.ndarray:
  """Standard error of the seed mean (0 with one seed; inf where a run diverged)."""
  loss = np.asarray(loss, np.float64)
  n = loss.shape[axis]
  if n < 2:
    return np.where(np.all(np.isfinite(loss), axis=axis), 0.0, np.inf)
  spread = np.std(loss, axis=axis, ddof=1) / np.sqrt(n)
  return np.where(np.isfinite(spread), spread, np.inf)


def best_over(loss, axes) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
  """Minimum of ``loss`` over ``axes`` (NaN counts as +inf) and the argmin along each.

  Returns:
    ``(best, indices)``: ``best`` has ``axes`` removed; ``indices[i]`` is the index
    along ``axes[i]`` of the minimum, same shape as ``best``.
  """
  loss = np.where(np.isnan(loss), np.inf, np.asarray(loss, np.float64))
  axes = tuple(sorted(a % loss.ndim for a in np.atleast_1d(axes)))
  keep = [a for a in range(loss.ndim) if a not in axes]
  moved = np.transpose(loss, keep + list(axes))
  flat = moved.reshape(moved.shape[:len(keep)] + (-1,))
  arg = np.argmin(flat, axis=-1)
  best = np.take_along_axis(flat, arg[..., None], -1)[..., 0]
  return best, np.unravel_index(arg, [loss.shape[a] for a in axes])


def fit_scaling_law(family: str, s: float, learning_rates, batch_sizes, steps, loss,
                    initial: float = 1.0, *, beta: float = math.inf) -> theory.ScalingLaw:
  """Fits the constants of ``theory.predicted_loss`` to measured losses.

  The law is linear in its constants, so this is a least-squares fit of relative
  error (each row divided by the measured loss) over the finite points with
  :math:`\\eta k \\ge 1` (outside burn-in) and, for SGD, :math:`\\eta \\le 1/2` (the law
  has no instability term); ``beta`` picks the signSGD noise term's form
  (``theory.scaling_law_terms``); constants that come out
  negative are dropped (set to 0) and the rest refitted.
  """
  eta, batch, k, loss = (np.asarray(a, np.float64).ravel() for a in
                         np.broadcast_arrays(learning_rates, batch_sizes, steps, loss))
  ok = np.isfinite(loss) & (loss > 0) & (eta * k >= 1)
  if family == "sgd":
    ok &= eta <= 0.5        # the law has no term for SGD's instability at eta ~ 1
  if not ok.any():
    raise ValueError("fit_scaling_law: no finite points outside burn-in")
  terms = theory.scaling_law_terms(family, s, eta[ok], batch[ok], k[ok],
                                   beta=beta) / loss[ok, None]
  target = np.ones(ok.sum())
  active = np.ones(terms.shape[1], bool)
  coef = np.zeros(terms.shape[1])
  for _ in range(terms.shape[1]):
    coef[:] = 0.0
    coef[active] = np.linalg.lstsq(terms[:, active], target, rcond=None)[0]
    if np.all(coef[active] >= 0):
      break
    active &= coef > 0
  names = ("signal", "noise") if family == "sgd" else ("signal", "noise", "oscillation")
  return theory.ScalingLaw(family, float(s), initial=float(initial), beta=float(beta),
                           **{n: float(c) for n, c in zip(names, coef)})


def critical_batch_from_curve(batch_sizes, best_loss, factor: float = 2.0) -> float:
  """The batch size at which the tuned loss first rises above ``factor`` times its
  small-batch plateau (log-interpolated between grid points).

  The plateau is the median of the lower half of the finite losses, robust to the
  seed noise of single points. Below the critical batch size the tuned loss is flat;
  above it, it grows like :math:`(D/B)^{-p}` (Li et al. 2026, App. B.3.3), so this
  estimate is the critical batch size up to a constant factor, which a growth
  exponent fitted across budgets does not see.
  """
  b = np.log(np.asarray(batch_sizes, np.float64))
  loss = np.where(np.isfinite(best_loss), np.asarray(best_loss, np.float64), np.inf)
  finite = np.sort(loss[np.isfinite(loss)])
  if finite.size == 0:
    raise ValueError("critical_batch_from_curve: no finite losses")
  limit = np.log(factor * np.median(finite[:max(1, (finite.size + 1) // 2)]))
  logl = np.log(loss)
  above = np.nonzero(logl > limit)[0]
  first = int(above[0]) if above.size else len(b)
  if first == len(b):
    return float(np.exp(b[-1]))
  if first == 0:
    return float(np.exp(b[0]))
  i = first - 1
  if not np.isfinite(logl[first]):
    return float(np.exp(b[i]))
  w = (limit - logl[i]) / (logl[first] - logl[i])
  return float(np.exp(b[i] + w * (b[first] - b[i])))


class ResonanceFlags(NamedTuple):
  """Warnings on the best point of a budget sweep, one entry per budget D.

  A sign step moves every coordinate by exactly :math:`\\eta`, so after K steps at a
  large batch (a near-deterministic sign) coordinate 1 has travelled :math:`\\eta K`
  and sits exactly on :math:`\\theta^*_1 = 1` when :math:`\\eta K` is an integer
  whose parity fits. Such a point is a grid artifact, not scaling: its loss drops
  below the small-batch plateau that the scaling law predicts.

  Attributes:
    lr_steps: :math:`\\eta K` of the best point.
    near_integer: :math:`\\eta K` within ``tolerance`` of a positive integer.
    dip: the best point's loss (tuned over :math:`\\eta`) undercuts every neighbour
      in B (tuned too) by more than ``threshold`` combined seed standard errors; the
      theory's tuned loss is flat below the critical batch size and rises above it.
    flagged: ``near_integer | dip``.
  """
  lr_steps: np.ndarray
  near_integer: np.ndarray
  dip: np.ndarray
  flagged: np.ndarray


def resonance_flags(budgets, batch_sizes, learning_rates, mean, stderr, *,
                    tolerance: float = 0.01, threshold: float = 2.0) -> ResonanceFlags:
  """Flags best points of a sweep that may be resonances rather than scaling.

  Args:
    budgets: ``(n_D,)`` data budgets; the best point of D with batch B ran
      :math:`K = \\lfloor D/B \\rfloor` steps.
    batch_sizes: ``(n_B,)``, increasing.
    learning_rates: ``(n_B, n_lr)``.
    mean, stderr: ``(n_D, n_B, n_lr)`` seed mean and its standard error (NaN or inf
      where a cell did not run or diverged).
    tolerance: distance of :math:`\\eta K` to the nearest positive integer that
      flags it (0.01 = 1% of the first resonance :math:`\\eta K = 1`).
    threshold: how many combined standard errors a dip in B must exceed.
  """
  _checks.positive("tolerance", tolerance)
  _checks.non_negative("threshold", threshold)
  budgets = np.asarray(budgets, np.int64)
  batch_sizes = np.asarray(batch_sizes, np.int64)
  learning_rates = np.asarray(learning_rates, np.float64)
  mean = np.asarray(mean, np.float64)
  stderr = np.asarray(stderr, np.float64)
  expected = (budgets.size, batch_sizes.size, learning_rates.shape[-1])
  if mean.shape != expected or stderr.shape != expected:
    raise ValueError(f"mean, stderr: must have shape (n_D, n_B, n_lr) = {expected}, "
                     f"got {mean.shape} and {stderr.shape}")
  per_batch, (lr_index,) = best_over(mean, 2)                           # (D, B)
  per_batch_err = np.take_along_axis(stderr, lr_index[..., None], 2)[..., 0]
  _, (b_index,) = best_over(per_batch, 1)                               # (D,)
  rows = np.arange(budgets.size)
  eta = learning_rates[b_index, lr_index[rows, b_index]]
  lr_steps = eta * (budgets // batch_sizes[b_index])
  nearest = np.round(lr_steps)
  near_integer = (nearest >= 1) & (np.abs(lr_steps - nearest) <= tolerance)
  dip = np.zeros(budgets.size, bool)
  for i, b in enumerate(b_index):
    best, err = per_batch[i, b], per_batch_err[i, b]
    neighbours = [n for n in (b - 1, b + 1)
                  if 0 <= n < batch_sizes.size and np.isfinite(per_batch[i, n])]
    dip[i] = bool(neighbours) and all(
        per_batch[i, n] - best > threshold * np.hypot(err, per_batch_err[i, n])
        for n in neighbours)
  return ResonanceFlags(lr_steps, near_integer, dip, near_integer | dip)
