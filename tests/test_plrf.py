"""Tests of the power-law random-features lab (signflax.linreg.plrf, compute_optimal)."""

import json
import pathlib

import jax
import numpy as np
import optax
import pytest

from signflax import cli, config_io
from signflax.experiments import compute_optimal, linreg as lab
from signflax.linreg import plrf, theory

REPO = pathlib.Path(__file__).resolve().parent.parent
CONFIG = REPO / "signflax" / "configs" / "linreg" / "compute_optimal.py"


def test_problem_scaling_and_exact_risk():
  p = plrf.plrf_problem(400, 100, alpha=1.0, beta=0.7)
  j = np.arange(1, 401)
  np.testing.assert_allclose(p.feature_std, j ** -1.0, rtol=1e-6)
  np.testing.assert_allclose(p.target, j ** -0.7, rtol=1e-6)
  assert np.var(np.asarray(p.embedding)) == pytest.approx(1 / 100, rel=0.05)  # N(0, 1/d)
  # P(0) = 1/2 sum j^(-2 alpha - 2 beta); the floor F_0(d) is below it and above 0.
  assert float(plrf.plrf_risk(p, np.zeros(100))) == pytest.approx(0.5 * np.sum(j ** -3.4),
                                                                   rel=1e-5)
  assert 0 < plrf.plrf_limit_risk(p) < 0.1 * float(plrf.plrf_risk(p, np.zeros(100)))


def test_sgd_exact_recursion_matches_simulated_mean_risk():
  p = plrf.plrf_problem(64, 16, 1.0, 0.7)
  steps = [5, 50, 400]
  result = plrf.simulate_plrf(p, optax.sgd, [0.5], 4, 400, num_seeds=256, record_steps=steps)
  runs = result.risk[:, 0]
  mean, stderr = runs.mean(0), runs.std(0, ddof=1) / np.sqrt(runs.shape[0])
  exact = plrf.sgd_plrf_risk_recursion(p, [0.5], 4, steps)[0]
  # Within 4 Monte-Carlo standard errors at every recorded step ...
  assert np.all(np.abs(mean - exact) < 4 * stderr), (mean, exact, stderr)
  # ... and the check has teeth: a 25% larger step size is rejected.
  wrong = plrf.sgd_plrf_risk_recursion(p, [0.625], 4, steps)[0]
  assert np.any(np.abs(mean - wrong) > 4 * stderr), (mean, wrong, stderr)


def test_results_do_not_depend_on_device_count_and_schedules_end_at_their_horizon():
  assert len(jax.devices()) == 8
  p = plrf.plrf_problem(48, 12, 1.0, 1.5)
  kwargs = dict(num_seeds=8, record_steps=[10, 40, 100], horizons=[40, 40, 100, 100],
                schedules=["wsd", "stable_decay", "constant", "stable_decay"])
  one = plrf.simulate_plrf(p, optax.sign_sgd, [0.01] * 4, 2, 100, devices=jax.devices()[:1],
                           **kwargs)
  eight = plrf.simulate_plrf(p, optax.sign_sgd, [0.01] * 4, 2, 100, **kwargs)
  np.testing.assert_array_equal(one.risk, eight.risk)
  assert np.all(np.isfinite(one.risk)) and np.ptp(one.risk[..., -1]) > 0
  # After its horizon a WSD run has rate 0: its risk is frozen.
  np.testing.assert_array_equal(one.risk[:, :2, 1], one.risk[:, :2, 2])
  assert np.all(one.risk[:, 2:, 1] != one.risk[:, 2:, 2])


@pytest.mark.slow
def test_sgd_frontier_exponent_near_paquette_phase_ii():
  # Phase II (alpha=1, beta=0.7): predicted P*(F) ~ F^-(2a+2b-1)/(2(a+b)) = F^-0.706. From
  # the exact expected risk (no seed noise) at d <= 64, v = 256, F <= 2^16 the fitted
  # exponent is ~0.6: finite sizes bend the frontier, hence the stated tolerance 0.15.
  alpha, beta = 1.0, 0.7
  dims, budgets = [8, 16, 32, 64], 2 ** np.arange(10, 17)
  lrs = 2.0 ** np.arange(-3, 0)
  per_size = np.array([plrf.sgd_plrf_risk_recursion(
      plrf.plrf_problem(256, d, alpha, beta), lrs, 1, budgets // d).min(0) for d in dims])
  front = compute_optimal.frontier(budgets, dims, per_size)
  predicted = theory.plrf_sgd_compute_optimal(alpha, beta)
  assert predicted.phase == "II"
  assert abs(front["loss_exponent"] - predicted.loss_exponent) < 0.15, front["loss_exponent"]
  assert 0 < front["dim_exponent"] < 1           # bigger budgets buy bigger models


def test_phases_and_predicted_exponents():
  assert [theory.plrf_phase(a, b) for a, b in
          ((1.0, 1.5), (1.0, 0.7), (1.5, 0.4), (0.4, 0.3), (0.2, 0.8), (0.4, 0.8))] == [
              "III", "II", "Ia", "Ib", "Ic", "IV"]
  assert theory.plrf_sgd_compute_optimal(1.0, 1.5)[1:3] == (0.75, 0.5)
  # The exponents balance the two dominant loss terms at F = d r, d = F^xi.
  for alpha, beta in ((1.0, 0.7), (1.5, 0.4), (1.0, 1.5)):
    pred = theory.plrf_sgd_compute_optimal(alpha, beta)
    f = np.array([1e12, 1e14])
    d = f ** pred.dim_exponent
    terms = theory.plrf_sgd_loss_terms(alpha, beta, d, f / d)
    first, second = pred.balance.split(" = ")
    np.testing.assert_allclose(terms[first], terms[second], rtol=1e-9)
    slope = -np.diff(np.log(terms[first])) / np.diff(np.log(f))
    assert slope[0] == pytest.approx(pred.loss_exponent)
  assert theory.plrf_signsgd_claims(1.0, 1.5)["sign_steeper_than_sgd"] is True
  with pytest.raises(ValueError, match="alpha"):
    theory.plrf_sgd_compute_optimal(0.4, 0.8)


@pytest.mark.parametrize("override,needle", [
    ("--config.cases.noise_dominated.alpha=0.0", "config.cases.noise_dominated.alpha: must be > 0"),
    ("--config.num_features=64", "config.num_features: must be >= max(dims)=128"),
    ("--config.schedules=('constant', 'cosine')", "config.schedules: must be a non-empty tuple of names from constant"),
    ("--config.dims=()", "config.dims: must be a non-empty tuple"),
])
def test_cli_rejects_bad_configs_in_one_line(override, needle, tmp_path, capsys):
  workdir = tmp_path / "run"
  code = cli.main(["linreg", "--config", str(CONFIG), "--workdir", str(workdir), override])
  err = capsys.readouterr().err.strip()
  assert code == 2 and "\n" not in err and needle in err, err
  assert not workdir.exists()


@pytest.mark.slow
def test_default_config_is_valid_and_tiny_run_writes_results(tmp_path, capsys):
  lab.validate(config_io.load_config_file(CONFIG))
  lab.validate(config_io.load_config_file(CONFIG.with_name("compute_optimal_gpu.py")))
  workdir = tmp_path / "run"
  code = cli.main(["linreg", "--config", str(CONFIG), "--workdir", str(workdir),
                   "--config.dims=(4, 8)", "--config.num_features=16", "--config.num_seeds=2",
                   "--config.log2_compute_min=7", "--config.log2_compute_max=9",
                   "--config.schedules=('constant', 'stable_decay')",
                   "--config.lr_points_per_octave=1", "--config.sign_lr_min=0.001",
                   "--config.sign_lr_max=0.004", "--config.sgd_lr_min=0.25"])
  out = capsys.readouterr().out
  assert code == 0 and "linreg compute_optimal:" in out and "stable-decay" in out
  results = json.loads((workdir / "results.json").read_text())
  measured = results["results"]["noise_dominated"]["measured"]["sgd/constant"]
  assert np.isfinite(measured["loss_exponent"])
  assert (workdir / "compute_optimal.png").stat().st_size > 1000
