"""`signflax sample` and `signflax eval` on a short trained run, and their bad inputs.

The run (a shrunken tiny config, 24 steps on 8 devices) is trained once per test
session and shared by the pytest-xdist workers (see ``trained_run``); the Hugging
Face tests (test_hf.py) use it too.
"""

import fcntl
import json
import math
import os
import pathlib
import shutil

import jax
import numpy as np
import pytest

from signflax import cli
from signflax import model as model_lib
from signflax.data import pipeline, sources
from signflax.model import decode
from signflax.train import evaluate, trained

# Every test here reads the shared trained run (about 25 s of CPU to train once).
pytestmark = pytest.mark.slow

TRAIN_ARGS = [
    "--config.train.steps=24", "--config.train.eval_every=12", "--config.train.eval_batches=2",
    "--config.train.log_every=12", "--config.checkpoint.every_steps=12",
    "--config.checkpoint.async_save=False", "--config.data.max_bytes=400000",
    "--config.model.num_layers=2", "--config.model.d_model=64", "--config.model.num_heads=4",
    "--config.model.num_kv_heads=2", "--config.train.global_batch_size=8",
    "--config.train.seq_len=64", "--config.optimizer.warmup_steps=4",
]


def shared_trained_run(tmp_path_factory) -> pathlib.Path:
  """The workdir of one short training run per session (the first worker trains it)."""
  base = tmp_path_factory.getbasetemp()
  uid = os.environ.get("PYTEST_XDIST_TESTRUNUID")
  root = base.parent / f"trained-{uid}" if uid else base
  root.mkdir(parents=True, exist_ok=True)
  workdir = root / "run"
  with open(root / "lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (root / "done").exists():
      shutil.rmtree(workdir, ignore_errors=True)
      assert cli.main(["train", "--workdir", str(workdir), *TRAIN_ARGS]) == 0
      (root / "done").touch()
  return workdir


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
  return shared_trained_run(tmp_path_factory)


def _logged(workdir, step):
  return trained.final_eval_loss(workdir, step)


def test_eval_reproduces_the_logged_eval_loss(trained_run, capsys):
  assert cli.main(["eval", "--workdir", str(trained_run), "--json"]) == 0
  result = json.loads(capsys.readouterr().out)
  assert result["step"] == 24
  assert abs(result["loss"] - _logged(trained_run, 24)) <= 1e-5
  assert result["tokens"] == 2 * 8 * 64 and result["windows"] == 16
  assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
  # byte tokens: every target is one byte except the document separators
  stream = pipeline.split_tokens(trained.run_config(trained_run).data, "eval")[:16 * 64 + 1]
  assert result["bytes"] == int((stream[1:] < 256).sum())
  assert result["bits_per_byte"] == pytest.approx(
      result["loss"] * result["tokens"] / result["bytes"] / math.log(2))
  # an earlier step, on another mesh, in words
  assert cli.main(["eval", "--workdir", str(trained_run), "--step", "12",
                   "--config.mesh.data=2", "--config.mesh.fsdp=4"]) == 0
  out = capsys.readouterr().out
  assert "bits/byte" in out and "logged eval loss at step 12" in out
  loss = float(out.split(" nats/token")[0].split()[-1])
  assert abs(loss - _logged(trained_run, 12)) <= 1e-5


def test_eval_on_text_files_and_prepared_shards(trained_run, tmp_path, capsys):
  run = trained.load(trained_run)
  text = tmp_path / "notes.txt"
  text.write_text("def f(x):\n    return x + 1  # héllo\n" * 3)   # 2 windows of 64, the last short
  assert cli.main(["eval", "--workdir", str(trained_run), "--data", str(text), "--json"]) == 0
  result = json.loads(capsys.readouterr().out)
  raw = text.read_bytes()
  assert result["tokens"] == len(raw) and result["bytes"] == len(raw) - 1 + 0   # EOS: 0 bytes
  stream = np.concatenate([np.frombuffer(raw, np.uint8), [256]]).astype(np.int32)
  params = jax.device_get(run.params)
  nats = 0.0
  for start in range(0, len(stream) - 1, 64):   # the windows, scored by the model directly
    window = stream[start:start + 65]
    logits = model_lib.apply(run.graphdef, params, window[None, :-1])[0]
    logp = np.asarray(jax.nn.log_softmax(logits, axis=-1), np.float64)
    nats += -logp[np.arange(len(window) - 1), window[1:]].sum()
  assert result["loss"] == pytest.approx(nats / len(raw), abs=1e-5)

  shards = tmp_path / "shards"
  assert cli.main(["prepare-data", "--input", "stdlib", "--output", str(shards),
                   "--max-bytes", "400000", "--chunk-tokens", "1000"]) == 0
  capsys.readouterr()
  assert cli.main(["eval", "--workdir", str(trained_run), "--data", str(shards), "--json"]) == 0
  from_shards = json.loads(capsys.readouterr().out)
  in_memory = evaluate.evaluate(run, evaluate.Windows(sources.ArrayWindows(
      pipeline.split_tokens(run.config.data, "eval"), 64), None, "eval"), progress=False)
  assert from_shards["tokens"] == in_memory["tokens"] > 10_000
  assert from_shards["loss"] == pytest.approx(in_memory["loss"], abs=1e-6)


def test_sample_greedy_is_the_recomputed_greedy_path(trained_run, capsys):
  args = ["sample", "--workdir", str(trained_run), "--prompt", "import os\n",
          "--temperature", "0", "--max-new-tokens", "40"]
  assert cli.main(args) == 0
  out, err = capsys.readouterr()
  assert out.startswith("import os\n")
  assert "sample 1/1: " in err and "stopped at" in err and "tokens/s" in err
  run = trained.load(trained_run)
  prompt = np.concatenate([[256], np.frombuffer(b"import os\n", np.uint8)]).astype(np.int32)
  reference = decode.greedy_recompute(run.graphdef, jax.device_get(run.params), prompt[None], 40)
  row = reference[0]
  ends = np.flatnonzero((row == 256) | (row >= 258))
  expected = row[:ends[0]] if len(ends) else row
  assert out == "import os\n" + run.tokenizer.decode(expected) + "\n"
  # the same greedy text on an 8-way fsdp mesh
  assert cli.main(args + ["--config.mesh.data=1", "--config.mesh.fsdp=8"]) == 0
  assert capsys.readouterr()[0] == out


def test_a_relative_workdir_samples_as_an_absolute_one(trained_run, capsys,
                                                         monkeypatch):
  args = ["--prompt", "def ", "--temperature", "0", "--max-new-tokens", "8"]
  assert cli.main(["sample", "--workdir", str(trained_run)] + args) == 0
  absolute = capsys.readouterr()[0]
  monkeypatch.chdir(trained_run.parent)
  assert cli.main(["sample", "--workdir", trained_run.name] + args) == 0
  assert capsys.readouterr()[0] == absolute


def test_sample_seeds_and_samples(trained_run, capsys):
  base = ["sample", "--workdir", str(trained_run), "--prompt", "x", "--max-new-tokens", "30",
          "--temperature", "1.0", "--top-k", "50", "--top-p", "0.95"]
  texts = []
  for seed in ("1", "1", "2"):
    assert cli.main(base + ["--seed", seed, "--num-samples", "3"]) == 0
    out, err = capsys.readouterr()
    texts.append(out)
    assert err.count("sample ") == 3 and out.count("\n" + "---" + "\n") == 2
  assert texts[0] == texts[1] != texts[2]
  assert len(set(texts[0].split("\n---\n"))) == 3   # the rows draw independently


def test_sample_stops_at_the_context(trained_run, capsys):
  prompt = "a" * 120   # 121 tokens of a 128-token context
  assert cli.main(["sample", "--workdir", str(trained_run), "--prompt", prompt,
                   "--max-new-tokens", "50", "--temperature", "0.5"]) == 0
  err = capsys.readouterr()[1]
  assert "stopped at context" in err or "stopped at eos" in err
  if "context" in err:
    assert "sample 1/1: 8 tokens" in err


def _error(capsys, argv):
  code = cli.main(argv)
  err = capsys.readouterr()[1]
  return code, err.strip()


@pytest.mark.parametrize("extra, message", [
    (["--temperature", "-0.1"], "--temperature: must be a finite number >= 0"),
    (["--top-p", "0"], "--top-p: must be in (0, 1]"),
    (["--top-p", "1.5"], "--top-p: must be in (0, 1]"),
    (["--top-k", "-1"], "--top-k: must be an integer >= 0"),
    (["--num-samples", "0"], "--num-samples: must be an integer >= 1"),
    (["--step", "7"], "--step: no checkpoint at step 7"),
    (["--prompt", "z" * 128], "--prompt: 129 tokens"),
    (["--config.model.d_model=8"], "--config.model.d_model: only --config.mesh.*"),
    (["--config.mesh.fsdp=3"], "config.mesh"),
])
def test_sample_bad_input(trained_run, capsys, extra, message):
  argv = ["sample", "--workdir", str(trained_run), "--prompt", "hi", *extra]
  code, err = _error(capsys, argv)
  assert code == 2 and message in err and len(err.splitlines()) == 1, err


def test_bad_workdirs(trained_run, tmp_path, capsys):
  partial = tmp_path / "partial"   # a config but no checkpoint
  partial.mkdir()
  shutil.copy(trained_run / "config.json", partial / "config.json")
  no_config = tmp_path / "no_config"
  shutil.copytree(trained_run / "checkpoints", no_config / "checkpoints")
  cases = [(tmp_path / "missing", "is not a directory"), (partial, "no checkpoint"),
           (no_config, "no readable config.json")]
  for workdir, message in cases:
    for argv in (["sample", "--prompt", "x"], ["eval"],
                 ["export", "--format", "hf", "--output", str(tmp_path / "out")]):
      code, err = _error(capsys, [argv[0], "--workdir", str(workdir), *argv[1:]])
      assert code == 2 and message in err and len(err.splitlines()) == 1, (argv, err)
  for extra, message in ((["--step", "5"], "--step: no checkpoint at step 5"),
                         (["--data", str(tmp_path / "nothing*.txt")], "--data: no files match"),
                         (["--json", "--bogus"], "unrecognized arguments")):
    code, err = _error(capsys, ["eval", "--workdir", str(trained_run), *extra])
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
