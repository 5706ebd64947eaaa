"""A tiny TensorBoard scalar writer that needs only the ``tensorboard`` package."""

from __future__ import annotations

import time

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter


class _ScalarWriter:
  """Writes ``(tag, step, value)`` scalars to an event file in ``logdir``."""

  def __init__(self, logdir: str):
    self._writer = EventFileWriter(str(logdir))

  def scalar(self, tag: str, value: float, step: int) -> None:
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag,
                                                                   simple_value=float(value))])
    self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                           summary=summary))

  def close(self) -> None:
    self._writer.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
