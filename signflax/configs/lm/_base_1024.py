"""What ``gpt2_124m`` and ``llama_100m`` share: a 12 x 768 LLaMA at context 1024.

SwiGLU 2048, bfloat16 compute, FSDP over every device, AdamW (b1 0.9, b2 0.95)
on a warmup-stable-decay schedule, 20k steps with the loss fused into 256-token
chunks; checkpoints every 1000 steps.
"""

import ml_collections

from signflax.train.schema import default_config


def get_base_config() -> ml_collections.ConfigDict:
  config = default_config()
  config.model.update(dict(num_layers=12, d_model=768, num_heads=12, mlp_dim=2048,
                           max_seq_len=1024, dtype="bfloat16"))
  config.optimizer.update(dict(name="adamw", schedule="wsd", decay_fraction=0.2,
                               weight_decay=0.1))
  config.optimizer.adamw.update(dict(b1=0.9, b2=0.95))
  config.mesh.update(dict(data=1, fsdp=-1, tensor=1))
  config.train.update(dict(steps=20_000, seq_len=1024, loss_chunk_len=256, log_every=50,
                           eval_every=1000, eval_batches=20))
  config.checkpoint.update(dict(every_steps=1000, keep=3, keep_period=5000))
  return config
