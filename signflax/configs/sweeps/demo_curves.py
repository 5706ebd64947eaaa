"""CPU demo of the `collapse` and `predict` laws (Li et al. 2026, Fig. 2-5 and eq. 2).

Loss curves of sign_sgd, signum and sgd at B in {8, 16, 32, 64}, each at one
constant learning rate for all B (as in the paper), 200 steps of the tiny model.

    signflax sweep --config sweeps/demo_curves --workdir runs/sweeps/curves
    signflax fit --sweep runs/sweeps/curves --law collapse
    signflax fit --sweep runs/sweeps/curves --law predict     # fits B=8 (25%), B=16 (50%)
"""

import ml_collections

from signflax.experiments.sweep import base_config


def get_config():
  config = ml_collections.ConfigDict()
  config.base = base_config("sweeps/_demo_base.py")
  config.zip = [("optimizer.name", ["sign_sgd", "signum", "sgd"]),
                ("optimizer.learning_rate", [1e-3, 1e-3, 0.3])]
  config.product = [("train.global_batch_size", [8, 16, 32, 64])]
  return config
