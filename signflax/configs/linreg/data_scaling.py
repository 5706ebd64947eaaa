"""Data scaling (Li et al. 2026, Fig. 1b): best loss over (eta, B) vs data budget D.

alpha=4, beta=3 (s=1): predicted exponents s/(s+1)=0.5 (SGD), 2s/(2s+1)=0.667
(signSGD). beta in 3-4 gives clean asymptotes and alpha != beta avoids the one-step
artifact (see the reference note). ~2 min on 2 CPU cores; scale up with e.g.
--config.dim=2000 --config.log2_budget_max=24 --config.num_seeds=64 on a GPU.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.experiment = "data_scaling"
  # Problem: lambda_j = j^-beta, lambda_j theta*_j^2 = j^-alpha, label noise sigma.
  c.dim = 500
  c.alpha = 4.0
  c.beta = 3.0
  c.noise_std = 1.0
  c.noise_model = "hessian_aligned"      # or "minibatch"
  # Optimizers (signflax.optim names) and learning-rate schedule.
  c.optimizers = ("sgd", "sign_sgd")
  c.schedule = "constant"                # or "wsd" (runs grouped by horizon K = D/B)
  c.decay_fraction = 0.2
  # Grid: D = 2^10..2^18, B = 2^0..2^12, effective lr gamma = eta/B (SGD) or
  # eta/sqrt(B) (sign) on a log grid.
  c.log2_budget_min = 10
  c.log2_budget_max = 18
  c.log2_batch_min = 0
  c.log2_batch_max = 12
  c.lr_min = 2.0**-16
  c.lr_max = 1.0
  c.lr_points_per_octave = 1
  c.num_seeds = 16
  c.seed = 0
  c.num_devices = 0                      # 0 = all devices
  return c
