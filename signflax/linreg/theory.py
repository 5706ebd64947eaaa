"""Closed-form and numerical theory for the power-law regression lab.

* SGD: the exact expected-risk recursion (per-coordinate second moments) under
  both noise models, and the scaling law :math:`L \\approx (\\eta k)^{-s} + \\eta/B`
  (Li et al. 2026, Eq. 6 and App. E).
* signSGD: Theorem 3.1 of Li et al. (2026) -- burn-in :math:`(1 - \\eta k)^2`,
  scaling :math:`(\\eta\\sqrt{B}k)^{-2s} + \\eta/\\sqrt{B}`, unstable
  :math:`(\\eta\\sqrt{B}k)^{-2s} + \\eta^2` -- with constants to fit, and the
  data-limited optima of App. B.3 (best loss and critical batch size vs data D).
* The risk ODE of Xiao et al. (2024), "Exact risk curves of signSGD in high
  dimensions", for signSGD with one sample per step and step size :math:`\\eta/d`.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

import numpy as np

from signflax.linreg import _checks
from signflax.linreg.problems import PowerLawProblem

OPTIMIZER_FAMILIES = ("sgd", "sign")
REGIMES = ("burn-in", "scaling", "unstable")
SGD_NOISE_MODELS = ("hessian_aligned", "minibatch")
ODE_DRIFTS = ("arcsine", "linearized")

# ----------------------------------------------------------------------------- SGD, exact


def sgd_expected_risk(problem: PowerLawProblem, learning_rate, batch_size, steps) -> np.ndarray:
  """Exact :math:`E[L(\\theta_k)]` of constant-step SGD, hessian-aligned noise, closed form.

  With :math:`a_j = (1 - \\eta\\lambda_j)^2`, the second moments obey
  :math:`E\\delta_{j,k+1}^2 = a_j E\\delta_{j,k}^2 + \\eta^2\\sigma^2\\lambda_j/B`, so

  .. math::
    E\\delta_{j,k}^2 = a_j^k \\theta_j^{*2}
      + \\frac{\\eta^2 \\sigma^2 \\lambda_j}{B} \\frac{1 - a_j^k}{1 - a_j}.

  ``learning_rate``, ``batch_size`` and ``steps`` broadcast against each other
  (float64, NumPy); the result has their broadcast shape.
  """
  _check_grid(learning_rate, batch_size, steps)
  lam = np.asarray(problem.eigenvalues, np.float64)
  tstar2 = np.asarray(problem.theta_star, np.float64) ** 2
  eta, batch, k = np.broadcast_arrays(np.asarray(learning_rate, np.float64),
                                      np.asarray(batch_size, np.float64),
                                      np.asarray(steps, np.float64))
  eta, batch, k = eta[..., None], batch[..., None], k[..., None]
  a = (1.0 - eta * lam) ** 2
  with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
    ak = a ** k
    geometric = np.where(np.abs(1.0 - a) > 1e-12, (1.0 - ak) / (1.0 - a), k)
    second = ak * tstar2 + eta**2 * problem.noise_std**2 * lam / batch * geometric
    return 0.5 * np.sum(lam * second, axis=-1)


@functools.partial(jax.jit, static_argnames=("schedule", "noise_model"))
def _sgd_recursion(eigenvalues, theta_star, noise_std, learning_rates, batch_sizes,
                   record_steps, *, schedule, noise_model):
  lam = eigenvalues

  def one(peak, batch):
    def step(k, v):
      eta = schedule(peak, k)
      if noise_model == "hessian_aligned":
        return (1 - eta * lam) ** 2 * v + eta**2 * noise_std**2 * lam / batch
      contraction = 1 - 2 * eta * lam + eta**2 * lam**2 * (1 + 1 / batch)
      return contraction * v + eta**2 / batch * lam * (jnp.sum(lam * v) + noise_std**2)

    def segment(carry, stop):
      v, start = carry
      v = jax.lax.fori_loop(start, stop, step, v)
      return (v, stop), 0.5 * jnp.sum(lam * v)

    _, risk = jax.lax.scan(segment, (theta_star**2, jnp.zeros((), record_steps.dtype)),
                           record_steps)
    return risk

  return jax.vmap(one)(learning_rates, batch_sizes)


def _constant(peak, k):
  del k
  return peak


def sgd_risk_recursion(problem: PowerLawProblem, learning_rates, batch_sizes, steps, *,
                       noise_model: str = "hessian_aligned",
                       schedule: Callable | None = None) -> np.ndarray:
  """Exact :math:`E[L(\\theta_k)]` of SGD by iterating the second-moment recursion.

  With :math:`v_j = E\\delta_j^2` and step size :math:`\\eta_k`:

  * hessian-aligned: :math:`v_j \\leftarrow (1 - \\eta_k\\lambda_j)^2 v_j
    + \\eta_k^2 \\sigma^2 \\lambda_j / B`;
  * minibatch (Gaussian features, Isserlis): :math:`v_j \\leftarrow
    (1 - 2\\eta_k\\lambda_j + \\eta_k^2\\lambda_j^2 (1 + 1/B)) v_j
    + \\frac{\\eta_k^2}{B}\\lambda_j (\\sum_i \\lambda_i v_i + \\sigma^2)`.

  Args:
    problem: the regression problem.
    learning_rates, batch_sizes: equal-shape (or broadcastable) 1-D arrays of configs.
    steps: increasing steps at which to report the risk.
    noise_model: ``"hessian_aligned"`` or ``"minibatch"``.
    schedule: optional hashable ``(peak_lr, step) -> lr`` (jnp); default constant.

  Returns:
    ``(n_configs, n_steps)`` expected excess risk (float32).
  """
  _checks.choice("noise_model", noise_model, SGD_NOISE_MODELS)
  _check_grid(learning_rates, batch_sizes, steps)
  if np.any(np.diff(np.asarray(steps)) < 0):
    raise ValueError(f"steps: must be non-decreasing, got {np.asarray(steps).tolist()}")
  lrs, bs = np.broadcast_arrays(np.atleast_1d(np.asarray(learning_rates, np.float32)),
                                np.atleast_1d(np.asarray(batch_sizes, np.float32)))
  return np.asarray(_sgd_recursion(
      problem.eigenvalues, problem.theta_star, jnp.float32(problem.noise_std),
      jnp.asarray(lrs), jnp.asarray(bs), jnp.asarray(np.asarray(steps), jnp.int32),
      schedule=schedule or _constant, noise_model=noise_model))


# ----------------------------------------------------------------------------- scaling laws


class ScalingLaw(NamedTuple):
  """Constants of a fitted scaling law (see ``predicted_loss``).

  Attributes:
    family: ``"sgd"`` or ``"sign"``.
    s: relative difficulty :math:`(\\alpha - 1)/\\beta`.
    signal: :math:`A`, the coefficient of the signal-learning term.
    noise: :math:`C`, the coefficient of :math:`\\eta/B` (SGD) or :math:`\\eta/\\sqrt{B}` (sign).
    oscillation: :math:`C_o`, the coefficient of :math:`\\eta^2` (sign, unstable regime).
    initial: :math:`L_0 = L(0)`, the burn-in level.
    beta: capacity exponent :math:`\\beta`; below 2 the signSGD noise term grows with
      the steps (``scaling_law_terms``). ``inf`` (default): the :math:`\\beta > 2` form.
  """
  family: str
  s: float
  signal: float = 1.0
  noise: float = 1.0
  oscillation: float = 1.0
  initial: float = 1.0
  beta: float = math.inf


def scaling_law_terms(family: str, s: float, learning_rate, batch_size, steps, *,
                      beta: float = math.inf):
  """The basis terms of the scaling laws, stacked on the last axis.

  SGD: :math:`[(\\eta k)^{-s},\\ \\eta/B]` for every :math:`\\beta > 1`. signSGD (Li et
  al. 2026, Theorem 3.1 and Theorem F.6):
  :math:`[(\\eta\\sqrt{B}k)^{-2s},\\ N,\\ \\eta^2]` with the noise term
  :math:`N = \\eta/\\sqrt{B}` for :math:`\\beta > 2`,
  :math:`(\\eta/\\sqrt{B})\\log(\\eta\\sqrt{B}k)` at :math:`\\beta = 2` and
  :math:`(\\eta/\\sqrt{B})(\\eta\\sqrt{B}k)^{2/\\beta - 1}` for :math:`1 < \\beta < 2`.
  """
  _check_family(family)
  _checks.positive("s", s)
  _check_beta(beta)
  _check_grid(learning_rate, batch_size, steps)
  eta, batch, k = (np.asarray(x, np.float64) for x in
                   np.broadcast_arrays(learning_rate, batch_size, steps))
  if family == "sgd":
    return np.stack([(eta * k) ** -s, eta / batch], axis=-1)
  reach = eta * np.sqrt(batch) * k
  noise = eta / np.sqrt(batch)
  if beta == 2:
    noise = noise * np.log(np.maximum(reach, np.e))
  elif beta < 2:
    noise = noise * np.maximum(reach, 1.0) ** (2 / beta - 1)
  return np.stack([reach ** (-2 * s), noise, eta**2], axis=-1)


def regime(learning_rate, batch_size, steps) -> np.ndarray:
  """signSGD regime of Theorem 3.1: 0 burn-in (:math:`\\eta k < 1`), 1 scaling
  (:math:`\\eta\\sqrt{B} \\le 1`), 2 unstable (:math:`\\eta\\sqrt{B} > 1`)."""
  _check_grid(learning_rate, batch_size, steps)
  eta, batch, k = np.broadcast_arrays(learning_rate, batch_size, steps)
  return np.where(eta * k < 1, 0, np.where(eta * np.sqrt(batch) <= 1, 1, 2))


def predicted_loss(law: ScalingLaw, learning_rate, batch_size, steps) -> np.ndarray:
  """The scaling law with fitted constants.

  SGD: :math:`A(\\eta k)^{-s} + C\\eta/B`. signSGD: :math:`L_0(1 - \\eta k)^2` in burn-in
  (:math:`\\eta k < 1`), else :math:`A(\\eta\\sqrt{B}k)^{-2s} + C\\eta/\\sqrt{B} + C_o\\eta^2`;
  the last two terms each dominate in their own regime (scaling, unstable), so the
  sum equals Theorem 3.1's piecewise form up to a factor of two.
  """
  terms = scaling_law_terms(law.family, law.s, learning_rate, batch_size, steps,
                            beta=law.beta)
  if law.family == "sgd":
    return terms @ np.array([law.signal, law.noise])
  loss = terms @ np.array([law.signal, law.noise, law.oscillation])
  eta_k = np.asarray(learning_rate) * np.asarray(steps)
  return np.where(eta_k < 1, np.maximum(law.initial * (1 - eta_k) ** 2, loss), loss)


def data_scaling_exponent(family: str, s: float, beta: float) -> float:
  r"""Best loss over (:math:`\eta`, B) at data budget D decays as :math:`D^{-e}`.

  signSGD (Li et al. 2026, Theorem G.1): :math:`e = 2s/(2s+1)` for :math:`\beta > 2`;
  at :math:`\beta = 2` the loss is :math:`(D/\log D)^{-2s/(2s+1)}` (the exponent of D
  is still :math:`2s/(2s+1)`, up to the log); :math:`e = s\beta/(s\beta+1)` for
  :math:`1 < \beta < 2`. SGD (Theorem G.2): :math:`e = s/(s+1)` for every
  :math:`\beta > 1`.
  """
  p, q = _powers(family, s, beta)
  return p / (p + q)


def critical_batch_exponent(family: str, s: float, beta: float) -> float:
  r"""Critical batch size :math:`B^* \propto D^{c}` (Li et al. 2026, Theorems G.3, G.4).

  signSGD: :math:`c = 2s/(2s+1)` for :math:`\beta > 2` (times
  :math:`(\log D)^{1/(2s+1)}` at :math:`\beta = 2`), :math:`c = (2s\beta + 2 - \beta)
  / (2s\beta + 2)` for :math:`1 < \beta < 2`. SGD: :math:`c = s/(s+1)`.
  """
  p, q = _powers(family, s, beta)
  return (p + q - 1) / (p + q)


def optimal_effective_learning_rate(law: ScalingLaw, data):
  r""":math:`\gamma^* = \arg\min_\gamma A(D\gamma)^{-p} + C\gamma^q D^{q-1}
  = (pAD^{1-p-q}/(qC))^{1/(p+q)}`, with :math:`p = s` (SGD) or :math:`2s` (sign) and
  :math:`q = 2/\beta` for signSGD at :math:`1 < \beta < 2`, else 1 (the log at
  :math:`\beta = 2` is dropped). :math:`\gamma = \eta/B` (SGD) or :math:`\eta/\sqrt{B}`."""
  p, q = _powers(law.family, law.s, law.beta)
  _checks.positive("data", data)
  data = np.asarray(data, np.float64)
  return (p * law.signal * data ** (1 - p - q) / (q * law.noise)) ** (1 / (p + q))


def optimal_loss(law: ScalingLaw, data, batch_size=1, stability: float = 1.0):
  """Data-limited optimum :math:`E^*_D(B)` in the scaling regime (App. G.1-G.2).

  Minimizes :math:`A(D\\gamma)^{-p} + C\\gamma^q D^{q-1}` over
  :math:`\\gamma \\le \\gamma_{max}(B)` (``optimal_effective_learning_rate``), where
  stability caps :math:`\\eta \\lesssim 1/\\sqrt{B}` (sign) or :math:`\\eta \\lesssim 1`
  (SGD), i.e. :math:`\\gamma_{max} = c/B` in both cases (``stability`` = c). Below the
  critical batch size :math:`B^* = c/\\gamma^*` the loss is :math:`\\propto
  D^{-p/(p+q)}`; above it, :math:`\\approx A(D/B)^{-p}`.
  """
  p, q = _powers(law.family, law.s, law.beta)
  _checks.positive("batch_size", batch_size)
  _checks.positive("stability", stability)
  data = np.asarray(data, np.float64)
  gamma = np.minimum(optimal_effective_learning_rate(law, data),
                     stability / np.asarray(batch_size, np.float64))
  return law.signal * (data * gamma) ** -p + law.noise * gamma ** q * data ** (q - 1)


def critical_batch_size(law: ScalingLaw, data, stability: float = 1.0):
  """:math:`B^*_D = c/\\gamma^*_D \\propto D^{(p+q-1)/(p+q)}` (Li et al. 2026, App. G.2)."""
  _checks.positive("stability", stability)
  return stability / optimal_effective_learning_rate(law, data)


def _powers(family: str, s: float, beta: float) -> tuple[float, float]:
  """(p, q): the signal term's power :math:`(D\\gamma)^{-p}` and the noise term's
  :math:`\\gamma^q D^{q-1}` (:math:`q = 2/\\beta` for signSGD below :math:`\\beta = 2`)."""
  _check_family(family)
  _checks.positive("s", s)
  _check_beta(beta)
  if family == "sgd":
    return s, 1.0
  return 2 * s, (2 / beta if beta < 2 else 1.0)


def _check_beta(beta) -> None:
  """:math:`\\beta > 1` (the spectrum's trace is finite), inf allowed."""
  x = np.asarray(beta, np.float64) if not isinstance(beta, str) else np.nan
  if np.ndim(x) or np.isnan(x) or x <= 1:
    raise ValueError(f"beta: must be a number > 1 (inf allowed), got {beta!r}")


def _check_family(family: str) -> None:
  _checks.choice("family", family, OPTIMIZER_FAMILIES)


def _check_grid(learning_rate, batch_size, steps) -> None:
  """Learning rates >= 0, batch sizes > 0, steps >= 0 (all finite)."""
  _checks.non_negative("learning_rate", learning_rate)
  _checks.positive("batch_size", batch_size)
  _checks.non_negative("steps", steps)


# ----------------------------------------------------------------------------- Xiao et al. ODE


def signsgd_risk_ode(problem: PowerLawProblem, learning_rate: float, times, *,
                     dt: float | None = None, drift: str = "arcsine") -> np.ndarray:
  """Risk of signSGD with one sample per step and step size :math:`\\eta/d`, from the
  risk ODE of Xiao et al. (2024).

  In time :math:`t = k/d`, with :math:`v_j = E\\delta_j^2/2` and
  :math:`R = \\sum_j \\lambda_j v_j` (the excess risk), one step moves coordinate j by
  :math:`-(\\eta/d)\\,\\mathrm{sgn}(x_j r)`. For Gaussian features and noise, feature
  :math:`x_j` and residual :math:`r` are jointly Gaussian with correlation
  :math:`\\rho_j = \\sqrt{\\lambda_j}\\,\\delta_j / \\sqrt{2R + \\sigma^2}`, and
  :math:`E[\\mathrm{sgn}(x_j r)] = \\tfrac{2}{\\pi}\\arcsin\\rho_j` (the arcsine law;
  :math:`\\mathrm{sgn}^2 = 1` gives the source term exactly). Closing with
  :math:`|\\delta_j| = \\sqrt{2 v_j}`:

  .. math::
    \\frac{dv_j}{dt} = -\\frac{2\\eta}{\\pi}\\sqrt{2 v_j}\\,
      \\arcsin\\sqrt{\\frac{2\\lambda_j v_j}{2R + \\sigma^2}} + \\frac{\\eta^2}{2d}
    \\qquad (\\texttt{drift="arcsine"}).

  ``drift="linearized"`` replaces :math:`\\arcsin\\rho` by :math:`\\rho`, the form of
  Xiao et al.'s high-dimensional limit (every :math:`\\rho_j \\to 0`):
  :math:`dv_j/dt = -\\tfrac{4\\eta}{\\pi}\\sqrt{\\lambda_j}\\, v_j/\\sqrt{2R + \\sigma^2}
  + \\eta^2/(2d)`. On power-law problems the top coordinates keep :math:`\\rho_j` of
  order 1 early on at any d, where the linearized drift is too fast by up to
  :math:`\\pi/2`. Both close the moment hierarchy at :math:`E|\\delta_j| =
  \\sqrt{E\\delta_j^2}`, exact while the fluctuation of :math:`\\delta_j` (of order
  :math:`\\eta/\\sqrt{d}`) is small next to :math:`|\\delta_j|`. Solved by classical RK4
  (float64).

  Args:
    problem: the regression problem (d = ``problem.dim``).
    learning_rate: :math:`\\eta > 0` (the per-step size is :math:`\\eta/d`).
    times: non-decreasing times :math:`t \\ge 0` at which to report :math:`R(t)`.
    dt: RK4 step; default :math:`0.02 / \\eta`.
    drift: ``"arcsine"`` (exact for Gaussian data) or ``"linearized"``.

  Returns:
    ``R(t)`` at ``times``.
  """
  _checks.positive("learning_rate", learning_rate)
  _checks.non_negative("times", times)
  _checks.choice("drift", drift, ODE_DRIFTS)
  times = np.atleast_1d(np.asarray(times, np.float64))
  if np.any(np.diff(times) < 0):
    raise ValueError(f"times: must be non-decreasing, got {times.tolist()}")
  if dt is not None:
    _checks.positive("dt", dt)
  lam = np.asarray(problem.eigenvalues, np.float64)
  sqrt_lam = np.sqrt(lam)
  source = learning_rate**2 / (2.0 * problem.dim)
  sigma2 = problem.noise_std**2

  def f(v):
    v = np.maximum(v, 0.0)       # an RK4 stage may overshoot zero by rounding
    scale = np.sqrt(2.0 * np.dot(lam, v) + sigma2)
    if drift == "linearized":
      return -4.0 * learning_rate / np.pi * sqrt_lam * v / scale + source
    abs_delta = np.sqrt(2.0 * v)
    rho = np.minimum(sqrt_lam * abs_delta / scale, 1.0)
    return -2.0 * learning_rate / np.pi * abs_delta * np.arcsin(rho) + source

  dt = dt or 0.02 / learning_rate
  v = 0.5 * np.asarray(problem.theta_star, np.float64) ** 2
  t, out = 0.0, []
  for target in times:
    n = int(np.ceil((target - t) / dt - 1e-9))
    h = (target - t) / n if n > 0 else 0.0
    for _ in range(n):
      k1 = f(v)
      k2 = f(v + 0.5 * h * k1)
      k3 = f(v + 0.5 * h * k2)
      k4 = f(v + h * k3)
      v = v + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
    t = target
    out.append(np.dot(lam, v))
  return np.asarray(out)


# ----------------------------------------------------------------------------- PLRF (model size)
# Power-law random features (signflax.linreg.plrf): Paquette, Paquette, Xiao and Pennington
# (2024), "4+3 Phases of Compute-Optimal Neural Scaling Laws", and Kim, Song and Yun (2026),
# "Scaling Laws of SignSGD in Linear Regression: When Does It Outperform SGD?".

PLRF_PHASES = ("Ia", "Ib", "Ic", "II", "III", "IV")


def plrf_phase(alpha: float, beta: float) -> str:
  """Phase of (alpha, beta) in Paquette et al.'s phase plane (their Fig. 2a / Table 2).

  Above the high-dimensional line :math:`2\\alpha > 1`: Ia (:math:`2\\beta < 1`, capacity
  and pure-point forcing), II (:math:`2\\beta > 1`, :math:`\\beta < \\alpha`: pure-point and
  absolutely-continuous forcing) and III (:math:`2\\beta > 1`, :math:`\\beta > \\alpha`:
  SGD noise, the kernel term :math:`K_{pp}`, against the ac forcing). Below it
  (:math:`2\\alpha < 1`): Ib (:math:`2\\beta < 1`), Ic (:math:`2\\beta > 1`,
  :math:`\\alpha < 1/4`) and IV (:math:`2\\beta > 1`, :math:`1/4 < \\alpha < 1/2`; its
  sub-phases IVa/IVb are not separated here).
  """
  _check_plrf_exponents(alpha, beta)
  if 2 * alpha > 1:
    if 2 * beta < 1:
      return "Ia"
    return "II" if beta < alpha else "III"
  if 2 * beta < 1:
    return "Ib"
  return "Ic" if alpha < 0.25 else "IV"


def _check_plrf_exponents(alpha, beta) -> None:
  """alpha finite > 0, beta finite, 2(alpha + beta) > 1 (a finite risk)."""
  _checks.positive("alpha", alpha)
  _checks.greater_than("beta", beta, -math.inf)
  if 2 * (alpha + beta) <= 1:
    raise ValueError(f"alpha, beta: need alpha > 0 and 2(alpha + beta) > 1, "
                     f"got alpha={alpha}, beta={beta}")


def plrf_sgd_loss_terms(alpha: float, beta: float, dim, steps, learning_rate=1.0):
  """Leading orders of the four terms of Paquette et al.'s loss, up to constants:

  .. math::
    P(r) \\asymp F_{pp}(r) + F_{ac}(r) + F_0(d) + K_{pp}(r), \\qquad
    F_{pp} = (\\gamma r)^{-(2\\alpha + 2\\beta - 1)/(2\\alpha)},\\;
    F_{ac} = d^{-1} (\\gamma r)^{-1 + 1/(2\\alpha)} \\;(2\\beta > 1),\\;
    F_0 = d^{-2\\alpha + \\max(0, 1 - 2\\beta)},\\;
    K_{pp} = \\gamma (\\gamma r)^{-2 + 1/(2\\alpha)},

  for r steps of SGD with batch 1 and step :math:`\\gamma` above the high-dimensional
  line (their Eq. (12) and the forcing / kernel asymptotics of Sec. 3). Returns the
  dict ``{"F_pp", "F_ac", "F_0", "K_pp"}`` broadcast over ``dim`` and ``steps``.
  """
  _check_plrf_exponents(alpha, beta)
  _checks.positive("dim", dim)
  _checks.positive("steps", steps)
  _checks.positive("learning_rate", learning_rate)
  if not 2 * alpha > 1:
    raise ValueError(f"alpha: the leading terms here need 2 alpha > 1, got {alpha}")
  d, r = np.broadcast_arrays(np.asarray(dim, np.float64), np.asarray(steps, np.float64))
  t = learning_rate * r
  f_ac = (d ** -1.0 * t ** (-1 + 1 / (2 * alpha))) if 2 * beta > 1 else np.zeros_like(t)
  return {"F_pp": t ** (-(2 * alpha + 2 * beta - 1) / (2 * alpha)), "F_ac": f_ac,
          "F_0": d ** (-2 * alpha + max(0.0, 1 - 2 * beta)),
          "K_pp": learning_rate * t ** (-2 + 1 / (2 * alpha))}


class ComputeOptimal(NamedTuple):
  """Compute-optimal scaling :math:`P^*(F) \\propto F^{-\\eta}`, :math:`d^* \\propto F^{\\xi}`
  at compute :math:`F = d \\times` samples."""
  phase: str
  loss_exponent: float
  dim_exponent: float
  balance: str


def plrf_sgd_compute_optimal(alpha: float, beta: float) -> ComputeOptimal:
  """Predicted compute-optimal exponents of one-pass SGD (Paquette et al. Table 2),
  from balancing the two dominant terms of ``plrf_sgd_loss_terms`` at F = d r:

  * Ia: :math:`F_{pp} = F_0`: :math:`\\xi = 1/(2\\alpha+1)`,
    :math:`\\eta = (2\\alpha+2\\beta-1)/(2\\alpha+1)`;
  * II: :math:`F_{pp} = F_{ac}`: :math:`\\xi = \\beta/(\\alpha+\\beta)`,
    :math:`\\eta = (2\\alpha+2\\beta-1)/(2(\\alpha+\\beta))`;
  * III: :math:`K_{pp} = F_{ac}`: :math:`\\xi = 1/2`, :math:`\\eta = 1 - 1/(4\\alpha)`.

  Phases below the high-dimensional line need a learning rate that shrinks with v and
  are not covered (ValueError).
  """
  phase = plrf_phase(alpha, beta)
  if phase == "Ia":
    return ComputeOptimal(phase, (2 * alpha + 2 * beta - 1) / (2 * alpha + 1),
                          1 / (2 * alpha + 1), "F_pp = F_0")
  if phase == "II":
    return ComputeOptimal(phase, (2 * alpha + 2 * beta - 1) / (2 * (alpha + beta)),
                          beta / (alpha + beta), "F_pp = F_ac")
  if phase == "III":
    return ComputeOptimal(phase, 1 - 1 / (4 * alpha), 0.5, "K_pp = F_ac")
  raise ValueError(f"alpha: phase {phase} (2 alpha < 1) is not covered; need alpha > 1/2, "
                   f"got {alpha}")


def plrf_signsgd_claims(alpha: float, beta: float) -> dict:
  """Kim et al. (2026)'s statements about signSGD vs SGD on PLRF, as far as they are
  stated as conditions on (alpha, beta) (their abstract and Sec. 4-5):

  * ``"sign_steeper_than_sgd"``: where SGD's frontier is set by its noise (Phase III,
    :math:`K_{pp}` in the balance), signSGD's noise reshaping makes its compute-optimal
    slope steeper than SGD's; elsewhere no steeper slope is claimed (None).
  * ``"stable_decay_steeper"``: with fast feature decay and slow target decay
    (:math:`\\alpha > \\beta`), a stable-decay schedule lowers signSGD's noise term and
    steepens the slope; elsewhere no claim (None).

  The closed-form signSGD exponents are not encoded here: only the direction of each
  claim, which the compute_optimal experiment checks.
  """
  phase = plrf_phase(alpha, beta)
  return {"phase": phase,
          "sign_steeper_than_sgd": True if phase == "III" else None,
          "stable_decay_steeper": True if alpha > beta else None}
