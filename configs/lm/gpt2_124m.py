"""LLaMA-style model at GPT-2-small shape (Tao et al.'s GPT-2 124M setting).

12 layers, 768 wide, 12 heads, context 1024, vocab 50304 (GPT-2's 50257 padded
to a multiple of 128), tied embeddings; SwiGLU with 2048 hidden units matches
GPT-2's 3072-wide GELU MLP in parameters: 124M in all. About 0.5M tokens per
step (512 x 1024, nanoGPT's batch) as 8 accumulated microbatches of 64.

Point the data at a real corpus and a GPT-2 ``tokenizer.json``:

    signflax train --config configs/lm/gpt2_124m.py --workdir runs/gpt2 \
        --config.data.source=text --config.data.paths='/data/owt/*.txt' \
        --config.data.tokenizer=/data/gpt2/tokenizer.json --config.optimizer.name=signum \
        --config.optimizer.learning_rate=3e-4
"""

import ml_collections

from signflax.data import default_data_config
from signflax.train.optimizer import default_optimizer_config


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict(dict(
      vocab_size=50304, num_layers=12, d_model=768, num_heads=12, num_kv_heads=None,
      head_dim=None, mlp_dim=2048, max_seq_len=1024, rope_theta=10_000.0, norm_eps=1e-6,
      tie_embeddings=True, dtype="bfloat16", attention_impl="auto", remat="none",
      init_std=0.02,
  ))
  config.optimizer = default_optimizer_config()
  config.optimizer.update(dict(
      name="adamw", learning_rate=6e-4, schedule="wsd", warmup_steps=700, decay_fraction=0.2,
      decay_shape="linear", final_lr_fraction=0.0, weight_decay=0.1, grad_clip_norm=1.0))
  config.optimizer.adamw.update(dict(b1=0.9, b2=0.95))
  config.data = default_data_config()
  config.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
  config.train = ml_collections.ConfigDict(dict(
      steps=20_000, global_batch_size=512, seq_len=1024, grad_accum=8, noise_stats=True,
      loss_chunk_len=256, seed=0, log_every=50, eval_every=1000, eval_batches=20,
      gradient_exchange="mean",
  ))
  config.checkpoint = ml_collections.ConfigDict(dict(
      every_steps=1000, keep=3, keep_period=5000, async_save=True, nan_policy="stop",
      preemption_check_every=10))
  config.distributed = ml_collections.ConfigDict(dict(
      coordinator_address=None, num_processes=None, process_id=None, auto=True))
  return config
