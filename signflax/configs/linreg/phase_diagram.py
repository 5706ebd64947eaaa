"""Phase diagram (Li et al. 2026, Fig. 1a, 8, 9, 10): final loss over eta = D^-a, B = D^b.

Fixed D = 2^16; burn-in (eta K < 1), scaling and unstable (eta sqrt(B) > 1) regions
of Theorem 3.1 drawn over the heat maps of SGD, momentum, signSGD, Signum and Adam.
~1-2 min on 2 CPU cores. The eta grid sits a quarter step off the powers of two
(lr_grid_offset), so eta*K is never an integer (no exact landing on theta*_1 = 1); the
unstable region is part of the picture, so no cell is dropped.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.experiment = "phase_diagram"
  c.dim = 300
  c.alpha = 4.0
  c.beta = 3.0
  c.noise_std = 1.0
  c.noise_model = "hessian_aligned"
  c.optimizers = ("sgd", "momentum", "sign_sgd", "signum", "adamw")
  c.schedule = "constant"
  c.decay_fraction = 0.2
  # D = 2^log2_budget_max; B = 2^log2_batch_min..2^log2_batch_max; eta in [lr_min, lr_max].
  c.log2_budget_min = 16
  c.log2_budget_max = 16
  c.log2_batch_min = 0
  c.log2_batch_max = 13
  c.lr_min = 2.0**-16
  c.lr_max = 1.0
  c.lr_grid_offset = 0.25
  c.lr_points_per_octave = 2
  c.num_seeds = 8
  c.seed = 0
  c.num_devices = 0
  return c
