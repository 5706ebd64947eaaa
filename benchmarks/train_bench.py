"""Train-step speed: step time, tokens/s, MFU, compile time and peak memory.

    python benchmarks/train_bench.py                      # GPT-2 124M, context 1024 (GPU)
    python benchmarks/train_bench.py --small              # the tiny config on CPU
    python benchmarks/train_bench.py --optimizers signum,muon --batch-sizes 12,32
    python benchmarks/train_bench.py --find-max-batch     # largest batch that fits (GPU)

Runs the trainer's own jitted, sharded train step (``signflax.train.step``) on
synthetic tokens already on device, so the figure is the step alone (the input
pipeline is measured by the data tests). Median of ``--steps`` timed steps after one
warm-up. Prints a table with each goal beside its figure and writes JSON; speed goals
are reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp

from signflax import model as model_lib
from signflax import parallel
from signflax.cli import load_config_file
from signflax.train import metrics as metrics_lib
from signflax.train import optimizer as optimizer_lib
from signflax.train import step as step_lib
from signflax.train import trainer

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Goals of issue 6 (GPT-2 124M, context 1024, one H100).
GOALS = {("signum", 32): ">= 600k tok/s (~52% MFU)", ("muon", 32): "step <= 1.1x signum's"}
BYTE_VOCAB = 258  # the byte tokenizer's vocabulary, for configs with vocab_size=None


def measure(config, optimizer: str, batch: int, steps: int) -> dict:
  """Compiles and times the train step of ``config`` with ``optimizer`` at ``batch``."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.optimizer.name = optimizer
    config.train.global_batch_size = batch
  t = config.train
  cfg = trainer.model_config(config, config.model.vocab_size or BYTE_VOCAB)
  mesh = parallel.make_mesh(config.mesh)
  graphdef, _, param_axes = model_lib.abstract_model(cfg)
  tx, schedule = optimizer_lib.make_optimizer(config.optimizer, t.steps, param_axes)
  tokens = jax.random.randint(jax.random.key(0), (batch, t.seq_len + 1), 0, cfg.vocab_size)
  with jax.set_mesh(mesh):
    sharding = parallel.batch_sharding(mesh)
    data = {"inputs": jax.device_put(tokens[:, :-1], sharding),
            "targets": jax.device_put(tokens[:, 1:], sharding)}
    start = time.perf_counter()
    state, shardings = step_lib.create_sharded_state(cfg, tx, mesh, param_axes, t.seed)
    step = step_lib.jit_train_step(
        step_lib.make_train_step(graphdef, tx, schedule, grad_accum=t.grad_accum,
                                 noise_stats=False), mesh, shardings)
    compiled = step.lower(state, data).compile()
    compile_s = time.perf_counter() - start
    state, metrics = compiled(state, data)          # warm-up
    jax.block_until_ready(metrics)
    samples = []
    for _ in range(steps):
      t0 = time.perf_counter()
      state, metrics = compiled(state, data)
      jax.block_until_ready(metrics)
      samples.append(time.perf_counter() - t0)
  step_s = statistics.median(samples)
  tokens_per_s = batch * t.seq_len / step_s
  peak = metrics_lib.peak_flops_per_device()
  flops = model_lib.flops_per_token(cfg, t.seq_len) * tokens_per_s
  stats = jax.devices()[0].memory_stats() or {}
  analysis = compiled.memory_analysis()
  static_bytes = None
  if analysis is not None:
    static_bytes = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
                    + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)
  return dict(optimizer=optimizer, batch=batch, seq_len=t.seq_len, step_ms=step_s * 1e3,
              tokens_per_s=tokens_per_s, mfu=flops / (peak * jax.device_count()) if peak else None,
              tflops=flops / 1e12, compile_s=compile_s, loss=float(metrics["loss"]),
              peak_bytes=stats.get("peak_bytes_in_use"), compiled_bytes=static_bytes,
              goal=GOALS.get((optimizer, batch), ""))


def find_max_batch(config, optimizer: str, start: int) -> int:
  """Largest batch (doubling, then bisecting) whose step compiles and runs."""
  def fits(b):
    try:
      measure(config, optimizer, b, steps=1)
      return True
    except Exception as e:  # noqa: BLE001 - XLA reports OOM as several exception types
      if "RESOURCE_EXHAUSTED" in str(e) or "out of memory" in str(e).lower():
        return False
      raise
  lo, hi = 0, start
  while fits(hi):
    lo, hi = hi, hi * 2
  while hi - lo > max(1, lo // 16):
    mid = (lo + hi) // 2
    lo, hi = (mid, hi) if fits(mid) else (lo, mid)
  return lo


def _gib(n):
  return f"{n / 2**30:.2f}" if n else "-"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default=None, help="default: configs/lm/gpt2_124m.py "
                      "(--small: configs/lm/tiny.py)")
  parser.add_argument("--small", action="store_true", help="the tiny config, CPU-sized")
  parser.add_argument("--optimizers", default="adamw,sign_sgd,signum,muon")
  parser.add_argument("--batch-sizes", default="", help="default: 12,32 (--small: 16)")
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--find-max-batch", action="store_true")
  parser.add_argument("--json", default="")
  args = parser.parse_args()

  path = args.config or ROOT / "configs" / "lm" / ("tiny.py" if args.small else "gpt2_124m.py")
  config = load_config_file(path)
  batches = [int(b) for b in (args.batch_sizes or ("16" if args.small else "12,32")).split(",")]
  device = jax.devices()[0]
  rows = []
  for name in args.optimizers.split(","):
    for batch in batches:
      rows.append(measure(config, name.strip(), batch, args.steps))
      print(f"  measured {name} batch {batch}: {rows[-1]['step_ms']:.1f} ms", file=sys.stderr)
  max_batch = find_max_batch(config, "signum", max(batches)) if args.find_max_batch else None

  n = config.train.seq_len
  print(f"\ntrain step, {pathlib.Path(path).name}, context {n}, on {jax.device_count()} x "
        f"{device.device_kind} (jax {jax.__version__})")
  header = (f"{'optimizer':<10} {'batch':>5} {'step ms':>9} {'tokens/s':>10} {'MFU':>6} "
            f"{'TFLOP/s':>8} {'compile s':>9} {'peak GiB':>8} {'XLA GiB':>8}  goal")
  print(header + "\n" + "-" * len(header))
  for r in rows:
    mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
    print(f"{r['optimizer']:<10} {r['batch']:>5} {r['step_ms']:>9.1f} {r['tokens_per_s']:>10,.0f} "
          f"{mfu:>6} {r['tflops']:>8.2f} {r['compile_s']:>9.1f} {_gib(r['peak_bytes']):>8} "
          f"{_gib(r['compiled_bytes']):>8}  {r['goal']}")
  if max_batch is not None:
    print(f"largest batch that fits (signum, context {n}): {max_batch}")
  out = pathlib.Path(args.json or ROOT / "benchmarks" / "results" /
                     f"train_bench_{'small' if args.small else pathlib.Path(path).stem}"
                     f"_{device.platform}.json")
  out.parent.mkdir(parents=True, exist_ok=True)
  shown = pathlib.Path(path).resolve()
  shown = shown.relative_to(ROOT) if shown.is_relative_to(ROOT) else shown
  out.write_text(json.dumps(dict(config=str(shown), device=device.device_kind,
                                 num_devices=jax.device_count(), host=platform.machine(),
                                 jax=jax.__version__, max_batch=max_batch, rows=rows), indent=1))
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
