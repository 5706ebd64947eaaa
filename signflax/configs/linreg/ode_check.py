"""ODE check (Xiao et al. 2024): signSGD with one sample per step and step eta/d vs
the risk ODE dv_j/dt = -(4 eta/pi) sqrt(lambda_j) v_j / sqrt(2R + sigma^2) + eta^2/(2d).

d = 1000, alpha = 1.5, beta = 1.2 (a flat target and spectrum, so no single coordinate
dominates the risk: the high-dimensional regime of the ODE; max gap ~1%). ~15 s on 2 CPU cores.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.experiment = "ode_check"
  c.dim = 1000
  c.alpha = 1.5
  c.beta = 1.2
  c.noise_std = 1.0
  c.noise_model = "minibatch"            # one real sample per step
  c.optimizers = ("sign_sgd",)
  c.schedule = "constant"
  c.decay_fraction = 0.2
  c.ode_learning_rate = 0.5              # step size eta / d
  c.ode_time = 32.0                      # t = k / d
  c.ode_num_times = 12
  c.num_seeds = 16
  c.seed = 0
  c.num_devices = 0
  return c
