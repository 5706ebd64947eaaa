"""``signflax train``: validate a config, then train, evaluate and log.

    signflax train --config lm/tiny --workdir runs/tiny --config.optimizer.name=signum

Config groups: ``model`` (``signflax.model.TransformerConfig`` fields),
``optimizer``, ``data`` (``signflax.data.default_data_config()``), ``mesh``
(data/fsdp/tensor sizes, -1 = the rest), ``train``, ``checkpoint`` and
``distributed``; ``docs/configuration.md`` lists every field. ``workdir``
receives ``config.json``, ``metrics.jsonl``, TensorBoard events under ``tb/``
and Orbax checkpoints under ``checkpoints/`` (``signflax.train.workdir``). A run started in a workdir that
holds checkpoints resumes from the latest readable one (see
``signflax.train.checkpoint``), after checking the config against the saved one
(``signflax.train.recovery``). SIGTERM saves a checkpoint and exits 0; SIGINT
(Ctrl-C) saves and exits 130.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import sys
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from signflax import data as data_lib
from signflax import metric_writers
from signflax import outcomes
from signflax import model as model_lib
from signflax import parallel
from signflax import storage
from signflax.train import checkpoint as checkpoint_lib
from signflax.train import faults as faults_lib
from signflax.train import metrics as metrics_lib
from signflax.train import optimizer as optimizer_lib
from signflax.train import preemption
from signflax.train import recovery
from signflax.train import schema
from signflax.train import setup as setup_lib
from signflax.train import workdir as workdir_lib

def _log(message: str) -> None:
  """Progress notes on stderr, from process 0 only."""
  if jax.process_index() == 0:
    print(message, file=sys.stderr, flush=True)


def validate(config) -> None:
  """Every check before compilation; raises a one-line ValueError naming the field.

  No side effects: types and ranges from ``schema.SCHEMA``, the optimizer's own
  checks, then what needs the tokenizer (read once per process) and the data
  files. The checks that need the job's devices and processes
  (``check_topology``) run here for a single-process job; a multi-process job
  runs them in ``run``, once ``jax.distributed`` has started.
  """
  missing = [g for g in schema.GROUPS if g not in config]
  if missing:
    raise ValueError(f"config: missing group(s) {', '.join(missing)}; a train config has "
                     f"{', '.join(schema.GROUPS)}")
  optimizer_lib.check_keyword_groups(config.optimizer)
  schema.SCHEMA.check(config)
  t = config.train
  optimizer_lib.check_optimizer(config.optimizer, t.steps)
  data_lib.validate(config.data, seq_len=t.seq_len, global_batch_size=t.global_batch_size,
                    process_count=1)
  vocab = data_lib.build_tokenizer(config.data).vocab_size
  cfg = setup_lib.transformer_config(config, vocab)
  if cfg.vocab_size < vocab:
    raise ValueError(f"config.model.vocab_size: {cfg.vocab_size} is smaller than the "
                     f"tokenizer's {vocab} (set it to None to follow the tokenizer)")
  if t.get("init_from"):
    from signflax.train import hf  # pylint: disable=import-outside-toplevel
    hf.check_dir(t.init_from, cfg)
  if t.seq_len > cfg.max_seq_len:
    raise ValueError(f"config.train.seq_len: {t.seq_len} is longer than the model's context "
                     f"config.model.max_seq_len={cfg.max_seq_len}")
  if not parallel.is_multi_process(config):
    check_topology(config)


def check_topology(config) -> None:
  """The checks that need the job's devices and processes (after ``jax.distributed``)."""
  t = config.train
  if t.global_batch_size % jax.process_count():
    raise ValueError(f"config.train.global_batch_size: {t.global_batch_size} is not divisible "
                     f"by the {jax.process_count()} processes; use a multiple of "
                     f"{jax.process_count()}")
  shape = dict(zip(parallel.MESH_AXES,
                   parallel.resolve_mesh_shape(config.mesh, jax.device_count())))
  error = faults_lib.check(t.get("faults"), shape["data"])
  if error:
    raise ValueError(error)
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
  writer: metric_writers.MetricWriter
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
  flops_per_token = model_lib.flops_per_token(run.model_config, t.seq_len)
  peak_flops = metrics_lib.peak_flops_per_device()
  progress = metric_writers.ProgressBar(t.steps, enabled=jax.process_index() == 0)
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
        out["skipped_steps"] = int(float(skipped))
      if (t.eval_every and step % t.eval_every == 0) or step == t.steps:
        out["eval_loss"] = loop.evaluate(state.params)
      loop.writer.write(step, out)
      progress.update(step, out["train_loss"], tokens_per_s)
      loss_sum, last_step = jnp.zeros((), jnp.float32), step
      # Evaluation and logging are not part of the next interval's step time.
      last_time, timed_from = time.monotonic(), step
    if save:
      extra = _loop_extra(loop.train_iter, loss_sum, last_step, skipped)
      loop.ckpt.save(step, _checkpointed(state), extra)
      loop.writer.flush()  # the logs up to a checkpoint reach the workdir with it
      last_saved = step
    if preempted:
      loop.writer.flush()
      _log(f"stopped: checkpoint saved at step {step}; start the same command again to "
           "resume")
      break
  progress.close()
  return state, out, preempted


def _same_job(workdir: epath.Path, config) -> bool:
  """Whether ``workdir/config.json`` is this config (the ``distributed`` group aside)."""
  old = recovery.read_saved_config(workdir)
  if old is None:
    return False
  new = json.loads(config.to_json_best_effort())
  old.pop("distributed", None)
  new.pop("distributed", None)
  return old == new


def _unwritable(workdir: epath.Path) -> str | None:
  """Why ``workdir`` cannot be created or written (None if it can); writes nothing lasting."""
  if storage.is_remote(workdir):  # bucket, credentials and a probe object
    return storage.access_error(workdir)
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


def _workdir_error(workdir: epath.Path, config) -> str | None:
  """Why ``workdir`` cannot hold this run (None if it can); checked before any device work.

  A workdir with logs but no checkpoint is accepted only for the same config (a
  run stopped before its first checkpoint starts over; its records are appended).
  """
  error = _unwritable(workdir)
  if error:
    return error
  layout = workdir_lib.Workdir(workdir)
  if (layout.metrics.exists() and not layout.has_checkpoint_dirs()
      and not _same_job(workdir, config)):
    return (f"--workdir: {workdir} already holds metrics.jsonl from an earlier run with "
            "another config and no checkpoint to resume from; choose a new directory "
            "(nothing was changed)")
  return None


def _checkpointer(config, workdir: epath.Path) -> checkpoint_lib.Checkpointer:
  c = config.checkpoint
  # Leftovers are cleaned: process 0 holds the workdir lock, or the workdir is new.
  return checkpoint_lib.Checkpointer(
      workdir_lib.Workdir(workdir).checkpoints, keep=c.keep, keep_period=c.keep_period, async_save=c.async_save,
      checksum=c.checksum, restore_tries=c.restore_tries, retry_delay_s=c.retry_delay_s,
      retry_max_delay_s=c.retry_max_delay_s, clean_leftovers=True)


def _resume_config_error(saved: dict | None, config, allow_change: bool
                         ) -> tuple[str | None, recovery.ConfigChanges | None]:
  """(error, changes) of resuming checkpoints saved with config ``saved`` under ``config``."""
  if saved is None:
    return None, None
  changes = recovery.compare_configs(saved, json.loads(config.to_json_best_effort()))
  if changes.unusable:
    return (f"the checkpoints in this --workdir were saved with another model/optimizer ("
            f"{changes.describe(changes.unusable)}); use a new --workdir or the saved "
            "config.json"), changes
  if changes.guarded and not allow_change:
    return (f"resuming with {changes.describe(changes.guarded)} changes the run's randomness "
            "mid-way; pass --allow-config-change to accept, or keep the saved value "
            "(nothing was changed)"), changes
  return None, changes


def _restore(job: setup_lib.Run, ckpt, workdir, allow_change: bool):
  """(restored or None, config changes or None); raises IncompatibleCheckpoint or
  BadInput (exit 2) for a checkpoint or config change this run cannot take, TransientIO
  for a checkpoint unreadable for now."""
  config = job.config
  saved = recovery.read_saved_config(workdir) if ckpt.all_steps() else None
  labels = ((saved or {}).get("optimizer", {}).get("name", "saved"), config.optimizer.name)
  if ckpt.all_steps():  # the saved tree names a changed optimizer best: check it first
    try:
      ckpt.check_compatible(ckpt.all_steps()[-1], _checkpointed(job.abstract_state), labels)
    except checkpoint_lib.IncompatibleCheckpointError:
      raise
    except Exception:  # noqa: BLE001 - unreadable: restore_latest classifies it
      pass
  error, changes = _resume_config_error(saved, config, allow_change)
  if error:
    raise outcomes.BadInput(error)
  return ckpt.restore_latest(_checkpointed(job.abstract_state), labels), changes


def _checkpointed(state):
  """What a checkpoint holds: ``state`` (or its abstract tree) less the injected
  hyperparameters, which every start takes from its config (``_with_config_hyperparams``).
  So a resume may change a rate, weight decay or ``train.steps`` (the rate tables'
  length) and still restore."""
  opt_state = state.opt_state
  if not getattr(opt_state, "hyperparams", None):
    return state
  return state._replace(opt_state=opt_state._replace(hyperparams={}))


def _with_config_hyperparams(state, job: setup_lib.Run):
  """A restored (checkpointed) state completed with the config's injected hyperparameters."""
  wanted = getattr(job.abstract_state.opt_state, "hyperparams", None)
  if not wanted:
    return state
  values = optimizer_lib.injected_hyperparams(job.config.optimizer, job.config.train.steps)
  hyperparams = {k: jax.device_put(jnp.asarray(values[k], v.dtype), v.sharding)
                 for k, v in wanted.items()}
  return state._replace(opt_state=state.opt_state._replace(hyperparams=hyperparams))


def _record_config(workdir, config, restored, changes) -> None:
  """config.json for a fresh run; on a resume with changes, one warning line, the
  history, and the new config.json."""
  path = workdir_lib.Workdir(workdir).config
  if restored is not None and changes and path.exists():
    accepted = changes.guarded + changes.allowed
    _log(f"warning: config changed since the checkpoint at step "
         f"{restored.step}: {changes.describe(accepted)} (history in "
         f"{workdir_lib.Workdir(workdir).history})")
    recovery.append_history(workdir, restored.step, accepted)
  elif restored is not None and path.exists():
    return
  recovery.write_config(workdir, config.to_json_best_effort(indent=2))


class _Stopped(Exception):
  """A signal arrived before the first step: leave without training."""


def run(config, workdir: str, *, allow_config_change: bool = False) -> outcomes.Finished:
  """Trains ``config`` and writes results to ``workdir``; returns how the run ended.

  ``config`` is validated (``validate``). Resumes from ``workdir/checkpoints``
  when it holds a checkpoint. Returns ``Finished.DONE`` (trained, or nothing left
  to do), ``PREEMPTED`` (SIGTERM: checkpoint saved) or ``INTERRUPTED`` (SIGINT:
  checkpoint saved). Raises (``signflax.outcomes``): ``Diverged`` for a
  non-finite loss, ``SaveFailed`` for a failed save, ``TransientIO`` for a
  checkpoint unreadable for now (nothing moved: start again), ``BadInput`` for a
  bad or busy workdir, and ``IncompatibleCheckpoint`` or ``BadInput`` for a
  checkpoint or config change this run cannot take (``train.seed`` needs
  ``allow_config_change``); nothing in the workdir is changed then. A fresh run
  that fails or is stopped before its first checkpoint leaves the workdir
  reusable (``recovery.StartGuard``).
  """
  storage.configure_clients()  # before the first gs:// access (an emulator, if set)
  workdir = storage.path(workdir)
  error = _workdir_error(workdir, config)
  if error:
    raise outcomes.BadInput(error)
  # Signals first, so one during set-up, compilation or the first eval counts too.
  stopper = preemption.PreemptionHandler(
      check_every=config.checkpoint.preemption_check_every)
  with contextlib.ExitStack() as stack:
    stack.callback(stopper.restore)
    if parallel.maybe_initialize_distributed(config):
      try:  # validate() left these to now: they need the whole job
        check_topology(config)
      except ValueError as e:
        raise outcomes.BadInput(outcomes.one_line(e)) from e
    stopper.install()  # jax.distributed may have put its own SIGTERM handler in place
    is_main = jax.process_index() == 0
    if is_main and workdir.is_dir() and not storage.is_remote(workdir):
      stack.callback(workdir_lib.WorkdirLock.acquire(workdir).release)
    recovery.enable_compilation_cache(
        recovery.compilation_cache_dir(config.train.compilation_cache_dir))
    return _run(config, workdir, stopper, stack, allow_config_change)


def _run(config, workdir, stopper, stack, allow_config_change) -> outcomes.Finished:
  t = config.train
  is_main = jax.process_index() == 0
  tokenizer = data_lib.build_tokenizer(config.data)
  start = time.monotonic()
  job = setup_lib.setup(config, vocab_size=tokenizer.vocab_size)
  stack.enter_context(jax.set_mesh(job.mesh))
  ckpt = _checkpointer(config, workdir)
  ckpt.check_room(checkpoint_lib.tree_nbytes(job.abstract_state))  # warns before compiling
  # However the run ends, the checkpointer is closed: its background saves finish or fail
  # now, not at interpreter exit.
  stack.callback(_close_quietly, ckpt)
  try:
    restored, changes = _restore(job, ckpt, workdir, allow_config_change)
  except outcomes.SignflaxError:
    raise
  except (ValueError, RuntimeError) as e:  # anything else a checkpoint can't be resumed for
    raise outcomes.BadInput(outcomes.one_line(e)) from e
  if restored is not None and int(restored.state.step) >= t.steps:
    _log(f"nothing to do: {workdir} holds a checkpoint at step {int(restored.state.step)} "
         f">= config.train.steps={t.steps}")
    return outcomes.Finished.DONE
  if restored is not None:
    state = _with_config_hyperparams(restored.state, job)
  elif t.get("init_from"):
    from signflax.train import hf  # pylint: disable=import-outside-toplevel
    state = job.init_state(params=hf.load_params(t.init_from, job.model_config))
    _log(f"initialized from {t.init_from}")
  else:
    state = job.init_state()

  # Only now is the workdir written to: every check that could refuse the run has passed.
  guard = recovery.StartGuard(workdir) if restored is None else None
  writer = None
  try:
    if is_main:
      workdir.mkdir(parents=True, exist_ok=True)
      if guard is not None and not guard.existed and not storage.is_remote(workdir):
        # a new local workdir: lock it now
        stack.callback(workdir_lib.WorkdirLock.acquire(workdir).release)
      _record_config(workdir, config, restored, changes)
    writer = metric_writers.MetricWriter(workdir, enabled=is_main)
    writer.restart(int(state.step))  # every start: each step appears once in the logs
    outcome = _train(job, workdir, state, restored, ckpt, writer, stopper, tokenizer, start)
  except _Stopped:
    outcome = stopper.outcome
    name = signal.Signals(stopper.received).name if stopper.received else "a signal"
    _log(f"stopped by {name} before the first step; nothing to save (start the same command "
         "again to run)")
    _undo_start(guard, ckpt, writer)
    return outcome
  except outcomes.SignflaxError:
    _undo_start(guard, ckpt, writer)
    raise
  except BaseException:
    if writer is not None:
      writer.close()
    if guard is not None and not ckpt.all_steps():
      guard.undo()
    raise
  _undo_start(guard if outcome is not outcomes.Finished.DONE else None, ckpt, writer)
  return outcome


def _close_quietly(ckpt: checkpoint_lib.Checkpointer) -> None:
  """Closes the checkpointer; a save error was already raised (or will be by ``close``)."""
  with contextlib.suppress(checkpoint_lib.CheckpointSaveError):
    ckpt.close()


def _undo_start(guard, ckpt, writer) -> None:
  """A fresh run that ends before its first checkpoint leaves the workdir reusable."""
  if writer is not None:
    writer.close()
  if guard is not None and not ckpt.all_steps():
    note = guard.undo()
    if note:
      _log(f"{note} (no checkpoint was saved; the workdir is reusable)")


def _train(job, workdir, state, restored, ckpt, writer, stopper, tokenizer, start
           ) -> outcomes.Finished:
  """Compiles, evaluates and runs the loop. Raises _Stopped for a signal before the first
  step, CheckpointSaveError for a failed save, NonFiniteError (Diverged) for a NaN."""
  config, t = job.config, job.config.train
  model = job.model_config
  _log(f"model: {job.num_params / 1e6:.2f}M params, {model.num_layers} layers x "
       f"{model.d_model} wide, vocab {model.vocab_size}, {model.dtype} compute | mesh "
       f"{dict(job.mesh.shape)} on {jax.device_count()} x {jax.devices()[0].device_kind}")
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
  train_step = job.train_step.lower(state, job.abstract_batch()).compile()
  compile_s = time.monotonic() - start
  first_step = int(state.step)
  _log(f"compiled in {compile_s:.1f}s")
  if stopper.should_stop(first_step, now=True):
    raise _Stopped()
  evaluate = Evaluator(job)
  eval_loss = evaluate(state.params)
  if stopper.should_stop(first_step, now=True):
    raise _Stopped()
  record = {"eval_loss": eval_loss, "eval_unigram_entropy": unigram,
            "num_params": int(job.num_params), "compile_time_s": compile_s}
  if restored is not None:
    record["resumed_from_step"] = int(restored.step)
  writer.write(first_step, record)
  _log(f"step {first_step} eval loss {eval_loss:.4f}")

  train_start = time.monotonic()
  loop = _Loop(job, train_step, train_iter, evaluate, writer, ckpt, stopper)
  try:
    state, last, preempted = _train_loop(
        loop, state, restored.extra.get("loop", {}) if restored else {})
  except preemption.NonFiniteError:
    _close_quietly(ckpt)  # the last good checkpoint is kept
    raise
  ckpt.close()
  if preempted:
    return stopper.outcome
  tokens_per_s = t.global_batch_size * t.seq_len * (t.steps - first_step) / (
      time.monotonic() - train_start)
  _log(f"done: {t.steps} steps in {time.monotonic() - start:.0f}s (compile {compile_s:.0f}s) | "
       f"final eval loss {last.get('eval_loss', float('nan')):.4f} nats/token vs eval unigram "
       f"entropy {unigram:.4f} | {tokens_per_s:,.0f} tokens/s with evals | {workdir}")
  return outcomes.Finished.DONE
