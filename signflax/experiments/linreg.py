"""`signflax linreg`: the power-law linear-regression experiments.

Four experiments, selected by ``config.experiment`` (Li et al. 2026, Fig. 1;
Xiao et al. 2024):

* ``data_scaling``: for each data budget D, the best loss over (eta, B); fitted
  exponents next to s/(s+1) (SGD family) and 2s/(2s+1) (sign family).
* ``batch_scaling``: at fixed D, the loss vs B with eta tuned per B; measured
  critical batch sizes and their growth with D vs D^(s/(s+1)) and D^(2s/(2s+1)).
* ``phase_diagram``: final loss over eta = D^-a, B = D^b for each optimizer, with the
  burn-in / scaling / unstable boundaries of Theorem 3.1 drawn on top.
* ``ode_check``: signSGD with one sample per step and step eta/d vs the risk ODE.

Each writes ``results.json``, ``results.npz``, PNG figures and TensorBoard scalars
(``tb/``) into the workdir and prints a measured-vs-predicted table. The two scaling
sweeps flag best points that look like grid resonances (``linreg.resonance_flags``)
in the table and in ``results.json``.
"""

from __future__ import annotations

import functools
import json
import math
import pathlib
import time
from typing import Any

import jax
import numpy as np

from signflax import config_schema as cs
from signflax import linreg
from signflax.optim import get_optimizer, wsd_schedule
from signflax.metric_writers import EventWriter

EXPERIMENTS = ("data_scaling", "batch_scaling", "phase_diagram", "ode_check")
OPTIMIZERS = ("sgd", "momentum", "sign_sgd", "signum", "adamw", "lion")
SCHEDULES = ("constant", "wsd")
# Learning-rate / batch-size rule of each optimizer: linear (SGD-like) or square root.
FAMILY = {"sgd": "sgd", "momentum": "sgd", "sign_sgd": "sign", "signum": "sign",
          "adamw": "sign", "lion": "sign"}


# ----------------------------------------------------------------------------- validation


def bad(field: str, message: str, value: Any) -> str:
  """A rule's one-line message: ``config.<field>: <message>, got <value>``."""
  return f"config.{field}: {message}, got {value!r}"


_COMMON = {
    "experiment": cs.choice(*EXPERIMENTS, doc="which experiment (compute_optimal: its own "
                                             "schema, signflax.experiments.compute_optimal)"),
    "dim": cs.integer(1, doc="number of features d"),
    "alpha": cs.real(1, low_open=True,
                     doc="target decay: lambda_j theta*_j^2 = j^-alpha"),
    "beta": cs.real(1, low_open=True, doc="spectrum decay: lambda_j = j^-beta"),
    "noise_std": cs.real(0, doc="label noise sigma"),
    "noise_model": cs.choice(*linreg.NOISE_MODELS,
                             doc="hessian_aligned (the theory's) or minibatch (real samples)"),
    "optimizers": cs.names(*OPTIMIZERS, doc="signflax.optim names, one curve each"),
    "schedule": cs.choice(*SCHEDULES, doc="constant, or wsd (runs grouped by horizon K = D/B)"),
    "decay_fraction": cs.real(0, 1, low_open=True, doc="wsd: the share of steps decaying"),
    "num_seeds": cs.integer(1, doc="independent runs averaged per point"),
    "num_devices": cs.integer(0, doc="devices the seeds are split over (0 = all)"),
    "seed": cs.integer(0, doc="the first seed"),
}
_GRID = {
    "lr_min": cs.real(0, low_open=True, doc="smallest effective learning rate gamma"),
    "lr_max": cs.real(0, low_open=True, doc="largest effective learning rate gamma"),
    "lr_points_per_octave": cs.integer(1, doc="grid points per factor of 2 in gamma"),
    "lr_grid_offset": cs.real(0, 1, high_open=True,
                              doc="grid points off the powers of two, in grid steps"),
    "stable_only": cs.boolean(required=False,
                              doc="only cells inside the laws' stable region (not "
                                  "phase_diagram)"),
    "log2_batch_min": cs.integer(0, doc="smallest batch B = 2^log2_batch_min"),
    "log2_batch_max": cs.integer(0, doc="largest batch"),
    "log2_budget_min": cs.integer(doc="smallest data budget D = 2^log2_budget_min"),
    "log2_budget_max": cs.integer(doc="largest data budget"),
}
_ODE = {
    "ode_learning_rate": cs.real(0, low_open=True, doc="step size eta / d"),
    "ode_time": cs.real(0, low_open=True, doc="the ODE's horizon t = k / d"),
    "ode_num_times": cs.integer(2, doc="times the simulation and the ODE are compared at"),
}


def _grid_rules(experiment: str):
  def rule(c) -> str | None:
    if c.lr_min > c.lr_max:
      return bad("lr_min", f"must be <= lr_max={c.lr_max}", c.lr_min)
    if experiment != "phase_diagram" and "stable_only" not in c:
      return "config.stable_only: missing; expected true or false"
    if c.lr_min * 2 ** (c.lr_grid_offset / c.lr_points_per_octave) > c.lr_max:
      return bad("lr_grid_offset", "leaves no learning rate in [lr_min, lr_max]",
                 c.lr_grid_offset)
    b_min, b_max = c.log2_batch_min, c.log2_batch_max
    d_min, d_max = c.log2_budget_min, c.log2_budget_max
    if b_max < b_min:
      return bad("log2_batch_max", f"must be an integer >= log2_batch_min={b_min}", b_max)
    if d_min > d_max:
      return bad("log2_budget_min", f"must be an integer <= log2_budget_max={d_max}", d_min)
    if d_min < b_min:
      return bad("log2_budget_min", f"budget D=2^{d_min} is below the smallest batch "
                 f"B=2^{b_min}; must be >= log2_batch_min", d_min)
    if experiment == "phase_diagram" and b_max >= d_max:
      return bad("log2_batch_max", f"must be < log2_budget_max={d_max} (at least two steps "
                 "per run)", b_max)
    if experiment == "data_scaling" and d_max - d_min < 2:
      return bad("log2_budget_max", "must be >= log2_budget_min + 2 to fit an exponent", d_max)
    if experiment == "batch_scaling" and b_max - b_min < 2:
      return bad("log2_batch_max", "must be >= log2_batch_min + 2 to locate a critical batch",
                 b_max)
    return None
  return rule


def _ode_needs_real_samples(c) -> str | None:
  if c.noise_model != "minibatch":
    return bad("noise_model", "must be 'minibatch' for ode_check (one real sample per step)",
               c.noise_model)
  return None


def _schema(experiment: str) -> cs.Schema:
  schema = cs.Schema({**_COMMON, **(_ODE if experiment == "ode_check" else _GRID)},
                     doc=f"``signflax linreg --config linreg/{experiment}``: every field is set "
                         "by the packaged config (no defaults).")
  schema.rule(_ode_needs_real_samples if experiment == "ode_check" else _grid_rules(experiment))
  return schema


SCHEMAS = {experiment: _schema(experiment) for experiment in EXPERIMENTS}


def validate(config) -> None:
  """Checks every field the chosen experiment uses (``SCHEMAS``); raises a one-line
  ValueError."""
  experiment = config.get("experiment")
  if experiment == "compute_optimal":  # model-size lab, its own module
    from signflax.experiments import compute_optimal
    return compute_optimal.SCHEMA.check(config)
  if experiment not in SCHEMAS:
    raise ValueError(f"config.experiment: must be one of {', '.join(EXPERIMENTS)}, "
                     f"compute_optimal, got {experiment!r}")
  SCHEMAS[experiment].check(config)


# ----------------------------------------------------------------------------- helpers


@functools.lru_cache(maxsize=None)
def _optimizer_fn(name: str):
  """``lr -> GradientTransformation`` for a constant learning rate (cached, so the
  compiled simulator program is reused across calls)."""
  # No weight decay: it would pull theta towards 0, away from theta*, and change the law.
  return lambda lr: get_optimizer(name, lr, weight_decay=0.0)


@functools.lru_cache(maxsize=None)
def _wsd_optimizer_fn(name: str, total_steps: int, decay_fraction: float):
  return lambda lr: get_optimizer(
      name, wsd_schedule(lr, total_steps, decay_fraction=decay_fraction), weight_decay=0.0)


def _problem(config) -> linreg.PowerLawProblem:
  return linreg.power_law_problem(config.dim, config.alpha, config.beta, config.noise_std)


def _devices(config):
  devices = jax.devices()
  return devices if config.num_devices == 0 else devices[:config.num_devices]


def _effective_lrs(config) -> np.ndarray:
  """``lr_min * 2^((k + lr_grid_offset) / lr_points_per_octave)`` up to ``lr_max``.

  With D and B powers of two, an offset of 1/4 keeps eta*K off the integers (where
  a sign step can land exactly on theta*_1 = 1) for the linear and the square-root
  rule alike; 0 gives the plain power-of-two grid.
  """
  per_octave = config.lr_points_per_octave
  octaves = math.log2(config.lr_max / config.lr_min)
  k = np.arange(int(math.floor(octaves * per_octave - config.lr_grid_offset + 1e-9)) + 1)
  return config.lr_min * 2.0 ** ((k + config.lr_grid_offset) / per_octave)


def _stable(config, name: str, sweep: linreg.BudgetSweep) -> np.ndarray:
  """``(1, B, lr)`` mask of the cells the scaling laws describe when
  ``config.stable_only``: eta*sqrt(B) <= 1 (sign family; Theorem 3.1's unstable
  regime lies beyond) or eta <= 1 (SGD family; eta*lambda_1 <= 1)."""
  lrs = sweep.learning_rates
  if not config.stable_only:
    return np.ones((1,) + lrs.shape, bool)
  scale = np.sqrt(sweep.batch_sizes)[:, None] if FAMILY[name] == "sign" else 1.0
  return (lrs * scale <= 1.0 + 1e-9)[None]


def _sweep(config, name: str, budgets, batch_sizes, learning_rates) -> linreg.BudgetSweep:
  # WSD decays relative to the run's length, so its runs are grouped by horizon K;
  # a constant rate lets one run per batch size serve every budget.
  horizon_fn = None
  if config.schedule == "wsd":
    horizon_fn = lambda k: _wsd_optimizer_fn(name, k, float(config.decay_fraction))
  return linreg.budget_sweep(_problem(config), _optimizer_fn(name), budgets, batch_sizes,
                             learning_rates, num_seeds=config.num_seeds, seed=config.seed,
                             noise_model=config.noise_model, optimizer_for_horizon=horizon_fn,
                             devices=_devices(config))


def _grid_sweep(config, name: str) -> linreg.BudgetSweep:
  """The (D, B, eta) sweep of data_scaling / batch_scaling, eta on the rule of ``name``."""
  budgets = 2 ** np.arange(config.log2_budget_min, config.log2_budget_max + 1)
  batch_sizes = 2 ** np.arange(config.log2_batch_min,
                               min(config.log2_batch_max, config.log2_budget_max) + 1)
  lrs = linreg.learning_rate_grid(FAMILY[name], _effective_lrs(config), batch_sizes)
  sweep = _sweep(config, name, budgets, batch_sizes, lrs)
  # Cells outside the stable region become NaN: no "best" point can come from them.
  return sweep._replace(loss=np.where(_stable(config, name, sweep), sweep.loss, np.nan))


def _fit_law(config, name: str, sweep: linreg.BudgetSweep, mean) -> linreg.ScalingLaw:
  problem = _problem(config)
  steps = sweep.budgets[:, None, None] // sweep.batch_sizes[None, :, None]
  return linreg.fit_scaling_law(FAMILY[name], problem.relative_difficulty,
                                sweep.learning_rates[None], sweep.batch_sizes[None, :, None],
                                steps, mean, initial=linreg.initial_risk(problem),
                                beta=problem.beta)


def _exact_sgd_loss(config, name: str, sweep: linreg.BudgetSweep):
  """Exact expected loss ``(D, B, lr)`` of the same grid for SGD (hessian-aligned noise,
  constant learning rate; else None): a reference free of seed noise."""
  if name != "sgd" or config.noise_model != "hessian_aligned" or config.schedule != "constant":
    return None
  steps = sweep.budgets[:, None, None] // sweep.batch_sizes[None, :, None]
  loss = linreg.sgd_expected_risk(_problem(config), sweep.learning_rates[None],
                                  sweep.batch_sizes[None, :, None], steps)
  return np.where((steps >= 1) & _stable(config, name, sweep), loss, np.inf)


def _resonances(sweep: linreg.BudgetSweep) -> tuple[str, dict]:
  """The table cell and the ``results.json`` entry of ``linreg.resonance_flags``."""
  flags = linreg.resonance_flags(sweep.budgets, sweep.batch_sizes, sweep.learning_rates,
                                 linreg.seed_mean(sweep.loss), linreg.seed_stderr(sweep.loss))
  cell = ", ".join(
      f"D=2^{int(np.log2(d))}:" + "+".join(w for w, on in (("etaK~int", n), ("dip", p)) if on)
      for d, n, p, f in zip(sweep.budgets, flags.near_integer, flags.dip, flags.flagged) if f)
  entry = dict(flagged_budgets=sweep.budgets[flags.flagged], **flags._asdict())
  return cell or "-", entry


def _critical_batches(sweep: linreg.BudgetSweep, per_batch) -> np.ndarray:
  return np.array([linreg.critical_batch_from_curve(sweep.batch_sizes, per_batch[i])
                   for i in range(sweep.budgets.size)])


def _table(header, rows) -> str:
  cells = [list(map(str, header))] + [[str(c) for c in row] for row in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
  lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
  lines.insert(1, "-+-".join("-" * w for w in widths))
  return "\n".join(lines)


def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _save_figure(fig, path: pathlib.Path) -> None:
  """Writes ``fig`` as a PNG and frees it."""
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  _plt().close(fig)


def _json_default(x):
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, (np.floating,)):
    return float(x)
  if isinstance(x, np.ndarray):
    return x.tolist()
  raise TypeError(type(x))


# ----------------------------------------------------------------------------- experiments


def _mean_sweeps(config):
  """``(name, family, sweep, seed-mean loss)`` of the budget sweep of each optimizer."""
  for name in config.optimizers:
    sweep = _grid_sweep(config, name)
    yield name, FAMILY[name], sweep, linreg.seed_mean(sweep.loss)


def _data_scaling(config, out: pathlib.Path, tb: EventWriter) -> dict:
  s = _problem(config).relative_difficulty
  rows, summary, arrays = [], {}, {}
  fig, ax = _plt().subplots(figsize=(5.5, 4))
  for name, family, sweep, mean in _mean_sweeps(config):                   # mean: (D, B, lr)
    # The law's prediction is for the best loss over every (eta, B) at each D.
    best, (b_idx, lr_idx) = linreg.best_over(mean, (1, 2))
    fit = linreg.fit_power_law(sweep.budgets, best)
    flag_cell, resonance = _resonances(sweep)
    predicted = linreg.data_scaling_exponent(family, s, _problem(config).beta)
    law = _fit_law(config, name, sweep, mean)
    exact_loss = _exact_sgd_loss(config, name, sweep)
    exact = None if exact_loss is None else linreg.fit_power_law(
        sweep.budgets, linreg.best_over(exact_loss, (1, 2))[0])
    law_best = linreg.optimal_loss(law, sweep.budgets, sweep.batch_sizes[0])
    rows.append([name, f"{predicted:.3f}", f"{fit.exponent:.3f} +- {fit.stderr:.3f}",
                 f"{exact.exponent:.3f}" if exact else "-", f"{best[-1]:.3e}",
                 f"{law_best[-1]:.3e}",
                 int(sweep.batch_sizes[b_idx[-1]]), f"{sweep.learning_rates[b_idx[-1], lr_idx[-1]]:.3g}",
                 flag_cell])
    summary[name] = dict(family=family, predicted_exponent=predicted, measured_exponent=fit.exponent,
                         measured_stderr=fit.stderr, exact_sgd_exponent=exact and exact.exponent,
                         budgets=sweep.budgets, best_loss=best, scaling_law=law._asdict(),
                         fitted_law_best_loss=law_best,
                         best_batch_size=sweep.batch_sizes[b_idx],
                         best_learning_rate=sweep.learning_rates[b_idx, lr_idx],
                         resonance=resonance)
    arrays[f"{name}_loss"] = sweep.loss
    arrays[f"{name}_learning_rates"] = sweep.learning_rates
    for d, value in zip(sweep.budgets, best):
      tb.scalar(f"data_scaling/{name}/best_loss", value, int(d))
    line, = ax.loglog(sweep.budgets, best, "o-", label=f"{name} (fit {fit.exponent:.2f})")
    theory_line = best[-1] * (sweep.budgets / sweep.budgets[-1]) ** -predicted
    ax.loglog(sweep.budgets, theory_line, "--", color=line.get_color(),
              label=f"D^-{predicted:.2f} (theory)")
    ax.loglog(sweep.budgets, law_best, ":", color=line.get_color(), label="fitted scaling law")
  arrays["budgets"] = sweep.budgets
  arrays["batch_sizes"] = sweep.batch_sizes
  ax.set(xlabel="data budget D", ylabel="best excess risk over (eta, B)",
         title=f"data scaling, alpha={config.alpha}, beta={config.beta}, s={s:.2f}")
  ax.legend(fontsize=7)
  _save_figure(fig, out / "data_scaling.png")
  table = _table(["optimizer", "predicted exponent", "measured exponent", "exact SGD recursion",
                  "best loss at D_max", "fitted law at D_max", "B*", "eta*",
                  "resonance flags"], rows)
  return dict(table=table, summary=summary, arrays=arrays)


def _batch_scaling(config, out: pathlib.Path, tb: EventWriter) -> dict:
  s = _problem(config).relative_difficulty
  rows, summary, arrays = [], {}, {}
  fig, ax = _plt().subplots(figsize=(5.5, 4))
  for name, family, sweep, mean in _mean_sweeps(config):                   # mean: (D, B, lr)
    per_batch, _ = linreg.best_over(mean, 2)                                # (D, B)
    # B* is where the tuned loss leaves its small-batch plateau; the law predicts how it
    # grows with D, not its constant, so the exponent is the comparison.
    critical = _critical_batches(sweep, per_batch)
    flag_cell, resonance = _resonances(sweep)
    growth = -linreg.fit_power_law(sweep.budgets, critical).exponent
    exact_loss = _exact_sgd_loss(config, name, sweep)
    exact_growth = None
    if exact_loss is not None:
      exact_critical = _critical_batches(sweep, linreg.best_over(exact_loss, 2)[0])
      exact_growth = -linreg.fit_power_law(sweep.budgets, exact_critical).exponent
    predicted = linreg.critical_batch_exponent(family, s, _problem(config).beta)
    law = _fit_law(config, name, sweep, mean)
    predicted_critical = float(linreg.critical_batch_size(law, sweep.budgets[-1]))
    rows.append([name, f"{predicted:.3f}", f"{growth:.3f}",
                 "-" if exact_growth is None else f"{exact_growth:.3f}", f"{critical[-1]:.3g}",
                 f"{predicted_critical:.3g}", flag_cell])
    summary[name] = dict(family=family, predicted_exponent=predicted, measured_exponent=growth,
                         exact_sgd_exponent=exact_growth,
                         measured_critical_batch=critical, budgets=sweep.budgets,
                         predicted_critical_batch_at_max_budget=predicted_critical,
                         scaling_law=law._asdict(), resonance=resonance)
    arrays[f"{name}_loss"] = sweep.loss
    arrays[f"{name}_best_per_batch"] = per_batch
    for b, value in zip(sweep.batch_sizes, per_batch[-1]):
      if np.isfinite(value):
        tb.scalar(f"batch_scaling/{name}/best_loss_at_max_budget", value, int(b))
    line, = ax.loglog(sweep.batch_sizes, per_batch[-1], "o-", label=f"{name}")
    ax.axvline(critical[-1], color=line.get_color(), ls=":", lw=1)
    ax.axvline(predicted_critical, color=line.get_color(), ls="--", lw=1)
  arrays["budgets"], arrays["batch_sizes"] = sweep.budgets, sweep.batch_sizes
  ax.set(xlabel="batch size B", ylabel="loss (eta tuned per B)",
         title=f"D = 2^{config.log2_budget_max}: measured B* (dotted), fitted-law B* (dashed)")
  ax.title.set_fontsize(8)
  ax.legend(fontsize=7)
  _save_figure(fig, out / "batch_scaling.png")
  table = _table(["optimizer", "predicted B* exponent", "measured B* exponent",
                  "exact SGD recursion", "measured B* at D_max", "fitted-law B* (c=1)",
                  "resonance flags"], rows)
  return dict(table=table, summary=summary, arrays=arrays)


def _phase_diagram(config, out: pathlib.Path, tb: EventWriter) -> dict:
  problem = _problem(config)
  s = problem.relative_difficulty
  budget = 2 ** config.log2_budget_max
  log_d = math.log2(budget)
  batch_sizes = 2 ** np.arange(config.log2_batch_min, config.log2_batch_max + 1)
  lrs = _effective_lrs(config)[::-1]                  # eta = D^-a, a increasing
  a = -np.log2(lrs) / log_d
  b = np.log2(batch_sizes) / log_d
  rows, summary, arrays = [], {}, {"a": a, "b": b, "learning_rates": lrs,
                                   "batch_sizes": batch_sizes}
  plt = _plt()
  n = len(config.optimizers)
  fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.8), squeeze=False)
  for ax, name in zip(axes[0], config.optimizers):
    family = FAMILY[name]
    sweep = _sweep(config, name, [budget], batch_sizes, np.broadcast_to(lrs, (b.size, a.size)))
    final = linreg.seed_mean(sweep.loss)[0]                               # (B, lr)
    # The law predicts how the best eta moves with B (slope of a* in b), not its level.
    a_star = a[np.argmin(np.where(np.isfinite(final), final, np.inf), axis=1)]
    p = 2 * s if family == "sign" else s
    small = b <= 0.5 * p / (p + 1)               # well below the critical batch size
    slope = float(np.polyfit(b[small], a_star[small], 1)[0]) if small.sum() >= 2 else float("nan")
    predicted_slope = -0.5 if family == "sign" else -1.0
    best = float(np.min(final))
    rows.append([name, family, f"{predicted_slope:+.2f}", f"{slope:+.2f}", f"{best:.3e}"])
    summary[name] = dict(family=family, predicted_optimal_lr_slope=predicted_slope,
                         measured_optimal_lr_slope=slope, best_loss=best)
    arrays[f"{name}_final_loss"] = final
    for j, batch in enumerate(batch_sizes):
      tb.scalar(f"phase_diagram/{name}/best_loss_over_lr", float(np.min(final[j])), int(batch))
    image = np.log10(np.where(np.isfinite(final), final, np.nan)).T    # (a, b)
    mesh = ax.pcolormesh(b, a, image, shading="nearest", cmap="viridis",
                         vmax=math.log10(linreg.initial_risk(problem)) + 0.5)
    fig.colorbar(mesh, ax=ax, label="log10 final loss")
    bb = np.linspace(b[0], b[-1], 50)
    ax.plot(bb, bb / 2, "w-", lw=1.2, label="eta sqrt(B) = 1")
    ax.plot(bb, 1 - bb, "w--", lw=1.2, label="eta K = 1 (burn-in)")
    ax.plot(b, a_star, "r.", ms=4, label="best eta per B")
    ax.plot(bb, a_star[0] + predicted_slope * (bb - b[0]), "r:", lw=1,
            label=f"slope {predicted_slope:+.1f}")
    if family == "sgd":
      ax.axhline(0.0, color="w", ls="-.", lw=1, label="eta = 1")
    ax.set(xlim=(b[0], b[-1]), ylim=(a[0], a[-1]), xlabel="b (B = D^b)", ylabel="a (eta = D^-a)",
           title=f"{name}, D = 2^{int(log_d)}")
    ax.legend(fontsize=6, loc="lower right")
  _save_figure(fig, out / "phase_diagram.png")
  table = _table(["optimizer", "family", "predicted d a*/d b", "measured d a*/d b",
                  "best loss"], rows)
  return dict(table=table, summary=summary, arrays=arrays)


def _ode_check(config, out: pathlib.Path, tb: EventWriter) -> dict:
  problem = _problem(config)
  d, eta = problem.dim, float(config.ode_learning_rate)
  times = np.geomspace(config.ode_time / 2 ** (config.ode_num_times - 1) * 4, config.ode_time,
                       config.ode_num_times)
  # The ODE's time is k/d; simulate whole steps and report the ODE at those exact times.
  steps = np.unique(np.maximum(np.round(times * d), 1).astype(np.int64))
  times = steps / d
  result = linreg.simulate(problem, _optimizer_fn("sign_sgd"), [eta / d], [1], int(steps[-1]),
                           num_seeds=config.num_seeds, seed=config.seed, record_steps=steps,
                           noise_model="minibatch", devices=_devices(config))
  runs = result.risk[:, 0, 0]                                               # (seeds, t)
  simulated = runs.mean(0)
  stderr = runs.std(0, ddof=1) / math.sqrt(runs.shape[0]) if runs.shape[0] > 1 else 0 * simulated
  ode = linreg.signsgd_risk_ode(problem, eta, times, drift="arcsine")
  # The paper's high-dimensional limit, shown for comparison: it overestimates the risk
  # while the top coordinates' feature-residual correlations are of order 1.
  linearized = linreg.signsgd_risk_ode(problem, eta, times, drift="linearized")
  gap = np.abs(simulated / ode - 1)
  linearized_gap = np.abs(simulated / linearized - 1)
  for k, sim_value, ode_value in zip(steps, simulated, ode):
    tb.scalar("ode_check/simulated", sim_value, int(k))
    tb.scalar("ode_check/ode", ode_value, int(k))
  plt = _plt()
  fig, ax = plt.subplots(figsize=(5.5, 4))
  ax.loglog(times, simulated, "o", label=f"signSGD, B=1, step eta/d ({runs.shape[0]} seeds)")
  ax.loglog(times, ode, "-", label="risk ODE (arcsine drift)")
  ax.loglog(times, linearized, ":", label="risk ODE (linearized drift, Xiao et al. limit)")
  ax.set(xlabel="t = k / d", ylabel="excess risk",
         title=f"d={d}, eta={eta}, alpha={config.alpha}, beta={config.beta}: max gap {gap.max():.1%}")
  ax.legend(fontsize=8)
  _save_figure(fig, out / "ode_check.png")
  picks = np.unique(np.linspace(0, times.size - 1, min(8, times.size)).astype(int))
  rows = [[f"{times[i]:.3g}", f"{simulated[i]:.4e} +- {stderr[i]:.1e}", f"{ode[i]:.4e}",
           f"{gap[i]:.2%}", f"{linearized_gap[i]:.2%}"] for i in picks]
  table = _table(["t", "simulated", "ODE (arcsine)", "relative gap", "gap (linearized)"], rows)
  table += (f"\nmax relative gap over {times.size} times: {gap.max():.2%} "
            f"(linearized drift: {linearized_gap.max():.2%})")
  summary = dict(times=times, simulated=simulated, stderr=stderr, ode=ode,
                 max_relative_gap=float(gap.max()), linearized_ode=linearized,
                 linearized_max_relative_gap=float(linearized_gap.max()))
  return dict(table=table, summary=summary,
              arrays=dict(times=times, steps=steps, simulated_runs=runs, ode=ode,
                          linearized_ode=linearized))


_RUNNERS = {"data_scaling": _data_scaling, "batch_scaling": _batch_scaling,
            "phase_diagram": _phase_diagram, "ode_check": _ode_check}


def run(config, workdir) -> int:
  """Runs ``config.experiment`` and writes results, figures and scalars to ``workdir``."""
  if config.get("experiment") == "compute_optimal":
    from signflax.experiments import compute_optimal
    return compute_optimal.run(config, workdir)
  validate(config)           # before any directory or compile: bad input costs nothing
  out = pathlib.Path(workdir)
  out.mkdir(parents=True, exist_ok=True)
  start = time.time()
  with EventWriter(out / "tb") as tb:
    result = _RUNNERS[config.experiment](config, out, tb)
  elapsed = time.time() - start
  problem = _problem(config)
  print(f"linreg {config.experiment}: d={config.dim} alpha={config.alpha} beta={config.beta} "
        f"s={problem.relative_difficulty:.3f} noise={config.noise_model} "
        f"schedule={config.schedule} seeds={config.num_seeds} devices={len(_devices(config))} "
        f"({elapsed:.1f} s)")
  print(result["table"])
  payload = dict(experiment=config.experiment, config=config.to_dict(), seconds=elapsed,
                 table=result["table"], results=result["summary"])
  (out / "results.json").write_text(json.dumps(payload, indent=1, default=_json_default))
  np.savez_compressed(out / "results.npz", **result["arrays"])
  print(f"wrote {out}/results.json, results.npz, {config.experiment}.png, tb/")
  return 0
