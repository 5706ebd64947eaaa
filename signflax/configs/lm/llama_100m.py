"""A ~100M-parameter LLaMA (the setting of Li et al. 2026: batch 64-512, lr 5e-4).

12 layers, 768 wide, 12 heads, SwiGLU 2048, context 1024: 85M parameters in the
blocks plus the embedding (tied; 24.6M with a 32k tokenizer). vocab_size None
follows the tokenizer: set ``data.tokenizer`` to a LLaMA-style ``tokenizer.json``
and the data to a real corpus. bfloat16 compute, FSDP over every device.

    signflax train --config lm/llama_100m --workdir runs/llama100m \
        --config.data.source=text --config.data.paths='/data/fineweb/*.txt' \
        --config.data.tokenizer=/data/llama/tokenizer.json --config.train.global_batch_size=512
"""

import ml_collections

from signflax.configs.lm._base_1024 import get_base_config


def get_config() -> ml_collections.ConfigDict:
  config = get_base_config()
  config.model.update(dict(vocab_size=None, remat="dots"))
  config.optimizer.update(dict(learning_rate=5e-4, warmup_steps=1000, grad_clip_norm=0.0))
  config.train.update(dict(global_batch_size=256, grad_accum=4))
  return config
