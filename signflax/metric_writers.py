"""Metric sinks: ``metrics.jsonl``, TensorBoard event files and a plain progress bar.

Imports neither flax nor the trainer, so the linreg experiments, sweeps and fits
share it:

    writer = MetricWriter(workdir)         # workdir/metrics.jsonl + workdir/tb/
    writer.restart(start_step)             # on every start: repair the log, mark TensorBoard
    writer.write(step, {"loss": 2.3, "num_params": 1_000_000})
    writer.close()

``restart`` makes a run that starts again at step ``s`` (a resume, or a start
over after a kill before the first checkpoint) log each step once: the log's
torn last line (a crash mid-write) is cut, records past ``s`` and earlier start
records at ``s`` are dropped, and TensorBoard gets a ``SessionLog.START`` at
``s``, which makes it purge the killed run's points from ``s`` on.
"""

from __future__ import annotations

import json
import math
import numbers
import pathlib
import re
import shutil
import sys
import tempfile
import time
from typing import Mapping, TextIO

from signflax import storage
from signflax.tensorboard_extras import tensorboard_tag

# The key that marks a start record (model size, compile time, first eval); a
# restart at the same step replaces it.
START_KEY = "num_params"

METRICS_FILE = "metrics.jsonl"   # one JSON record per line, under the workdir
TB_DIR = "tb"                    # TensorBoard event files, under the workdir


def _json_value(value):
  """Integers stay integers; non-finite floats become strings ("nan", "inf")."""
  if value is None or isinstance(value, bool):
    return None if value is None else int(value)
  if isinstance(value, numbers.Integral):
    return int(value)
  value = float(value)
  return value if math.isfinite(value) else str(value)


def _start_after_earlier_sessions(logdir) -> None:
  """Waits (under a second) until the clock is past every event file already in ``logdir``.

  TensorBoard reads a run's files in name order, and tensorboard names them
  ``events.out.tfevents.<unix seconds>.<host>.<pid>.<n>``: two sessions started in the
  same second sort by pid and an unpadded counter as strings ("10" before "9"), so a
  resume's SessionLog.START could be read before the events it is meant to purge. A
  later second than every file already there keeps name order equal to session order.
  """
  directory = storage.path(logdir)
  if not directory.exists():
    return
  matches = (re.match(r"events\.out\.tfevents\.(\d+)\.", p.name)
             for p in directory.glob("events.out.tfevents.*"))
  seconds = [int(match.group(1)) for match in matches if match]
  if seconds:
    wait = max(seconds) + 1 - time.time()
    if wait > 0:
      time.sleep(wait)


class EventWriter:
  """TensorBoard event files written with the ``tensorboard`` package alone (no TensorFlow).

  Stock ``tensorboard --logdir`` reads them. Used by :class:`MetricWriter` and by the
  linreg experiments.

  An object-store ``logdir`` (``gs://``): tensorboard's writer appends to its file,
  which object storage cannot do, so the events go to a local file and every
  ``flush`` (and at most every ``upload_secs`` while writing) uploads it whole. Each
  session writes its own file (TensorBoard's names hold the time and the pid), so no
  upload overwrites another session's events.
  """

  def __init__(self, logdir: str | pathlib.Path, *, flush_secs: int = 10,
               upload_secs: float = 60.0):
    from tensorboard.compat.proto import event_pb2, summary_pb2  # noqa: PLC0415
    from tensorboard.summary.writer.event_file_writer import EventFileWriter  # noqa: PLC0415
    self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
    self._remote = storage.path(logdir) if storage.is_remote(logdir) else None
    self._local = tempfile.mkdtemp(prefix="signflax-events-") if self._remote else None
    self._upload_secs, self._uploaded_at = upload_secs, time.monotonic()
    _start_after_earlier_sessions(logdir)
    self._writer = EventFileWriter(self._local or str(logdir), flush_secs=flush_secs)

  def _add(self, event) -> None:
    self._writer.add_event(event)
    if self._remote and time.monotonic() - self._uploaded_at > self._upload_secs:
      self.flush()

  def _upload(self) -> None:
    storage.upload_dir(self._local, self._remote)
    self._uploaded_at = time.monotonic()

  def scalars(self, step: int, values: Mapping[str, float | None]) -> None:
    """One event at ``step`` holding every non-None value."""
    summary = self._summary_pb2.Summary(value=[
        self._summary_pb2.Summary.Value(tag=k, simple_value=float(v))
        for k, v in values.items() if v is not None and not isinstance(v, str)])
    self._add(self._event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

  def scalar(self, tag: str, value: float, step: int) -> None:
    self.scalars(step, {tag: value})

  def restart(self, step: int) -> None:
    """A SessionLog START at ``step``: TensorBoard drops earlier points at ``step`` and later."""
    self._add(self._event_pb2.Event(
        wall_time=time.time(), step=int(step),
        session_log=self._event_pb2.SessionLog(status=self._event_pb2.SessionLog.START)))

  def flush(self) -> None:
    self._writer.flush()
    if self._remote:
      self._upload()

  def close(self) -> None:
    self._writer.close()
    if self._remote:
      self._upload()
      shutil.rmtree(self._local, ignore_errors=True)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def read_records(path: str | pathlib.Path) -> list[dict]:
  """The complete records of a metrics.jsonl (a torn last line is skipped)."""
  records = []
  for line in storage.path(path).read_text(encoding="utf-8").splitlines():
    try:
      records.append(json.loads(line))
    except ValueError:
      continue
  return records


def repair_log(path: str | pathlib.Path, start_step: int) -> list[dict]:
  """Cuts ``path`` back to what a run starting at ``start_step`` keeps; returns the kept
  records at ``start_step``.

  Kept: complete lines whose step is below ``start_step``, and non-start records
  at ``start_step`` (the step the checkpoint was saved after). The file is
  rewritten (atomically, by rename) only when something is dropped or the last
  line is torn.
  """
  path = storage.path(path)
  if not path.exists():
    return []
  text = path.read_text(encoding="utf-8")
  kept_lines, at_start, changed = [], [], not text.endswith("\n") and bool(text)
  for line in text.splitlines():
    try:
      record = json.loads(line)
      step = int(record["step"])
    except (ValueError, KeyError, TypeError):
      changed = True        # a torn or foreign line
      continue
    if step > start_step or (step == start_step and START_KEY in record):
      changed = True
      continue
    kept_lines.append(line)
    if step == start_step:
      at_start.append(record)
  if changed:
    storage.write_text(path, "".join(line + "\n" for line in kept_lines))
  return at_start


class MetricWriter:
  """Writes scalars to ``workdir/metrics.jsonl`` and TensorBoard events in ``workdir/tb``.

  Only process 0 writes (``enabled``). Integer values are written as JSON integers.

  On a local disk every record is appended and flushed as it comes. On object
  storage (``gs://``), which has no append, metrics.jsonl is rewritten whole at
  each ``flush`` (the trainer flushes at every checkpoint, on a signal and at the
  end) and at most every ``upload_secs`` while writing. A kill loses only records
  after the last flush, which belong to steps after the last checkpoint: the
  resumed run logs them again.
  """

  def __init__(self, workdir: str | pathlib.Path, *, enabled: bool = True,
               upload_secs: float = 60.0):
    self.enabled = enabled
    if not enabled:
      return
    self.workdir = storage.path(workdir)
    self.workdir.mkdir(parents=True, exist_ok=True)
    self._jsonl_path = self.workdir / METRICS_FILE
    self._jsonl = None
    self._remote = storage.is_remote(self.workdir)
    self._lines: list[str] = []   # object storage: the whole log, rewritten on flush
    self._dirty, self._upload_secs, self._uploaded_at = False, upload_secs, time.monotonic()
    self._events = EventWriter(self.workdir / TB_DIR, upload_secs=upload_secs)

  def _file(self) -> TextIO:
    if self._jsonl is None:
      self._jsonl = open(self._jsonl_path, "a", encoding="utf-8")
    return self._jsonl

  def write(self, step: int, metrics: Mapping[str, float | int | None]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: _json_value(v) for k, v in metrics.items()}}
    if self._remote:
      self._lines.append(json.dumps(record) + "\n")
      self._dirty = True
      if time.monotonic() - self._uploaded_at > self._upload_secs:
        self._write_remote_log()
    else:
      self._file().write(json.dumps(record) + "\n")
      self._jsonl.flush()
    # NaN stays NaN here (TensorBoard shows it); tags grouped train/, eval/, optim/, perf/.
    self._events.scalars(step, {tensorboard_tag(k): v for k, v in metrics.items()})

  def restart(self, step: int) -> None:
    """Marks a start at ``step`` (0 for a fresh run); call before the first ``write``.

    Repairs metrics.jsonl (see ``repair_log``) and writes TensorBoard's
    SessionLog.START at ``step``, then re-logs the kept records at ``step`` so
    TensorBoard keeps them.
    """
    if not self.enabled:
      return
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    kept = repair_log(self._jsonl_path, int(step))
    if self._remote:
      self._lines = ([line + "\n" for line in self._jsonl_path.read_text().splitlines()]
                     if self._jsonl_path.exists() else [])
    self._events.restart(int(step))
    for record in kept:
      self._events.scalars(step, {tensorboard_tag(k): v
                                  for k, v in record_scalars(record).items()})

  def _write_remote_log(self) -> None:
    if self._dirty:
      storage.write_text(self._jsonl_path, "".join(self._lines))
      self._dirty = False
    self._uploaded_at = time.monotonic()

  def flush(self) -> None:
    if self.enabled:
      if self._jsonl is not None:
        self._jsonl.flush()
      if self._remote:
        self._write_remote_log()
      self._events.flush()

  def close(self) -> None:
    if self.enabled:
      if self._jsonl is not None:
        self._jsonl.close()
        self._jsonl = None
      if self._remote:
        self._write_remote_log()
      self._events.close()


def record_scalars(record: Mapping) -> dict:
  """A metrics.jsonl record's numbers, keyed by name (``step`` aside)."""
  return {k: v for k, v in record.items()
          if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _human(n: float) -> str:
  for unit in ("", "k", "M", "G"):
    if abs(n) < 1000:
      return f"{n:.1f}{unit}"
    n /= 1000
  return f"{n:.1f}T"


class ProgressBar:
  """``step 120/600 [####......] loss 2.345 | 12.3k tok/s | eta 1m20s`` on stderr.

  Redraws one line on a terminal; elsewhere (CI, files) prints a line per update.
  """

  def __init__(self, total: int, *, stream: TextIO | None = None, enabled: bool = True):
    self.total, self.stream, self.enabled = total, stream or sys.stderr, enabled
    self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
    self.start = time.monotonic()

  def update(self, step: int, loss: float, tokens_per_s: float | None) -> None:
    if not self.enabled:
      return
    done = step / max(self.total, 1)
    elapsed = time.monotonic() - self.start
    eta = elapsed / done * (1 - done) if done > 0 else 0.0
    bar = "#" * int(20 * done) + "." * (20 - int(20 * done))
    speed = f" | {_human(tokens_per_s)} tok/s" if tokens_per_s else ""
    line = (f"step {step}/{self.total} [{bar}] loss {loss:.4f}{speed} | "
            f"eta {int(eta) // 60}m{int(eta) % 60:02d}s")
    self.stream.write(("\r" + line + "\033[K") if self.tty else line + "\n")
    self.stream.flush()

  def close(self) -> None:
    if self.enabled and self.tty:
      self.stream.write("\n")
      self.stream.flush()
