"""The README's library example runs and every optimizer in it learns."""

import importlib.util
import pathlib

EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "examples" / "optax_quickstart.py"


def test_optax_quickstart_trains_with_every_optimizer(capsys):
  spec = importlib.util.spec_from_file_location("optax_quickstart", EXAMPLE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  results = module.main(["--steps", "120"])
  assert set(results) == {"sgd", "adamw", "sign_sgd", "signum", "muon"}
  for name, losses in results.items():
    assert losses[-1] < 0.5 * losses[0], name
  # the sign-based methods beat plain SGD on this problem
  for name in ("sign_sgd", "signum", "muon"):
    assert results[name][-1] < results["sgd"][-1], name
  assert "signum" in capsys.readouterr().out
