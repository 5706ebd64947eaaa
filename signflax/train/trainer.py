"""``signflax train``: validate a config, then train, evaluate and log.

    signflax train --config lm/tiny --workdir runs/tiny --config.optimizer.name=signum

Config groups: ``model`` (``signflax.model.TransformerConfig`` fields),
``optimizer``, ``data`` (``signflax.data.default_data_config()``), ``mesh``
(data/fsdp/tensor sizes, -1 = the rest), ``train``, ``checkpoint`` and
``distributed``; see ``signflax/configs/lm/tiny.py`` for every field. ``workdir``
receives ``config.json``, ``metrics.jsonl``, TensorBoard events under ``tb/``
and Orbax checkpoints under ``checkpoints/``. A run started in a workdir that
holds checkpoints resumes from the latest readable one (see
``signflax.train.checkpoint``); SIGTERM saves a checkpoint and exits 0.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
import shutil
import sys
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from signflax import data as data_lib
from signflax import model as model_lib
from signflax import parallel
from signflax.train import checkpoint as checkpoint_lib
from signflax.train import metrics as metrics_lib
from signflax.train import optimizer as optimizer_lib
from signflax.train import preemption
from signflax.train import schema
from signflax.train import setup as setup_lib

def _log(message: str) -> None:
  """Progress notes on stderr, from process 0 only."""
  if jax.process_index() == 0:
    print(message, file=sys.stderr, flush=True)


def validate(config) -> None:
  """Every check before compilation; raises a one-line ValueError naming the field.

  Starts ``jax.distributed`` first (multi-process runs), so the checks see the
  whole job's devices and processes: types and ranges from ``schema.SCHEMA``,
  then what needs the tokenizer, the data files and the device count.
  """
  missing = [g for g in schema.GROUPS if g not in config]
  if missing:
    raise ValueError(f"config: missing group(s) {', '.join(missing)}; a train config has "
                     f"{', '.join(schema.GROUPS)}")
  optimizer_lib.check_keyword_groups(config.optimizer)
  schema.SCHEMA.check(config)
  t = config.train
  optimizer_lib.check_optimizer(config.optimizer, t.steps)
  parallel.maybe_initialize_distributed(config)
  data_lib.validate(config.data, seq_len=t.seq_len, global_batch_size=t.global_batch_size,
                    process_count=jax.process_count())
  vocab = data_lib.build_tokenizer(config.data).vocab_size
  cfg = setup_lib.transformer_config(config, vocab)
  cfg.check()
  if cfg.vocab_size < vocab:
    raise ValueError(f"config.model.vocab_size: {cfg.vocab_size} is smaller than the "
                     f"tokenizer's {vocab} (set it to None to follow the tokenizer)")
  if t.seq_len > cfg.max_seq_len:
    raise ValueError(f"config.train.seq_len: {t.seq_len} is longer than the model's context "
                     f"config.model.max_seq_len={cfg.max_seq_len}")
  shape = dict(zip(parallel.MESH_AXES,
                   parallel.resolve_mesh_shape(config.mesh, jax.device_count())))
  batch_shards = shape["data"] * shape["fsdp"]
  if batch_shards % jax.process_count():
    # Each process feeds its own rows of the batch: the batch axes must span the processes.
    raise ValueError(f"config.mesh: the batch axes data*fsdp={batch_shards} of mesh {shape} do "
                     f"not span the {jax.process_count()} processes ("
                     f"{jax.local_device_count()} device(s) each); make data*fsdp a multiple "
                     f"of {jax.process_count()}")
  micro = t.global_batch_size // t.grad_accum
  if micro % batch_shards:
    raise ValueError(f"config.train.global_batch_size: {t.global_batch_size} (microbatch "
                     f"{micro} with grad_accum={t.grad_accum}) is not divisible by the "
                     f"data-parallel size data*fsdp={batch_shards} of mesh {shape}")


def _global_batch(local: dict, sharding) -> dict:
  """This process's rows -> one global jax.Array per field, sharded over (data, fsdp)."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v, np.int32))
          for k, v in local.items()}


class Evaluator:
  """Mean eval loss over the first ``eval_batches`` global batches of the eval split.

  The eval windows are listed once; each call starts a fresh pass over them, so
  every evaluation sees the same tokens.
  """

  def __init__(self, run: setup_lib.Run):
    self.run = run
    t = run.config.train
    self._iterator_args = dict(split="eval", seq_len=t.seq_len,
                               global_batch_size=t.global_batch_size, seed=t.seed,
                               process_index=jax.process_index(),
                               process_count=jax.process_count())
    self._num_batches = t.eval_batches or sys.maxsize

  def __call__(self, params) -> float:
    it = data_lib.make_iterator(self.run.config.data, **self._iterator_args)
    losses = [self.run.eval_step(params, _global_batch(batch, self.run.batch_sharding))
              for _, batch in zip(range(self._num_batches), it)]
    return float(np.mean(jax.device_get(losses)))


def _loop_extra(train_iter, loss_sum, interval_start: int, skipped) -> dict:
  """The JSON checkpoint item: data position and the open logging interval."""
  return {"data": train_iter.get_state(),
          "loop": {"loss_sum": checkpoint_lib.scalar_to_json(loss_sum),
                   "interval_start": interval_start,
                   "skipped_steps": checkpoint_lib.scalar_to_json(skipped)}}


@dataclasses.dataclass
class _Loop:
  """What the loop reads besides the state: built once by ``run``."""
  run: setup_lib.Run
  train_step: Any      # compiled
  train_iter: Any
  evaluate: Evaluator
  writer: metrics_lib.MetricWriter
  ckpt: checkpoint_lib.Checkpointer
  stopper: preemption.PreemptionHandler


def _train_loop(loop: _Loop, state, resumed: dict):
  """Steps from ``state.step`` to ``config.train.steps``; logs every ``log_every`` steps.

  Logged train_loss is the mean over the interval; the other train metrics are
  the interval's last step. Saves every ``checkpoint.every_steps``, at the last
  step, and at the step a preemption notice is agreed on (then returns early).
  ``resumed`` is the checkpoint's open logging interval ({} for a fresh run).
  Returns ``(state, last logged metrics, preempted)``.
  """
  config, run = loop.run.config, loop.run
  t, c = config.train, config.checkpoint
  tokens_per_step = t.global_batch_size * t.seq_len
  flops_per_token = model_lib.flops_per_token(run.model, t.seq_len)
  peak_flops = metrics_lib.peak_flops_per_device()
  progress = metrics_lib.ProgressBar(t.steps, enabled=jax.process_index() == 0)
  first = int(state.step) + 1
  # A resumed run continues the interval the checkpoint cut, so its logged mean is unchanged.
  last_step = resumed.get("interval_start", first - 1)
  loss_sum = jnp.float32(resumed.get("loss_sum", 0.0))
  skipped = jnp.float32(resumed.get("skipped_steps", 0.0))
  last_time, timed_from, out, preempted = time.monotonic(), first - 1, {}, False
  last_saved = loop.ckpt.all_steps()[-1] if loop.ckpt.all_steps() else None
  for step in range(first, t.steps + 1):
    state, step_metrics = loop.train_step(
        state, _global_batch(next(loop.train_iter), run.batch_sharding))
    # Sums stay on device: reading a value each step would wait for the step to finish.
    loss_sum = loss_sum + step_metrics["loss"]
    if "nonfinite" in step_metrics:
      skipped = skipped + step_metrics["nonfinite"]
    preempted = loop.stopper.should_stop(step)
    save = preempted or step == t.steps or (c.every_steps and step % c.every_steps == 0)
    log = step % t.log_every == 0 or step == t.steps
    if not (save or log):
      continue
    # The one host sync of a logged or saved step.
    host = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
    if c.nan_policy == "stop":  # before saving: a NaN state is never checkpointed
      preemption.check_finite(step, host, last_saved)
    if log:
      out = host
      step_time = (time.monotonic() - last_time) / (step - timed_from)
      tokens_per_s = tokens_per_step / step_time
      out["step_loss"] = out.pop("loss")
      out["tokens"] = step * tokens_per_step  # cumulative
      if config.optimizer.grad_clip_norm:  # grad_l2 is the raw norm; clipping is in the tx
        out["grad_norm_clipped"] = min(out["grad_l2"], config.optimizer.grad_clip_norm)
      out.update(train_loss=float(loss_sum) / (step - last_step), step_time_s=step_time,
                 tokens_per_s=tokens_per_s,
                 mfu=(flops_per_token * tokens_per_s / (peak_flops * jax.device_count())
                      if peak_flops else None))
      if "nonfinite" in out:
        out["skipped_steps"] = float(skipped)
      if (t.eval_every and step % t.eval_every == 0) or step == t.steps:
        out["eval_loss"] = loop.evaluate(state.params)
      loop.writer.write(step, out)
      progress.update(step, out["train_loss"], tokens_per_s)
      loss_sum, last_step = jnp.zeros((), jnp.float32), step
      # Evaluation and logging are not part of the next interval's step time.
      last_time, timed_from = time.monotonic(), step
    if save:
      loop.ckpt.save(step, state, _loop_extra(loop.train_iter, loss_sum, last_step, skipped))
      last_saved = step
    if preempted:
      loop.writer.flush()
      _log(f"preempted: checkpoint saved at step {step}; start the same command again to "
           "resume")
      break
  progress.close()
  return state, out, preempted


def _same_job(workdir: pathlib.Path, config) -> bool:
  """Whether ``workdir/config.json`` is this config (the ``distributed`` group aside)."""
  try:
    old = json.loads((workdir / "config.json").read_text())
  except (OSError, ValueError):
    return False
  new = json.loads(config.to_json_best_effort())
  old.pop("distributed", None)
  new.pop("distributed", None)
  return old == new


def _unwritable(workdir: pathlib.Path) -> str | None:
  """Why ``workdir`` cannot be created or written (None if it can); writes nothing lasting."""
  if workdir.exists() and not workdir.is_dir():
    return f"--workdir: {workdir} exists and is not a directory"
  existing = workdir
  while not existing.exists():  # the nearest ancestor that exists: mkdir -p starts there
    existing = existing.parent
  if not existing.is_dir():
    return f"--workdir: {workdir} cannot be created: {existing} is a file, not a directory"
  try:  # probe: permissions alone miss read-only mounts and ACLs
    with tempfile.TemporaryFile(dir=existing):
      pass
  except OSError as e:
    return f"--workdir: {existing} is not writable ({e.strerror or e})"
  return None


def _warn_if_disk_short(workdir: pathlib.Path, checkpoint_bytes: int) -> None:
  existing = workdir
  while not existing.exists():
    existing = existing.parent
  free = shutil.disk_usage(existing).free
  if free < checkpoint_bytes:
    _log(f"signflax train: warning: {free / 2**20:.0f} MiB free under {existing}, less than "
         f"one checkpoint of this model (~{checkpoint_bytes / 2**20:.0f} MiB)")


def _workdir_error(workdir: pathlib.Path, config) -> str | None:
  """Why ``workdir`` cannot hold this run (None if it can); checked before any device work.

  A workdir with logs but no checkpoint is accepted only for the same config (a
  run stopped before its first checkpoint starts over; its records are appended).
  """
  error = _unwritable(workdir)
  if error:
    return error
  ckpt_dir = workdir / "checkpoints"
  has_checkpoints = ckpt_dir.is_dir() and any(p.name.isdigit() for p in ckpt_dir.iterdir())
  if ((workdir / "metrics.jsonl").exists() and not has_checkpoints
      and not _same_job(workdir, config)):
    return (f"--workdir: {workdir} already holds metrics.jsonl from an earlier run with "
            "another config and no checkpoint to resume from; choose a new directory "
            "(nothing was changed)")
  return None


def _error(message: str) -> int:
  """Reports a run that cannot go on as one line; returns exit code 2."""
  print(f"signflax train: error: {message}", file=sys.stderr, flush=True)
  return 2


def _checkpointer(config, workdir: pathlib.Path) -> checkpoint_lib.Checkpointer:
  c = config.checkpoint
  return checkpoint_lib.Checkpointer(workdir / "checkpoints", every_steps=c.every_steps or 1,
                                     keep=c.keep, keep_period=c.keep_period,
                                     async_save=c.async_save)


def run(config, workdir: str) -> int:
  """Trains ``config`` and writes results to ``workdir``; returns the exit code.

  ``config`` is validated (``validate``). Resumes from ``workdir/checkpoints``
  when it holds a checkpoint. Exit codes: 0 done or preempted (checkpoint
  saved), 1 non-finite loss, 2 bad workdir or an incompatible/unreadable
  checkpoint (nothing in the workdir is changed).
  """
  workdir = pathlib.Path(workdir)
  error = _workdir_error(workdir, config)
  if error:
    return _error(error)
  parallel.maybe_initialize_distributed(config)
  t = config.train
  is_main = jax.process_index() == 0
  tokenizer = data_lib.build_tokenizer(config.data)
  start = time.monotonic()
  run_ = setup_lib.setup(config, vocab_size=tokenizer.vocab_size)
  _warn_if_disk_short(workdir, sum(x.size * x.dtype.itemsize
                                   for x in jax.tree.leaves(run_.abstract_state)))

  with contextlib.ExitStack() as stack, jax.set_mesh(run_.mesh):
    ckpt = _checkpointer(config, workdir)
    stack.callback(ckpt.close)
    try:
      restored = ckpt.restore_latest(run_.abstract_state)
    except (checkpoint_lib.IncompatibleCheckpointError, RuntimeError) as e:
      return _error(str(e).replace("\n", " "))
    if restored is None:
      state = run_.init_state()
    elif int(restored.state.step) >= t.steps:
      _log(f"nothing to do: {workdir} holds a checkpoint at step {int(restored.state.step)} "
           f">= config.train.steps={t.steps}")
      return 0
    else:
      state = restored.state

    # Only now is the workdir written to: every check that could refuse the run has passed.
    if is_main:
      workdir.mkdir(parents=True, exist_ok=True)
      if restored is None or not (workdir / "config.json").exists():
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
    writer = metrics_lib.MetricWriter(workdir, enabled=is_main)
    stack.callback(writer.close)
    model = run_.model
    _log(f"model: {run_.num_params / 1e6:.2f}M params, {model.num_layers} layers x "
         f"{model.d_model} wide, vocab {model.vocab_size}, {model.dtype} compute | mesh "
         f"{dict(run_.mesh.shape)} on {jax.device_count()} x {jax.devices()[0].device_kind}")
    if restored is not None:
      _log(f"resumed from the checkpoint at step {restored.step} in {ckpt.directory}")
    unigram = data_lib.unigram_entropy(config.data, split="eval")
    _log(f"data: {tokenizer.name} tokens; eval split unigram entropy {unigram:.4f} nats/token "
         "(a context-free model's best loss)")

    train_iter = data_lib.make_iterator(config.data, split="train", seq_len=t.seq_len,
                                        global_batch_size=t.global_batch_size, seed=t.seed,
                                        process_index=jax.process_index(),
                                        process_count=jax.process_count())
    if restored is not None:
      train_iter.set_state(restored.extra["data"])
    # Compile ahead of time, so compile_time_s is the compile alone.
    train_step = run_.train_step.lower(state, run_.abstract_batch()).compile()
    compile_s = time.monotonic() - start
    evaluate = Evaluator(run_)
    eval_loss = evaluate(state.params)
    record = {"eval_loss": eval_loss, "eval_unigram_entropy": unigram,
              "num_params": run_.num_params, "compile_time_s": compile_s}
    if restored is not None:
      record["resumed_from_step"] = restored.step
      writer.resume(restored.step)
    writer.write(int(state.step), record)
    _log(f"compiled in {compile_s:.1f}s; step {int(state.step)} eval loss {eval_loss:.4f}")

    train_start, first_step = time.monotonic(), int(state.step)
    stopper = preemption.PreemptionHandler(
        check_every=config.checkpoint.preemption_check_every)
    stack.callback(stopper.restore)
    loop = _Loop(run_, train_step, train_iter, evaluate, writer, ckpt, stopper)
    try:
      state, last, preempted = _train_loop(
          loop, state, restored.extra.get("loop", {}) if restored else {})
    except preemption.NonFiniteError as e:
      print(f"signflax train: error: {e}", file=sys.stderr, flush=True)
      return 1
  if preempted:
    return 0
  tokens_per_s = t.global_batch_size * t.seq_len * (t.steps - first_step) / (
      time.monotonic() - train_start)
  _log(f"done: {t.steps} steps in {time.monotonic() - start:.0f}s (compile {compile_s:.0f}s) | "
       f"final eval loss {last.get('eval_loss', float('nan')):.4f} nats/token vs eval unigram "
       f"entropy {unigram:.4f} | {tokens_per_s:,.0f} tokens/s with evals | {workdir}")
  return 0
