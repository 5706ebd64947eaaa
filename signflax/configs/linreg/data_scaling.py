"""Data scaling (Li et al. 2026, Fig. 1b): best loss over (eta, B) vs data budget D.

alpha=4, beta=3 (s=1): predicted exponents s/(s+1)=0.5 (SGD), 2s/(2s+1)=0.667
(signSGD). beta in 3-4 gives clean asymptotes and alpha != beta avoids the one-step
artifact (see the reference note). ~2 min on 2 CPU cores; scale up with e.g.
--config.dim=2000 --config.log2_budget_max=24 --config.num_seeds=64 on a GPU.

Learning-rate grid: gamma = lr_min * 2^((k + 1/4) / lr_points_per_octave), a quarter
step off the powers of two. With D and B powers of two, eta*K is then never an integer:
on a power-of-two grid a sign step at a large batch can travel exactly eta*K = 1 and land
on theta*_1 = 1 (true for every alpha, beta), a best point 10-25% below the plateau that
fakes the exponent. stable_only = True also drops cells outside the region the laws
describe (eta*sqrt(B) > 1 for sign methods, eta > 1 for SGD). Best points that still look
like resonances (eta*K within 0.01 of an integer, or a dip below both B neighbours by more
than twice the seed error) are flagged in the table and results.json.
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
  c.lr_grid_offset = 0.25              # grid points off the powers of two
  c.stable_only = True                   # only eta*sqrt(B) <= 1 (sign), eta <= 1 (SGD)
  c.lr_points_per_octave = 1
  c.num_seeds = 16
  c.seed = 0
  c.num_devices = 0                      # 0 = all devices
  return c
