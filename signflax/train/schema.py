"""The ``signflax train`` config, declared once: every field's type, range, default and
doc (``SCHEMA``), with the rules that tie fields together.

The groups live next to the code that reads them: ``config.model`` in
``signflax.model.transformer``, ``config.optimizer`` in
``signflax.train.optimizer``, ``config.data`` in ``signflax.data.pipeline``; the
run's own groups (``mesh``, ``train``, ``checkpoint``, ``distributed``) here.
``SCHEMA.check(config)`` runs in ``trainer.validate`` before any JAX work;
``default_config()`` is ``SCHEMA.defaults()``; ``docs/configuration.md`` is
``SCHEMA.reference_markdown()``. A new training field is one entry in its
group, e.g. ``"my_field": cs.choice("a", "b", default="a", doc="...")``.
"""

from __future__ import annotations

import ml_collections

from signflax import config_schema as cs
from signflax.data import pipeline as data_pipeline
from signflax.model import transformer
from signflax.train import faults as faults_lib
from signflax.train import optimizer as optimizer_lib
from signflax.train import preemption
from signflax.train import step as step_lib

MESH = cs.Schema({
    axis: cs.integer(-1, default=default, doc=doc) for axis, default, doc in (
        ("data", -1, "data-parallel size (batch split, parameters replicated)"),
        ("fsdp", 1, "fully sharded data-parallel size (batch and parameters split)"),
        ("tensor", 1, "tensor-parallel size (heads and MLP split)"))
}, doc="The device mesh; -1 = the devices the other axes leave.")

FAULTS = cs.Schema({
    "replicas": cs.anything(required=False, default=None,
                            doc="faulty data-parallel replicas: None or 0 = none, a count k = "
                                "replicas 0..k-1, or a list of indices"),
    "kind": cs.choice(*faults_lib.KINDS, required=False, default="sign_flip",
                      doc="what a faulty replica sends (signflax.train.faults)"),
    "start_step": cs.integer(0, required=False, default=0,
                             doc="clean steps before the faults begin"),
    "scale": cs.real(0, low_open=True, required=False, default=10.0,
                     doc="s of the scaled fault (the replica sends -s g)"),
    "z": cs.real(optional=True, required=False, default=None,
                 doc="the ALIE shift in honest standard deviations; None = Baruch et al.'s "
                     "z_max for the replica counts"),
}, doc="Faulty and adversarial replicas, a research option: corrupt chosen replicas' "
       "gradients before the exchange. A config may leave the group out.")


@FAULTS.rule
def _faulty_replicas_are_a_count_or_a_list(faults) -> str | None:
  return faults_lib.check(faults, num_replicas=1 << 30)


TRAIN = cs.Schema({
    "steps": cs.integer(1, default=400, doc="optimizer steps"),
    "global_batch_size": cs.integer(1, default=16, doc="sequences per step, all devices"),
    "seq_len": cs.integer(1, default=128, doc="tokens per sequence"),
    "grad_accum": cs.integer(1, default=1, doc="microbatches per step"),
    "noise_stats": cs.boolean(default=True, doc="log gradient-noise statistics"),
    "loss_chunk_len": cs.integer(0, default=0,
                                 doc="compute the loss over chunks of this many positions "
                                     "(0 = whole logits at once)"),
    "seed": cs.integer(0, default=0, doc="initialization and data order"),
    "log_every": cs.integer(1, default=25, doc="steps between metrics records"),
    "eval_every": cs.integer(0, default=100, doc="steps between evaluations (0 = at the end)"),
    "eval_batches": cs.integer(0, default=8, doc="global batches per evaluation (0 = all)"),
    "compilation_cache_dir": cs.string(
        optional=True, default=None,
        doc="JAX's persistent compilation cache; None = $JAX_COMPILATION_CACHE_DIR, else "
            "$XDG_CACHE_HOME/signflax/jax (~/.cache/signflax/jax); \"\" = off"),
    "gradient_exchange": cs.choice(*step_lib.GRADIENT_EXCHANGES, default="mean",
                                   doc="mean (float all-reduce) or sign_vote (1-bit majority "
                                       "vote over data; signflax.parallel)"),
    "init_from": cs.string(
        optional=True, default="",
        doc="start a fresh run from these parameters: \"\" = random init, \"hf:PATH\" = a "
            "Hugging Face LLaMA directory (checked against config.model; a resume ignores it)"),
    "faults": FAULTS,
}, doc="Length, batch, logging and evaluation of a run.")

@TRAIN.rule
def _loss_chunks_divide(t) -> str | None:
  if t["loss_chunk_len"] and t["seq_len"] % t["loss_chunk_len"]:
    return (f"config.train.loss_chunk_len: {t['loss_chunk_len']!r} must be 0 (whole logits) or "
            f"a positive divisor of config.train.seq_len={t['seq_len']}")
  if t["global_batch_size"] % t["grad_accum"]:
    return (f"config.train.global_batch_size: {t['global_batch_size']} is not divisible by "
            f"config.train.grad_accum={t['grad_accum']}")
  return None


CHECKPOINT = cs.Schema({
    "every_steps": cs.integer(0, default=100, doc="steps between saves (0 = only the last)"),
    "keep": cs.integer(1, default=3, doc="keep the latest this many checkpoints"),
    "keep_period": cs.integer(0, default=0, doc="also keep every step divisible by this"),
    "async_save": cs.boolean(default=True, doc="write in a background thread"),
    "nan_policy": cs.choice(*preemption.NAN_POLICIES, default="stop",
                            doc="on a non-finite loss: stop (keep the last good checkpoint) "
                                "or skip the step"),
    "preemption_check_every": cs.integer(1, default=10,
                                         doc="steps between agreeing on a preemption notice"),
    "checksum": cs.boolean(default=True, doc="store and verify a checksum per array"),
    "restore_tries": cs.integer(1, default=3,
                                doc="attempts per checkpoint on a transient read error"),
    "retry_delay_s": cs.real(0, 3600, default=1.0,
                             doc="the first wait between attempts; doubled after each"),
    "retry_max_delay_s": cs.real(0, 3600, default=30.0,
                                 doc="the longest wait between attempts"),
}, doc="Orbax checkpoints: when, how many, and how restores retry.")

DISTRIBUTED = cs.Schema({
    "coordinator_address": cs.string(optional=True, default=None,
                                     doc="host:port of process 0; None = detect"),
    "num_processes": cs.integer(1, optional=True, default=None, doc="None = detect"),
    "process_id": cs.integer(0, optional=True, default=None, doc="None = detect"),
    "auto": cs.boolean(default=True, doc="call jax.distributed.initialize() on a detected "
                                         "cluster (TPU pod, SLURM)"),
}, doc="Multi-process start-up (never compared on resume).")

SCHEMA = cs.Schema({
    "model": transformer.SCHEMA,
    "optimizer": optimizer_lib.SCHEMA,
    "data": data_pipeline.SCHEMA,
    "mesh": MESH,
    "train": TRAIN,
    "checkpoint": CHECKPOINT,
    "distributed": DISTRIBUTED,
})
GROUPS = ("model", "optimizer", "data", "mesh", "train", "checkpoint", "distributed")


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


def default_config() -> ml_collections.ConfigDict:
  """A whole train config at every group's defaults (the tiny CPU job)."""
  return SCHEMA.defaults()
