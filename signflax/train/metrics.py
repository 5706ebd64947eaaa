"""Metric sinks (metrics.jsonl, TensorBoard event files), MFU and a plain progress bar."""

from __future__ import annotations

import json
import math
import pathlib
import sys
import time
from typing import Mapping, TextIO

import jax

from signflax.tensorboard_extras import tensorboard_tag

# Peak dense bf16 FLOP/s per device (vendor datasheets), matched as a lower-case
# substring of ``jax.Device.device_kind``; the first match wins. CPUs have no entry.
PEAK_BF16_FLOPS = (
    ("h200", 989e12),
    ("h100 pcie", 756e12),
    ("h100", 989e12),
    ("gh200", 989e12),
    ("b200", 2250e12),
    ("a100", 312e12),
    ("l40s", 362e12),
    ("l4", 121e12),
    ("a10g", 70e12),
    ("v100", 125e12),
    ("tpu v6", 918e12),
    ("tpu v5 lite", 197e12),
    ("tpu v5e", 197e12),
    ("tpu v5", 459e12),
    ("tpu v4", 275e12),
    ("tpu v3", 123e12),
)


def peak_flops_per_device(device: jax.Device | None = None) -> float | None:
  """Peak bf16 FLOP/s of ``device`` (default: the first device), None if unknown (CPU)."""
  device = device or jax.devices()[0]
  if device.platform == "cpu":
    return None
  kind = device.device_kind.lower()
  return next((flops for name, flops in PEAK_BF16_FLOPS if name in kind), None)


def _scalar(value):
  value = float(value)
  return value if math.isfinite(value) else str(value)


class EventWriter:
  """TensorBoard event files written with the ``tensorboard`` package alone (no TensorFlow).

  Stock ``tensorboard --logdir`` reads them. Used by :class:`MetricWriter` and by the
  linreg experiments.
  """

  def __init__(self, logdir: str | pathlib.Path, *, flush_secs: int = 10):
    from tensorboard.compat.proto import event_pb2, summary_pb2  # noqa: PLC0415
    from tensorboard.summary.writer.event_file_writer import EventFileWriter  # noqa: PLC0415
    self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
    self._writer = EventFileWriter(str(logdir), flush_secs=flush_secs)

  def scalars(self, step: int, values: Mapping[str, float | None]) -> None:
    """One event at ``step`` holding every non-None value."""
    summary = self._summary_pb2.Summary(value=[
        self._summary_pb2.Summary.Value(tag=k, simple_value=float(v))
        for k, v in values.items() if v is not None])
    self._writer.add_event(self._event_pb2.Event(wall_time=time.time(), step=int(step),
                                                 summary=summary))

  def scalar(self, tag: str, value: float, step: int) -> None:
    self.scalars(step, {tag: value})

  def restart(self, step: int) -> None:
    """A SessionLog START at ``step``: TensorBoard drops earlier runs' points from there."""
    self._writer.add_event(self._event_pb2.Event(
        wall_time=time.time(), step=int(step),
        session_log=self._event_pb2.SessionLog(status=self._event_pb2.SessionLog.START)))

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


class MetricWriter:
  """Writes scalars to ``workdir/metrics.jsonl`` and TensorBoard events in ``workdir/tb``.

  Only process 0 writes (``enabled``).
  """

  def __init__(self, workdir: str | pathlib.Path, *, enabled: bool = True):
    self.enabled = enabled
    if not enabled:
      return
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    self._jsonl = open(workdir / "metrics.jsonl", "a", encoding="utf-8")
    self._events = EventWriter(workdir / "tb")

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: (None if v is None else _scalar(v))
                                    for k, v in metrics.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    self._events.scalars(step, {tensorboard_tag(k): v for k, v in metrics.items()})

  def resume(self, step: int) -> None:
    """Marks a restart from the checkpoint at ``step``.

    metrics.jsonl is appended to (a step logged twice: the later record wins);
    TensorBoard restarts at ``step + 1``, dropping the killed run's later points.
    """
    if self.enabled:
      self._events.restart(int(step) + 1)

  def flush(self) -> None:
    if self.enabled:
      self._jsonl.flush()
      self._events.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._events.close()


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
