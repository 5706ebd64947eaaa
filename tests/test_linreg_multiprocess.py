"""The lab's simulators give the same risk bit for bit whatever the process count.

``linreg.simulate`` (minibatch and Hessian-aligned noise) and ``plrf.simulate_plrf`` (one
W and a stack of W) shard their run axis over ``jax.devices()``; with several processes
each holds some of the rows and ``multihost_utils.process_allgather`` brings the whole
risk back to every process. The single-process property tests
(``test_linreg_bitidentity``) cover 1 vs 8 devices; here one script runs a few fixed
shapes with every optimizer (``_every_optimizer``) as 1 process x 1 device, 1 x 8 and
2 processes x 4 devices (gloo collectives over 127.0.0.1), and every risk array must be
equal: the summation order must not follow the process layout, and the gather must
return every row in place on each process.
"""

import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

from gcs_emulator import _free_port

TESTS = pathlib.Path(__file__).resolve().parent
TIMEOUT_S = 240

# argv: output prefix, process id, process count, coordinator port. Each process saves
# what it got back (the whole risk, gathered) to <prefix>-<pid>.npz.
_SCRIPT = r"""
import sys
import jax
import numpy as np

out, pid, nproc, port = sys.argv[1], *map(int, sys.argv[2:])
if nproc > 1:
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=nproc, process_id=pid)

from signflax import linreg
from signflax.linreg import plrf
from test_linreg_bitidentity import _every_optimizer, _learning_rates

# (d, B, seeds, v - d, the PLRF's feature matrices): 5 seeds leave padding rows.
SHAPES = [(23, 1, 5, 0, [3, 1]), (64, 4, 16, 29, 3)]
STEPS = dict(num_steps=12, record_steps=[1, 5, 12])
results = {}
for i, (d, batch, seeds, extra, w_seed) in enumerate(SHAPES):
  lrs = _learning_rates(np.random.default_rng(i), 5)           # one rate per optimizer
  problem = linreg.power_law_problem(d, 3.0, 1.5, noise_std=0.5)
  for noise in linreg.NOISE_MODELS:
    results[f"{noise}_{i}"] = linreg.simulate(problem, _every_optimizer, lrs, [batch],
                                              num_seeds=seeds, noise_model=noise, **STEPS).risk
  features = plrf.plrf_problem(d + extra, d, 1.0, 0.7, noise_std=0.1, seed=w_seed)
  results[f"plrf_{i}"] = plrf.simulate_plrf(features, _every_optimizer, lrs, batch,
                                            num_seeds=seeds, **STEPS).risk
assert jax.process_count() == nproc
for key, risk in results.items():
  assert isinstance(risk, np.ndarray) and np.all(np.isfinite(risk)), key
  assert np.ptp(risk[..., -1]) > 0, key                       # the runs differ
np.savez(f"{out}-{pid}.npz", layout=[jax.process_count(), jax.device_count()], **results)
"""


def _start(out, devices: int, pid: int, nproc: int, port: int):
  """Process ``pid`` of a layout; its stdout and stderr go to ``<out>-<pid>.log``."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             PYTHONPATH=os.pathsep.join([str(TESTS.parent), str(TESTS)]))
  env.pop("JAX_COORDINATOR_ADDRESS", None)
  with open(f"{out}-{pid}.log", "w") as log:
    return subprocess.Popen([sys.executable, "-c", _SCRIPT, str(out), str(pid), str(nproc),
                             str(port)], cwd=TESTS.parent, env=env, stdout=log,
                            stderr=subprocess.STDOUT)


def _wait(procs: dict, logs: pathlib.Path) -> None:
  """Waits for every process up to ``TIMEOUT_S`` in all, kills what is left, and fails
  with the output of every process of each layout that did not exit 0."""
  deadline = time.monotonic() + TIMEOUT_S
  for group in procs.values():
    for proc in group:
      try:
        proc.wait(timeout=max(deadline - time.monotonic(), 0))
      except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
  failed = {name: group for name, group in procs.items() if any(p.returncode for p in group)}
  if failed:
    pytest.fail("\n".join(
        f"--- {name} process {i}, exit {p.returncode}"
        + (f" (killed after {TIMEOUT_S} s)" if p.returncode == -9 else "") + ":\n"
        + (logs / f"{name}-{i}.log").read_text()[-4000:]
        for name, group in failed.items() for i, p in enumerate(group)))


def _load(out, pid: int, nproc: int, devices: int) -> dict[str, np.ndarray]:
  with np.load(f"{out}-{pid}.npz") as arrays:
    arrays = dict(arrays)
  assert arrays.pop("layout").tolist() == [nproc, nproc * devices], out
  return arrays


@pytest.mark.slow
def test_risk_is_bit_identical_across_process_and_device_counts(tmp_path):
  """The four processes run at once (compiling is mostly single-threaded); process 1
  of 2x4 must have got back the same whole risk as process 0."""
  layouts = {"2x4": (2, 4), "1x8": (1, 8), "1x1": (1, 1)}
  port = _free_port()
  procs = {name: [_start(tmp_path / name, devices, pid, nproc, port) for pid in range(nproc)]
           for name, (nproc, devices) in layouts.items()}
  _wait(procs, tmp_path)
  risk = {name: _load(tmp_path / name, 0, *layout) for name, layout in layouts.items()}
  risk["2x4 process 1"] = _load(tmp_path / "2x4", 1, *layouts["2x4"])
  two = risk.pop("2x4")
  assert two["plrf_0"].shape == (2, 5, 5, 3) and len(two) == 6   # the stack: (W, S, C, R)
  for name, one in risk.items():
    assert one.keys() == two.keys()
    for key in one:
      assert one[key].shape == two[key].shape, key
      diff = np.max(np.abs(one[key] - two[key]) / np.maximum(np.abs(one[key]), 1e-30))
      assert np.array_equal(one[key], two[key]), f"{key}: 2x4 vs {name}, max rel diff {diff:.3g}"
