"""Power-law linear-regression lab: problems, a sharded simulator, theory and fits.

Reproduces the scaling laws of signSGD vs SGD (Li et al. 2026, "Scaling-law analysis
of SignSGD"; Xiao et al. 2024, "Exact risk curves of signSGD in high dimensions").

Problems (``problems``):
  PowerLawProblem, power_law_problem(d, alpha, beta, noise_std), excess_risk,
  initial_risk, relative_difficulty.
Simulation (``simulator``, ``sweeps``):
  simulate(problem, optimizer_fn, learning_rates, batch_sizes, num_steps, ...) ->
  SimulationResult -- seeds x batch sizes x learning rates in one jitted program,
  seed axis sharded over devices; NOISE_MODELS; log_spaced_steps; seed_mesh;
  budget_sweep(...) -> BudgetSweep -- loss over data budgets x batch sizes x lrs;
  learning_rate_grid (linear / square-root rules).
Fixed-order sums (``kernels``): ordered_sum, ordered_dot, minibatch_gradient -- the
  summation order depends on the summed length only, so runs are bit-identical whatever
  shares their program (both simulators use them).
Theory (``theory``):
  sgd_expected_risk (closed form), sgd_risk_recursion (exact, both noise models),
  ScalingLaw, scaling_law_terms, predicted_loss, regime,
  data_scaling_exponent(family, s, beta), critical_batch_exponent(family, s, beta)
  (Li et al. Theorems G.1-G.4, including 1 < beta <= 2), optimal_effective_learning_rate,
  optimal_loss, critical_batch_size, signsgd_risk_ode (Xiao et al.; arcsine or
  linearized drift).
Analysis (``analysis``):
  fit_power_law -> PowerLawFit, seed_mean, seed_stderr, best_over, fit_scaling_law,
  critical_batch_from_curve, resonance_flags -> ResonanceFlags.
"""

from signflax.linreg.analysis import (PowerLawFit, ResonanceFlags, best_over,
                                      critical_batch_from_curve, fit_power_law, fit_scaling_law,
                                      resonance_flags, seed_mean, seed_stderr)
from signflax.linreg.problems import (PowerLawProblem, excess_risk, initial_risk,
                                      power_law_problem, relative_difficulty)
from signflax.linreg.simulator import (NOISE_MODELS, SimulationResult, log_spaced_steps,
                                       noise_chunk_size, seed_mesh, simulate)
from signflax.linreg.sweeps import BudgetSweep, budget_sweep, learning_rate_grid
from signflax.linreg.theory import (OPTIMIZER_FAMILIES, REGIMES, ScalingLaw,
                                    critical_batch_exponent, critical_batch_size,
                                    data_scaling_exponent,
                                    optimal_effective_learning_rate, optimal_loss,
                                    predicted_loss, regime, scaling_law_terms,
                                    sgd_expected_risk, sgd_risk_recursion, signsgd_risk_ode)

__all__ = [
    "BudgetSweep", "NOISE_MODELS", "OPTIMIZER_FAMILIES", "PowerLawFit", "PowerLawProblem",
    "REGIMES", "ResonanceFlags", "ScalingLaw", "SimulationResult", "best_over", "budget_sweep",
    "critical_batch_exponent", "critical_batch_from_curve", "critical_batch_size",
    "data_scaling_exponent", "excess_risk", "fit_power_law",
    "fit_scaling_law", "initial_risk", "learning_rate_grid", "log_spaced_steps", "seed_mesh",
    "noise_chunk_size", "optimal_effective_learning_rate", "optimal_loss", "power_law_problem",
    "predicted_loss", "regime", "relative_difficulty", "resonance_flags", "scaling_law_terms", "seed_mean",
    "seed_stderr",
    "sgd_expected_risk", "sgd_risk_recursion", "signsgd_risk_ode", "simulate",
]
