"""`signflax <command>`: the command-line entry point.

Config-driven commands (``train``, ``linreg``) share one protocol::

    signflax train  [--config lm/tiny] --workdir DIR [--config.optimizer.name=muon ...]
    signflax linreg [--config linreg/data_scaling] --workdir DIR [--config.d=4000 ...]

``--config`` takes a file path or the name of a config shipped in
``signflax/configs`` (``lm/tiny``, ``linreg/data_scaling``, ...). The config file
exposes ``get_config() -> ml_collections.ConfigDict``; every
``--config.<dotted.field>=<value>`` override is parsed as a Python literal and
type-checked against the field it replaces. Each command's module provides
``validate(config)`` (raises ``ValueError`` with a one-line message) and
``run(config, workdir)``. Bad input of any kind — an unknown flag, a missing or
broken config file, an unknown field, a value of the wrong type, or a
``validate`` failure — prints ``signflax <command>: error: <message>`` and
exits with code 2 before any device work starts.

Other commands (``prepare-data``) take their own arguments and expose
``main(argv) -> int``.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import pathlib
import sys
import traceback
from typing import Any, Sequence

import ml_collections

from signflax import storage

# Configs that ship inside the package: `--config lm/tiny` names signflax/configs/lm/tiny.py.
PACKAGED_CONFIGS = pathlib.Path(__file__).resolve().parent / "configs"

# command -> (module with validate/run, default packaged config, help)
CONFIG_COMMANDS = {
    "train": ("signflax.train.trainer", "lm/tiny",
              "train a LLaMA-style transformer (default: the tiny CPU config)"),
    "linreg": ("signflax.experiments.linreg", "linreg/data_scaling",
               "run a power-law linear-regression experiment"),
}
# command -> (module with main(argv) -> int, help)
PLAIN_COMMANDS = {
    "prepare-data": ("signflax.data.prepare",
                     "tokenize text files into ArrayRecord shards for training"),
    "export": ("signflax.train.export", "write a checkpoint's parameters to an .npz file"),
    "sweep": ("signflax.experiments.sweep",
              "run a grid of trainer runs (e.g. --config sweeps/demo_curves); --list, --point i"),
    "fit": ("signflax.experiments.fits",
            "fit a scaling law to a sweep: --sweep DIR --law collapse|predict|..."),
}


class UsageError(ValueError):
  """Bad command-line input; reported as one line with exit code 2."""


def _one_line(error: BaseException) -> str:
  return " ".join(str(error).split())


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
                     f"{_one_line(e)}") from e
  if not hasattr(module, "get_config"):
    raise UsageError(f"--config: {path} defines no get_config()")
  try:
    config = module.get_config()
  except Exception as e:  # noqa: BLE001 - any failure of user code is bad input
    raise UsageError(f"--config: {path}: get_config() raised {type(e).__name__}: "
                     f"{_one_line(e)}") from e
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


def _coerce(field: str, old: Any, new: Any) -> Any:
  """Converts ``new`` to the type of the value it replaces, or raises UsageError."""
  if old is None or new is None:
    return new
  if isinstance(old, bool):
    if isinstance(new, bool):
      return new
    raise UsageError(f"--config.{field}: expected true or false, got {new!r}")
  if isinstance(old, int) and isinstance(new, int) and not isinstance(new, bool):
    return new
  if isinstance(old, float) and isinstance(new, (int, float)) and not isinstance(new, bool):
    return float(new)
  if isinstance(old, str):
    return str(new)
  if isinstance(old, (tuple, list)) and isinstance(new, (tuple, list)):
    return type(old)(new)
  if isinstance(old, ml_collections.ConfigDict):
    raise UsageError(f"--config.{field}: is a group of fields; set one of "
                     f"{', '.join(sorted(old.keys()))}")
  if type(new) is type(old):
    return new
  raise UsageError(f"--config.{field}: expected {type(old).__name__}, got {new!r}")


def apply_override(config: ml_collections.ConfigDict, dotted: str, text: str) -> None:
  """Sets ``config.<dotted> = parse_value(text)``, type-checked against the old value."""
  *parents, leaf = dotted.split(".")
  node = config
  walked = []
  for name in parents:
    walked.append(name)
    if name not in node or not isinstance(node[name], ml_collections.ConfigDict):
      raise UsageError(f"--config.{dotted}: no field {'.'.join(walked)!r}; fields here: "
                       f"{', '.join(sorted(node.keys()))}")
    node = node[name]
  if leaf not in node:
    where = f"config.{'.'.join(parents)}" if parents else "config"
    raise UsageError(f"--config.{dotted}: {where} has no field {leaf!r}; fields: "
                     f"{', '.join(sorted(node.keys()))}")
  with node.unlocked():
    node[leaf] = _coerce(dotted, node[leaf], parse_value(text))


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


ALLOW_CONFIG_CHANGE = "--allow-config-change"


def _report_error(command: str, message: str) -> int:
  print(f"signflax {command}: error: {message}", file=sys.stderr)
  return 2


def run_config_command(command: str, argv: Sequence[str]) -> int:
  module_name, default, _ = CONFIG_COMMANDS[command]
  # train: accept a resume whose config changes train.seed (see signflax.train.recovery)
  allow_change = command == "train" and ALLOW_CONFIG_CHANGE in argv
  argv = [a for a in argv if not (allow_change and a == ALLOW_CONFIG_CHANGE)]
  try:
    config, workdir = parse_config_args(argv, default)
    if workdir is None:
      raise UsageError("--workdir: required (a directory for results, logs and checkpoints)")
    module = importlib.import_module(module_name)
    module.validate(config)
  except (ValueError, TypeError) as e:  # UsageError and every validate() failure
    return _report_error(command, _one_line(e))
  result = (module.run(config, workdir, allow_config_change=True) if allow_change
            else module.run(config, workdir))
  return int(result or 0)


def main(argv: Sequence[str] | None = None) -> int:
  """Runs one command; bad input is one line and exit 2, a bug a traceback and exit 1."""
  try:
    return _main(argv)
  except KeyboardInterrupt:
    return 130
  except Exception:  # noqa: BLE001 - an error nobody expected: show it whole, ask for a report
    traceback.print_exc()
    print("signflax: internal error (the traceback above is a bug, not bad input); please "
          "report it with the command line that caused it", file=sys.stderr, flush=True)
    return 1


def _main(argv: Sequence[str] | None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  commands = {**{k: v[2] for k, v in CONFIG_COMMANDS.items()},
              **{k: v[1] for k, v in PLAIN_COMMANDS.items()}}
  if not argv or argv[0] in ("-h", "--help"):
    parser = argparse.ArgumentParser(prog="signflax", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(title="commands", metavar="<command>")
    for name, help_text in commands.items():
      sub.add_parser(name, help=help_text)
    parser.print_help()
    return 0 if argv else 2
  command, rest = argv[0], argv[1:]
  storage.configure_clients()  # a GCS emulator, if STORAGE_EMULATOR_HOST names one
  if command in CONFIG_COMMANDS:
    if rest and rest[0] in ("-h", "--help"):
      print(f"usage: signflax {command} [--config FILE|NAME] --workdir DIR "
            "[--config.<field>=<value> ...]"
            f"\n  --config: a file or a packaged name (default {CONFIG_COMMANDS[command][1]}); "
            f"packaged: {', '.join(packaged_config_names())}")
      return 0
    return run_config_command(command, rest)
  if command in PLAIN_COMMANDS:
    return int(importlib.import_module(PLAIN_COMMANDS[command][0]).main(rest) or 0)
  return _report_error(command, f"unknown command; allowed: {', '.join(commands)}")


if __name__ == "__main__":
  sys.exit(main())
