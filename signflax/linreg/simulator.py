"""A sharded simulator that trains whole hyper-parameter grids in one jitted program.

Every run starts at :math:`\\theta_0 = 0` and takes steps
:math:`\\theta_{k+1} = \\theta_k + u_k`, where :math:`u_k` is what an Optax
``GradientTransformation`` returns for the stochastic gradient :math:`g_k`. Two
gradient-noise models (Li et al. 2026, Sec. 2 and App. C.2):

* ``"hessian_aligned"``: :math:`g_k = H(\\theta_k - \\theta^*) + \\xi_k`,
  :math:`\\xi_k \\sim N(0, \\sigma^2 H / B)` -- the papers' surrogate, O(d) per step;
* ``"minibatch"``: the gradient of :math:`\\frac{1}{2B}\\sum_{i \\le B}
  (\\langle \\phi_i, \\theta \\rangle - y_i)^2` on B fresh samples, O(Bd) per step.

Layout. The state is ``(seeds, configs, d)``, a config being one (batch size,
learning rate) pair. The seed axis is sharded over a 1-D device mesh (padded to a
multiple of the device count); all configs of one seed share that seed's random
numbers (common random numbers). Step k's noise is row ``k % U`` of a chunk drawn
from ``fold_in(fold_in(PRNGKey(seed), seed_index), k // U)`` (``U`` from
``noise_chunk_size``: one draw per U steps, not per step), so every run sees the same
noise whatever the device count, the other configs in the grid and where the risk is
recorded. The excess risk is recorded at given steps by a ``lax.scan`` over segments,
so memory does not grow with the step count.

Reproducibility. On one backend a run's risk is bit-identical across device counts,
seed counts and learning-rate grids, for every optimizer and both noise models
(property-tested on XLA:CPU over random shapes, 1 vs 8 devices; the summation order does
not depend on the process count either, which is not tested). The update is elementwise per
run, and every sum (the minibatch gradient's two, the risk's) is
``kernels.ordered_sum``: a fixed tree of elementwise adds whose order depends only on
the summed length, where XLA's own reduce or dot would pick its order by the whole
operand's shape (see ``signflax.linreg.kernels``). Different backends (CPU vs GPU) and
XLA versions may round differently.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from signflax.linreg import _checks, kernels
from signflax.linreg.problems import PowerLawProblem

NOISE_MODELS = ("hessian_aligned", "minibatch")

OptimizerFn = Callable[[jnp.ndarray], optax.GradientTransformation]


class SimulationResult(NamedTuple):
  """Excess risk of a grid of runs.

  Attributes:
    steps: ``(n_record,)`` step counts at which the risk was recorded.
    risk: ``(n_seeds, n_batch, n_lr, n_record)`` excess risk :math:`L(\\theta_k)`.
    learning_rates: ``(n_batch, n_lr)`` learning rate of each config.
    batch_sizes: ``(n_batch,)``.
  """
  steps: np.ndarray
  risk: np.ndarray
  learning_rates: np.ndarray
  batch_sizes: np.ndarray


def log_spaced_steps(num_steps: int, num_points: int = 32) -> np.ndarray:
  """Distinct integer steps in ``[1, num_steps]``, log-spaced, ending at ``num_steps``."""
  _checks.integer("num_steps", num_steps, 1)
  _checks.integer("num_points", num_points, 1)
  steps = np.unique(np.round(np.geomspace(1, num_steps, num_points)).astype(np.int64))
  return steps


def steps_per_chunk(numbers_per_step: int, max_numbers: int) -> int:
  """The largest power of two <= 64 steps holding at most ``max_numbers`` (at least 1)."""
  return int(2 ** np.clip(np.floor(np.log2(max(max_numbers // numbers_per_step, 1))), 0, 6))


def noise_chunk_size(dim: int, noise_model: str, batch_size: int = 1) -> int:
  """Steps whose noise is drawn in one call: a power of two <= 64 with at most 2^21
  numbers per seed. It depends only on (d, noise model, B), never on the grid or the
  devices, so it is part of the definition of the random stream."""
  per_step = (dim + 1) * (batch_size if noise_model == "minibatch" else 1)
  return steps_per_chunk(per_step, 2**21)


def _draw_noise(seed_keys, chunk, chunk_size: int, dim: int, noise_model: str,
                minibatch_size: int, dtype):
  """Standard normals for steps ``[chunk * U, (chunk + 1) * U)`` of every seed, from
  ``fold_in(seed_key, chunk)``: ``(S, U, d)`` (hessian-aligned), or features
  ``(S, U, B, d)`` and label noise ``(S, U, B)`` (minibatch)."""
  def draw(key):
    key = jax.random.fold_in(key, chunk)
    if noise_model == "hessian_aligned":
      return kernels.normal(key, (chunk_size, dim), dtype)
    features, labels = jax.random.split(key)
    return (kernels.normal(features, (chunk_size, minibatch_size, dim), dtype),
            kernels.normal(labels, (chunk_size, minibatch_size), dtype))
  # Materialize the shared noise once: fused into its consumer, XLA would redraw it
  # for every config.
  return jax.lax.optimization_barrier(jax.vmap(draw)(seed_keys))


def _noisy_gradients(eigenvalues, theta_star, noise_std, z, theta, noise_scales,
                     noise_model: str):
  """Stochastic gradients ``(S, C, d)`` at states ``theta`` from one step's noise ``z``."""
  delta = theta - theta_star
  if noise_model == "hessian_aligned":
    # noise_scales = sigma / sqrt(B) per config; z is (S, d).
    return (eigenvalues * delta
            + noise_scales[None, :, None] * jnp.sqrt(eigenvalues) * z[:, None, :])
  features = jnp.sqrt(eigenvalues) * z[0]                          # (S, B, d)
  return kernels.minibatch_gradient(features, delta, noise_std * z[1])


@functools.partial(jax.jit, static_argnames=("optimizer_fn", "noise_model", "minibatch_size",
                                             "sharding"))
def _run_grid(eigenvalues, theta_star, noise_std, seed_keys, learning_rates, noise_scales,
              record_steps, *, optimizer_fn: OptimizerFn, noise_model: str,
              minibatch_size: int, sharding: NamedSharding):
  """Runs ``(S, C)`` runs to ``record_steps[-1]``; returns the risk ``(R, S, C)``."""
  num_seeds, num_configs, d = seed_keys.shape[0], learning_rates.shape[0], eigenvalues.shape[0]
  chunk_size = noise_chunk_size(d, noise_model, minibatch_size)
  theta = jax.lax.with_sharding_constraint(
      jnp.zeros((num_seeds, num_configs, d), eigenvalues.dtype), sharding)
  per_config = lambda f: jax.vmap(jax.vmap(f, (0, 0, 0, 0)), (None, 0, 0, 0))
  init = jax.vmap(jax.vmap(lambda lr, th: optimizer_fn(lr).init(th), (0, 0)), (None, 0))
  opt_state = init(learning_rates, theta)

  def update(lr, grad, state, th):
    updates, state = optimizer_fn(lr).update(grad, state, th)
    return optax.apply_updates(th, updates), state

  def run_steps(start, stop, carry):
    """Steps ``start .. stop - 1``, drawing noise a chunk of steps at a time."""
    def chunk(c, carry):
      z = _draw_noise(seed_keys, c, chunk_size, d, noise_model, minibatch_size, theta.dtype)

      def step(i, carry):
        theta, opt_state = carry
        z_i = jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, i, 1, keepdims=False), z)
        grads = _noisy_gradients(eigenvalues, theta_star, noise_std, z_i, theta, noise_scales,
                                 noise_model)
        theta, opt_state = per_config(update)(learning_rates, grads, opt_state, theta)
        return jax.lax.with_sharding_constraint(theta, sharding), opt_state

      first = c * chunk_size
      lo = jnp.clip(start - first, 0, chunk_size)
      hi = jnp.clip(stop - first, 0, chunk_size)
      return jax.lax.fori_loop(lo, hi, step, carry)

    return jax.lax.fori_loop(start // chunk_size, (stop + chunk_size - 1) // chunk_size, chunk,
                             carry)

  def segment(carry, stop):
    theta, opt_state, start = carry
    theta, opt_state = run_steps(start, stop, (theta, opt_state))
    delta = theta - theta_star
    risk = 0.5 * kernels.ordered_dot(eigenvalues * delta, delta, -1)
    return (theta, opt_state, stop), risk

  _, risk = jax.lax.scan(segment, (theta, opt_state, jnp.zeros((), record_steps.dtype)),
                         record_steps)
  return risk


def seed_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The 1-D mesh (axis ``"runs"``) the seed axis is sharded over: ``devices``, default all.

  Not the training mesh (``signflax.parallel.make_mesh``): the lab only splits seeds."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), ("runs",))


def simulate(problem: PowerLawProblem, optimizer_fn: OptimizerFn, learning_rates,
             batch_sizes, num_steps: int, *, num_seeds: int = 8, seed: int = 0,
             record_steps=None, num_records: int = 32, noise_model: str = "hessian_aligned",
             devices: Sequence[jax.Device] | None = None) -> SimulationResult:
  """Trains a grid of seeds x batch sizes x learning rates in one jitted program.

  Args:
    problem: the regression problem.
    optimizer_fn: ``learning_rate -> optax.GradientTransformation``, e.g. ``optax.sgd``
      or ``lambda lr: signflax.optim.get_optimizer("signum", lr)``; it is called
      inside the vmapped program with a traced scalar ``learning_rate``. Reuse one
      function object across calls to reuse the compiled program.
    learning_rates: ``(n_lr,)`` or ``(n_batch, n_lr)`` learning rates.
    batch_sizes: ``(n_batch,)``; the ``"minibatch"`` model takes a single batch size.
    num_steps: steps per run.
    num_seeds: independent runs per config; run ``i`` uses ``fold_in(PRNGKey(seed), i)``.
    seed: base seed.
    record_steps: increasing steps in ``[1, num_steps]`` at which to record the risk
      (``num_steps`` is appended if missing); default ``log_spaced_steps``.
    num_records: number of default record steps.
    noise_model: one of ``NOISE_MODELS``.
    devices: devices of the mesh the seed axis is sharded over (default: all).

  Returns:
    A ``SimulationResult`` with risk ``(num_seeds, n_batch, n_lr, n_record)``.
  """
  _checks.choice("noise_model", noise_model, NOISE_MODELS)
  _checks.integer("num_steps", num_steps, 1)
  _checks.integer("num_seeds", num_seeds, 1)
  _checks.integer("seed", seed, 0)
  _checks.integer("num_records", num_records, 1)
  _checks.non_negative("learning_rates", learning_rates)
  _checks.positive("batch_sizes", batch_sizes)
  if np.any(np.asarray(batch_sizes) % 1):
    raise ValueError(f"batch_sizes: must be integers >= 1, got {np.asarray(batch_sizes).tolist()}")
  batch_sizes = np.atleast_1d(np.asarray(batch_sizes, np.int64))
  if noise_model == "minibatch" and batch_sizes.size != 1:
    raise ValueError("batch_sizes: the minibatch model takes one batch size per call")
  lrs = np.asarray(learning_rates, np.float64)
  lrs = np.broadcast_to(lrs if lrs.ndim == 2 else lrs[None, :], (batch_sizes.size, lrs.shape[-1]))
  steps = log_spaced_steps(num_steps, num_records) if record_steps is None else np.asarray(
      record_steps, np.int64)
  if steps.size == 0 or steps[-1] != num_steps:
    steps = np.append(steps, num_steps)
  if np.any(np.diff(steps) < 0) or steps[0] < 0 or steps[-1] > num_steps:
    raise ValueError("record_steps: must be non-decreasing and within [0, num_steps]")

  mesh = seed_mesh(devices)
  n_dev = mesh.devices.size
  padded = -(-num_seeds // n_dev) * n_dev
  base = jax.random.PRNGKey(seed)
  seed_keys = jax.vmap(jax.random.fold_in, (None, 0))(base, jnp.arange(padded))
  runs = NamedSharding(mesh, P("runs"))
  replicated = NamedSharding(mesh, P())
  dtype = problem.eigenvalues.dtype
  noise_scales = problem.noise_std / np.sqrt(batch_sizes.astype(np.float64))
  args = (problem.eigenvalues, problem.theta_star, jnp.asarray(problem.noise_std, dtype))
  args = jax.device_put(args, replicated)
  flat_lrs = jnp.asarray(lrs.reshape(-1), dtype)
  flat_scales = jnp.asarray(np.repeat(noise_scales, lrs.shape[1]), dtype)
  step_index_dtype = jnp.int32 if num_steps < 2**31 else jnp.int64
  risk = _run_grid(*args, jax.device_put(seed_keys, runs),
                   jax.device_put(flat_lrs, replicated), jax.device_put(flat_scales, replicated),
                   jax.device_put(jnp.asarray(steps, step_index_dtype), replicated),
                   optimizer_fn=optimizer_fn, noise_model=noise_model,
                   minibatch_size=int(batch_sizes[0]) if noise_model == "minibatch" else 1,
                   sharding=runs)
  if jax.process_count() > 1:  # Seeds live on several hosts: gather them everywhere.
    risk = multihost_utils.process_allgather(risk, tiled=True)
  risk = np.asarray(risk)[:, :num_seeds]                       # (R, S, C)
  risk = risk.reshape(steps.size, num_seeds, batch_sizes.size, lrs.shape[1])
  return SimulationResult(steps=steps, risk=np.moveaxis(risk, 0, -1),
                          learning_rates=np.asarray(lrs), batch_sizes=batch_sizes)
