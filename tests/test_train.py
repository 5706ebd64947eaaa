"""The trainer: config validation, the CLI contract, determinism, learning, logs."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from signflax import cli, config_io, outcomes
from signflax import model as model_lib
from signflax import optim
from signflax.train import optimizer as optimizer_lib
from signflax.train import preemption
from signflax.train import setup as setup_lib
from signflax.train import step as step_lib
from signflax.train import trainer

TINY_CONFIG = (pathlib.Path(__file__).resolve().parent.parent / "signflax" / "configs" / "lm"
               / "tiny.py")


def small_config(**overrides):
  """configs/lm/tiny.py shrunk to a few seconds of training."""
  config = config_io.load_config_file(TINY_CONFIG)
  settings = {
      "model.num_layers": 2, "model.d_model": 64, "model.max_seq_len": 32,
      "optimizer.warmup_steps": 5, "optimizer.learning_rate": 1e-2,
      "data.max_bytes": 1_000_000,
      "train.steps": 30, "train.global_batch_size": 16, "train.seq_len": 32,
      "train.grad_accum": 2, "train.log_every": 10, "train.eval_every": 15,
      "train.eval_batches": 2,
      **overrides}
  for dotted, value in settings.items():
    config_io.apply_override(config, dotted, repr(value))
  return config


@pytest.mark.parametrize("name", ["tiny", "llama_100m", "gpt2_124m"])
def test_lm_configs_validate(name):
  config = config_io.load_config_file(TINY_CONFIG.parent / f"{name}.py")
  trainer.validate(config)
  if name == "gpt2_124m":  # GPT-2 small's shape and size
    _, shapes, _ = model_lib.abstract_model(setup_lib.transformer_config(config))
    assert round(sum(x.size for x in jax.tree.leaves(shapes)) / 1e6) == 124


@pytest.mark.parametrize("name", ["tiny", "llama_100m", "gpt2_124m"])
def test_every_optimizer_name_works_with_every_lm_config(name):
  """Switching --config.optimizer.name keeps the config valid: keywords live per optimizer."""
  for optimizer in optim.OPTIMIZERS:
    config = config_io.load_config_file(TINY_CONFIG.parent / f"{name}.py")
    config_io.apply_override(config, "optimizer.name", repr(optimizer))
    trainer.validate(config)
    _, _, axes = model_lib.abstract_model(model_lib.TransformerConfig(num_layers=1, d_model=32))
    optimizer_lib.make_optimizer(config.optimizer, config.train.steps, axes)


def test_optimizer_groups_reject_foreign_keywords():
  config = small_config()
  with config.optimizer.adamw.unlocked():
    config.optimizer.adamw.beta = 0.5
  with pytest.raises(ValueError, match=r"^config\.optimizer\.adamw: beta not accepted by "
                     r"'adamw'; allowed: b1, b2, eps, mu_dtype, nesterov$"):
    trainer.validate(config)
  config = small_config()
  with config.optimizer.unlocked():
    config.optimizer.kwargs = {"b1": 0.9}
  with pytest.raises(ValueError, match=r"^config\.optimizer\.kwargs: unknown field"):
    trainer.validate(config)


@pytest.mark.parametrize("overrides,message", [
    ({"optimizer.name": "adam"}, r"^config\.optimizer\.name: 'adam' is not one of sgd, "),
    ({"optimizer.schedule": "linear"}, r"^config\.optimizer\.schedule: 'linear' is not one of"),
    ({"train.global_batch_size": 12}, r"^config\.train\.global_batch_size: 12 .* not divisible by "
                                      r"the data-parallel size data\*fsdp=8"),
    ({"train.seq_len": 64}, r"^config\.train\.seq_len: 64 is longer than the model's context"),
    ({"data.source": "text", "data.paths": "/nonexistent/*.txt"}, r"^config\.data\.paths"),
    ({"model.num_kv_heads": 3}, r"^config\.model\.num_kv_heads"),
    ({"mesh.tensor": 3}, r"^config\.mesh: "),
    ({"train.steps": 0}, r"^config\.train\.steps: must be an integer >= 1"),
    ({"train.loss_chunk_len": 5}, r"^config\.train\.loss_chunk_len: 5 must be 0 \(whole logits\) "
                                  r"or a positive divisor of config\.train\.seq_len=32$"),
])
def test_validate_errors_are_one_line(overrides, message):
  with pytest.raises(ValueError, match=message) as error:
    trainer.validate(small_config(**overrides))
  assert "\n" not in str(error.value)


def test_cli_reports_config_errors_with_exit_code_2(tmp_path, capsys):
  code = cli.main(["train", "--workdir", str(tmp_path / "run"), "--config.optimizer.name=adam"])
  err = capsys.readouterr().err
  assert code == 2
  assert err.count("\n") == 1 and err.startswith("signflax train: error: config.optimizer.name")
  assert not (tmp_path / "run").exists()


def test_muon_and_weight_decay_masks_come_from_logical_axes():
  _, _, axes = model_lib.abstract_model(model_lib.TransformerConfig(num_layers=2, d_model=32))
  config = small_config(**{"optimizer.name": "muon"})
  kwargs = optimizer_lib.optimizer_kwargs(config.optimizer, axes)
  muon = kwargs["muon_params"]
  assert muon["layers"]["attn"]["q"] and muon["layers"]["mlp"]["down"]
  assert not muon["embed"] and not muon["layers"]["attn_norm"]["scale"]  # [layers, embed] norm
  decay = optimizer_lib.optimizer_kwargs(small_config().optimizer, axes)["weight_decay_mask"]
  assert decay["embed"] and not decay["final_norm"]["scale"]


def _read_metrics(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _tensorboard_tags(workdir):
  from tensorboard.backend.event_processing import event_accumulator  # noqa: PLC0415
  acc = event_accumulator.EventAccumulator(str(workdir / "tb"))
  acc.Reload()
  return set(acc.Tags()["scalars"])


@pytest.mark.slow
def test_short_runs_learn_are_deterministic_and_log(tmp_path):
  config = small_config()
  runs = [tmp_path / "a", tmp_path / "b"]
  for workdir in runs:
    assert trainer.run(config, str(workdir)) is outcomes.Finished.DONE
  a, b = (_read_metrics(w) for w in runs)

  losses = lambda records, key: [r[key] for r in records if r.get(key) is not None]
  assert losses(a, "train_loss") == losses(b, "train_loss")      # bit-identical
  assert losses(a, "eval_loss") == losses(b, "eval_loss")
  assert [r["step"] for r in a] == [0, 10, 20, 30]

  first, last = a[0], a[-1]
  assert first["eval_unigram_entropy"] > 2.0
  assert last["eval_loss"] < first["eval_loss"] - 1.0           # it learns
  assert last["train_loss"] < a[1]["train_loss"]
  for key in ("learning_rate", "grad_l1", "grad_l2", "update_rms", "param_l2", "step_time_s",
              "tokens_per_s", "noise_density", "noise_density/layers"):
    assert key in last, key
  assert last["mfu"] is None  # no peak FLOP/s for CPUs
  assert 0 < last["noise_density"] <= 1
  assert {"train/train_loss", "eval/eval_loss", "optim/noise_density",
          "eval/eval_unigram_entropy", "train/tokens"} <= \
      _tensorboard_tags(runs[0])
  assert json.loads((runs[0] / "config.json").read_text())["optimizer"]["name"] == "adamw"

  # a second run into a finished workdir resumes at the last step: nothing to do, logs alone
  before = (runs[0] / "metrics.jsonl").read_text()
  assert trainer.run(config, str(runs[0])) is outcomes.Finished.DONE
  assert (runs[0] / "metrics.jsonl").read_text() == before


@pytest.mark.slow
def test_accumulation_paths_agree():
  """grad_accum=2 with and without noise stats equals one full-batch step (SGD)."""
  cfg = model_lib.TransformerConfig(vocab_size=64, num_layers=1, d_model=32, num_heads=2,
                                    max_seq_len=8)
  graphdef, _, axes = model_lib.abstract_model(cfg)
  opt = small_config(**{"optimizer.name": "sgd", "optimizer.schedule": "constant",
                        "optimizer.warmup_steps": 0}).optimizer
  tx, schedule = optimizer_lib.make_optimizer(opt, 10, axes)
  state = jax.device_get(step_lib.init_state(cfg, tx, jax.random.key(0)))
  tokens = np.random.default_rng(0).integers(0, 64, (4, 9)).astype(np.int32)
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
  results = []
  # (grad_accum, noise_stats, loss_chunk_len): the last two fuse the head into the loss
  variants = ((1, False, 0), (2, False, 0), (2, True, 0), (1, False, 2), (2, True, 4))
  for accum, noise, chunk in variants:
    step = jax.jit(step_lib.make_train_step(graphdef, tx, schedule, grad_accum=accum,
                                            noise_stats=noise, loss_chunk_len=chunk))
    results.append(jax.device_get(step(state, batch)))
  (ref, ref_m), *others = results
  for new, m in others:
    np.testing.assert_allclose(m["loss"], ref_m["loss"], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(ref.params)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  assert "noise_density" in others[1][1] and "noise_density" not in others[0][1]
  evals = [jax.jit(step_lib.make_eval_step(graphdef, c))(state.params, batch) for c in (0, 2)]
  np.testing.assert_allclose(evals[1], evals[0], rtol=1e-6)


def _tiny_model():
  cfg = model_lib.TransformerConfig(vocab_size=64, num_layers=1, d_model=32, num_heads=2,
                                    max_seq_len=8)
  return (cfg,) + model_lib.abstract_model(cfg)


def test_muon_fallback_rate_follows_the_schedule():
  """The AdamW fallback's rate warms up and decays with the Muon rate, at its own peak."""
  opt = small_config(**{"optimizer.name": "muon", "optimizer.learning_rate": 0.02,
                        "optimizer.warmup_steps": 4, "optimizer.decay_fraction": 0.4,
                        "optimizer.weight_decay": 0.0,
                        "optimizer.muon.fallback_learning_rate": 0.01}).optimizer
  params = {"w": jnp.ones((4, 4)), "b": jnp.ones((4,))}
  axes = {"w": ("embed", "mlp"), "b": ("embed",)}
  tx, _ = optimizer_lib.make_optimizer(opt, 10, axes)
  shape = optimizer_lib.make_schedule(opt, 10, peak=1.0)
  state = tx.init(params)
  grads = {"w": jnp.ones((4, 4)), "b": jnp.ones((4,))}
  update = jax.jit(tx.update)
  rates = []
  for _ in range(10):  # constant gradient: Adam's bias-corrected step is exactly the rate
    updates, state = update(grads, state, params)
    rates.append(float(-updates["b"][0]))
  expected = [0.01 * float(shape(t)) for t in range(10)]
  np.testing.assert_allclose(rates, expected, rtol=1e-4, atol=1e-9)
  assert rates[0] == 0.0 and rates[-1] < rates[5]  # warmup from 0, then decay


@pytest.mark.parametrize("schedule, shape", [("wsd", "linear"), ("wsd", "cosine"),
                                             ("wsd", "1-sqrt"), ("cosine", "linear"),
                                             ("constant", "linear")])
def test_rate_table_holds_the_compiled_in_schedule_bit_for_bit(schedule, shape):
  """The injected table equals the schedule XLA compiles with a constant peak (whose
  constant folding differs from the same formula on a traced peak)."""
  opt = small_config(**{"optimizer.learning_rate": 3e-3, "optimizer.schedule": schedule,
                        "optimizer.warmup_steps": 7, "optimizer.decay_shape": shape,
                        "optimizer.final_lr_fraction": 0.1}).optimizer
  table = optimizer_lib.rate_table(opt, 60, 3e-3)
  compiled_in = jax.jit(optimizer_lib.make_schedule(opt, 60))
  np.testing.assert_array_equal(table, [compiled_in(jnp.int32(t)) for t in range(61)])


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_injected_optimizer_is_bit_identical_to_compiled_in_constants(name):
  """Runtime rates and weight decay change no bit of a run's parameters."""
  opt = small_config(**{"optimizer.name": name, "optimizer.learning_rate": 1e-3,
                        "optimizer.warmup_steps": 7, "optimizer.weight_decay": 0.1,
                        "optimizer.decay_fraction": 0.3, "optimizer.final_lr_fraction": 0.1,
                        "optimizer.muon.fallback_learning_rate": 1e-3}).optimizer
  axes = {"w": ("embed", "mlp"), "b": ("embed",)}
  injected, _ = optimizer_lib.make_optimizer(opt, 30, axes)
  runtime, static = optimizer_lib.runtime_hyperparams(opt, axes)
  constants = {k: optimizer_lib.make_schedule(opt, 30, peak=v) if k.endswith("learning_rate")
               else v for k, v in runtime.items()}
  assert len(constants) == (3 if name == "muon" else 2)  # rate(s) and weight decay
  compiled_in = optim.get_optimizer(name, **constants, **static)
  rng = np.random.default_rng(0)
  grads = [{"w": jnp.asarray(rng.normal(size=(8, 8)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=(8,)), jnp.float32)} for _ in range(30)]
  results = []
  for tx in (injected, compiled_in):
    # Parameters near the rates' scale, so a rate's last bit reaches them.
    params = {"w": jnp.full((8, 8), 1e-3), "b": jnp.full((8,), 1e-3)}
    state, update = tx.init(params), jax.jit(tx.update)
    for g in grads:
      updates, state = update(g, state, params)
      params = optax.apply_updates(params, updates)
    results.append(params)
  for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):
    np.testing.assert_array_equal(a, b)


def test_logged_learning_rate_is_the_applied_one_after_skipped_steps():
  """nan_policy="skip" keeps the optimizer's count while the step counter moves on."""
  cfg, graphdef, _, axes = _tiny_model()
  opt = small_config(**{"optimizer.name": "sign_sgd", "optimizer.weight_decay": 0.0,
                        "optimizer.warmup_steps": 6}).optimizer
  tx, learning_rate_fn = optimizer_lib.make_optimizer(opt, 12, axes)
  train_step = step_lib.make_train_step(graphdef, tx, learning_rate_fn, grad_accum=1)

  def poisoned(state, batch):  # a step whose loss comes out NaN when the batch says so
    new, metrics = train_step(state, {k: batch[k] for k in ("inputs", "targets")})
    return new, {**metrics, "loss": jnp.where(batch["poison"], jnp.nan, metrics["loss"])}

  step = jax.jit(preemption.guard_nonfinite(poisoned))
  state = step_lib.init_state(cfg, tx, jax.random.key(0))
  tokens = np.random.default_rng(0).integers(0, 64, (4, 9)).astype(np.int32)
  for i in range(9):
    poison = i in (1, 2, 3)
    new, metrics = step(state, {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
                                "poison": poison})
    if not poison:  # sign_sgd moves every coordinate with a gradient by exactly the rate
      applied = max(float(jnp.max(jnp.abs(a - b)))
                    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(state.params)))
      np.testing.assert_allclose(applied, float(metrics["learning_rate"]), rtol=1e-3)
    state = new
  assert int(state.step) == 9 and int(state.opt_state.count) == 6


_COMPILES = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, duration, **kw: _COMPILES.append(event)
    if event == "/jax/core/compile/backend_compile_duration" else None)


@pytest.mark.slow
def test_runs_differing_only_in_runtime_values_share_one_compiled_step():
  """Learning rate, weight decay and seed live in the state: one compile for all."""
  points = [{"optimizer.learning_rate": 1e-2}, {"optimizer.learning_rate": 3e-3},
            {"optimizer.learning_rate": 1e-3, "optimizer.weight_decay": 0.05, "train.seed": 1}]
  compiles, steps, rates = [], [], []
  for point in points:
    config = small_config(**{"train.grad_accum": 1, "model.num_layers": 1, **point})
    run = setup_lib.setup(config)
    with jax.set_mesh(run.mesh):
      state = run.init_state()
      rates.append(float(state.opt_state.hyperparams["learning_rate"].max()))  # its peak
      tokens = np.zeros((16, 32), np.int32)
      batch = {k: jax.device_put(tokens, run.batch_sharding) for k in ("inputs", "targets")}
      before = len(_COMPILES)
      _, metrics = run.train_step(state, batch)
      jax.block_until_ready(metrics)
    compiles.append(len(_COMPILES) - before)
    steps.append(run.train_step)
  assert compiles[0] >= 1 and compiles[1:] == [0] * (len(points) - 1), compiles
  assert all(s is steps[0] for s in steps)
  assert rates[:3] == pytest.approx([1e-2, 3e-3, 1e-3])  # each run's own peak, at runtime


@pytest.mark.slow
def test_a_run_writes_only_its_workdir_and_the_per_user_cache(tmp_path):
  """--workdir HOME/x: nothing lands outside the workdir but $XDG_CACHE_HOME/signflax/jax
  (~/.cache/... when unset; $JAX_COMPILATION_CACHE_DIR wins when set)."""
  import os  # noqa: PLC0415
  import subprocess  # noqa: PLC0415
  import sys  # noqa: PLC0415
  home, cwd = tmp_path / "home", tmp_path / "cwd"
  home.mkdir()
  cwd.mkdir()
  env = {k: v for k, v in os.environ.items()
         if k not in ("XDG_CACHE_HOME", "JAX_COMPILATION_CACHE_DIR")}
  env.update(HOME=str(home), JAX_PLATFORMS="cpu", PYTHONPATH=str(TINY_CONFIG.parents[3]))
  env.pop("XLA_FLAGS", None)
  args = {"model.num_layers": 1, "model.d_model": 32, "model.num_heads": 2,
          "model.max_seq_len": 32, "data.max_bytes": 200_000, "train.steps": 2,
          "optimizer.warmup_steps": 0,
          "train.global_batch_size": 4, "train.seq_len": 32, "train.eval_batches": 1,
          "checkpoint.async_save": False}
  cmd = [sys.executable, "-m", "signflax.cli", "train", "--workdir", "~/x"] + [
      f"--config.{k}={v!r}" for k, v in args.items()]
  # The CLI expands nothing itself: a shell would, so give it the expanded path.
  cmd[cmd.index("~/x")] = str(home / "x")
  result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  cache = home / ".cache" / "signflax" / "jax"
  written = sorted(p for p in tmp_path.rglob("*") if p.is_file())
  outside = [p for p in written if not (p.is_relative_to(home / "x") or p.is_relative_to(cache))]
  assert outside == [], outside
  assert any(p.is_relative_to(cache) for p in written)  # the cache was used
  assert (home / "x" / "checkpoints" / "2").is_dir() and not (tmp_path / ".jax_cache").exists()
