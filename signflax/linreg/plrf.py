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

from signflax.linreg import _checks, kernels
from signflax.linreg.simulator import seed_mesh, steps_per_chunk
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
                 noise_std: float = 0.0, seed=0, dtype=jnp.float32) -> PLRFProblem:
  """Builds the PLRF problem with v = ``num_features`` and d = ``dim``; ``W`` is drawn from
  ``PRNGKey(seed)`` folded with d, so each model size has its own embedding.

  ``seed`` may also be a sequence of E seeds: ``embedding`` is then a stack ``(E, v, d)``
  of the E feature matrices (``simulate_plrf`` trains every one in the same program)."""
  _checks.integer("num_features", num_features, 1)
  _checks.integer("dim", dim, 1)
  _checks.positive("alpha", alpha)
  _checks.greater_than("beta", beta, -np.inf)
  _checks.non_negative("noise_std", noise_std)
  if num_features < dim:
    raise ValueError(f"num_features: must be >= dim={dim} (v >= d), got {num_features}")
  if 2 * (alpha + beta) <= 1:
    raise ValueError(f"alpha, beta: need 2(alpha + beta) > 1 for a finite risk, "
                     f"got alpha={alpha}, beta={beta}")
  stacked = np.ndim(seed) > 0
  seeds = np.atleast_1d(np.asarray(seed, object))
  if seeds.size == 0 or seeds.ndim != 1:
    raise ValueError(f"seed: must be an integer >= 0 or a non-empty list of them, got {seed!r}")
  for s in seeds.tolist():
    _checks.integer("seed", s, 0)
  j = np.arange(1, num_features + 1, dtype=np.float64)
  draw = lambda s: jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(s), dim),
                                     (num_features, dim), dtype) / np.sqrt(dim)
  embedding = jnp.stack([draw(s) for s in seeds.tolist()]) if stacked else draw(seeds[0])
  return PLRFProblem(jnp.asarray(j ** -alpha, dtype), jnp.asarray(j ** -beta, dtype),
                     embedding, float(noise_std), float(alpha), float(beta))


def embeddings(problem: PLRFProblem) -> list[PLRFProblem]:
  """The problems of a stack ``(E, v, d)`` one by one (a single problem: itself)."""
  if problem.embedding.ndim == 2:
    return [problem]
  return [problem._replace(embedding=w) for w in problem.embedding]


def _check_problem(problem) -> None:
  if not isinstance(problem, PLRFProblem):
    raise ValueError(f"problem: must be a PLRFProblem (plrf_problem), got {type(problem).__name__}")


def _check_single(problem) -> None:
  _check_problem(problem)
  if problem.embedding.ndim != 2:
    raise ValueError("problem: must have one feature matrix W (v, d); split a stack with "
                     "plrf.embeddings")


def plrf_risk(problem: PLRFProblem, theta: jnp.ndarray) -> jnp.ndarray:
  """Exact population risk :math:`\\tfrac12\\|D^{1/2}(W\\theta - b)\\|^2` (module
  docstring); reduces over the last axis of ``theta`` ``(..., d)``."""
  _check_single(problem)
  theta = jnp.asarray(theta, problem.embedding.dtype)
  if theta.ndim < 1 or theta.shape[-1] != problem.dim or not bool(jnp.all(jnp.isfinite(theta))):
    raise ValueError(f"theta: must be finite with last axis d={problem.dim}, got shape "
                     f"{theta.shape}")
  return _risk_jit(problem.feature_std, problem.target, problem.embedding, theta)


def _risk(feature_std, target, embedding, theta):
  """:math:`P(\\theta)` for ``theta`` ``(..., d)`` and ``embedding`` ``(v, d)`` (or one per
  leading row, ``(S, v, d)`` with ``theta`` ``(S, C, d)``), summed in a fixed order."""
  w = embedding if embedding.ndim == 2 else embedding[:, None]
  projected = kernels.ordered_dot(theta[..., None, :], w, -1)                 # (..., v)
  residual = (projected - target) * feature_std
  return 0.5 * kernels.ordered_sum(residual * residual, -1)


_risk_jit = jax.jit(_risk)   # the ordered sums are many small ops: one program, not op by op


def _moments(problem: PLRFProblem):
  """:math:`K = W^T D W`, :math:`c = W^T D b`, :math:`b^T D b` in float64."""
  w = np.asarray(problem.embedding, np.float64)
  var = np.asarray(problem.feature_std, np.float64) ** 2
  b = np.asarray(problem.target, np.float64)
  return w.T @ (var[:, None] * w), w.T @ (var * b), float(b @ (var * b))


def plrf_limit_risk(problem: PLRFProblem) -> float:
  """:math:`\\min_\\theta P(\\theta)` -- the capacity floor :math:`F_0(d)` of Paquette
  et al. Eq. (12) at this W (float64 least squares)."""
  _check_single(problem)
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
  _check_single(problem)
  _checks.positive("learning_rates", learning_rates)
  _checks.integer("batch_size", batch_size, 1)
  _check_steps("steps", steps)
  kernel, cross, bias = _moments(problem)
  steps = np.asarray(steps, np.int64)
  eta = np.atleast_1d(np.asarray(learning_rates, np.float64))[:, None]       # (L, 1)
  inv_b, noise = 1.0 / batch_size, problem.noise_std ** 2
  with np.errstate(all="ignore"):  # a divergent step size overflows to inf / nan
    out = _iterate_moments(kernel, cross, bias, eta, inv_b, noise, steps)
  return np.where(np.isfinite(out) & (out >= 0), out, np.inf)  # < 0: overflowed


def _check_steps(name: str, steps) -> None:
  """A non-empty 1-D list of integers >= 0."""
  _checks.non_negative(name, steps)
  values = np.asarray(steps, np.float64)
  if values.ndim != 1 or np.any(values % 1):
    raise ValueError(f"{name}: must be a 1-D list of integers >= 0, got {steps!r}")


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


def _check_fractions(decay_fraction, warmup_fraction) -> None:
  _checks.positive("decay_fraction", decay_fraction)
  _checks.non_negative("warmup_fraction", warmup_fraction)
  if decay_fraction > 1:
    raise ValueError(f"decay_fraction: must be in (0, 1], got {decay_fraction!r}")
  if warmup_fraction >= 1 - decay_fraction:
    raise ValueError(f"warmup_fraction: must be in [0, 1 - decay_fraction), got "
                     f"{warmup_fraction!r}")


def scheduled_learning_rate(schedule: str, learning_rate, horizon, *,
                            decay_fraction: float = 0.2,
                            warmup_fraction: float = 0.05) -> optax.Schedule:
  """Step -> learning rate of one run: constant, ``signflax.optim.wsd_schedule`` ending
  at ``horizon`` (``"wsd"``, warmup ``warmup_fraction``) or the same without warmup
  (``"stable_decay"``, Kim et al. 2026 Sec. 5). ``learning_rate`` and ``horizon`` may be
  traced (then they are not checked)."""
  _checks.choice("schedule", schedule, SCHEDULES)
  if not isinstance(learning_rate, jax.core.Tracer):
    _checks.non_negative("learning_rate", learning_rate)
  if not isinstance(horizon, jax.core.Tracer):
    _checks.positive("horizon", horizon)
  _check_fractions(decay_fraction, warmup_fraction)
  unit = _unit_schedule(decay_fraction, warmup_fraction)
  code = SCHEDULES.index(schedule)
  return lambda step: learning_rate * unit(step, jnp.asarray(horizon, jnp.float32), code)


def chunk_size(num_features: int, batch_size: int) -> int:
  """Steps whose samples are drawn and embedded together: a power of two <= 64 with at
  most 2^18 numbers per row. It depends only on (v, B), so each row's embedding is a
  matrix product of one fixed shape ``(U B, v) x (v, d + 1)``."""
  return steps_per_chunk(batch_size * (num_features + 1), 2**18)


def _draw(key, step, batch_size: int, num_features: int, dtype):
  """Standard normals for step ``step`` of one seed: features ``(B, v)``, label noise ``(B,)``."""
  features, labels = jax.random.split(jax.random.fold_in(key, step))
  return (kernels.normal(features, (batch_size, num_features), dtype),
          kernels.normal(labels, (batch_size,), dtype))


def _embed_chunk(seed_keys, chunk, feature_std, embedding_and_target, noise_std, *,
                 steps_per_chunk: int, batch_size: int):
  r"""Features ``(S, U, B, d)`` and labels ``(S, U, B)`` of steps ``[cU, (c + 1)U)``.

  Step k's samples are drawn from ``fold_in(seed_key, k)`` (as if one step at a time);
  the embedding :math:`x \mapsto (W^T x, \langle x, b\rangle)` of the chunk's U B
  samples is one batched matrix product per row."""
  num_seeds, v = seed_keys.shape[0], feature_std.shape[0]
  steps = chunk * steps_per_chunk + jnp.arange(steps_per_chunk)
  draw = lambda key, k: _draw(key, k, batch_size, v, feature_std.dtype)
  z, eps = jax.vmap(lambda key: jax.vmap(lambda k: draw(key, k))(steps))(seed_keys)
  x = (z * feature_std).reshape(num_seeds, steps_per_chunk * batch_size, v)
  out = jnp.einsum("smv,svn->smn", x, embedding_and_target)
  out = out.reshape(num_seeds, steps_per_chunk, batch_size, -1)
  return out[..., :-1], out[..., -1] + noise_std * eps


@functools.partial(jax.jit, static_argnames=("optimizer_fn", "batch_size", "decay_fraction",
                                             "warmup_fraction", "sharding"))
def _run_plrf(feature_std, target, embedding, noise_std, seed_keys, embedding_index,
              learning_rates, horizons, codes, record_steps, *, optimizer_fn: OptimizerFn,
              batch_size: int, decay_fraction: float, warmup_fraction: float,
              sharding: NamedSharding):
  """Runs ``(S, C)`` runs to ``record_steps[-1]``, run row s on feature matrix
  ``embedding[embedding_index[s]]``; returns the risk ``(R, S, C)``."""
  num_seeds, num_configs = seed_keys.shape[0], learning_rates.shape[0]
  _, v, d = embedding.shape
  dtype = embedding.dtype
  steps_per_chunk = chunk_size(v, batch_size)
  # Each row's own [W | b] (S, v, d + 1), sharded with the rows and hidden from the
  # optimizer behind a barrier: the embedding stays a batched product of one shape per
  # row, which XLA:CPU computes the same whatever the rows beside it (property-tested;
  # a broadcast W would be folded into one product whose order follows S).
  rows = embedding[embedding_index]
  rows = jnp.concatenate([rows, jnp.broadcast_to(target[:, None], (num_seeds, v, 1))], -1)
  rows = jax.lax.optimization_barrier(jax.lax.with_sharding_constraint(rows, sharding))
  w = embedding[0] if embedding.shape[0] == 1 else rows[..., :-1]
  unit = _unit_schedule(decay_fraction, warmup_fraction)
  # The barrier keeps each run's rate a scalar: fused into the update, it would be
  # recomputed for every coordinate.
  rate = lambda lr, h, code: lambda k: jax.lax.optimization_barrier(lr * unit(k, h, code))
  opt = lambda lr, h, code: optimizer_fn(rate(lr, h, code))
  theta = jax.lax.with_sharding_constraint(jnp.zeros((num_seeds, num_configs, d), dtype),
                                           sharding)
  config = (learning_rates, horizons, codes)
  init = lambda lr, h, code, th: opt(lr, h, code).init(th)
  opt_state = jax.vmap(jax.vmap(init, (0, 0, 0, 0)), (None, None, None, 0))(*config, theta)

  def update(lr, h, code, grad, state, th):
    updates, state = opt(lr, h, code).update(grad, state, th)
    return optax.apply_updates(th, updates), state

  update_all = jax.vmap(jax.vmap(update, (0,) * 6), (None, None, None, 0, 0, 0))

  def run_steps(start, stop, carry):
    """Steps ``start .. stop - 1``, a chunk of samples at a time."""
    def chunk(c, carry):
      features, labels = _embed_chunk(seed_keys, c, feature_std, rows, noise_std,
                                      steps_per_chunk=steps_per_chunk, batch_size=batch_size)

      def step(i, carry):
        theta, opt_state = carry
        grads = kernels.minibatch_gradient(features[:, i], theta, labels[:, i])
        theta, opt_state = update_all(*config, grads, opt_state, theta)
        return jax.lax.with_sharding_constraint(theta, sharding), opt_state

      first = c * steps_per_chunk
      lo = jnp.clip(start - first, 0, steps_per_chunk)
      hi = jnp.clip(stop - first, 0, steps_per_chunk)
      return jax.lax.fori_loop(lo, hi, step, carry)

    return jax.lax.fori_loop(start // steps_per_chunk,
                             (stop + steps_per_chunk - 1) // steps_per_chunk, chunk, carry)

  def segment(carry, stop):
    theta, opt_state, start = carry
    theta, opt_state = run_steps(start, stop, (theta, opt_state))
    return (theta, opt_state, stop), _risk(feature_std, target, w, theta)

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
    problem: the PLRF problem, or a stack of E feature matrices
      (``plrf_problem(..., seed=[...])``): every seed then runs on every W.
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
      ``fold_in(fold_in(PRNGKey(seed), i), k)``, independent of devices, configs and W
      (every W of a stack sees the same samples).
    record_steps: increasing steps at which to record (``num_steps`` appended).
    devices: devices of the mesh the run axis (W x seeds) is sharded over (default: all).

  Returns:
    ``PLRFResult`` with risk ``(num_seeds, C, n_record)``, or ``(E, num_seeds, C,
    n_record)`` for a stack of E feature matrices. Every run's risk is bit-identical
    whatever the device count, seed count, configs and stack it shares the program with.
  """
  _check_problem(problem)
  _checks.non_negative("learning_rates", learning_rates)
  lrs = np.atleast_1d(np.asarray(learning_rates, np.float64))
  if lrs.ndim != 1:
    raise ValueError(f"learning_rates: must be a 1-D list, got shape {lrs.shape}")
  names = np.asarray(schedules, object)
  if names.ndim > 1 or (names.ndim == 1 and names.shape != lrs.shape):
    raise ValueError(f"schedules: must be one name or one per learning rate ({lrs.size}), "
                     f"got {schedules!r}")
  names = np.broadcast_to(names, lrs.shape)
  for name in set(names.tolist()):
    _checks.choice("schedules", name, SCHEDULES)
  codes = np.asarray([SCHEDULES.index(n) for n in names.tolist()], np.int32)
  _checks.integer("batch_size", batch_size, 1)
  _checks.integer("num_steps", num_steps, 1)
  _checks.integer("num_seeds", num_seeds, 1)
  _checks.integer("seed", seed, 0)
  _check_fractions(decay_fraction, warmup_fraction)
  if horizons is None:
    horizons = np.full(lrs.shape, num_steps)
  else:
    _checks.positive("horizons", horizons)
    horizons = np.asarray(horizons, np.float64)
    if horizons.shape != lrs.shape:
      raise ValueError(f"horizons: must be shaped like learning_rates {lrs.shape}, got "
                       f"{horizons.shape}")
  if record_steps is not None:
    _check_steps("record_steps", record_steps)
  steps = np.asarray([num_steps] if record_steps is None else record_steps, np.int64)
  if steps.size == 0 or steps[-1] != num_steps:
    steps = np.append(steps, num_steps)
  if np.any(np.diff(steps) < 0) or steps[-1] > num_steps:
    raise ValueError("record_steps: must be non-decreasing and within [0, num_steps]")
  stack = problem.embedding if problem.embedding.ndim == 3 else problem.embedding[None]
  num_w = stack.shape[0]
  mesh = seed_mesh(devices)
  rows = num_w * num_seeds
  padded = -(-rows // mesh.devices.size) * mesh.devices.size
  row = np.arange(padded)
  seed_index = row % num_seeds                      # padding rows repeat real runs
  w_index = np.minimum(row // num_seeds, num_w - 1)
  seed_keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.PRNGKey(seed),
                                                       jnp.asarray(seed_index))
  runs, replicated = NamedSharding(mesh, P("runs")), NamedSharding(mesh, P())
  dtype = problem.embedding.dtype
  args = jax.device_put((problem.feature_std, problem.target, stack,
                         jnp.asarray(problem.noise_std, dtype)), replicated)
  risk = _run_plrf(*args, jax.device_put(seed_keys, runs),
                   jax.device_put(jnp.asarray(w_index, jnp.int32), runs),
                   jax.device_put(jnp.asarray(lrs, dtype), replicated),
                   jax.device_put(jnp.asarray(horizons, jnp.float32), replicated),
                   jax.device_put(jnp.asarray(codes), replicated),
                   jax.device_put(jnp.asarray(steps, jnp.int32), replicated),
                   optimizer_fn=optimizer_fn, batch_size=int(batch_size),
                   decay_fraction=float(decay_fraction), warmup_fraction=float(warmup_fraction),
                   sharding=runs)
  if jax.process_count() > 1:
    risk = multihost_utils.process_allgather(risk, tiled=True)
  risk = np.moveaxis(np.asarray(risk)[:, :rows], 0, -1)          # (E * S, C, R)
  risk = risk.reshape((num_w, num_seeds) + risk.shape[1:])
  return PLRFResult(steps=steps, risk=risk if problem.embedding.ndim == 3 else risk[0],
                    learning_rates=lrs, horizons=horizons, schedules=names)
