"""``--workdir gs://bucket/run`` against a GCS emulator on 127.0.0.1 (``gcs_emulator``).

Every layer writes to the emulator: config.json, metrics.jsonl and TensorBoard
events through gcsfs, Orbax's checkpoints (arrays through tensorstore's GCS
driver), the compilation cache. The runs are ``signflax train`` subprocesses on a
~30k-parameter model; one local-disk run is the reference the bucket's must equal.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from gcs_emulator import GcsEmulator

REPO = pathlib.Path(__file__).resolve().parent.parent
BUCKET = "signflax-test"
STEPS = 12
ARGS = {
    "model.num_layers": 1, "model.d_model": 32, "model.max_seq_len": 32,
    "data.max_bytes": 200_000, "optimizer.warmup_steps": 2,
    "train.steps": STEPS, "train.global_batch_size": 8, "train.seq_len": 32,
    "train.log_every": 1, "train.eval_every": 0, "train.eval_batches": 1,
    "checkpoint.every_steps": 4, "checkpoint.keep": 2,
}
COMPARED = ("step_loss", "train_loss", "grad_l2", "param_l2", "learning_rate")
_CLIENT_VARS = ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL",
                "GOOGLE_AUTH_TOKEN_FOR_TESTING", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT")


@pytest.fixture(scope="module")
def gcs():
  with GcsEmulator() as emulator:
    emulator.create_bucket(BUCKET)
    yield emulator


def _env(extra=None):
  env = {k: v for k, v in os.environ.items() if k not in _CLIENT_VARS}
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1",
             **(extra or {}))
  env.pop("JAX_COORDINATOR_ADDRESS", None)
  return env


def _command(workdir, **overrides):
  args = {**ARGS, **overrides}
  return ([sys.executable, "-m", "signflax.cli", "train", "--workdir", str(workdir)]
          + [f"--config.{k}={v!r}" for k, v in args.items()])


def _start(workdir, env, **overrides):
  return subprocess.Popen(_command(workdir, **overrides), cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _train(workdir, env, **overrides):
  proc = _start(workdir, env, **overrides)
  _, err = proc.communicate(timeout=300)
  return proc.returncode, err


def _merged(text: str) -> dict[int, dict]:
  """metrics.jsonl records merged per step (a resumed run's replace the killed run's)."""
  merged = {}
  for line in text.splitlines():
    record = json.loads(line)
    merged.setdefault(record["step"], {}).update(record)
  return merged


def _losses(records, steps=STEPS):
  return {s: {k: records[s][k] for k in COMPARED} for s in range(1, steps + 1)}


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("local")
  code, err = _train(workdir, _env(), **{"train.compilation_cache_dir": ""})
  assert code == 0, err
  return _merged((workdir / "metrics.jsonl").read_text())


def _committed(gcs, run, step) -> bool:
  return f"{run}/checkpoints/{step}/commit_success.txt" in gcs.list(BUCKET, f"{run}/")


def _saved_steps(gcs, run) -> list[int]:
  """Committed steps: ``RUN/checkpoints/<step>/commit_success.txt`` (the items have their own)."""
  return sorted(int(n.split("/")[2]) for n in gcs.list(BUCKET, f"{run}/checkpoints/")
                if n.endswith("/commit_success.txt") and n.count("/") == 3)


def _scalars(gcs, run, tag, tmp_path):
  from tensorboard.backend.event_processing import event_accumulator  # noqa: PLC0415
  local = tmp_path / "tb"
  assert gcs.download(BUCKET, f"{run}/tb/", str(local))
  acc = event_accumulator.EventAccumulator(str(local))
  acc.Reload()
  return {e.step: e.value for e in acc.Scalars(tag)}


@pytest.mark.slow
def test_gs_workdir_survives_kill_9_and_matches_local_disk(gcs, local_reference, tmp_path):
  """kill -9 after the step-4 checkpoint (maybe during the step-8 save), then the same
  command: it resumes from the latest committed step in the bucket and every logged step
  equals the local-disk run bit for bit."""
  env, run = _env(gcs.env()), "kill9"
  workdir = f"gs://{BUCKET}/{run}"
  proc = _start(workdir, env)
  deadline = time.monotonic() + 240
  while proc.poll() is None and not _committed(gcs, run, 4) and time.monotonic() < deadline:
    time.sleep(0.05)
  proc.kill()
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == -signal.SIGKILL, err[-3000:]
  committed = _saved_steps(gcs, run)
  assert committed and committed[-1] < STEPS, committed

  code, err = _train(workdir, env)
  assert code == 0, err[-3000:]
  assert (f"resumed from the checkpoint at step {committed[-1]} in {workdir}/checkpoints"
          in err), err[-3000:]
  records = _merged(gcs.read(BUCKET, f"{run}/metrics.jsonl").decode())
  assert _losses(records) == _losses(local_reference)
  assert _saved_steps(gcs, run) == [8, 12]   # keep=2
  json.loads(gcs.read(BUCKET, f"{run}/config.json"))
  # TensorBoard: every step once (the resumed session's START purges the killed run's tail)
  losses = _scalars(gcs, run, "train/train_loss", tmp_path)
  assert sorted(losses) == list(range(1, STEPS + 1))
  assert losses[STEPS] == pytest.approx(local_reference[STEPS]["train_loss"], rel=1e-6)


@pytest.mark.slow
def test_gs_sigterm_saves_and_a_corrupt_latest_checkpoint_falls_back(gcs, local_reference):
  """SIGTERM mid-run saves a checkpoint in the bucket; then the latest checkpoint loses an
  array file: the next start moves it to corrupt_checkpoints/ and resumes from the one
  before, still equal to the local run."""
  env, run = _env(gcs.env()), "sigterm"
  workdir = f"gs://{BUCKET}/{run}"
  # the signal is acted on at the next step (checked every step), well before step 12
  ckpt = {"checkpoint.every_steps": 3, "checkpoint.preemption_check_every": 1}
  proc = _start(workdir, env, **ckpt)
  deadline = time.monotonic() + 240
  while proc.poll() is None and not _committed(gcs, run, 3) and time.monotonic() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 0 and "stopped: checkpoint saved at step" in err, err[-3000:]
  saved = _saved_steps(gcs, run)
  latest = saved[-1]
  assert len(saved) >= 2 and 3 < latest < STEPS, saved

  arrays = [n for n in gcs.list(BUCKET, f"{run}/checkpoints/{latest}/state/")
            if "/d/" in n or n.endswith(".zarray") or "ocdbt" in n]
  assert arrays, gcs.list(BUCKET, f"{run}/checkpoints/{latest}/")
  for name in arrays:
    gcs.delete(BUCKET, name)
  code, err = _train(workdir, env, **ckpt)
  assert code == 0, err[-3000:]
  assert f"checkpoint at step {latest} is corrupt" in err, err[-3000:]
  assert any(n.startswith(f"{run}/corrupt_checkpoints/{latest}-")
             for n in gcs.list(BUCKET, f"{run}/"))
  records = _merged(gcs.read(BUCKET, f"{run}/metrics.jsonl").decode())
  assert _losses(records) == _losses(local_reference)


def _launch_two(workdir, env, **overrides):
  """Two ``signflax train`` processes x 1 CPU device, joined over 127.0.0.1 (gloo)."""
  env = dict(env, DEVICES_PER_PROCESS="1", SIGNFLAX=f"{sys.executable} -m signflax.cli")
  return subprocess.Popen(["bash", str(REPO / "launch" / "local_multiprocess.sh"), "2"]
                          + _command(workdir, **overrides)[4:], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_two_processes_share_a_gs_workdir_across_sigterm(gcs, tmp_path):
  """The pod case: two processes write one checkpoint into the bucket (each its shards),
  stop together on SIGTERM and resume; process 0 alone writes metrics and events; the
  losses equal one process with two devices on a local disk."""
  steps = 40   # room between the step-4 commit and the end for the signal to land
  overrides = {"mesh.data": 1, "mesh.fsdp": -1, "checkpoint.preemption_check_every": 1,
               "train.steps": steps, "train.compilation_cache_dir": ""}
  local = tmp_path / "local"
  env = _env()
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  code, err = _train(local, env, **overrides)
  assert code == 0, err[-3000:]
  reference = _merged((local / "metrics.jsonl").read_text())

  env, run = _env(gcs.env()), "two"
  workdir = f"gs://{BUCKET}/{run}"
  proc = _launch_two(workdir, env, **overrides)
  deadline = time.monotonic() + 240
  while proc.poll() is None and not _committed(gcs, run, 4) and time.monotonic() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)   # the launcher forwards it to both processes
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0 and out.count("SIGTERM received") == 2, out[-3000:]
  stopped = _saved_steps(gcs, run)[-1]
  assert 4 <= stopped < steps and f"checkpoint saved at step {stopped}" in out, out[-3000:]

  proc = _launch_two(workdir, env, **overrides)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, out[-3000:]
  assert f"[p0] resumed from the checkpoint at step {stopped}" in out, out[-3000:]
  records = _merged(gcs.read(BUCKET, f"{run}/metrics.jsonl").decode())
  assert _losses(records, steps) == _losses(reference, steps)
  assert len(gcs.list(BUCKET, f"{run}/tb/")) == 2   # one event file per start, process 0's


def test_missing_bucket_is_one_line_exit_2(gcs):
  start = time.monotonic()
  code, err = _train("gs://no-such-bucket/run", _env(gcs.env()))
  lines = [l for l in err.splitlines() if l.strip()]
  assert code == 2, err[-3000:]
  assert len(lines) == 1 and "gs://no-such-bucket" in lines[0], err[-3000:]
  assert "bucket does not exist" in lines[0]
  assert "compile" not in err and time.monotonic() - start < 60


def test_no_credentials_is_one_line_exit_2(tmp_path):
  """No emulator, no credentials anywhere (no file, no gcloud config, no metadata server)."""
  env = _env({"GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "missing.json"),
              "NO_GCE_CHECK": "true", "GCE_METADATA_HOST": "127.0.0.1:9",
              "GCE_METADATA_IP": "127.0.0.1:9", "CLOUDSDK_CONFIG": str(tmp_path / "gcloud")})
  start = time.monotonic()
  code, err = _train(f"gs://{BUCKET}/run", env)
  lines = [l for l in err.splitlines() if l.strip()]
  assert code == 2, err[-3000:]
  assert len(lines) == 1 and f"gs://{BUCKET}" in lines[0] and "credentials" in lines[0], err
  assert time.monotonic() - start < 60


def test_prepare_data_to_the_bucket_and_train_from_it(gcs, tmp_path):
  """Prepared shards land in the bucket with a manifest naming each of them; training with
  ``data.paths=gs://...`` copies them once to the host's cache, byte for byte, and reads
  them there (a second start reuses the copy)."""
  env = _env(gcs.env())
  env["SIGNFLAX_DATA_CACHE"] = str(tmp_path / "cache")
  out = subprocess.run([sys.executable, "-m", "signflax.cli", "prepare-data", "--input", "stdlib",
                        "--output", f"gs://{BUCKET}/data", "--max-bytes", "50000"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  names = gcs.list(BUCKET, "data/")
  assert "data/manifest.json" in names and any(n.endswith(".array_record") for n in names)
  manifest = json.loads(gcs.read(BUCKET, "data/manifest.json"))
  for info in manifest["splits"].values():
    assert all(f"data/{f}" in names for f in info["files"])

  data = {"data.source": "arrayrecord", "data.paths": f"gs://{BUCKET}/data", "train.steps": 3,
          "train.compilation_cache_dir": "", "checkpoint.every_steps": 0}
  code, err = _train(tmp_path / "run", env, **data)
  assert code == 0, err[-3000:]
  [copy] = list((tmp_path / "cache").iterdir())
  files = sorted(f for info in manifest["splits"].values() for f in info["files"])
  for name in files + ["manifest.json"]:
    assert (copy / name).read_bytes() == gcs.read(BUCKET, f"data/{name}"), name
  mtimes = {f: f.stat().st_mtime_ns for f in copy.iterdir()}
  code, err = _train(tmp_path / "run2", env, **data)
  assert code == 0, err[-3000:]
  assert {f: f.stat().st_mtime_ns for f in copy.iterdir()} == mtimes   # no second download
  first, second = (_merged((tmp_path / r / "metrics.jsonl").read_text()) for r in ("run", "run2"))
  assert [second[s]["step_loss"] for s in (1, 2, 3)] == [first[s]["step_loss"] for s in (1, 2, 3)]


def test_missing_prepared_data_in_the_bucket_is_one_line_exit_2(gcs, tmp_path):
  code, err = _train(tmp_path / "run", _env(gcs.env()), **{
      "data.source": "arrayrecord", "data.paths": f"gs://{BUCKET}/no-data"})
  lines = [l for l in err.splitlines() if l.strip()]
  assert code == 2 and len(lines) == 1, err[-3000:]
  assert "config.data.paths" in lines[0] and f"gs://{BUCKET}/no-data" in lines[0], lines


_EVENTS_SCRIPT = """
from signflax.metric_writers import EventWriter
from tensorboard.backend.event_processing import event_accumulator
writer = EventWriter("gs://{bucket}/events/tb", upload_secs=3600)
for step in range(5):
  writer.scalars(step, {{"train/loss": float(step)}})
writer.flush()                      # the first upload
for step in range(5, 8):
  writer.scalars(step, {{"train/loss": float(step)}})
writer.close()                      # the whole file again, replacing the first upload
acc = event_accumulator.EventAccumulator("gs://{bucket}/events/tb")  # tensorboard's reader
acc.Reload()
print([e.step for e in acc.Scalars("train/loss")])
"""


def test_event_files_are_uploaded_whole_and_tensorboard_reads_gs(gcs):
  """Object storage has no append: each flush uploads the session's whole event file, and
  TensorBoard's own reader (fsspec, gcsfs) reads the gs:// logdir."""
  out = subprocess.run([sys.executable, "-c", _EVENTS_SCRIPT.format(bucket=BUCKET)],
                       cwd=REPO, env=_env(gcs.env()), capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip().splitlines()[-1] == str(list(range(8)))
  assert len(gcs.list(BUCKET, "events/tb/")) == 1


_SWEEP = """
import ml_collections
from signflax.experiments.sweep import base_config

def get_config():
  config = ml_collections.ConfigDict()
  config.base = base = base_config("lm/tiny.py")
  base.model.update(dict(num_layers=1, d_model=32, num_heads=2, max_seq_len=32))
  base.optimizer.update(dict(name="sign_sgd", learning_rate=1e-3, schedule="constant",
                             warmup_steps=0, weight_decay=0.0))
  base.data.max_bytes = 200_000
  base.train.update(dict(steps=4, global_batch_size=4, seq_len=32, log_every=2,
                         eval_every=0, eval_batches=1, noise_stats=False))
  base.checkpoint.update(dict(every_steps=4, keep=1, async_save=False))
  config.product = [("optimizer.learning_rate", [1e-3, 2e-3])]
  return config
"""


@pytest.mark.slow
def test_sweep_records_and_export_on_gs(gcs, tmp_path):
  """A 2-point sweep into the bucket records both points; export reads a point's params."""
  config = tmp_path / "sweep_cfg.py"
  config.write_text(_SWEEP)
  env = _env(gcs.env())
  out = subprocess.run([sys.executable, "-m", "signflax.cli", "sweep", "--config", str(config),
                        "--workdir", f"gs://{BUCKET}/sweep"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  records = [json.loads(l) for l in gcs.read(BUCKET, "sweep/sweep.jsonl").decode().splitlines()]
  assert [r["status"] for r in records] == ["done", "done"]
  assert records[0]["final_train_loss"] != records[1]["final_train_loss"]
  assert [r["train_step_compiles"] for r in records] == [1, 0]   # the rate is an input
  export = subprocess.run([sys.executable, "-m", "signflax.cli", "export", "--workdir",
                           f"gs://{BUCKET}/sweep/runs/{records[0]['id']}",
                           "--output", str(tmp_path / "params.npz")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
  assert export.returncode == 0, export.stderr[-3000:]
  assert "from step 4" in export.stdout


def _tpu_pod(*args, **env):
  """A dry run of tpu_pod.sh; BUCKET and RUN_NAME only as given."""
  base = {k: v for k, v in os.environ.items() if k not in ("BUCKET", "RUN_NAME")}
  return subprocess.run(["bash", str(REPO / "launch" / "tpu_pod.sh"), "--dry-run", *args],
                        cwd=REPO, env={**base, **env}, capture_output=True, text=True,
                        timeout=60)


def test_tpu_pod_launch_takes_a_gs_workdir():
  """Dry runs (no gcloud needed): the gs:// workdir reaches every worker's train command,
  which installs the gcs extra; BUCKET gives a default; no workdir at all is exit 2."""
  out = _tpu_pod("pod", "us-east5-a", "v5p-16", "--workdir", "gs://b/runs/x",
                 "--config.train.steps=3")
  assert out.returncode == 0, out.stderr
  train = [l for l in out.stdout.splitlines() if "signflax\\ train" in l]
  assert len(train) == 1 and "--workdir\\ gs://b/runs/x" in train[0], out.stdout
  assert "install -q -e '.[gcs]'" in out.stdout.replace("\\", "") and "warning" not in out.stderr

  out = _tpu_pod("pod", "us-east5-a", "v5p-16", BUCKET="gs://b", RUN_NAME="r1")
  assert out.returncode == 0 and "--workdir\\ gs://b/runs/r1" in out.stdout, out.stderr

  out = _tpu_pod("pod", "z", "v5p-16")
  assert out.returncode == 2 and out.stdout == "", out
  assert len(out.stderr.strip().splitlines()) == 1 and "--workdir: required" in out.stderr

  out = _tpu_pod("pod", "z", "v5p-16", "--workdir", "/mnt/runs/x")
  assert out.returncode == 0 and "not gs://" in out.stderr   # allowed, with a warning


_UPLOAD = """
import pathlib, sys
from signflax import storage
storage.configure_clients()
source, target = pathlib.Path(sys.argv[1]), storage.path(sys.argv[2])
for p in source.rglob("*"):
  if p.is_file():
    (target / str(p.relative_to(source))).write_bytes(p.read_bytes())
"""


@pytest.mark.slow
def test_fit_reads_a_gs_sweep(gcs, tmp_path):
  """``signflax fit --sweep gs://...`` reads the sweep through the storage layer and writes
  its results and figures next to it."""
  from test_fits import _fake_sweep  # noqa: PLC0415
  local = tmp_path / "sweep"
  local.mkdir()
  _fake_sweep(local, ["done", "done", "failed", "missing"])
  env = dict(_env(gcs.env()), PYTHONPATH=str(REPO))
  subprocess.run([sys.executable, "-c", _UPLOAD, str(local), f"gs://{BUCKET}/fit_sweep"],
                 env=env, check=True, timeout=120)
  result = subprocess.run(
      [sys.executable, "-m", "signflax.cli", "fit", "--sweep", f"gs://{BUCKET}/fit_sweep",
       "--law", "predict", "--fractions", "64:0.25,128:0.5"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "002-global_batch_size=256 (failed: boom)" in result.stdout
  saved = json.loads(gcs.read(BUCKET, "fit_sweep/fits/predict/results.json"))
  assert saved["points_fitted"] == 2 and saved["sweep"] == f"gs://{BUCKET}/fit_sweep"
  assert "fit_sweep/fits/predict/predict_sign_sgd.png" in gcs.list(BUCKET, "fit_sweep/fits/")
  missing = subprocess.run(
      [sys.executable, "-m", "signflax.cli", "fit", "--sweep", f"gs://{BUCKET}/nope",
       "--law", "batch"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert missing.returncode == 2 and f"gs://{BUCKET}/nope has no sweep.jsonl" in missing.stderr
