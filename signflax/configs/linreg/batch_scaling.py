"""Batch scaling (Li et al. 2026, Fig. 1c): loss vs B at fixed D with eta tuned per B.

Measured critical batch sizes (where the tuned loss first exceeds 2x its small-batch plateau) at
D = 2^12..2^18; their growth exponent vs s/(s+1) (SGD) and 2s/(2s+1) (signSGD).
~1-2 min on 2 CPU cores. SGD also gets the exact-recursion estimate (no seed noise).

Learning-rate grid a quarter step off the powers of two (lr_grid_offset) and cells outside
eta*sqrt(B) <= 1 (sign) or eta <= 1 (SGD) dropped (stable_only), so no best point can be an
exact eta*K = 1 landing on theta*_1; see data_scaling.py for why. Suspect best points are
flagged in the table and results.json.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.experiment = "batch_scaling"
  c.dim = 500
  c.alpha = 4.0
  c.beta = 3.0
  c.noise_std = 1.0
  c.noise_model = "hessian_aligned"
  c.optimizers = ("sgd", "sign_sgd")
  c.schedule = "constant"
  c.decay_fraction = 0.2
  c.log2_budget_min = 12
  c.log2_budget_max = 18
  c.log2_batch_min = 0
  c.log2_batch_max = 16
  c.lr_min = 2.0**-16
  c.lr_max = 1.0
  c.lr_grid_offset = 0.25              # grid points off the powers of two
  c.stable_only = True                   # only eta*sqrt(B) <= 1 (sign), eta <= 1 (SGD)
  c.lr_points_per_octave = 2
  c.num_seeds = 16
  c.seed = 0
  c.num_devices = 0
  return c
