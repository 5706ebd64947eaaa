"""Fits and reductions: power-law exponents, best-over-grid losses, scaling-law
constants and critical batch sizes."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from signflax.linreg import theory


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
                    initial: float = 1.0) -> theory.ScalingLaw:
  """Fits the constants of ``theory.predicted_loss`` to measured losses.

  The law is linear in its constants, so this is a least-squares fit of relative
  error (each row divided by the measured loss) over the finite points with
  :math:`\\eta k \\ge 1` (outside burn-in) and, for SGD, :math:`\\eta \\le 1/2` (the law
  has no instability term); constants that come out
  negative are dropped (set to 0) and the rest refitted.
  """
  eta, batch, k, loss = (np.asarray(a, np.float64).ravel() for a in
                         np.broadcast_arrays(learning_rates, batch_sizes, steps, loss))
  ok = np.isfinite(loss) & (loss > 0) & (eta * k >= 1)
  if family == "sgd":
    ok &= eta <= 0.5        # the law has no term for SGD's instability at eta ~ 1
  if not ok.any():
    raise ValueError("fit_scaling_law: no finite points outside burn-in")
  terms = theory.scaling_law_terms(family, s, eta[ok], batch[ok], k[ok]) / loss[ok, None]
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
  return theory.ScalingLaw(family, float(s), initial=float(initial),
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
