"""Li et al. 2026, Fig. 2-5 and eq. 2 at paper scale: loss curves of the ~100M LLaMA.

sign_sgd, signum and sgd at B in {64, 128, 256, 512} (sequences of 1024 tokens),
constant learning rate without warmup or weight decay, 20,000 steps for every B
(B=512 sees 10.5B tokens). Sign methods use eta = 5e-4 as in App. D; sgd's rate
is ours to tune (0.3 here; sweep it first on a short run).

Cost: 7.7e8 FLOP/token (``signflax.model.flops_per_token``, 32k vocabulary) x
19.7B tokens per optimizer = 1.5e19 FLOP; at 40% MFU on an H100 (bf16 peak
989 TFLOP/s) that is ~10.6 H100-hours per optimizer, ~32 H100-hours for the
12 points. Run the points in parallel as a SLURM array:

    sbatch --array=0-11 launch/slurm_sweep.sbatch --config sweeps/paper_curves \
        --workdir /shared/sweeps/curves --config.base.data.source=text \
        --config.base.data.paths='/data/fineweb/*.txt' \
        --config.base.data.tokenizer=/data/llama/tokenizer.json
    signflax fit --sweep /shared/sweeps/curves --law collapse
    signflax fit --sweep /shared/sweeps/curves --law predict   # 25% of B=64, 50% of B=128
"""

import ml_collections

from signflax.experiments.sweep import base_config


def get_config():
  config = ml_collections.ConfigDict()
  config.base = base = base_config("lm/llama_100m.py")
  base.optimizer.update(dict(name="sign_sgd", learning_rate=5e-4, schedule="constant",
                             warmup_steps=0, weight_decay=0.0))
  base.train.update(dict(steps=20_000, grad_accum=1, noise_stats=False, log_every=50,
                         eval_every=2_000))
  config.zip = [("optimizer.name", ["sign_sgd", "signum", "sgd"]),
                ("optimizer.learning_rate", [5e-4, 5e-4, 0.3])]
  config.product = [("train.global_batch_size", [64, 128, 256, 512])]
  return config
