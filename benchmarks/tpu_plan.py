"""TPU plan: configs x topologies compiled for TPU on this host, HBM fit and estimated speed.

    python benchmarks/tpu_plan.py                          # the whole table (hours on 2 cores)
    python benchmarks/tpu_plan.py --configs gpt2_124m --topologies v5e:2x2,v5p:2x2x2
    python benchmarks/tpu_plan.py --calibrate              # + the MaxText comparison row

Each cell compiles the trainer's real train step (``signflax.tpu.plan``) with
libtpu's compile-only devices for the topology: ``gpt2_124m`` and ``llama_100m``
(vocab 32000) at 16 sequences of 1024 tokens per chip, ``llama_1b`` at 4 of 2048,
gradient accumulation off. Mesh and remat: candidates (``plan.candidate_meshes``
x none/dots/full) are ranked by their paper step time among those whose paper
memory fits; the first one the TPU compiler fits is the cell's (at most
``--max-compiles`` tries). The largest per-chip batch is the paper memory model
scaled to the compiled HBM of the cell (labelled estimated: no extra compiles).
Step time, tokens/s and MFU are roofline estimates, never measurements.

Compiles are cached in ``benchmarks/results/tpu_compile_cache.json`` (keyed by
config, topology and versions), results go to ``benchmarks/results/tpu_plan.json``
after every cell, so an interrupted run keeps what it has and resumes for free.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from signflax.config_io import load_config_file  # noqa: E402
from signflax.tpu import chips as chips_lib  # noqa: E402
from signflax.tpu import plan  # noqa: E402

CONFIGS = {  # name -> (per-chip batch, overrides)
    "gpt2_124m": (16, {"train.seq_len": 1024}),
    "llama_100m": (16, {"train.seq_len": 1024, "model.vocab_size": 32000}),
    "llama_1b": (4, {"train.seq_len": 2048}),
}
TOPOLOGIES = ("v5e:2x2", "v5p:2x2x2", "v5e:4x4", "v5e:16x16", "v6e:16x16")
# MaxText's published figure for a LLaMA of the same shape (calibration row): Llama 3.1 8B
# on v6e-256, bf16, sequence 8192: 45.46% MFU, ~7,207 tokens/s per chip
# (https://maxtext.readthedocs.io/en/maxtext-v0.2.0/reference/models/tiering.html).
CALIBRATION = dict(
    name="llama3.1_8b (MaxText shape)", topology="v6e:16x16", per_chip=2,
    measured_mfu=0.4546, measured_tokens_per_chip_s=7207.0,
    source="https://maxtext.readthedocs.io/en/maxtext-v0.2.0/reference/models/tiering.html",
    model=dict(vocab_size=128256, num_layers=32, d_model=4096, num_heads=32, num_kv_heads=8,
               mlp_dim=14336, max_seq_len=8192, tie_embeddings=False, dtype="bfloat16",
               rope_theta=500000.0),
    train=dict(seq_len=8192, loss_chunk_len=1024))


def cell_config(name: str, topology: str):
  per_chip, overrides = CONFIGS[name]
  config = load_config_file(f"lm/{name}")
  n = chips_lib.num_chips(topology)
  return plan.with_overrides(config, **overrides, **{"train.global_batch_size": per_chip * n,
                                            "train.grad_accum": 1})


def run_cell(config, topology: str, cache: plan.Cache, max_compiles: int) -> dict:
  n = chips_lib.num_chips(topology)
  chip = chips_lib.CHIPS[chips_lib.parse_topology(topology)[0]]
  cfg, t = plan.model_config(config), config.train
  ranked = []
  for mesh_shape in plan.candidate_meshes(n, cfg, t.global_batch_size):
    if mesh_shape[2] > 1 and cfg.num_heads < 16:
      continue  # small models: tensor parallelism only adds collectives
    state = plan.state_bytes_per_chip(config, mesh_shape)
    for remat in ("none", "dots", "full"):
      c = dataclasses.replace(cfg, remat=remat)
      paper = state + plan.activation_bytes_per_chip(c, t, mesh_shape, "splash")
      data, fsdp, _ = mesh_shape
      gather = 4 * state * (fsdp - 1) / (chip.ici_axis_gbps * 1e9)
      sync = 4 * state * fsdp * 2 * (data - 1) / data / fsdp / (chip.ici_axis_gbps * 1e9)
      seconds = plan.step_flops(c, t) * plan.REMAT_FLOPS[remat] / (
          n * chip.peak_bf16_tflops * 1e12) + gather + sync
      ranked.append((seconds, mesh_shape, remat, paper))
  # The config's own mesh (fsdp over every chip) and remat first, then by paper time.
  own = (1, n, 1), cfg.remat
  ranked.sort(key=lambda r: ((r[1], r[2]) != own, r[3] > 0.9 * chip.hbm_gib * plan.GIB, r[0]))
  tried = []
  for seconds, mesh_shape, remat, paper in ranked[:max_compiles]:
    mesh = dict(zip(("data", "fsdp", "tensor"), mesh_shape))
    overrides = {"model.remat": remat}
    if (mesh_shape, remat) != own:
      overrides.update({f"mesh.{k}": v for k, v in mesh.items()})
    print(f"  compiling mesh {mesh} remat {remat} (paper {paper / plan.GIB:.1f} GiB)",
          file=sys.stderr, flush=True)
    report = cache.report(plan.with_overrides(config, **overrides), topology, with_eval=False)
    tried.append(dict(mesh=mesh, remat=remat, fits=report["fits"],
                      hbm_per_chip_gib=report["hbm_per_chip_gib"],
                      compile_s=report["compile_s"]))
    if report["fits"]:
      # Largest per-chip batch: the paper model scaled to this compile's HBM.
      c = dataclasses.replace(cfg, remat=remat)
      state = plan.state_bytes_per_chip(config, mesh_shape)
      act = plan.activation_bytes_per_chip(c, t, mesh_shape, "splash")
      scale = (report["hbm_per_chip_gib"] * plan.GIB - state) / act if act else 1.0
      per_chip_act = act / (t.global_batch_size / n)
      largest = int((chip.hbm_gib * 0.95 * plan.GIB - state) / (per_chip_act * scale))
      return dict(report, tried=tried, est_largest_per_chip_batch=largest)
  return dict(fits=False, tried=tried, chips=n, compile_s=sum(t["compile_s"] for t in tried))


def calibrate(cache: plan.Cache) -> dict:
  c = CALIBRATION
  config = load_config_file("lm/llama_1b")
  n = chips_lib.num_chips(c["topology"])
  config = plan.with_overrides(config, **{f"model.{k}": v for k, v in c["model"].items()},
                      **{f"train.{k}": v for k, v in c["train"].items()},
                      **{"train.global_batch_size": c["per_chip"] * n, "train.grad_accum": 1,
                         "model.remat": "full"})
  report = cache.report(config, c["topology"], with_eval=False)
  out = dict(c, report=report)
  if report["fits"]:
    tokens_per_chip = report["est_tokens_per_s"] / n
    out.update(est_tokens_per_chip_s=tokens_per_chip,
               ratio_tokens=tokens_per_chip / c["measured_tokens_per_chip_s"],
               est_mfu=report["est_mfu"], ratio_mfu=report["est_mfu"] / c["measured_mfu"])
  return out


COMM_TOPOLOGIES = (("v5e:16x16", 1), ("v5e:16x16", 2))


def comm_table(cache: plan.Cache) -> list[dict]:
  """Mean (float all-reduce) vs sign_vote (1-bit majority vote) over a data axis that
  spans every chip, read from the compiled TPU program of the tiny config with signum
  (a small model keeps the 256- and 512-chip compiles cheap; bytes scale with the
  parameter count, so the table also gives bytes per parameter)."""
  rows = []
  for topology, slices in COMM_TOPOLOGIES:
    n = chips_lib.num_chips(topology, slices)
    for exchange in ("mean", "sign_vote"):
      config = plan.with_overrides(
          load_config_file("lm/tiny"),
          **{"optimizer.name": "signum", "optimizer.learning_rate": 3e-4,
             "train.gradient_exchange": exchange, "train.global_batch_size": n,
             "mesh.data": -1, "mesh.fsdp": 1, "mesh.tensor": 1})
      print(f"  comm {topology} x{slices} {exchange}", file=sys.stderr, flush=True)
      r = cache.report(config, topology, slices, with_eval=False)
      by_link = {"ici": 0.0, "dcn": 0.0}
      seconds = {"ici": 0.0, "dcn": 0.0}
      for c in r["collectives"]:
        by_link[c["link"]] += c["bytes"]
        seconds[c["link"]] += c["est_s"]
      rows.append(dict(topology=topology, slices=slices, chips=n, exchange=exchange,
                       num_params=r["num_params"], fits=r["fits"],
                       bytes_ici=by_link["ici"], bytes_dcn=by_link["dcn"],
                       bytes_per_param=(by_link["ici"] + by_link["dcn"]) / r["num_params"],
                       est_ici_s=seconds["ici"], est_dcn_s=seconds["dcn"],
                       collectives=r["collectives"], compile_s=r["compile_s"]))
  return rows


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--configs", default=",".join(CONFIGS))
  p.add_argument("--topologies", default=",".join(TOPOLOGIES))
  p.add_argument("--max-compiles", type=int, default=3)
  p.add_argument("--calibrate", action="store_true")
  p.add_argument("--comm", action="store_true", help="only the mean vs sign_vote table")
  p.add_argument("--out", default=str(ROOT / "benchmarks/results/tpu_plan.json"))
  p.add_argument("--cache", default=str(ROOT / "benchmarks/results/tpu_compile_cache.json"))
  args = p.parse_args(argv)
  cache = plan.Cache(args.cache)
  out = pathlib.Path(args.out)
  results = json.loads(out.read_text()) if out.exists() else {"cells": {}}
  if args.comm:
    results["comm"] = comm_table(cache)
    out.write_text(json.dumps(results, indent=1, default=float))
    print("| topology | chips | exchange | bytes/chip ICI | bytes/chip DCN | bytes/param | "
          "est. ICI ms | est. DCN ms |\n|---|---|---|---|---|---|---|---|")
    for r in results["comm"]:
      print(f"| {r['topology']} x{r['slices']} | {r['chips']} | {r['exchange']} | "
            f"{r['bytes_ici'] / 2**20:.2f} MiB | {r['bytes_dcn'] / 2**20:.2f} MiB | "
            f"{r['bytes_per_param']:.2f} | {r['est_ici_s'] * 1e3:.2f} | "
            f"{r['est_dcn_s'] * 1e3:.2f} |")
    return 0
  for topology in args.topologies.split(","):
    for name in args.configs.split(","):
      key = f"{name}@{topology}"
      print(f"{key}", file=sys.stderr, flush=True)
      start = time.perf_counter()
      cell = run_cell(cell_config(name, topology), topology, cache, args.max_compiles)
      cell["wall_s"] = time.perf_counter() - start
      results["cells"][key] = cell
      out.write_text(json.dumps(results, indent=1, default=float))
      print(table(results), flush=True)
  if args.calibrate:
    results["calibration"] = calibrate(cache)
    out.write_text(json.dumps(results, indent=1, default=float))
    cal = results["calibration"]
    if "ratio_tokens" in cal:
      print(f"calibration {cal['name']} on {cal['topology']}: estimated "
            f"{cal['est_tokens_per_chip_s']:,.0f} tokens/s/chip (MFU {cal['est_mfu']:.1%}) vs "
            f"MaxText measured {cal['measured_tokens_per_chip_s']:,.0f} "
            f"(MFU {cal['measured_mfu']:.1%}): estimate/measured {cal['ratio_tokens']:.2f}")
  return 0


def table(results: dict) -> str:
  head = ("| config | topology | fits | mesh (data,fsdp,tensor) | remat | largest per-chip "
          "batch (est.) | HBM/chip GiB | est. step | est. MFU | compile s |")
  lines = [head, "|" + "---|" * 10]
  for key, c in results["cells"].items():
    name, topology = key.split("@")
    if not c.get("fits"):
      tried = "; ".join(f"{t['remat']} {t['hbm_per_chip_gib']:.1f} GiB" for t in c["tried"])
      lines.append(f"| {name} | {topology} | no ({tried}) | | | | | | | {c['compile_s']:.0f} |")
      continue
    mesh = ",".join(str(v) for v in c["mesh"].values())
    lines.append(f"| {name} | {topology} | yes | {mesh} | {c['remat']} | "
                 f"{c['est_largest_per_chip_batch']} | {c['hbm_per_chip_gib']:.2f} / "
                 f"{c['hbm_capacity_gib']:.0f} | {c['est_step_s'] * 1e3:.0f} ms | "
                 f"{c['est_mfu']:.0%} | {c['compile_s']:.0f} |")
  return "\n".join(lines)


if __name__ == "__main__":
  sys.exit(main())
