"""Faulty replicas on data = 8: each exchange x each fault kind x 0..4 faulty replicas.

The tiny byte LLaMA cut to 2 layers x 64 wide (seq 64, 16 rows = 2 per replica),
Signum (beta 0.9, lr 3e-3, 5 warmup steps, cosine) for 60 steps, on 8 forced CPU
devices, all data-parallel. The mean and the 1-bit majority vote run the same
optimizer; the faulty replicas corrupt their gradients from the first step. One
clean run per exchange (kind sign_flip with 0 replicas), then each kind at 1..4
faulty replicas, except ``scaled`` under the vote: ``sign(-s g) = sign(-g)``, so
its votes, updates and losses are those of ``sign_flip`` bit for bit (the report
lists it as such). 2 + 6 x 4 + 5 x 4 = 46 runs.

    signflax fault-sweep --workdir runs/faults          # runs this sweep, then the report
    # 8 CPU devices: the command sets JAX_PLATFORMS=cpu and the host device count if unset
"""

import ml_collections

from signflax.experiments.sweep import base_config
from signflax.train import faults

COUNTS = (1, 2, 3, 4)


def get_config():
  config = ml_collections.ConfigDict()
  config.base = base_config("lm/tiny.py")
  base = config.base
  base.model.update(dict(num_layers=2, d_model=64, num_heads=2, max_seq_len=64))
  base.optimizer.update(dict(name="signum", learning_rate=3e-3, warmup_steps=5,
                             weight_decay=0.0))
  base.data.max_bytes = 400_000
  base.mesh.update(dict(data=8, fsdp=1, tensor=1))
  base.train.update(dict(steps=60, global_batch_size=16, seq_len=64, log_every=5,
                         eval_every=0, eval_batches=4, noise_stats=False))
  base.checkpoint.update(dict(every_steps=0, keep=1, async_save=False))
  # (exchange, kind, replicas) taken together: each exchange's clean run, then the attacks
  points = [(exchange, kind, n) for exchange in ("mean", "sign_vote")
            for kind, n in [("sign_flip", 0)] + [(k, n) for k in faults.KINDS for n in COUNTS]
            if not (exchange == "sign_vote" and kind == "scaled")]
  config.zip = [("train.gradient_exchange", [e for e, _, _ in points]),
                ("train.faults.kind", [k for _, k, _ in points]),
                ("train.faults.replicas", [n for _, _, n in points])]
  return config
