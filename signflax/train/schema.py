"""The ``signflax train`` config: every field's type and range (``SCHEMA``) and defaults.

``SCHEMA.check(config)`` runs in ``trainer.validate`` before any JAX work. A
new training field is one line here, e.g.
``SCHEMA.declare("train.my_field", cs.choice("a", "b"))``,
plus its default in the ``default_*_config`` of its group.
"""

from __future__ import annotations

import dataclasses
import inspect

import ml_collections

from signflax import config_schema as cs
from signflax import optim
from signflax.data import pipeline as data_pipeline
from signflax.data import sources as data_sources
from signflax.model import transformer
from signflax.train import optimizer as optimizer_lib
from signflax.train import preemption
from signflax.train import step as step_lib

GROUPS = ("model", "optimizer", "data", "mesh", "train", "checkpoint", "distributed")

def default_model_config() -> ml_collections.ConfigDict:
  """``config.model``: the fields and defaults of ``signflax.model.TransformerConfig``."""
  return ml_collections.ConfigDict(
      {f.name: f.default for f in dataclasses.fields(transformer.TransformerConfig)})

def default_mesh_config() -> ml_collections.ConfigDict:
  """``config.mesh``: data/fsdp/tensor sizes; -1 = the remaining devices."""
  return ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

def default_train_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      steps=400, global_batch_size=16, seq_len=128, grad_accum=1, noise_stats=True,
      loss_chunk_len=0, seed=0, log_every=25, eval_every=100, eval_batches=8,
      compilation_cache_dir=None, gradient_exchange="mean"))

def default_checkpoint_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      every_steps=100, keep=3, keep_period=0, async_save=True, nan_policy="stop",
      preemption_check_every=10, checksum=True, restore_tries=3, retry_delay_s=1.0))

def default_distributed_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      coordinator_address=None, num_processes=None, process_id=None, auto=True))

_MODEL = {
    "vocab_size": cs.integer(1, optional=True), "num_layers": cs.integer(1),
    "d_model": cs.integer(1), "num_heads": cs.integer(1),
    "num_kv_heads": cs.integer(1, optional=True), "head_dim": cs.integer(1, optional=True),
    "mlp_dim": cs.integer(1, optional=True), "max_seq_len": cs.integer(1),
    "rope_theta": cs.real(0, low_open=True), "norm_eps": cs.real(0, low_open=True),
    "tie_embeddings": cs.boolean(), "dtype": cs.choice(*transformer.DTYPES),
    "attention_impl": cs.choice(*transformer.ATTENTION_IMPLEMENTATIONS),
    "remat": cs.choice(*transformer.REMAT_POLICIES), "init_std": cs.real(0, low_open=True),
}
_OPTIMIZER = {
    "name": cs.choice(*optim.OPTIMIZERS), "learning_rate": cs.real(0, low_open=True),
    "schedule": cs.choice(*optimizer_lib.SCHEDULES), "warmup_steps": cs.integer(0),
    "decay_fraction": cs.real(0, 1), "decay_shape": cs.string(),
    "final_lr_fraction": cs.real(0, 1), "weight_decay": cs.real(0),
    "grad_clip_norm": cs.real(0),
}
# The per-optimizer keywords (config.optimizer.<name>.<keyword>; None = the default).
_KEYWORDS = {
    "beta": cs.real(0, 1, high_open=True, optional=True),
    "b1": cs.real(0, 1, high_open=True, optional=True),
    "b2": cs.real(0, 1, high_open=True, optional=True),
    "eps": cs.real(0, low_open=True, optional=True),
    "nesterov": cs.boolean(optional=True),
    "steps": cs.integer(1, optional=True),
    "rms_target": cs.real(0, low_open=True, optional=True),
    "fallback_learning_rate": cs.real(0, low_open=True, optional=True),
    # Named choices (Muon's coeffs, scale, fallback; dtypes) are the library's to check:
    # ``trainer.validate`` builds the optimizer once and names the field of any error.
    **{k: cs.string(optional=True) for k in ("coeffs", "scale", "fallback", "mu_dtype", "ns_impl",
                                             "ns_dtype")},
}
_DATA = {
    "source": cs.choice(*data_pipeline.SOURCES), "paths": cs.string(),
    "tokenizer": cs.string(), "eval_fraction": cs.real(0, 1, low_open=True, high_open=True),
    "split_by": cs.choice(*data_sources.SPLIT_BY), "max_bytes": cs.integer(0),
    "shuffle": cs.boolean(), "num_workers": cs.integer(0), "prefetch": cs.integer(0),
}
_TRAIN = {
    "steps": cs.integer(1), "global_batch_size": cs.integer(1), "seq_len": cs.integer(1),
    "grad_accum": cs.integer(1), "noise_stats": cs.boolean(), "loss_chunk_len": cs.integer(0),
    "seed": cs.integer(0), "log_every": cs.integer(1), "eval_every": cs.integer(0),
    "eval_batches": cs.integer(0),
    # None = WORKDIR/../.jax_cache, "" = off (signflax.train.recovery)
    "compilation_cache_dir": cs.string(optional=True),
    # mean (float all-reduce) | sign_vote (1-bit majority vote over `data`; signflax.parallel)
    "gradient_exchange": cs.choice(*step_lib.GRADIENT_EXCHANGES),
}
_CHECKPOINT = {
    "every_steps": cs.integer(0), "keep": cs.integer(1), "keep_period": cs.integer(0),
    "async_save": cs.boolean(), "nan_policy": cs.choice(*preemption.NAN_POLICIES),
    "preemption_check_every": cs.integer(1),
    "checksum": cs.boolean(), "restore_tries": cs.integer(1),
    "retry_delay_s": cs.real(0, 3600),
}
_DISTRIBUTED = {
    "coordinator_address": cs.string(optional=True),
    "num_processes": cs.integer(1, optional=True), "process_id": cs.integer(0, optional=True),
    "auto": cs.boolean(),
}

def _optimizer_keyword_fields() -> dict[str, cs.Field]:
  fields = {}
  for name, fn in optim.OPTIMIZERS.items():
    defaults = inspect.signature(fn).parameters
    for key in optim.optimizer_keywords(name):
      if key == "weight_decay":
        fields[f"optimizer.{name}.{key}"] = cs.real(0, optional=True, required=False)
        continue
      if key in optimizer_lib.FROM_TRAINER:
        continue  # the trainer fills these in from the model's logical axes
      default = defaults[key].default
      fields[f"optimizer.{name}.{key}"] = _KEYWORDS.get(
          key, cs.real(optional=True) if isinstance(default, float) else cs.anything())
  return fields

SCHEMA = cs.Schema({
    **{f"model.{k}": v for k, v in _MODEL.items()},
    **{f"optimizer.{k}": v for k, v in _OPTIMIZER.items()},
    **_optimizer_keyword_fields(),
    **{f"data.{k}": v for k, v in _DATA.items()},
    **{f"mesh.{k}": cs.integer(-1) for k in ("data", "fsdp", "tensor")},
    **{f"train.{k}": v for k, v in _TRAIN.items()},
    **{f"checkpoint.{k}": v for k, v in _CHECKPOINT.items()},
    **{f"distributed.{k}": v for k, v in _DISTRIBUTED.items()},
})

@SCHEMA.rule
def _schedule_fits(config) -> str | None:
  opt, steps = config.optimizer, config.train.steps
  decay = round(opt.decay_fraction * steps) if opt.schedule == "wsd" else 0
  if opt.warmup_steps and opt.warmup_steps >= steps:
    return (f"config.optimizer.warmup_steps: {opt.warmup_steps} must be < "
            f"config.train.steps={steps}")
  if opt.warmup_steps + decay > steps:
    return (f"config.optimizer.warmup_steps: {opt.warmup_steps} plus the wsd decay "
            f"{decay} (decay_fraction={opt.decay_fraction}) exceeds config.train.steps={steps}")
  return None

@SCHEMA.rule
def _sign_vote_needs_a_sign_optimizer(config) -> str | None:
  name = config.optimizer.name
  if config.train.gradient_exchange == "sign_vote" and name not in step_lib.SIGN_VOTE_OPTIMIZERS:
    return (f"config.train.gradient_exchange: 'sign_vote' needs config.optimizer.name in "
            f"{', '.join(step_lib.SIGN_VOTE_OPTIMIZERS)}, got {name!r}")
  return None

@SCHEMA.rule
def _loss_chunks_divide(config) -> str | None:
  t = config.train
  if t.loss_chunk_len and t.seq_len % t.loss_chunk_len:
    return (f"config.train.loss_chunk_len: {t.loss_chunk_len!r} must be 0 (whole logits) or a "
            f"positive divisor of config.train.seq_len={t.seq_len}")
  if t.global_batch_size % t.grad_accum:
    return (f"config.train.global_batch_size: {t.global_batch_size} is not divisible by "
            f"config.train.grad_accum={t.grad_accum}")
  return None


def default_config() -> ml_collections.ConfigDict:
  """A whole train config at every group's defaults (the tiny CPU job)."""
  return ml_collections.ConfigDict(dict(
      model=default_model_config(), optimizer=optimizer_lib.default_optimizer_config(),
      data=data_pipeline.default_data_config(), mesh=default_mesh_config(),
      train=default_train_config(),
      checkpoint=default_checkpoint_config(), distributed=default_distributed_config()))
