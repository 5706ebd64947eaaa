"""The default job: a 4-layer byte-level LLaMA on the Python standard library.

Trains on 2 CPU cores in about 3 minutes (compile included); its eval loss ends
far below the eval split's byte unigram entropy, which the run logs.

    signflax train --workdir runs/tiny                       # this config
    signflax train --workdir runs/tiny-signum --config.optimizer.name=signum \
        --config.optimizer.learning_rate=3e-4
"""

import ml_collections

from signflax.data import default_data_config
from signflax.train.optimizer import default_optimizer_config


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  config.model = ml_collections.ConfigDict(dict(
      vocab_size=None,        # None = the tokenizer's vocab (258 bytes+specials) padded to 128
      num_layers=4,
      d_model=128,
      num_heads=4,
      num_kv_heads=None,      # None = num_heads; fewer = grouped-query attention
      head_dim=None,          # None = d_model // num_heads
      mlp_dim=None,           # None = 8/3 d_model rounded up to a multiple of 64
      max_seq_len=128,        # the model's context; train.seq_len may not exceed it
      rope_theta=10_000.0,
      norm_eps=1e-6,
      tie_embeddings=True,
      dtype="float32",        # compute dtype: float32 | bfloat16 (params stay float32)
      attention_impl="auto",  # auto (cudnn on GPUs that support it, else xla) | xla | cudnn
      remat="none",           # none | full | dots | dots_no_batch
      init_std=0.02,
  ))

  # Fields: signflax.train.optimizer.default_optimizer_config. Each optimizer keeps its own
  # keywords in config.optimizer.<name> (None = its default), e.g. adamw.b1, signum.beta,
  # muon.fallback_learning_rate; only the group of `name` is used.
  config.optimizer = default_optimizer_config()
  config.optimizer.update(dict(
      name="adamw",           # sgd | momentum | adamw | lion | sign_sgd | signum | muon
      learning_rate=3e-3,     # peak
      schedule="wsd",         # wsd | cosine | constant (all with linear warmup)
      warmup_steps=30,
      decay_fraction=0.2,     # wsd: share of steps spent decaying
      decay_shape="linear",   # wsd: decay shape (see signflax.optim.wsd_schedule)
      final_lr_fraction=0.0,  # end learning rate / peak
      weight_decay=0.1,       # decoupled; applied to weight matrices only
      grad_clip_norm=0.0,     # 0 = off; clipping before a sign changes nothing
  ))

  config.data = default_data_config()

  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

  config.train = ml_collections.ConfigDict(dict(
      steps=400,
      global_batch_size=16,
      seq_len=128,
      grad_accum=1,           # microbatches per step; >= 2 also logs gradient-noise density
      noise_stats=True,       # with grad_accum >= 2: keep per-microbatch grads for the stats
      loss_chunk_len=0,       # 0 = whole [batch, seq, vocab] logits; c = fused head + loss,
                              # c tokens per row at a time (signflax.train.loss)
      seed=0,
      log_every=25,
      eval_every=100,
      eval_batches=8,         # 0 = the whole eval split
      gradient_exchange="mean",  # mean (float all-reduce) | sign_vote (1-bit majority vote
                                 # over `data`; sign_sgd and signum only)
  ))

  # Orbax checkpoints in workdir/checkpoints; a run in a workdir with checkpoints resumes.
  config.checkpoint = ml_collections.ConfigDict(dict(
      every_steps=100,        # also saved at the last step and on SIGTERM; 0 = only those
      keep=3,                 # keep the latest 3 ...
      keep_period=0,          # ... plus every step divisible by this (0 = none)
      async_save=True,        # write in the background; the loop waits only for the host copy
      nan_policy="stop",      # stop | skip: on a NaN/Inf loss stop (last good checkpoint kept)
                              # or skip the step's update and count it (skipped_steps)
      preemption_check_every=10,  # multi-process: steps between SIGTERM agreement checks
  ))

  # Multi-process start-up (see signflax.parallel.maybe_initialize_distributed).
  config.distributed = ml_collections.ConfigDict(dict(
      coordinator_address=None, num_processes=None, process_id=None, auto=True))
  return config
