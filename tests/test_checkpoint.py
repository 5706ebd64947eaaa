"""Checkpoints, resume, preemption and many processes (issue 5).

Runs ``signflax train`` in subprocesses (kill -9, SIGTERM, other device
counts, two processes) on a ~0.1M-parameter model; one uninterrupted 8-device
run is the reference every resumed run must reproduce.
"""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from signflax import cli
from signflax import data as data_lib
from signflax.train import checkpoint as checkpoint_lib
from signflax.train import preemption
from signflax.train import trainer

REPO = pathlib.Path(__file__).resolve().parent.parent
STEPS = 40
ARGS = {
    "model.num_layers": 2, "model.d_model": 64, "model.max_seq_len": 32,
    "optimizer.warmup_steps": 4, "data.max_bytes": 1_000_000,
    "train.steps": STEPS, "train.global_batch_size": 16, "train.seq_len": 32,
    "train.log_every": 1, "train.eval_every": 0, "train.eval_batches": 2,
    "checkpoint.every_steps": 4, "checkpoint.keep": 3, "checkpoint.keep_period": 8,
    "mesh.data": 1, "mesh.fsdp": -1,
}
COMPARED = ("step_loss", "train_loss", "grad_l2", "param_l2", "learning_rate")


def _argv(workdir, **overrides):
  args = {**ARGS, **overrides}
  return ["train", "--workdir", str(workdir)] + [f"--config.{k}={v!r}" for k, v in args.items()]


def _env(devices):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  env.pop("JAX_COORDINATOR_ADDRESS", None)
  return env


def _start(workdir, devices=8, **overrides):
  return subprocess.Popen([sys.executable, "-m", "signflax.cli"] + _argv(workdir, **overrides),
                          cwd=REPO, env=_env(devices), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _train(workdir, devices=8, **overrides):
  proc = _start(workdir, devices, **overrides)
  out, err = proc.communicate(timeout=300)
  return proc.returncode, err


def _records(workdir) -> dict[int, dict]:
  """metrics.jsonl merged per step; a resumed run's records replace the killed run's."""
  merged = {}
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    record = json.loads(line)
    merged.setdefault(record["step"], {}).update(record)
  return merged


def _losses(records, steps):
  return {s: {k: records[s][k] for k in COMPARED} for s in steps}


def _latest_step(workdir):
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return 0
  lines = path.read_text().splitlines()
  return max((json.loads(l)["step"] for l in lines if l.endswith("}")), default=0)


def _run_until(workdir, step, sig):
  """Starts a run and sends ``sig`` once metrics.jsonl shows ``step``; returns the process."""
  proc = _start(workdir)
  while proc.poll() is None and _latest_step(workdir) < step:
    time.sleep(0.01)
  proc.send_signal(sig)
  proc.communicate(timeout=120)
  return proc


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """One uninterrupted 8-device run (fsdp=8): checkpoints at every 4th step, logs every step."""
  workdir = tmp_path_factory.mktemp("reference")
  code, err = _train(workdir)
  assert code == 0, err
  return workdir, _records(workdir)


def _copy_checkpoints(reference_dir, workdir, steps):
  for step in steps:
    shutil.copytree(reference_dir / "checkpoints" / str(step),
                    workdir / "checkpoints" / str(step))


def test_keep_policy_and_data_iterator_restore(tmp_path):
  """keep last K + every M-th; Grain batches after a restore are the uninterrupted run's."""
  config = data_lib.default_data_config()
  config.max_bytes = 200_000
  make = lambda: data_lib.make_iterator(config, split="train", seq_len=16,
                                        global_batch_size=4, seed=3)
  it = make()
  ckpt = checkpoint_lib.Checkpointer(tmp_path / "ckpt", every_steps=1, keep=2, keep_period=3)
  state = {"w": jnp.arange(8.0), "step": jnp.int32(0)}
  for step in range(1, 7):
    next(it)
    ckpt.save(step, {**state, "step": jnp.int32(step)}, {"data": it.get_state()})
  ckpt.wait()
  assert ckpt.all_steps() == [3, 5, 6]
  expected = [next(it) for _ in range(3)]

  target = checkpoint_lib.abstract_like(state)
  restored = checkpoint_lib.Checkpointer(tmp_path / "ckpt", every_steps=1).restore_latest(target)
  assert restored.step == 6 and int(restored.state["step"]) == 6
  np.testing.assert_array_equal(restored.state["w"], state["w"])
  resumed = make()
  resumed.set_state(restored.extra["data"])
  for a, b in zip(expected, (next(resumed) for _ in range(3))):
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
  ckpt.close()


def test_guard_nonfinite_skips_the_update():
  def step(state, batch):
    new = state._replace(step=state.step + 1, params=state.params + batch)
    return new, {"loss": jnp.sum(batch), "param_l2": jnp.sum(new.params ** 2)}
  from signflax.train.step import TrainState  # noqa: PLC0415
  state = TrainState(jnp.int32(0), jnp.ones(2), ())
  guarded = jax.jit(preemption.guard_nonfinite(step))
  ok, m = guarded(state, jnp.ones(2))
  bad, m_bad = guarded(ok, jnp.array([1.0, jnp.nan]))
  assert float(m["nonfinite"]) == 0 and float(m_bad["nonfinite"]) == 1
  np.testing.assert_array_equal(bad.params, ok.params)
  assert int(bad.step) == 2
  with pytest.raises(preemption.NonFiniteError, match="non-finite step_loss at step 7"):
    preemption.check_finite(7, {"step_loss": float("nan")}, 4)


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_nan_policy(tmp_path, capsys, policy):
  """An exploding step: 'stop' exits 1 with one line; 'skip' keeps the params and counts."""
  overrides = {"optimizer.name": "sgd", "optimizer.learning_rate": 1e30,
               "optimizer.schedule": "constant", "optimizer.warmup_steps": 0,
               "train.steps": 6, "checkpoint.nan_policy": policy}
  code = cli.main(_argv(tmp_path, **overrides))
  records = _records(tmp_path)
  if policy == "stop":
    assert code == 1
    errors = [l for l in capsys.readouterr().err.splitlines() if "error:" in l]
    assert len(errors) == 1 and "non-finite" in errors[0] and "at step 1" in errors[0]
    assert not list((tmp_path / "checkpoints").glob("[0-9]*"))  # no NaN state was saved
  else:
    assert code == 0
    assert records[6]["skipped_steps"] == 6.0
    assert records[6]["eval_loss"] == records[0]["eval_loss"]  # parameters never changed


@pytest.mark.parametrize("kill_after", [9, 22])
def test_kill_9_then_resume_reproduces_the_run(reference, tmp_path, kill_after):
  _, expected = reference
  proc = _run_until(tmp_path, kill_after, signal.SIGKILL)
  assert proc.returncode == -signal.SIGKILL
  killed_at = _latest_step(tmp_path)
  assert killed_at < STEPS
  code, err = _train(tmp_path)
  assert code == 0, err
  assert "resumed from the checkpoint at step" in err
  got = _records(tmp_path)
  steps = range(1, STEPS + 1)
  assert _losses(got, steps) == _losses(expected, steps)  # bit-identical
  assert got[STEPS]["eval_loss"] == expected[STEPS]["eval_loss"]


def test_sigterm_saves_at_that_step_and_exits_0(reference, tmp_path):
  _, expected = reference
  proc = _run_until(tmp_path, 6, signal.SIGTERM)
  assert proc.returncode == 0
  stopped = _latest_step(tmp_path)
  assert stopped < STEPS
  assert checkpoint_lib.Checkpointer(tmp_path / "checkpoints", every_steps=4).all_steps()[-1] \
      == stopped
  code, err = _train(tmp_path)
  assert code == 0, err
  assert f"resumed from the checkpoint at step {stopped}" in err
  steps = range(1, STEPS + 1)
  assert _losses(_records(tmp_path), steps) == _losses(expected, steps)


@pytest.mark.parametrize("devices", [4, 1])
def test_restore_onto_fewer_devices(reference, tmp_path, devices):
  ref_dir, expected = reference
  _copy_checkpoints(ref_dir, tmp_path, [8])
  code, err = _train(tmp_path, devices=devices, **{"train.steps": STEPS})
  assert code == 0, err
  assert f"'fsdp': {devices}" in err
  got = _records(tmp_path)
  for step in (9, 10):
    for key in ("step_loss", "grad_l2", "param_l2"):
      np.testing.assert_allclose(got[step][key], expected[step][key], rtol=1e-5)


def test_truncated_latest_checkpoint_falls_back(reference, tmp_path):
  ref_dir, expected = reference
  _copy_checkpoints(ref_dir, tmp_path, [32, 36, 40])
  files = sorted((p for p in (tmp_path / "checkpoints" / "40" / "state").rglob("*")
                  if p.is_file()), key=lambda p: p.stat().st_size)
  biggest = files[-1]
  biggest.write_bytes(biggest.read_bytes()[:biggest.stat().st_size // 2])
  code, err = _train(tmp_path)
  assert code == 0, err
  assert "checkpoint at step 40" in err and "failed to restore" in err
  assert "resumed from the checkpoint at step 36" in err
  assert len(list((tmp_path / "corrupt_checkpoints").iterdir())) == 1   # moved, not deleted
  got = _records(tmp_path)
  assert _losses(got, range(37, 41)) == _losses(expected, range(37, 41))


def _listing(path):
  return sorted((str(p.relative_to(path)), p.stat().st_size) for p in path.rglob("*"))


def test_bad_workdir_and_incompatible_checkpoint_exit_2(reference, tmp_path, capsys):
  ref_dir, _ = reference
  not_a_dir = tmp_path / "file"
  not_a_dir.write_text("x")
  assert cli.main(_argv(not_a_dir)) == 2
  err = capsys.readouterr().err
  assert "signflax train: error: --workdir:" in err and "not a directory" in err

  # logs without a checkpoint: the same job may start over, another config may not
  stopped_early = tmp_path / "early"
  stopped_early.mkdir()
  for name in ("config.json", "metrics.jsonl"):
    shutil.copy(ref_dir / name, stopped_early / name)
  config, _ = cli.parse_config_args(_argv(stopped_early)[3:], REPO / "signflax/configs/lm/tiny.py")
  assert trainer._workdir_error(stopped_early, config) is None
  assert cli.main(_argv(stopped_early, **{"train.steps": 60})) == 2
  assert "another config and no checkpoint" in capsys.readouterr().err

  workdir = tmp_path / "run"
  _copy_checkpoints(ref_dir, workdir, [40])
  shutil.copy(ref_dir / "metrics.jsonl", workdir / "metrics.jsonl")
  before = _listing(workdir)
  assert cli.main(_argv(workdir, **{"model.d_model": 32, "train.steps": 60})) == 2
  errors = [l for l in capsys.readouterr().err.splitlines() if "error:" in l]
  assert len(errors) == 1 and "does not fit this model" in errors[0], errors
  assert _listing(workdir) == before


def _launch_two(workdir, overrides):
  env = dict(_env(2), DEVICES_PER_PROCESS="2", SIGNFLAX=f"{sys.executable} -m signflax.cli")
  return subprocess.Popen(["bash", str(REPO / "launch" / "local_multiprocess.sh"), "2"]
                          + _argv(workdir, **overrides)[1:], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_two_processes_match_one_process_and_agree_on_sigterm(tmp_path):
  """2 processes x 2 devices (gloo) == 1 process x 4 devices, across a SIGTERM and resume."""
  steps, check = 30, 5
  overrides = {"train.steps": steps, "checkpoint.every_steps": 10,
               "checkpoint.preemption_check_every": check}
  one = tmp_path / "one"
  code, err = _train(one, devices=4, **overrides)
  assert code == 0, err

  two = tmp_path / "two"
  proc = _launch_two(two, overrides)
  while proc.poll() is None and _latest_step(two) < 7:
    time.sleep(0.01)
  proc.send_signal(signal.SIGTERM)  # the launcher forwards it to both processes
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out[-3000:]
  assert out.count("SIGTERM received") == 2
  stopped = _latest_step(two)
  assert stopped % check == 0 and stopped < steps  # both stopped at the same check step
  assert f"checkpoint saved at step {stopped}" in out

  proc = _launch_two(two, overrides)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, out[-3000:]
  assert f"resumed from the checkpoint at step {stopped}" in out
  lines = (two / "metrics.jsonl").read_text().splitlines()
  assert len(lines) == steps + 2  # process 0 alone writes: 2 start records + 1 per step
  a, b = _records(one), _records(two)
  for step in range(1, steps + 1):
    np.testing.assert_allclose(b[step]["step_loss"], a[step]["step_loss"], rtol=1e-5)
