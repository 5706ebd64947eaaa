"""Checkpoints, resume, recovery, signals and many processes.

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
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from signflax import cli, config_io
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


def test_data_iterator_restore(tmp_path):
  """Grain batches after a restore are the uninterrupted run's."""
  config = data_lib.default_data_config()
  config.max_bytes = 200_000
  make = lambda: data_lib.make_iterator(config, split="train", seq_len=16,
                                        global_batch_size=4, seed=3)
  it = make()
  ckpt = checkpoint_lib.Checkpointer(tmp_path / "ckpt")
  state = {"w": jnp.arange(8.0)}
  next(it)
  ckpt.save(1, state, {"data": it.get_state()})
  ckpt.close()
  expected = [next(it) for _ in range(3)]
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        state)
  restored = checkpoint_lib.Checkpointer(tmp_path / "ckpt").restore_latest(target)
  resumed = make()
  resumed.set_state(restored.extra["data"])
  for a, b in zip(expected, (next(resumed) for _ in range(3))):
    np.testing.assert_array_equal(a["inputs"], b["inputs"])


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
  if policy == "stop":
    assert code == 1
    errors = [l for l in capsys.readouterr().err.splitlines() if "error:" in l]
    assert len(errors) == 1 and "non-finite" in errors[0] and "at step 1" in errors[0]
    assert not list((tmp_path / "checkpoints").glob("[0-9]*"))  # no NaN state was saved
    # no checkpoint: the start's logs move aside (kept), the workdir takes a new command
    (moved,) = (tmp_path / "failed_starts").iterdir()
    assert 0 in _records(moved) and not (tmp_path / "metrics.jsonl").exists()
  else:
    assert code == 0
    records = _records(tmp_path)
    assert records[6]["skipped_steps"] == 6.0
    assert records[6]["eval_loss"] == records[0]["eval_loss"]  # parameters never changed


def test_sigterm_saves_at_that_step_and_exits_0(reference, tmp_path):
  _, expected = reference
  proc = _run_until(tmp_path, 6, signal.SIGTERM)
  assert proc.returncode == 0
  stopped = _latest_step(tmp_path)
  assert stopped < STEPS
  assert checkpoint_lib.Checkpointer(tmp_path / "checkpoints").all_steps()[-1] \
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


def _data_files(step_dir):
  return sorted((p for p in (step_dir / "state").rglob("*") if p.is_file()
                 and p.parent.name == "d"), key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("damage", ["truncate", "flip_64_bytes"])
def test_corrupt_latest_checkpoint_falls_back(reference, tmp_path, damage):
  """Truncated (Orbax fails) or 64 flipped bytes (only the checksums see it): the latest
  step is moved aside whole, the one before restores, and the run equals the reference."""
  ref_dir, expected = reference
  _copy_checkpoints(ref_dir, tmp_path, [32, 36, 40])
  shutil.copy(ref_dir / "config.json", tmp_path / "config.json")
  biggest = _data_files(tmp_path / "checkpoints" / "40")[-1]
  data = bytearray(biggest.read_bytes())
  if damage == "truncate":
    data = data[:len(data) // 2]
  else:
    for i in range(64):
      data[len(data) // 2 + i] ^= 0xFF
  biggest.write_bytes(bytes(data))
  files = sorted(p.relative_to(tmp_path / "checkpoints" / "40")
                 for p in (tmp_path / "checkpoints" / "40").rglob("*"))
  code, err = _train(tmp_path)
  assert code == 0, err
  warnings = [l for l in err.splitlines() if "warning" in l]
  assert len(warnings) == 2, warnings                 # one line each: found, moved
  assert "checkpoint at step 40 is corrupt" in warnings[0]
  if damage == "flip_64_bytes":
    assert "checksum mismatch in opt_state" in warnings[0] or "params" in warnings[0]
  assert "Traceback" not in err and "resumed from the checkpoint at step 36" in err
  (moved,) = (tmp_path / "corrupt_checkpoints").iterdir()
  assert sorted(p.relative_to(moved) for p in moved.rglob("*")) == files   # every file kept
  assert "Traceback" in (tmp_path / "checkpoint_errors.log").read_text()
  got = _records(tmp_path)
  assert _losses(got, range(37, 41)) == _losses(expected, range(37, 41))


# open()/open64()/openat() fail with EIO for paths holding $EIO_PATH_SUBSTRING, the first
# $EIO_TIMES times (root ignores chmod, so the failure is injected below the process).
_EIO_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
static int remaining = -1;
static int fail(const char *path) {
  const char *sub = getenv("EIO_PATH_SUBSTRING");
  if (!sub || !path || !strstr(path, sub)) return 0;
  if (__sync_bool_compare_and_swap(&remaining, -1, atoi(getenv("EIO_TIMES")))) {}
  for (;;) {
    int left = remaining;
    if (left <= 0) return 0;
    if (__sync_bool_compare_and_swap(&remaining, left, left - 1)) return 1;
  }
}
#define MODE(flags) mode_t mode = 0; if ((flags) & (O_CREAT | O_TMPFILE)) { \
  va_list ap; va_start(ap, flags); mode = va_arg(ap, int); va_end(ap); }
#define OPEN(name) int name(const char *path, int flags, ...) { MODE(flags) \
  if (fail(path)) { errno = EIO; return -1; } \
  static int (*real)(const char *, int, ...); if (!real) real = dlsym(RTLD_NEXT, #name); \
  return real(path, flags, mode); }
#define OPENAT(name) int name(int dir, const char *path, int flags, ...) { MODE(flags) \
  if (fail(path)) { errno = EIO; return -1; } \
  static int (*real)(int, const char *, int, ...); if (!real) real = dlsym(RTLD_NEXT, #name); \
  return real(dir, path, flags, mode); }
OPEN(open) OPEN(open64) OPENAT(openat) OPENAT(openat64)
"""


def _eio_shim(tmp_path):
  source = tmp_path / "eio_shim.c"
  source.write_text(_EIO_SHIM)
  library = tmp_path / "eio_shim.so"
  gcc = shutil.which("gcc") or shutil.which("cc")
  if gcc is None:
    pytest.skip("no C compiler for the LD_PRELOAD shim")
  subprocess.run([gcc, "-shared", "-fPIC", "-O1", "-o", str(library), str(source), "-ldl"],
                 check=True)
  return library


@pytest.mark.slow  # two trainer runs
def test_one_eio_on_array_data_is_transient_moves_nothing_and_a_restart_resumes(
    reference, tmp_path):
  """One EIO on the first open() of a file of step 36's array data: retried (here once:
  restore_tries=1), then exit 1 in one line with nothing moved; a clean restart resumes
  from that same step and equals the uninterrupted run."""
  ref_dir, expected = reference
  workdir = tmp_path / "run"
  workdir.mkdir()
  _copy_checkpoints(ref_dir, workdir, [32, 36])
  shutil.copy(ref_dir / "config.json", workdir / "config.json")
  before = _snapshot(workdir / "checkpoints")
  env = dict(_env(8), LD_PRELOAD=str(_eio_shim(tmp_path)), EIO_TIMES="1",
             EIO_PATH_SUBSTRING="checkpoints/36/state/ocdbt.process_0/d/")
  proc = subprocess.run([sys.executable, "-m", "signflax.cli",
                         *_argv(workdir, **{"checkpoint.restore_tries": 1})],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  errors = [l for l in proc.stderr.splitlines() if "error" in l]
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert len(errors) == 1 and errors[0].startswith("signflax train: error: checkpoint at step 36"), \
      proc.stderr[-3000:]
  assert "could not be read after 1 tries" in errors[0] and "Input/output error (errno 5)" in errors[0]
  assert "Traceback" not in proc.stderr
  assert not (workdir / "corrupt_checkpoints").exists()
  assert _snapshot(workdir / "checkpoints") == before

  code, err = _train(workdir)
  assert code == 0, err
  assert "resumed from the checkpoint at step 36" in err and "corrupt" not in err
  assert _losses(_records(workdir), range(37, 41)) == _losses(expected, range(37, 41))


def _snapshot(path):
  """Names, sizes and contents of everything under ``path``."""
  return sorted((str(p.relative_to(path)), p.read_bytes() if p.is_file() else None)
                for p in path.rglob("*"))


def _resumable(ref_dir, workdir, step=40):
  _copy_checkpoints(ref_dir, workdir, [step])
  for name in ("config.json", "metrics.jsonl"):
    shutil.copy(ref_dir / name, workdir / name)


def test_bad_workdir_exit_2(reference, tmp_path, capsys):
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
  config, _ = config_io.parse_config_args(_argv(stopped_early)[3:], REPO / "signflax/configs/lm/tiny.py")
  assert trainer._workdir_error(stopped_early, config) is None
  assert cli.main(_argv(stopped_early, **{"train.steps": 60})) == 2
  assert "another config and no checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("overrides,expected", [
    ({"optimizer.name": "sign_sgd"},
     "checkpoint has adamw state (count, mu, nu); config asks for sign_sgd (count)"),
    ({"optimizer.name": "lion"},          # count and mu exist with the same shapes
     "checkpoint has adamw state (count, mu, nu); config asks for lion (count, mu)"),
    ({"model.d_model": 32},
     "params.embed: float32[384, 64] in the checkpoint vs float32[384, 32] now"),
    ({"model.num_heads": 2},              # same shapes, another model
     "saved with another model/optimizer (model.num_heads: 4 → 2)"),
    ({"train.seed": 1}, "train.seed: 0 → 1 changes the run's randomness"),
])
def test_incompatible_resume_exits_2_and_changes_nothing(reference, tmp_path, capsys,
                                                          overrides, expected):
  ref_dir, _ = reference
  _resumable(ref_dir, tmp_path)
  before = _snapshot(tmp_path)
  assert cli.main(_argv(tmp_path, **{"train.steps": 60, **overrides})) == 2
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1 and expected in err, err
  assert _snapshot(tmp_path) == before


def test_resume_with_changed_config_warns_and_keeps_history(reference, tmp_path, capsys,
                                                             monkeypatch):
  """A new learning rate: one warning line, config.json rewritten, history appended. A
  transient read error on the way (two failed reads) costs retries, not progress."""
  ref_dir, _ = reference
  _resumable(ref_dir, tmp_path)
  real, failures = checkpoint_lib.ocp.CheckpointManager.restore, []

  def flaky(self, *args, **kwargs):
    if len(failures) < 2:
      failures.append(1)
      raise OSError(5, "Input/output error")
    return real(self, *args, **kwargs)

  monkeypatch.setattr(checkpoint_lib.ocp.CheckpointManager, "restore", flaky)
  argv = _argv(tmp_path, **{"train.steps": 41, "optimizer.learning_rate": 2e-3,
                            "checkpoint.retry_delay_s": 0.0})
  assert cli.main(argv) == 0
  err = capsys.readouterr().err
  changed = [l for l in err.splitlines() if "config changed" in l]
  assert len(changed) == 1 and "optimizer.learning_rate: 0.003 → 0.002" in changed[0]
  assert "train.steps: 40 → 41" in changed[0]
  assert "resumed from the checkpoint at step 40" in err and len(failures) == 2
  assert not (tmp_path / "corrupt_checkpoints").exists()
  (entry,) = [json.loads(l) for l in (tmp_path / "config_history.jsonl").read_text()
              .splitlines()]
  assert entry["resumed_at_step"] == 40
  assert entry["changes"]["optimizer.learning_rate"] == {"old": 0.003, "new": 0.002}
  assert json.loads((tmp_path / "config.json").read_text())["optimizer"]["learning_rate"] \
      == 0.002

  # a seed change is refused (above) unless asked for
  assert cli.main(argv[:1] + ["--allow-config-change"] + argv[1:]
                  + ["--config.train.seed=5", "--config.train.steps=42"]) == 0
  assert "train.seed: 0 → 5" in capsys.readouterr().err


def _event_steps(workdir, tag):
  from tensorboard.backend.event_processing import event_accumulator  # noqa: PLC0415
  acc = event_accumulator.EventAccumulator(str(workdir / "tb"))
  acc.Reload()
  return [e.step for e in acc.Scalars(tag)]


def test_start_over_after_a_kill_before_the_first_checkpoint_logs_each_step_once(tmp_path):
  overrides = {"train.steps": 12, "checkpoint.every_steps": 0}
  proc = _start(tmp_path, **overrides)
  while proc.poll() is None and _latest_step(tmp_path) < 5:
    time.sleep(0.01)
  proc.kill()
  proc.communicate(timeout=60)
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 6, "train_lo')                     # torn mid-line by the kill
  code, err = _train(tmp_path, **overrides)
  assert code == 0, err
  records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records] == list(range(13))   # one start record, 12 steps
  assert isinstance(records[0]["num_params"], int)
  assert _event_steps(tmp_path, "train/train_loss") == list(range(1, 13))
  assert _event_steps(tmp_path, "eval/eval_loss") == [0, 12]


def test_failed_start_leaves_the_workdir_reusable(tmp_path, monkeypatch, capsys):
  """The run fails (say, out of memory) after writing its config and logs, before the
  first checkpoint: the workdir is left as found, so the corrected command runs there."""
  workdir = tmp_path / "run"

  def out_of_memory(*args, **kwargs):
    raise MemoryError("RESOURCE_EXHAUSTED: out of memory while compiling")

  monkeypatch.setattr(trainer.data_lib, "unigram_entropy", out_of_memory)  # after the writes
  assert cli.main(_argv(workdir, **{"train.steps": 5})) == 1   # a bug's exit: traceback
  assert "RESOURCE_EXHAUSTED" in capsys.readouterr().err
  assert not workdir.exists()
  monkeypatch.undo()
  assert cli.main(_argv(workdir, **{"train.steps": 5})) == 0
  assert _records(workdir)[5]["step_loss"] > 0


class _Watched:
  """A ``signflax train`` subprocess whose stderr lines are collected as they come."""

  def __init__(self, workdir, **overrides):
    self.proc = _start(workdir, **overrides)
    self.lines = []
    self._reader = threading.Thread(target=self._read, daemon=True)
    self._reader.start()

  def _read(self):
    for line in self.proc.stderr:
      self.lines.append(line)

  def wait_for(self, text, timeout=300):
    deadline = time.monotonic() + timeout
    while not any(text in line for line in self.lines):
      if self.proc.poll() is not None:
        self._reader.join()
        assert any(text in line for line in self.lines), "".join(self.lines)
        return
      assert time.monotonic() < deadline, "".join(self.lines)
      time.sleep(0.002)

  def wait_for_step(self, workdir, step):
    while self.proc.poll() is None and _latest_step(workdir) < step:
      time.sleep(0.002)

  def finish(self):
    self.proc.wait(timeout=300)
    self._reader.join()
    return self.proc.returncode, "".join(self.lines)


@pytest.mark.slow
def test_signals_at_any_moment_then_resume_exactly(reference, tmp_path):
  """SIGTERM/SIGINT during compile, the first eval and the loop; a double Ctrl-C. Every
  exit is 0 or 130 without a traceback, and the last run reproduces the reference."""
  _, expected = reference
  workdir = tmp_path / "run"
  workdir.mkdir()

  run = _Watched(workdir)                                   # fresh run, compiling
  run.wait_for("model:")
  run.proc.send_signal(signal.SIGINT)
  code, err = run.finish()
  assert code == 130 and "before the first step" in err and "Traceback" not in err, err
  assert list(workdir.iterdir()) == []                      # nothing left to trip over

  run = _Watched(workdir)                                   # SIGTERM in the first eval
  run.wait_for("compiled in")
  run.proc.send_signal(signal.SIGTERM)
  code, err = run.finish()
  assert code == 0 and "Traceback" not in err, err

  run = _Watched(workdir)                                   # SIGINT mid-loop: saves
  run.wait_for_step(workdir, 6)
  run.proc.send_signal(signal.SIGINT)
  code, err = run.finish()
  assert code == 130 and "Traceback" not in err, err
  stopped = checkpoint_lib.Checkpointer(workdir / "checkpoints").latest_step()
  assert stopped >= 6 and f"checkpoint saved at step {stopped}" in err

  run = _Watched(workdir)                                   # Ctrl-C twice: leaves at once
  run.wait_for(f"resumed from the checkpoint at step {stopped}")
  run.wait_for_step(workdir, stopped + 6)
  run.proc.send_signal(signal.SIGINT)
  run.wait_for("SIGINT received")
  if run.proc.poll() is None:   # the save may be done already (the unit test is exact)
    run.proc.send_signal(signal.SIGINT)
  code, err = run.finish()
  assert code == 130 and "Traceback" not in err, err

  run = _Watched(workdir)                                   # SIGTERM while compiling a resume
  run.wait_for("resumed from the checkpoint")
  run.proc.send_signal(signal.SIGTERM)
  code, err = run.finish()
  assert code == 0 and "Traceback" not in err, err

  code, err = _train(workdir)
  assert code == 0 and "resumed from the checkpoint" in err, err
  steps = range(1, STEPS + 1)
  assert _losses(_records(workdir), steps) == _losses(expected, steps)


@pytest.mark.slow
@pytest.mark.parametrize("every_steps,kills", [(4, 5), (1, 10)])
def test_kill_9_at_random_moments(reference, tmp_path, every_steps, kills):
  """kill -9 at seeded random moments: during async saves (every 4th step), or with a
  save and the deletion of an old step at every step. Every restart resumes from a
  readable checkpoint; once clean, a start reports no leftovers; the losses are exact."""
  import random  # noqa: PLC0415
  _, expected = reference
  rng = random.Random(every_steps)
  overrides = {"checkpoint.every_steps": every_steps, "checkpoint.keep": 2,
               "checkpoint.keep_period": 0}
  leftovers = {"unfinished": 0, "incomplete": 0}
  for _ in range(kills):
    run = _Watched(tmp_path, **overrides)
    run.wait_for_step(tmp_path, _latest_step(tmp_path) + rng.randint(1, 3))
    time.sleep(rng.uniform(0.0, 0.1))                       # anywhere inside a step
    run.proc.kill()
    code, err = run.finish()
    assert code == -signal.SIGKILL, err
    # A half-deleted step set aside (into corrupt_checkpoints/) is a leftover, counted
    # below; a checkpoint that fails to restore ("is corrupt") is not.
    assert "is corrupt" not in err and "Traceback" not in err, err
    for kind in leftovers:
      leftovers[kind] += sum(kind in line for line in err.splitlines())
  code, err = _train(tmp_path, **overrides)
  assert code == 0 and "is corrupt" not in err, err
  code, err = _train(tmp_path, **overrides)                 # a clean start: nothing to report
  assert code == 0 and "warning" not in err, err
  steps = range(1, STEPS + 1)
  assert _losses(_records(tmp_path), steps) == _losses(expected, steps), leftovers


def test_disk_full_is_one_line_and_a_rerun_resumes(reference, tmp_path):
  """A file-size limit stands in for a full disk: the save at step 40 fails in one line,
  exit 1, the checkpoint at 36 intact; with room again the run resumes exactly."""
  import resource  # noqa: PLC0415
  ref_dir, expected = reference
  _resumable(ref_dir, tmp_path, step=36)
  # Tensorstore splits a save into a timing-dependent number of data files (7 to 13 here), so
  # the limit is a share of the total that any save's largest file exceeds, while the logs the
  # run appends to (metrics.jsonl, TensorBoard events) stay below it.
  saved = sum(f.stat().st_size for f in _data_files(tmp_path / "checkpoints" / "36"))
  limit = saved // 24
  assert (tmp_path / "metrics.jsonl").stat().st_size < limit // 2, limit

  def small_files():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)         # writes then fail with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

  proc = subprocess.Popen([sys.executable, "-m", "signflax.cli"] + _argv(
      tmp_path, **{"train.compilation_cache_dir": ""}), cwd=REPO, env=_env(8),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=small_files)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 1, err[-3000:]
  lines = err.strip().splitlines()
  tail = lines[next(i for i, l in enumerate(lines) if l.startswith("step 40/")) + 1:]
  assert len(tail) <= 3, tail
  assert tail[-1].startswith("signflax train: error: checkpoint save failed: File too large (")
  assert "GB free" in tail[-1] and "GB needed)" in tail[-1]
  assert checkpoint_lib.Checkpointer(tmp_path / "checkpoints").all_steps() == [36]
  code, err = _train(tmp_path)
  assert code == 0, err
  assert "resumed from the checkpoint at step 36" in err
  assert _losses(_records(tmp_path), range(37, 41)) == _losses(expected, range(37, 41))


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
