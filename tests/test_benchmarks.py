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


@pytest.mark.slow
def test_decode_bench_rows_and_forecast(tmp_path):
  out = tmp_path / "decode.json"
  stdout = _run("decode_bench.py", "--batches", "1,2", "--new-tokens", "4", "--repeats", "1",
                "--config.model.num_layers=1", "--json", str(out))
  result = json.loads(out.read_text())
  assert [r["batch"] for r in result["rows"]] == [1, 2]
  for r in result["rows"]:
    assert r["kv_cache_tokens_per_s"] > 0 and r["recompute_tokens_per_s"] > 0
    assert f"| {r['batch']} | " in stdout
  # gpt2_124m in bf16: 123.6M parameters (247 MB) + 2 x 12 x 1024 x 768 x 2 B of cache per row
  first = result["forecast"][0]
  assert first["batch"] == 1 and first["context"] == 1024
  assert abs(first["bytes_per_step_mb"] - (247.17 + 37.75)) < 0.1
