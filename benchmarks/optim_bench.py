"""Optimizer-update speed for GPT-2-124M-shaped parameters.

    python benchmarks/optim_bench.py            # full GPT-2 124M shapes (GPU)
    python benchmarks/optim_bench.py --small    # CPU-sized shapes
    python benchmarks/optim_bench.py --ns       # Muon's Newton-Schulz: standard vs Gram vs optax

Times one jitted ``update + apply_updates`` (params and state donated), median of
``--repeats``. Each figure is printed beside its floor:

* memory-bound optimizers (sgd, sign_sgd, signum, adamw): bytes that must move per
  parameter (float32 gradient, parameter, state; read and write) / memory bandwidth;
* Muon: Newton-Schulz FLOPs / matmul throughput, plus its fallback's bytes.

Peak figures come from a table for known GPUs (H100/H200), and are also *measured*
on the device (a large copy, a large matmul), so the floor is meaningful on CPU too.
Writes JSON next to the table. Speed goals are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib

import signflax.optim as sfo

# name -> (HBM bytes/s, dense bf16 FLOP/s)
KNOWN_PEAKS = {"H100": (3.35e12, 989e12), "H200": (4.8e12, 989e12)}
GOALS = {"muon": "<= 3 ms on one H100", "sign_sgd": "<= 1.1x HBM floor",
         "signum": "<= 1.1x HBM floor"}
# float32 bytes moved per parameter: reads + writes of param, grad and state.
BYTES_PER_PARAM = {"sgd": 12, "sign_sgd": 12, "signum": 20, "adamw": 28, "lion": 20}


def gpt2_shapes(layers: int, width: int, vocab: int, context: int, stacked: bool):
  """GPT-2's parameter shapes (fused qkv, 4x MLP, LayerNorm scale+bias, tied head)."""
  per_layer = {
      "ln_1": {"scale": (width,), "bias": (width,)},
      "attn": {"c_attn": {"kernel": (width, 3 * width)},
               "c_proj": {"kernel": (width, width)}},
      "ln_2": {"scale": (width,), "bias": (width,)},
      "mlp": {"c_fc": {"kernel": (width, 4 * width)},
              "c_proj": {"kernel": (4 * width, width)}},
  }
  tree = {"wte": {"embedding": (vocab, width)}, "wpe": {"embedding": (context, width)},
          "ln_f": {"scale": (width,), "bias": (width,)}}
  if stacked:
    tree["h"] = jax.tree.map(lambda s: (layers,) + s, per_layer,
                             is_leaf=lambda x: isinstance(x, tuple))
  else:
    tree.update({f"h{i}": per_layer for i in range(layers)})
  return tree


def make_params(shapes, seed=0):
  leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda x: isinstance(x, tuple))
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(treedef, [0.02 * jax.random.normal(k, s)
                                      for k, s in zip(keys, leaves)])


def newton_schulz_flops(params, muon_mask, steps: int) -> float:
  """FLOPs of ``steps`` quintic iterations on every Muon matrix (m <= n orientation)."""
  total = 0.0
  for leaf, use in zip(jax.tree.leaves(params), jax.tree.leaves(muon_mask)):
    if use:
      m, n = sorted(leaf.shape[-2:])
      batch = math.prod(leaf.shape[:-2])
      total += batch * steps * (4 * m * m * n + 2 * m ** 3)
  return total


def time_fn(fn, args, repeats: int) -> tuple[float, float]:
  """(compile seconds, median seconds per call) for a jitted fn with donated args."""
  t0 = time.perf_counter()
  args = jax.block_until_ready(fn(*args))
  compile_s = time.perf_counter() - t0
  samples = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    args = jax.block_until_ready(fn(*args))
    samples.append(time.perf_counter() - t0)
  return compile_s, statistics.median(samples)


def measured_peaks(n_bytes: int = 1 << 28, matmul: int = 2048) -> tuple[float, float]:
  """(copy bandwidth in bytes/s counting read + write, float32 matmul FLOP/s)."""
  x = jnp.ones((n_bytes // 4,), jnp.float32)
  copy = jax.jit(lambda x: x * 1.0001, donate_argnums=0)
  _, t_copy = time_fn(lambda x: (copy(x),), (x,), 5)
  a = jnp.ones((matmul, matmul), jnp.float32)
  mm = jax.jit(lambda a: (a @ a) * (1.0 / matmul))
  _, t_mm = time_fn(lambda a: (mm(a),), (a,), 5)
  return 2 * n_bytes / t_copy, 2 * matmul ** 3 / t_mm


def optimizers():
  muon_kw = dict(fallback="signum", fallback_learning_rate=3e-4)
  return {
      "sgd": optax.sgd(1e-3),
      "sign_sgd": sfo.sign_sgd(1e-3),
      "signum": sfo.signum(1e-3),
      "adamw": optax.adamw(1e-3),
      "muon": sfo.muon(0.02, **muon_kw),
      "muon (f32 NS)": sfo.muon(0.02, ns_dtype=jnp.float32, **muon_kw),
      "optax.contrib.muon": optax.contrib.muon(0.02),
  }


NS_GOALS = {"muon ns_impl=standard": ">= 1.4x slower than auto",
            "optax.contrib.muon": "slower than auto (> 1x)"}


def gpt2_hidden(layers: int, width: int):
  """GPT-2's hidden matrices, layers stacked on axis 0 (Muon's whole workload)."""
  return {"c_attn": (layers, width, 3 * width), "attn_proj": (layers, width, width),
          "c_fc": (layers, width, 4 * width), "mlp_proj": (layers, 4 * width, width)}


def interleaved(fns: dict, args_of: dict, repeats: int, verbose: bool = False) -> dict:
  """Median seconds per call of each jitted fn (compiled first), run in turn
  (A B C A B C ...) so load changes hit every contestant alike.
  Returns {name: (compile s, median s, samples)}."""
  state, compile_s, fns = dict(args_of), {}, dict(fns)
  for name, fn in fns.items():  # compiled ahead of time: no warm-up run is needed
    t0 = time.perf_counter()
    fns[name] = fn.lower(*args_of[name]).compile()
    compile_s[name] = time.perf_counter() - t0
  samples = {name: [] for name in fns}
  for i in range(repeats):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      state[name] = jax.block_until_ready(fn(*state[name]))
      samples[name].append(time.perf_counter() - t0)
    if verbose:
      print(f"  repetition {i + 1}/{repeats}: "
            + ", ".join(f"{n} {s[-1] * 1e3:.0f} ms" for n, s in samples.items()), flush=True)
  return {n: (compile_s[n], statistics.median(samples[n]), samples[n]) for n in fns}


def gram_flops(m: int, n: int, steps: int, restart_every: int = 0) -> float:
  """FLOPs of the Gram iteration (see signflax.optim._muon._gram_iteration), m <= n."""
  restarts = sum(1 for k in range(steps - 1) if restart_every and (k + 1) % restart_every == 0)
  small = steps + 2 * (steps - 1) + (steps - 1)   # R^2 each step, P R P, P Q (none at k=0)
  small -= 2 * restarts                           # a restart replaces P R P ...
  return 2 * m * m * n * (2 + 2 * restarts) + 2 * m ** 3 * small  # ... with Q X, X X^T


def ns_main(args) -> None:
  """Muon on GPT-2's hidden matrices: ns_impl standard vs auto vs optax.contrib.muon."""
  layers, width = (4, 256) if args.small else (12, 768)
  shapes = gpt2_hidden(layers, width)
  params = make_params(shapes)
  grads = make_params(shapes, seed=1)
  dims = {k: sfo.MuonDims(1, 2) for k in shapes}
  optax_dims = {k: optax.contrib.MuonDimensionNumbers(reduction_axis=(1,), output_axis=(2,))
                for k in shapes}
  common = dict(ns_dtype=jnp.float32, dimension_numbers=dims, muon_params=None, beta=0.95)
  txs = {"muon ns_impl=auto": sfo.muon(0.02, ns_impl="auto", **common),
         "muon ns_impl=standard": sfo.muon(0.02, ns_impl="standard", **common),
         "optax.contrib.muon": optax.contrib.muon(0.02, muon_weight_dimension_numbers=optax_dims)}
  fns, args_of = {}, {}
  for name, tx in txs.items():
    def step(params, state, grads, tx=tx):
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state, grads
    fns[name] = jax.jit(step, donate_argnums=(0, 1))
    p = jax.tree.map(jnp.copy, params)
    args_of[name] = (p, tx.init(p), grads)
  load_before = os.getloadavg()
  timed = interleaved(fns, args_of, args.repeats, verbose=True)
  load = os.getloadavg()
  auto = timed["muon ns_impl=auto"][1]
  standard = lambda m, n: 5 * (4 * m * m * n + 2 * m ** 3)
  std_flops = sum(math.prod(s[:-2]) * standard(*sorted(s[-2:])) for s in shapes.values())
  auto_flops = sum(math.prod(s[:-2]) * (gram_flops(*sorted(s[-2:]), 5) if sfo.uses_gram(s, "auto")
                                        else standard(*sorted(s[-2:])))
                   for s in shapes.values())

  # orthogonality error of the update direction: one stacked c_fc matrix of condition
  # number 1e3 through both iterations, against the exact polynomial in float64
  m, n = (width, 4 * width)
  rng = np.random.default_rng(0)
  u, _ = np.linalg.qr(rng.standard_normal((m, m)))
  v, _ = np.linalg.qr(rng.standard_normal((n, m)))
  sig = np.logspace(0, -3, m)
  x = (u * sig) @ v.T
  s_ = sig / np.sqrt(np.sum(sig ** 2))
  for a, b, c in [(3.4445, -4.7750, 2.0315)] * 5:
    s_ = a * s_ + b * s_ ** 3 + c * s_ ** 5
  exact = (u * s_) @ v.T
  errors = {impl: float(np.linalg.norm(np.asarray(sfo.orthogonalize(
      jnp.asarray(x, jnp.float32), dtype=jnp.float32, impl=impl), np.float64) - exact, 2))
            for impl in ("standard", "gram")}

  print(f"\nMuon update on GPT-2 hidden matrices ({layers} stacked layers, width {width}), "
        f"float32 Newton-Schulz, {jax.devices()[0].device_kind}; {args.repeats} interleaved "
        f"repetitions, median")
  header = f"{'optimizer':<24} {'ms/update':>10} {'vs auto':>8} {'compile s':>9}  goal"
  print(header + "\n" + "-" * len(header))
  rows = []
  for name, (compile_s, seconds, samples) in timed.items():
    ratio = seconds / auto
    rows.append(dict(optimizer=name, ms=seconds * 1e3, ratio_vs_auto=ratio, compile_s=compile_s,
                     samples_ms=[t * 1e3 for t in samples], goal=NS_GOALS.get(name, "")))
    print(f"{name:<24} {seconds * 1e3:>10.1f} {ratio:>8.2f} {compile_s:>9.1f}  "
          f"{NS_GOALS.get(name, '')}")
  ratio = {"standard_over_auto": timed["muon ns_impl=standard"][1] / auto,
           "optax_over_auto": timed["optax.contrib.muon"][1] / auto}
  print(f"ratio_vs_reference: standard/auto {ratio['standard_over_auto']:.2f}x (goal >= 1.4), "
        f"optax/auto {ratio['optax_over_auto']:.2f}x (goal > 1) | FLOPs standard/auto "
        f"{std_flops / auto_flops:.2f}x | load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} "
        f"(before: {load_before[0]:.1f})")
  print(f"orthogonality error (spectral norm vs the exact polynomial, {m}x{n}, condition "
        f"number 1e3, float32): standard {errors['standard']:.2e}, gram {errors['gram']:.2e} "
        f"(bound: 1e-3)")
  device = jax.devices()[0]
  size = "small" if args.small else "gpt2"
  out = pathlib.Path(args.json
                     or f"benchmarks/results/optim_bench_ns_{size}_{device.platform}.json")
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(dict(
      device=device.device_kind, platform=device.platform, layers=layers, width=width,
      shapes={k: list(v) for k, v in shapes.items()}, ns_dtype="float32", repeats=args.repeats,
      ratio_vs_reference=ratio, flops_standard=std_flops, flops_auto=auto_flops,
      orthogonality_error=errors, orthogonality_bound=1e-3, loadavg=list(load),
      loadavg_before=list(load_before), jax=jax.__version__, optax=optax.__version__,
      rows=rows), indent=1))
  print(f"wrote {out}")


def aspect_main(args) -> None:
  """Where the Gram iteration starts to win: time per (m x n) matrix against n / m."""
  m, batch = (128, 8) if args.small else (256, 8)
  rows = []
  load_before = os.getloadavg()
  for aspect in (1.0, 1.25, 1.5, 2.0, 3.0, 4.0):
    n = int(round(m * aspect))
    x = jax.random.normal(jax.random.key(0), (batch, m, n))
    fns = {impl: jax.jit(lambda x, impl=impl: (sfo.orthogonalize(x, dtype=jnp.float32,
                                                                 impl=impl),))
           for impl in ("standard", "gram")}
    timed = interleaved(fns, {k: (x,) for k in fns}, args.repeats)
    ratio = timed["standard"][1] / timed["gram"][1]
    flops = (5 * (4 * m * m * n + 2 * m ** 3)) / gram_flops(m, n, 5)
    rows.append(dict(m=m, n=n, aspect=aspect, standard_ms=timed["standard"][1] * 1e3,
                     gram_ms=timed["gram"][1] * 1e3, ratio_vs_reference=ratio,
                     flop_ratio=flops))
    print(f"n/m {aspect:4.2f} ({m}x{n}, batch {batch}): standard "
          f"{timed['standard'][1] * 1e3:7.1f} ms, gram {timed['gram'][1] * 1e3:7.1f} ms, "
          f"standard/gram {ratio:.2f}x (FLOPs {flops:.2f}x)", flush=True)
  load = os.getloadavg()
  print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} (before: {load_before[0]:.1f})")
  out = pathlib.Path(args.json or "benchmarks/results/optim_bench_aspect_cpu.json")
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(dict(device=jax.devices()[0].device_kind, loadavg=list(load),
                                 rows=rows), indent=1))
  print(f"wrote {out}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--small", action="store_true", help="CPU-sized shapes")
  parser.add_argument("--stacked", action="store_true",
                      help="stack layers on a leading axis (as the trainer does)")
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--only", default="", help="comma-separated optimizer names")
  parser.add_argument("--json", default="", help="output path (default: benchmarks/results/)")
  parser.add_argument("--ns", action="store_true",
                      help="Muon on GPT-2's stacked hidden matrices: ns_impl standard vs auto "
                           "vs optax.contrib.muon, float32, interleaved")
  parser.add_argument("--aspect-sweep", action="store_true",
                      help="standard vs Gram Newton-Schulz time against n / m")
  args = parser.parse_args()
  if args.ns:
    return ns_main(args)
  if args.aspect_sweep:
    return aspect_main(args)

  layers, width, vocab, context = (4, 256, 8192, 256) if args.small else (12, 768, 50304, 1024)
  params = make_params(gpt2_shapes(layers, width, vocab, context, args.stacked))
  n_params = sum(x.size for x in jax.tree.leaves(params))
  device = jax.devices()[0]
  kind = device.device_kind
  bandwidth, flops = measured_peaks()
  table_peak = next((v for k, v in KNOWN_PEAKS.items() if k in kind), None)
  if table_peak:
    bandwidth, flops = table_peak
  peak_source = "spec sheet" if table_peak else "measured copy/matmul"
  grads = make_params(gpt2_shapes(layers, width, vocab, context, args.stacked), seed=1)
  muon_mask = jax.tree.map(lambda l: l == "muon", sfo.muon_labels(params))

  rows = []
  chosen = [n.strip() for n in args.only.split(",") if n.strip()]
  for name, tx in optimizers().items():
    if chosen and name not in chosen:
      continue

    def step(params, state, grads, tx=tx):
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state, grads

    step = jax.jit(step, donate_argnums=(0, 1))
    p = jax.tree.map(jnp.copy, params)
    compile_s, seconds = time_fn(step, (p, tx.init(p), grads), args.repeats)
    if name.startswith("muon") or name == "optax.contrib.muon":
      mask = muon_mask if name.startswith("muon") else jax.tree.map(lambda x: x.ndim == 2, params)
      ns = newton_schulz_flops(params, mask, 5)
      rest = sum(x.size for x, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask)) if not m)
      floor = ns / flops + rest * 20 / bandwidth
      floor_kind = f"{ns / 1e9:.0f} GFLOP NS"
    else:
      floor = n_params * BYTES_PER_PARAM[name] / bandwidth
      floor_kind = f"{BYTES_PER_PARAM[name]} B/param"
    rows.append(dict(optimizer=name, ms=seconds * 1e3, floor_ms=floor * 1e3,
                     ratio=seconds / floor, floor_kind=floor_kind, compile_s=compile_s,
                     goal=GOALS.get(name, "")))

  print(f"\noptimizer update, {'small' if args.small else 'GPT-2 124M'} shapes "
        f"({n_params / 1e6:.1f}M params, {'stacked' if args.stacked else 'per-layer'} leaves) "
        f"on {kind} x1; floors from {peak_source}: {bandwidth / 1e9:.1f} GB/s, "
        f"{flops / 1e12:.2f} TFLOP/s")
  header = f"{'optimizer':<20} {'ms/update':>10} {'floor ms':>9} {'x floor':>8}  {'floor from':<16} {'compile s':>9}  goal"
  print(header + "\n" + "-" * len(header))
  for r in rows:
    print(f"{r['optimizer']:<20} {r['ms']:>10.2f} {r['floor_ms']:>9.2f} {r['ratio']:>8.2f}  "
          f"{r['floor_kind']:<16} {r['compile_s']:>9.1f}  {r['goal']}")
  out = pathlib.Path(args.json or f"benchmarks/results/optim_bench_{'small' if args.small else 'gpt2'}"
                     f"_{device.platform}.json")
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(dict(
      device=kind, platform=device.platform, host=platform.machine(), n_params=n_params,
      shapes="small" if args.small else "gpt2_124m", stacked=args.stacked,
      bandwidth_bytes_per_s=bandwidth, flops_per_s=flops, peak_source=peak_source,
      jax=jax.__version__, optax=optax.__version__, rows=rows), indent=1))
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
