"""A finished (or running) training run, read back for use: config, model, tokenizer, params.

    trained = load("runs/tiny", step=None, overrides=[("mesh.fsdp", "8")])
    trained.params          # sharded as in training over trained.mesh
    trained.model           # TransformerConfig; trained.graphdef; trained.tokenizer

``sample``, ``eval`` and the Hugging Face export start here. Every problem
with the workdir (missing, no ``config.json``, no checkpoint, no such step)
is a one-line ``outcomes.BadInput`` naming the argument.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Sequence

import ml_collections
from jax.sharding import Mesh

from signflax import config_io
from signflax import data as data_lib
from signflax import model as model_lib
from signflax import parallel
from signflax.outcomes import BadInput, UsageError
from signflax.train import recovery
from signflax.train import setup as setup_lib

# The config fields a command over a trained run may override (how, not what, to compute).
OVERRIDABLE = ("mesh.",)


@dataclasses.dataclass(frozen=True)
class Trained:
  """A run's config and parameters, placed on a mesh."""
  workdir: pathlib.Path
  config: ml_collections.ConfigDict
  model: model_lib.TransformerConfig
  graphdef: Any
  param_axes: Any
  tokenizer: data_lib.Tokenizer
  mesh: Mesh
  params: Any
  step: int | None


def run_config(workdir: str | pathlib.Path,
               overrides: Sequence[tuple[str, str]] = ()) -> ml_collections.ConfigDict:
  """``workdir/config.json`` as a ConfigDict with ``overrides`` (``mesh.*`` only) applied."""
  path = pathlib.Path(workdir).expanduser()
  if not path.is_dir():
    raise BadInput(f"--workdir: {str(path)!r} is not a directory")
  saved = recovery.read_saved_config(path)
  if saved is None:
    raise BadInput(f"--workdir: {str(path)!r} has no readable config.json (not a signflax "
                   "train workdir, or a run that never started)")
  config = ml_collections.ConfigDict(saved)
  for dotted, value in overrides:
    if not dotted.startswith(OVERRIDABLE):
      allowed = ", ".join(f"--config.{o}*" for o in OVERRIDABLE)
      raise UsageError(f"--config.{dotted}: only {allowed} may be overridden here (the model "
                       "and data are the run's)")
    config_io.apply_override(config, dotted, value)
  return config


def model_config(config) -> model_lib.TransformerConfig:
  """The run's TransformerConfig (vocab from its tokenizer when the config says None)."""
  try:
    cfg = setup_lib.transformer_config(config)
    cfg.check()
  except ValueError as e:
    raise BadInput(str(e)) from e
  return cfg


def load(workdir: str | pathlib.Path, step: int | None = None,
         overrides: Sequence[tuple[str, str]] = ()) -> Trained:
  """The run in ``workdir`` at ``step`` (None = the latest checkpoint), sharded as in training."""
  if step is not None and step < 0:
    raise UsageError(f"--step: must be >= 0, got {step}")
  config = run_config(workdir, overrides)
  cfg = model_config(config)
  try:
    tokenizer = data_lib.build_tokenizer(config.data)
    mesh = parallel.make_mesh(config.mesh)
  except ValueError as e:
    raise BadInput(str(e)) from e
  graphdef, shapes, axes = model_lib.abstract_model(cfg)
  shardings = parallel.state_shardings(shapes, axes, mesh)
  from signflax.train import checkpoint  # pylint: disable=import-outside-toplevel
  try:
    params, step = checkpoint.read_params(workdir, step, sharding=shardings)
  except ValueError as e:
    raise BadInput(_argument_names(str(e))) from e
  return Trained(pathlib.Path(workdir), config, cfg, graphdef, axes, tokenizer, mesh, params,
                 step)


def _argument_names(message: str) -> str:
  """checkpoint's messages name its arguments; the commands name their flags."""
  for argument, flag in (("workdir_or_step_dir:", "--workdir:"), ("step:", "--step:")):
    if message.startswith(argument):
      return flag + message[len(argument):]
  return message


def final_eval_loss(workdir: str | pathlib.Path, step: int) -> float | None:
  """The eval loss ``metrics.jsonl`` logged at ``step`` (None if none was)."""
  path = pathlib.Path(workdir) / "metrics.jsonl"
  found = None
  if path.is_file():
    for line in path.read_text().splitlines():
      try:
        record = json.loads(line)
      except ValueError:
        continue
      if record.get("step") == step and "eval_loss" in record:
        found = float(record["eval_loss"])
  return found
