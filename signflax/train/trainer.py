"""``signflax train``: validate a config, then train, evaluate and log.

    signflax train --config configs/lm/tiny.py --workdir runs/tiny --config.optimizer.name=signum

Config groups: ``model`` (``signflax.model.TransformerConfig`` fields),
``optimizer``, ``data`` (``signflax.data.default_data_config()``), ``mesh``
(data/fsdp/tensor sizes, -1 = the rest), ``train``, ``checkpoint`` and
``distributed``; see ``configs/lm/tiny.py`` for every field. ``workdir``
receives ``config.json``, ``metrics.jsonl``, TensorBoard events under ``tb/``
and Orbax checkpoints under ``checkpoints/``. A run started in a workdir that
holds checkpoints resumes from the latest readable one (see
``signflax.train.checkpoint``); SIGTERM saves a checkpoint and exits 0.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
import time

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
from signflax.train import step as step_lib

GROUPS = ("model", "optimizer", "data", "mesh", "train", "checkpoint")


def _log(message: str) -> None:
  if jax.process_index() == 0:
    print(message, file=sys.stderr, flush=True)


def _positive(group, name: str, value, minimum: int = 1) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f"config.{group}.{name}: must be an integer >= {minimum}, got {value!r}")


def model_config(config, vocab_size: int | None = None) -> model_lib.TransformerConfig:
  """``config.model`` as a TransformerConfig; vocab_size None = the tokenizer's, padded to 128."""
  cfg = model_lib.TransformerConfig.from_config(config.model)
  if config.model.get("vocab_size") is None:
    vocab_size = vocab_size or data_lib.build_tokenizer(config.data).vocab_size
    cfg = dataclasses.replace(cfg, vocab_size=-(-vocab_size // 128) * 128)
  return cfg


def validate(config) -> None:
  """Cheap checks before any compilation; raises a one-line ValueError naming the field."""
  missing = [g for g in GROUPS if g not in config]
  if missing:
    raise ValueError(f"config: missing group(s) {', '.join(missing)}; a train config has "
                     f"{', '.join(GROUPS)}")
  t, opt = config.train, config.optimizer
  for name in ("steps", "global_batch_size", "seq_len", "grad_accum", "log_every"):
    _positive("train", name, t[name])
  for name in ("eval_every", "eval_batches", "seed"):
    _positive("train", name, t[name], minimum=0)

  c = config.checkpoint
  for name in ("every_steps", "keep_period"):
    _positive("checkpoint", name, c[name], minimum=0)
  _positive("checkpoint", "keep", c.keep)
  _positive("checkpoint", "preemption_check_every", c.preemption_check_every)
  if c.nan_policy not in preemption.NAN_POLICIES:
    raise ValueError(f"config.checkpoint.nan_policy: {c.nan_policy!r} is not one of "
                     f"{', '.join(preemption.NAN_POLICIES)}")

  optimizer_lib.validate(opt)
  exchange = t.get("gradient_exchange", "mean")
  if exchange not in step_lib.GRADIENT_EXCHANGES:
    raise ValueError(f"config.train.gradient_exchange: {exchange!r} is not one of "
                     f"{', '.join(step_lib.GRADIENT_EXCHANGES)}")
  if exchange == "sign_vote" and opt.name not in step_lib.SIGN_VOTE_OPTIMIZERS:
    raise ValueError(f"config.train.gradient_exchange: 'sign_vote' needs config.optimizer."
                     f"name in {', '.join(step_lib.SIGN_VOTE_OPTIMIZERS)}, got {opt.name!r}")
  if opt.warmup_steps >= t.steps and opt.warmup_steps:
    raise ValueError(f"config.optimizer.warmup_steps: {opt.warmup_steps} must be < "
                     f"config.train.steps={t.steps}")

  data_lib.validate(config.data, seq_len=t.seq_len, global_batch_size=t.global_batch_size,
                    process_count=1 if parallel.is_multi_process(config) else jax.process_count())
  vocab = data_lib.build_tokenizer(config.data).vocab_size
  cfg = model_config(config, vocab)
  cfg.check()
  if cfg.vocab_size < vocab:
    raise ValueError(f"config.model.vocab_size: {cfg.vocab_size} is smaller than the "
                     f"tokenizer's {vocab} (set it to None to follow the tokenizer)")
  if t.seq_len > cfg.max_seq_len:
    raise ValueError(f"config.train.seq_len: {t.seq_len} is longer than the model's context "
                     f"config.model.max_seq_len={cfg.max_seq_len}")

  chunk = t.get("loss_chunk_len", 0)
  _positive("train", "loss_chunk_len", chunk, minimum=0)
  if chunk and t.seq_len % chunk:
    raise ValueError(f"config.train.loss_chunk_len: {chunk!r} must be 0 (whole logits) or a "
                     f"positive divisor of config.train.seq_len={t.seq_len}")
  if t.global_batch_size % t.grad_accum:
    raise ValueError(f"config.train.global_batch_size: {t.global_batch_size} is not divisible "
                     f"by config.train.grad_accum={t.grad_accum}")
  if not parallel.is_multi_process(config):  # device count is only known after start-up
    shape = dict(zip(parallel.MESH_AXES,
                     parallel.resolve_mesh_shape(config.mesh, jax.device_count())))
    batch_shards = shape["data"] * shape["fsdp"]
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

  A fresh iterator each time: every evaluation sees the same tokens.
  """

  def __init__(self, config, eval_step, sharding):
    self.config, self.eval_step, self.sharding = config, eval_step, sharding

  def __call__(self, params) -> float:
    t = self.config.train
    it = data_lib.make_iterator(self.config.data, split="eval", seq_len=t.seq_len,
                                global_batch_size=t.global_batch_size, seed=t.seed,
                                process_index=jax.process_index(),
                                process_count=jax.process_count())
    losses = []
    for _, batch in zip(range(t.eval_batches or sys.maxsize), it):
      losses.append(self.eval_step(params, _global_batch(batch, self.sharding)))
    return float(np.mean(jax.device_get(losses)))


def _loop_extra(train_iter, loss_sum, interval_start: int, skipped) -> dict:
  """The JSON checkpoint item: data position and the open logging interval."""
  return {"data": train_iter.get_state(),
          "loop": {"loss_sum": checkpoint_lib.scalar_to_json(loss_sum),
                   "interval_start": interval_start,
                   "skipped_steps": checkpoint_lib.scalar_to_json(skipped)}}


def _train_loop(config, state, train_step, train_iter, evaluate, writer, batch_sharding, *,
                flops_per_token: float, peak_flops: float | None, ckpt, loop_state: dict,
                stopper):
  """Steps from ``state.step`` to ``config.train.steps``; logs every ``log_every`` steps.

  Logged train_loss is the mean over the interval; the other train metrics are
  the interval's last step. Saves every ``checkpoint.every_steps``, at the last
  step, and at the step a preemption notice is agreed on (then returns early).
  Returns ``(state, last logged metrics, preempted)``.
  """
  t, c = config.train, config.checkpoint
  tokens_per_step = t.global_batch_size * t.seq_len
  progress = metrics_lib.ProgressBar(t.steps, enabled=jax.process_index() == 0)
  first = int(state.step) + 1
  last_step = loop_state.get("interval_start", first - 1)
  loss_sum = jnp.float32(loop_state.get("loss_sum", 0.0))
  skipped = jnp.float32(loop_state.get("skipped_steps", 0.0))
  last_time, timed_from, out, preempted = time.monotonic(), first - 1, {}, False
  last_saved = ckpt.all_steps()[-1] if ckpt.all_steps() else None
  for step in range(first, t.steps + 1):
    state, step_metrics = train_step(state, _global_batch(next(train_iter), batch_sharding))
    loss_sum = loss_sum + step_metrics["loss"]  # stays on device: no sync per step
    if "nonfinite" in step_metrics:
      skipped = skipped + step_metrics["nonfinite"]
    preempted = stopper.should_stop(step)
    save = preempted or step == t.steps or (c.every_steps and step % c.every_steps == 0)
    log = step % t.log_every == 0 or step == t.steps
    if not (save or log):
      continue
    host = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
    if c.nan_policy == "stop":
      preemption.check_finite(step, host, last_saved)
    if log:
      out = host
      step_time = (time.monotonic() - last_time) / (step - timed_from)
      tokens_per_s = tokens_per_step / step_time
      out["step_loss"] = out.pop("loss")
      out.update(train_loss=float(loss_sum) / (step - last_step), step_time_s=step_time,
                 tokens_per_s=tokens_per_s,
                 mfu=(flops_per_token * tokens_per_s / (peak_flops * jax.device_count())
                      if peak_flops else None))
      if "nonfinite" in out:
        out["skipped_steps"] = float(skipped)
      if (t.eval_every and step % t.eval_every == 0) or step == t.steps:
        out["eval_loss"] = evaluate(state.params)
      writer.write(step, out)
      progress.update(step, out["train_loss"], tokens_per_s)
      loss_sum, last_step = jnp.zeros((), jnp.float32), step
      last_time, timed_from = time.monotonic(), step
    if save:
      ckpt.save(step, state, _loop_extra(train_iter, loss_sum, last_step, skipped))
      last_saved = step
    if preempted:
      writer.flush()
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


def _workdir_error(workdir: pathlib.Path, config) -> str | None:
  """Why ``workdir`` cannot hold this run (None if it can); checked before any device work.

  A workdir with logs but no checkpoint is accepted only for the same config (a
  run stopped before its first checkpoint starts over; its records are appended).
  """
  if workdir.exists() and not workdir.is_dir():
    return f"--workdir: {workdir} exists and is not a directory"
  ckpt_dir = workdir / "checkpoints"
  has_checkpoints = ckpt_dir.is_dir() and any(p.name.isdigit() for p in ckpt_dir.iterdir())
  if ((workdir / "metrics.jsonl").exists() and not has_checkpoints
      and not _same_job(workdir, config)):
    return (f"--workdir: {workdir} already holds metrics.jsonl from an earlier run with "
            "another config and no checkpoint to resume from; choose a new directory "
            "(nothing was changed)")
  return None


def _fail(message: str) -> int:
  print(f"signflax train: error: {message}", file=sys.stderr, flush=True)
  return 2


def _checkpointer(config, workdir: pathlib.Path) -> checkpoint_lib.Checkpointer:
  c = config.checkpoint
  return checkpoint_lib.Checkpointer(workdir / "checkpoints", every_steps=c.every_steps or 1,
                                     keep=c.keep, keep_period=c.keep_period,
                                     async_save=c.async_save)


def _abstract_state(cfg, tx, shardings):
  abstract = jax.eval_shape(lambda: step_lib.init_state(cfg, tx, jax.random.key(0)))
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


def run(config, workdir: str) -> int:
  """Trains ``config`` and writes results to ``workdir``; returns the exit code.

  Resumes from ``workdir/checkpoints`` when it holds a checkpoint. Exit codes:
  0 done or preempted (checkpoint saved), 1 non-finite loss, 2 bad workdir or
  an incompatible/unreadable checkpoint (nothing in the workdir is changed).
  """
  workdir = pathlib.Path(workdir)
  error = _workdir_error(workdir, config)
  if error:
    return _fail(error)
  parallel.maybe_initialize_distributed(config)
  t = config.train
  is_main = jax.process_index() == 0

  tokenizer = data_lib.build_tokenizer(config.data)
  cfg = model_config(config, tokenizer.vocab_size)
  mesh = parallel.make_mesh(config.mesh)
  graphdef, param_shapes, param_axes = model_lib.abstract_model(cfg)
  num_params = sum(x.size for x in jax.tree.leaves(param_shapes))
  exchange = t.get("gradient_exchange", "mean")
  if exchange == "sign_vote":
    tx, schedule = step_lib.make_sign_vote_optimizer(config.optimizer, t.steps, param_axes,
                                                     param_shapes, mesh)
  else:
    tx, schedule = optimizer_lib.make_optimizer(config.optimizer, t.steps, param_axes)

  batch_sharding = parallel.batch_sharding(mesh)
  ckpt = _checkpointer(config, workdir)
  with jax.set_mesh(mesh):
    start = time.monotonic()
    shardings = step_lib.state_shardings(cfg, tx, mesh, param_axes)
    try:
      restored = ckpt.restore_latest(_abstract_state(cfg, tx, shardings))
    except (checkpoint_lib.IncompatibleCheckpointError, RuntimeError) as e:
      return _fail(str(e).replace("\n", " "))
    if restored is None:
      state, _ = step_lib.create_sharded_state(cfg, tx, mesh, param_axes, t.seed)
    else:
      state = restored.state
      if int(state.step) >= t.steps:
        _log(f"nothing to do: {workdir} holds a checkpoint at step {int(state.step)} >= "
             f"config.train.steps={t.steps}")
        ckpt.close()
        return 0

    if is_main:
      workdir.mkdir(parents=True, exist_ok=True)
      if restored is None or not (workdir / "config.json").exists():
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
    writer = metrics_lib.MetricWriter(workdir, enabled=is_main)
    _log(f"model: {num_params / 1e6:.2f}M params, {cfg.num_layers} layers x {cfg.d_model} "
         f"wide, vocab {cfg.vocab_size}, {cfg.dtype} compute | mesh {dict(mesh.shape)} on "
         f"{jax.device_count()} x {jax.devices()[0].device_kind}")
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
    abstract_batch = {k: jax.ShapeDtypeStruct((t.global_batch_size, t.seq_len), jnp.int32,
                                              sharding=batch_sharding)
                      for k in ("inputs", "targets")}
    loss_chunk_len = t.get("loss_chunk_len", 0)
    step_fn = step_lib.make_train_step(graphdef, tx, schedule, grad_accum=t.grad_accum,
                                       noise_stats=t.noise_stats, loss_chunk_len=loss_chunk_len,
                                       gradient_exchange=exchange)
    if config.checkpoint.nan_policy == "skip":
      step_fn = preemption.guard_nonfinite(step_fn)
    train_step = step_lib.jit_train_step(step_fn, mesh, shardings
                                         ).lower(state, abstract_batch).compile()
    compile_s = time.monotonic() - start
    eval_step = step_lib.make_eval_step(graphdef, loss_chunk_len)
    evaluate = Evaluator(config, step_lib.jit_eval_step(eval_step, mesh, shardings),
                         batch_sharding)
    eval_loss = evaluate(state.params)
    record = {"eval_loss": eval_loss, "eval_unigram_entropy": unigram,
              "num_params": num_params, "compile_time_s": compile_s}
    if restored is not None:
      record["resumed_from_step"] = restored.step
      writer.resume(restored.step)
    writer.write(int(state.step), record)
    _log(f"compiled in {compile_s:.1f}s; step {int(state.step)} eval loss {eval_loss:.4f}")
    train_start, first_step = time.monotonic(), int(state.step)
    stopper = preemption.PreemptionHandler(
        check_every=config.checkpoint.preemption_check_every)
    try:
      state, last, preempted = _train_loop(
          config, state, train_step, train_iter, evaluate, writer, batch_sharding,
          flops_per_token=model_lib.flops_per_token(cfg, t.seq_len),
          peak_flops=metrics_lib.peak_flops_per_device(), ckpt=ckpt,
          loop_state=restored.extra.get("loop", {}) if restored else {}, stopper=stopper)
    except preemption.NonFiniteError as e:
      ckpt.close()
      writer.close()
      print(f"signflax train: error: {e}", file=sys.stderr, flush=True)
      return 1
    finally:
      stopper.restore()
  ckpt.close()
  writer.close()
  if preempted:
    return 0
  tokens_per_s = t.global_batch_size * t.seq_len * (t.steps - first_step) / (
      time.monotonic() - train_start)
  _log(f"done: {t.steps} steps in {time.monotonic() - start:.0f}s (compile {compile_s:.0f}s) | "
       f"final eval loss {last.get('eval_loss', float('nan')):.4f} nats/token vs eval unigram "
       f"entropy {unigram:.4f} | {tokens_per_s:,.0f} tokens/s with evals | {workdir}")
  return 0
