"""The default job: a 4-layer byte-level LLaMA on the Python standard library.

Trains on 2 CPU cores in about 3 minutes (compile included); its eval loss ends
far below the eval split's byte unigram entropy, which the run logs.

    signflax train --workdir runs/tiny                       # this config
    signflax train --workdir runs/tiny-signum --config.optimizer.name=signum \
        --config.optimizer.learning_rate=3e-4
"""

import ml_collections

from signflax.train.schema import default_config


def get_config() -> ml_collections.ConfigDict:
  # Every field at its declared default (signflax.train.schema.SCHEMA, listed in
  # docs/configuration.md); this job changes only what it must.
  config = default_config()
  config.model.update(dict(
      vocab_size=None,        # None = the tokenizer's vocab (258 bytes+specials) padded to 128
      d_model=128,
      max_seq_len=128,        # the model's context; train.seq_len may not exceed it
  ))
  config.optimizer.update(dict(
      name="adamw",           # sgd | momentum | adamw | lion | sign_sgd | signum | muon
      learning_rate=3e-3,     # peak; every rate follows one schedule shape (warmup, decay)
      warmup_steps=30,
  ))
  # Muon's AdamW fallback (embedding, head, norms) runs at its own peak on the same schedule:
  #   --config.optimizer.name=muon --config.optimizer.muon.fallback_learning_rate=1e-3
  # config.data: the Python standard library's .py files, byte tokens (no download).
  # config.train: 400 steps of 16 x 128 tokens; config.checkpoint: every 100 steps, keep 3.
  return config
