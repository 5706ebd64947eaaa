"""Optimizer-update speed for GPT-2-124M-shaped parameters.

    python benchmarks/optim_bench.py            # full GPT-2 124M shapes (GPU)
    python benchmarks/optim_bench.py --small    # CPU-sized shapes

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
import pathlib
import platform
import statistics
import time

import jax
import jax.numpy as jnp
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


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--small", action="store_true", help="CPU-sized shapes")
  parser.add_argument("--stacked", action="store_true",
                      help="stack layers on a leading axis (as the trainer does)")
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--only", default="", help="comma-separated optimizer names")
  parser.add_argument("--json", default="", help="output path (default: benchmarks/results/)")
  args = parser.parse_args()

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
