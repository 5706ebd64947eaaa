"""Checkpoint recovery without the trainer: failure classes, checksums, leftovers,
metrics-log repair, config changes on resume, failed-start undo and signals.

Everything here drives ``Checkpointer``, ``MetricWriter`` and ``recovery`` directly on
tiny pytrees; the end-to-end behaviour of ``signflax train`` is in test_resume.py.
"""

import errno
import json
import os
import pathlib
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from signflax import metric_writers
from signflax.train import checkpoint as checkpoint_lib
from signflax.train import preemption
from signflax.train import recovery
from signflax.train.step import TrainState

PARAMS = {"embed": jnp.arange(1200.0).reshape(4, 300), "bias": jnp.ones(3)}


def _state(tx, step=0):
  return TrainState(jnp.int32(step), PARAMS, tx.init(PARAMS))


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                      tree)


def _snapshot(root: pathlib.Path):
  return sorted((str(p.relative_to(root)), p.read_bytes() if p.is_file() else None)
                for p in root.rglob("*"))


@pytest.fixture
def saved(tmp_path):
  """AdamW checkpoints at steps 1 and 2 (step 2's params differ)."""
  ckpt = checkpoint_lib.Checkpointer(tmp_path / "checkpoints", keep=5)
  for step in (1, 2):
    state = _state(optax.adamw(1e-3), step)
    state = state._replace(params=jax.tree.map(lambda p: p + step, state.params))
    ckpt.save(step, state, {"data": {"position": step}})
  ckpt.close()
  return tmp_path / "checkpoints"


def test_restore_and_keep_policy(tmp_path):
  ckpt = checkpoint_lib.Checkpointer(tmp_path / "c", keep=2, keep_period=3)
  state = {"w": jnp.arange(8.0), "step": jnp.int32(0)}
  for step in range(1, 7):
    ckpt.save(step, {**state, "step": jnp.int32(step)}, {"data": step})
  ckpt.close()
  assert ckpt.all_steps() == [3, 5, 6]
  restored = checkpoint_lib.Checkpointer(tmp_path / "c").restore_latest(_abstract(state))
  assert restored.step == 6 and int(restored.state["step"]) == 6
  assert restored.extra == {"data": 6}          # checksums are consumed by the restore
  np.testing.assert_array_equal(restored.state["w"], state["w"])


@pytest.mark.parametrize("name,tx,fields", [
    ("sign_sgd", optax.sgd(1e-3), "(none)"),
    ("lion", optax.lion(1e-3), "(count, mu)"),            # count/mu exist with equal shapes
])
def test_incompatible_optimizer_is_named_and_nothing_moves(saved, name, tx, fields):
  before = _snapshot(saved.parent)
  ckpt = checkpoint_lib.Checkpointer(saved)
  with pytest.raises(checkpoint_lib.IncompatibleCheckpointError) as e:
    ckpt.restore_latest(_abstract(_state(tx)), labels=("adamw", name))
  message = str(e.value)
  assert "\n" not in message
  assert f"checkpoint has adamw state (count, mu, nu); config asks for {name} {fields}" \
      in message
  assert _snapshot(saved.parent) == before


def test_incompatible_shapes_are_compared_both_ways(saved):
  wider = {"embed": jnp.zeros((4, 301)), "extra": jnp.zeros(2)}     # 'bias' only saved
  target = TrainState(jnp.int32(0), wider, optax.adamw(1e-3).init(wider))
  with pytest.raises(checkpoint_lib.IncompatibleCheckpointError) as e:
    checkpoint_lib.Checkpointer(saved).check_compatible(2, _abstract(target))
  message = str(e.value)
  assert "params.bias is in the checkpoint but not in this model" in message
  assert "params.extra is missing from the checkpoint" in message
  assert "params.embed: float32[4, 300] in the checkpoint vs float32[4, 301] now" in message


def _flip_bytes(step_dir: pathlib.Path, count=64):
  files = sorted((p for p in (step_dir / "state").rglob("*") if p.is_file()
                  and p.parent.name == "d" and "ocdbt" in str(p)), key=lambda p: p.stat().st_size)
  data = bytearray(files[-1].read_bytes())
  for i in range(count):
    data[len(data) // 2 + i] ^= 0xFF
  files[-1].write_bytes(bytes(data))


def test_flipped_bytes_are_caught_by_checksums_and_set_aside(saved, capfd):
  _flip_bytes(saved / "2")
  files_before = sorted(p.relative_to(saved / "2") for p in (saved / "2").rglob("*"))
  ckpt = checkpoint_lib.Checkpointer(saved)
  restored = ckpt.restore_latest(_abstract(_state(optax.adamw(1e-3))))
  assert restored.step == 1
  warnings = [l for l in capfd.readouterr().err.splitlines() if "warning" in l]
  assert len(warnings) == 2 and "checksum mismatch in params.embed" in warnings[0]
  (moved,) = (saved.parent / "corrupt_checkpoints").iterdir()
  assert sorted(p.relative_to(moved) for p in moved.rglob("*")) == files_before  # every file
  assert "Traceback" in (saved.parent / "checkpoint_errors.log").read_text()
  assert ckpt.all_steps() == [1]
  # without checksums the same bytes restore silently (what Orbax alone does)
  _flip_bytes(saved / "1")
  plain = checkpoint_lib.Checkpointer(saved, checksum=False)
  assert plain.restore_latest(_abstract(_state(optax.adamw(1e-3)))).step == 1


def test_truncated_file_is_corrupt(saved):
  files = sorted((p for p in (saved / "2" / "state").rglob("*") if p.is_file()),
                 key=lambda p: p.stat().st_size)
  files[-1].write_bytes(files[-1].read_bytes()[:10])
  ckpt = checkpoint_lib.Checkpointer(saved)
  assert ckpt.restore_latest(_abstract(_state(optax.adamw(1e-3)))).step == 1
  assert len(list((saved.parent / "corrupt_checkpoints").iterdir())) == 1


def test_transient_errors_are_retried_then_reported_without_moving(saved, monkeypatch):
  ckpt = checkpoint_lib.Checkpointer(saved, restore_tries=3, retry_delay_s=0.0)
  real, failures = ckpt._manager.restore, []

  def flaky(*args, **kwargs):
    if len(failures) < 2:
      failures.append(1)
      raise OSError(5, "Input/output error")
    return real(*args, **kwargs)

  monkeypatch.setattr(ckpt._manager, "restore", flaky)
  before = _snapshot(saved)
  assert ckpt.restore_latest(_abstract(_state(optax.adamw(1e-3)))).step == 2
  assert len(failures) == 2 and _snapshot(saved) == before

  def broken(*args, **kwargs):
    raise OSError(5, "Input/output error")

  monkeypatch.setattr(ckpt._manager, "restore", broken)
  with pytest.raises(checkpoint_lib.TransientCheckpointError, match="after 3 tries"):
    ckpt.restore_latest(_abstract(_state(optax.adamw(1e-3))))
  assert _snapshot(saved) == before


def test_leftovers_are_removed_or_set_aside(saved, capfd):
  (saved / "3.orbax-checkpoint-tmp").mkdir()
  (saved / "3.orbax-checkpoint-tmp" / "state").mkdir()
  (saved / "1" / "_CHECKPOINT_METADATA").unlink()          # a deletion cut short
  ckpt = checkpoint_lib.Checkpointer(saved, clean_leftovers=True)
  lines = [l for l in capfd.readouterr().err.splitlines() if "warning" in l]
  assert len(lines) == 2 and "unfinished" in lines[0] and "incomplete" in lines[1]
  assert ckpt.all_steps() == [2]
  assert not list(saved.glob("*tmp*"))
  checkpoint_lib.Checkpointer(saved, clean_leftovers=True)
  assert "warning" not in capfd.readouterr().err                # once clean, silent


def test_disk_full_is_one_line(tmp_path):
  """RLIMIT_FSIZE stands in for a full disk; SIGXFSZ ignored so writes fail with EFBIG."""
  script = f"""
import resource, signal, sys, jax.numpy as jnp
from signflax.train import checkpoint as C
C.quiet_background_noise()  # what a program's start-up (signflax.cli.main) installs
ckpt = C.Checkpointer({str(tmp_path / 'c')!r})
ckpt.save(1, {{"w": jnp.zeros(10)}}, {{}})
ckpt.close()
ckpt = C.Checkpointer({str(tmp_path / 'c')!r})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
try:
  ckpt.save(2, {{"w": jnp.sin(jnp.arange(100_000.0))}}, {{}})
  ckpt.close()
except C.CheckpointSaveError as e:
  print(e, file=sys.stderr)
  sys.exit(1)
"""
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=120)
  assert proc.returncode == 1, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) <= 3, proc.stderr[-3000:]
  assert lines[-1].startswith("checkpoint save failed: File too large (")
  assert "GB needed" in lines[-1]
  assert checkpoint_lib.Checkpointer(tmp_path / "c").all_steps() == [1]


def test_checksums_do_not_depend_on_sharding():
  mesh = jax.make_mesh((len(jax.devices()),), ("fsdp",))
  x = jnp.arange(64.0 * len(jax.devices())).reshape(8, -1).astype(jnp.bfloat16)
  sharded = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(
      None, "fsdp")))
  plain = {"x": x, "n": jnp.int32(3), "b": jnp.array([True, False])}
  assert checkpoint_lib.checksums(plain)["x"] == checkpoint_lib.checksums({"x": sharded})["x"]
  changed = {**plain, "x": x.at[3, 5].add(1)}
  assert checkpoint_lib.checksum_mismatches(changed, checkpoint_lib.checksums(plain)) == ["x"]


# ---------------------------------------------------------------------------- metrics log


def test_event_files_sort_in_session_order(tmp_path):
  """TensorBoard reads event files in name order; sessions started within one second
  used to sort by an unpadded counter ("...10" before "...9"), so a resume's purge could
  be read first. Each session now starts in a later second than the files before it."""
  names = []
  for _ in range(3):
    before = {p.name for p in tmp_path.glob("events.out.tfevents.*")}
    writer = metric_writers.EventWriter(tmp_path)
    writer.scalars(1, {"x": 1.0})
    writer.close()
    (name,) = {p.name for p in tmp_path.glob("events.out.tfevents.*")} - before
    names.append(name)
  assert sorted(names) == names
  assert len({name.split(".")[3] for name in names}) == 3              # one second each


def test_metric_log_repair_keeps_each_step_once(tmp_path):
  writer = metric_writers.MetricWriter(tmp_path)
  writer.restart(0)
  writer.write(0, {"eval_loss": 5.0, "num_params": 1000})
  for step in (1, 2, 3):
    writer.write(step, {"train_loss": 4.0 - step})
  writer.close()
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 4, "train_lo')                   # torn by a kill
  for start in (2, 0):                                  # a resume at 2, then a start over
    writer = metric_writers.MetricWriter(tmp_path)
    writer.restart(start)
    writer.write(start, {"eval_loss": 4.5, "num_params": 1000, "resumed_from_step": start})
    writer.write(start + 1, {"train_loss": 0.5})
    writer.close()
    records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    starts = [r["step"] for r in records if "num_params" in r]
    trains = [r["step"] for r in records if "train_loss" in r]
    assert starts == sorted({0, start}) and trains == list(range(1, start + 2)), records
    assert isinstance(records[-2]["num_params"], int)
    assert isinstance(records[-2]["resumed_from_step"], int)

  from tensorboard.backend.event_processing import event_accumulator  # noqa: PLC0415
  acc = event_accumulator.EventAccumulator(str(tmp_path / "tb"))
  acc.Reload()
  assert [e.step for e in acc.Scalars("train/train_loss")] == [1]
  assert [e.step for e in acc.Scalars("eval/eval_loss")] == [0]


# ---------------------------------------------------------------------------- resume config


def test_compare_configs_sorts_changes():
  saved = {"model": {"d_model": 64, "dtype": "float32"}, "optimizer": {"name": "adamw",
           "learning_rate": 1e-3}, "train": {"seed": 0, "steps": 10},
           "distributed": {"auto": True}}
  new = {"model": {"d_model": 32, "dtype": "bfloat16"}, "optimizer": {"name": "adamw",
         "learning_rate": 3e-3}, "train": {"seed": 1, "steps": 20, "eval_every": 5},
         "distributed": {"auto": False}}
  changes = recovery.compare_configs(saved, new)
  assert changes.unusable == [("model.d_model", 64, 32)]
  assert changes.guarded == [("train.seed", 0, 1)]
  assert [f for f, _, _ in changes.allowed] == ["model.dtype", "optimizer.learning_rate",
                                               "train.eval_every", "train.steps"]
  assert "optimizer.learning_rate: 0.001 → 0.003" in changes.describe(changes.allowed)
  assert not recovery.compare_configs(saved, saved)


def test_start_guard_undoes_a_failed_start(tmp_path):
  fresh = tmp_path / "fresh"
  guard = recovery.StartGuard(fresh)
  fresh.mkdir()
  recovery.write_config(fresh, "{}")
  metric_writers.MetricWriter(fresh).close()              # empty metrics.jsonl + tb/
  assert guard.undo() is None and not fresh.exists()

  used = tmp_path / "used"
  used.mkdir()
  (used / "notes.txt").write_text("mine")
  guard = recovery.StartGuard(used)
  recovery.write_config(used, "{}")
  writer = metric_writers.MetricWriter(used)
  writer.write(0, {"eval_loss": 1.0})
  writer.close()
  assert "failed_starts" in guard.undo()
  assert sorted(p.name for p in used.iterdir()) == ["failed_starts", "notes.txt"]
  (moved,) = (used / "failed_starts").iterdir()
  assert (moved / "metrics.jsonl").stat().st_size > 0     # never deleted


def test_workdir_lock_is_exclusive_and_dies_with_its_process(tmp_path):
  holder = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
from signflax.train.recovery import WorkdirLock
WorkdirLock.acquire({str(tmp_path)!r}); print("locked", flush=True); time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == "locked"
  with pytest.raises(recovery.WorkdirBusyError, match="in use by another running process"):
    recovery.WorkdirLock.acquire(tmp_path)
  holder.kill()
  holder.wait()
  recovery.WorkdirLock.acquire(tmp_path).release()


def test_signals(tmp_path):
  """SIGINT asks for a save and exit 130; a second SIGINT exits at once."""
  script = """
import os, signal, sys, time
from signflax.train import preemption
stopper = preemption.PreemptionHandler()
os.kill(os.getpid(), signal.SIGINT)
print(stopper.should_stop(1), stopper.exit_code, flush=True)
os.kill(os.getpid(), signal.SIGINT)
time.sleep(5)
print("not reached", flush=True)
"""
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=60)
  assert proc.returncode == 130
  assert proc.stdout.split() == ["True", "130"]
  assert "Traceback" not in proc.stderr and "second SIGINT" in proc.stderr
  stopper = preemption.PreemptionHandler(signals=(signal.SIGUSR1,))
  assert not stopper.should_stop(1) and stopper.exit_code == 0
  stopper.restore()


@pytest.mark.parametrize("error,transient", [
    (ValueError("UNKNOWN: Error opening file: /w/checkpoints/36/state/ocdbt.process_0/d/ab: "
                "Input/output error [os_error_code='5'] [source locations='x']"), True),
    (ValueError("UNKNOWN: Error reading: Resource temporarily unavailable "
                "[os_error_code='11']"), True),
    (ValueError("NOT_FOUND: Error opening file: No such file [os_error_code='2']"), False),
    (ValueError("DATA_LOSS: Error reading: truncated"), False),
    (RuntimeError("UNAVAILABLE: connection reset"), True),
    (RuntimeError("DEADLINE_EXCEEDED: read timed out"), True),
    (RuntimeError("UNKNOWN: gs://b/c failed: HTTP response code: 503"), True),
    (RuntimeError("UNKNOWN: gs://b/c failed: HTTP response code: 429"), True),
    (RuntimeError("UNKNOWN: gs://b/c failed: HTTP response code: 404"), False),
    (OSError(errno.EBUSY, "Device or resource busy"), True),
    (OSError(errno.ETIMEDOUT, "Connection timed out"), True),
    (PermissionError(errno.EACCES, "Permission denied"), True),   # never set aside for it
    (FileNotFoundError(errno.ENOENT, "No such file"), False),
])
def test_transient_or_corrupt_from_the_root_cause_and_its_code(error, transient):
  from signflax.train import checkpoint_errors  # noqa: PLC0415
  wrapped = RuntimeError("restore failed")
  wrapped.__cause__ = error                     # the code is found on the root cause
  assert checkpoint_errors.is_transient(wrapped) is transient
  if transient and checkpoint_errors.error_code(error) == errno.EIO:
    assert checkpoint_errors.transient_reason(wrapped) == "Input/output error (errno 5)"
