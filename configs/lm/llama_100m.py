"""A ~100M-parameter LLaMA (the setting of Li et al. 2026: batch 64-512, lr 5e-4).

12 layers, 768 wide, 12 heads, SwiGLU 2048, context 1024: 85M parameters in the
blocks plus the embedding (tied; 24.6M with a 32k tokenizer). vocab_size None
follows the tokenizer: set ``data.tokenizer`` to a LLaMA-style ``tokenizer.json``
and the data to a real corpus. bfloat16 compute, FSDP over every device.

    signflax train --config configs/lm/llama_100m.py --workdir runs/llama100m \
        --config.data.source=text --config.data.paths='/data/fineweb/*.txt' \
        --config.data.tokenizer=/data/llama/tokenizer.json --config.train.global_batch_size=512
"""

import ml_collections

from signflax.data import default_data_config
from signflax.train.optimizer import default_optimizer_config


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict(dict(
      vocab_size=None, num_layers=12, d_model=768, num_heads=12, num_kv_heads=None,
      head_dim=None, mlp_dim=2048, max_seq_len=1024, rope_theta=10_000.0, norm_eps=1e-6,
      tie_embeddings=True, dtype="bfloat16", attention_impl="auto", remat="dots",
      init_std=0.02,
  ))
  config.optimizer = default_optimizer_config()
  config.optimizer.update(dict(
      name="adamw", learning_rate=5e-4, schedule="wsd", warmup_steps=1000, decay_fraction=0.2,
      decay_shape="linear", final_lr_fraction=0.0, weight_decay=0.1, grad_clip_norm=0.0))
  config.optimizer.adamw.update(dict(b1=0.9, b2=0.95))
  config.data = default_data_config()
  config.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
  config.train = ml_collections.ConfigDict(dict(
      steps=20_000, global_batch_size=256, seq_len=1024, grad_accum=4, noise_stats=True,
      loss_chunk_len=256, seed=0, log_every=50, eval_every=1000, eval_batches=20,
      gradient_exchange="mean",
  ))
  config.checkpoint = ml_collections.ConfigDict(dict(
      every_steps=1000, keep=3, keep_period=5000, async_save=True, nan_policy="stop",
      preemption_check_every=10))
  config.distributed = ml_collections.ConfigDict(dict(
      coordinator_address=None, num_processes=None, process_id=None, auto=True))
  return config
