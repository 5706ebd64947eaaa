"""The benchmark harnesses run end to end at CPU size and write what they print (no timings
are asserted: speed goals live in the benchmarks' tables)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"


def _run(script, *args):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device
  result = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  return result.stdout


@pytest.mark.slow
def test_train_bench_small_row_per_optimizer_with_overrides(tmp_path):
  out = tmp_path / "train.json"
  stdout = _run("train_bench.py", "--small", "--steps", "1", "--optimizers", "sign_sgd,muon",
                "--config.train.loss_chunk_len=64", "--label", "fused", "--json", str(out))
  result = json.loads(out.read_text())
  assert result["overrides"] == {"train.loss_chunk_len": "64"} and result["label"] == "fused"
  rows = result["rows"]
  assert [(r["optimizer"], r["batch"]) for r in rows] == [("sign_sgd", 16), ("muon", 16)]
  for r in rows:
    assert r["step_ms"] > 0 and r["tokens_per_s"] > 0 and r["compiled_bytes"] > 0
    assert r["attention"] == "xla" and 0 < r["loss"] < 10
    assert f"{r['optimizer']:<10} {r['batch']:>5}" in stdout
  assert "| fused" in stdout


def test_train_bench_rejects_a_bad_override():
  result = subprocess.run([sys.executable, str(BENCHMARKS / "train_bench.py"), "--small",
                           "--config.train.no_such_field=1"], capture_output=True, text=True)
  assert result.returncode == 2
  assert result.stderr.count("\n") == 1 and "no_such_field" in result.stderr


def test_data_bench_reports_tokens_per_second(tmp_path):
  out = tmp_path / "data.json"
  stdout = _run("data_bench.py", "--batches", "5", "--batch", "4", "--seq-len", "256",
                "--config.data.max_bytes=300000", "--json", str(out))
  rows = json.loads(out.read_text())["rows"]
  assert [r["prefetch"] for r in rows] == [0, 2]
  assert all(r["tokens_per_s"] > 0 for r in rows)
  assert ">= 600,000 tok/s" in stdout
