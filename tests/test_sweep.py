"""`signflax sweep`: expansion, bad configs, kill -9 and resume, compile reuse, TensorBoard."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.parse
import urllib.request

import pytest

from signflax import cli, config_io
from signflax.experiments import sweep

REPO = pathlib.Path(__file__).resolve().parent.parent

# A one-layer, 32-wide model: each point is a few seconds once its step is compiled.
_TINY = """
import ml_collections
from signflax.experiments.sweep import base_config

def get_config():
  config = ml_collections.ConfigDict()
  config.base = base = base_config("lm/tiny.py")
  base.model.update(dict(num_layers=1, d_model=32, num_heads=2, max_seq_len=32))
  base.optimizer.update(dict(name="sign_sgd", learning_rate=1e-3, schedule="constant",
                             warmup_steps=0, weight_decay=0.0))
  base.train.update(dict(steps={steps}, global_batch_size=4, seq_len=32, log_every=4,
                         eval_every=0, eval_batches=2, noise_stats=False))
  base.checkpoint.update(dict(every_steps=8, keep=1, async_save=False))
{body}
  return config
"""


def _write_config(tmp_path, body, steps=16, name="sweep_cfg.py"):
  path = tmp_path / name
  path.write_text(_TINY.format(steps=steps, body=textwrap.indent(textwrap.dedent(body), "  ")))
  return path


def _env():
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  return env


def _sweep_cmd(config, workdir, *extra):
  return [sys.executable, "-m", "signflax.cli", "sweep", "--config", str(config),
          "--workdir", str(workdir), *extra]


def test_expand_product_zip_gamma_and_tokens(tmp_path):
  config = config_io.load_config_file(_write_config(tmp_path, """
      config.product = [("optimizer.name", ["sign_sgd", "sgd"]), ("train.global_batch_size", [4, 16])]
      config.zip = [("gamma", [1e-3, 2e-3]), ("train.seed", [0, 1])]
      config.gamma_rules = {"sign_sgd": "sqrt", "sgd": ("linear", 10.0)}
  """))
  points = sweep.expand(config)
  assert len(points) == 2 * 2 * 2
  by = {(p.values["optimizer.name"], p.values["train.global_batch_size"], p.values["gamma"]): p
        for p in points}
  assert by["sign_sgd", 16, 2e-3].config.optimizer.learning_rate == pytest.approx(2e-3 * 4)
  assert by["sgd", 4, 1e-3].config.optimizer.learning_rate == pytest.approx(10 * 1e-3 * 4)
  assert by["sgd", 4, 2e-3].config.train.seed == 1
  assert len({p.id for p in points}) == len(points)
  assert points[0].id.startswith("000-name=sign_sgd,global_batch_size=4,gamma=0.001")

  config.zip = [("tokens", [4096])]
  config.product = [("train.global_batch_size", [4, 8])]
  config.gamma_rules = {}
  assert [p.config.train.steps for p in sweep.expand(config)] == [32, 16]


@pytest.mark.parametrize("body, message", [
    ('config.product = [("optimizer.nme", ["sgd"])]', "no field 'optimizer.nme'"),
    ('config.product = [("train.seed", [])]', "empty axis"),
    ('config.product = [("train.global_batch_size", ["big"])]', "expected int, got 'big'"),
    ('config.product = [("gamma", [1e-3])]\nconfig.gamma_rules = {"sgd": "linear"}',
     "no learning-rate rule for optimizer 'sign_sgd'"),
    ('config.product = [("train.steps", [0])]', "config.train.steps"),
])
def test_bad_sweep_config_fails_in_one_line_before_any_point(tmp_path, capsys, body, message):
  config = _write_config(tmp_path, body)
  assert cli.main(["sweep", "--config", str(config), "--workdir", str(tmp_path / "out")]) == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("signflax sweep: error:") and message in lines[0]
  assert not (tmp_path / "out").exists()


def test_list_prints_one_command_per_point(tmp_path, capsys):
  config = _write_config(tmp_path, 'config.product = [("train.seed", [0, 1, 2])]')
  assert cli.main(["sweep", "--config", str(config), "--workdir", str(tmp_path / "out"),
                   "--list", "--config.base.train.steps=8"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert [line.split("\t")[0] for line in lines] == ["0", "1", "2"]
  assert lines[2].endswith("--config.base.train.steps=8 --point 2")


_COMPARED = ("id", "values", "status", "final_train_loss", "final_eval_loss", "tokens")


def _records(workdir):
  return [{k: r[k] for k in _COMPARED}
          for r in map(json.loads, (workdir / "sweep.jsonl").read_text().splitlines())]


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
  """A 4-point seed sweep run without interruption (its cache is shared with the kill test)."""
  root = tmp_path_factory.mktemp("sweep")
  config = _write_config(root, f"""
      config.product = [("train.seed", [0, 1, 2, 3])]
      config.compilation_cache = {str(root / 'cache')!r}
  """, steps=24)
  result = subprocess.run(_sweep_cmd(config, root / "a"), capture_output=True, text=True,
                          env=_env(), timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  return root, config, result.stderr


@pytest.mark.slow
def test_sweep_survives_kill_9(finished_sweep):
  root, config, log_a = finished_sweep
  assert [r["status"] for r in _records(root / "a")] == ["done"] * 4
  work = root / "b"
  proc = subprocess.Popen(_sweep_cmd(config, work), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, env=_env())
  run1 = None
  deadline = time.monotonic() + 600
  while time.monotonic() < deadline and proc.poll() is None:
    runs = sorted((work / "runs").glob("001-*")) if (work / "runs").exists() else []
    if runs and any(p.name.isdigit() for p in (runs[0] / "checkpoints").glob("*")) \
        and not (runs[0] / "sweep_record.json").exists():
      run1 = runs[0]
      proc.send_signal(signal.SIGKILL)
      break
    time.sleep(0.02)
  proc.wait()
  assert run1 is not None, "the sweep finished before point 1 had a checkpoint"
  assert not (run1 / "sweep_record.json").exists()
  done_before = next((work / "runs").glob("000-*/sweep_record.json")).read_text()

  result = subprocess.run(_sweep_cmd(config, work), capture_output=True, text=True,
                          env=_env(), timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "000-seed=0: done earlier, skipped" in result.stderr
  assert next((work / "runs").glob("000-*/sweep_record.json")).read_text() == done_before
  resumed = [json.loads(line) for line in (run1 / "metrics.jsonl").read_text().splitlines()]
  assert any("resumed_from_step" in r for r in resumed)
  assert _records(work) == _records(root / "a")
  # the killed and resumed sweep found every executable in the shared cache
  summary = json.loads((work / "sweep_summary.json").read_text())
  assert summary["train_step_compiles"] == 0 and summary["cache_hits"] > 0


# Runs the CLI with Checkpointer.save failing for run directories whose name holds $FAIL_IN,
# from the $FAIL_FROM-th save of that run on (the earlier ones are real async Orbax saves).
_FAILING_SAVES = """
import os, sys
from signflax.train import checkpoint
real_save, calls = checkpoint.Checkpointer.save, {}
def save(self, step, state, extra):
  if os.environ.get("FAIL_IN") and os.environ["FAIL_IN"] in str(self.directory):
    calls[step] = True
    if len(calls) >= int(os.environ["FAIL_FROM"]):
      raise checkpoint.CheckpointSaveError("checkpoint save failed: injected")
  return real_save(self, step, state, extra)
checkpoint.Checkpointer.save = save
from signflax import cli
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_failed_save_is_failed_not_diverged_ends_promptly_and_is_retried(tmp_path):
  config = _write_config(tmp_path, f"""
      config.product = [("train.seed", [1])]
      config.compilation_cache = {str(tmp_path / 'cache')!r}
      config.base.checkpoint.async_save = True
  """, steps=16)
  driver = tmp_path / "driver.py"
  driver.write_text(_FAILING_SAVES)
  work = tmp_path / "sweep"
  cmd = [sys.executable, str(driver), *_sweep_cmd(config, work)[3:]]
  proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True,
                          env=dict(_env(), FAIL_IN="000-seed=1", FAIL_FROM="2"))
  failed_at, lines = None, []
  for line in proc.stderr:
    lines.append(line)
    if "000-seed=1: failed" in line:
      failed_at = time.monotonic()
  proc.wait(timeout=600)
  exited_at = time.monotonic()
  log = "".join(lines)
  assert proc.returncode == 0, log[-3000:]
  assert failed_at is not None, log[-3000:]
  assert exited_at - failed_at < 30, f"exited {exited_at - failed_at:.0f}s after the failure"
  records = {r["id"]: r for r in map(json.loads, (work / "sweep.jsonl").read_text().splitlines())}
  failed = records["000-seed=1"]
  assert failed["status"] == "failed" and "injected" in failed["reason"], failed

  result = subprocess.run(_sweep_cmd(config, work), capture_output=True, text=True,
                          env=_env(), timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "000-seed=1: running" in result.stderr and "earlier, skipped" not in result.stderr
  records = {r["id"]: r for r in map(json.loads, (work / "sweep.jsonl").read_text().splitlines())}
  assert records["000-seed=1"]["status"] == "done"                # resumed from step 8
  assert records["000-seed=1"]["tokens"] == 16 * 4 * 32
  resumed = [json.loads(line) for line in
             (work / "runs" / "000-seed=1" / "metrics.jsonl").read_text().splitlines()]
  assert [r["resumed_from_step"] for r in resumed if "resumed_from_step" in r] == [8]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _get(port, path, **query):
  url = f"http://127.0.0.1:{port}{path}" + ("?" + urllib.parse.urlencode(query) if query else "")
  with urllib.request.urlopen(url, timeout=10) as response:
    return json.loads(response.read())


@pytest.mark.slow
def test_tensorboard_server_shows_metrics_hparams_and_config(finished_sweep):
  root, _, _ = finished_sweep
  run = next((root / "a" / "runs").glob("002-*"))
  port = _free_port()
  server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(run),
                             "--host", "127.0.0.1", "--port", str(port), "--load_fast=false"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
  try:
    deadline = time.monotonic() + 120
    while True:
      try:
        tags = _get(port, "/data/plugin/scalars/tags")
        if tags.get("tb"):
          break
      except OSError:
        pass
      assert time.monotonic() < deadline and server.poll() is None, "tensorboard did not start"
      time.sleep(0.5)
    from signflax.tensorboard_extras import tensorboard_tag  # noqa: PLC0415
    expected: dict[str, dict[int, float]] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
      record = json.loads(line)
      for key, value in record.items():
        if key != "step" and isinstance(value, (int, float)):
          expected.setdefault(tensorboard_tag(key), {})[record["step"]] = value
    assert set(tags["tb"]) == set(expected)
    assert {t.split("/")[0] for t in expected} <= {"train", "eval", "optim", "perf"}
    assert "train/tokens" in expected
    for tag, by_step in expected.items():
      served = {step: value for _, step, value in
                _get(port, "/data/plugin/scalars/scalars", run="tb", tag=tag)}
      assert served == pytest.approx(by_step, rel=1e-6), tag
    assert "config" in _get(port, "/data/plugin/text/tags")["tb"]
    assert "hparams" in _get(port, "/data/plugins_listing")
  finally:
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.parametrize("field, values", [
    ("train.seed", [0, 1, 2]),
    ("optimizer.learning_rate", [1e-3, 2e-3, 4e-3]),
])
def test_three_point_sweep_compiles_the_train_step_once(tmp_path, field, values):
  config = _write_config(tmp_path, f"config.product = [({field!r}, {values!r})]", steps=4)
  result = subprocess.run(_sweep_cmd(config, tmp_path / "out"), capture_output=True, text=True,
                          env=_env(), timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  records = [json.loads(line) for line in (tmp_path / "out" / "sweep.jsonl").read_text()
             .splitlines()]
  assert [r["train_step_compiles"] for r in records] == [1, 0, 0]
  assert "(1 of the train step)" in result.stderr
  assert len({r["final_train_loss"] for r in records}) == 3  # the values reached the step


def _compiled_per_point(stderr: str) -> list[list[str]]:
  """From JAX's compile log (JAX_LOG_COMPILES=1): the programs compiled during each point."""
  points, names = [], None
  for line in stderr.splitlines():
    if line.startswith("[sweep ") and line.endswith(")") and ": running (" in line:
      names = []
      points.append(names)
    elif names is not None and "Finished XLA compilation of " in line:
      names.append(line.split("Finished XLA compilation of ")[1].split(" in ")[0])
  return points


@pytest.mark.slow
def test_learning_rate_sweep_compiles_no_step_and_no_state_init_after_its_first_point(tmp_path):
  """A 4-point rate sweep, read from JAX's compile log: after the first point neither the
  train step nor the state initializer compiles; what remains per new rate is its rate
  table (the schedule compiled with the peak as a constant, bit for bit). The sweep's own
  counts agree with the log."""
  config = _write_config(
      tmp_path, "config.product = [('optimizer.learning_rate', [1e-3, 2e-3, 4e-3, 1e-3])]",
      steps=4)
  result = subprocess.run(_sweep_cmd(config, tmp_path / "out"), capture_output=True, text=True,
                          env=_env() | {"JAX_LOG_COMPILES": "1"}, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  compiled = _compiled_per_point(result.stderr)
  assert len(compiled) == 4
  assert "jit(train_step)" in compiled[0] and "jit(_init_with)" in compiled[0]
  assert compiled[1:] == [["jit(schedule_table)"], ["jit(schedule_table)"], []]
  records = [json.loads(line) for line in (tmp_path / "out" / "sweep.jsonl").read_text()
             .splitlines()]
  assert [r["compiles"] for r in records] == [len(c) for c in compiled]
  assert [r["train_step_compiles"] for r in records] == [1, 0, 0, 0]
  assert [r["state_init_compiles"] for r in records] == [1, 0, 0, 0]
  assert len({r["final_train_loss"] for r in records[:3]}) == 3  # the rates reached the step
  assert records[3]["final_train_loss"] == records[0]["final_train_loss"]


def test_state_init_is_one_program_per_static_config_and_unchanged(tmp_path):
  """Runs differing in rate, weight decay or seed share one jitted initializer, and its
  state is bit for bit the one the config's own optimizer initializes."""
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  from signflax.train import setup as setup_lib  # noqa: PLC0415
  from signflax.train import step as step_lib  # noqa: PLC0415
  base = config_io.load_config_file(_write_config(tmp_path, "config.product = []")).base
  base.optimizer.name = "muon"
  other = base.copy_and_resolve_references()
  other.optimizer.learning_rate, other.optimizer.weight_decay, other.train.seed = 5e-3, 0.1, 7
  first, second = setup_lib.setup(base, vocab_size=256), setup_lib.setup(other, vocab_size=256)
  assert first.init_fn is second.init_fn
  state = second.init_state()
  with jax.set_mesh(second.mesh):
    reference = jax.jit(lambda rng: step_lib.init_state(second.model_config, second.tx, rng))(
        jax.random.key(7))
  assert jax.tree.structure(state) == jax.tree.structure(reference)
  jax.tree.map(np.testing.assert_array_equal, state, reference)
  assert float(state.opt_state.hyperparams["weight_decay"]) == np.float32(0.1)
