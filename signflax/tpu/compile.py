"""``signflax compile``: compile the train step for a TPU topology from any host.

    signflax compile --config lm/gpt2_124m --topology v5e:2x2 \\
        --config.train.global_batch_size=64 --config.train.grad_accum=1 [--json]
    signflax compile --config lm/llama_1b --topology v5e:16x16 --slices 2
    signflax compile --config lm/gpt2_124m --topology v5e:4x4 --search [--max-compiles 6]

Builds the run with ``signflax.train.setup`` on the compile-only devices libtpu
describes for TOPO (``v5e:2x2``, ``v5e:16x16``, ``v6e:16x16``, ``v5p:2x2x2``, ...;
``--slices N`` for N slices over DCN), compiles the train and eval steps with the
TPU compiler and prints the chips, the mesh, HBM per chip against capacity, step
FLOPs, the collectives by mesh axis, and an *estimated* step time, tokens/s and
MFU (``signflax.tpu.plan``). No TPU is needed, none is used.

``--search`` compiles candidate meshes and remat policies at the config's global
batch, picks the fastest that fits (printed as ``--config.`` overrides) and finds
the largest per-chip batch that fits by bisection.

Exit codes: 0 fits; 3 does not fit (one line: GiB needed, GiB there, the knobs
that help); 2 bad input (unknown topology, a mesh that does not divide the
chips, a bad config field, libtpu missing). ``--cache FILE`` keeps reports in a
JSON file keyed by config, topology and versions, so a repeated compile is free.
"""

from __future__ import annotations

import argparse
import json
import sys

from signflax import outcomes
from signflax.config_io import load_config_file, apply_override, split_overrides


class _Parser(argparse.ArgumentParser):
  def error(self, message):
    raise outcomes.UsageError(message)


def _parser() -> argparse.ArgumentParser:
  p = _Parser(prog="signflax compile", description=__doc__.split("\n")[0])
  p.add_argument("--config", default="lm/tiny", help="a config file or packaged name")
  p.add_argument("--topology", required=True, help="e.g. v5e:2x2, v5e:16x16, v6e:16x16, "
                 "v5p:2x2x2")
  p.add_argument("--slices", type=int, default=1, help="slices over DCN (multislice)")
  p.add_argument("--json", action="store_true", help="one JSON object on stdout")
  p.add_argument("--search", action="store_true", help="search meshes and remat policies")
  p.add_argument("--max-compiles", type=int, default=6, help="--search: compile budget")
  p.add_argument("--no-eval", action="store_true", help="compile the train step only")
  p.add_argument("--cache", default=None, help="a JSON file of compile reports to reuse")
  return p


def _gib(x) -> str:
  return "-" if x is None else f"{x:.2f} GiB"


def format_report(r: dict) -> str:
  slices = "" if r["slices"] == 1 else f", {r['slices']} slices"
  lines = [f"chips        {r['chips']} x {r['device_kind']} ({r['chip']}, {r['topology']}{slices})",
           f"mesh         {r['mesh']}  remat={r['remat']}  attention={r['attention']}",
           f"batch        {r['global_batch_size']} x {r['seq_len']} tokens "
           f"({r['per_chip_batch']:g} sequences per chip, grad_accum {r['grad_accum']})"]
  if r["fits"]:
    m = r["hbm_breakdown_gib"]
    lines.append(f"HBM per chip {_gib(m['total'])} of {_gib(r['hbm_capacity_gib'])}: arguments "
                 f"{m['arguments']:.2f}, temporaries {m['temporaries']:.2f}, outputs "
                 f"{m['outputs']:.2f} (aliased {m['aliased']:.2f}), code "
                 f"{m['generated_code']:.2f}")
  else:
    lines.append(f"HBM per chip needs {_gib(r['hbm_per_chip_gib'])}, the compiler allows "
                 f"{_gib(r.get('hbm_limit_gib'))} -- DOES NOT FIT")
  lines.append(f"step FLOPs   {r['flops_per_step']:.4g} (model: {r['flops_per_token']:.4g} per "
               f"token, all chips)")
  if r["fits"]:
    if r.get("compiler_flops_check"):
      lines.append(f"             compiler/model FLOPs with each loop counted once: "
                   f"{r['compiler_flops_check']:.3f} (loop trips {r['loop_trip_counts']})")
    lines.append("collectives  (bytes sent per chip per step, estimated time)")
    for c in r["collectives"] or [{"kind": "none", "axes": "", "bytes": 0, "est_s": 0,
                                   "link": "", "runs": 0}]:
      lines.append(f"  {c['kind']:<19} {c['axes']:<14} {c['bytes'] / 2**20:10.1f} MiB "
                   f"x{c['runs']:<4} {c['link']:<3} {c['est_s'] * 1e3:8.2f} ms")
    lines.append(f"estimated    step {r['est_step_s'] * 1e3:.1f} ms ({r['est_bound']}-bound: "
                 f"compute {r['est_compute_s'] * 1e3:.1f}, HBM {r['est_hbm_s'] * 1e3:.1f}, "
                 f"collectives {r['est_collective_s'] * 1e3:.1f} ms), "
                 f"{r['est_tokens_per_s']:,.0f} tokens/s, MFU {r['est_mfu']:.1%}")
    lines.append(f"             ({r['assumptions']})")
  lines.append(f"compile      {r['compile_s']:.1f} s train step"
               + (f", {r['eval_compile_s']:.1f} s eval step" if "eval_compile_s" in r else "")
               + (" (cached)" if r.get("cached") else ""))
  return "\n".join(lines)


def format_search(s: dict) -> str:
  lines = [f"search over {s['chips']} {s['chip']} chips ({s['topology']}), global batch "
           f"{s['global_batch_size']}:",
           f"  {'mesh (data,fsdp,tensor)':<24} {'remat':<6} {'paper GiB':>9} {'HBM GiB':>8} "
           f"{'fits':>5} {'est step':>9} {'est MFU':>8}"]
  for c in s["candidates"]:
    mesh = ",".join(str(v) for v in c["mesh"].values())
    if "fits" in c:
      lines.append(f"  {mesh:<24} {c['remat']:<6} {c['paper_hbm_gib']:9.2f} "
                   f"{c['hbm_per_chip_gib']:8.2f} {str(c['fits']):>5} "
                   + (f"{c['est_step_s'] * 1e3:7.1f}ms {c['est_mfu']:8.1%}" if c["fits"] else ""))
    else:
      lines.append(f"  {mesh:<24} {c['remat']:<6} {c['paper_hbm_gib']:9.2f} {'-':>8} "
                   f"{'':>5} skipped: {c['skipped']}")
  if s["best"] is None:
    lines.append("nothing fits")
  else:
    lines.append("fastest that fits (estimated): " + " ".join(s["overrides"]))
    lb = s["largest_per_chip_batch"]
    lines.append(f"largest per-chip batch that fits with it: {lb['per_chip_batch']}"
                 f"{' (or more: probing stopped)' if lb['capped'] else ''}; probes "
                 + ", ".join(f"{b}:{'fits' if ok else 'no'}" for b, ok in lb["probes"]))
  return "\n".join(lines)


def main(argv) -> int:
  overrides, rest = split_overrides(argv)
  args = _parser().parse_args(rest)
  try:
    config = load_config_file(args.config)
    for dotted, text in overrides:
      apply_override(config, dotted, text)
  except (ValueError, TypeError) as e:
    raise outcomes.BadInput(outcomes.one_line(e)) from None
  from signflax.tpu import chips, plan  # jax is imported from here on
  chips.parse_topology(args.topology)
  cache = plan.Cache(args.cache)
  log = (lambda m: print(m, file=sys.stderr, flush=True))
  if args.search:
    result = plan.search(config, args.topology, slices=args.slices, cache=cache,
                         max_compiles=args.max_compiles, log=log)
    print(json.dumps(result, default=float) if args.json else format_search(result))
    if result["best"] is None:
      raise outcomes.DoesNotFit(
          f"no candidate mesh or remat fits a global batch of {result['global_batch_size']} "
          f"on {args.topology}; try a smaller train.global_batch_size, a larger "
          f"train.grad_accum or train.loss_chunk_len")
    return 0
  report = cache.report(config, args.topology, args.slices, with_eval=not args.no_eval)
  print(json.dumps(report, default=float) if args.json else format_report(report))
  if not report["fits"]:
    raise outcomes.DoesNotFit(plan.no_fit_message(report))
  return 0

