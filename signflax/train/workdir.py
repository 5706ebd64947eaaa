"""The layout of a training workdir: every file name the trainer, the recovery code, the
checkpointer, the sweep and the fits read or write, in one place.

    WORKDIR/
      config.json              the run's config (rewritten on a resume that changed it)
      config_history.jsonl     one line per accepted config change on resume
      metrics.jsonl            one JSON record per logged step
      tb/                      TensorBoard event files
      checkpoints/<step>/      Orbax step directories: state/ (arrays) and extra/ (JSON)
      corrupt_checkpoints/     step directories set aside, never deleted
      checkpoint_errors.log    the full tracebacks of checkpoint failures
      failed_starts/<time>/    the logs of a start that failed before its first checkpoint

The workdir is locked (``WorkdirLock``, an ``flock`` on the directory itself) while a
run uses it. The compilation cache is not here: see ``train.compilation_cache_dir``.
"""

from __future__ import annotations

import fcntl
import os
import pathlib

from signflax import metric_writers
from signflax import outcomes
from signflax import storage

CONFIG = "config.json"
HISTORY = "config_history.jsonl"
METRICS = metric_writers.METRICS_FILE
TB = metric_writers.TB_DIR
CHECKPOINTS = "checkpoints"
CORRUPT_CHECKPOINTS = "corrupt_checkpoints"
ERROR_LOG = "checkpoint_errors.log"
FAILED_STARTS = "failed_starts"
LOGS = (CONFIG, METRICS, TB)   # what a start that failed before its first checkpoint wrote

# A checkpoint step directory: two Orbax items, and what a committed one always holds.
STATE, EXTRA = "state", "extra"
COMMITTED_FILES = ("_CHECKPOINT_METADATA", f"{STATE}/_METADATA", f"{EXTRA}/metadata")
TMP_SUFFIX = ".orbax-checkpoint-tmp"       # a local save in progress (renamed when done)
COMMIT_MARKER = "commit_success.txt"       # object storage: a step written in place is done


def is_committed(step_dir: storage.PathLike) -> bool:
  """Whether a step directory holds a finished save (the one definition of committed)."""
  step_dir = storage.path(step_dir)
  return all((step_dir / name).exists() for name in COMMITTED_FILES)


def committed_steps(checkpoints: storage.PathLike) -> list[int]:
  """Committed steps under a checkpoints directory, oldest first."""
  checkpoints = storage.path(checkpoints)
  if not checkpoints.is_dir():
    return []
  return sorted(int(p.name) for p in checkpoints.iterdir()
                if p.name.isdigit() and is_committed(p))


class WorkdirBusyError(outcomes.BadInput):
  """Another live process holds the workdir."""


class WorkdirLock:
  """An exclusive ``flock`` on the workdir directory itself (no lock file is written).

  The kernel drops it when the process dies, even by kill -9, so holding it proves
  that no live run writes there: unfinished saves may then be removed. Local
  workdirs only: object storage has no lock that a killed process gives back, and a
  pod's scheduler already runs one job per workdir.
  """

  def __init__(self, fd: int, path: pathlib.Path):
    self._fd, self.path = fd, path

  @classmethod
  def acquire(cls, workdir: str | pathlib.Path) -> "WorkdirLock":
    path = pathlib.Path(workdir)
    fd = os.open(path, os.O_RDONLY)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      raise WorkdirBusyError(f"--workdir: {path} is in use by another running process "
                             "(wait for it or choose another directory)") from None
    return cls(fd, path)

  def release(self) -> None:
    if self._fd is not None:
      os.close(self._fd)
      self._fd = None


class Workdir:
  """A run's directory (local or ``gs://``) and the paths of everything in it."""

  def __init__(self, root: storage.PathLike):
    self.root = storage.path(root)

  def __str__(self) -> str:
    return str(self.root)

  def __fspath__(self) -> str:
    return os.fspath(self.root)

  @property
  def is_remote(self) -> bool:
    return storage.is_remote(self.root)

  config = property(lambda self: self.root / CONFIG)
  history = property(lambda self: self.root / HISTORY)
  metrics = property(lambda self: self.root / METRICS)
  tb = property(lambda self: self.root / TB)
  checkpoints = property(lambda self: self.root / CHECKPOINTS)
  corrupt_checkpoints = property(lambda self: self.root / CORRUPT_CHECKPOINTS)
  error_log = property(lambda self: self.root / ERROR_LOG)
  failed_starts = property(lambda self: self.root / FAILED_STARTS)

  def has_checkpoint_dirs(self) -> bool:
    """Whether ``checkpoints/`` holds any step directory (committed or not)."""
    return self.checkpoints.is_dir() and any(p.name.isdigit() for p in self.checkpoints.iterdir())

  def lock(self) -> WorkdirLock:
    """Locks a local workdir (WorkdirBusyError if a live run holds it)."""
    return WorkdirLock.acquire(self.root)
