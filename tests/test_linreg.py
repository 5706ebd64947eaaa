"""Tests of the power-law linear-regression lab (signflax.linreg, signflax linreg)."""

import functools
import json
import math
import pathlib

import jax
import numpy as np
import optax
import pytest

from signflax import cli, config_io, linreg
from signflax.experiments import linreg as experiment
from signflax.optim import get_optimizer, wsd_schedule

REPO = pathlib.Path(__file__).resolve().parent.parent


def _sgd(lr):
  return get_optimizer("sgd", lr)


def _sign_sgd(lr):
  return get_optimizer("sign_sgd", lr)


# ----------------------------------------------------------------------------- problems, theory


def test_problem_follows_power_laws():
  p = linreg.power_law_problem(50, alpha=3.5, beta=2.5)
  j = np.arange(1, 51)
  np.testing.assert_allclose(p.eigenvalues, j**-2.5, rtol=1e-6)
  np.testing.assert_allclose(p.eigenvalues * p.theta_star**2, j**-3.5, rtol=1e-5)
  assert p.relative_difficulty == pytest.approx(1.0)
  assert float(linreg.excess_risk(p, p.theta_star)) == 0.0
  assert float(linreg.excess_risk(p, 0 * p.theta_star)) == pytest.approx(
      0.5 * np.sum(j**-3.5), rel=1e-5)


def test_closed_form_sgd_risk_equals_recursion():
  p = linreg.power_law_problem(100, 3.0, 2.0)
  steps = [1, 10, 100, 1000]
  closed = linreg.sgd_expected_risk(p, [[0.05], [0.5]], [[1], [8]], steps)
  recursion = linreg.sgd_risk_recursion(p, [0.05, 0.5], [1, 8], steps)
  np.testing.assert_allclose(closed, recursion, rtol=2e-4)


def test_data_limited_optima_have_the_predicted_exponents():
  budgets = 2.0 ** np.arange(10, 30)
  # Li et al. Theorems G.1-G.4: signSGD's exponents change below beta = 2, SGD's do not.
  for family, s, beta, expected, critical in (
      ("sgd", 1.0, 3.0, 0.5, 0.5), ("sgd", 1.0, 1.5, 0.5, 0.5),
      ("sign", 1.0, 3.0, 2 / 3, 2 / 3), ("sign", 0.5, 3.0, 0.5, 0.5),
      ("sign", 1.0, 2.0, 2 / 3, 2 / 3),                    # (D / log D)^(-2s/(2s+1))
      ("sign", 1.0, 1.5, 1.5 / 2.5, 3.5 / 5),              # s b/(s b+1), (2sb+2-b)/(2sb+2)
      ("sign", 0.4, 1.2, 0.48 / 1.48, (0.96 + 0.8) / 2.96)):
    assert linreg.data_scaling_exponent(family, s, beta) == pytest.approx(expected)
    assert linreg.critical_batch_exponent(family, s, beta) == pytest.approx(critical)
    law = linreg.ScalingLaw(family, s, signal=2.0, noise=0.3, beta=beta)
    assert linreg.fit_power_law(budgets, linreg.optimal_loss(law, budgets)).exponent == (
        pytest.approx(expected, abs=1e-9))
    growth = -linreg.fit_power_law(budgets, linreg.critical_batch_size(law, budgets)).exponent
    assert growth == pytest.approx(critical, abs=1e-9)
    # gamma* minimizes the law's own terms: 20% either side does worse.
    p, q = (s, 1.0) if family == "sgd" else (2 * s, 2 / beta if beta < 2 else 1.0)
    data = 2.0**20
    loss = lambda g: 2.0 * (data * g) ** -p + 0.3 * g ** q * data ** (q - 1)
    gamma = linreg.optimal_effective_learning_rate(law, data)
    assert loss(gamma) < min(loss(0.8 * gamma), loss(1.25 * gamma))
  # The signSGD noise term grows with the steps below beta = 2 (Theorem F.6).
  terms = linreg.scaling_law_terms("sign", 1.0, 0.01, 4, [100, 10000], beta=1.5)
  np.testing.assert_allclose(terms[1, 1] / terms[0, 1], 100 ** (2 / 1.5 - 1))
  with pytest.raises(ValueError, match="beta: must be a number > 1"):
    linreg.data_scaling_exponent("sign", 1.0, 1.0)
  # Above the critical batch size the loss follows (D/B)^-p.
  law = linreg.ScalingLaw("sign", 1.0, signal=1.0, noise=1.0)
  big = 64 * linreg.critical_batch_size(law, 2.0**20)
  ratio = linreg.optimal_loss(law, 2.0**20, 2 * big) / linreg.optimal_loss(law, 2.0**20, big)
  assert ratio == pytest.approx(4.0, rel=0.05)


def test_fit_scaling_law_recovers_constants():
  eta = np.geomspace(1e-4, 1e-1, 9)[:, None, None]
  batch = 2.0 ** np.arange(0, 8)[None, :, None]
  steps = 2.0 ** np.arange(8, 14)[None, None, :]
  true = linreg.ScalingLaw("sign", 1.0, signal=0.7, noise=0.2, oscillation=0.05)
  loss = linreg.predicted_loss(true, eta, batch, steps)
  fit = linreg.fit_scaling_law("sign", 1.0, eta, batch, steps, loss, initial=1.0)
  assert (fit.signal, fit.noise, fit.oscillation) == pytest.approx((0.7, 0.2, 0.05), rel=1e-6)
  assert list(np.unique(linreg.regime([0.001, 0.1, 0.5], 16, [100, 100, 100]))) == [0, 1, 2]


# ----------------------------------------------------------------------------- simulation vs theory


@pytest.mark.parametrize("noise_model", ["hessian_aligned", "minibatch"])
def test_sgd_exact_recursion_matches_simulated_mean_risk(noise_model):
  p = linreg.power_law_problem(64, 3.0, 2.0)
  steps = [5, 50, 500]
  result = linreg.simulate(p, optax.sgd, [0.3], [4], 500, num_seeds=512, record_steps=steps,
                           noise_model=noise_model)
  runs = result.risk[:, 0, 0]
  mean, stderr = runs.mean(0), runs.std(0, ddof=1) / np.sqrt(runs.shape[0])
  exact = linreg.sgd_risk_recursion(p, [0.3], [4], steps, noise_model=noise_model)[0]
  # Within 4 Monte-Carlo standard errors at every recorded step ...
  assert np.all(np.abs(mean - exact) < 4 * stderr), (mean, exact, stderr)
  # ... and the check has teeth: a 25% larger step size is rejected.
  wrong = linreg.sgd_risk_recursion(p, [0.375], [4], steps, noise_model=noise_model)[0]
  assert np.any(np.abs(mean - wrong) > 4 * stderr)


def test_arcsine_ode_matches_simulation_within_1_5_percent_at_d_2000():
  p = linreg.power_law_problem(2000, alpha=1.5, beta=1.2)
  eta, d = 0.5, 2000
  times = np.array([0.25, 0.5, 1, 2, 4, 8])
  result = linreg.simulate(p, optax.sign_sgd, [eta / d], [1], int(times[-1] * d), num_seeds=8,
                           record_steps=(times * d).astype(int), noise_model="minibatch")
  simulated = result.risk[:, 0, 0].mean(0)
  ode = linreg.signsgd_risk_ode(p, eta, times)
  linearized = linreg.signsgd_risk_ode(p, eta, times, drift="linearized")
  assert simulated[-1] < 0.5 * simulated[0]           # the risk actually moved
  np.testing.assert_array_less(np.abs(simulated / ode - 1), 0.015)
  # arcsin(rho) >= rho: the linearized drift is slower, its risk higher, its gap larger.
  assert np.all(linearized >= ode)
  assert np.mean(np.abs(simulated / linearized - 1)) > np.mean(np.abs(simulated / ode - 1))


def test_sign_sgd_loss_depends_on_eta_over_sqrt_b_and_sgd_on_eta_over_b():
  p = linreg.power_law_problem(200, 4.0, 3.0)
  budget, batches = 2**14, np.array([4, 16, 64, 256])
  spread = lambda x: float(np.max(x) / np.min(x))
  for family, fn, gamma, other in (("sign", _sign_sgd, 2.0**-9, "sgd"),
                                   ("sgd", _sgd, 2.0**-10, "sign")):
    # Column 0: eta on the family's own rule (eta/sqrt(B) or eta/B fixed); column 1:
    # the other rule, through the same learning rate at B = 4.
    lrs = np.concatenate([linreg.learning_rate_grid(family, [gamma], batches),
                          linreg.learning_rate_grid(other, [gamma], batches)], axis=1)
    lrs[:, 1] *= lrs[0, 0] / lrs[0, 1]
    sweep = linreg.budget_sweep(p, fn, [budget], batches, lrs, num_seeds=128)
    loss = linreg.seed_mean(sweep.loss)[0]                                # (B, 2)
    # Equal-invariant configs agree within seed noise; the other rule drifts by > 2.5x.
    assert spread(loss[:, 0]) < 1.3, (family, loss[:, 0])
    assert spread(loss[:, 1]) > 2.5, (family, loss[:, 1])
    if family == "sgd":  # The exact recursion has no seed noise: a tighter check.
      exact = linreg.sgd_expected_risk(p, lrs, batches[:, None], budget // batches[:, None])
      assert spread(exact[:, 0]) < 1.1 and spread(exact[:, 1]) > 2.5, exact


def test_critical_batch_from_curve_finds_the_knee():
  batches = 2.0 ** np.arange(12)
  rng = np.random.default_rng(0)
  plateau = 1e-3 * np.exp(0.2 * rng.standard_normal(12))       # noisy plateau ...
  loss = np.maximum(plateau, 1e-3 * (batches / 64) ** 2)        # ... then (D/B)^-2 from B=64
  knee = linreg.critical_batch_from_curve(batches, loss)
  assert 64 <= knee <= 128


def _plateau_sweep():
  """A synthetic (D, B, lr) sweep: a flat tuned loss in B, lr grid off the powers of two."""
  budgets, batches = 2 ** np.arange(10, 14), 2 ** np.arange(0, 6)
  lrs = linreg.learning_rate_grid("sign", 2.0 ** (np.arange(-12, -2) + 0.25), batches)
  rng = np.random.default_rng(0)
  mean = 1e-2 * (1 + 0.01 * rng.standard_normal((4, 6, 10)))
  return budgets, batches, lrs, mean, np.full_like(mean, 1e-4)


def test_resonance_flags_a_planted_eta_k_equal_to_one():
  budgets, batches, lrs, mean, stderr = _plateau_sweep()
  clean = linreg.resonance_flags(budgets, batches, lrs, mean, stderr)
  assert not clean.flagged.any(), clean
  # D = 2^12, B = 2^4: K = 256 steps; a learning rate of 1/256 makes eta*K = 1.
  lrs = lrs.copy()
  lrs[4, 0] = 1 / 256
  planted = mean.copy()
  planted[2, 4, 0] = 0.5 * mean.min()
  flags = linreg.resonance_flags(budgets, batches, lrs, planted, stderr)
  assert flags.lr_steps[2] == 1.0
  assert flags.near_integer.tolist() == [False, False, True, False]
  assert flags.dip.tolist() == [False, False, True, False]      # and it undercuts B = 8, 32
  # A dip within the seed error is no dip; eta*K = 1 is still flagged.
  loose = linreg.resonance_flags(budgets, batches, lrs, planted, np.full_like(mean, 1.0))
  assert loose.flagged[2] and not loose.dip.any()


@pytest.mark.slow
def test_fitted_data_scaling_exponents_match_predictions():
  # alpha=4, beta=3: s=1, predicted 0.5 (SGD) and 2/3 (signSGD). signSGD approaches its
  # asymptote slowly and its per-seed noise is larger, hence D >= 2^10 and 48 seeds.
  p = linreg.power_law_problem(200, 4.0, 3.0)
  budgets, batches = 2 ** np.arange(10, 17), 2 ** np.arange(0, 11)
  gammas = 2.0 ** np.arange(-14, 1)
  for family, fn, seeds in (("sgd", _sgd, 16), ("sign", _sign_sgd, 48)):
    lrs = linreg.learning_rate_grid(family, gammas, batches)
    sweep = linreg.budget_sweep(p, fn, budgets, batches, lrs, num_seeds=seeds)
    best, _ = linreg.best_over(linreg.seed_mean(sweep.loss), (1, 2))
    measured = linreg.fit_power_law(budgets, best).exponent
    predicted = linreg.data_scaling_exponent(family, p.relative_difficulty, p.beta)
    assert abs(measured - predicted) < 0.1, (family, measured, predicted)


# ----------------------------------------------------------------------------- execution


_SIGN_SGD = optax.sign_sgd
_MOMENTUM = functools.partial(get_optimizer, "momentum")
_ADAMW = functools.partial(get_optimizer, "adamw", weight_decay=0.0)


@pytest.mark.parametrize("optimizer_fn,noise_model,batches", [
    (_SIGN_SGD, "hessian_aligned", [1, 8]),
    (_SIGN_SGD, "minibatch", [3]),
    # Non-sign updates keep every rounding difference: the minibatch gradient's
    # reductions must sum in the same order whatever the grid and device count.
    (_MOMENTUM, "minibatch", [3]),
    (_ADAMW, "minibatch", [3]),
], ids=["sign_sgd-hessian", "sign_sgd-minibatch", "momentum-minibatch", "adamw-minibatch"])
def test_results_do_not_depend_on_device_count_or_grid(optimizer_fn, noise_model, batches):
  assert len(jax.devices()) == 8
  p = linreg.power_law_problem(40, 3.0, 2.0)
  kwargs = dict(num_seeds=8, record_steps=[7, 70, 130], noise_model=noise_model)
  one = linreg.simulate(p, optimizer_fn, [0.01, 0.05], batches, 130,
                        devices=jax.devices()[:1], **kwargs)
  eight = linreg.simulate(p, optimizer_fn, [0.01, 0.05], batches, 130, **kwargs)
  np.testing.assert_array_equal(one.risk, eight.risk)
  # A sub-grid (3 seeds, padded to 8 devices; one learning rate) gives the same runs.
  sub = linreg.simulate(p, optimizer_fn, [0.05], batches, 130, **{**kwargs, "num_seeds": 3})
  np.testing.assert_array_equal(sub.risk, eight.risk[:3, :, 1:])
  # ... and so does recording the risk elsewhere (segments split noise chunks).
  final = linreg.simulate(p, optimizer_fn, [0.01, 0.05], batches, 130,
                          **{**kwargs, "record_steps": [130]})
  np.testing.assert_array_equal(final.risk[..., -1], eight.risk[..., -1])
  assert np.all(np.isfinite(one.risk)) and np.ptp(one.risk[..., -1]) > 0


def test_wsd_sweep_matches_direct_runs():
  p = linreg.power_law_problem(30, 3.0, 2.0)
  fns = {}

  def for_horizon(k):
    return fns.setdefault(k, lambda lr: get_optimizer("sign_sgd", wsd_schedule(lr, k)))

  sweep = linreg.budget_sweep(p, None, [64, 256], [2, 4], [0.01, 0.1], num_seeds=2,
                              optimizer_for_horizon=for_horizon)
  direct = linreg.simulate(p, for_horizon(64), [0.01, 0.1], [4], 64, num_seeds=2)
  np.testing.assert_allclose(sweep.loss[:, 1, 1], direct.risk[:, 0, :, -1], rtol=1e-6)
  assert np.all(np.isfinite(sweep.loss))


# ----------------------------------------------------------------------------- bad inputs

_P = linreg.power_law_problem(10, 3.0, 2.0)
_LAW = linreg.ScalingLaw("sign", 1.0)

# (case, call, message start): every public theory and simulation function rejects
# nonsense with a one-line ValueError naming the argument, before any compilation.
BAD_INPUTS = [
    ("problem_alpha_nan", lambda: linreg.power_law_problem(10, math.nan, 2.0),
     "alpha: must be a finite number > 1"),
    ("problem_dim_zero", lambda: linreg.power_law_problem(0, 3.0, 2.0),
     "dim: must be an integer >= 1"),
    ("problem_noise_negative", lambda: linreg.power_law_problem(10, 3.0, 2.0, noise_std=-1),
     "noise_std: must be finite and >= 0"),
    ("sgd_expected_risk_negative_lr", lambda: linreg.sgd_expected_risk(_P, -0.1, 1, 10),
     "learning_rate: must be finite and >= 0"),
    ("sgd_recursion_unknown_noise_model",
     lambda: linreg.sgd_risk_recursion(_P, [0.1], [1], [10], noise_model="gaussian"),
     "noise_model: must be one of hessian_aligned, minibatch"),
    ("sgd_recursion_batch_zero", lambda: linreg.sgd_risk_recursion(_P, [0.1], [0], [10]),
     "batch_size: must be finite and > 0"),
    ("ode_lr_zero", lambda: linreg.signsgd_risk_ode(_P, 0.0, [1.0]),
     "learning_rate: must be finite and > 0"),
    ("ode_lr_negative", lambda: linreg.signsgd_risk_ode(_P, -0.5, [1.0]),
     "learning_rate: must be finite and > 0"),
    ("ode_unknown_drift", lambda: linreg.signsgd_risk_ode(_P, 0.5, [1.0], drift="taylor"),
     "drift: must be one of arcsine, linearized"),
    ("ode_times_decreasing", lambda: linreg.signsgd_risk_ode(_P, 0.5, [2.0, 1.0]),
     "times: must be non-decreasing"),
    ("simulate_lr_nan", lambda: linreg.simulate(_P, optax.sgd, [math.nan], [1], 10),
     "learning_rates: must be finite and >= 0"),
    ("simulate_zero_seeds", lambda: linreg.simulate(_P, optax.sgd, [0.1], [1], 10, num_seeds=0),
     "num_seeds: must be an integer >= 1"),
    ("simulate_unknown_noise_model",
     lambda: linreg.simulate(_P, optax.sgd, [0.1], [1], 10, noise_model="gaussian"),
     "noise_model: must be one of hessian_aligned, minibatch"),
    ("simulate_batch_zero", lambda: linreg.simulate(_P, optax.sgd, [0.1], [0], 10),
     "batch_sizes: must be finite and > 0"),
    ("simulate_steps_zero", lambda: linreg.simulate(_P, optax.sgd, [0.1], [1], 0),
     "num_steps: must be an integer >= 1"),
    ("budget_sweep_budget_zero", lambda: linreg.budget_sweep(_P, optax.sgd, [0], [1], [0.1]),
     "budgets: must be finite and > 0"),
    ("learning_rate_grid_unknown_family", lambda: linreg.learning_rate_grid("adam", [0.1], [1]),
     "family: must be one of sgd, sign"),
    ("exponent_s_nan", lambda: linreg.data_scaling_exponent("sign", math.nan, 3.0),
     "s: must be finite and > 0"),
    ("optimal_loss_negative_data", lambda: linreg.optimal_loss(_LAW, -1.0),
     "data: must be finite and > 0"),
    ("scaling_terms_negative_lr", lambda: linreg.scaling_law_terms("sgd", 1.0, -1.0, 1, 10),
     "learning_rate: must be finite and >= 0"),
    ("resonance_tolerance_zero",
     lambda: linreg.resonance_flags([4], [1], [[0.1]], [[[1.0]]], [[[0.1]]], tolerance=0),
     "tolerance: must be finite and > 0"),
]


@pytest.mark.parametrize("call,message", [c[1:] for c in BAD_INPUTS],
                         ids=[c[0] for c in BAD_INPUTS])
def test_bad_inputs_get_one_line_errors(call, message):
  with pytest.raises(ValueError) as error:
    call()
  assert str(error.value).startswith(message) and "\n" not in str(error.value), error.value


# ----------------------------------------------------------------------------- configs and CLI


def _config(name="data_scaling", **overrides):
  config = config_io.load_config_file(REPO / "signflax" / "configs" / "linreg" / f"{name}.py")
  for key, value in overrides.items():
    config[key] = value
  return config


@pytest.mark.parametrize("field,value,needle", [
    ("alpha", 0.5, "config.alpha: must be a finite number > 1"),
    ("beta", 1.0, "config.beta: must be a finite number > 1"),
    ("dim", 0, "config.dim: must be an integer >= 1"),
    ("lr_min", -0.1, "config.lr_min: must be a finite number > 0"),
    ("log2_batch_min", -1, "config.log2_batch_min: must be an integer >= 0"),
    ("log2_budget_min", 3, "config.log2_budget_min: budget D=2^3 is below the smallest batch"),
    ("optimizers", ("sgd", "adagrad"), "config.optimizers: must be a non-empty tuple of names from sgd"),
    ("noise_model", "gaussian", "config.noise_model: 'gaussian' is not one of hessian_aligned, minibatch"),
    ("experiment", "fig2", "config.experiment: must be one of"),
    ("lr_grid_offset", 1.0, "config.lr_grid_offset: must be a finite number in [0, 1)"),
])
def test_bad_configs_get_one_line_errors(field, value, needle):
  config = _config(log2_batch_min=4) if field == "log2_budget_min" else _config()
  config[field] = value
  with pytest.raises(ValueError) as error:
    experiment.validate(config)
  assert needle in str(error.value) and "\n" not in str(error.value)


def test_default_configs_are_valid():
  for name in ("data_scaling", "batch_scaling", "phase_diagram", "ode_check"):
    experiment.validate(_config(name))
  with pytest.raises(ValueError, match="config.ode_learning_rate: must be a finite number > 0"):
    experiment.validate(_config("ode_check", ode_learning_rate=-0.5))


def test_cli_rejects_a_bad_config_before_any_work(tmp_path, capsys):
  workdir = tmp_path / "run"
  code = cli.main(["linreg", "--workdir", str(workdir), "--config.alpha=0.5"])
  err = capsys.readouterr().err.strip()
  assert code == 2
  assert err == "signflax linreg: error: config.alpha: must be a finite number > 1, got 0.5"
  assert not workdir.exists()


_TINY = {
    "data_scaling": ["--config.dim=20", "--config.log2_budget_min=4", "--config.log2_budget_max=7",
                     "--config.log2_batch_max=2", "--config.lr_min=0.01", "--config.num_seeds=2"],
    "batch_scaling": ["--config.dim=20", "--config.log2_budget_min=5", "--config.log2_budget_max=7",
                      "--config.log2_batch_max=3", "--config.lr_min=0.01", "--config.num_seeds=2"],
    "phase_diagram": ["--config.dim=20", "--config.log2_budget_min=7", "--config.log2_budget_max=7",
                      "--config.log2_batch_max=3", "--config.lr_min=0.01", "--config.num_seeds=2",
                      "--config.optimizers=('sgd', 'signum')"],
    "ode_check": ["--config.dim=50", "--config.ode_time=2.0", "--config.ode_num_times=4",
                  "--config.num_seeds=2"],
}


@pytest.mark.parametrize("name", sorted(_TINY))
def test_cli_tiny_run_writes_results(name, tmp_path, capsys):
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  workdir = tmp_path / name
  code = cli.main(["linreg", "--config", f"linreg/{name}",
                   "--workdir", str(workdir), *_TINY[name]])
  out = capsys.readouterr().out
  assert code == 0
  assert f"linreg {name}:" in out and " | " in out
  results = json.loads((workdir / "results.json").read_text())
  assert results["experiment"] == name and results["results"]
  assert np.load(workdir / "results.npz").files
  assert (workdir / f"{name}.png").stat().st_size > 1000
  events = EventAccumulator(str(workdir / "tb"))
  events.Reload()
  assert events.Tags()["scalars"]
