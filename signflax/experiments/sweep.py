"""``signflax sweep``: a grid of ordinary trainer runs, one directory per point.

    signflax sweep --config sweeps/demo_curves --workdir DIR
    signflax sweep --config ... --workdir DIR --list        # one command line per point
    signflax sweep --config ... --workdir DIR --point 3     # run point 3 only (SLURM arrays)

A sweep config is a base trainer config plus axes::

    config.base = base_config("lm/tiny.py")             # any train config
    config.product = [("optimizer.name", ["sign_sgd", "sgd"]),
                      ("train.global_batch_size", [8, 16, 32])]
    config.zip = [("gamma", [1e-4, 3e-4]), ("train.seed", [0, 1])]   # optional
    config.gamma_rules = {"sign_sgd": "sqrt", "sgd": "linear"}

Points are the product of the ``product`` axes crossed with the ``zip`` axes
(equal lengths, taken together). Axis fields are dotted paths into the base
config, or one of two pseudo-fields:

* ``gamma``: the learning rate in the theory's coordinates. The point's
  ``optimizer.learning_rate`` is ``signflax.optim.batch_scaled_learning_rate(
  scale * gamma, B, gamma_base_batch_size, rule)`` with the ``rule`` (or
  ``(rule, scale)``) of its optimizer in ``gamma_rules``: ``sqrt`` gives
  eta = gamma * sqrt(B) (sign methods, Adam), ``linear`` gives eta = gamma * B
  (SGD) for the default base batch 1 and scale 1. A per-family scale lets one
  gamma axis of multipliers serve optimizers whose good rates differ by 100x.
* ``tokens``: a token budget; ``train.steps = tokens // (B * seq_len)``.

Each point runs ``signflax.train.trainer.run`` in ``DIR/runs/<id>/`` (its own
``metrics.jsonl``, TensorBoard events with the point's hparams and config text,
checkpoints). ``DIR/sweep.jsonl`` holds one record per finished point: values,
status (``done``, ``diverged``, ``failed``), reason, final train/eval loss,
tokens, wall time, compile count and seconds. Running the command again skips
``done`` and ``diverged`` points, resumes an interrupted one from its
checkpoint and retries ``failed`` ones.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import fcntl
import itertools
import json
import math
import os
import pathlib
import shlex
import sys
import time
from typing import Any, NamedTuple, Sequence

import ml_collections
from etils import epath

from signflax import config_io, metric_writers, outcomes, storage

PSEUDO_FIELDS = ("gamma", "tokens")
# compilation_cache: a directory shared by several sweeps (default DIR/.jax_cache)
SWEEP_FIELDS = ("base", "product", "zip", "gamma_rules", "gamma_base_batch_size",
                "compilation_cache")
RULES = ("sqrt", "linear")
FINAL = ("done", "diverged")  # statuses a rerun does not repeat ("failed" is retried)


def base_config(path: str) -> ml_collections.ConfigDict:
  """``get_config()`` of a packaged config (``"lm/tiny.py"`` or ``"lm/tiny"``) or a file."""
  return config_io.load_config_file(path)


class Point(NamedTuple):
  index: int
  id: str               # readable and unique: "003-name=sgd,global_batch_size=16,gamma=0.001"
  values: dict          # axis field -> value, in axis order
  config: Any           # the full trainer config of this point


# ----------------------------------------------------------------------------- expansion


def _axes(config, group: str) -> list[tuple[str, list]]:
  axes = config.get(group) or []
  out = []
  for i, axis in enumerate(axes):
    if not (isinstance(axis, (tuple, list)) and len(axis) == 2 and isinstance(axis[0], str)):
      raise ValueError(f"config.{group}[{i}]: must be a (dotted field, [values]) pair, got "
                       f"{axis!r}")
    field, values = axis
    if isinstance(values, (str, bytes)) or not isinstance(values, (tuple, list)):
      raise ValueError(f"config.{group}[{field}]: values must be a list, got {values!r}")
    if not values:
      raise ValueError(f"config.{group}[{field}]: empty axis (give at least one value)")
    out.append((field, list(values)))
  return out


def _set_field(config, group: str, field: str, value) -> None:
  """``config.<field> = value``, type-checked like a command-line override."""
  config_io.set_field(config, field, value, where=f"config.{group}[{field}]")


def _short(field: str) -> str:
  return field.rsplit(".", 1)[-1]


def _fmt(value) -> str:
  return f"{value:g}" if isinstance(value, float) else str(value)


def _point_config(config, values: dict, groups: dict):
  """The base config with ``values`` applied (pseudo-fields resolved last)."""
  from signflax.optim import batch_scaled_learning_rate  # noqa: PLC0415 - keeps import light
  point = copy.deepcopy(config.base)
  for field, value in values.items():
    if field not in PSEUDO_FIELDS:
      _set_field(point, groups[field], field, value)
  t = point.train
  if "tokens" in values:
    tokens = values["tokens"]
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens <= 0:
      raise ValueError(f"config.{groups['tokens']}[tokens]: must be a positive integer, got "
                       f"{tokens!r}")
    t.steps = max(1, tokens // (t.global_batch_size * t.seq_len))
  if "gamma" in values:
    gamma, name = values["gamma"], point.optimizer.name
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or gamma <= 0:
      raise ValueError(f"config.{groups['gamma']}[gamma]: must be a number > 0, got {gamma!r}")
    rules = dict(config.get("gamma_rules") or {})
    if name not in rules:
      raise ValueError(f"config.gamma_rules: no learning-rate rule for optimizer {name!r}; "
                       f"rules given for: {', '.join(sorted(rules)) or 'none'}")
    rule = rules[name]
    rule, scale = (rule, 1.0) if isinstance(rule, str) else tuple(rule)
    if rule not in RULES or isinstance(scale, bool) or not isinstance(scale, (int, float)):
      raise ValueError(f"config.gamma_rules[{name}]: {rules[name]!r} must be one of "
                       f"{', '.join(RULES)} or a (rule, scale) pair")
    point.optimizer.learning_rate = float(batch_scaled_learning_rate(
        float(scale * gamma), t.global_batch_size, int(config.get("gamma_base_batch_size", 1)),
        rule))
  return point


def expand(config) -> list[Point]:
  """All points of a sweep config; raises a one-line ValueError on a bad config."""
  if "base" not in config or not isinstance(config.base, ml_collections.ConfigDict):
    raise ValueError("config.base: missing; a sweep config needs a base trainer config "
                     "(e.g. base_config('lm/tiny.py'))")
  unknown = sorted(set(config.keys()) - set(SWEEP_FIELDS))
  if unknown:
    raise ValueError(f"config: unknown field(s) {', '.join(unknown)}; fields: "
                     f"{', '.join(SWEEP_FIELDS)}")
  product, zipped = _axes(config, "product"), _axes(config, "zip")
  if not product and not zipped:
    raise ValueError("config.product: no axes; give config.product and/or config.zip")
  if len({len(v) for _, v in zipped}) > 1:
    raise ValueError("config.zip: axes of unequal lengths "
                     + ", ".join(f"{f}={len(v)}" for f, v in zipped))
  groups = {f: "product" for f, _ in product} | {f: "zip" for f, _ in zipped}
  if len(groups) < len(product) + len(zipped):
    raise ValueError("config.product/zip: a field appears on two axes")
  zip_rows = list(zip(*[v for _, v in zipped])) if zipped else [()]
  points = []
  for index, (prod, zrow) in enumerate(itertools.product(
      itertools.product(*[v for _, v in product]), zip_rows)):
    values = dict(zip([f for f, _ in product], prod)) | dict(zip([f for f, _ in zipped], zrow))
    name = ",".join(f"{_short(f)}={_fmt(v)}" for f, v in values.items())
    points.append(Point(index, f"{index:03d}-{name}".replace("/", "_"), values,
                        _point_config(config, values, groups)))
  return points


def validate(config) -> None:
  """Expands the sweep and validates every point's trainer config (no device work)."""
  from signflax.train import trainer  # noqa: PLC0415
  for point in expand(config):
    try:
      trainer.validate(point.config)
    except ValueError as e:
      raise ValueError(f"point {point.index} ({point.id}): {e}") from None


# ----------------------------------------------------------------------------- records


def _read_json(path: pathlib.Path):
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


def _atomic_write(path: epath.Path, text: str) -> None:
  storage.write_text(path, text)


def read_metrics(run_dir: storage.PathLike) -> list[dict]:
  """``metrics.jsonl`` records by step (a step logged twice after a resume: the later wins)."""
  try:
    records = metric_writers.read_records(storage.path(run_dir) / metric_writers.METRICS_FILE)
  except OSError:
    return []
  by_step: dict[int, dict] = {}
  for record in records:
    by_step.setdefault(record["step"], {}).update(record)
  return [by_step[s] for s in sorted(by_step)]


def _finite(x) -> bool:
  return isinstance(x, (int, float)) and math.isfinite(x)


def summarize_run(run_dir: pathlib.Path) -> dict:
  """Final train/eval loss and last step of a run directory's metrics."""
  records = read_metrics(run_dir)
  train = [r for r in records if "train_loss" in r]
  evals = [r for r in records if "eval_loss" in r]
  return {"last_step": train[-1]["step"] if train else 0,
          "final_train_loss": train[-1]["train_loss"] if train else None,
          "final_eval_loss": evals[-1]["eval_loss"] if evals else None}


def load_records(workdir: pathlib.Path) -> dict[str, dict]:
  """Point id -> its record (from the per-point ``sweep_record.json`` files)."""
  records = {}
  for path in sorted((workdir / "runs").glob("*/sweep_record.json")):
    record = _read_json(path)
    if record:
      records[record["id"]] = record
  return records


@contextlib.contextmanager
def _locked(workdir: epath.Path):
  """An exclusive lock among the sweep's processes on a local disk. Object storage has
  none: concurrent ``--point`` jobs there may each rebuild sweep.jsonl without the other's
  newest record; the per-point records stay complete and the next rebuild has both."""
  if storage.is_remote(workdir):
    yield
    return
  with open(workdir / ".sweep.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    yield


def _write_sweep_jsonl(workdir: pathlib.Path, points: Sequence[Point]) -> None:
  """``sweep.jsonl``: one line per recorded point, in grid order (rebuilt under a lock so
  concurrent ``--point`` jobs never lose each other's records)."""
  with _locked(workdir):
    records = load_records(workdir)
    lines = [json.dumps(records[p.id]) for p in points if p.id in records]
    _atomic_write(workdir / "sweep.jsonl", "".join(line + "\n" for line in lines))


# ----------------------------------------------------------------------------- compiles


class CompileCounter:
  """Counts XLA compilations (persistent-cache hits apart) from ``jax.monitoring`` events.

  JAX records ``/jax/core/compile/backend_compile_duration`` (with the function
  name) around every backend compile request, cache hits included; a
  ``/jax/compilation_cache/cache_hits`` event inside the request marks a hit.
  """

  _BACKEND = "/jax/core/compile/backend_compile_duration"
  _HIT = "/jax/compilation_cache/cache_hits"
  _instance = None

  def __init__(self):
    self.compiles: list[tuple[str, float]] = []   # (function name, seconds)
    self.hits: list[str] = []
    self._pending_hit = False

  @classmethod
  def get(cls) -> "CompileCounter":
    """The process's counter (listeners cannot be removed, so register them once)."""
    if cls._instance is None:
      from jax import monitoring  # noqa: PLC0415
      cls._instance = counter = cls()
      monitoring.register_event_listener(counter._on_event)
      monitoring.register_event_duration_secs_listener(counter._on_duration)
    return cls._instance

  def _on_event(self, event: str, **kwargs) -> None:
    if event == self._HIT:
      self._pending_hit = True

  def _on_duration(self, event: str, duration: float, **kwargs) -> None:
    if event != self._BACKEND:
      return
    name = str(kwargs.get("fun_name", "?"))
    if self._pending_hit:
      self.hits.append(name)
    else:
      self.compiles.append((name, duration))
    self._pending_hit = False

  def mark(self) -> tuple[int, int]:
    return len(self.compiles), len(self.hits)

  def since(self, mark: tuple[int, int]) -> dict:
    compiles = self.compiles[mark[0]:]
    return {"compiles": len(compiles),
            "compile_s": round(sum(s for _, s in compiles), 3),
            "train_step_compiles": sum("train_step" in n for n, _ in compiles),
            "state_init_compiles": sum("_init_with" in n for n, _ in compiles),
            "cache_hits": len(self.hits) - mark[1],
            "compiled": sorted({n for n, _ in compiles})}


# ----------------------------------------------------------------------------- running


def _run_point(point: Point, run_dir: pathlib.Path, counter: CompileCounter) -> dict:
  """Runs one point to completion; returns its record (never raises for a failed run)."""
  from signflax import tensorboard_extras  # noqa: PLC0415
  from signflax.train import trainer  # noqa: PLC0415
  t = point.config.train
  run_dir.mkdir(parents=True, exist_ok=True)
  tensorboard_extras.write_hparams(run_dir / metric_writers.TB_DIR, point.values,
                                  point.config)
  mark, start, cpu = counter.mark(), time.monotonic(), time.process_time()
  try:
    outcome, reason = trainer.run(point.config, str(run_dir)), ""
  except outcomes.Diverged as e:
    outcome, reason = e, outcomes.one_line(e)[:500]
  except Exception as e:  # noqa: BLE001 - a failing point is recorded; the sweep goes on
    outcome, reason = e, f"{type(e).__name__}: {outcomes.one_line(e)}"[:500]
  summary = summarize_run(run_dir)
  if outcome is outcomes.Finished.DONE and summary["last_step"] >= t.steps:
    status = "done"
  elif isinstance(outcome, outcomes.Finished):  # preempted or interrupted, or nothing logged
    status = "interrupted"
    reason = f"stopped at step {summary['last_step']} of {t.steps} ({outcome.value})"
  elif isinstance(outcome, outcomes.Diverged):
    status = "diverged"
    reason = (f"non-finite loss after step {summary['last_step']} (last finite train loss "
              f"{summary['final_train_loss']})")
  else:  # a failed save, a transient read error, a bug: retried on a rerun
    status = "failed"
  return {"index": point.index, "id": point.id, "values": point.values,
          "learning_rate": point.config.optimizer.learning_rate,
          "optimizer": point.config.optimizer.name,
          "global_batch_size": t.global_batch_size, "seq_len": t.seq_len, "steps": t.steps,
          "status": status, "reason": reason,
          "tokens": summary["last_step"] * t.global_batch_size * t.seq_len,
          "final_train_loss": summary["final_train_loss"],
          "final_eval_loss": summary["final_eval_loss"],
          "wall_time_s": round(time.monotonic() - start, 2),
          # CPU seconds of this process: on a shared machine, the cost a quiet one would see
          "cpu_time_s": round(time.process_time() - cpu, 2), **counter.since(mark)}


def point_command(config_path: str, workdir: str, index: int, overrides: Sequence[str]) -> str:
  return shlex.join(["signflax", "sweep", "--config", config_path, "--workdir", workdir,
                     *overrides, "--point", str(index)])


def run(config, workdir: str, *, point: int | None = None) -> int:
  """Runs every point (or only ``point``) not finished yet; returns the exit code.

  0: every selected point is recorded (done, diverged or failed: see
  ``sweep.jsonl``); 1 a point was interrupted (rerun the command to resume).
  """
  storage.configure_clients()
  workdir = storage.path(workdir)
  points = expand(config)
  if point is not None and not 0 <= point < len(points):
    raise outcomes.UsageError(f"--point: {point} is outside 0..{len(points) - 1}")
  workdir.mkdir(parents=True, exist_ok=True)
  _atomic_write(workdir / "sweep_config.json", json.dumps(
      {"points": [{"index": p.index, "id": p.id, "values": p.values} for p in points]},
      indent=1) + "\n")
  # Every point compiles into the sweep's cache (config.train.compilation_cache_dir):
  # a rerun, a --point job or another sweep naming the same cache loads instead.
  cache = os.fspath(storage.path(config.get("compilation_cache") or workdir / ".jax_cache"))
  for p in points:
    p.config.train.compilation_cache_dir = cache
  counter = CompileCounter.get()
  selected = points if point is None else [points[point]]
  done = load_records(workdir)
  mark, start, interrupted = counter.mark(), time.monotonic(), False
  for n, p in enumerate(selected, 1):
    prefix = f"[sweep {p.index + 1}/{len(points)}]"
    if done.get(p.id, {}).get("status") in FINAL:
      print(f"{prefix} {p.id}: {done[p.id]['status']} earlier, skipped", file=sys.stderr,
            flush=True)
      continue
    print(f"{prefix} {p.id}: running (lr {p.config.optimizer.learning_rate:.3g}, "
          f"{p.config.train.steps} steps)", file=sys.stderr, flush=True)
    run_dir = workdir / "runs" / p.id
    record = _run_point(p, run_dir, counter)
    if record["status"] == "interrupted":
      print(f"{prefix} {p.id}: {record['reason']}; rerun the command to resume",
            file=sys.stderr, flush=True)
      interrupted = True
      break
    _atomic_write(run_dir / "sweep_record.json", json.dumps(record) + "\n")
    _write_sweep_jsonl(workdir, points)
    loss = record["final_eval_loss"]
    print(f"{prefix} {p.id}: {record['status']} in {record['wall_time_s']:.0f}s"
          + (f", eval loss {loss:.4f}" if _finite(loss) else "")
          + (f" ({record['reason']})" if record["reason"] else "")
          + f" | {record['compiles']} compiles ({record['train_step_compiles']} train step) "
            f"{record['compile_s']:.1f}s", file=sys.stderr, flush=True)
  total = counter.since(mark)
  total["wall_time_s"] = round(time.monotonic() - start, 2)
  statuses = {}
  for r in load_records(workdir).values():
    statuses[r["status"]] = statuses.get(r["status"], 0) + 1
  print(f"sweep: {len(points)} points, recorded {statuses or 'none'} | this invocation: "
        f"{total['compiles']} compiles ({total['train_step_compiles']} of the train step), "
        f"{total['compile_s']:.1f}s compiling, {total['cache_hits']} cache hits, "
        f"{total['wall_time_s']:.0f}s | {workdir / 'sweep.jsonl'}", file=sys.stderr, flush=True)
  if point is None:
    _atomic_write(workdir / "sweep_summary.json", json.dumps(
        {"points": len(points), "statuses": statuses, **total}, indent=1) + "\n")
  return 1 if interrupted else 0


def main(argv: Sequence[str]) -> int:
  """``signflax sweep --config FILE --workdir DIR [--list | --point i] [--config.x=v ...]``."""
  parser = argparse.ArgumentParser(prog="signflax sweep", description=__doc__.split("\n")[0])
  parser.add_argument("--list", action="store_true",
                      help="print one command line per point and exit")
  parser.add_argument("--point", type=int, default=None, help="run only point i (0-based)")
  try:
    overrides, rest = config_io.split_overrides(argv)
    args, rest = parser.parse_known_args(rest)
    override_args = [f"--config.{k}={v}" for k, v in overrides]
    config, workdir = config_io.parse_config_args(rest + override_args,
                                            "sweeps/demo_curves")
    if workdir is None:
      raise config_io.UsageError("--workdir: required (the sweep directory)")
    if args.list:
      points = expand(config)
      config_path = next((v for k, v in zip(rest, rest[1:]) if k == "--config"),
                         "sweeps/demo_curves")
      for p in points:
        print(f"{p.index}\t{p.id}\t{point_command(config_path, workdir, p.index, override_args)}")
      return 0
    validate(config)
  except outcomes.SignflaxError:
    raise
  except ValueError as e:
    raise outcomes.BadInput(outcomes.one_line(e)) from e
  return run(config, workdir, point=args.point)
