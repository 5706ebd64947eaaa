"""`signflax linreg --config configs/linreg/compute_optimal.py`: compute-optimal model size.

On power-law random features (``signflax.linreg.plrf``), for each compute budget
:math:`F = d \\times` samples, the best loss over model sizes d, with the learning rate
tuned per (d, F) on a grid (Paquette et al. 2024, Fig. 1 and Table 2; Kim et al. 2026):

* the frontier :math:`P^*(F) = \\min_d \\min_\\eta P(d, F)` and its exponent
  :math:`P^* \\propto F^{-\\eta}`, and the optimal size :math:`d^*(F) \\propto F^{\\xi}`;
* for each case (alpha, beta), optimizer (sgd, sign_sgd, signum...) and schedule
  (constant, WSD, stable-decay), next to SGD's predicted exponents for the phase and
  Kim et al.'s signSGD claims (steeper than SGD where noise dominates; stable-decay
  steeper when feature decay is fast and target decay slow).

One compiled program per (d, optimizer) serves every case, schedule, horizon and
learning rate. Writes ``results.json``, ``results.npz``, ``compute_optimal.png`` and
TensorBoard scalars, and prints the measured-vs-predicted table.
"""

from __future__ import annotations

import json
import math
import pathlib
import time

import numpy as np
from scipy import stats

from signflax import config_schema as cs
from signflax import linreg
from signflax.experiments import linreg as lab
from signflax.linreg import plrf, theory
from signflax.metric_writers import EventWriter

OPTIMIZERS = ("sgd", "momentum", "sign_sgd", "signum", "adamw", "lion")


# ----------------------------------------------------------------------------- validation


SCHEMA = cs.Schema({
    "experiment": cs.choice("compute_optimal", doc="this experiment"),
    "cases": cs.anything(optional=False,
                         doc="name -> {alpha, beta}: data/feature decay alpha > 0, target "
                             "decay beta with 2(alpha + beta) > 1"),
    "num_features": cs.integer(1, doc="v, the features shared by every model size (>= max d)"),
    "dims": cs.anything(optional=False, doc="increasing model sizes d >= 1, one compiled "
                                            "program each"),
    "noise_std": cs.real(0, doc="label noise (0 in the papers)"),
    "batch_size": cs.integer(1, doc="samples per step"),
    "optimizers": cs.names(*OPTIMIZERS, doc="signflax.optim names"),
    "schedules": cs.names(*plrf.SCHEDULES, doc="stable_decay = WSD without warmup"),
    "decay_fraction": cs.real(0, 1, low_open=True, doc="WSD: the share of steps decaying"),
    "warmup_fraction": cs.real(0, 1, high_open=True,
                               doc="WSD: the share of steps warming up (< 1 - decay_fraction)"),
    "log2_compute_min": cs.integer(0, doc="smallest compute budget F = 2^log2_compute_min"),
    "log2_compute_max": cs.integer(0, doc="largest compute budget (>= min + 2)"),
    "min_steps": cs.integer(1, doc="every (d, F) gets at least this many steps"),
    "sgd_lr_min": cs.real(0, low_open=True, doc="SGD family: smallest peak learning rate"),
    "sgd_lr_max": cs.real(0, low_open=True, doc="SGD family: largest peak learning rate"),
    "sign_lr_min": cs.real(0, low_open=True, doc="sign family: smallest peak learning rate"),
    "sign_lr_max": cs.real(0, low_open=True, doc="sign family: largest peak learning rate"),
    "lr_points_per_octave": cs.integer(1, doc="grid points per factor of 2"),
    "num_seeds": cs.integer(1, doc="independent runs averaged per point"),
    "num_embeddings": cs.integer(
        1, doc="feature matrices W (seeds seed..seed+E-1); exponents are reported as the mean "
        "and 95% interval over W"),
    "num_devices": cs.integer(0, doc="devices the seeds are split over (0 = all)"),
    "seed": cs.integer(0, doc="the first seed"),
}, doc="``signflax linreg --config linreg/compute_optimal``: every field is set by the "
       "packaged config (no defaults).", open_groups=("cases",))


@SCHEMA.rule
def _cases_are_power_laws(c) -> str | None:
  if not hasattr(c.cases, "items") or not c.cases:
    return lab.bad("cases", "must be a non-empty dict name -> {alpha, beta}", c.cases)
  for name, case in c.cases.items():
    for field in ("alpha", "beta"):
      if field not in case:
        return lab.bad(f"cases.{name}", f"missing {field}", case)
    if not isinstance(case.alpha, (int, float)) or case.alpha <= 0:
      return lab.bad(f"cases.{name}.alpha", "must be > 0", case.alpha)
    if not isinstance(case.beta, (int, float)) or 2 * (case.alpha + case.beta) <= 1:
      return lab.bad(f"cases.{name}.beta", "must make 2(alpha + beta) > 1", case.beta)
  return None


@SCHEMA.rule
def _grids_fit(c) -> str | None:
  dims = c.dims
  if isinstance(dims, (int, str)) or not dims:
    return lab.bad("dims", "must be a non-empty tuple of model sizes d >= 1", dims)
  if any(not isinstance(d, int) or d < 1 for d in dims) or list(dims) != sorted(set(dims)):
    return lab.bad("dims", "must be increasing integers >= 1", dims)
  if c.num_features < max(dims):
    return lab.bad("num_features", f"must be >= max(dims)={max(dims)} (v >= d)", c.num_features)
  c_min, c_max = c.log2_compute_min, c.log2_compute_max
  if c_max < c_min + 2:
    return lab.bad("log2_compute_max", f"must be >= log2_compute_min + 2 = {c_min + 2} to fit "
                   "an exponent", c_max)
  samples = max(dims) * c.min_steps * c.batch_size
  if 2 ** c_min < samples:
    return lab.bad("log2_compute_min", "budget 2^log2_compute_min must give the largest d at "
                   f"least min_steps x batch_size samples (>= {samples})", c_min)
  for family in ("sgd", "sign"):
    lo, hi = c[f"{family}_lr_min"], c[f"{family}_lr_max"]
    if not hi >= lo:
      return lab.bad(f"{family}_lr_max", f"must be >= {family}_lr_min={lo}", hi)
  if not c.warmup_fraction < 1 - c.decay_fraction:
    return lab.bad("warmup_fraction", "must be in [0, 1 - decay_fraction)", c.warmup_fraction)
  return None


def validate(config) -> None:
  """Checks every field of the experiment (``SCHEMA``); raises a one-line ValueError."""
  SCHEMA.check(config)


# ----------------------------------------------------------------------------- sweep


def _learning_rates(config, name: str) -> np.ndarray:
  family = lab.FAMILY[name]
  lo, hi = config[f"{family}_lr_min"], config[f"{family}_lr_max"]
  n = int(round(math.log2(hi / lo) * config.lr_points_per_octave)) + 1
  return np.geomspace(lo, hi, max(n, 1))


def budget_grid(config) -> np.ndarray:
  return 2 ** np.arange(config.log2_compute_min, config.log2_compute_max + 1)


def embedding_seeds(config) -> list[int]:
  """Seeds of the feature matrices W: ``seed, seed + 1, ...`` (``num_embeddings`` of them)."""
  return [config.seed + e for e in range(config.num_embeddings)]


def sweep_case(config, case) -> np.ndarray:
  """Seed-mean loss ``(W, optimizer, schedule, d, F, lr)`` of one case, per feature
  matrix W; +inf where a run diverged. Per (d, optimizer): one program with every W x
  seed (the run axis) and every schedule x horizon x lr (the config axis)."""
  budgets, dims = budget_grid(config), np.asarray(config.dims)
  n_lr = max(_learning_rates(config, n).size for n in config.optimizers)
  loss = np.full((config.num_embeddings, len(config.optimizers), len(config.schedules),
                  dims.size, budgets.size, n_lr), np.inf)
  devices = lab._devices(config)
  for i_d, d in enumerate(dims):
    problem = plrf.plrf_problem(config.num_features, int(d), case.alpha, case.beta,
                                noise_std=config.noise_std, seed=embedding_seeds(config))
    steps = budgets // (d * config.batch_size)                  # samples F / d, in steps
    record = np.unique(steps)
    for i_o, name in enumerate(config.optimizers):
      lrs = _learning_rates(config, name)
      grid = [(s, h, lr) for s in config.schedules
              for h in ([steps[-1]] if s == "constant" else steps) for lr in lrs]
      sched, horizons, rates = (np.asarray(x) for x in zip(*grid))
      result = plrf.simulate_plrf(problem, lab._optimizer_fn(name), rates, config.batch_size,
                                  int(steps[-1]), horizons=horizons, schedules=sched,
                                  decay_fraction=config.decay_fraction,
                                  warmup_fraction=config.warmup_fraction,
                                  num_seeds=config.num_seeds, seed=config.seed,
                                  record_steps=record, devices=devices)
      mean = linreg.seed_mean(result.risk, axis=1)                # (W, C, R)
      for i_s, s in enumerate(config.schedules):
        for i_f, k in enumerate(steps):
          pick = (sched == s) & ((horizons == k) | (sched == "constant"))
          loss[:, i_o, i_s, i_d, i_f, :lrs.size] = mean[:, pick, np.searchsorted(record, k)]
  return loss


def interval(values, confidence: float = 0.95) -> dict:
  """Mean over feature matrices W with a Student-t confidence interval, and the range."""
  values = np.asarray(values, np.float64)
  mean = float(np.mean(values))
  if values.size < 2:
    half = math.inf
  else:
    half = float(stats.t.ppf(0.5 + confidence / 2, values.size - 1)
                 * np.std(values, ddof=1) / math.sqrt(values.size))
  return dict(mean=mean, half_width=half, low=mean - half, high=mean + half,
              min=float(np.min(values)), max=float(np.max(values)), values=values.tolist())


def verdict_against(prediction: float, summary: dict) -> str:
  """"confirmed" where the interval over W covers the prediction, else the gap."""
  if summary["low"] <= prediction <= summary["high"]:
    return "confirmed"
  gap = summary["mean"] - prediction
  edge = summary["high"] - prediction if gap < 0 else summary["low"] - prediction
  return f"not confirmed (mean {gap:+.3f}; interval misses by {abs(edge):.3f})"


def frontier(budgets, dims, per_size) -> dict:
  """``per_size`` ``(d, F)`` (lr already tuned): the frontier over d, its exponent, and
  d*(F) (the vertex of a parabola in log-log through the best d and its neighbours)."""
  best = np.min(per_size, axis=0)
  index = np.argmin(per_size, axis=0)
  log_d = np.log(np.asarray(dims, np.float64))
  d_star = np.exp(log_d[index])
  for f, i in enumerate(index):
    if 0 < i < len(dims) - 1 and np.all(np.isfinite(per_size[i - 1:i + 2, f])):
      a, b, _ = np.polyfit(log_d[i - 1:i + 2], np.log(per_size[i - 1:i + 2, f]), 2)
      if a > 0:
        d_star[f] = math.exp(np.clip(-b / (2 * a), log_d[i - 1], log_d[i + 1]))
  loss_fit = linreg.fit_power_law(budgets, best)
  dim_fit = linreg.fit_power_law(budgets, d_star)
  return dict(best_loss=best, best_dim_index=index, d_star=d_star,
              loss_exponent=loss_fit.exponent, loss_stderr=loss_fit.stderr,
              dim_exponent=-dim_fit.exponent, dim_stderr=dim_fit.stderr,
              interior=bool(np.all((index > 0) & (index < len(dims) - 1))))


def _verdict(claim, gap: dict) -> str:
  """A direction claim (gap > 0) judged on the interval of the gap over W."""
  if claim is None:
    side = ("> 0" if gap["low"] > 0 else "< 0" if gap["high"] < 0 else "covers 0")
    return f"no claim (interval {side})"
  if gap["low"] > 0:
    return "confirmed" if claim else "contradicted"
  if gap["high"] < 0:
    return "contradicted" if claim else "consistent (no advantage)"
  return "inconclusive (interval covers 0)"


# ----------------------------------------------------------------------------- run


def run(config, workdir) -> int:
  """Runs every case and writes results, the figure and scalars to ``workdir``."""
  validate(config)
  out = pathlib.Path(workdir)
  out.mkdir(parents=True, exist_ok=True)
  start = time.time()
  budgets, dims = budget_grid(config), np.asarray(config.dims)
  plt = lab._plt()
  names, schedules = list(config.optimizers), list(config.schedules)
  fig, axes = plt.subplots(len(config.cases), len(names) * len(schedules), squeeze=False,
                           figsize=(3.2 * len(names) * len(schedules), 2.9 * len(config.cases)))
  rows, claim_rows, summary, arrays = [], [], {}, {"budgets": budgets, "dims": dims}
  with EventWriter(out / "tb") as tb:
    for row, (case_name, case) in enumerate(config.cases.items()):
      loss = sweep_case(config, case)                              # (W, O, S, d, F, lr)
      arrays[f"{case_name}_loss"] = loss
      tuned = np.min(loss, axis=-1)                                # (W, O, S, d, F)
      prediction = theory.plrf_sgd_compute_optimal(case.alpha, case.beta)
      claims = theory.plrf_signsgd_claims(case.alpha, case.beta)
      fronts = {}
      for i_o, name in enumerate(names):
        for i_s, sched in enumerate(schedules):
          per_w = [frontier(budgets, dims, tuned[w, i_o, i_s]) for w in range(tuned.shape[0])]
          front = dict(per_embedding=per_w,
                       loss_exponent=interval([f["loss_exponent"] for f in per_w]),
                       dim_exponent=interval([f["dim_exponent"] for f in per_w]),
                       interior_fraction=float(np.mean([f["interior"] for f in per_w])))
          fronts[name, sched] = front
          is_sgd = name == "sgd"
          eta, xi = front["loss_exponent"], front["dim_exponent"]
          rows.append([case_name, prediction.phase, name, sched,
                       f"{prediction.loss_exponent:.3f}" if is_sgd else "-",
                       _show(eta), verdict_against(prediction.loss_exponent, eta)
                       if is_sgd else "-",
                       f"{prediction.dim_exponent:.3f}" if is_sgd else "-",
                       _show(xi), verdict_against(prediction.dim_exponent, xi)
                       if is_sgd else "-", f"{front['interior_fraction']:.2f}"])
          best = np.exp(np.mean(np.log([f["best_loss"] for f in per_w]), axis=0))
          for f, value in zip(budgets, best):
            tb.scalar(f"compute_optimal/{case_name}/{name}/{sched}/frontier", value, int(f))
          ax = axes[row, i_o * len(schedules) + i_s]
          mean_tuned = np.exp(np.mean(np.log(tuned[:, i_o, i_s]), axis=0))
          for i_d, d in enumerate(dims):
            ax.loglog(budgets, mean_tuned[i_d], "-", lw=1, alpha=0.8, label=f"d={d}")
          ax.loglog(budgets, best, "k--", lw=1.5,
                    label=f"frontier F^-{eta['mean']:.2f} (mean over W)")
          ax.set_title(f"{case_name} ({prediction.phase}): {name}, {sched}", fontsize=7)
          ax.set_xlabel("compute F = d x samples", fontsize=7)
          ax.legend(fontsize=5)
      summary[case_name] = dict(
          alpha=case.alpha, beta=case.beta, phase=prediction.phase,
          predicted_sgd=prediction._asdict(), claims=claims,
          measured={f"{n}/{s}": fr for (n, s), fr in fronts.items()})
      print(f"  {case_name}: done ({time.time() - start:.0f} s)", flush=True)
      claim_rows += _claim_rows(case_name, claims, fronts, names, schedules)
  axes[0, 0].set_ylabel("loss, lr tuned per (d, F)")
  lab._save_figure(fig, out / "compute_optimal.png")
  elapsed = time.time() - start
  table = lab._table(["case", "phase", "optimizer", "schedule", "SGD predicted eta",
                      "measured eta (mean +- 95% CI over W) [min, max]", "verdict",
                      "SGD predicted xi", "measured xi", "verdict",
                      "d* interior (fraction of W)"], rows)
  claims_table = lab._table(["case", "statement", "measured", "verdict"], claim_rows)
  print(f"linreg compute_optimal: v={config.num_features} d={tuple(config.dims)} "
        f"F=2^{config.log2_compute_min}..2^{config.log2_compute_max} B={config.batch_size} "
        f"seeds={config.num_seeds} W={config.num_embeddings} devices={len(lab._devices(config))} ({elapsed:.1f} s)")
  print(table)
  print(claims_table)
  payload = dict(experiment="compute_optimal", config=config.to_dict(), seconds=elapsed,
                 table=table, claims_table=claims_table, results=summary)
  (out / "results.json").write_text(json.dumps(payload, indent=1, default=lab._json_default))
  np.savez_compressed(out / "results.npz", **arrays)
  print(f"wrote {out}/results.json, results.npz, compute_optimal.png, tb/")
  return 0


def _show(summary: dict) -> str:
  return (f"{summary['mean']:.3f} +- {summary['half_width']:.3f} "
          f"[{summary['min']:.3f}, {summary['max']:.3f}]")


def _claim_rows(case_name, claims, fronts, names, schedules):
  """Kim et al.'s statements checked on the frontier exponents, W by W: the gap's mean
  and interval over W decide."""
  rows = []
  slope = lambda n, s: np.asarray(fronts[n, s]["loss_exponent"]["values"])
  if "sgd" in names and "sign_sgd" in names and "constant" in schedules:
    gap = interval(slope("sign_sgd", "constant") - slope("sgd", "constant"))
    rows.append([case_name, "signSGD slope steeper than SGD (constant lr)", _show(gap),
                 _verdict(claims["sign_steeper_than_sgd"], gap)])
  if "sign_sgd" in names and {"constant", "stable_decay"} <= set(schedules):
    gap = interval(slope("sign_sgd", "stable_decay") - slope("sign_sgd", "constant"))
    rows.append([case_name, "stable-decay steepens signSGD's slope", _show(gap),
                 _verdict(claims["stable_decay_steeper"], gap)])
  return rows
