"""Bytes on each mesh axis per train step: float all-reduce (mean) vs 1-bit majority vote.

    python benchmarks/comm_bench.py                   # gpt2_124m and llama_100m shapes, data=8
    python benchmarks/comm_bench.py --small           # the tiny config (CPU test size)

Compiles the trainer's own sharded step (``signflax.train.step``) for
``gradient_exchange`` = mean and sign_vote with signum on ``--devices`` forced CPU
devices, reads every collective from the compiled HLO (loop trip counts included)
and attributes its bytes to the mesh axes its replica groups span. Bytes are what
one device sends in a ring (all-reduce ``2(g-1)/g x size``, all-gather and
all-to-all ``(g-1)/g x size``, reduce-scatter ``(g-1) x result``). Nothing is timed.

Larger data sizes (64, 256) are not compiled (256 forced host devices would take
long to compile on a CPU); their bytes come from the exact formulas of
``signflax.parallel.sign_vote`` (``exchange_bytes``, ``all_reduce_bytes``), which the
table checks against the compiled HLO at the compiled size. The time columns are
on paper: bytes over a per-replica link of 25/100/400 Gb/s or TPU v5e ICI, beside
the step's FLOPs at 50% MFU (``model.flops_per_token``) with the config's global
batch split over the replicas. Writes ``benchmarks/results/comm_bench*.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import re
import sys
from collections import defaultdict

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
COLLECTIVES = ("all-reduce", "all-gather", "all-to-all", "reduce-scatter", "collective-permute")
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4,
               "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}
FLOAT_DTYPES = ("bf16", "f16", "f32", "f64")
LINKS_GBPS = {"25 Gb/s": 25, "100 Gb/s": 100, "400 Gb/s": 400, "v5e ICI 1600 Gb/s": 1600}
PEAK_FLOPS = {"H100": 989e12, "TPU v5e": 197e12}
MFU = 0.5
# Vocabulary of the shapes: gpt2_124m's config sets 50304; llama_100m follows its
# tokenizer (None), benchmarked at the 32k of a LLaMA tokenizer as its docstring says.
SHAPES = {"gpt2_124m": None, "llama_100m": 32000}

_INSTR = re.compile(r"^\s*(?:ROOT )?%\S+ = (\(.*?\)|\S+) (" + "|".join(COLLECTIVES)
                    + r")(?:-start)?\((.*)$")
_ARRAY = re.compile(r"\b(pred|[suf]\d+|bf16)\[([\d,]*)\]")


def _multipliers(hlo: str) -> dict[str, int]:
  """How many times each computation runs per call of the entry (while trip counts)."""
  comps, current, entry = defaultdict(list), None, None
  for line in hlo.splitlines():
    if m := re.match(r"^(ENTRY )?%(\S+) .*\{\s*$", line):
      current = m.group(2)
      entry = current if m.group(1) else entry
    elif current:
      comps[current].append(line)
  mult = defaultdict(int)
  mult[entry] = 1
  order = [entry]
  for name in order:
    for line in comps[name]:
      trips = 1
      if " while(" in line:
        t = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
        trips = int(t.group(1)) if t else 1
      for role, callee in re.findall(r"\b(body|calls|to_apply|condition)=%([\w.\-]+)", line):
        if callee not in mult:
          order.append(callee)
        mult[callee] += mult[name] * (trips if role == "body" else 1)
  return mult


def collectives(hlo: str, mesh) -> list[dict]:
  """Every collective in compiled ``hlo``: kind, dtype, elements, sent bytes, mesh axes, runs."""
  from signflax.tpu import hlo as hlo_lib  # noqa: PLC0415 - after main() put the repo on sys.path
  coords = np.stack(np.unravel_index(np.arange(mesh.devices.size), mesh.devices.shape), -1)
  mult, current, out = _multipliers(hlo), None, []
  for line in hlo.splitlines():
    if m := re.match(r"^(?:ENTRY )?%(\S+) .*\{\s*$", line):
      current = m.group(1)
      continue
    m = _INSTR.match(line)
    if not m:
      continue
    shape, kind, rest = m.groups()
    arrays = [(d, math.prod(int(x) for x in dims.split(",") if x))
              for d, dims in _ARRAY.findall(shape)]
    if m.group(0).find(f"{kind}-start(") >= 0 and len(arrays) > 1:
      arrays = arrays[len(arrays) // 2:]   # async start: (operands, results)
    groups = hlo_lib.replica_groups(rest, mesh.devices.size)
    g = len(groups[0])
    spans = {axis for grp in groups for axis, name in enumerate(mesh.axis_names)
             if len(set(coords[grp, axis])) > 1}
    size = sum(n * DTYPE_BYTES[d] for d, n in arrays)
    factor = {"all-reduce": 2 * (g - 1) / g, "all-gather": (g - 1) / g,
              "all-to-all": (g - 1) / g, "reduce-scatter": g - 1,
              "collective-permute": 1.0}[kind] if g > 1 else 0.0
    runs = mult.get(current, 1) or 1
    out.append(dict(kind=kind, dtypes=sorted({d for d, _ in arrays}),
                    max_elements=max((n for _, n in arrays), default=0),
                    sent_bytes=factor * size * runs, runs=runs,
                    axes=tuple(a for i, a in enumerate(mesh.axis_names) if i in spans)))
  return out


def bytes_by_axis(records: list[dict], *, float_only: bool | None = None) -> dict[str, float]:
  """Sent bytes per mesh axis (a collective spanning several axes counts under 'a+b')."""
  totals: dict[str, float] = defaultdict(float)
  for r in records:
    is_float = any(d in FLOAT_DTYPES for d in r["dtypes"])
    if r["axes"] and (float_only is None or float_only == is_float):
      totals["+".join(r["axes"])] += r["sent_bytes"]
  return dict(totals)


def compiled_step_hlo(config, exchange: str, mesh_sizes: dict) -> tuple[str, object, int]:
  """(compiled HLO text, mesh, parameter count) of the train step with ``exchange``."""
  import jax
  import jax.numpy as jnp

  from signflax import model as model_lib
  from signflax import parallel
  from signflax.train import optimizer as optimizer_lib
  from signflax.train import step as step_lib
  from signflax.train import trainer

  t = config.train
  cfg = trainer.model_config(config, config.model.vocab_size or 258)
  mesh = parallel.make_mesh(mesh_sizes)
  graphdef, shapes, axes = model_lib.abstract_model(cfg)
  if exchange == "sign_vote":
    tx, schedule = step_lib.make_sign_vote_optimizer(config.optimizer, t.steps, axes, shapes,
                                                     mesh)
  else:
    tx, schedule = optimizer_lib.make_optimizer(config.optimizer, t.steps, axes)
  with jax.set_mesh(mesh):
    shardings = step_lib.state_shardings(cfg, tx, mesh, axes)
    state = jax.eval_shape(lambda: step_lib.init_state(cfg, tx, jax.random.key(0)))
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                         state, shardings)
    batch = {k: jax.ShapeDtypeStruct((t.global_batch_size, t.seq_len), jnp.int32,
                                     sharding=parallel.batch_sharding(mesh))
             for k in ("inputs", "targets")}
    step = step_lib.make_train_step(graphdef, tx, schedule, grad_accum=t.grad_accum,
                                    noise_stats=False, loss_chunk_len=t.loss_chunk_len,
                                    gradient_exchange=exchange)
    hlo = step_lib.jit_train_step(step, mesh, shardings).lower(state, batch).compile().as_text()
  return hlo, mesh, sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))


def paper_times(num_params: int, replicas: int, tokens_per_step: int,
                flops_per_token: float) -> dict:
  """Exchange times (s) on each link and FLOP time per step (s) at 50% MFU, per replica."""
  from signflax.parallel import sign_vote

  mean_b = sign_vote.all_reduce_bytes(num_params, replicas, 2)
  vote_b = sign_vote.exchange_bytes(num_params, replicas)
  compute = {k: flops_per_token * tokens_per_step / replicas / (MFU * peak)
             for k, peak in PEAK_FLOPS.items()}
  links = {k: {"mean_bf16_s": mean_b * 8 / (g * 1e9), "sign_vote_s": vote_b * 8 / (g * 1e9)}
           for k, g in LINKS_GBPS.items()}
  return dict(mean_bf16_bytes=mean_b, sign_vote_bytes=vote_b, compute_s=compute, links=links)


def break_even_gbps(mean_bytes: float, compute_s: float) -> float:
  """The link speed below which the bf16 all-reduce takes longer than the step's FLOPs
  (the exchange can no longer hide behind compute; the vote's is 16x shorter)."""
  return mean_bytes * 8 / compute_s / 1e9


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--small", action="store_true", help="the tiny config only")
  parser.add_argument("--devices", type=int, default=8, help="forced CPU devices (= data)")
  parser.add_argument("--data-sizes", default="8,64,256")
  parser.add_argument("--json", default=None)
  args = parser.parse_args(argv)
  os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""),
                                      f"--xla_force_host_platform_device_count={args.devices}"])
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  sys.path.insert(0, str(ROOT))
  from signflax import model as model_lib
  from signflax.config_io import load_config_file
  from signflax.parallel import sign_vote
  from signflax.train import trainer

  shapes = {"tiny": None} if args.small else SHAPES
  rows, measured = [], []
  for name, vocab in shapes.items():
    config = load_config_file(ROOT / "signflax" / "configs" / "lm" / f"{name}.py")
    tokens_per_step = config.train.global_batch_size * config.train.seq_len
    with config.unlocked():
      if vocab:
        config.model.vocab_size = vocab
      config.optimizer.name = "signum"
      # the bytes do not depend on the batch: compile a small one
      config.train.update(global_batch_size=args.devices, seq_len=min(config.train.seq_len, 128),
                          grad_accum=1, loss_chunk_len=0)
    cfg = trainer.model_config(config, config.model.vocab_size or 258)
    flops = model_lib.flops_per_token(cfg, 1024 if not args.small else 128)
    hlo_bytes = {}
    for exchange in ("mean", "sign_vote"):
      hlo, mesh, num_params = compiled_step_hlo(config, exchange, {"data": args.devices})
      recs = collectives(hlo, mesh)
      hlo_bytes[exchange] = dict(all=bytes_by_axis(recs),
                                 float=bytes_by_axis(recs, float_only=True),
                                 largest_float_data_elements=max(
                                     [r["max_elements"] for r in recs if "data" in r["axes"]
                                      and any(d in FLOAT_DTYPES for d in r["dtypes"])] or [0]))
    formula = dict(mean_f32=sign_vote.all_reduce_bytes(num_params, args.devices, 4),
                   sign_vote=sign_vote.exchange_bytes(num_params, args.devices))
    measured.append(dict(shape=name, num_params=num_params, data=args.devices,
                         hlo=hlo_bytes, formula=formula))
    for r in [int(x) for x in args.data_sizes.split(",")]:
      times = paper_times(num_params, r, tokens_per_step, flops)
      times["break_even_gbps"] = {k: break_even_gbps(times["mean_bf16_bytes"], c)
                                  for k, c in times["compute_s"].items()}
      rows.append(dict(shape=name, num_params=num_params, data=r,
                       tokens_per_replica=tokens_per_step // r, **times))

  print(f"compiled on {args.devices} CPU devices (mesh data={args.devices}); bytes sent per "
        "device per step on `data`, read from the HLO vs the formula")
  print(f"{'shape':<11} {'params':>8} {'mean f32 HLO':>13} {'formula':>12} {'vote HLO':>11} "
        f"{'formula':>10} {'vote/bf16':>9} {'largest float on data':>22}")
  for m in measured:
    mean_hlo = m["hlo"]["mean"]["all"].get("data", 0.0)
    vote_hlo = m["hlo"]["sign_vote"]["all"].get("data", 0.0)
    bf16 = sign_vote.all_reduce_bytes(m["num_params"], m["data"], 2)
    print(f"{m['shape']:<11} {m['num_params'] / 1e6:>7.1f}M {mean_hlo / 1e6:>11.2f}MB "
          f"{m['formula']['mean_f32'] / 1e6:>10.2f}MB {vote_hlo / 1e6:>9.3f}MB "
          f"{m['formula']['sign_vote'] / 1e6:>8.3f}MB {vote_hlo / bf16:>9.4f} "
          f"{m['hlo']['sign_vote']['largest_float_data_elements']:>22}")
  print()
  print("on paper: per replica and step; exchange at each link vs FLOP time at 50% MFU")
  head = " ".join(f"{k:>19}" for k in LINKS_GBPS)
  print(f"{'shape':<11} {'data':>5} {'bf16 MB':>8} {'vote MB':>8} {head} "
        f"{'H100 ms':>8} {'v5e ms':>8} {'pays below (H100/v5e)':>22}")
  for r in rows:
    links = " ".join(f"{r['links'][k]['mean_bf16_s'] * 1e3:>8.1f}/{r['links'][k]['sign_vote_s'] * 1e3:<5.1f}ms"
                     for k in LINKS_GBPS)
    c, be = r["compute_s"], r["break_even_gbps"]
    print(f"{r['shape']:<11} {r['data']:>5} {r['mean_bf16_bytes'] / 1e6:>8.1f} "
          f"{r['sign_vote_bytes'] / 1e6:>8.2f} {links} {c['H100'] * 1e3:>8.1f} "
          f"{c['TPU v5e'] * 1e3:>8.1f} {be['H100']:>9.0f}/{be['TPU v5e']:.0f} Gb/s")
  out = pathlib.Path(args.json) if args.json else (
      ROOT / "benchmarks" / "results" / f"comm_bench{'_small' if args.small else ''}.json")
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(dict(measured=measured, paper=rows, links_gbps=LINKS_GBPS,
                                 peak_flops=PEAK_FLOPS, mfu=MFU), indent=1) + "\n")
  print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
