"""Decode speed: KV-cache decoding against full recompute, and a bytes-per-token forecast.

    python benchmarks/decode_bench.py                        # the tiny config, batch 1 and 8
    python benchmarks/decode_bench.py --batches 1,8,32 --new-tokens 96
    python benchmarks/decode_bench.py --config lm/gpt2_124m --config.model.dtype=bfloat16

Greedy decoding of ``--new-tokens`` after a ``--prompt-len`` prompt (random
weights and tokens: speed does not depend on them), two ways:

* **KV cache**: ``signflax.model.decode.generate``, prefill then one token per
  step, the whole loop one jitted program (what ``signflax sample`` runs);
* **full recompute**: the model's forward pass over a ``[batch, prompt + new]``
  buffer once per new token (``decode.greedy_recompute``; causal attention, so
  the unfilled tail changes nothing; a fixed shape, so one compile).

Tokens/s counts generated tokens (batch x new tokens) over the wall time after
a compile and warm-up run; the best of ``--repeats``. Then, on paper, the
memory-bound decode rate of ``gpt2_124m`` on a GPU and a TPU: each step reads
every weight once and the whole KV cache of every row, so

    tokens/s ~= batch x bandwidth / (weight bytes + batch x cache bytes per row).

Prints a table (goal beside each figure) and writes JSON; speed is reported,
never asserted.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys
import time

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from signflax import config_io  # noqa: E402
from signflax import model as model_lib  # noqa: E402
from signflax.model import decode  # noqa: E402
from signflax.train import setup as setup_lib  # noqa: E402

BYTE_VOCAB = 258
GOAL = "KV cache >= 3x full recompute at 64 new tokens"
# Memory bandwidth (bytes/s) and dense bf16 FLOP/s from the spec sheets.
DEVICES = {"H100 SXM": (3.35e12, 989e12), "TPU v5e": (0.819e12, 197e12),
           "TPU v4": (1.2e12, 275e12)}


def _best_time(fn, repeats: int) -> float:
  """The fastest of ``repeats`` runs (as ``timeit`` reports): on a shared machine the
  slower runs measure the other jobs."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


def measure(config, batch: int, prompt_len: int, new_tokens: int, repeats: int) -> dict:
  cfg = setup_lib.transformer_config(config, config.model.vocab_size or BYTE_VOCAB)
  graphdef, _, _ = model_lib.abstract_model(cfg)
  params = jax.jit(lambda k: model_lib.init_params(cfg, k))(jax.random.key(0))
  prompt = np.asarray(jax.random.randint(jax.random.key(1), (batch, prompt_len), 0, 256),
                      np.int32)
  generate = jax.jit(lambda p, x: decode.generate(graphdef, p, x, jax.random.key(0),
                                                  max_new_tokens=new_tokens, eos_id=-1))
  start = time.perf_counter()
  compiled = generate.lower(params, prompt).compile()
  compile_s = time.perf_counter() - start
  jax.block_until_ready(compiled(params, prompt))
  cached_s = _best_time(lambda: jax.block_until_ready(compiled(params, prompt)), repeats)
  decode.greedy_recompute(graphdef, params, prompt, 2)   # compile and warm up
  recompute_s = _best_time(
      lambda: decode.greedy_recompute(graphdef, params, prompt, new_tokens), repeats)
  tokens = batch * new_tokens
  return {"batch": batch, "prompt_len": prompt_len, "new_tokens": new_tokens,
          "kv_cache_tokens_per_s": tokens / cached_s,
          "recompute_tokens_per_s": tokens / recompute_s,
          "speedup": recompute_s / cached_s, "kv_cache_compile_s": compile_s,
          "kv_cache_s": cached_s, "recompute_s": recompute_s}


def forecast(config, batches=(1, 8, 64), context: int | None = None,
             weight_bytes_per_param: int = 2, cache_bytes: int = 2) -> list[dict]:
  """Memory-bound decode tokens/s of ``config``'s model from bytes read per step."""
  cfg = setup_lib.transformer_config(config, config.model.vocab_size or BYTE_VOCAB)
  _, shapes, _ = model_lib.abstract_model(cfg)
  params = sum(x.size for x in jax.tree.leaves(shapes))
  context = context or cfg.max_seq_len
  weights = params * weight_bytes_per_param
  cache_per_row = 2 * cfg.num_layers * context * cfg.kv_heads * cfg.qk_dim * cache_bytes
  rows = []
  for batch in batches:
    step_bytes = weights + batch * cache_per_row
    flops = 2 * params * batch   # matmul FLOPs of one step (attention over the cache aside)
    for device, (bandwidth, peak) in DEVICES.items():
      step_s = max(step_bytes / bandwidth, flops / peak)
      rows.append({"device": device, "batch": batch, "context": context,
                   "weight_mb": weights / 1e6, "cache_mb_per_row": cache_per_row / 1e6,
                   "bytes_per_step_mb": step_bytes / 1e6, "step_us": step_s * 1e6,
                   "tokens_per_s": batch / step_s,
                   "bound": "memory" if step_bytes / bandwidth >= flops / peak else "compute"})
  return rows


def main(argv=None) -> int:
  overrides, rest = config_io.split_overrides(sys.argv[1:] if argv is None else argv)
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default="lm/tiny")
  p.add_argument("--batches", default="1,8")
  p.add_argument("--prompt-len", type=int, default=16)
  p.add_argument("--new-tokens", type=int, default=64)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--forecast-config", default="lm/gpt2_124m")
  p.add_argument("--json", default="")
  args = p.parse_args(rest)
  config = config_io.load_config_file(args.config)
  for dotted, value in overrides:
    config_io.apply_override(config, dotted, value)
  device = jax.devices()[0]
  rows = [measure(config, int(b), args.prompt_len, args.new_tokens, args.repeats)
          for b in args.batches.split(",")]
  print(f"decode, {args.config} ({device.device_kind}, {jax.device_count()} device(s)), prompt "
        f"{args.prompt_len}, {args.new_tokens} new tokens, greedy; goal: {GOAL}")
  print("| batch | KV cache tokens/s | full recompute tokens/s | speedup | KV compile s |")
  print("|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['batch']} | {r['kv_cache_tokens_per_s']:,.0f} | "
          f"{r['recompute_tokens_per_s']:,.0f} | {r['speedup']:.1f}x | "
          f"{r['kv_cache_compile_s']:.1f} |")
  forecast_config = config_io.load_config_file(args.forecast_config)
  paper = forecast(forecast_config)
  print(f"\nforecast, {args.forecast_config}: bf16 weights and cache, full context, "
        "memory bandwidth bound (weights + every row's cache read once per step)")
  print("| device | batch | bytes/step (MB) | step (us) | tokens/s | bound |")
  print("|---|---|---|---|---|---|")
  for r in paper:
    print(f"| {r['device']} | {r['batch']} | {r['bytes_per_step_mb']:,.0f} | "
          f"{r['step_us']:,.0f} | {r['tokens_per_s']:,.0f} | {r['bound']} |")
  out = pathlib.Path(args.json or ROOT / "benchmarks" / "results" /
                     f"decode_bench_{device.platform}.json")
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps({"config": args.config, "overrides": dict(overrides),
                             "device": device.device_kind, "host": platform.node(),
                             "goal": GOAL, "rows": rows, "forecast": paper}, indent=2) + "\n")
  print(f"\nwrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
