"""Train-step speed: step time, tokens/s, MFU, compile time and peak memory.

    python benchmarks/train_bench.py                      # GPT-2 124M, context 1024 (GPU)
    python benchmarks/train_bench.py --small              # the tiny config on CPU
    python benchmarks/train_bench.py --optimizers signum,muon --batch-sizes 12,32
    python benchmarks/train_bench.py --find-max-batch     # largest batch that fits (GPU)
    python benchmarks/train_bench.py --config.model.attention_impl=xla --label xla-attention

Runs the trainer's own jitted, sharded train step (``signflax.train.setup``) on
synthetic tokens already on device, so the figure is the step alone (the input
pipeline is measured by ``benchmarks/data_bench.py``). One step per batch, no
gradient accumulation (``--grad-accum`` to change). Median of ``--steps`` timed
steps after one warm-up. Each (optimizer, batch) runs in its own process, so its
peak memory is its own and an out-of-memory row cannot disturb the next.
``--config.<field>=<value>`` overrides the config as on the ``signflax train``
command line. Prints a table with each goal beside its figure and writes JSON;
speed goals are reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import subprocess
import sys
import time

import jax

from signflax import model as model_lib
from signflax.config_io import apply_override, load_config_file, split_overrides
from signflax.train import metrics as metrics_lib
from signflax.train import setup as train_setup

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Speed goals for GPT-2 124M at context 1024 on one H100, and the nanoGPT reference
# (PyTorch 2.11, torch.compile, bf16 autocast, fused AdamW, same H100).
GOALS = {("signum", 32): ">= 600k tok/s (~52% MFU)", ("muon", 32): "step <= 1.1x signum's"}
NANOGPT_TOKENS_PER_S = {12: 438e3, 32: 483e3}
BYTE_VOCAB = 258  # the byte tokenizer's vocabulary, for configs with vocab_size=None


def measure(config, optimizer: str, batch: int, steps: int) -> dict:
  """Compiles and times the train step of ``config`` with ``optimizer`` at ``batch``."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.optimizer.name = optimizer
    config.train.global_batch_size = batch
  t = config.train
  start = time.perf_counter()
  run = train_setup.setup(config, vocab_size=config.model.vocab_size or BYTE_VOCAB,
                          noise_stats=False)
  cfg = run.model_config
  tokens = jax.random.randint(jax.random.key(0), (batch, t.seq_len + 1), 0, cfg.vocab_size)
  with jax.set_mesh(run.mesh):
    data = {"inputs": jax.device_put(tokens[:, :-1], run.batch_sharding),
            "targets": jax.device_put(tokens[:, 1:], run.batch_sharding)}
    state = run.init_state()
    step = run.train_step
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
  baseline = NANOGPT_TOKENS_PER_S.get(batch) if t.seq_len == 1024 else None
  return dict(optimizer=optimizer, batch=batch, seq_len=t.seq_len, grad_accum=t.grad_accum,
              attention=model_lib.attention_implementation(cfg), step_ms=step_s * 1e3,
              tokens_per_s=tokens_per_s,
              mfu=flops / (peak * jax.device_count()) if peak else None,
              tflops=flops / 1e12, compile_s=compile_s, loss=float(metrics["loss"]),
              peak_bytes=stats.get("peak_bytes_in_use"), compiled_bytes=static_bytes,
              vs_nanogpt=tokens_per_s / baseline if baseline else None,
              goal=GOALS.get((optimizer, batch), ""))


def _load_config(path, overrides, grad_accum: int):
  config = load_config_file(path)
  for dotted, text in overrides:
    apply_override(config, dotted, text)
  with config.unlocked():
    config.train.grad_accum = grad_accum
  return config


def _measure_in_subprocess(args, optimizer: str, batch: int, steps: int) -> dict | None:
  """One row in a fresh process: its own peak memory; None if it ran out of memory."""
  command = [sys.executable, __file__, "--row", f"{optimizer}:{batch}:{steps}",
             "--config", str(args.config_path), "--grad-accum", str(args.grad_accum)]
  command += [f"--config.{k}={v}" for k, v in args.overrides]
  result = subprocess.run(command, capture_output=True, text=True)
  if result.returncode == 0:
    return json.loads(result.stdout.strip().splitlines()[-1])
  if "RESOURCE_EXHAUSTED" in result.stderr or "out of memory" in result.stderr.lower():
    return None
  sys.stderr.write(result.stderr)
  raise SystemExit(f"train_bench: the {optimizer} batch {batch} row failed (exit "
                   f"{result.returncode})")


def find_max_batch(args, optimizer: str, start: int) -> int:
  """Largest batch (doubling, then bisecting to 1/16) whose step compiles and runs."""
  fits = lambda b: _measure_in_subprocess(args, optimizer, b, steps=1) is not None
  lo, hi = 0, start
  while fits(hi):
    lo, hi = hi, hi * 2
  while hi - lo > max(1, lo // 16):
    mid = (lo + hi) // 2
    lo, hi = (mid, hi) if fits(mid) else (lo, mid)
  return lo


def _gib(n):
  return f"{n / 2**30:.2f}" if n else "-"


def print_table(rows, *, name: str, seq_len: int, device: str, label: str) -> None:
  print(f"\ntrain step, {name}, context {seq_len}, on {device}{' | ' + label if label else ''}")
  header = (f"{'optimizer':<10} {'batch':>5} {'attn':>5} {'step ms':>8} {'tokens/s':>10} "
            f"{'MFU':>6} {'TFLOP/s':>8} {'x nanoGPT':>9} {'compile s':>9} {'peak GiB':>8} "
            f"{'XLA GiB':>8}  goal")
  print(header + "\n" + "-" * len(header))
  for r in rows:
    if r.get("oom"):
      print(f"{r['optimizer']:<10} {r['batch']:>5}  out of memory")
      continue
    mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
    vs = f"{r['vs_nanogpt']:.2f}" if r["vs_nanogpt"] else "-"
    print(f"{r['optimizer']:<10} {r['batch']:>5} {r['attention']:>5} {r['step_ms']:>8.1f} "
          f"{r['tokens_per_s']:>10,.0f} {mfu:>6} {r['tflops']:>8.1f} {vs:>9} "
          f"{r['compile_s']:>9.1f} {_gib(r['peak_bytes']):>8} {_gib(r['compiled_bytes']):>8}  "
          f"{r['goal']}")


def _parse(argv):
  """``(args, config)`` from the command line; bad input raises ValueError or OSError."""
  overrides, argv = split_overrides(argv)
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default=None, help="default: lm/gpt2_124m (packaged) "
                      "(--small: lm/tiny)")
  parser.add_argument("--small", action="store_true", help="the tiny config, CPU-sized")
  parser.add_argument("--optimizers", default="adamw,sign_sgd,signum,muon")
  parser.add_argument("--batch-sizes", default="", help="default: 12,32 (--small: 16)")
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--grad-accum", type=int, default=1)
  parser.add_argument("--find-max-batch", action="store_true")
  parser.add_argument("--label", default="", help="names this variant in the table and JSON")
  parser.add_argument("--json", default="")
  parser.add_argument("--row", default="", help=argparse.SUPPRESS)  # internal: one row
  args = parser.parse_args(argv)
  args.overrides = overrides
  args.config_path = pathlib.Path(
      args.config or ("lm/tiny" if args.small else "lm/gpt2_124m"))
  return args, _load_config(args.config_path, overrides, args.grad_accum)


def main(argv=None):
  try:  # bad input: one line, exit 2, before any compilation
    args, config = _parse(sys.argv[1:] if argv is None else argv)
  except (ValueError, OSError) as e:
    print(f"train_bench: error: {e}", file=sys.stderr)
    raise SystemExit(2) from None
  overrides = args.overrides

  if args.row:
    optimizer, batch, steps = args.row.split(":")
    print(json.dumps(measure(config, optimizer, int(batch), int(steps))))
    return

  batches = [int(b) for b in (args.batch_sizes or ("16" if args.small else "12,32")).split(",")]
  rows = []
  for name in args.optimizers.split(","):
    for batch in batches:
      row = _measure_in_subprocess(args, name.strip(), batch, args.steps)
      rows.append(row or dict(optimizer=name.strip(), batch=batch, oom=True))
      shown = f"{row['step_ms']:.1f} ms" if row else "out of memory"
      print(f"  measured {name} batch {batch}: {shown}", file=sys.stderr, flush=True)
  max_batch = find_max_batch(args, "signum", max(batches)) if args.find_max_batch else None

  device = jax.devices()[0]  # the parent starts a backend only now, after the rows ran
  print_table(rows, name=args.config_path.name, seq_len=config.train.seq_len,
              device=f"{jax.device_count()} x {device.device_kind} (jax {jax.__version__})",
              label=args.label)
  if max_batch is not None:
    print(f"largest batch that fits (signum, context {config.train.seq_len}): {max_batch}")
  stem = f"train_bench_{'small' if args.small else args.config_path.stem}"
  stem += f"_{args.label}" if args.label else ""
  out = pathlib.Path(args.json or ROOT / "benchmarks" / "results" /
                     f"{stem}_{device.platform}.json")
  out.parent.mkdir(parents=True, exist_ok=True)
  shown = args.config_path.resolve()
  shown = shown.relative_to(ROOT) if shown.is_relative_to(ROOT) else shown
  out.write_text(json.dumps(dict(config=str(shown), overrides=dict(overrides), label=args.label,
                                 device=device.device_kind, num_devices=jax.device_count(),
                                 host=platform.machine(), jax=jax.__version__,
                                 max_batch=max_batch, rows=rows), indent=1))
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
