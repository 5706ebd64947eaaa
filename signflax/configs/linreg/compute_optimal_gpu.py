"""Compute-optimal model size on PLRF at GPU scale (see compute_optimal.py for the cases
and predictions): d = 64..1024, v = 4096, F = 2^16..2^26, 32 seeds.

Cost (estimated, not yet measured on a GPU): the run is bound by sequential steps at
small d -- 2^26 / 64 = 1M steps of about 20 us for d = 64 -- and by the O(B v d) sample
embedding at large d (2^26 x 4096 x 32 seeds ~ 9e12 multiply-adds per (d, optimizer),
seconds on an H100). 5 sizes x 2 optimizers x 3 cases = 30 programs of ~20-60 s: about
15-30 min on one H100; CPU would take days. Run with
``signflax linreg --config configs/linreg/compute_optimal_gpu.py --workdir DIR``.
"""

import pathlib

from signflax.config_io import load_config_file


def get_config():
  c = load_config_file(pathlib.Path(__file__).with_name("compute_optimal.py"))
  c.num_features = 4096
  c.dims = (64, 128, 256, 512, 1024)
  c.log2_compute_min = 16
  c.log2_compute_max = 26
  c.min_steps = 64
  c.lr_points_per_octave = 2
  c.num_seeds = 32
  return c
