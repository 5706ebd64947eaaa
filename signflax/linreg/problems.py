"""Power-law feature-space linear regression problems.

The model of Li et al. (2026), "Scaling-law analysis of SignSGD", Sec. 2 and
Assumption B.3: features :math:`\\phi \\sim N(0, H)` with
:math:`H = \\mathrm{diag}(\\lambda_j)`, :math:`\\lambda_j = j^{-\\beta}`, a target with
:math:`\\lambda_j \\theta^{*2}_j = j^{-\\alpha}` and labels
:math:`y = \\langle \\phi, \\theta^* \\rangle + \\epsilon`, :math:`\\epsilon \\sim N(0, \\sigma^2)`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from signflax.linreg import _checks


class PowerLawProblem(NamedTuple):
  """A diagonal power-law regression problem.

  Attributes:
    eigenvalues: ``(d,)`` spectrum :math:`\\lambda_j = j^{-\\beta}` of :math:`H`.
    theta_star: ``(d,)`` target :math:`\\theta^*_j = j^{(\\beta - \\alpha)/2}` (positive).
    noise_std: label noise :math:`\\sigma`.
    alpha: source exponent (:math:`\\lambda_j \\theta^{*2}_j = j^{-\\alpha}`).
    beta: capacity exponent.
  """
  eigenvalues: jnp.ndarray
  theta_star: jnp.ndarray
  noise_std: float
  alpha: float
  beta: float

  @property
  def dim(self) -> int:
    return int(self.eigenvalues.shape[0])

  @property
  def relative_difficulty(self) -> float:
    return relative_difficulty(self.alpha, self.beta)


def relative_difficulty(alpha: float, beta: float) -> float:
  """:math:`s = (\\alpha - 1) / \\beta` (Li et al. 2026, Assumption B.3)."""
  _checks.greater_than("alpha", alpha, 1)
  _checks.greater_than("beta", beta, 1)
  return (alpha - 1.0) / beta


def power_law_problem(dim: int, alpha: float, beta: float, noise_std: float = 1.0,
                      dtype=jnp.float32) -> PowerLawProblem:
  """Builds the problem with :math:`\\lambda_j = j^{-\\beta}` and
  :math:`\\lambda_j \\theta^{*2}_j = j^{-\\alpha}`, :math:`j = 1..d`."""
  _checks.integer("dim", dim, 1)
  _checks.greater_than("alpha", alpha, 1)
  _checks.greater_than("beta", beta, 1)
  _checks.non_negative("noise_std", noise_std)
  j = np.arange(1, dim + 1, dtype=np.float64)
  eigenvalues = j ** -beta
  theta_star = j ** ((beta - alpha) / 2.0)
  return PowerLawProblem(jnp.asarray(eigenvalues, dtype), jnp.asarray(theta_star, dtype),
                         float(noise_std), float(alpha), float(beta))


def excess_risk(problem: PowerLawProblem, theta: jnp.ndarray) -> jnp.ndarray:
  """:math:`L(\\theta) = \\tfrac12 \\sum_j \\lambda_j (\\theta_j - \\theta^*_j)^2`, exact
  (no test set); reduces over the last axis, so ``theta`` may carry batch axes."""
  delta = theta - problem.theta_star
  return 0.5 * jnp.sum(problem.eigenvalues * delta * delta, axis=-1)


def initial_risk(problem: PowerLawProblem) -> float:
  """:math:`L(0) = \\tfrac12 \\sum_j j^{-\\alpha}`."""
  return float(0.5 * np.sum(np.asarray(problem.eigenvalues, np.float64)
                            * np.asarray(problem.theta_star, np.float64) ** 2))
