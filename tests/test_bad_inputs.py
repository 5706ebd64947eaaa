"""Bad input of every kind stops at the edge: exit 2, one stderr line naming the field,
no traceback, and the workdir exactly as it was (names, sizes and hashes).

Run in-process through ``signflax.cli.main``; library cases raise ValueError/TypeError.
"""

import hashlib
import math
import os
import pathlib
import tempfile

import pytest

from signflax import cli
from signflax import optim

BAD_CONFIG_FILES = {
    "raises.py": "def get_config():\n  raise RuntimeError('no dataset configured')\n",
    "syntax.py": "def get_config(:\n",
    "no_get_config.py": "X = 1\n",
    "not_a_configdict.py": "def get_config():\n  return {'model': {}}\n",
}

# (argv after "train", the text the one error line must contain)
TRAIN_CASES = [
    (["--config.optimizer.weight_decay=-0.1"], "config.optimizer.weight_decay"),
    (["--config.optimizer.decay_fraction=1.5"], "config.optimizer.decay_fraction"),
    (["--config.optimizer.signum.beta=1.0"], "config.optimizer.signum.beta"),
    (["--config.optimizer.learning_rate=1e999"], "config.optimizer.learning_rate"),
    (["--config.model.mlp_dim=1e3"], "config.model.mlp_dim"),
    (["--config.optimizer.grad_clip_norm=-1"], "config.optimizer.grad_clip_norm"),
    (["--config.optimizer.adamw.b1=abc"], "config.optimizer.adamw.b1"),
    (["--config.optimizer.adamw.eps=-1e-8"], "config.optimizer.adamw.eps"),
    (["--config.optimizer.muon.fallback_learning_rate=-1"],
     "config.optimizer.muon.fallback_learning_rate"),
    (["--config.optimizer.name=muon", "--config.optimizer.muon.coeffs=cubic"],
     "config.optimizer.muon.coeffs"),
    (["--config.optimizer.decay_shape=square"], "config.optimizer.decay_shape"),
    (["--config.optimizer.name=adam"], "config.optimizer.name"),
    (["--config.optimizer.schedule=linear"], "config.optimizer.schedule"),
    (["--config.optimizer.warmup_steps=500"], "config.optimizer.warmup_steps"),
    (["--config.optimizer.warmup_steps=350"], "config.optimizer.warmup_steps"),  # + decay > steps
    (["--config.optimizer.adamw.beta=0.5"], "config.optimizer.adamw"),
    (["--config.train.steps=0"], "config.train.steps"),
    (["--config.train.steps=1.5"], "config.train.steps"),
    (["--config.train.seed=-1"], "config.train.seed"),
    (["--config.train.global_batch_size=true"], "config.train.global_batch_size"),
    (["--config.train.seq_len=256"], "config.train.seq_len"),
    (["--config.train.loss_chunk_len=5"], "config.train.loss_chunk_len"),
    (["--config.train.grad_accum=3"], "config.train.global_batch_size"),
    (["--config.train.log_every=0"], "config.train.log_every"),
    (["--config.train.stepz=3"], "stepz"),
    (["--config.checkpoint.nan_policy=ignore"], "config.checkpoint.nan_policy"),
    (["--config.checkpoint.keep=0"], "config.checkpoint.keep"),
    (["--config.data.source=web"], "config.data.source"),
    (["--config.data.eval_fraction=1.0"], "config.data.eval_fraction"),
    (["--config.data.split_by=line"], "config.data.split_by"),
    (["--config.data.shuffle=1"], "config.data.shuffle"),
    (["--config.data.source=text", "--config.data.paths=/nonexistent/*.txt"], "config.data.paths"),
    (["--config.model.dtype=float64"], "config.model.dtype"),
    (["--config.model.remat=some"], "config.model.remat"),
    (["--config.model.num_kv_heads=3"], "config.model.num_kv_heads"),
    (["--config.model.norm_eps=-1e-6"], "config.model.norm_eps"),
    (["--config.mesh.tensor=3"], "config.mesh"),
    (["--config.distributed.num_processes=0"], "config.distributed.num_processes"),
    (["--config", "nonexistent.py"], "--config"),
    (["--config", "lm/nonexistent"], "--config"),
    (["--bogus"], "--bogus"),
    (["--config", "{raises.py}"], "no dataset configured"),
    (["--config", "{syntax.py}"], "SyntaxError"),
    (["--config", "{no_get_config.py}"], "get_config"),
    (["--config", "{not_a_configdict.py}"], "ConfigDict"),
]

LINREG_CASES = [
    (["--config.alpha=0.5"], "config.alpha"),
    (["--config.dim=-3"], "config.dim"),
    (["--config.experiment=foo"], "config.experiment"),
    (["--config.num_seeds=0"], "config.num_seeds"),
    (["--config.lr_min=-1.0"], "config.lr_min"),
    (["--config.noise_model=gaussian"], "config.noise_model"),
]

PREPARE_CASES = [
    (["--input", "/nonexistent/dir/*.txt"], "--input"),
    (["--input", "stdlib", "--eval-fraction", "1.5"], "eval-fraction"),
    (["--input", "stdlib", "--split-by", "line"], "--split-by"),
    (["--input", "stdlib", "--chunk-tokens", "0"], "chunk-tokens"),
    ([], "--input"),
]


def snapshot(root: pathlib.Path) -> dict:
  """Every path under ``root`` -> (size, sha256) of files, None for directories."""
  if not root.exists():
    return {}
  out = {}
  for path in sorted(root.rglob("*")):
    rel = str(path.relative_to(root))
    out[rel] = (path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest()
                ) if path.is_file() else None
  return out


@pytest.fixture
def workdir(tmp_path):
  """A workdir holding an earlier run's file: a failed start must leave it untouched."""
  wd = tmp_path / "run"
  (wd / "notes").mkdir(parents=True)
  (wd / "notes" / "keep.txt").write_text("earlier results\n")
  return wd


def _assert_one_line_error(code, capsys, field: str, command: str):
  err = capsys.readouterr().err
  assert code == 2, err
  assert err.count("\n") == 1, err
  assert err.startswith(f"signflax {command}: error:") or err.startswith("signflax "), err
  assert field in err, err
  assert "Traceback" not in err


def _expand(argv, tmp_path):
  for name, text in BAD_CONFIG_FILES.items():
    (tmp_path / name).write_text(text)
  return [str(tmp_path / a[1:-1]) if a.startswith("{") else a for a in argv]


@pytest.mark.parametrize("argv,field", TRAIN_CASES, ids=[" ".join(a) for a, _ in TRAIN_CASES])
def test_train_rejects(argv, field, workdir, tmp_path, capsys):
  before = snapshot(tmp_path)
  code = cli.main(["train", "--workdir", str(workdir)] + _expand(argv, tmp_path))
  _assert_one_line_error(code, capsys, field, "train")
  after = snapshot(tmp_path)
  assert {k: v for k, v in after.items() if k not in BAD_CONFIG_FILES} == {
      k: v for k, v in before.items() if k not in BAD_CONFIG_FILES}


@pytest.mark.parametrize("argv,field", LINREG_CASES, ids=[" ".join(a) for a, _ in LINREG_CASES])
def test_linreg_rejects(argv, field, workdir, capsys):
  before = snapshot(workdir)
  code = cli.main(["linreg", "--workdir", str(workdir)] + argv)
  _assert_one_line_error(code, capsys, field, "linreg")
  assert snapshot(workdir) == before


@pytest.mark.parametrize("argv,field", PREPARE_CASES, ids=[" ".join(a) for a, _ in PREPARE_CASES])
def test_prepare_data_rejects(argv, field, workdir, capsys):
  before = snapshot(workdir)
  code = cli.main(["prepare-data"] + argv + (["--output", str(workdir / "shards")] if argv else []))
  _assert_one_line_error(code, capsys, field, "prepare-data")
  assert snapshot(workdir) == before


def test_workdir_under_a_file(tmp_path, capsys):
  (tmp_path / "file").write_text("x")
  before = snapshot(tmp_path)
  code = cli.main(["train", "--workdir", str(tmp_path / "file" / "run"),
                   ])
  _assert_one_line_error(code, capsys, "--workdir", "train")
  assert snapshot(tmp_path) == before


def test_workdir_that_is_a_file(tmp_path, capsys):
  (tmp_path / "run").write_text("x")
  before = snapshot(tmp_path)
  code = cli.main(["train", "--workdir", str(tmp_path / "run")])
  _assert_one_line_error(code, capsys, "--workdir", "train")
  assert snapshot(tmp_path) == before


def test_read_only_workdir(workdir, tmp_path, capsys, monkeypatch):
  before = snapshot(tmp_path)
  if os.geteuid() == 0:  # root writes through permission bits: make the probe see a read-only fs
    def read_only(*args, **kwargs):
      raise PermissionError(13, "Read-only file system")
    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
  else:
    workdir.chmod(0o555)
  try:
    code = cli.main(["train", "--workdir", str(workdir)])
  finally:
    workdir.chmod(0o755)
  _assert_one_line_error(code, capsys, "--workdir", "train")
  assert snapshot(tmp_path) == before


@pytest.mark.parametrize("build,argument", [
    (lambda: optim.adamw(1e-3, eps=-1e-8), "eps"),
    (lambda: optim.sign_sgd(math.inf), "learning_rate"),
    (lambda: optim.signum(1e-3, beta="0.9"), "beta"),
    (lambda: optim.wsd_schedule(math.inf, 100), "peak_value"),
    (lambda: optim.signum(1e-3, weight_decay=-0.1), "weight_decay"),
    (lambda: optim.lion(1e-3, b1=1.5), "b1"),
], ids=["adamw-eps", "sign_sgd-inf-lr", "signum-string-beta", "wsd-inf-peak",
        "signum-negative-wd", "lion-b1"])
def test_library_rejects(build, argument):
  with pytest.raises((ValueError, TypeError), match=rf"^{argument}\b") as e:
    build()
  assert "\n" not in str(e.value)


def test_a_bug_prints_a_traceback_and_asks_for_a_report(monkeypatch, capsys):
  from signflax.train import trainer

  def broken(config):
    raise KeyError("unexpected")
  monkeypatch.setattr(trainer, "validate", broken)
  code = cli.main(["train", "--workdir", "unused"])
  err = capsys.readouterr().err
  assert code == 1
  assert "Traceback" in err and "KeyError" in err and "report" in err.splitlines()[-1]
