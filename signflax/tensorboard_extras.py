"""TensorBoard conventions shared by every writer: tag groups, hparams and config text.

Tags are grouped the way MaxText and Levanter dashboards are: ``train/``,
``eval/``, ``optim/`` and ``perf/`` (``tensorboard_tag``); ``metrics.jsonl``
keeps the plain names. ``write_hparams`` puts a run's swept values in the
HParams dashboard and its whole config in the Text dashboard. Imports only
the ``tensorboard`` package (no TensorFlow).
"""

from __future__ import annotations

import json
import pathlib
import shutil
import tempfile
import time
from typing import Any, Mapping

from signflax import storage

_GROUPS = {
    "train": ("train_loss", "step_loss", "tokens", "skipped_steps", "resumed_from_step"),
    "eval": ("eval_loss", "eval_unigram_entropy"),
    "optim": ("learning_rate", "grad_l1", "grad_l2", "grad_norm", "grad_norm_clipped",
              "update_rms", "param_l2"),
    "perf": ("step_time_s", "tokens_per_s", "mfu", "compile_time_s", "num_params"),
}
_GROUP_OF = {name: group for group, names in _GROUPS.items() for name in names}


def tensorboard_tag(name: str) -> str:
  """The TensorBoard tag of metric ``name``: ``train_loss`` -> ``train/train_loss``.

  Gradient-noise statistics go to ``optim/``; names already carrying a known
  group prefix are kept; anything else goes to ``train/``.
  """
  head = name.split("/", 1)[0]
  if head in _GROUPS:
    return name
  if name in _GROUP_OF:
    return f"{_GROUP_OF[name]}/{name}"
  if name.startswith(("noise", "grad_")):
    return f"optim/{name}"
  return f"train/{name}"


def _hparam_value(value: Any):
  if isinstance(value, (bool, int, float, str)):
    return value
  return json.dumps(value)


def write_hparams(logdir: str | pathlib.Path, hparams: Mapping[str, Any], config=None) -> None:
  """Writes ``hparams`` (HParams dashboard) and ``config`` as text into ``logdir``.

  A separate event file next to the run's scalars: TensorBoard merges every
  event file of a directory, so the metric writer stays untouched.
  """
  from tensorboard.compat.proto import event_pb2  # noqa: PLC0415
  from tensorboard.plugins.hparams import summary_v2 as hparams_summary  # noqa: PLC0415
  from tensorboard.plugins.text import summary_v2 as text_summary  # noqa: PLC0415
  from tensorboard.summary.writer.event_file_writer import EventFileWriter  # noqa: PLC0415
  remote = storage.is_remote(logdir)  # object storage: write locally, upload the file
  local = tempfile.mkdtemp(prefix="signflax-hparams-") if remote else str(logdir)
  writer = EventFileWriter(local, filename_suffix=".hparams")
  now = time.time()
  summaries = [hparams_summary.hparams_pb({k: _hparam_value(v) for k, v in hparams.items()},
                                          start_time_secs=now)]
  if config is not None:
    text = config.to_json_best_effort(indent=2) if hasattr(config, "to_json_best_effort") \
        else json.dumps(config, indent=2)
    # Markdown: indent by four spaces so the dashboard shows it as a code block.
    summaries.append(text_summary.text_pb("config", "\n".join("    " + line
                                                              for line in text.splitlines())))
  for summary in summaries:
    writer.add_event(event_pb2.Event(wall_time=now, step=0, summary=summary))
  writer.close()
  if remote:
    storage.upload_dir(local, storage.path(logdir))
    shutil.rmtree(local, ignore_errors=True)
