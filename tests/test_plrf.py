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
    ("--config.num_embeddings=0", "config.num_embeddings: must be an integer >= 1"),
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
                   "--config.num_embeddings=2",
                   "--config.log2_compute_min=7", "--config.log2_compute_max=9",
                   "--config.schedules=('constant', 'stable_decay')",
                   "--config.lr_points_per_octave=1", "--config.sign_lr_min=0.001",
                   "--config.sign_lr_max=0.004", "--config.sgd_lr_min=0.25"])
  out = capsys.readouterr().out
  assert code == 0 and "linreg compute_optimal:" in out and "stable-decay" in out
  results = json.loads((workdir / "results.json").read_text())
  measured = results["results"]["noise_dominated"]["measured"]["sgd/constant"]
  # Two feature matrices (the default is 8): an exponent per W, their mean and interval.
  eta = measured["loss_exponent"]
  assert len(eta["values"]) == 2 and len(measured["per_embedding"]) == 2
  assert np.isfinite(eta["mean"]) and eta["low"] <= eta["mean"] <= eta["high"]
  assert eta["mean"] == pytest.approx(np.mean(eta["values"]))
  assert "confirmed" in out                 # every SGD row carries a verdict
  assert (workdir / "compute_optimal.png").stat().st_size > 1000


_PLRF = plrf.plrf_problem(24, 6, 1.0, 1.5)
_NAN, _INF = float("nan"), float("inf")


@pytest.mark.parametrize("call,needle", [
    (lambda: theory.plrf_phase(1.0, _NAN), "beta"),
    (lambda: theory.plrf_phase(_INF, 1.0), "alpha"),
    (lambda: theory.plrf_phase(-1.0, 2.0), "alpha"),
    (lambda: theory.plrf_sgd_compute_optimal(1, _NAN), "beta"),
    (lambda: theory.plrf_sgd_loss_terms(1.0, 1.5, [16, _NAN], [10, 10]), "dim"),
    (lambda: theory.plrf_sgd_loss_terms(1.0, 1.5, [16], [-1]), "steps"),
    (lambda: theory.plrf_sgd_loss_terms(1.0, 1.5, [16], [10], learning_rate=0.0),
     "learning_rate"),
    (lambda: theory.plrf_sgd_loss_terms(1.0, 1.5, [], [10]), "dim"),
    (lambda: theory.plrf_signsgd_claims(_NAN, 1.0), "alpha"),
    (lambda: plrf.plrf_problem(24, 6, 1.0, _NAN), "beta"),
    (lambda: plrf.plrf_problem(24, 5.5, 1.0, 1.5), "dim"),
    (lambda: plrf.plrf_problem(24.0, 6, 1.0, 1.5), "num_features"),
    (lambda: plrf.plrf_problem(24, 6, _INF, 1.5), "alpha"),
    (lambda: plrf.plrf_problem(24, 6, 1.0, 1.5, noise_std=-0.1), "noise_std"),
    (lambda: plrf.plrf_problem(24, 6, 1.0, 1.5, seed=[]), "seed"),
    (lambda: plrf.plrf_problem(24, 6, 1.0, 1.5, seed=-1), "seed"),
    (lambda: plrf.plrf_risk(_PLRF, np.full(6, _NAN)), "theta"),
    (lambda: plrf.plrf_risk(_PLRF, np.zeros(5)), "theta"),
    (lambda: plrf.sgd_plrf_risk_recursion(_PLRF, [0.1], 0, [10]), "batch_size"),
    (lambda: plrf.sgd_plrf_risk_recursion(_PLRF, [0.1], 1, [-1]), "steps"),
    (lambda: plrf.sgd_plrf_risk_recursion(_PLRF, [0.1], 1, []), "steps"),
    (lambda: plrf.sgd_plrf_risk_recursion(_PLRF, [_NAN], 1, [10]), "learning_rates"),
    (lambda: plrf.sgd_plrf_risk_recursion(_PLRF, [], 1, [10]), "learning_rates"),
    (lambda: plrf.sgd_plrf_risk_recursion(_PLRF, [0.1], 1, [2.5]), "steps"),
    (lambda: plrf.scheduled_learning_rate("cosine", 0.1, 10), "schedule"),
    (lambda: plrf.scheduled_learning_rate("wsd", -0.1, 10), "learning_rate"),
    (lambda: plrf.scheduled_learning_rate("wsd", 0.1, _INF), "horizon"),
    (lambda: plrf.scheduled_learning_rate("wsd", 0.1, 10, decay_fraction=_NAN), "decay_fraction"),
    (lambda: plrf.simulate_plrf(_PLRF, optax.sgd, [_NAN], 1, 10), "learning_rates"),
    (lambda: plrf.simulate_plrf(_PLRF, optax.sgd, [-0.1], 1, 10), "learning_rates"),
    (lambda: plrf.simulate_plrf(_PLRF, optax.sgd, [], 1, 10), "learning_rates"),
    (lambda: plrf.simulate_plrf(_PLRF, optax.sgd, [0.1], 1, 10, num_seeds=0), "num_seeds"),
    (lambda: plrf.simulate_plrf(_PLRF, optax.sgd, [0.1], 0, 10), "batch_size"),
    (lambda: plrf.simulate_plrf(_PLRF, optax.sgd, [0.1], 1, 10.0), "num_steps"),
    (lambda: plrf.simulate_plrf(_PLRF, optax.sgd, [0.1], 1, 10, horizons=[_NAN]), "horizons"),
    (lambda: plrf.simulate_plrf(_PLRF, optax.sgd, [0.1], 1, 10, record_steps=[_NAN]),
     "record_steps"),
    (lambda: plrf.simulate_plrf(_PLRF, optax.sgd, [0.1], 1, 10, record_steps=[20]),
     "record_steps"),
    (lambda: plrf.simulate_plrf(_PLRF, optax.sgd, [0.1], 1, 10, warmup_fraction=-0.1),
     "warmup_fraction"),
    (lambda: plrf.simulate_plrf(_PLRF, optax.sgd, [0.1], 1, 10, seed=_NAN), "seed"),
    (lambda: plrf.plrf_limit_risk(plrf.plrf_problem(24, 6, 1.0, 1.5, seed=[0, 1])), "problem"),
])
def test_plrf_functions_refuse_bad_inputs_in_one_line(call, needle):
  with pytest.raises(ValueError) as info:
    call()
  message = str(info.value)
  assert "\n" not in message and message.startswith(needle), message


def test_stacked_feature_matrices_match_single_problems():
  stack = plrf.plrf_problem(30, 6, 1.0, 0.7, seed=[0, 4])
  singles = [plrf.plrf_problem(30, 6, 1.0, 0.7, seed=s) for s in (0, 4)]
  for got, want in zip(plrf.embeddings(stack), singles):
    np.testing.assert_array_equal(got.embedding, want.embedding)
  assert plrf.embeddings(singles[0]) == [singles[0]]


def test_interval_and_verdicts_over_feature_matrices():
  summary = compute_optimal.interval([0.60, 0.62, 0.64, 0.66])
  assert summary["mean"] == pytest.approx(0.63)
  # t(0.975, 3) = 3.182; sd = 0.0258; half width = 3.182 * 0.0258 / 2 = 0.041.
  assert summary["half_width"] == pytest.approx(0.0411, abs=2e-4)
  assert (summary["min"], summary["max"]) == (0.60, 0.66)
  assert compute_optimal.verdict_against(0.65, summary) == "confirmed"
  verdict = compute_optimal.verdict_against(0.75, summary)
  assert verdict.startswith("not confirmed (mean -0.120") and "misses by 0.079" in verdict
  assert compute_optimal.interval([0.7])["half_width"] == float("inf")
