"""Li et al. 2026, Fig. 6 and 7 at paper scale: (eta, B) grids of the ~100M LLaMA at D = 10B.

sign_sgd and sgd over B in {64, 128, 256, 512} x five learning rates around each
family's rate at B=64 (sign_sgd 5e-4, moved by the square-root rule; sgd 0.3,
moved by the linear rule), every point trained on D = 10B tokens with a constant
learning rate. Fits: ``batch`` (Fig. 6b), ``phase`` (Fig. 7) and
``data_scaling`` (Fig. 6a, from the best loss over the grid at each D <= 10B
along the curves).

Cost: 7.7e8 FLOP/token x 10B tokens = 7.7e18 FLOP per point, ~5.4 H100-hours at
40% MFU; 40 points = ~216 H100-hours (halve it with
``--config.base.train.global_batch_size`` ranges or fewer gammas).

    sbatch --array=0-39 launch/slurm_sweep.sbatch --config sweeps/paper_grid \
        --workdir /shared/sweeps/grid --config.base.data.source=text ...
    signflax fit --sweep /shared/sweeps/grid --law phase
"""

import ml_collections

from signflax.experiments.sweep import base_config


def get_config():
  config = ml_collections.ConfigDict()
  config.base = base = base_config("lm/llama_100m.py")
  base.optimizer.update(dict(name="sign_sgd", learning_rate=5e-4, schedule="constant",
                             warmup_steps=0, weight_decay=0.0))
  base.train.update(dict(grad_accum=1, noise_stats=False, log_every=50, eval_every=2_000))
  config.product = [("optimizer.name", ["sign_sgd", "sgd"]),
                    ("train.global_batch_size", [64, 128, 256, 512]),
                    ("gamma", [0.25, 0.5, 1.0, 2.0, 4.0]),
                    ("tokens", [10_000_000_000])]
  config.gamma_rules = {"sign_sgd": ("sqrt", 5e-4), "sgd": ("linear", 0.3)}
  config.gamma_base_batch_size = 64
  return config
