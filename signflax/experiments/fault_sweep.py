"""``signflax fault-sweep``: training with faulty replicas, mean vs majority vote, and its report.

    signflax fault-sweep --workdir runs/faults                 # the sweep, then the report
    signflax fault-sweep --workdir runs/faults --report-only   # the report of what has run
    signflax fault-sweep --workdir DIR --config.base.train.steps=120   # any sweep field

Runs the sweep config (default ``sweeps/faults``: each ``train.gradient_exchange`` x
each ``train.faults.kind`` x 0..4 faulty replicas on data = 8) through ``signflax
sweep`` (one trainer run per point under ``DIR/runs``; a rerun resumes), then
writes ``DIR/faults_report.json``, ``DIR/faults_report.md`` (the table) and
``DIR/loss_vs_faulty_fraction.png``. Per point: the final eval loss, its
difference to the clean run of the same exchange, and the steps it took to reach
the clean run's train loss at half its steps (``None``: never within the run). A
run whose loss became non-finite is reported as diverged.

Without ``XLA_FLAGS``/``JAX_PLATFORMS`` set, the command forces 8 CPU devices.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import sys
from typing import Sequence

from signflax import config_io
from signflax.experiments import sweep
from signflax.outcomes import BadInput, UsageError, one_line
from signflax.train import faults

DEFAULT_CONFIG = "sweeps/faults"
CLEAN = "clean"


def _force_cpu_devices(count: int = 8) -> None:
  """8 CPU devices unless the caller chose a platform or device count (before JAX starts)."""
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


def _finite(x) -> bool:
  return isinstance(x, (int, float)) and math.isfinite(x)


def steps_to_reach(curve: Sequence[tuple[int, float]], target: float) -> int | None:
  """The first logged step whose train loss is <= ``target`` (None: never)."""
  return next((step for step, loss in curve if _finite(loss) and loss <= target), None)


def _curve(run_dir: pathlib.Path) -> list[tuple[int, float]]:
  return [(r["step"], r["train_loss"]) for r in sweep.read_metrics(run_dir)
          if "train_loss" in r]


def report(config, workdir: str | pathlib.Path) -> dict:
  """The report of the sweep in ``workdir``: one row per recorded point, clean runs first."""
  workdir = pathlib.Path(workdir)
  records = sweep.load_records(workdir)
  points = sweep.expand(config)
  rows, clean = [], {}
  for p in points:
    record = records.get(p.id)
    if record is None:
      continue
    exchange, kind = p.config.train.gradient_exchange, p.config.train.faults.kind
    count = len(faults.faulty_indices(p.config.train.faults.replicas))
    rows.append(dict(exchange=exchange, kind=CLEAN if count == 0 else kind, faulty=count,
                     faulty_fraction=count / p.config.mesh.data, status=record["status"],
                     final_eval_loss=record["final_eval_loss"],
                     final_train_loss=record["final_train_loss"], steps=p.config.train.steps,
                     curve=_curve(workdir / "runs" / p.id), id=p.id))
    if count == 0:
      clean[exchange] = rows[-1]
  # Under the vote, -s g sends the votes of -g: `scaled` is `sign_flip`, bit for bit.
  if not any(r["exchange"] == "sign_vote" and r["kind"] == "scaled" for r in rows):
    rows += [dict(r, kind="scaled", same_as="sign_flip") for r in list(rows)
             if r["exchange"] == "sign_vote" and r["kind"] == "sign_flip"]
  for row in rows:
    base = clean.get(row["exchange"])
    row["eval_loss_vs_clean"] = None
    row["steps_to_clean_half"] = None
    if base is None:
      continue
    loss, ref = row["final_eval_loss"], base["final_eval_loss"]
    if row["status"] == "done" and _finite(loss) and _finite(ref):
      row["eval_loss_vs_clean"] = loss - ref
    half = [l for s, l in base["curve"] if s <= base["steps"] // 2]
    if half:
      row["clean_half_loss"] = half[-1]
      row["steps_to_clean_half"] = steps_to_reach(row["curve"], half[-1])
  return {"rows": rows, "clean": {k: v["final_eval_loss"] for k, v in clean.items()}}


def _cell(x, fmt="{:.4f}") -> str:
  if x is None:
    return "never"
  return fmt.format(x) if _finite(x) else str(x)


def markdown(result: dict) -> str:
  lines = ["| exchange | attack | faulty | final eval loss | vs clean | final train loss | "
           "steps to clean@half |", "|---|---|---:|---:|---:|---:|---:|"]
  for r in result["rows"]:
    loss = (_cell(r["final_eval_loss"]) if r["status"] == "done"
            else f"{r['status']}")
    delta = "" if r["eval_loss_vs_clean"] is None else f"{r['eval_loss_vs_clean']:+.4f}"
    steps = _cell(r["steps_to_clean_half"], "{:d}")
    train = _cell(r["final_train_loss"]) if r["final_train_loss"] is not None else ""
    kind = r["kind"] + (f" (= {r['same_as']})" if r.get("same_as") else "")
    lines.append(f"| {r['exchange']} | {kind} | {r['faulty']}/8 | {loss} | {delta} | "
                 f"{train} | {steps} |")
  return "\n".join(lines) + "\n"


def plot(result: dict, path: pathlib.Path) -> None:
  """Final eval loss vs faulty fraction, one line per (exchange, attack), the clean run at 0;
  left the whole range (log scale, x = diverged, drawn at the top), right the close-up."""
  from signflax.experiments.fits import _plt  # noqa: PLC0415
  plt = _plt()
  rows = [r for r in result["rows"] if not r.get("same_as")]
  ok = lambda r: r["status"] == "done" and _finite(r["final_eval_loss"])
  finite = [r["final_eval_loss"] for r in rows if ok(r)]
  ceiling = max(finite) * 1.2 if finite else 10.0
  clean = [r["final_eval_loss"] for r in rows if r["kind"] == CLEAN and ok(r)]
  fig, axes = plt.subplots(1, 2, figsize=(13, 5))
  kinds = sorted({r["kind"] for r in rows} - {CLEAN})
  for exchange, style in (("mean", "--"), ("sign_vote", "-")):
    base = [r for r in rows if r["exchange"] == exchange and r["kind"] == CLEAN]
    for i, kind in enumerate(kinds):
      line = sorted(base + [r for r in rows if r["exchange"] == exchange and r["kind"] == kind],
                    key=lambda r: r["faulty"])
      if len(line) <= len(base):
        continue
      xs = [r["faulty_fraction"] for r in line]
      ys = [r["final_eval_loss"] if ok(r) else ceiling for r in line]
      for ax in axes:
        ax.plot(xs, ys, style, color=f"C{i}", marker="o" if exchange == "sign_vote" else "s",
                label=f"{exchange} / {kind}")
        bad = [(x, y) for x, y, r in zip(xs, ys, line) if not ok(r)]
        if bad:
          ax.plot(*zip(*bad), "x", color=f"C{i}", markersize=12)
  axes[0].set_yscale("log")
  axes[0].set_title("all runs (log scale; x = diverged, drawn at the top)")
  if clean:
    axes[1].set_ylim(min(finite) - 0.05, min(clean) + 0.6)
  axes[1].set_title("close-up around the clean runs")
  for ax in axes:
    ax.set_xlabel("faulty fraction of the data-parallel replicas")
    ax.set_ylabel("final eval loss (nats/token)")
  axes[1].legend(fontsize=7, ncol=2, loc="upper left")
  fig.suptitle("mean all-reduce (dashed, squares) vs 1-bit majority vote (solid, circles)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_report(config, workdir: str | pathlib.Path) -> dict:
  workdir = pathlib.Path(workdir)
  result = report(config, workdir)
  (workdir / "faults_report.json").write_text(json.dumps(result, indent=1) + "\n")
  table = markdown(result)
  (workdir / "faults_report.md").write_text(table)
  if result["rows"]:
    plot(result, workdir / "loss_vs_faulty_fraction.png")
  print(table, end="")
  return result


def main(argv: Sequence[str]) -> int:
  """``signflax fault-sweep --workdir DIR [--config NAME] [--report-only] [--config.x=v ...]``."""
  parser = argparse.ArgumentParser(prog="signflax fault-sweep",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--report-only", action="store_true",
                      help="write the report of the runs recorded so far; run nothing")
  overrides, rest = config_io.split_overrides(argv)
  args, rest = parser.parse_known_args(rest)
  config, workdir = config_io.parse_config_args(
      rest + [f"--config.{k}={v}" for k, v in overrides], DEFAULT_CONFIG)
  if workdir is None:
    raise UsageError("--workdir: required (the sweep directory)")
  _force_cpu_devices()  # before the first device use
  try:
    sweep.validate(config)
  except ValueError as e:
    raise BadInput(one_line(e)) from None
  if not args.report_only:
    code = sweep.run(config, workdir)
    if code:
      return code
  result = write_report(config, workdir)
  print(f"fault-sweep: {len(result['rows'])} runs reported | "
        f"{pathlib.Path(workdir) / 'faults_report.md'}", file=sys.stderr)
  return 0
