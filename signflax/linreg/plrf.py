"""Power-law random features (PLRF): linear regression with a model size.

The model of Paquette, Paquette, Xiao and Pennington (2024), "4+3 Phases of
Compute-Optimal Neural Scaling Laws", Sec. 2 (also Kim, Song and Yun 2026, Sec. 2):
data :math:`x \\in \\mathbb{R}^v` with :math:`x_j \\sim N(0, j^{-2\\alpha})`, target
:math:`y = \\langle x, b \\rangle` with :math:`b_j = j^{-\\beta}`, and a model of size
:math:`d \\le v` that sees the random embedding :math:`W^T x`, :math:`W_{ij} \\sim
N(0, 1/d)`. With :math:`D = \\mathrm{diag}(j^{-2\\alpha})`, the population risk is exact:

.. math::
  P(\\theta) = \\tfrac12 E_x(\\langle W^T x, \\theta \\rangle - \\langle x, b\\rangle)^2
             = \\tfrac12 \\| D^{1/2} (W\\theta - b) \\|^2

(Paquette et al. Eq. (2) up to the factor 1/2 the lab uses throughout). Training is one
pass over fresh samples: each step draws B new :math:`x`'s (real minibatch noise).

``simulate_plrf`` trains seeds x configs in one jitted program per ``(v, d)`` shape, the
seed axis sharded over a 1-D mesh like ``linreg.simulate``; a config is a (learning
rate, horizon, schedule) triple, so constant, WSD and stable-decay (WSD without warmup) runs of
every horizon share one compiled program. ``sgd_plrf_risk_recursion`` is the exact
expected risk of SGD for a fixed W.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from signflax.linreg.simulator import seed_mesh
from signflax.optim import wsd_schedule

SCHEDULES = ("constant", "wsd", "stable_decay")
# Horizon-free reference length of the schedule: a run of horizon H reads the schedule
# of this length at step k * _REFERENCE_STEPS / H, so every horizon is a traced number.
_REFERENCE_STEPS = 2**24

OptimizerFn = Callable[[optax.ScalarOrSchedule], optax.GradientTransformation]


class PLRFProblem(NamedTuple):
  """A power-law random-features problem.

  Attributes:
    feature_std: ``(v,)`` :math:`j^{-\\alpha}` (standard deviations of x).
    target: ``(v,)`` :math:`b_j = j^{-\\beta}`.
    embedding: ``(v, d)`` :math:`W`, entries :math:`N(0, 1/d)`.
    noise_std: label noise :math:`\\sigma` (0 in the papers).
    alpha, beta: data and target complexity.
  """
  feature_std: jnp.ndarray
  target: jnp.ndarray
  embedding: jnp.ndarray
  noise_std: float
  alpha: float
  beta: float

  @property
  def num_features(self) -> int:
    return int(self.embedding.shape[0])

  @property
  def dim(self) -> int:
    return int(self.embedding.shape[1])


def plrf_problem(num_features: int, dim: int, alpha: float, beta: float, *,
                 noise_std: float = 0.0, seed: int = 0, dtype=jnp.float32) -> PLRFProblem:
  """Builds the PLRF problem with v = ``num_features`` and d = ``dim``; ``W`` is drawn from
  ``PRNGKey(seed)`` folded with d, so each model size has its own embedding."""
  if not alpha > 0:
    raise ValueError(f"alpha: must be > 0, got {alpha}")
  if dim < 1:
    raise ValueError(f"dim: must be >= 1, got {dim}")
  if num_features < dim:
    raise ValueError(f"num_features: must be >= dim={dim} (v >= d), got {num_features}")
  if 2 * (alpha + beta) <= 1:
    raise ValueError(f"alpha, beta: need 2(alpha + beta) > 1 for a finite risk, "
                     f"got alpha={alpha}, beta={beta}")
  if noise_std < 0:
    raise ValueError(f"noise_std: must be >= 0, got {noise_std}")
  j = np.arange(1, num_features + 1, dtype=np.float64)
  key = jax.random.fold_in(jax.random.PRNGKey(seed), dim)
  embedding = jax.random.normal(key, (num_features, dim), dtype) / np.sqrt(dim)
  return PLRFProblem(jnp.asarray(j ** -alpha, dtype), jnp.asarray(j ** -beta, dtype),
                     embedding, float(noise_std), float(alpha), float(beta))


def plrf_risk(problem: PLRFProblem, theta: jnp.ndarray) -> jnp.ndarray:
  """Exact population risk :math:`\\tfrac12\\|D^{1/2}(W\\theta - b)\\|^2` (module
  docstring); reduces over the last axis of ``theta`` ``(..., d)``."""
  residual = (theta @ problem.embedding.T - problem.target) * problem.feature_std
  return 0.5 * jnp.sum(residual * residual, axis=-1)


def _moments(problem: PLRFProblem):
  """:math:`K = W^T D W`, :math:`c = W^T D b`, :math:`b^T D b` in float64."""
  w = np.asarray(problem.embedding, np.float64)
  var = np.asarray(problem.feature_std, np.float64) ** 2
  b = np.asarray(problem.target, np.float64)
  return w.T @ (var[:, None] * w), w.T @ (var * b), float(b @ (var * b))


def plrf_limit_risk(problem: PLRFProblem) -> float:
  """:math:`\\min_\\theta P(\\theta)` -- the capacity floor :math:`F_0(d)` of Paquette
  et al. Eq. (12) at this W (float64 least squares)."""
  kernel, cross, bias = _moments(problem)
  theta = np.linalg.lstsq(kernel, cross, rcond=None)[0]
  return 0.5 * float(bias - cross @ theta)


def sgd_plrf_risk_recursion(problem: PLRFProblem, learning_rates, batch_size: int,
                            steps) -> np.ndarray:
  """Exact :math:`E[P(\\theta_k)]` of constant-step minibatch SGD at fixed W.

  With :math:`K = W^T D W`, :math:`c = W^T D b`, mean :math:`m_k = E\\theta_k` and second
  moment :math:`S_k = E\\theta_k\\theta_k^T`, Gaussian x (Isserlis:
  :math:`E[xx^T A xx^T] = 2DAD + \\mathrm{tr}(DA)D`) gives

  .. math::
    m_{k+1} &= m_k - \\eta(Km_k - c) \\\\
    S_{k+1} &= S_k - \\eta(KS_k + S_kK - cm_k^T - m_kc^T)
      + \\eta^2\\big[(1 + \\tfrac1B)(KS_kK - Km_kc^T - cm_k^TK + cc^T)
      + \\tfrac1B(2E_k + \\sigma^2)K\\big],

  where :math:`E_k = \\tfrac12(\\mathrm{tr}(KS_k) - 2c^Tm_k + b^TDb) = E[P(\\theta_k)]`;
  the SGD recursion behind Paquette et al.'s Volterra equation (Eq. (8)), without the
  high-dimensional approximation. Float64 NumPy, O(d^3) per step.

  Returns:
    ``(n_lr, n_steps)`` expected risk at ``steps``.
  """
  kernel, cross, bias = _moments(problem)
  steps = np.asarray(steps, np.int64)
  eta = np.atleast_1d(np.asarray(learning_rates, np.float64))[:, None]       # (L, 1)
  inv_b, noise = 1.0 / batch_size, problem.noise_std ** 2
  with np.errstate(all="ignore"):  # a divergent step size overflows to inf / nan
    out = _iterate_moments(kernel, cross, bias, eta, inv_b, noise, steps)
  return np.where(np.isfinite(out) & (out >= 0), out, np.inf)  # < 0: overflowed


def _iterate_moments(kernel, cross, bias, eta, inv_b, noise, steps):
  out = np.zeros((eta.size, steps.size))
  mean = np.zeros((eta.size, cross.size))                                   # (L, d)
  second = np.zeros((eta.size,) + kernel.shape)                             # (L, d, d)
  for k in range(int(steps.max()) + 1):
    risk = 0.5 * (np.einsum("ij,lij->l", kernel, second) - 2 * mean @ cross + bias)
    out[:, steps == k] = risk[:, None]
    km, ks = mean @ kernel, kernel @ second                                 # K symmetric
    outer = km[:, :, None] * cross
    cm = cross[:, None] * mean[:, None, :]
    drift = ks + np.swapaxes(ks, 1, 2) - cm - np.swapaxes(cm, 1, 2)
    quad = (1 + inv_b) * (ks @ kernel - outer - np.swapaxes(outer, 1, 2) + np.outer(cross, cross))
    quad += (inv_b * (2 * risk + noise))[:, None, None] * kernel
    mean = mean - eta * (km - cross)
    second = second - eta[:, :, None] * drift + (eta ** 2)[:, :, None] * quad
  return out


# ----------------------------------------------------------------------------- simulation


class PLRFResult(NamedTuple):
  """Risk of a grid of PLRF runs.

  Attributes:
    steps: ``(n_record,)`` steps at which the risk was recorded.
    risk: ``(n_seeds, n_configs, n_record)`` population risk :math:`P(\\theta_k)`.
    learning_rates, horizons, schedules: ``(n_configs,)`` of each config.
  """
  steps: np.ndarray
  risk: np.ndarray
  learning_rates: np.ndarray
  horizons: np.ndarray
  schedules: np.ndarray


def _unit_schedule(decay_fraction: float, warmup_fraction: float):
  r"""``(step, horizon, schedule code) -> rate / peak`` for every schedule at once:
  ``signflax.optim.wsd_schedule`` of a fixed reference length, read at
  :math:`\lfloor k R / H \rfloor` so the horizon H may be traced; the constant
  schedule is the no-warmup WSD with :math:`H = \infty` (it never decays)."""
  plain = wsd_schedule(1.0, _REFERENCE_STEPS, decay_fraction=decay_fraction)
  warm = wsd_schedule(1.0, _REFERENCE_STEPS, decay_fraction=decay_fraction,
                      warmup_steps=int(round(warmup_fraction * _REFERENCE_STEPS)))

  def unit(step, horizon, code):
    horizon = jnp.where(code == SCHEDULES.index("constant"), jnp.inf, horizon)
    position = jnp.minimum(jnp.floor(step * (_REFERENCE_STEPS / horizon)), _REFERENCE_STEPS)
    position = position.astype(jnp.int32)
    return jnp.where(code == SCHEDULES.index("wsd"), warm(position), plain(position))
  return unit


def scheduled_learning_rate(schedule: str, learning_rate, horizon, *,
                            decay_fraction: float = 0.2,
                            warmup_fraction: float = 0.05) -> optax.Schedule:
  """Step -> learning rate of one run: constant, ``signflax.optim.wsd_schedule`` ending
  at ``horizon`` (``"wsd"``, warmup ``warmup_fraction``) or the same without warmup
  (``"stable_decay"``, Kim et al. 2026 Sec. 5). ``learning_rate`` and ``horizon`` may be
  traced."""
  if schedule not in SCHEDULES:
    raise ValueError(f"schedule: must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
  unit = _unit_schedule(decay_fraction, warmup_fraction)
  code = SCHEDULES.index(schedule)
  return lambda step: learning_rate * unit(step, jnp.asarray(horizon, jnp.float32), code)


def _draw(key, step, batch_size: int, num_features: int, dtype):
  """Standard normals for step ``step`` of one seed: features ``(B, v)``, label noise ``(B,)``."""
  features, labels = jax.random.split(jax.random.fold_in(key, step))
  return (jax.random.normal(features, (batch_size, num_features), dtype),
          jax.random.normal(labels, (batch_size,), dtype))


@functools.partial(jax.jit, static_argnames=("optimizer_fn", "batch_size", "decay_fraction",
                                             "warmup_fraction", "sharding"))
def _run_plrf(feature_std, target, embedding, noise_std, seed_keys, learning_rates, horizons,
              codes, record_steps, *, optimizer_fn: OptimizerFn, batch_size: int,
              decay_fraction: float, warmup_fraction: float, sharding: NamedSharding):
  """Runs ``(S, C)`` runs to ``record_steps[-1]``; returns the risk ``(R, S, C)``."""
  num_seeds, num_configs = seed_keys.shape[0], learning_rates.shape[0]
  v, d = embedding.shape
  dtype = embedding.dtype
  unit = _unit_schedule(decay_fraction, warmup_fraction)
  opt = lambda lr, h, code: optimizer_fn(lambda k: lr * unit(k, h, code))
  theta = jax.lax.with_sharding_constraint(jnp.zeros((num_seeds, num_configs, d), dtype),
                                           sharding)
  config = (learning_rates, horizons, codes)
  init = lambda lr, h, code, th: opt(lr, h, code).init(th)
  opt_state = jax.vmap(jax.vmap(init, (0, 0, 0, 0)), (None, None, None, 0))(*config, theta)

  def update(lr, h, code, grad, state, th):
    updates, state = opt(lr, h, code).update(grad, state, th)
    return optax.apply_updates(th, updates), state

  update_all = jax.vmap(jax.vmap(update, (0,) * 6), (None, None, None, 0, 0, 0))

  def step(k, carry):
    theta, opt_state = carry
    z, eps = jax.vmap(lambda key: _draw(key, k, batch_size, v, dtype))(seed_keys)
    x = z * feature_std                                            # (S, B, v)
    features = x @ embedding                                       # (S, B, d)
    labels = x @ target + noise_std * eps                          # (S, B)
    residual = jnp.einsum("sbd,scd->scb", features, theta) - labels[:, None, :]
    grads = jnp.einsum("sbd,scb->scd", features, residual) / batch_size
    theta, opt_state = update_all(*config, grads, opt_state, theta)
    return jax.lax.with_sharding_constraint(theta, sharding), opt_state

  def segment(carry, stop):
    theta, opt_state, start = carry
    theta, opt_state = jax.lax.fori_loop(start, stop, step, (theta, opt_state))
    residual = (theta @ embedding.T - target) * feature_std
    return (theta, opt_state, stop), 0.5 * jnp.sum(residual * residual, axis=-1)

  _, risk = jax.lax.scan(segment, (theta, opt_state, jnp.zeros((), record_steps.dtype)),
                         record_steps)
  return risk


def simulate_plrf(problem: PLRFProblem, optimizer_fn: OptimizerFn, learning_rates,
                  batch_size: int, num_steps: int, *, horizons=None, schedules="constant",
                  decay_fraction: float = 0.2, warmup_fraction: float = 0.05,
                  num_seeds: int = 8, seed: int = 0, record_steps=None,
                  devices: Sequence[jax.Device] | None = None) -> PLRFResult:
  """Trains seeds x configs on ``problem`` in one jitted program.

  Args:
    problem: the PLRF problem.
    optimizer_fn: ``learning_rate -> optax.GradientTransformation`` (``optax.sgd``,
      ``optax.sign_sgd``, ``lambda lr: signflax.optim.get_optimizer("signum", lr)``...);
      it receives a traced scalar or, for a schedule, a step -> rate function. Reuse one
      function object to reuse the compiled program.
    learning_rates: ``(C,)`` peak learning rate of each config.
    batch_size: fresh samples per step, B.
    num_steps: steps every run takes.
    horizons: ``(C,)`` steps at which each config's schedule ends (default
      ``num_steps``); after its horizon a WSD run's rate is 0, so its risk is frozen.
    schedules: one of ``SCHEDULES`` for every config, or ``(C,)`` names: constant, WSD
      and stable-decay runs share one program.
    decay_fraction, warmup_fraction: WSD shape (warmup only for ``"wsd"``).
    num_seeds, seed: run ``i`` draws step k's samples from
      ``fold_in(fold_in(PRNGKey(seed), i), k)``, independent of devices and configs.
    record_steps: increasing steps at which to record (``num_steps`` appended).
    devices: devices of the mesh the seed axis is sharded over (default: all).

  Returns:
    ``PLRFResult`` with risk ``(num_seeds, C, n_record)``.
  """
  names = np.broadcast_to(np.asarray(schedules, object), np.shape(np.atleast_1d(learning_rates)))
  for name in set(names.tolist()):
    if name not in SCHEDULES:
      raise ValueError(f"schedules: must be one of {', '.join(SCHEDULES)}, got {name!r}")
  codes = np.asarray([SCHEDULES.index(n) for n in names.tolist()], np.int32)
  if batch_size < 1 or num_steps < 1:
    raise ValueError(f"batch_size, num_steps: must be >= 1, got {batch_size}, {num_steps}")
  lrs = np.atleast_1d(np.asarray(learning_rates, np.float64))
  horizons = np.full(lrs.shape, num_steps) if horizons is None else np.asarray(horizons)
  if horizons.shape != lrs.shape or np.any(horizons < 1):
    raise ValueError("horizons: must be >= 1 and shaped like learning_rates")
  steps = np.asarray([num_steps] if record_steps is None else record_steps, np.int64)
  if steps[-1] != num_steps:
    steps = np.append(steps, num_steps)
  if np.any(np.diff(steps) < 0) or steps[0] < 0:
    raise ValueError("record_steps: must be non-decreasing and within [0, num_steps]")
  mesh = seed_mesh(devices)
  padded = -(-num_seeds // mesh.devices.size) * mesh.devices.size
  seed_keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.PRNGKey(seed),
                                                       jnp.arange(padded))
  runs, replicated = NamedSharding(mesh, P("runs")), NamedSharding(mesh, P())
  dtype = problem.embedding.dtype
  args = jax.device_put((problem.feature_std, problem.target, problem.embedding,
                         jnp.asarray(problem.noise_std, dtype), ), replicated)
  risk = _run_plrf(*args, jax.device_put(seed_keys, runs),
                   jax.device_put(jnp.asarray(lrs, dtype), replicated),
                   jax.device_put(jnp.asarray(horizons, jnp.float32), replicated),
                   jax.device_put(jnp.asarray(codes), replicated),
                   jax.device_put(jnp.asarray(steps, jnp.int32), replicated),
                   optimizer_fn=optimizer_fn, batch_size=int(batch_size),
                   decay_fraction=float(decay_fraction), warmup_fraction=float(warmup_fraction),
                   sharding=runs)
  if jax.process_count() > 1:
    risk = multihost_utils.process_allgather(risk, tiled=True)
  risk = np.moveaxis(np.asarray(risk)[:, :num_seeds], 0, -1)      # (S, C, R)
  return PLRFResult(steps=steps, risk=risk, learning_rates=lrs, horizons=horizons,
                    schedules=names)
