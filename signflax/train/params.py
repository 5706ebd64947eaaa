"""The parameters of a signflax checkpoint, for anyone: no config, no mesh, any device
count (``load_params``; ``signflax export`` and user code read checkpoints here).
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from signflax import storage
from signflax.train import workdir as workdir_lib
from signflax.train.checkpoint_errors import first_line
from signflax.train.workdir import STATE

# # A step directory's ``state`` item is the TrainState pytree ``{step, params,
# opt_state}`` as Orbax wrote it, each array with the sharding of the run that
# saved it. Restoring it whole needs that run's topology (or a target tree built
# from its config); reading only ``params``, each leaf as a host numpy array or
# onto a sharding the caller names, needs neither.


def _state_dir(workdir_or_step_dir: str | pathlib.Path, step: int | None
               ) -> tuple[pathlib.Path, int | None]:
  """``(the state item directory, its step)`` for a workdir, checkpoints dir or step dir."""
  if step is not None and (isinstance(step, bool) or not isinstance(step, (int, np.integer))
                           or step < 0):
    raise ValueError(f"step: must be an integer >= 0 or None, got {step!r}")
  path = (storage.path(workdir_or_step_dir) if storage.is_remote(workdir_or_step_dir)
          else storage.path(pathlib.Path(workdir_or_step_dir).expanduser().absolute()))  # Orbax: absolute
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
  directory = (path / workdir_lib.CHECKPOINTS if (path / workdir_lib.CHECKPOINTS).is_dir()
               else path)
  steps = workdir_lib.committed_steps(directory)
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
                     f"checkpoint ({first_line(e)})") from e
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
    raise ValueError(f"workdir_or_step_dir: {str(state_dir)!r} failed to read ({first_line(e)})"
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
