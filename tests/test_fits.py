"""Scaling-law fits recover the parameters of synthetic data made from their own law."""

import json

import numpy as np
import pytest

from signflax import cli
from signflax.experiments import fits

ETA = 5e-4
BATCHES = (64, 128, 256)


def _curves(law, params, noise, seed=0, steps=np.arange(20, 4001, 20)):
  rng = np.random.default_rng(seed)
  return [fits.Curve(f"B{b}", "x", b, ETA, steps,
                     law(steps.astype(float), b, ETA, *params)
                     * (1 + noise * rng.standard_normal(len(steps))), b * 512)
          for b in BATCHES]


def test_eq2_recovered_from_papers_split_and_predicts_held_out():
  truth = dict(L0=2.0, C1=3.0, C2=0.5, C3=2000.0, a=0.6)
  curves = _curves(fits.eq2, truth.values(), noise=0.002)
  split = fits.predict_split(curves)
  assert split == {64: 0.25, 128: 0.5, 256: 0.0}          # the paper's split
  res = fits.predict(curves, split, "sign")
  got = {k: v["value"] for k, v in res["params"].items()}
  assert got["a"] == pytest.approx(truth["a"], rel=0.1)
  assert got["L0"] == pytest.approx(truth["L0"], rel=0.05)
  assert got["C3"] == pytest.approx(truth["C3"], rel=0.3)
  assert res["mean_rel_error_held_out"] < 0.01            # noise is 0.2%
  held = {e["batch"]: e for e in res["held_out"]}
  assert held[256]["fitted_fraction"] == 0 and held[256]["held_out_points"] == 200


def test_sgd_form_recovered():
  truth = dict(L0=2.5, C=60.0, C1=0.8, alpha=0.5)
  curves = _curves(fits.sgd_law, truth.values(), noise=0.002, seed=1)
  res = fits.predict(curves, fits.predict_split(curves), "sgd")
  got = {k: v["value"] for k, v in res["params"].items()}
  assert got["alpha"] == pytest.approx(truth["alpha"], rel=0.1)
  assert got["C"] == pytest.approx(truth["C"], rel=0.25)
  assert res["mean_rel_error_held_out"] < 0.01


def test_collapse_finds_sqrt_batch_time_and_plateau_law():
  # L = L_B + A (sqrt(B) eta k)^-beta with L_B = 2 + 8/sqrt(B): p = 1/2, 1/sqrt(B) plateaus.
  steps = np.arange(10, 3001, 10).astype(float)
  rng = np.random.default_rng(2)
  curves = []
  for b in (16, 64, 256, 1024):
    clean = 2 + 8 / np.sqrt(b) + 1.5 * (np.sqrt(b) * ETA * steps) ** -0.7
    curves.append(fits.Curve(f"B{b}", "sign_sgd", b, ETA, steps,
                             clean * (1 + 0.001 * rng.standard_normal(len(steps))), b))
  res = fits.collapse(curves)
  assert res["batch_exponent_p"]["value"] == pytest.approx(0.5, abs=0.05)
  assert res["spread_sqrtB_eta_k"] < res["spread_eta_k"]
  assert res["plateau_better"] == "inv_sqrt_B"
  assert res["plateau_inv_sqrt_B"]["C"]["value"] == pytest.approx(8, rel=0.15)


def test_shared_l0_data_law_recovered_with_intervals():
  rng = np.random.default_rng(3)
  d = np.geomspace(1e6, 1e9, 10)
  truth = {"sign_sgd": (1.04, 50.0), "sgd": (0.67, 20.0)}
  budgets = {n: (d, (1.8 + c * (d / 1e6) ** -a) * (1 + 0.002 * rng.standard_normal(d.size)))
             for n, (a, c) in truth.items()}
  res = fits.data_scaling(budgets, n_boot=40)
  assert res["L0"]["value"] == pytest.approx(1.8, abs=0.1)
  for name, (alpha, _) in truth.items():
    got = res[name]["alpha"]
    assert got["value"] == pytest.approx(alpha, abs=0.08)
    lo, hi = got["ci95"]
    assert lo <= got["value"] <= hi and hi - lo < 0.5


@pytest.mark.parametrize("s", [0.5, 1.0])
def test_contour_exponent_recovered(s):
  # loss = g(log eta - s log B): a valley in log eta whose position moves with B^s.
  rng = np.random.default_rng(4)
  rows = []
  for b in (8, 16, 32, 64, 128):
    etas = np.geomspace(1e-4, 1e-1, 13) * b ** s / 8 ** s * rng.uniform(0.9, 1.1)
    u = np.log(etas) - s * np.log(b) - np.log(3e-3)
    rows.append((b, etas, 3 + 0.3 * u ** 2 + 0.005 * rng.standard_normal(etas.size)))
  res = fits.contour_exponent(rows)
  assert res["eta_exponent_s"]["value"] == pytest.approx(s, abs=0.05)
  assert res["contour_slope_paper_axes"]["value"] == pytest.approx(-s, abs=0.05)


def test_critical_batch():
  assert fits.critical_batch([8, 16, 32, 64], [3.0, 3.0, 3.01, 3.5]) == pytest.approx(
      32 * (64 / 32) ** ((3.03 - 3.01) / 0.49), rel=1e-6)
  assert fits.critical_batch([8, 16], [3.0, 2.9]) == 16.0


def _fake_sweep(tmp_path, statuses):
  """A sweep directory with synthetic eq.-2 curves; some points failed or missing."""
  planned = []
  with open(tmp_path / "sweep.jsonl", "w") as f:
    for i, (b, status) in enumerate(zip((64, 128, 256, 512), statuses)):
      pid = f"{i:03d}-global_batch_size={b}"
      planned.append({"index": i, "id": pid, "values": {"train.global_batch_size": b}})
      if status == "missing":
        continue
      run = tmp_path / "runs" / pid
      run.mkdir(parents=True)
      steps = np.arange(20, 2001, 20)
      loss = fits.eq2(steps.astype(float), b, ETA, 2.0, 3.0, 0.5, 2000.0, 0.6)
      with open(run / "metrics.jsonl", "w") as m:
        for k, v in zip(steps, loss):
          m.write(json.dumps({"step": int(k), "train_loss": float(v)}) + "\n")
      f.write(json.dumps({"index": i, "id": pid, "optimizer": "sign_sgd",
                          "global_batch_size": b, "seq_len": 512, "learning_rate": ETA,
                          "status": status, "reason": "boom" if status == "failed" else "",
                          "final_train_loss": float(loss[-1]), "final_eval_loss": None}) + "\n")
  (tmp_path / "sweep_config.json").write_text(json.dumps({"points": planned}))


@pytest.mark.slow  # fits two laws and draws their figures
def test_fit_over_sweep_with_failed_and_missing_points(tmp_path, capsys):
  _fake_sweep(tmp_path, ["done", "done", "failed", "missing"])
  assert fits.main(["--sweep", str(tmp_path), "--law", "predict",
                    "--fractions", "64:0.25,128:0.5"]) == 0
  out = capsys.readouterr().out
  assert "002-global_batch_size=256 (failed: boom)" in out
  assert "003-global_batch_size=512 (missing" in out
  result = json.loads((tmp_path / "fits" / "predict" / "results.json").read_text())
  assert result["points_fitted"] == 2
  assert {e["status"] for e in result["excluded"]} == {"failed", "missing"}
  assert (tmp_path / "fits" / "predict" / "predict_sign_sgd.png").is_file()
  # a law that cannot run on what is left fails in one line
  assert cli.main(["fit", "--sweep", str(tmp_path / "nope"), "--law", "batch"]) == 2
  assert "signflax fit: error: --sweep:" in capsys.readouterr().err
