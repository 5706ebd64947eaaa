"""CPU demo of the `batch`, `phase` and `data_scaling` laws (Fig. 6a/6b, Fig. 7).

sign_sgd and sgd over B in {4, 8, 16} x three learning rates at a fixed token
budget (D = 32,768 tokens: 128 steps at B=4 down to 32 at B=16). Small enough
for a shared CPU; widen the axes with --config.product=... where cores are free. The learning
rate axis is in the theory's coordinates: gamma multiplies each family's rate at
B=8, moved to B by the square-root rule (sign_sgd) or the linear rule (sgd).
Constant learning rates make every curve a run at each smaller budget too, so
`data_scaling` takes the best loss over (eta, B) at several D from the curves.

    signflax sweep --config sweeps/demo_grid --workdir runs/sweeps/grid
    signflax fit --sweep runs/sweeps/grid --law batch
    signflax fit --sweep runs/sweeps/grid --law phase
    signflax fit --sweep runs/sweeps/grid --law data_scaling
"""

import ml_collections

from signflax.experiments.sweep import base_config


def get_config():
  config = ml_collections.ConfigDict()
  config.base = base_config("sweeps/_demo_base.py")
  config.base.checkpoint.every_steps = 0  # only at the end: these runs are short
  # optimizer innermost: the two families advance together through the grid
  config.product = [("train.global_batch_size", [4, 8, 16]),
                    ("gamma", [0.25, 2.0, 16.0]),
                    ("optimizer.name", ["sign_sgd", "sgd"]),
                    ("tokens", [32_768])]
  config.gamma_rules = {"sign_sgd": ("sqrt", 1e-3), "sgd": ("linear", 0.1)}
  config.gamma_base_batch_size = 8
  return config
