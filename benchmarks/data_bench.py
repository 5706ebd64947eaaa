"""Input pipeline speed: host tokens/s of the trainer's Grain iterator, vs what a step eats.

    python benchmarks/data_bench.py                       # default corpus, batch 32 x 1024
    python benchmarks/data_bench.py --config.data.source=arrayrecord \
        --config.data.paths=/data/owt_shards --config.data.tokenizer=/data/gpt2/tokenizer.json

The train step measured by ``train_bench.py`` runs on tokens already on device;
this measures the other half: windows read, shuffled, batched and split into
inputs/targets on the host (``signflax.data.make_iterator``), for each
``--prefetch`` setting. The goal is to outrun the fastest step: 600k tokens/s
(issue 6's GPT-2 124M goal on one H100) with room to spare. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys
import time

from signflax import data as data_lib
from signflax.config_io import apply_override, split_overrides

ROOT = pathlib.Path(__file__).resolve().parent.parent
GOAL_TOKENS_PER_S = 600e3


def measure(data_config, *, batch: int, seq_len: int, batches: int) -> dict:
  """Tokens/s over ``batches`` batches after the first (which pays start-up)."""
  it = data_lib.make_iterator(data_config, split="train", seq_len=seq_len,
                              global_batch_size=batch, seed=0, process_index=0,
                              process_count=1)
  start = time.perf_counter()
  next(it)
  first_s = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  seconds = time.perf_counter() - start
  tokens_per_s = batches * batch * seq_len / seconds
  return dict(prefetch=data_config.prefetch, num_workers=data_config.num_workers,
              first_batch_s=first_s, ms_per_batch=1e3 * seconds / batches,
              tokens_per_s=tokens_per_s, x_goal=tokens_per_s / GOAL_TOKENS_PER_S)


def _parse(argv):
  """``(args, data config)`` from the command line; bad input raises ValueError or OSError."""
  overrides, argv = split_overrides(argv)
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--seq-len", type=int, default=1024)
  parser.add_argument("--batches", type=int, default=200)
  parser.add_argument("--prefetch", default="0,2")
  parser.add_argument("--json", default="")
  args = parser.parse_args(argv)
  config = data_lib.default_data_config()
  for dotted, text in overrides:
    apply_override(config, dotted.removeprefix("data."), text)
  data_lib.validate(config, seq_len=args.seq_len, global_batch_size=args.batch, process_count=1)
  return args, config


def main(argv=None):
  try:  # bad input: one line, exit 2
    args, config = _parse(sys.argv[1:] if argv is None else argv)
  except (ValueError, OSError) as e:
    print(f"data_bench: error: {e}", file=sys.stderr)
    raise SystemExit(2) from None
  rows = []
  for prefetch in (int(p) for p in args.prefetch.split(",")):
    with config.unlocked():
      config.prefetch = prefetch
    rows.append(measure(config, batch=args.batch, seq_len=args.seq_len, batches=args.batches))

  print(f"\ninput pipeline, source {config.source}, tokenizer {config.tokenizer}, batch "
        f"{args.batch} x {args.seq_len}, on {platform.machine()} ({platform.processor() or '-'})")
  header = (f"{'prefetch':>8} {'workers':>7} {'first s':>8} {'ms/batch':>9} {'tokens/s':>12} "
            f"{'x goal':>7}  goal")
  print(header + "\n" + "-" * len(header))
  for r in rows:
    print(f"{r['prefetch']:>8} {r['num_workers']:>7} {r['first_batch_s']:>8.2f} "
          f"{r['ms_per_batch']:>9.2f} {r['tokens_per_s']:>12,.0f} {r['x_goal']:>7.1f}  "
          f">= {GOAL_TOKENS_PER_S:,.0f} tok/s")
  out = pathlib.Path(args.json or ROOT / "benchmarks" / "results" /
                     f"data_bench_{config.source}.json")
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(dict(source=config.source, tokenizer=config.tokenizer,
                                 batch=args.batch, seq_len=args.seq_len,
                                 host=platform.machine(), rows=rows), indent=1))
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
