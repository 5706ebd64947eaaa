"""A 1.1B-parameter LLaMA for TPU pods (TinyLlama's depth and width, 128-wide heads).

22 layers, 2048 wide, 16 query heads on 4 key/value heads (grouped-query, head
size 128), SwiGLU 5632, context 2048, untied 32k embeddings: 1.1B parameters.
bfloat16 compute, FSDP over every chip, AdamW (b1 0.9, b2 0.95) on a
warmup-stable-decay schedule; 1024 sequences of 2048 tokens (2M tokens) per step.

Fitted on the compiled TPU program (``signflax compile``): on ``v5e:16x16``
(256 chips, 4 sequences per chip, FSDP 256) the step needs 7.3 of 16 GiB per
chip with ``remat=dots`` (2.0 GiB with ``remat=full``, whose recomputed forward
pass costs a third more FLOPs); see ``benchmarks/NOTES.md``, TPU plan. vocab_size is fixed at 32000 (a LLaMA-2
tokenizer); set it to your tokenizer's.

    signflax compile --config lm/llama_1b --topology v5e:16x16
    signflax train --config lm/llama_1b --workdir gs://bucket/runs/llama1b \
        --config.data.source=text --config.data.paths='gs://bucket/data/*.txt' \
        --config.data.tokenizer=gs://bucket/llama/tokenizer.json
"""

import ml_collections

from signflax.train.schema import default_config


def get_config() -> ml_collections.ConfigDict:
  config = default_config()
  config.model.update(dict(vocab_size=32000, num_layers=22, d_model=2048, num_heads=16,
                           num_kv_heads=4, mlp_dim=5632, max_seq_len=2048,
                           tie_embeddings=False, dtype="bfloat16", remat="dots"))
  config.optimizer.update(dict(name="adamw", learning_rate=4e-4, schedule="wsd",
                               warmup_steps=2000, decay_fraction=0.2, weight_decay=0.1,
                               grad_clip_norm=1.0))
  config.optimizer.adamw.update(dict(b1=0.9, b2=0.95))
  config.mesh.update(dict(data=1, fsdp=-1, tensor=1))
  config.train.update(dict(steps=50_000, global_batch_size=1024, seq_len=2048, grad_accum=1,
                           loss_chunk_len=512, log_every=50, eval_every=1000, eval_batches=20,
                           noise_stats=False))
  config.checkpoint.update(dict(every_steps=1000, keep=3, keep_period=10_000))
  return config
