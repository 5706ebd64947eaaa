"""LLaMA-style model at GPT-2-small shape (Tao et al.'s GPT-2 124M setting).

12 layers, 768 wide, 12 heads, context 1024, vocab 50304 (GPT-2's 50257 padded
to a multiple of 128), tied embeddings; SwiGLU with 2048 hidden units matches
GPT-2's 3072-wide GELU MLP in parameters: 124M in all. About 0.5M tokens per
step (512 x 1024, nanoGPT's batch) as 8 accumulated microbatches of 64.
No remat: compiled for TPU v5e (``signflax compile --topology v5e:2x2``), 16
sequences per chip in one pass need 11.6 of 16 GiB of HBM per chip.

Point the data at a real corpus and a GPT-2 ``tokenizer.json``:

    signflax train --config lm/gpt2_124m --workdir runs/gpt2 \
        --config.data.source=text --config.data.paths='/data/owt/*.txt' \
        --config.data.tokenizer=/data/gpt2/tokenizer.json --config.optimizer.name=signum \
        --config.optimizer.learning_rate=3e-4
"""

import ml_collections

from signflax.configs.lm._base_1024 import get_base_config


def get_config() -> ml_collections.ConfigDict:
  config = get_base_config()
  config.model.update(dict(vocab_size=50304, remat="none"))
  config.optimizer.update(dict(learning_rate=6e-4, warmup_steps=700, grad_clip_norm=1.0))
  config.train.update(dict(global_batch_size=512, grad_accum=8))
  return config
