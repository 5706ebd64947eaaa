"""The built wheel runs the default jobs from outside the source tree (configs ship inside)."""

import os
import pathlib
import subprocess
import sys
import sysconfig
import venv

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_runs_train_and_linreg_outside_the_source_tree(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  dist = tmp_path / "dist"
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                  "--no-build-isolation", "-w", str(dist), str(REPO)], check=True, env=env)
  (wheel,) = dist.glob("signflax-*.whl")

  # A fresh venv that sees this environment's dependencies (jax, flax, ...) through a .pth
  # line, but not its editable signflax: only the wheel provides the package.
  env_dir = tmp_path / "venv"
  venv.EnvBuilder(with_pip=False).create(env_dir)
  python = env_dir / "bin" / "python"
  purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                            "['purelib'])"], check=True, capture_output=True, text=True
                           ).stdout.strip()
  pathlib.Path(purelib, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
  # --ignore-installed: the .pth also shows this environment's (editable) signflax metadata.
  subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                  "--no-deps", "--ignore-installed", str(wheel)], check=True, env=env)

  work = tmp_path / "elsewhere"
  work.mkdir()
  where = subprocess.run([str(python), "-c", "import signflax; print(signflax.__file__)"],
                         cwd=work, env=env, capture_output=True, text=True)
  assert where.returncode == 0, where.stderr
  assert pathlib.Path(where.stdout.strip()).is_relative_to(env_dir)

  signflax = str(env_dir / "bin" / "signflax")
  train = subprocess.run(
      [signflax, "train", "--workdir", "run", "--config.train.steps=2",
       "--config.optimizer.warmup_steps=0", "--config.train.eval_batches=1",
       "--config.data.max_bytes=300000"],
      cwd=work, env=env, capture_output=True, text=True, timeout=600)
  assert train.returncode == 0, train.stderr
  assert "final eval loss" in train.stderr and (work / "run" / "metrics.jsonl").exists()

  linreg = subprocess.run(
      [signflax, "linreg", "--config", "linreg/data_scaling", "--workdir", "lab",
       "--config.dim=32", "--config.num_seeds=2", "--config.log2_budget_min=6",
       "--config.log2_budget_max=8", "--config.log2_batch_max=2", "--config.lr_min=0.01",
       "--config.lr_max=0.5"],
      cwd=work, env=env, capture_output=True, text=True, timeout=600)
  assert linreg.returncode == 0, linreg.stderr
  assert any((work / "lab").iterdir())
