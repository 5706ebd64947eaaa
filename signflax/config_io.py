"""Config files, packaged config names and dotted overrides: one home for every command.

A config is a Python file exposing ``get_config() -> ml_collections.ConfigDict``;
``--config`` takes a file path or the name of a config shipped in
``signflax/configs`` (``lm/tiny``, ``linreg/data_scaling``, ...). Every
``--config.<dotted.field>=<value>`` override is parsed as a Python literal and
converted to the type of the value it replaces::

    config = load_config_file("lm/tiny")
    apply_override(config, "optimizer.name", "signum")
    config, workdir = parse_config_args(["--workdir", "runs/x", "--config.train.steps=10"],
                                        default_config="lm/tiny")

Used by the CLI, the sweep, the packaged configs and the benchmarks; it imports
nothing of signflax but ``outcomes``.
"""

from __future__ import annotations

import ast
import importlib.util
import pathlib
from typing import Any, Sequence

import ml_collections

from signflax.outcomes import UsageError, one_line

# Configs that ship inside the package: `--config lm/tiny` names signflax/configs/lm/tiny.py.
PACKAGED_CONFIGS = pathlib.Path(__file__).resolve().parent / "configs"


def packaged_config_names() -> list[str]:
  """``lm/tiny``, ``linreg/data_scaling``, ...: the configs shipped in ``signflax/configs``."""
  return sorted(p.relative_to(PACKAGED_CONFIGS).with_suffix("").as_posix()
                for p in PACKAGED_CONFIGS.rglob("*.py") if not p.name.startswith("_"))


def resolve_config_path(name_or_path: str | pathlib.Path) -> pathlib.Path:
  """A config file path, or a packaged name (``lm/tiny`` or ``lm/tiny.py``) -> its file."""
  path = pathlib.Path(name_or_path)
  if path.is_file():
    return path
  packaged = (PACKAGED_CONFIGS / path).with_suffix(".py")
  if not path.is_absolute() and packaged.is_file():
    return packaged
  raise UsageError(f"--config: no such file {str(name_or_path)!r} and no packaged config of "
                   f"that name; packaged: {', '.join(packaged_config_names())}")


def load_config_file(path: str | pathlib.Path) -> ml_collections.ConfigDict:
  """Imports the config file (or packaged config name) ``path``; returns its ``get_config()``."""
  path = resolve_config_path(path)
  spec = importlib.util.spec_from_file_location(f"_signflax_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # noqa: BLE001 - any failure of user code is bad input
    raise UsageError(f"--config: {path} failed to import: {type(e).__name__}: "
                     f"{one_line(e)}") from e
  if not hasattr(module, "get_config"):
    raise UsageError(f"--config: {path} defines no get_config()")
  try:
    config = module.get_config()
  except Exception as e:  # noqa: BLE001 - any failure of user code is bad input
    raise UsageError(f"--config: {path}: get_config() raised {type(e).__name__}: "
                     f"{one_line(e)}") from e
  if not isinstance(config, ml_collections.ConfigDict):
    raise UsageError(f"--config: {path}: get_config() must return an ml_collections.ConfigDict")
  return config


def parse_value(text: str) -> Any:
  """Parses an override value: a Python literal, else true/false/none, else the string."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    pass
  lowered = text.lower()
  if lowered in ("true", "false"):
    return lowered == "true"
  if lowered in ("none", "null"):
    return None
  return text


def _coerce(where: str, old: Any, new: Any) -> Any:
  """Converts ``new`` to the type of the value it replaces, or raises UsageError."""
  if old is None or new is None:
    return new
  if isinstance(old, bool):
    if isinstance(new, bool):
      return new
    raise UsageError(f"{where}: expected true or false, got {new!r}")
  if isinstance(old, int) and isinstance(new, int) and not isinstance(new, bool):
    return new
  if isinstance(old, float) and isinstance(new, (int, float)) and not isinstance(new, bool):
    return float(new)
  if isinstance(old, str):
    return str(new)
  if isinstance(old, (tuple, list)) and isinstance(new, (tuple, list)):
    return type(old)(new)
  if isinstance(old, ml_collections.ConfigDict):
    raise UsageError(f"{where}: is a group of fields; set one of "
                     f"{', '.join(sorted(old.keys()))}")
  if type(new) is type(old):
    return new
  raise UsageError(f"{where}: expected {type(old).__name__}, got {new!r} "
                   f"({type(new).__name__})")


def set_field(config: ml_collections.ConfigDict, dotted: str, value: Any,
              where: str | None = None) -> None:
  """Sets ``config.<dotted> = value``, type-checked against the value it replaces (an int
  field takes ints, a float field ints or floats, ...). Errors name ``where`` (default
  ``--config.<dotted>``) and raise UsageError."""
  where = where or f"--config.{dotted}"
  *parents, leaf = dotted.split(".")
  node = config
  walked = []
  for name in parents:
    walked.append(name)
    if name not in node or not isinstance(node[name], ml_collections.ConfigDict):
      raise UsageError(f"{where}: no field {'.'.join(walked)!r}; fields here: "
                       f"{', '.join(sorted(node.keys()))}")
    node = node[name]
  if leaf not in node:
    group = f"config.{'.'.join(parents)}" if parents else "config"
    raise UsageError(f"{where}: no field {dotted!r}; fields of {group}: "
                     f"{', '.join(sorted(node.keys()))}")
  with node.unlocked():
    node[leaf] = _coerce(where, node[leaf], value)


def apply_override(config: ml_collections.ConfigDict, dotted: str, text: str) -> None:
  """Sets ``config.<dotted> = parse_value(text)``, type-checked against the old value."""
  set_field(config, dotted, parse_value(text))


def split_overrides(argv: Sequence[str]) -> tuple[list[tuple[str, str]], list[str]]:
  """``--config.<field>=<value>`` (or ``--config.<field> <value>``) arguments ->
  ``([(field, value), ...], the other arguments)``."""
  overrides, rest = [], []
  args = list(argv)
  while args:
    arg = args.pop(0)
    key, eq, value = arg.partition("=")
    if not key.startswith("--config."):
      rest.append(arg)
      continue
    if not eq:
      if not args:
        raise UsageError(f"{key}: needs a value")
      value = args.pop(0)
    overrides.append((key[len("--config."):], value))
  return overrides, rest


def parse_config_args(argv: Sequence[str], default_config: str | pathlib.Path
                      ) -> tuple[ml_collections.ConfigDict, str | None]:
  """Parses ``[--config FILE] [--workdir DIR] [--config.x=v ...]`` into (config, workdir)."""
  config_path, workdir = None, None
  overrides, args = split_overrides(argv)
  while args:
    arg = args.pop(0)
    key, eq, value = arg.partition("=")
    if key in ("--config", "--workdir"):
      if not eq:
        if not args:
          raise UsageError(f"{key}: needs a value")
        value = args.pop(0)
      if key == "--config":
        config_path = value
      else:
        workdir = value
    else:
      raise UsageError(f"unknown argument {arg!r}; allowed: --config FILE, --workdir DIR, "
                       "--config.<field>=<value>")
  config = load_config_file(config_path or default_config)
  for dotted, value in overrides:
    apply_override(config, dotted, value)
  return config, workdir
