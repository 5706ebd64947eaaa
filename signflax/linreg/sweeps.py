"""Data-budget sweeps: loss at budget D = B K over grids of batch sizes and learning rates.

With a constant learning rate, the risk after k steps of a run does not depend on
how long the run continues, so a single run of :math:`D_{max}/B` steps per batch
size, recorded at :math:`k = D/B`, yields every budget D at once (cost about
:math:`2 D_{max}` steps summed over power-of-two batch sizes). Schedules that
depend on the horizon (WSD) instead group runs by :math:`K = D/B` and vmap the
batch sizes that share it.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import jax
import numpy as np

from signflax.linreg import _checks, simulator
from signflax.linreg.problems import PowerLawProblem
from signflax.linreg.theory import OPTIMIZER_FAMILIES
from signflax.optim import batch_scaled_learning_rate

# The learning rate / batch size rule of each family (``batch_scaled_learning_rate``).
_BATCH_RULE = {"sgd": "linear", "sign": "sqrt"}


class BudgetSweep(NamedTuple):
  """Final excess risk over budgets x batch sizes x learning rates.

  Attributes:
    budgets: ``(n_D,)`` data budgets D (samples).
    batch_sizes: ``(n_B,)``.
    learning_rates: ``(n_B, n_lr)``.
    loss: ``(n_seeds, n_D, n_B, n_lr)`` risk after :math:`K = D/B` steps; NaN where B > D.
  """
  budgets: np.ndarray
  batch_sizes: np.ndarray
  learning_rates: np.ndarray
  loss: np.ndarray


def learning_rate_grid(family: str, effective_learning_rates, batch_sizes) -> np.ndarray:
  """``(n_B, n_lr)`` learning rates :math:`\\eta = \\gamma B` (SGD, linear rule) or
  :math:`\\gamma\\sqrt{B}` (sign methods, square-root rule) for a grid of :math:`\\gamma`,
  so one grid of effective learning rates covers every batch size (the rule of
  ``signflax.optim.batch_scaled_learning_rate`` from base batch size 1)."""
  _checks.choice("family", family, OPTIMIZER_FAMILIES)
  _checks.positive("effective_learning_rates", effective_learning_rates)
  _checks.positive("batch_sizes", batch_sizes)
  rule = _BATCH_RULE[family]
  factors = [batch_scaled_learning_rate(1.0, int(b), 1, rule) for b in np.ravel(batch_sizes)]
  return np.asarray(factors, np.float64)[:, None] * np.asarray(
      effective_learning_rates, np.float64)[None, :]


def budget_sweep(problem: PowerLawProblem, optimizer_fn: simulator.OptimizerFn, budgets,
                 batch_sizes, learning_rates, *, num_seeds: int = 8, seed: int = 0,
                 noise_model: str = "hessian_aligned",
                 optimizer_for_horizon: Callable[[int], simulator.OptimizerFn] | None = None,
                 devices: Sequence[jax.Device] | None = None) -> BudgetSweep:
  """Runs every (budget, batch size, learning rate) cell with ``num_seeds`` seeds.

  Args:
    problem: the regression problem.
    optimizer_fn: ``learning_rate -> GradientTransformation`` for constant schedules.
    budgets: increasing data budgets D; each ``D / B`` is rounded down to whole steps.
    batch_sizes: ``(n_B,)``.
    learning_rates: ``(n_B, n_lr)`` or ``(n_lr,)``.
    optimizer_for_horizon: if given, ``K -> optimizer_fn`` for runs of ``K`` steps
      (horizon-dependent schedules); ``optimizer_fn`` is then unused.

  The other arguments are those of ``simulator.simulate``.
  """
  _checks.positive("budgets", budgets)
  _checks.positive("batch_sizes", batch_sizes)
  if optimizer_fn is None and optimizer_for_horizon is None:
    raise ValueError("optimizer_fn: must be given unless optimizer_for_horizon is")
  budgets = np.asarray(budgets, np.int64)
  batch_sizes = np.asarray(batch_sizes, np.int64)
  lrs = np.asarray(learning_rates, np.float64)
  lrs = np.broadcast_to(lrs if lrs.ndim == 2 else lrs[None], (batch_sizes.size, lrs.shape[-1]))
  loss = np.full((num_seeds, budgets.size, batch_sizes.size, lrs.shape[1]), np.nan)
  horizons = budgets[:, None] // batch_sizes[None, :]                  # (n_D, n_B)
  common = dict(num_seeds=num_seeds, seed=seed, noise_model=noise_model, devices=devices)
  if optimizer_for_horizon is None:
    for b, batch in enumerate(batch_sizes):
      if horizons[-1, b] < 1:
        continue
      result = simulator.simulate(problem, optimizer_fn, lrs[b], [batch], int(horizons[-1, b]),
                                  record_steps=horizons[:, b], **common)
      valid = horizons[:, b] >= 1
      loss[:, valid, b] = result.risk[:, 0, :, valid].transpose(1, 0, 2)
    return BudgetSweep(budgets, batch_sizes, np.asarray(lrs), loss)
  for horizon in np.unique(horizons[horizons >= 1]):
    cells = np.argwhere(horizons == horizon)                           # (n, 2): (D, B) index
    groups = [cells] if noise_model == "hessian_aligned" else [c[None] for c in cells]
    for group in groups:
      result = simulator.simulate(problem, optimizer_for_horizon(int(horizon)),
                                  lrs[group[:, 1]], batch_sizes[group[:, 1]], int(horizon),
                                  record_steps=[horizon], **common)
      for i, (d_index, b_index) in enumerate(group):
        loss[:, d_index, b_index] = result.risk[:, i, :, -1]
  return BudgetSweep(budgets, batch_sizes, np.asarray(lrs), loss)
