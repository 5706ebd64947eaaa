"""What a start needs to be safe to repeat: a workdir lock, config changes on resume, an
undo for starts that fail before their first checkpoint, and the compilation cache.

    lock = WorkdirLock.acquire(workdir)            # WorkdirBusyError if a live run holds it
    changes = compare_configs(saved_config, config)  # on resume
    guard = StartGuard(workdir)                    # before writing anything
    ... on failure before the first checkpoint: guard.undo()
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time
from typing import Any

import jax

from signflax import storage
from signflax.train import workdir as workdir_lib

CONFIG_FILE = workdir_lib.CONFIG      # (kept for callers of the old names)
HISTORY_FILE = workdir_lib.HISTORY
WorkdirBusyError = workdir_lib.WorkdirBusyError
WorkdirLock = workdir_lib.WorkdirLock

# Fields a checkpoint cannot survive: its arrays would be the wrong shapes, or the
# right shapes meaning something else. Prefixes of dotted names.
UNUSABLE = ("model.", "optimizer.name")
# Model fields that only change how the same weights are computed.
MODEL_COMPUTE_ONLY = ("model.dtype", "model.attention_impl", "model.remat")
# Changing these makes the resumed run a different experiment than the one the earlier
# steps belong to; allowed only when asked for (--allow-config-change).
GUARDED = ("train.seed",)
# Never compared: how this particular run is started.
IGNORED = ("distributed.",)


# ---------------------------------------------------------------------------- config changes


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
  """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(flatten(value, name + "."))
    else:
      out[name] = value
  return out


@dataclasses.dataclass
class ConfigChanges:
  """How a resumed run's config differs from the saved one: ``(field, old, new)`` lists."""
  unusable: list
  guarded: list
  allowed: list

  def __bool__(self):
    return bool(self.unusable or self.guarded or self.allowed)

  @staticmethod
  def describe(changes) -> str:
    return ", ".join(f"{field}: {old!r} → {new!r}" for field, old, new in changes)


_ABSENT = "<absent>"


def compare_configs(saved: dict, new: dict) -> ConfigChanges:
  """Sorts the differences between two configs (as JSON dicts) into the three kinds."""
  old_flat, new_flat = flatten(saved), flatten(new)
  changes = ConfigChanges([], [], [])
  for field in sorted(set(old_flat) | set(new_flat)):
    if field.startswith(IGNORED):
      continue
    old, cur = old_flat.get(field, _ABSENT), new_flat.get(field, _ABSENT)
    if old == cur:
      continue
    if field.startswith(UNUSABLE) and field not in MODEL_COMPUTE_ONLY:
      changes.unusable.append((field, old, cur))
    elif field in GUARDED:
      changes.guarded.append((field, old, cur))
    else:
      changes.allowed.append((field, old, cur))
  return changes


def read_saved_config(workdir: storage.PathLike) -> dict | None:
  """``workdir/config.json`` as a dict; None if absent or unreadable."""
  try:
    return json.loads(workdir_lib.Workdir(workdir).config.read_text())
  except (OSError, ValueError):
    return None


def write_config(workdir: storage.PathLike, config_json: str) -> None:
  """Writes config.json atomically (a kill never leaves half a file)."""
  storage.write_text(workdir_lib.Workdir(workdir).config, config_json.rstrip("\n") + "\n")


def append_history(workdir: storage.PathLike, step: int, changes: list) -> None:
  """One line in config_history.jsonl: when, at which step, and each ``old → new``."""
  entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "resumed_at_step": int(step),
           "changes": {field: {"old": None if old == _ABSENT else old,
                               "new": None if new == _ABSENT else new}
                       for field, old, new in changes}}
  storage.append_text(workdir_lib.Workdir(workdir).history, json.dumps(entry) + "\n")


# ---------------------------------------------------------------------------- failed starts


class StartGuard:
  """Remembers what a fresh start found in its workdir so a failure before the first
  checkpoint can leave the workdir as reusable as it was.

  ``undo()`` removes what the run created: config.json, an empty metrics.jsonl, tb/
  and the workdir itself if it is then empty. A non-empty metrics.jsonl is never
  deleted: it moves, with the config and TensorBoard events that belong to it, to
  ``failed_starts/<time>/``, so the same or a corrected command starts cleanly.
  """

  def __init__(self, workdir: storage.PathLike):
    self.workdir = storage.path(workdir)
    self.existed = self.workdir.exists()
    self.found = ({p.name for p in self.workdir.iterdir()} if self.existed else set())

  def undo(self) -> str | None:
    """Cleans up (process 0 only); returns a one-line note of what moved, if anything."""
    if jax.process_index() != 0 or not self.workdir.is_dir():
      return None
    metrics = self.workdir / workdir_lib.METRICS
    created = [self.workdir / n for n in workdir_lib.LOGS
               if n not in self.found and (self.workdir / n).exists()]
    note = None
    if metrics.exists() and storage.size(metrics) > 0:
      target = self.workdir / workdir_lib.FAILED_STARTS / time.strftime("%Y%m%d-%H%M%S")
      target.mkdir(parents=True, exist_ok=True)
      for name in workdir_lib.LOGS:
        if (self.workdir / name).exists():
          storage.move(self.workdir / name, target / name)
      note = f"this start's logs moved to {target}"
    else:
      for path in created:
        storage.remove(path)
    # (An object store has no empty directories: nothing is left to remove there.)
    if not self.existed and not storage.is_remote(self.workdir) and not any(
        self.workdir.iterdir()):
      self.workdir.rmdir()
    return note


# ---------------------------------------------------------------------------- compile cache


def default_compilation_cache_dir() -> str:
  """The per-user compilation cache: ``$JAX_COMPILATION_CACHE_DIR`` when set, else
  ``$XDG_CACHE_HOME/signflax/jax`` (``~/.cache/signflax/jax``)."""
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return os.environ["JAX_COMPILATION_CACHE_DIR"]
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "signflax", "jax")


def compilation_cache_dir(configured: str | None) -> str | None:
  """The persistent compilation cache ``config.train.compilation_cache_dir`` names:
  itself (``gs://`` too: JAX reads and writes its cache through epath), or
  ``default_compilation_cache_dir()`` when None; ``""`` turns it off (None returned).
  Never a directory derived from the workdir."""
  if configured == "":
    return None
  if configured is None:
    configured = default_compilation_cache_dir()
  if storage.is_remote(configured):
    return configured
  return str(pathlib.Path(configured).expanduser().absolute())


def enable_compilation_cache(path: str | None) -> None:
  """Points JAX's persistent compilation cache at ``path`` (None: off). Every compile is
  cached, however quick: a restart then skips compiling altogether."""
  from jax.experimental.compilation_cache import compilation_cache as cc  # noqa: PLC0415
  if path is None:
    jax.config.update("jax_enable_compilation_cache", False)
    return
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  if jax.config.jax_compilation_cache_dir != path:
    cc.reset_cache()
    cc.set_cache_dir(path)
