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
import importlib
import sys
import traceback
from typing import Sequence

from signflax import outcomes
from signflax import storage
from signflax.config_io import packaged_config_names, parse_config_args
from signflax.outcomes import UsageError, one_line
from signflax.train import checkpoint_errors


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
    "export": ("signflax.train.export",
               "write a checkpoint's parameters to an .npz file or a Hugging Face directory"),
    "sample": ("signflax.train.sample", "sample text from a trained run (KV-cache decoding)"),
    "eval": ("signflax.train.evaluate",
             "evaluate a trained run: nats/token, perplexity, bits per byte"),
    "sweep": ("signflax.experiments.sweep",
              "run a grid of trainer runs (e.g. --config sweeps/demo_curves); --list, --point i"),
    "fit": ("signflax.experiments.fits",
            "fit a scaling law to a sweep: --sweep DIR --law collapse|predict|..."),
    "fault-sweep": ("signflax.experiments.fault_sweep",
                    "train with faulty replicas (mean vs sign_vote, data=8) and report"),
    "compile": ("signflax.tpu.compile",
                "compile the train step for a TPU topology on this host: HBM fit, estimated "
                "step time (--topology v5e:4x4; --search)"),
}


ALLOW_CONFIG_CHANGE = "--allow-config-change"


def _report_error(command: str, message: str, code: int = 2) -> int:
  print(f"signflax {command}: error: {message}", file=sys.stderr)
  return code


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
    return _report_error(command, one_line(e))
  result = (module.run(config, workdir, allow_config_change=True) if allow_change
            else module.run(config, workdir))
  return outcomes.exit_code(result)


def main(argv: Sequence[str] | None = None) -> int:
  """Runs one command. A typed outcome (``signflax.outcomes``) is one line and its exit
  code (bad input: 2); a bug is a traceback and exit 1."""
  argv = list(sys.argv[1:] if argv is None else argv)
  checkpoint_errors.quiet_background_noise()  # process-wide hooks, installed once, here
  try:
    return _main(argv)
  except outcomes.SignflaxError as e:
    command = argv[0] if argv else "signflax"
    if e.exit_code:
      return _report_error(command, one_line(e), e.exit_code)
    print(f"signflax {command}: {one_line(e)}", file=sys.stderr)
    return 0
  except KeyboardInterrupt:
    return 130
  except Exception:  # noqa: BLE001 - an error nobody expected: show it whole, ask for a report
    traceback.print_exc()
    print("signflax: internal error (the traceback above is a bug, not bad input); please "
          "report it with the command line that caused it", file=sys.stderr, flush=True)
    return 1


def _main(argv: list[str]) -> int:
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
