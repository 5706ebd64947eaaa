"""Orbax checkpoints of the train state and the Grain iterator position.

    ckpt = Checkpointer(workdir / "checkpoints", every_steps=100, keep=3, keep_period=1000)
    restored = ckpt.restore_latest(abstract_state)     # None in a fresh workdir
    ...
    ckpt.maybe_save(step, state, {"data": train_iter.get_state(), ...})
    ckpt.close()                                      # waits for the last async save

Each step directory holds two items: ``state`` (the ``TrainState`` pytree:
step, params, optimizer state; sharded arrays, written by every process) and
``extra`` (JSON: the Grain iterator state and the loop's bookkeeping, written
by process 0: every process reads its slice of the same global batches, so the
Grain position is the same on all of them, and also valid for another process
count). The run's randomness is the seed (parameter init) and the data order,
which the Grain state carries, so a resumed run repeats the same steps.

Restores go *into* the caller's abstract state: ``jax.ShapeDtypeStruct`` leaves
carrying the current run's ``NamedSharding``s, so a checkpoint saved on 8
devices restores onto 4, or 1, or another mesh. A latest checkpoint that fails
to restore (truncated or corrupt files) is reported and skipped in favour of the
one before; it is moved to ``<directory>/../corrupt_checkpoints/`` (never
deleted) so the run can save that step again. A checkpoint whose shapes differ
from the current model raises ``IncompatibleCheckpointError`` before anything
is moved.
"""

from __future__ import annotations

import dataclasses
import pathlib
import shutil
import sys
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

STATE, EXTRA = "state", "extra"


class IncompatibleCheckpointError(ValueError):
  """The checkpoint holds a different model or optimizer (shapes or structure)."""


@dataclasses.dataclass
class Restored:
  """A restored checkpoint: the train state (in the target shardings) and the JSON extras."""
  step: int
  state: Any
  extra: dict


def _warn(message: str) -> None:
  if jax.process_index() == 0:
    print(f"signflax: warning: {message}", file=sys.stderr, flush=True)


def _path_name(path) -> str:
  """A pytree path as 'opt_state.0.mu.embed', whatever the containers (dict, tuple, namedtuple)."""
  return jax.tree_util.keystr(path, simple=True, separator=".")


def _shape_mismatches(stored: Any, target: Any, limit: int = 3) -> list[str]:
  """'path: stored shape vs target shape' for up to ``limit`` leaves that differ."""
  stored_shapes = {_path_name(p): tuple(getattr(leaf, "shape", ()))
                   for p, leaf in jax.tree_util.tree_flatten_with_path(stored)[0]}
  out = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(target)[0]:
    name = _path_name(path)
    if name not in stored_shapes:
      out.append(f"{name}: missing from the checkpoint")
    elif stored_shapes[name] != tuple(leaf.shape):
      out.append(f"{name}: {stored_shapes[name]} in the checkpoint vs {tuple(leaf.shape)} now")
    if len(out) >= limit:
      break
  return out


class Checkpointer:
  """An ``ocp.CheckpointManager`` over ``directory`` with the trainer's save and keep rules.

  Args:
    directory: where step directories go (created on the first save).
    every_steps: save when ``step % every_steps == 0`` (``maybe_save``).
    keep: keep the latest ``keep`` checkpoints ...
    keep_period: ... plus every step divisible by ``keep_period`` (0 = none).
    async_save: write in a background thread; the step loop only waits for the
      device-to-host copy.
  """

  def __init__(self, directory: str | pathlib.Path, *, every_steps: int, keep: int = 3,
               keep_period: int = 0, async_save: bool = True):
    self.directory = pathlib.Path(directory).absolute()
    self.every_steps = every_steps
    policies = [ocp.checkpoint_managers.LatestN(n=keep)]
    if keep_period:
      policies.append(ocp.checkpoint_managers.EveryNSteps(interval_steps=keep_period))
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=1,  # the trainer decides when (every_steps, SIGTERM, last step)
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save,
        create=False,           # nothing is written until the first save
        cleanup_tmp_directories=False)
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    for name, handler, args in ((STATE, ocp.handlers.StandardCheckpointHandler,
                                 (ocp.args.StandardSave, ocp.args.StandardRestore)),
                                (EXTRA, ocp.handlers.JsonCheckpointHandler,
                                 (ocp.args.JsonSave, ocp.args.JsonRestore))):
      for arg in args:
        registry.add(name, arg, handler)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          handler_registry=registry)

  def all_steps(self) -> list[int]:
    """Committed steps, oldest first (unfinished temporary directories are not steps)."""
    return sorted(self._manager.all_steps()) if self.directory.exists() else []

  def should_save(self, step: int) -> bool:
    return step % self.every_steps == 0

  def save(self, step: int, state: Any, extra: dict) -> None:
    """Saves ``state`` and JSON ``extra`` at ``step`` (async: returns after the host copy)."""
    if jax.process_index() == 0:
      self.directory.mkdir(parents=True, exist_ok=True)
    multihost_utils.sync_global_devices("signflax_checkpoint_dir")
    self._manager.save(step, args=ocp.args.Composite(
        **{STATE: ocp.args.StandardSave(state), EXTRA: ocp.args.JsonSave(extra)}), force=True)

  def maybe_save(self, step: int, state: Any, extra: dict) -> bool:
    if not self.should_save(step):
      return False
    self.save(step, state, extra)
    return True

  def check_compatible(self, step: int, abstract_state: Any) -> None:
    """Raises IncompatibleCheckpointError if ``step``'s stored shapes differ from the target's.

    Unreadable metadata is left to ``restore`` (it counts as a corrupt checkpoint).
    """
    try:
      stored = self._manager.item_metadata(step)[STATE]
    except Exception:  # noqa: BLE001 - unreadable metadata = corrupt, handled by restore
      return
    if stored is None:
      return
    try:
      bad = _shape_mismatches(stored, abstract_state)
    except Exception:  # noqa: BLE001 - a different pytree structure
      bad = ["the pytree structure differs"]
    if bad:
      raise IncompatibleCheckpointError(
          f"checkpoint {self.directory / str(step)} does not fit this model/optimizer ("
          + "; ".join(bad) + "); use a new --workdir or the config it was saved with")

  def restore(self, step: int, abstract_state: Any) -> Restored:
    """Restores ``step`` into ``abstract_state`` (ShapeDtypeStructs with shardings)."""
    out = self._manager.restore(step, args=ocp.args.Composite(
        **{STATE: ocp.args.StandardRestore(abstract_state), EXTRA: ocp.args.JsonRestore()}))
    state = out[STATE]
    jax.block_until_ready(state)
    return Restored(step=step, state=state, extra=dict(out[EXTRA] or {}))

  def restore_latest(self, abstract_state: Any) -> Restored | None:
    """Restores the newest checkpoint that reads back; None if there is none.

    Checkpoints that fail to read are reported, then moved aside once an older
    one restored (so later saves of those steps do not collide); nothing is
    deleted. Raises IncompatibleCheckpointError for a checkpoint of another
    model, and RuntimeError if checkpoints exist but none restores.
    """
    steps = self.all_steps()
    if not steps:
      return None
    self.check_compatible(steps[-1], abstract_state)
    bad = []
    for step in reversed(steps):
      try:
        restored = self.restore(step, abstract_state)
      except IncompatibleCheckpointError:
        raise
      except Exception as e:  # noqa: BLE001 - any read failure means a broken checkpoint
        first_line = (str(e).strip().splitlines() or [""])[0][:200]
        _warn(f"checkpoint at step {step} in {self.directory} failed to restore "
              f"({type(e).__name__}: {first_line}); trying the previous one")
        bad.append(step)
        continue
      if bad:
        self._set_aside(bad)
        _warn(f"resumed from step {step} instead; unreadable checkpoint(s) "
              f"{', '.join(map(str, bad))} moved to {self._corrupt_dir()}")
      return restored
    raise RuntimeError(f"none of the checkpoints {steps} in {self.directory} restores; "
                       "see the warnings above (nothing was deleted)")

  def _corrupt_dir(self) -> pathlib.Path:
    return self.directory.parent / "corrupt_checkpoints"

  def _set_aside(self, steps: list[int]) -> None:
    """Moves unreadable step directories out of the manager's view (process 0 renames)."""
    if jax.process_index() == 0:
      self._corrupt_dir().mkdir(exist_ok=True)
      for step in steps:
        target = self._corrupt_dir() / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        shutil.move(str(self.directory / str(step)), str(target))
    multihost_utils.sync_global_devices("signflax_checkpoint_set_aside")
    self._manager.reload()

  def wait(self) -> None:
    """Blocks until pending async saves are committed."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def abstract_like(state: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of a live state: the restore target for it."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                      state)


def scalar_to_json(x) -> float:
  """A float32 device scalar as a JSON float (exact: every float32 is a float64)."""
  return float(np.asarray(jax.device_get(x), np.float32))


# --- Parameters for anyone: no config, no mesh, any device count -----------------
#
# A step directory's ``state`` item is the TrainState pytree ``{step, params,
# opt_state}`` as Orbax wrote it, each array with the sharding of the run that
# saved it. Restoring it whole needs that run's topology (or a target tree built
# from its config); reading only ``params``, each leaf as a host numpy array or
# onto a sharding the caller names, needs neither.


def _one_line(e: BaseException) -> str:
  return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"


def _committed_steps(directory: pathlib.Path) -> list[int]:
  """Steps under a checkpoints directory whose ``state`` is complete, oldest first.

  Orbax writes into a temporary directory and renames it to ``<step>`` when done,
  so digit-named directories with ``state/_METADATA`` are committed.
  """
  return sorted(int(p.name) for p in directory.iterdir()
                if p.name.isdigit() and (p / STATE / "_METADATA").is_file())


def _state_dir(workdir_or_step_dir: str | pathlib.Path, step: int | None
               ) -> tuple[pathlib.Path, int | None]:
  """``(the state item directory, its step)`` for a workdir, checkpoints dir or step dir."""
  if step is not None and (isinstance(step, bool) or not isinstance(step, (int, np.integer))
                           or step < 0):
    raise ValueError(f"step: must be an integer >= 0 or None, got {step!r}")
  path = pathlib.Path(workdir_or_step_dir).expanduser()
  if not path.is_dir():
    raise ValueError(f"workdir_or_step_dir: {str(path)!r} is not a directory")
  if path.name == STATE and (path / "_METADATA").is_file():  # the state item itself
    path = path.parent
  if (path / STATE).is_dir():  # a step directory
    saved = int(path.name) if path.name.isdigit() else None
    if step is not None and saved is not None and step != saved:
      raise ValueError(f"step: {step} differs from the step directory {str(path)!r}; "
                       "pass its parent directory to choose a step")
    if not (path / STATE / "_METADATA").is_file():
      raise ValueError(f"workdir_or_step_dir: {str(path / STATE)!r} is incomplete "
                       "(no _METADATA; an unfinished or damaged save)")
    return path / STATE, saved
  directory = path / "checkpoints" if (path / "checkpoints").is_dir() else path
  steps = _committed_steps(directory)
  if not steps:
    raise ValueError(f"workdir_or_step_dir: no checkpoint in {str(path)!r} (looked for "
                     "checkpoints/<step>/state, <step>/state and state/_METADATA)")
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise ValueError(f"step: no checkpoint at step {step} in {str(directory)!r}; saved steps: "
                     + ", ".join(map(str, steps)))
  return directory / str(step) / STATE, step


def read_params(workdir_or_step_dir: str | pathlib.Path, step: int | None = None,
                sharding: Any = None) -> tuple[Any, int | None]:
  """``(load_params(...), its step)``; the step is None for a step directory not named by it."""
  state_dir, step = _state_dir(workdir_or_step_dir, step)
  handler = ocp.PyTreeCheckpointHandler()
  try:
    saved = handler.metadata(state_dir).tree
  except Exception as e:  # noqa: BLE001 - unreadable metadata is bad input here
    raise ValueError(f"workdir_or_step_dir: {str(state_dir)!r} is not a readable Orbax "
                     f"checkpoint ({_one_line(e)})") from e
  if not isinstance(saved, dict) or "params" not in saved:
    keys = ", ".join(map(str, saved)) if isinstance(saved, dict) else type(saved).__name__
    raise ValueError(f"workdir_or_step_dir: {str(state_dir)!r} holds no 'params' (found: {keys})")
  item = {"params": saved["params"]}
  if sharding is None:
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
  elif isinstance(sharding, jax.sharding.Sharding):
    restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=sharding), item)
  else:
    try:
      restore_args = {"params": jax.tree.map(lambda _, s: ocp.ArrayRestoreArgs(sharding=s),
                                             item["params"], sharding)}
    except ValueError as e:
      raise ValueError("sharding: must be None, a jax.sharding.Sharding, or a pytree of them "
                       "shaped like the parameters") from e
  checkpointer = ocp.Checkpointer(handler)
  try:
    restored = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(
        item=item, restore_args=restore_args, partial_restore=True))
  except Exception as e:  # noqa: BLE001 - missing or damaged array files
    raise ValueError(f"workdir_or_step_dir: {str(state_dir)!r} failed to read ({_one_line(e)})"
                     ) from e
  finally:
    checkpointer.close()
  return restored["params"], step


def load_params(workdir_or_step_dir: str | pathlib.Path, step: int | None = None,
                sharding: Any = None) -> Any:
  """The parameters of a signflax checkpoint, on any topology, without its config.

    params = load_params("runs/tiny")                  # latest step, numpy arrays
    params = load_params("runs/tiny", step=1000)
    params = load_params("runs/tiny/checkpoints/1000")  # a step directory
    params = load_params("runs/tiny", sharding=NamedSharding(mesh, P()))  # jax.Arrays

  Only the ``params`` subtree is read (not the optimizer state), so a checkpoint
  saved on 8 devices of one mesh loads on 1 device, or into another process
  count. Plain Orbax restores without a target refuse that ("Topology mismatch").

  Args:
    workdir_or_step_dir: a training workdir (holding ``checkpoints/``), a
      checkpoints directory, or one step directory (``checkpoints/<step>``).
    step: which step of a workdir; None = the latest committed one.
    sharding: None for host ``numpy.ndarray`` leaves; a ``jax.sharding.Sharding``
      for every leaf, or a pytree of them shaped like the parameters, for
      ``jax.Array`` leaves placed there (each device reads only its shards).

  Returns:
    The nested dict of parameters, e.g. ``params["layers"]["attn"]["q"]``
    (float32, layer axis first, kernels ``(fan_in, fan_out)``).

  Raises:
    ValueError: no such directory, no checkpoint, no such step, or not a
      readable checkpoint (one line naming the argument).
  """
  return read_params(workdir_or_step_dir, step, sharding)[0]
