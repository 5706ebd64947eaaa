"""Throughput of the linreg simulator: coordinate-updates per second (d x runs x steps / s).

    python benchmarks/linreg_bench.py [--quick] [--json PATH]

Rows: the hessian-aligned model (O(d) per step), the minibatch model (O(Bd) per
step) and power-law random features (``plrf``: B fresh x in R^v embedded by W, O(Bvd)
per step and seed, shared by the seed's configs), each against

* a plain JAX reference of the same runs, as one writes it first: ``jit`` of a ``vmap``
  over seeds of a ``lax.scan`` over steps (noise drawn per step and shared by the seed's
  learning rates, ``einsum`` gradients, the learning rates vmapped), on the same devices
  in the same run (goal: the lab >= 3x it, with its bit-identical fixed-order sums),
* a plain NumPy loop of the same update, one run at a time as researchers write it
  (steps looped in Python, coordinates vectorized; goal: the JAX simulator >= 20x
  faster on CPU) -- and, for reference, a NumPy loop that also vectorizes the runs
  (sharing each seed's noise across learning rates, as the simulator does), and
* on a GPU, the memory-bandwidth floor: each coordinate-update must at least read
  and write theta (2 x 4 bytes, float32; the noise is shared across configs and
  amortized), so floor = bandwidth / 8 bytes per second (goal: >= 50% of it).

Compilation is excluded (each program is run once before timing). Prints a table and
writes JSON with the goal beside each figure. Never asserts on time.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from signflax import linreg
from signflax.linreg import plrf

# Peak memory bandwidth (bytes/s) by device kind, from the vendors' data sheets.
_BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12, "V100": 0.9e12, "L4": 0.3e12,
              "A10": 0.6e12}
_BYTES_PER_UPDATE = 8


def _bandwidth_floor() -> tuple[float | None, str]:
  device = jax.devices()[0]
  if device.platform != "gpu":
    return None, f"n/a on {device.platform.upper()}"
  kind = device.device_kind
  for name, bandwidth in _BANDWIDTH.items():
    if name in kind:
      return bandwidth / _BYTES_PER_UPDATE, f"{kind}: {bandwidth / 1e12:.2f} TB/s / 8 B"
  return None, f"n/a (unknown bandwidth of {kind})"


def _time_jax(problem, optimizer_fn, lrs, batch, steps, seeds, noise_model) -> float:
  kwargs = dict(num_seeds=seeds, record_steps=[steps], noise_model=noise_model)
  linreg.simulate(problem, optimizer_fn, lrs, [batch], steps, **kwargs)      # compile
  start = time.perf_counter()
  result = linreg.simulate(problem, optimizer_fn, lrs, [batch], steps, **kwargs)
  elapsed = time.perf_counter() - start
  assert np.all(np.isfinite(result.risk))
  return problem.dim * seeds * len(lrs) * steps / elapsed


def _reference_linreg(problem, optimizer_fn, lrs, batch, steps, seeds, noise_model):
  """The plain jit + vmap + scan program: returns a function of the seed keys."""
  lam, target = problem.eigenvalues, problem.theta_star
  sigma, d = problem.noise_std, problem.dim
  lrs = jnp.asarray(lrs, lam.dtype)

  def one_seed(key):
    theta = jnp.zeros((lrs.size, d), lam.dtype)
    state = jax.vmap(lambda lr, th: optimizer_fn(lr).init(th))(lrs, theta)

    def step(carry, k):
      theta, state = carry
      key_k = jax.random.fold_in(key, k)
      if noise_model == "hessian_aligned":
        z = jax.random.normal(key_k, (d,), lam.dtype)
        grads = lam * (theta - target) + sigma / np.sqrt(batch) * jnp.sqrt(lam) * z
      else:
        k1, k2 = jax.random.split(key_k)
        x = jnp.sqrt(lam) * jax.random.normal(k1, (batch, d), lam.dtype)
        eps = sigma * jax.random.normal(k2, (batch,), lam.dtype)
        residual = jnp.einsum("bd,ld->lb", x, theta - target) - eps
        grads = jnp.einsum("bd,lb->ld", x, residual) / batch

      def update(lr, g, s, th):
        u, s = optimizer_fn(lr).update(g, s, th)
        return optax.apply_updates(th, u), s
      return jax.vmap(update)(lrs, grads, state, theta), None

    (theta, _), _ = jax.lax.scan(step, (theta, state), jnp.arange(steps))
    return 0.5 * jnp.sum(lam * (theta - target) ** 2, axis=-1)

  return jax.jit(jax.vmap(one_seed))


def _reference_plrf(problem, optimizer_fn, lrs, batch, steps, seeds):
  std, target, w = problem.feature_std, problem.target, problem.embedding
  v, d = w.shape
  lrs = jnp.asarray(lrs, w.dtype)

  def one_seed(key):
    theta = jnp.zeros((lrs.size, d), w.dtype)
    state = jax.vmap(lambda lr, th: optimizer_fn(lr).init(th))(lrs, theta)

    def step(carry, k):
      theta, state = carry
      x = std * jax.random.normal(jax.random.fold_in(key, k), (batch, v), w.dtype)
      features, labels = x @ w, x @ target
      residual = jnp.einsum("bd,ld->lb", features, theta) - labels
      grads = jnp.einsum("bd,lb->ld", features, residual) / batch

      def update(lr, g, s, th):
        u, s = optimizer_fn(lr).update(g, s, th)
        return optax.apply_updates(th, u), s
      return jax.vmap(update)(lrs, grads, state, theta), None

    (theta, _), _ = jax.lax.scan(step, (theta, state), jnp.arange(steps))
    residual = (theta @ w.T - target) * std
    return 0.5 * jnp.sum(residual ** 2, axis=-1)

  return jax.jit(jax.vmap(one_seed))


def _time_reference(program, dim, seeds, n_lr, steps) -> float:
  keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.PRNGKey(0), jnp.arange(seeds))
  jax.block_until_ready(program(keys))                                    # compile
  start = time.perf_counter()
  risk = jax.block_until_ready(program(keys))
  elapsed = time.perf_counter() - start
  assert np.all(np.isfinite(np.asarray(risk)))
  return dim * seeds * n_lr * steps / elapsed


def _alternate(lab, reference, repeats: int) -> tuple[float, float]:
  """Best rate of each over ``repeats`` alternating rounds (lab, reference, lab, ...), so
  a busy machine slows both alike."""
  rates = [(lab(), reference()) for _ in range(repeats)]
  return max(r[0] for r in rates), max(r[1] for r in rates)


def _numpy_gradient(rng, problem, delta, batch, noise_model, shape):
  lam = np.asarray(problem.eigenvalues)
  if noise_model == "hessian_aligned":
    z = rng.standard_normal(shape + (problem.dim,), np.float32)
    noise = problem.noise_std / np.sqrt(batch) * np.sqrt(lam) * z
    return lam * delta + (noise[:, None, :] if shape else noise)
  x = np.sqrt(lam) * rng.standard_normal(shape + (batch, problem.dim), np.float32)
  eps = problem.noise_std * rng.standard_normal(shape + (batch,), np.float32)
  if not shape:
    return x.T @ (x @ delta - eps) / batch
  residual = np.einsum("sbd,scd->scb", x, delta) - eps[:, None, :]
  return np.einsum("sbd,scb->scd", x, residual) / batch


def _time_numpy(problem, lrs, batch, steps, seeds, noise_model, sign: bool,
                vectorized: bool) -> float:
  """The same update as a NumPy loop over steps: one run at a time (``vectorized=False``,
  two runs timed) or all runs at once."""
  rng = np.random.default_rng(0)
  target = np.asarray(problem.theta_star)
  runs = seeds * len(lrs) if vectorized else 2
  start = time.perf_counter()
  if vectorized:
    eta = np.asarray(lrs, np.float32)[None, :, None]
    theta = np.zeros((seeds, len(lrs), problem.dim), np.float32)
    for _ in range(steps):
      grad = _numpy_gradient(rng, problem, theta - target, batch, noise_model, (seeds,))
      theta -= eta * (np.sign(grad) if sign else grad)
  else:
    for eta in lrs[:runs]:
      theta = np.zeros(problem.dim, np.float32)
      for _ in range(steps):
        grad = _numpy_gradient(rng, problem, theta - target, batch, noise_model, ())
        theta -= np.float32(eta) * (np.sign(grad) if sign else grad)
  elapsed = time.perf_counter() - start
  return problem.dim * runs * steps / elapsed


def _time_plrf_jax(problem, optimizer_fn, lrs, batch, steps, seeds) -> float:
  kwargs = dict(num_seeds=seeds)
  plrf.simulate_plrf(problem, optimizer_fn, lrs, batch, steps, **kwargs)      # compile
  start = time.perf_counter()
  result = plrf.simulate_plrf(problem, optimizer_fn, lrs, batch, steps, **kwargs)
  elapsed = time.perf_counter() - start
  assert np.all(np.isfinite(result.risk))
  return problem.dim * seeds * len(lrs) * steps / elapsed


def _time_plrf_numpy(problem, lrs, batch, steps, seeds, sign: bool, vectorized: bool) -> float:
  """PLRF steps as a NumPy loop: one run at a time (two runs timed) or all runs at once,
  each seed's samples shared by its learning rates."""
  rng = np.random.default_rng(0)
  std, target = np.asarray(problem.feature_std), np.asarray(problem.target)
  w = np.asarray(problem.embedding)
  direction = np.sign if sign else (lambda g: g)
  shape = (seeds,) if vectorized else ()
  runs = seeds * len(lrs) if vectorized else 2
  etas = [np.asarray(lrs, np.float32)[None, :, None]] if vectorized else lrs[:2]
  start = time.perf_counter()
  for eta in etas:
    theta = np.zeros((seeds, len(lrs), problem.dim) if vectorized else problem.dim, np.float32)
    for _ in range(steps):
      x = std * rng.standard_normal(shape + (batch, problem.num_features), np.float32)
      features, labels = x @ w, x @ target
      if vectorized:
        residual = np.einsum("sbd,scd->scb", features, theta) - labels[:, None, :]
        grad = np.einsum("sbd,scb->scd", features, residual) / batch
      else:
        grad = features.T @ (features @ theta - labels) / batch
      theta -= np.float32(1) * eta * direction(grad)
  elapsed = time.perf_counter() - start
  return problem.dim * runs * steps / elapsed


def _row(model, name, d, runs, batch, steps, jax_rate, ref_rate, np_rate, npv_rate, floor,
         floor_note):
  return dict(noise_model=model, optimizer=name, d=d, runs=runs, batch=batch, steps=steps,
              updates_per_s=jax_rate, reference_updates_per_s=ref_rate,
              speedup_vs_reference=jax_rate / ref_rate, reference_goal=">= 3x (same run)",
              numpy_updates_per_s=np_rate,
              vectorized_numpy_updates_per_s=npv_rate, speedup_vs_numpy=jax_rate / np_rate,
              speedup_vs_vectorized_numpy=jax_rate / npv_rate, speedup_goal=">= 20x (CPU)",
              fraction_of_bandwidth_floor=None if floor is None else jax_rate / floor,
              bandwidth_floor_goal=">= 50% (GPU)" if floor else floor_note)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
  parser.add_argument("--repeats", type=int, default=3,
                      help="alternating timing rounds of the lab and the JAX reference")
  parser.add_argument("--json", default="", help="where to write results "
                      "(default: benchmarks/results/linreg_bench_<platform>.json)")
  args = parser.parse_args(argv)
  scale = 4 if args.quick else 1
  floor, floor_note = _bandwidth_floor()
  cases = [
      # (noise model, optimizer, d, seeds, n_lr, batch, steps, numpy steps)
      ("hessian_aligned", "sign_sgd", 2000, 8, 32, 16, 4000 // scale, 200 // scale),
      ("hessian_aligned", "sgd", 2000, 8, 32, 16, 4000 // scale, 200 // scale),
      ("minibatch", "sign_sgd", 1000, 8, 16, 16, 1000 // scale, 100 // scale),
      ("minibatch", "sign_sgd", 1000, 8, 16, 1, 4000 // scale, 200 // scale),
  ]
  rows = []
  for noise_model, name, d, seeds, n_lr, batch, steps, np_steps in cases:
    problem = linreg.power_law_problem(d, 4.0, 3.0)
    lrs = list(np.geomspace(1e-4, 1e-1, n_lr))
    fn = optax.sign_sgd if name == "sign_sgd" else optax.sgd
    reference = _reference_linreg(problem, fn, lrs, batch, steps, seeds, noise_model)
    jax_rate, ref_rate = _alternate(
        lambda: _time_jax(problem, fn, lrs, batch, steps, seeds, noise_model),
        lambda: _time_reference(reference, d, seeds, n_lr, steps), args.repeats)
    sign = name == "sign_sgd"
    np_rate = _time_numpy(problem, lrs, batch, np_steps, seeds, noise_model, sign, False)
    npv_rate = _time_numpy(problem, lrs, batch, np_steps, seeds, noise_model, sign, True)
    rows.append(_row(noise_model, name, d, seeds * n_lr, batch, steps, jax_rate, ref_rate,
                     np_rate, npv_rate, floor, floor_note))
  for name, v, d, seeds, n_lr, batch, steps, np_steps in [
      ("sign_sgd", 512, 128, 8, 16, 1, 2000 // scale, 200 // scale)]:
    problem = plrf.plrf_problem(v, d, 1.0, 1.5)
    lrs = list(np.geomspace(1e-4, 1e-2, n_lr))
    reference = _reference_plrf(problem, optax.sign_sgd, lrs, batch, steps, seeds)
    jax_rate, ref_rate = _alternate(
        lambda: _time_plrf_jax(problem, optax.sign_sgd, lrs, batch, steps, seeds),
        lambda: _time_reference(reference, d, seeds, n_lr, steps), args.repeats)
    np_rate = _time_plrf_numpy(problem, lrs, batch, np_steps, seeds, True, False)
    npv_rate = _time_plrf_numpy(problem, lrs, batch, np_steps, seeds, True, True)
    rows.append(_row(f"plrf v={v}", name, d, seeds * n_lr, batch, steps, jax_rate, ref_rate,
                     np_rate, npv_rate, floor, floor_note))
  device = jax.devices()[0]
  print(f"linreg simulator throughput on {len(jax.devices())} x {device.device_kind} "
        f"({device.platform}); bandwidth floor: {floor_note}")
  header = f"{'model':<16} {'opt':<9} {'d':>5} {'runs':>5} {'B':>3} {'steps':>6} " \
           f"{'updates/s':>10} {'vs plain JAX (goal >=3x)':>25} {'numpy/s':>10} {'vs numpy (goal >=20x)':>22} " \
           f"{'vec-numpy/s':>11} {'vs vec-numpy':>12} " \
           f"{'of floor (goal >=50%)':>22}"
  print(header)
  print("-" * len(header))
  for r in rows:
    frac = ("n/a on CPU" if r["fraction_of_bandwidth_floor"] is None
            else f"{r['fraction_of_bandwidth_floor']:.0%}")
    print(f"{r['noise_model']:<16} {r['optimizer']:<9} {r['d']:>5} {r['runs']:>5} "
          f"{r['batch']:>3} {r['steps']:>6} {r['updates_per_s']:>10.3g} "
          f"{r['speedup_vs_reference']:>24.2f}x "
          f"{r['numpy_updates_per_s']:>10.3g} {r['speedup_vs_numpy']:>21.1f}x "
          f"{r['vectorized_numpy_updates_per_s']:>11.3g} {r['speedup_vs_vectorized_numpy']:>11.1f}x "
          f"{frac:>22}")
  payload = dict(device=device.device_kind, platform=device.platform,
                 num_devices=len(jax.devices()), bandwidth_floor_updates_per_s=floor,
                 bandwidth_floor_note=floor_note, bytes_per_update=_BYTES_PER_UPDATE, rows=rows)
  if not args.json:
    args.json = str(pathlib.Path(__file__).resolve().parent / "results" /
                    f"linreg_bench{'_quick' if args.quick else ''}_{device.platform}.json")
  pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
  with open(args.json, "w") as f:
    json.dump(payload, f, indent=1)
  print(f"wrote {args.json}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
