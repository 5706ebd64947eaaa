"""``signflax fit``: Li et al. 2026's scaling laws fitted to a sweep's loss curves.

    signflax fit --sweep DIR --law collapse|predict|data_scaling|batch|phase [--out DIR]

Each law reads ``DIR/sweep.jsonl`` and the points' ``metrics.jsonl``, writes
``results.json`` (parameters with standard errors or bootstrap intervals), PNG
figures and prints a table into ``DIR/fits/<law>/``. Points that failed,
diverged or were never run are named in the output and left out of the fit.

The laws (k: step, B: batch size, eta: learning rate, D: tokens):

* ``collapse`` (Sec. 4.1, Fig. 2/4/5): per optimizer, the joint fit
  :math:`L = L_B + A\\,(B^p \\eta k)^{-\\beta}` with one plateau :math:`L_B` per
  curve. Signal learning collapses on :math:`\\sqrt{B}\\eta k` when
  :math:`p = 1/2` (sign methods) and on :math:`\\eta k` when :math:`p = 0` (SGD).
  The plateaus are fitted by :math:`L_0 + C/\\sqrt{B}` and :math:`L_0 + C/B`.
* ``predict`` (eq. 2, Fig. 3): :math:`F(k,B) = L_0 + C_1 (C_2 + \\sqrt{B} k \\eta)^{-a}
  + C_3 \\eta / \\sqrt{B}` fitted on leading fractions of some curves (the
  paper's split by default: 25% of the smallest batch, 50% of the next, the
  rest held out); relative error on the held-out points only. The SGD form
  :math:`L_0 + C/B + C_1 (\\eta k)^{-\\alpha}` is fitted the same way (the paper
  writes :math:`C_1 = 1`; a free :math:`C_1` absorbs the units of
  :math:`\\eta k`).
* ``data_scaling`` (Fig. 6a, App. D.3): the best loss over (eta, B) at each
  token budget D, fitted jointly as :math:`L_i = L_0 + C_i D^{-\\alpha_i}` with
  :math:`L_0` shared: a grid over exponent pairs with linear least squares for
  :math:`(L_0, C_i)`, refined by bounded least squares; bootstrap intervals.
* ``batch`` (Fig. 6b): final loss against B with eta tuned per B; the critical
  batch is the largest B whose tuned loss is within ``tolerance`` (relative)
  of the best.
* ``phase`` (Fig. 7): final loss over (log eta, log B); along iso-loss contours
  :math:`\\eta \\propto B^s`, s fitted from the contours' crossings on the
  small-eta side (1/2 for sign methods, 1 for SGD). In the paper's axes
  (:math:`B = D^b`, :math:`\\eta = D^{-a}`) the contour slope is :math:`-s`.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import math
import pathlib
from typing import Callable, NamedTuple, Sequence

import numpy as np
from scipy import optimize

from signflax import outcomes, storage
from signflax.experiments.sweep import read_metrics

LAWS = ("collapse", "predict", "data_scaling", "batch", "phase")


# ----------------------------------------------------------------------------- fitting


class Fit(NamedTuple):
  params: np.ndarray
  stderr: np.ndarray     # from the Jacobian at the optimum (nan where singular)
  rms: float             # root-mean-square residual
  n: int                 # number of residuals


def least_squares(residuals: Callable[[np.ndarray], np.ndarray], starts: Sequence,
                  lower: Sequence[float], upper: Sequence[float]) -> Fit:
  """Bounded least squares from several starts; the lowest cost wins.

  Standard errors: :math:`\\sqrt{\\mathrm{diag}((J^T J)^{-1})\\, \\hat\\sigma^2}` with
  :math:`\\hat\\sigma^2 = \\lVert r \\rVert^2 / (n - p)`.
  """
  lower, upper = np.asarray(lower, float), np.asarray(upper, float)
  best = None
  for x0 in starts:
    x0 = np.clip(np.asarray(x0, float), lower, upper)
    try:
      result = optimize.least_squares(residuals, x0, bounds=(lower, upper), x_scale="jac",
                                      max_nfev=4000)
    except (ValueError, FloatingPointError):
      continue
    if np.isfinite(result.cost) and (best is None or result.cost < best.cost):
      best = result
  if best is None:
    raise ValueError("least_squares: no start gave a finite fit")
  n, p = best.fun.size, best.x.size
  sigma2 = 2 * best.cost / max(n - p, 1)
  try:
    cov = np.linalg.pinv(best.jac.T @ best.jac) * sigma2
    stderr = np.sqrt(np.clip(np.diag(cov), 0, None))
  except np.linalg.LinAlgError:
    stderr = np.full(p, np.nan)
  return Fit(best.x, stderr, float(np.sqrt(2 * best.cost / n)), n)


def _named(names: Sequence[str], fit: Fit) -> dict:
  return {name: {"value": float(v), "stderr": float(s)}
          for name, v, s in zip(names, fit.params, fit.stderr)}


# ----------------------------------------------------------------------------- laws


def eq2(k, batch, eta, l0, c1, c2, c3, a):
  """Li et al. eq. 2: signal learning on sqrt(B)*eta*k, noise floor eta/sqrt(B)."""
  root_b = np.sqrt(batch)
  return l0 + c1 * (c2 + root_b * k * eta) ** (-a) + c3 * eta / root_b


def sgd_law(k, batch, eta, l0, c, c1, alpha):
  """The SGD form: noise floor C/B, signal learning on eta*k."""
  return l0 + c / batch + c1 * (eta * k) ** (-alpha)


_FORMS = {
    "sign": (eq2, ("L0", "C1", "C2", "C3", "a"),
             lambda l: [[l.min() * 0.9, (l.max() - l.min()) * s, c2, 1.0, a]
                        for s, c2, a in itertools.product((1, 3), (0.1, 1.0), (0.3, 0.7, 1.5))],
             ([0, 0, 0, 0, 0.01], [np.inf, np.inf, np.inf, np.inf, 5])),
    "sgd": (sgd_law, ("L0", "C", "C1", "alpha"),
            lambda l: [[l.min() * 0.9, 1.0, (l.max() - l.min()) * s, a]
                       for s, a in itertools.product((0.3, 1, 3), (0.3, 0.7, 1.5))],
            ([0, 0, 0, 0.01], [np.inf, np.inf, np.inf, 5])),
}


class Curve(NamedTuple):
  id: str
  optimizer: str
  batch: int
  eta: float
  steps: np.ndarray
  loss: np.ndarray
  tokens_per_step: int


def fit_curves(curves: Sequence[Curve], form: str = "sign") -> Fit:
  """Fits eq. 2 (``form="sign"``) or the SGD form to the points of ``curves`` jointly."""
  law, _, starts, bounds = _FORMS[form]
  k = np.concatenate([c.steps for c in curves]).astype(float)
  b = np.concatenate([np.full(len(c.steps), c.batch, float) for c in curves])
  eta = np.concatenate([np.full(len(c.steps), c.eta) for c in curves])
  loss = np.concatenate([c.loss for c in curves])
  return least_squares(lambda p: law(k, b, eta, *p) - loss, starts(loss), *bounds)


def predict_split(curves: Sequence[Curve], fractions: dict[int, float] | None = None
                  ) -> dict[int, float]:
  """The fitted fraction of each batch size: the paper's split by default (25% of the
  smallest batch, 50% of the next, 0 = held out entirely)."""
  batches = sorted({c.batch for c in curves})
  if fractions is None:
    fractions = dict(zip(batches[:2], (0.25, 0.5)))
  return {b: float(fractions.get(b, 0.0)) for b in batches}


def predict(curves: Sequence[Curve], fractions: dict[int, float], form: str = "sign") -> dict:
  """Fits ``form`` on the leading ``fractions[B]`` of each curve; errors on the rest."""
  fit_parts, held = [], []
  for c in curves:
    n_fit = int(round(fractions.get(c.batch, 0.0) * len(c.steps)))
    if n_fit:
      fit_parts.append(c._replace(steps=c.steps[:n_fit], loss=c.loss[:n_fit]))
    if n_fit < len(c.steps):
      held.append((c, n_fit))
  if not fit_parts:
    raise ValueError("fractions: no curve has a fitted part; give at least one B a fraction > 0")
  fit = fit_curves(fit_parts, form)
  law, names, _, _ = _FORMS[form]
  per_curve = []
  for c, n_fit in held:
    pred = law(c.steps[n_fit:].astype(float), c.batch, c.eta, *fit.params)
    rel = np.abs(pred - c.loss[n_fit:]) / np.abs(c.loss[n_fit:])
    per_curve.append({"id": c.id, "batch": c.batch, "fitted_fraction": n_fit / len(c.steps),
                      "held_out_points": int(len(rel)), "mean_rel_error": float(rel.mean()),
                      "max_rel_error": float(rel.max())})
  all_rel = [e["mean_rel_error"] * e["held_out_points"] for e in per_curve]
  total = sum(e["held_out_points"] for e in per_curve)
  return {"form": form, "params": _named(names, fit), "fit_rms": fit.rms,
          "held_out": per_curve,
          "mean_rel_error_held_out": float(sum(all_rel) / total) if total else None}


def plateau_law(batches, plateaus, stderr, power: float) -> Fit:
  """L_B = L0 + C / B^power, weighted by the plateaus' standard errors."""
  batches, plateaus = np.asarray(batches, float), np.asarray(plateaus, float)
  w = 1 / np.maximum(np.nan_to_num(np.asarray(stderr, float), nan=1.0), 1e-6)
  span = plateaus.max() - plateaus.min() + 1e-3
  starts = [[plateaus.min() - span, span * batches.min() ** power * s] for s in (0.5, 2)]
  return least_squares(lambda p: w * (p[0] + p[1] / batches ** power - plateaus), starts,
                       [-np.inf, -np.inf], [np.inf, np.inf])


def collapse(curves: Sequence[Curve]) -> dict:
  """Joint fit L = L_B + A (B^p eta k)^(-beta), one plateau per curve; L_B vs 1/sqrt(B), 1/B."""
  n = len(curves)
  k = [c.steps.astype(float) for c in curves]

  def residuals(x):
    amp, p, beta, plateaus = x[0], x[1], x[2], x[3:]
    return np.concatenate([plateaus[i] + amp * (c.batch ** p * c.eta * k[i]) ** (-beta) - c.loss
                           for i, c in enumerate(curves)])

  lows = [c.loss.min() for c in curves]
  starts = [[a, p, b, *[lo * 0.95 for lo in lows]]
            for a, p, b in itertools.product((0.3, 3.0), (0.0, 0.5, 1.0), (0.3, 1.0))]
  fit = least_squares(residuals, starts, [0, -1, 0.01] + [0] * n, [np.inf, 2, 5] + [np.inf] * n)
  plateaus, plateau_se = fit.params[3:], fit.stderr[3:]
  batches = np.array([c.batch for c in curves])
  out = {"batch_exponent_p": {"value": float(fit.params[1]), "stderr": float(fit.stderr[1])},
         "amplitude": {"value": float(fit.params[0]), "stderr": float(fit.stderr[0])},
         "beta": {"value": float(fit.params[2]), "stderr": float(fit.stderr[2])},
         "fit_rms": fit.rms,
         "plateaus": [{"id": c.id, "batch": c.batch, "eta": c.eta, "L_B": float(v),
                       "stderr": float(s)} for c, v, s in zip(curves, plateaus, plateau_se)],
         "spread_eta_k": collapse_spread(curves, plateaus, 0.0),
         "spread_sqrtB_eta_k": collapse_spread(curves, plateaus, 0.5)}
  if len(set(batches)) >= 3:
    for name, power in (("inv_sqrt_B", 0.5), ("inv_B", 1.0)):
      law = plateau_law(batches, plateaus, plateau_se, power)
      out[f"plateau_{name}"] = {**_named(("L0", "C"), law), "weighted_rms": law.rms}
    out["plateau_better"] = min(("inv_sqrt_B", "inv_B"),
                                key=lambda m: out[f"plateau_{m}"]["weighted_rms"])
  return out


def collapse_spread(curves: Sequence[Curve], plateaus, p: float) -> float | None:
  """Mean across-curve std of log(L - L_B) at shared values of B^p eta k (overlap only)."""
  xs = [np.log(c.batch ** p * c.eta * c.steps.astype(float)) for c in curves]
  lo, hi = max(x.min() for x in xs), min(x.max() for x in xs)
  if not hi > lo:
    return None
  grid = np.linspace(lo, hi, 20)
  ys = []
  for x, c, plateau in zip(xs, curves, plateaus):
    signal = np.log(np.maximum(c.loss - plateau, 1e-6))
    ys.append(np.interp(grid, x, signal))
  return float(np.mean(np.std(np.array(ys), axis=0)))


def data_scaling(budgets: dict[str, tuple[np.ndarray, np.ndarray]], *, n_boot: int = 200,
                 grid: np.ndarray | None = None, seed: int = 0) -> dict:
  """L_i(D) = L0 + C_i D^(-alpha_i), L0 shared (App. D.3), with bootstrap intervals."""
  names = sorted(budgets)
  grid = np.linspace(0.05, 2.0, 40) if grid is None else grid
  d = {n: np.asarray(budgets[n][0], float) for n in names}
  loss = {n: np.asarray(budgets[n][1], float) for n in names}
  scale = {n: float(np.exp(np.mean(np.log(d[n])))) for n in names}  # D in units of its mean

  def solve_linear(alphas, dd, ll):
    """(L0, C_1..C_m) by least squares for fixed exponents; returns (coef, sse)."""
    rows = sum(len(dd[n]) for n in names)
    design = np.zeros((rows, 1 + len(names)))
    target = np.concatenate([ll[n] for n in names])
    design[:, 0], at = 1.0, 0
    for j, (n, alpha) in enumerate(zip(names, alphas)):
      design[at:at + len(dd[n]), 1 + j] = (dd[n] / scale[n]) ** (-alpha)
      at += len(dd[n])
    coef, *_ = np.linalg.lstsq(design, target, rcond=None)
    return coef, float(np.sum((design @ coef - target) ** 2))

  def fit(dd, ll, alpha_grid):
    best = min(((solve_linear(alphas, dd, ll), alphas)
                for alphas in itertools.product(alpha_grid, repeat=len(names))),
               key=lambda t: t[0][1])
    (coef, _), alphas = best
    x0 = np.concatenate([coef, alphas])
    m = len(names)

    def residuals(x):
      return np.concatenate([x[0] + x[1 + j] * (dd[n] / scale[n]) ** (-x[1 + m + j]) - ll[n]
                             for j, n in enumerate(names)])
    return least_squares(residuals, [x0], [-np.inf] + [0] * m + [0.0] * m,
                         [np.inf] * (1 + m) + [5.0] * m)

  full = fit(d, loss, grid)
  rng = np.random.default_rng(seed)
  boot = []
  coarse = grid[::4]
  for _ in range(n_boot):
    idx = {n: rng.integers(0, len(d[n]), len(d[n])) for n in names}
    dd = {n: d[n][idx[n]] for n in names}
    if any(len(set(dd[n])) < 2 for n in names):
      continue
    try:  # resamples start from a coarser grid; the refinement does the rest
      boot.append(fit(dd, {n: loss[n][idx[n]] for n in names}, coarse).params)
    except ValueError:
      continue
  boot = np.array(boot) if boot else np.empty((0, full.params.size))
  m = len(names)

  def interval(col):
    if len(boot) < 10:
      return [None, None]
    return [float(np.percentile(boot[:, col], 2.5)), float(np.percentile(boot[:, col], 97.5))]

  out = {"L0": {"value": float(full.params[0]), "stderr": float(full.stderr[0]),
                "ci95": interval(0)}, "fit_rms": full.rms, "bootstrap_samples": len(boot)}
  for j, n in enumerate(names):
    c = full.params[1 + j] * scale[n] ** full.params[1 + m + j]  # back to C * D^-alpha in tokens
    out[n] = {"alpha": {"value": float(full.params[1 + m + j]),
                        "stderr": float(full.stderr[1 + m + j]), "ci95": interval(1 + m + j)},
              "C": {"value": float(c)}, "points": int(len(d[n]))}
  return out


def critical_batch(batches, losses, tolerance: float = 0.01) -> float | None:
  """Largest B (log-interpolated) whose loss is within ``tolerance`` (relative) of the best."""
  order = np.argsort(batches)
  b, l = np.asarray(batches, float)[order], np.asarray(losses, float)[order]
  best = int(np.argmin(l))
  limit = l[best] * (1 + tolerance)
  for i in range(best, len(b) - 1):
    if l[i + 1] > limit:
      t = (limit - l[i]) / (l[i + 1] - l[i])
      return float(np.exp(np.log(b[i]) + t * (np.log(b[i + 1]) - np.log(b[i]))))
  return None if len(b) == 0 else float(b[-1])


def contour_exponent(rows: Sequence[tuple[float, Sequence[float], Sequence[float]]],
                     levels: Sequence[float] | None = None) -> dict:
  r"""s with iso-loss contours eta ∝ B^s, from each level's crossings on the small-eta side.

  ``rows``: one ``(B, etas, losses)`` per batch size (etas may differ per row,
  as on a gamma grid; nan = failed). For each level and row, the crossing in
  log eta left of the row's minimum is interpolated; then
  :math:`\log\eta = c_\ell + s \log B` is fitted with one intercept per level.
  """
  clean = []
  for b, etas, losses in rows:
    etas, losses = np.asarray(etas, float), np.asarray(losses, float)
    order = np.argsort(etas)
    etas, losses = etas[order], losses[order]
    ok = np.isfinite(losses)
    if ok.sum() >= 2:
      clean.append((float(b), np.log(etas[ok]), losses[ok]))
  if levels is None and clean:
    low = max(l.min() for _, _, l in clean)     # every row reaches below this ...
    high = min(l[0] for _, _, l in clean)       # ... and starts above this
    levels = np.linspace(low, high, 7)[1:-1] if high > low else []
  crossings = []
  for li, level in enumerate(list(levels if levels is not None else [])):
    for b, log_eta, loss in clean:
      for j in range(int(np.argmin(loss)), 0, -1):  # walk left from the row's minimum
        lo, hi = loss[j], loss[j - 1]
        if lo <= level <= hi and hi > lo:
          t = (level - lo) / (hi - lo)
          crossings.append((li, np.log(b), log_eta[j] + t * (log_eta[j - 1] - log_eta[j])))
          break
  used = sorted({c[0] for c in crossings})
  if len(crossings) < len(used) + 2 or len({c[1] for c in crossings}) < 2:
    raise ValueError("phase: too few contour crossings to fit a slope (need rows of several "
                     "batch sizes that cross common loss levels on the small-eta side)")
  design = np.zeros((len(crossings), 1 + len(used)))
  target = np.array([c[2] for c in crossings])
  for n, (li, log_b, _) in enumerate(crossings):
    design[n, 0], design[n, 1 + used.index(li)] = log_b, 1.0
  coef, *_ = np.linalg.lstsq(design, target, rcond=None)
  resid = design @ coef - target
  dof = max(len(crossings) - design.shape[1], 1)
  cov = np.linalg.pinv(design.T @ design) * float(resid @ resid) / dof
  s, se = float(coef[0]), float(np.sqrt(max(cov[0, 0], 0.0)))
  return {"eta_exponent_s": {"value": s, "stderr": se},
          "contour_slope_paper_axes": {"value": -s, "stderr": se},
          "levels": [float(levels[i]) for i in used], "crossings": len(crossings)}


# ----------------------------------------------------------------------------- sweep I/O


class SweepData(NamedTuple):
  records: list[dict]          # status == done
  excluded: list[dict]         # {"id", "status", "reason"}: failed, diverged, missing


def load_sweep(sweep_dir: storage.PathLike) -> SweepData:
  """The sweep's records (local or ``gs://``): the done ones and why the others are out."""
  sweep_dir = storage.path(sweep_dir)
  path = sweep_dir / "sweep.jsonl"
  if not path.is_file():
    raise ValueError(f"--sweep: {sweep_dir} has no sweep.jsonl (run `signflax sweep` first)")
  records = {}
  for line in path.read_text().splitlines():
    if line.strip():
      r = json.loads(line)
      records[r["id"]] = r
  try:
    planned = json.loads((sweep_dir / "sweep_config.json").read_text())["points"]
  except (OSError, ValueError, KeyError):
    planned = [{"id": i} for i in records]
  done, excluded = [], []
  for p in planned:
    r = records.get(p["id"])
    if r is None:
      excluded.append({"id": p["id"], "status": "missing", "reason": "no record in sweep.jsonl"})
    elif r["status"] != "done":
      excluded.append({"id": r["id"], "status": r["status"], "reason": r.get("reason", "")})
    else:
      done.append(r)
  return SweepData(done, excluded)


def load_curve(sweep_dir: storage.PathLike, record: dict, key: str = "train_loss") -> Curve | None:
  metrics = [m for m in read_metrics(sweep_dir / "runs" / record["id"])
             if m.get("step", 0) > 0 and isinstance(m.get(key), (int, float))
             and math.isfinite(m[key])]
  if not metrics:
    return None
  return Curve(record["id"], record["optimizer"], int(record["global_batch_size"]),
               float(record["learning_rate"]), np.array([m["step"] for m in metrics]),
               np.array([m[key] for m in metrics], float),
               int(record["global_batch_size"] * record["seq_len"]))


def _final_loss(record: dict) -> float:
  value = record.get("final_eval_loss")
  if not isinstance(value, (int, float)) or not math.isfinite(value):
    value = record.get("final_train_loss")
  return float(value) if isinstance(value, (int, float)) else float("nan")


def _by_optimizer(records):
  groups: dict[str, list] = {}
  for r in records:
    groups.setdefault(r["optimizer"], []).append(r)
  return groups


# ----------------------------------------------------------------------------- laws on sweeps


def _plt():
  import matplotlib  # noqa: PLC0415
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415
  return plt


def _save_figure(fig, path) -> None:
  """Writes a PNG to a local or ``gs://`` path."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=100)
  storage.path(path).write_bytes(buffer.getvalue())


def _law_collapse(sweep_dir, data, out_dir, options) -> tuple[dict, list[str]]:
  plt, results, table = _plt(), {}, []
  for name, records in _by_optimizer(data.records).items():
    curves = [c for c in (load_curve(sweep_dir, r) for r in records) if c is not None]
    if len(curves) < 2:
      continue
    res = collapse(curves)
    results[name] = res
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for c, pl in zip(curves, res["plateaus"]):
      k = c.steps.astype(float)
      for ax, x in ((axes[0], c.eta * k), (axes[1], np.sqrt(c.batch) * c.eta * k)):
        ax.loglog(x, np.maximum(c.loss - pl["L_B"], 1e-4), label=f"B={c.batch}")
    axes[0].set(xlabel="eta k", ylabel="L - L_B", title=f"{name}: against eta k")
    axes[1].set(xlabel="sqrt(B) eta k", title="against sqrt(B) eta k")
    bs = np.array([p["batch"] for p in res["plateaus"]], float)
    axes[2].errorbar(1 / np.sqrt(bs), [p["L_B"] for p in res["plateaus"]],
                     yerr=[p["stderr"] for p in res["plateaus"]], fmt="o")
    axes[2].set(xlabel="1/sqrt(B)", ylabel="plateau L_B", title="plateau vs 1/sqrt(B)")
    axes[0].legend()
    fig.tight_layout()
    _save_figure(fig, out_dir / f"collapse_{name}.png")
    plt.close(fig)
    p = res["batch_exponent_p"]
    row = (f"{name:10s} p = {p['value']:.3f} ± {p['stderr']:.3f} (0.5: sqrt(B) eta k, 0: eta k) | "
           f"spread eta k {res['spread_eta_k'] or float('nan'):.3f} vs sqrt(B) eta k "
           f"{res['spread_sqrtB_eta_k'] or float('nan'):.3f}")
    if "plateau_better" in res:
      row += (f" | L_B rms 1/sqrt(B) {res['plateau_inv_sqrt_B']['weighted_rms']:.3g} vs 1/B "
              f"{res['plateau_inv_B']['weighted_rms']:.3g} -> {res['plateau_better']}")
    table.append(row)
  return results, table


def _parse_fractions(text: str | None) -> dict[int, float] | None:
  if not text:
    return None
  try:
    return {int(b): float(f) for b, f in (item.split(":") for item in text.split(","))}
  except ValueError:
    raise ValueError(f"--fractions: expected B:fraction[,B:fraction...], got {text!r}") from None


def _law_predict(sweep_dir, data, out_dir, options):
  plt, results, table = _plt(), {}, []
  for name, records in _by_optimizer(data.records).items():
    curves = [c for c in (load_curve(sweep_dir, r) for r in records) if c is not None]
    if len(curves) < 2:
      continue
    fractions = predict_split(curves, _parse_fractions(options.get("fractions")))
    res = {form: predict(curves, fractions, form) for form in ("sign", "sgd")}
    res["fractions"] = {str(b): f for b, f in fractions.items()}
    results[name] = res
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, form in zip(axes, ("sign", "sgd")):
      law = _FORMS[form][0]
      params = [v["value"] for v in res[form]["params"].values()]
      for c in curves:
        n_fit = int(round(fractions[c.batch] * len(c.steps)))
        line, = ax.plot(c.steps, c.loss, alpha=0.5, label=f"B={c.batch}")
        ax.plot(c.steps, law(c.steps.astype(float), c.batch, c.eta, *params), "--",
                color=line.get_color())
        if n_fit:
          ax.axvline(c.steps[n_fit - 1], color=line.get_color(), lw=0.5)
      ax.set(xscale="log", xlabel="step k", ylabel="train loss",
             title=f"{name}: {'eq. 2' if form == 'sign' else 'SGD form'} "
                   f"(held-out rel. err {res[form]['mean_rel_error_held_out']:.2%})")
      ax.legend()
    fig.tight_layout()
    _save_figure(fig, out_dir / f"predict_{name}.png")
    plt.close(fig)
    for form in ("sign", "sgd"):
      per = ", ".join(f"B={e['batch']}: {e['mean_rel_error']:.2%}" for e in res[form]["held_out"])
      table.append(f"{name:10s} {form:5s} held-out mean rel. error "
                   f"{res[form]['mean_rel_error_held_out']:.2%} ({per})")
  return results, table


def best_by_budget(sweep_dir, records, budgets: int = 8) -> tuple[np.ndarray, np.ndarray]:
  """Best loss over the points at each of ``budgets`` log-spaced token counts D.

  Each point contributes its train-loss curve interpolated (in log tokens) at D,
  so a single sweep over (eta, B) covers every budget up to its shortest run.
  """
  curves = [c for c in (load_curve(sweep_dir, r) for r in records) if c is not None]
  tokens = [np.log(c.steps * c.tokens_per_step) for c in curves]
  lo, hi = max(min(t.min() for t in tokens), 0), max(t.max() for t in tokens)
  grid = np.linspace(lo + 0.25 * (hi - lo), hi, budgets)
  best = np.full(budgets, np.inf)
  for t, c in zip(tokens, curves):
    inside = (grid >= t.min()) & (grid <= t.max())
    best[inside] = np.minimum(best[inside], np.interp(grid[inside], t, c.loss))
  ok = np.isfinite(best)
  return np.exp(grid[ok]), best[ok]


def _law_data_scaling(sweep_dir, data, out_dir, options):
  plt = _plt()
  groups = _by_optimizer(data.records)
  budgets = {n: best_by_budget(sweep_dir, rs) for n, rs in groups.items()}
  budgets = {n: v for n, v in budgets.items() if len(v[0]) >= 3}
  if not budgets:
    raise ValueError("data_scaling: no optimizer has curves covering 3 token budgets")
  res = data_scaling(budgets, n_boot=int(options.get("bootstrap", 200)))
  fig, ax = plt.subplots(figsize=(6, 4))
  for n, (d, l) in budgets.items():
    ax.loglog(d, l - res["L0"]["value"], "o", label=n)
    a, c = res[n]["alpha"]["value"], res[n]["C"]["value"]
    ax.loglog(d, c * d ** (-a), "--", label=f"{n}: alpha={a:.2f}")
  ax.set(xlabel="tokens D", ylabel="best loss - L0", title="data scaling (shared L0)")
  ax.legend()
  fig.tight_layout()
  _save_figure(fig, out_dir / "data_scaling.png")
  plt.close(fig)
  table = [f"L0 = {res['L0']['value']:.4f}"]
  for n in budgets:
    a = res[n]["alpha"]
    ci = a["ci95"]
    table.append(f"{n:10s} alpha = {a['value']:.3f} ± {a['stderr']:.3f}"
                 + (f" (95% bootstrap {ci[0]:.3f}..{ci[1]:.3f})" if ci[0] is not None else ""))
  return res, table


def _law_batch(sweep_dir, data, out_dir, options):
  plt, results, table = _plt(), {}, []
  tolerance = float(options.get("tolerance", 0.01))
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, records in _by_optimizer(data.records).items():
    tuned: dict[int, tuple[float, float]] = {}
    for r in records:
      loss, b = _final_loss(r), int(r["global_batch_size"])
      if math.isfinite(loss) and (b not in tuned or loss < tuned[b][0]):
        tuned[b] = (loss, float(r["learning_rate"]))
    if len(tuned) < 2:
      continue
    bs = sorted(tuned)
    losses = [tuned[b][0] for b in bs]
    crit = critical_batch(bs, losses, tolerance)
    results[name] = {"batches": bs, "tuned_loss": losses,
                     "tuned_learning_rate": [tuned[b][1] for b in bs],
                     "critical_batch": crit, "tolerance": tolerance}
    ax.semilogx(bs, losses, "o-", label=f"{name} (B_crit ≈ {crit:.3g})" if crit else name)
    table.append(f"{name:10s} " + " ".join(f"B={b}: {tuned[b][0]:.4f} (lr {tuned[b][1]:.2g})"
                                          for b in bs)
                 + (f" | critical batch ≈ {crit:.3g}" if crit else " | no critical batch"))
  ax.set(xlabel="batch size B", ylabel="final loss (eta tuned per B)")
  ax.legend()
  fig.tight_layout()
  _save_figure(fig, out_dir / "batch.png")
  plt.close(fig)
  return results, table


def _law_phase(sweep_dir, data, out_dir, options):
  plt, results, table = _plt(), {}, []
  for name, records in _by_optimizer(data.records).items():
    by_batch: dict[int, list[tuple[float, float]]] = {}
    for r in records:
      by_batch.setdefault(int(r["global_batch_size"]), []).append(
          (float(r["learning_rate"]), _final_loss(r)))
    rows = [(b, [e for e, _ in pts], [l for _, l in pts]) for b, pts in sorted(by_batch.items())]
    if len(rows) < 2 or max(len(r[1]) for r in rows) < 3:
      continue
    try:
      res = contour_exponent(rows)
    except ValueError as e:
      res = {"error": str(e)}
    res["grid"] = [{"batch": b, "learning_rate": e, "loss": l if math.isfinite(l) else None}
                   for b, es, ls in rows for e, l in zip(es, ls)]
    results[name] = res
    x = np.log10([g["learning_rate"] for g in res["grid"]])
    y = np.log10([g["batch"] for g in res["grid"]])
    z = np.array([np.nan if g["loss"] is None else g["loss"] for g in res["grid"]])
    ok = np.isfinite(z)
    fig, ax = plt.subplots(figsize=(6, 4))
    points = ax.scatter(x[ok], y[ok], c=z[ok], s=120, marker="s", cmap="viridis")
    ax.scatter(x[~ok], y[~ok], marker="x", color="r", label="diverged/failed")
    fig.colorbar(points, label="final loss")
    if ok.sum() >= 6:
      try:
        ax.tricontour(x[ok], y[ok], z[ok], levels=8, colors="k", linewidths=0.6)
      except (ValueError, RuntimeError):
        pass  # a degenerate triangulation (points on a line): the scatter alone
    ax.set(xlabel="log10 eta", ylabel="log10 B", title=f"{name}: final loss at fixed D")
    fig.tight_layout()
    _save_figure(fig, out_dir / f"phase_{name}.png")
    plt.close(fig)
    if "error" in res:
      table.append(f"{name:10s} {res['error']}")
    else:
      s = res["eta_exponent_s"]
      table.append(f"{name:10s} contours eta ∝ B^s, s = {s['value']:.3f} ± {s['stderr']:.3f} "
                   f"(sign: 0.5, SGD: 1); slope in the paper's axes {-s['value']:.3f}")
  return results, table


_LAW_FUNCTIONS = {"collapse": _law_collapse, "predict": _law_predict,
                  "data_scaling": _law_data_scaling, "batch": _law_batch, "phase": _law_phase}


def fit_sweep(sweep_dir: str | pathlib.Path, law: str, out_dir: str | pathlib.Path | None = None,
              **options) -> dict:
  """Runs ``law`` on a sweep directory; writes results.json and PNGs; returns the results."""
  if law not in LAWS:
    raise ValueError(f"--law: {law!r} is not one of {', '.join(LAWS)}")
  sweep_dir = storage.path(sweep_dir)
  data = load_sweep(sweep_dir)
  out_dir = storage.path(out_dir) if out_dir else sweep_dir / "fits" / law
  out_dir.mkdir(parents=True, exist_ok=True)
  results, table = _LAW_FUNCTIONS[law](sweep_dir, data, out_dir, options)
  payload = {"law": law, "sweep": str(sweep_dir), "points_fitted": len(data.records),
             "excluded": data.excluded, "results": results}
  storage.write_text(out_dir / "results.json", json.dumps(payload, indent=1) + "\n")
  print(f"fit {law} on {sweep_dir}: {len(data.records)} points"
        + (f"; left out {len(data.excluded)}: "
           + ", ".join(f"{e['id']} ({e['status']}: {e['reason']})" for e in data.excluded)
           if data.excluded else ""))
  for row in table:
    print("  " + row)
  print(f"  -> {out_dir}/results.json")
  return payload


def main(argv: Sequence[str]) -> int:
  parser = argparse.ArgumentParser(prog="signflax fit", description=__doc__.split("\n")[0])
  parser.add_argument("--sweep", required=True, help="a `signflax sweep` directory")
  parser.add_argument("--law", required=True, choices=LAWS)
  parser.add_argument("--out", default=None, help="output directory (default SWEEP/fits/LAW)")
  parser.add_argument("--fractions", default=None,
                      help="predict: fitted fraction per batch, e.g. 64:0.25,128:0.5 "
                           "(default: the paper's split)")
  parser.add_argument("--bootstrap", type=int, default=200, help="data_scaling: resamples")
  parser.add_argument("--tolerance", type=float, default=0.01,
                      help="batch: relative loss tolerance of the critical batch")
  try:
    args = parser.parse_args(argv)
  except SystemExit as e:
    return int(e.code or 0)
  try:
    fit_sweep(args.sweep, args.law, args.out, fractions=args.fractions,
              bootstrap=args.bootstrap, tolerance=args.tolerance)
  except outcomes.SignflaxError:
    raise
  except ValueError as e:  # bad input: one line and exit 2 (signflax.cli.main)
    raise outcomes.BadInput(outcomes.one_line(e)) from e
  return 0
