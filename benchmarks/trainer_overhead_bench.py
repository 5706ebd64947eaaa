"""Trainer overhead: the default job's tokens/s against a plain-JAX loop, same run.

    python benchmarks/trainer_overhead_bench.py            # lm/tiny (the default job), CPU
    python benchmarks/trainer_overhead_bench.py --steps 200 --rounds 3 --config.optimizer.name=muon

Alternates (``--rounds`` times) two contestants on the same model, batch shape and
optimizer (``signflax.train.setup``'s ``tx``):

* **trainer**: ``signflax.train.trainer.run`` on the config (its Grain input pipeline,
  metrics, logging, evals and async checkpoints as configured), in a fresh work
  directory; its figure is the median of the ``tokens_per_s`` it logs (each logging
  interval's steps; the first interval, which compiles, is left out);
* **plain**: ``jax.jit(step, donate_argnums=0)`` of loss, ``jax.grad``, ``tx.update``
  and ``optax.apply_updates`` on one batch already on the device, no logging; median
  tokens/s over the same number of steps in chunks of ``log_every``.

Writes ``ratio_vs_reference`` (trainer / plain tokens/s, the median over rounds of each
round's ratio, so both sides of a ratio ran back to back; goal >= 0.95) to JSON beside
the load average. Speed goals are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

import jax
import optax

from signflax import config_io
from signflax.train import setup as setup_lib
from signflax.train import step as step_lib
from signflax.train import trainer

GOAL = 0.95


def trainer_round(config, workdir: pathlib.Path) -> list[float]:
  """Runs the trainer once; the tokens/s of its logging intervals after the first."""
  code = trainer.run(config, str(workdir))
  if code != 0:
    raise SystemExit(f"trainer exited with {code}")
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  rates = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
  return rates[1:]


def plain_round(run, steps: int, chunk: int) -> list[float]:
  """Tokens/s of a plain jitted loop, per chunk of ``chunk`` steps (first chunk compiles)."""
  t = run.config.train
  loss_fn = step_lib.make_loss_fn(run.graphdef, t.loss_chunk_len)
  tx = run.tx

  def step(state, batch):
    params, opt_state = state
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  step = jax.jit(step, donate_argnums=0)
  tokens = jax.random.randint(jax.random.key(0), (t.global_batch_size, t.seq_len + 1), 0,
                              run.model.vocab_size)
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
  state = run.init_state()
  state = (state.params, state.opt_state)
  rates = []
  for first in range(0, steps, chunk):
    start = time.monotonic()
    for _ in range(min(chunk, steps - first)):
      state, loss = step(state, batch)
    jax.block_until_ready(loss)
    rates.append(min(chunk, steps - first) * t.global_batch_size * t.seq_len
                 / (time.monotonic() - start))
  return rates[1:]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="lm/tiny")
  parser.add_argument("--steps", type=int, default=150, help="train.steps of each round")
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--json", default="benchmarks/results/trainer_overhead_cpu.json")
  overrides, rest = config_io.split_overrides(sys.argv[1:] if argv is None else argv)
  args = parser.parse_args(rest)
  config = config_io.load_config_file(args.config)
  for key, value in overrides:
    config_io.apply_override(config, key, value)
  with config.unlocked():
    config.train.steps = args.steps
  run = setup_lib.setup(config)
  chunk = config.train.log_every
  load_before = os.getloadavg()
  samples = {"trainer": [], "plain": []}
  round_ratios = []
  with tempfile.TemporaryDirectory() as tmp:
    for i in range(args.rounds):
      trainer_tps = statistics.median(trainer_round(config, pathlib.Path(tmp) / f"round{i}"))
      plain_tps = statistics.median(plain_round(run, args.steps, chunk))
      samples["trainer"].append(trainer_tps)
      samples["plain"].append(plain_tps)
      round_ratios.append(trainer_tps / plain_tps)
      print(f"round {i + 1}/{args.rounds}: trainer {trainer_tps:,.0f} tok/s, plain "
            f"{plain_tps:,.0f} tok/s, ratio {round_ratios[-1]:.3f}", flush=True)
  load = os.getloadavg()
  trainer_tps, plain_tps = (statistics.median(samples[k]) for k in ("trainer", "plain"))
  # paired: each round's two contestants ran back to back under the same load
  ratio = statistics.median(round_ratios)
  t = config.train
  print(f"\n{args.config} ({config.optimizer.name}, batch {t.global_batch_size} x {t.seq_len}, "
        f"{args.steps} steps x {args.rounds} rounds) on {jax.devices()[0].device_kind} "
        f"x{jax.device_count()}")
  print(f"{'loop':<10} {'tokens/s':>10}")
  print(f"{'trainer':<10} {trainer_tps:>10,.0f}\n{'plain JAX':<10} {plain_tps:>10,.0f}")
  print(f"ratio_vs_reference (trainer / plain, median of the rounds' ratios "
        f"{', '.join(f'{r:.3f}' for r in round_ratios)}): {ratio:.3f} (goal >= {GOAL}) | "
        f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} (before: {load_before[0]:.1f})")
  out = pathlib.Path(args.json)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(dict(
      config=args.config, overrides=dict(overrides), optimizer=config.optimizer.name,
      global_batch_size=t.global_batch_size, seq_len=t.seq_len, steps=args.steps,
      rounds=args.rounds, device=jax.devices()[0].device_kind, devices=jax.device_count(),
      trainer_tokens_per_s=trainer_tps, plain_tokens_per_s=plain_tps,
      ratio_vs_reference=ratio, round_ratios=round_ratios, goal=GOAL,
      samples_per_round=samples, loadavg=list(load),
      loadavg_before=list(load_before), jax=jax.__version__), indent=1))
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
