"""Compute-optimal model size on power-law random features (Paquette et al. 2024 Fig. 1;
Kim et al. 2026): loss vs compute F = d x samples per model size d, the frontier over d,
its exponent and d*(F), for sgd vs sign_sgd and constant vs WSD vs stable-decay.

Cases (alpha: data / feature decay, beta: target decay), one per phase the papers single
out (theory.plrf_phase):
* noise_dominated (Phase III, beta > alpha > 1/2): SGD's frontier is set by its noise
  K_pp; predicted eta = 1 - 1/(4 alpha) = 0.75, xi = 1/2; signSGD predicted steeper.
* signal_dominated (Phase II, 1/2 < beta < alpha): eta = (2a+2b-1)/(2(a+b)), xi = b/(a+b);
  no signSGD advantage claimed.
* fast_features_slow_target (Phase Ia, 2 beta < 1, alpha large): eta = (2a+2b-1)/(2a+1),
  xi = 1/(2a+1); stable-decay predicted to steepen signSGD's slope.

CPU default: about 6 min on 2 cores (8 compiled programs: 4 sizes x 2 optimizers).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.experiment = "compute_optimal"
  c.cases = ml_collections.ConfigDict({
      "noise_dominated": {"alpha": 1.0, "beta": 1.5},
      "signal_dominated": {"alpha": 1.0, "beta": 0.7},
      "fast_features_slow_target": {"alpha": 1.5, "beta": 0.4},
  })
  c.num_features = 512                  # v; the same features for every d
  c.dims = (16, 32, 64, 128)            # model sizes d (one compiled program each)
  c.noise_std = 0.0                     # label noise (0 in the papers)
  c.batch_size = 1
  c.optimizers = ("sgd", "sign_sgd")
  c.schedules = ("constant", "wsd", "stable_decay")   # stable_decay = WSD without warmup
  c.decay_fraction = 0.2
  c.warmup_fraction = 0.05
  # Compute budgets F = 2^11..2^19 (d x samples); every (d, F) has >= min_steps steps.
  c.log2_compute_min = 11
  c.log2_compute_max = 19
  c.min_steps = 16
  # Peak learning-rate grids, tuned per (d, F, schedule).
  c.sgd_lr_min = 2.0**-6
  c.sgd_lr_max = 1.0
  c.sign_lr_min = 2.0**-13
  c.sign_lr_max = 2.0**-4
  c.lr_points_per_octave = 1
  c.num_seeds = 8
  c.num_embeddings = 8                  # feature matrices W (seeds seed..seed+7); exponents
                                        # are reported as mean +- 95% CI over W
  c.seed = 0
  c.num_devices = 0                     # 0 = all devices
  return c
