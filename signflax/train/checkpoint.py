"""Orbax checkpoints of the train state and the Grain iterator position, checksummed.

    ckpt = Checkpointer(workdir / "checkpoints", keep=3, keep_period=1000, clean_leftovers=True)
    restored = ckpt.restore_latest(abstract_state)     # None in a fresh workdir
    ...
    ckpt.save(step, state, {"data": train_iter.get_state(), ...})
    ckpt.close()                                      # waits for the last async save

Each step directory holds two items: ``state`` (the ``TrainState`` pytree:
step, params, optimizer state; sharded arrays, written by every process) and
``extra`` (JSON: the Grain iterator state, the loop's bookkeeping and a checksum
per array, written by process 0: every process reads its slice of the same
global batches, so the Grain position is the same on all of them, and also
valid for another process count). A resumed run repeats the same steps.

Restores go *into* the caller's abstract state: ``jax.ShapeDtypeStruct`` leaves
carrying the current run's ``NamedSharding``s, so a checkpoint saved on 8
devices restores onto 4, or 1, or another mesh.

A failed restore is one of three kinds, never mistaken for another:

* **incompatible** (``IncompatibleCheckpointError``): the saved tree and the
  requested one differ (leaf names, shapes or dtypes, compared in both
  directions from Orbax's metadata, before any array is read). Nothing moves.
* **corrupt** (``CorruptCheckpointError`` inside ``restore_latest``): a file is
  missing or truncated, Orbax's own checks fail, or an array's checksum differs
  from the one computed while saving. The step directory is moved, whole, to
  ``<directory>/../corrupt_checkpoints/`` and the one before is tried; the
  detailed exception goes to ``<directory>/../checkpoint_errors.log``.
* **transient** (``TransientCheckpointError``): decided from the root cause's
  error code, for array data (TensorStore's ``[os_error_code='5']``) as for JSON
  (``signflax.train.checkpoint_errors``): EIO, EAGAIN, ETIMEDOUT, EBUSY,
  ``UNAVAILABLE``, ``DEADLINE_EXCEEDED``, HTTP 429/5xx, ... Retried with
  exponential backoff; if it keeps failing, nothing is moved and the next start
  tries again.

Saves check for room first (a warning when the disk cannot hold one more
checkpoint) and turn a full disk into ``CheckpointSaveError`` with one line
("No space left on device (0.1 GB free, 0.4 GB needed)"); the last committed
checkpoint is untouched, since Orbax writes into a temporary directory and
renames it only when complete.
"""

from __future__ import annotations

import dataclasses
import pathlib
import shutil
import sys
import time
import traceback
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from signflax import storage
from signflax.train import workdir as workdir_lib
from signflax.train.checkpoint_errors import (  # noqa: F401 - re-exported
    CheckpointSaveError, CorruptCheckpointError, IncompatibleCheckpointError,
    NoReadableCheckpoint, TransientCheckpointError, disk_full_reason, first_line,
    is_transient, quiet_background_noise, transient_reason)
from signflax.train.checksums import checksum_mismatches, checksums, dotted  # noqa: F401
from signflax.train.params import load_params, read_params  # noqa: F401 - re-exported
from signflax.train.workdir import (  # noqa: F401 - re-exported
    COMMIT_MARKER, COMMITTED_FILES, EXTRA, STATE, TMP_SUFFIX, is_committed)

CHECKSUMS = "checksums"            # the key of the per-array checksums in ``extra``
ERROR_LOG = workdir_lib.ERROR_LOG              # beside the checkpoints directory
CORRUPT_DIR = workdir_lib.CORRUPT_CHECKPOINTS  # beside the checkpoints directory


@dataclasses.dataclass
class Restored:
  """A restored checkpoint: the train state (in the target shardings) and the JSON extras."""
  step: int
  state: Any
  extra: dict


def _warn(message: str) -> None:
  if jax.process_index() == 0:
    print(f"signflax: warning: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- compatibility


def _leaf_table(tree: Any) -> dict[str, tuple]:
  """``{leaf name: (shape, dtype)}`` of arrays, ShapeDtypeStructs or Orbax array metadata."""
  return {dotted(p): (tuple(getattr(leaf, "shape", ())), str(np.dtype(leaf.dtype))
                          if getattr(leaf, "dtype", None) is not None else None)
          for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


_WRAPPERS = ("inner_state", "inner_states")


def _state_fields(table: dict[str, tuple], param_names: set[str]) -> list[str]:
  """The optimizer state's field names ('count', 'mu', ...): leaf names under 'opt_state'
  with the parameter path and container indices removed."""
  fields = []
  for name in table:
    if not name.startswith("opt_state"):
      continue
    parts = name.split(".")[1:]
    for i in range(len(parts)):
      if ".".join(parts[i:]) in param_names:
        parts = parts[:i]
        break
    # Container levels (chain indices, wrappers' inner states) and injected
    # hyperparameters (scalars every optimizer of the chain may carry) name no state.
    field = ".".join(p for p in parts if not p.isdigit() and p not in _WRAPPERS)
    if field and not field.startswith("hyperparams") and field not in fields:
      fields.append(field)
  return fields


def describe_difference(saved: dict[str, tuple], wanted: dict[str, tuple],
                        labels: tuple[str, str] = ("optimizer", "optimizer"),
                        limit: int = 3) -> str | None:
  """One phrase naming how two leaf tables (``_leaf_table``) differ; None if they agree.

  Optimizer state that differs is named by its fields ("checkpoint has adamw
  state (count, mu, nu); config asks for sign_sgd (count)"); other leaves by
  name, shape and dtype, in both directions.
  """
  if saved == wanted:
    return None
  params = {n[len("params."):] for n in (*saved, *wanted) if n.startswith("params.")}
  fields = [_state_fields(t, params) for t in (saved, wanted)]
  parts = []
  if fields[0] != fields[1] or labels[0] != labels[1]:
    listed = [", ".join(f) or "none" for f in fields]
    parts.append(f"checkpoint has {labels[0]} state ({listed[0]}); config asks for "
                 f"{labels[1]} ({listed[1]})")
  rest = []
  for name in sorted(set(saved) | set(wanted), key=lambda n: (n.startswith("opt_state"), n)):
    if name.startswith("opt_state") and (parts or rest):
      continue  # named by its fields above, or mirrors the parameters listed
    if name not in wanted:
      rest.append(f"{name} is in the checkpoint but not in this model")
    elif name not in saved:
      rest.append(f"{name} is missing from the checkpoint")
    elif saved[name] != wanted[name]:
      (s_shape, s_dtype), (w_shape, w_dtype) = saved[name], wanted[name]
      rest.append(f"{name}: {s_dtype}{list(s_shape)} in the checkpoint vs "
                  f"{w_dtype}{list(w_shape)} now")
  if len(rest) > limit:
    rest = rest[:limit] + [f"{len(rest) - limit} more"]
  return "; ".join(parts + rest)


# ---------------------------------------------------------------------------- failures


def _existing_parent(path: pathlib.Path) -> pathlib.Path:
  while not path.exists() and path != path.parent:
    path = path.parent
  return path


def tree_nbytes(tree: Any) -> int:
  """Bytes of all (global) arrays in ``tree``: the size of one checkpoint, about."""
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def free_bytes(path: str | pathlib.Path) -> int:
  """Free bytes on the disk holding ``path`` (its nearest existing ancestor); local only."""
  return shutil.disk_usage(_existing_parent(pathlib.Path(path).absolute())).free


def _gb(n: float) -> str:
  return f"{n / 1e9:.3g} GB"


# ---------------------------------------------------------------------------- leftovers


def _unfinished(directory: epath.Path) -> list[epath.Path]:
  """Saves that never committed: ``<step>.orbax-checkpoint-tmp*`` on a local disk; step
  directories without Orbax's commit marker on object storage."""
  if storage.is_remote(directory):
    return sorted(p for p in directory.iterdir()
                  if p.name.isdigit() and not (p / COMMIT_MARKER).exists())
  return sorted(p for p in directory.iterdir() if TMP_SUFFIX in p.name)


def remove_leftovers(directory: str | pathlib.Path) -> list[str]:
  """Removes unfinished saves and sets half-deleted steps aside; returns one line per action.

  Only safe when no live process writes to ``directory`` (the trainer holds the
  workdir lock). ``<step>.orbax-checkpoint-tmp*`` directories are saves that never
  committed: removed. A step directory lacking a file every committed step has
  (``COMMITTED_FILES``) was being deleted (or copied) when a process died: moved to
  ``corrupt_checkpoints/``, never deleted.
  """
  directory = storage.path(directory)
  if not directory.is_dir():
    return []
  lines = []
  unfinished = _unfinished(directory)
  for path in unfinished:
    storage.remove(path)
  if unfinished:
    lines.append(f"removed {len(unfinished)} unfinished checkpoint save(s) "
                 f"({', '.join(p.name.split('.')[0] for p in unfinished)}) in {directory}")
  for path in sorted((p for p in directory.iterdir() if p.name.isdigit() and p.is_dir()),
                     key=lambda p: int(p.name)):
    if not is_committed(path):
      target = _set_aside_path(directory, path.name)
      storage.move(path, target)
      lines.append(f"checkpoint step directory {path} is incomplete (a kill while it was "
                   f"deleted?); moved to {target}")
  return lines


def _set_aside_path(directory: epath.Path, name: str) -> epath.Path:
  corrupt = directory.parent / CORRUPT_DIR
  corrupt.mkdir(parents=True, exist_ok=True)
  target = corrupt / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
  n = 1
  while target.exists():
    target, n = corrupt / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{n}", n + 1
  return target


# ---------------------------------------------------------------------------- checkpointer


class Checkpointer:
  """An ``ocp.CheckpointManager`` over ``directory`` with keep rules, checksums and the
  restore-failure classes of the module docstring. The caller decides when to save.

  Args:
    directory: where step directories go (created on the first save).
    keep: keep the latest ``keep`` checkpoints ...
    keep_period: ... plus every step divisible by ``keep_period`` (0 = none).
    async_save: write in a background thread; the step loop only waits for the
      device-to-host copy (and the checksums).
    checksum: store a checksum per array in ``extra`` and verify it on restore.
    restore_tries: attempts per checkpoint on a transient read error (>= 1).
    retry_delay_s: the first wait between attempts; doubled after each ...
    retry_max_delay_s: ... up to this.
    clean_leftovers: first remove unfinished saves and set half-deleted steps aside
      (see ``remove_leftovers``); only when no other live process uses ``directory``.
  """

  def __init__(self, directory: str | pathlib.Path, *, keep: int = 3, keep_period: int = 0,
               async_save: bool = True, checksum: bool = True, restore_tries: int = 3,
               retry_delay_s: float = 1.0, retry_max_delay_s: float = 30.0,
               clean_leftovers: bool = False):
    if restore_tries < 1:
      raise ValueError(f"restore_tries: must be >= 1, got {restore_tries!r}")
    self.directory = (storage.path(directory) if storage.is_remote(directory)
                      else storage.path(pathlib.Path(directory).absolute()))
    self.checksum, self.restore_tries, self.retry_delay_s = checksum, restore_tries, retry_delay_s
    self.retry_max_delay_s = retry_max_delay_s
    self.error_log = self.directory.parent / ERROR_LOG
    self._room_warned = False
    if clean_leftovers:
      if jax.process_index() == 0:
        for line in remove_leftovers(self.directory):
          _warn(line)
      multihost_utils.sync_global_devices("signflax_checkpoint_leftovers")
    policies = [ocp.checkpoint_managers.LatestN(n=keep)]
    if keep_period:
      policies.append(ocp.checkpoint_managers.EveryNSteps(interval_steps=keep_period))
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=1,  # the trainer decides when (every_steps, signals, last step)
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save,
        create=False,           # nothing is written until the first save
        cleanup_tmp_directories=False)  # remove_leftovers does it, knowing no one else writes
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    for name, handler, args in ((STATE, ocp.handlers.StandardCheckpointHandler,
                                 (ocp.args.StandardSave, ocp.args.StandardRestore)),
                                (EXTRA, ocp.handlers.JsonCheckpointHandler,
                                 (ocp.args.JsonSave, ocp.args.JsonRestore))):
      for arg in args:
        registry.add(name, arg, handler)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          handler_registry=registry)
    self._pending_bytes = 0
    self._closed = False

  def all_steps(self) -> list[int]:
    """Committed steps, oldest first (unfinished temporary directories are not steps)."""
    return sorted(self._manager.all_steps()) if self.directory.exists() else []

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  # -- saving

  def check_room(self, needed: int) -> int:
    """Free bytes; warns (once) when one more checkpoint would not fit with a 10% margin."""
    if storage.is_remote(self.directory):  # a bucket has no free-space figure
      return -1
    free = free_bytes(self.directory)
    if free < 1.1 * needed and not self._room_warned:
      self._room_warned = True
      _warn(f"{_gb(free)} free in {_existing_parent(self.directory)} for checkpoints of "
            f"{_gb(needed)}; the next save may fail (free some space)")
    return free

  def _save_error(self, e: BaseException) -> CheckpointSaveError:
    reason = disk_full_reason(e) or first_line(e)
    self._log_error("save", e)
    if storage.is_remote(self.directory):
      return CheckpointSaveError(f"checkpoint save to {self.directory} failed: {reason}")
    return CheckpointSaveError(
        f"checkpoint save failed: {reason} ({_gb(free_bytes(self.directory))} free, "
        f"{_gb(self._pending_bytes)} needed)")

  def save(self, step: int, state: Any, extra: dict) -> None:
    """Saves ``state`` and JSON ``extra`` (plus checksums) at ``step``; async: returns after
    the host copy. Raises CheckpointSaveError with one line if this or the previous
    (background) save failed."""
    self._pending_bytes = tree_nbytes(state)
    self.check_room(self._pending_bytes)
    if self.checksum:
      extra = {**extra, CHECKSUMS: checksums(state)}
    try:
      if jax.process_index() == 0:
        self.directory.mkdir(parents=True, exist_ok=True)
      multihost_utils.sync_global_devices("signflax_checkpoint_dir")
      self._manager.save(step, args=ocp.args.Composite(
          **{STATE: ocp.args.StandardSave(state), EXTRA: ocp.args.JsonSave(extra)}), force=True)
      self._manager.check_for_errors()
    except Exception as e:  # noqa: BLE001 - reported as one line, the detail goes to the log
      raise self._save_error(e) from e

  def close(self) -> None:
    """Waits for the last async save; raises CheckpointSaveError if it failed. Closing
    again does nothing."""
    if self._closed:
      return
    self._closed = True
    try:
      self._manager.wait_until_finished()
      self._manager.check_for_errors()
    except Exception as e:  # noqa: BLE001
      raise self._save_error(e) from e
    finally:
      self._manager.close()

  # -- restoring

  def saved_leaves(self, step: int) -> dict[str, tuple]:
    """``{name: (shape, dtype)}`` of ``step``'s state from Orbax's metadata (no array read)."""
    stored = self._manager.item_metadata(step)[STATE]
    if stored is None:
      raise CorruptCheckpointError(f"checkpoint at step {step} has no state metadata")
    return _leaf_table(getattr(stored, "tree", stored))

  def check_compatible(self, step: int, abstract_state: Any,
                       labels: tuple[str, str] = ("optimizer", "optimizer")) -> None:
    """Raises IncompatibleCheckpointError (one line) if ``step``'s saved tree differs from
    ``abstract_state`` in leaf names, shapes or dtypes; ``labels`` name the saved and the
    requested optimizer in the message. Unreadable metadata raises CorruptCheckpointError."""
    try:
      saved = self.saved_leaves(step)
    except CorruptCheckpointError:
      raise
    except Exception as e:  # noqa: BLE001 - classified by the caller
      if is_transient(e):
        raise
      raise CorruptCheckpointError(f"metadata of step {step} unreadable ({first_line(e)})"
                                   ) from e
    difference = describe_difference(saved, _leaf_table(abstract_state), labels)
    if difference:
      raise IncompatibleCheckpointError(
          f"checkpoint at step {step} in {self.directory} does not fit this config: "
          f"{difference}; use a new --workdir or the config it was saved with")

  def restore(self, step: int, abstract_state: Any) -> Restored:
    """Restores ``step`` into ``abstract_state`` (ShapeDtypeStructs with shardings) and
    verifies its checksums (CorruptCheckpointError naming the arrays that differ)."""
    out = self._manager.restore(step, args=ocp.args.Composite(
        **{STATE: ocp.args.StandardRestore(abstract_state), EXTRA: ocp.args.JsonRestore()}))
    state, extra = out[STATE], dict(out[EXTRA] or {})
    jax.block_until_ready(state)
    expected = extra.pop(CHECKSUMS, None)
    if self.checksum and expected:
      bad = checksum_mismatches(state, expected)
      if bad:
        raise CorruptCheckpointError(
            f"checksum mismatch in {', '.join(bad[:3])}"
            + (f" and {len(bad) - 3} more array(s)" if len(bad) > 3 else ""))
    return Restored(step=step, state=state, extra=extra)

  def _with_retries(self, step: int, read: Callable[[], Any]) -> Any:
    """``read()``, retried on transient errors; TransientCheckpointError once tries run out."""
    delay = self.retry_delay_s
    for attempt in range(1, self.restore_tries + 1):
      try:
        return read()
      except (IncompatibleCheckpointError, CorruptCheckpointError):
        raise
      except Exception as e:  # noqa: BLE001 - classified here
        if not is_transient(e):
          raise CorruptCheckpointError(first_line(e, 300)) from e
        self._log_error(f"step {step}, attempt {attempt}", e)
        if attempt == self.restore_tries:
          raise TransientCheckpointError(
              f"checkpoint at step {step} in {self.directory} could not be read after "
              f"{attempt} tries ({transient_reason(e)}; details in {self.error_log}); "
              "nothing was moved: start again to retry") from e
        _warn(f"reading the checkpoint at step {step} failed ({first_line(e, 120)}); "
              f"retrying in {delay:g}s")
        time.sleep(delay)
        delay = min(2 * delay, self.retry_max_delay_s)

  def restore_latest(self, abstract_state: Any,
                     labels: tuple[str, str] = ("optimizer", "optimizer")) -> Restored | None:
    """Restores the newest checkpoint that reads back and verifies; None if there is none.

    Raises IncompatibleCheckpointError (nothing moved) or TransientCheckpointError
    (nothing moved); corrupt checkpoints are reported in one line each and moved
    aside once an older one restored; RuntimeError if none restores (nothing moved).
    """
    steps = self.all_steps()
    if not steps:
      return None
    bad = []
    for step in reversed(steps):
      try:
        self._with_retries(step, lambda: self.check_compatible(step, abstract_state, labels))
        restored = self._with_retries(step, lambda: self.restore(step, abstract_state))
      except CorruptCheckpointError as e:
        self._log_error(f"step {step}", e.__cause__ or e)
        _warn(f"checkpoint at step {step} is corrupt ({self._brief(e)}); trying the one "
              f"before (details in {self.error_log})")
        bad.append(step)
        continue
      if bad:
        moved = self._set_aside(bad)
        _warn(f"resumed from step {step}; corrupt checkpoint(s) moved to "
              f"{', '.join(map(str, moved))}")
      return restored
    raise NoReadableCheckpoint(f"none of the checkpoints {steps} in {self.directory} restores; "
                       f"see the warnings above and {self.error_log} (nothing was moved)")

  def _brief(self, e: BaseException) -> str:
    """The error's first line, paths shown relative to the checkpoint directory."""
    return str(e).split("\n")[0].replace(str(self.directory) + "/", "")[:320]

  def _log_error(self, what: str, e: BaseException) -> None:
    if jax.process_index() != 0:
      return
    try:
      self.error_log.parent.mkdir(parents=True, exist_ok=True)
      storage.append_text(
          self.error_log, f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {self.directory} {what}\n"
          + "".join(traceback.format_exception(type(e), e, e.__traceback__)))
    except OSError:
      pass  # the log is a courtesy; the one-line report already went out

  def _set_aside(self, steps: list[int]) -> list[pathlib.Path]:
    """Moves unreadable step directories out of the manager's view (process 0 renames)."""
    moved = []
    if jax.process_index() == 0:
      for step in steps:
        target = _set_aside_path(self.directory, str(step))
        storage.move(self.directory / str(step), target)
        moved.append(target)
    multihost_utils.sync_global_devices("signflax_checkpoint_set_aside")
    self._manager.reload()
    return moved


def scalar_to_json(x) -> float:
  """A float32 device scalar as a JSON float (exact: every float32 is a float64)."""
  return float(np.asarray(jax.device_get(x), np.float32))
