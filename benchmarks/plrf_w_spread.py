"""Where the W-to-W spread of PLRF's compute-optimal exponent comes from.

    python benchmarks/plrf_w_spread.py

SGD's exact expected risk at a fixed feature matrix W (``sgd_plrf_risk_recursion``, no
seed noise), frontier over d with the learning rate tuned, for 8 W per (phase, setting):
v = 512 vs 2048 (finite v) and d = 8..64 vs 4..64 (the d grid). Prints mean +- 95%
interval [min, max] over W next to Paquette et al.'s prediction and writes
``benchmarks/results/plrf_w_spread.json``. About 20 min on 2 busy CPU cores.
"""
import json
import pathlib
import time

import numpy as np

from signflax.experiments import compute_optimal
from signflax.linreg import plrf, theory

cases = {"III (1.0, 1.5)": (1.0, 1.5), "II (1.0, 0.7)": (1.0, 0.7), "Ia (1.5, 0.4)": (1.5, 0.4)}
out = {}
start = time.time()
for label, dims, budgets, v in [
    ("v=512, d=8..64", [8, 16, 32, 64], 2 ** np.arange(10, 17), 512),
    ("v=2048, d=8..64", [8, 16, 32, 64], 2 ** np.arange(10, 17), 2048),
    ("v=512, d=4..64", [4, 8, 16, 32, 64], 2 ** np.arange(10, 17), 512),
]:
  for name, (a, b) in cases.items():
    pred = theory.plrf_sgd_compute_optimal(a, b)
    lrs = 2.0 ** np.arange(-4, 1)
    exps, xis = [], []
    for w in range(8):
      per_size = np.array([plrf.sgd_plrf_risk_recursion(
          plrf.plrf_problem(v, d, a, b, seed=w), lrs, 1, budgets // d).min(0) for d in dims])
      f = compute_optimal.frontier(budgets, dims, per_size)
      exps.append(f["loss_exponent"]); xis.append(f["dim_exponent"])
    s = compute_optimal.interval(exps); x = compute_optimal.interval(xis)
    out[f"{label} | {name}"] = dict(eta=s, xi=x, predicted_eta=pred.loss_exponent,
                                    predicted_xi=pred.dim_exponent)
    print(f"{label:18s} {name:16s} eta {s['mean']:.3f} +- {s['half_width']:.3f} "
          f"[{s['min']:.3f}, {s['max']:.3f}] (pred {pred.loss_exponent:.3f})  "
          f"xi {x['mean']:.3f} +- {x['half_width']:.3f} (pred {pred.dim_exponent:.3f})  "
          f"{time.time() - start:.0f}s", flush=True)
path = pathlib.Path(__file__).resolve().parent / "results" / "plrf_w_spread.json"
path.write_text(json.dumps(out, indent=1, default=float))
print(f"wrote {path}")
