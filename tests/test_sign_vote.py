"""parallel.sign_vote: the 1-bit majority vote equals its one-host reference bit for bit,
sends 1/16 of a bf16 all-reduce along `data`, and trains, resumes and spans processes."""

import dataclasses
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
from jax.sharding import NamedSharding, PartitionSpec as P

from signflax import model as model_lib
from signflax import parallel
from signflax.parallel import sign_vote
from signflax.train import optimizer as optimizer_lib
from signflax.train import step as step_lib
from signflax.train import trainer

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
import comm_bench  # noqa: E402

MESHES = [dict(data=8), dict(data=4, fsdp=2)]
TINY = model_lib.TransformerConfig(vocab_size=64, num_layers=2, d_model=32, num_heads=4,
                                   num_kv_heads=2, max_seq_len=16)
LR = 2.0 ** -5  # a power of two: -lr * vote is exact


def test_pack_unpack_roundtrip_and_bad_inputs():
  bits = np.random.default_rng(0).random((3, 24)) < 0.5
  packed = sign_vote.pack(jnp.asarray(bits))
  assert packed.dtype == jnp.uint8 and packed.shape == (3, 3)
  np.testing.assert_array_equal(sign_vote.unpack(packed), bits)
  with pytest.raises(ValueError, match=r"^bits: the last axis must be a multiple of 8"):
    sign_vote.pack(jnp.zeros(12, bool))
  mesh = parallel.make_mesh(dict(data=8))
  with pytest.raises(ValueError, match=r"^directions: every leaf needs a leading axis of 8"):
    sign_vote.vote({"w": jnp.zeros((4, 3))}, {"w": P()}, mesh=mesh, step=0)
  with pytest.raises(ValueError, match=r"^exchange: 'ring' is not one of all_to_all"):
    sign_vote.vote({"w": jnp.zeros((8, 3))}, {"w": P()}, mesh=mesh, step=0, exchange="ring")


def test_zero_and_tie_rules():
  """Zeros vote +1 on replicas with r + t odd; a tied count gives +1 on even steps, -1 on odd."""
  assert bool(sign_vote.sign_bits(jnp.float32(0), 1, 0)) and \
      not bool(sign_vote.sign_bits(jnp.float32(0), 1, 1))
  counts = jnp.array([0, 3, 4, 5, 8])
  np.testing.assert_array_equal(sign_vote.majority(counts, 8, 0), [0, 0, 1, 1, 1])
  np.testing.assert_array_equal(sign_vote.majority(counts, 8, 1), [0, 0, 0, 1, 1])
  # an all-zero coordinate oscillates instead of drifting: +1, -1, +1, ...
  zeros = {"w": np.zeros((4, 1), np.float32)}
  assert [int(sign_vote.reference_vote(zeros, t)["w"][0]) for t in range(4)] == [1, -1, 1, -1]


@pytest.mark.parametrize("sizes", MESHES + [dict(data=2, fsdp=2, tensor=2),
                                   dict(data=1, fsdp=2, tensor=4)],
                         ids=lambda s: "x".join(map(str, s.values())))
def test_vote_is_bit_identical_to_the_reference(sizes):
  mesh = parallel.make_mesh(sizes)
  r = mesh.shape["data"]
  rng = np.random.default_rng(1)
  # few distinct values: many ties (count = R/2) and exact zeros; odd sizes need padding
  tree = {"w": rng.integers(-1, 2, (r, 4, 16)).astype(np.float32),
          "b": rng.normal(size=(r, 37)).astype(jnp.bfloat16),
          "s": rng.integers(-1, 2, (r, 2, 8, 6)).astype(np.float32)}
  specs = {"w": P("fsdp", "tensor"), "b": P(), "s": P(None, "fsdp")}
  with jax.set_mesh(mesh):
    stacked = jax.tree.map(lambda a, s: jax.device_put(a, NamedSharding(mesh, P("data", *s))),
                           tree, specs)
    for exchange in sign_vote.EXCHANGES:
      run = jax.jit(lambda x, t, e=exchange: sign_vote.vote(x, specs, mesh=mesh, step=t,
                                                           exchange=e))
      for t in (0, 1):
        out, want = run(stacked, t), sign_vote.reference_vote(tree, t)
        for k in tree:
          assert out[k].dtype == tree[k].dtype
          np.testing.assert_array_equal(np.asarray(out[k]), want[k], err_msg=f"{k} {t}")
  ties = np.sum(np.sign(tree["w"]), axis=0) == 0
  assert ties.any()
  assert out["w"].sharding.is_equivalent_to(NamedSharding(mesh, specs["w"]), 2)


def _opt_config(name):
  config = optimizer_lib.default_optimizer_config()
  config.update(dict(name=name, learning_rate=LR, schedule="constant", warmup_steps=0,
                     weight_decay=0.0))
  return config


def _batch(mesh, rows=16):
  tokens = np.random.default_rng(0).integers(0, 64, (rows, 17)).astype(np.int32)
  host = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
  return host, jax.device_put(host, parallel.batch_sharding(mesh))


@pytest.mark.slow
@pytest.mark.parametrize("sizes", MESHES, ids=["data8", "data4_fsdp2"])
def test_voted_update_equals_reference_from_per_replica_gradients(sizes):
  """The step's per-replica gradients are each replica's own rows' gradient; the update
  the optimizer makes from them is -lr * (one-host vote), bit for bit, ties included."""
  mesh = parallel.make_mesh(sizes)
  r = mesh.shape["data"]
  graphdef, shapes, axes = model_lib.abstract_model(TINY)
  tx, _ = step_lib.make_sign_vote_optimizer(_opt_config("signum"), 10, axes, shapes, mesh)
  host_batch, batch = _batch(mesh)
  loss_fn = step_lib.make_loss_fn(graphdef)
  gradients = lambda p, b: (*jax.value_and_grad(loss_fn)(p, b), {})
  with jax.set_mesh(mesh):
    state, shardings = step_lib.create_sharded_state(TINY, tx, mesh, axes, 0)
    momentum = state.opt_state.local[sign_vote.PER_REPLICA].momentum
    assert momentum["layers"]["mlp"]["gate"].sharding.spec[0] == "data"
    _, stacked = jax.jit(lambda p, b: step_lib.per_replica_gradients(gradients, p, b))(
        state.params, batch)
    updates, _ = jax.jit(tx.update)(stacked, state.opt_state, state.params)
  params = jax.device_get(state.params)

  # each replica's gradient is that of its contiguous block of rows (data is the major axis)
  rows = 16 // r
  for i in (0, r - 1):
    block = jax.tree.map(lambda x: x[i * rows:(i + 1) * rows], host_batch)
    want = jax.jit(jax.grad(loss_fn))(params, block)
    for a, b in zip(jax.tree.leaves(stacked), jax.tree.leaves(want)):
      np.testing.assert_allclose(np.asarray(a[i]), b, rtol=2e-4, atol=1e-6)

  # first Signum step: m = (1 - beta) g, same signs as g; vote on the step's own gradients
  host_stacked = jax.device_get(stacked)
  votes = sign_vote.reference_vote(jax.tree.map(lambda g: 0.1 * g, host_stacked), 0)
  for u, v in zip(jax.tree.leaves(jax.device_get(updates)), jax.tree.leaves(votes)):
    np.testing.assert_array_equal(u, -LR * v)
  counts = [np.sum(np.sign(g), axis=0) for g in jax.tree.leaves(host_stacked)]
  assert any((c == 0).any() for c in counts)  # real ties occurred and were checked


HLO_MODEL = dataclasses.replace(TINY, d_model=64)  # every size a multiple of 64: no padding


def _step_hlo(exchange, optimizer="sign_sgd"):
  mesh = parallel.make_mesh(dict(data=8))
  graphdef, shapes, axes = model_lib.abstract_model(HLO_MODEL)
  if exchange == "sign_vote":
    tx, schedule = step_lib.make_sign_vote_optimizer(_opt_config(optimizer), 10, axes, shapes,
                                                     mesh)
  else:
    tx, schedule = optimizer_lib.make_optimizer(_opt_config(optimizer), 10, axes)
  with jax.set_mesh(mesh):
    state, shardings = step_lib.create_sharded_state(HLO_MODEL, tx, mesh, axes, 0)
    step = step_lib.jit_train_step(step_lib.make_train_step(
        graphdef, tx, schedule, gradient_exchange=exchange), mesh, shardings)
    hlo = step.lower(state, _batch(mesh)[1]).compile().as_text()
  num_params = sum(x.size for x in jax.tree.leaves(shapes))
  return comm_bench.collectives(hlo, mesh), num_params


@pytest.mark.slow
def test_compiled_step_sends_a_sixteenth_of_a_bf16_all_reduce_along_data():
  records, num_params = _step_hlo("sign_vote")
  assert num_params % 64 == 0  # no padding: the bound below is exact
  bf16 = sign_vote.all_reduce_bytes(num_params, 8, bytes_per_param=2)
  along_data = [r for r in records if "data" in r["axes"]]
  floats = [r for r in along_data if set(r["dtypes"]) & set(comm_bench.FLOAT_DTYPES)]
  ints = [r for r in along_data if r not in floats]
  assert {r["kind"] for r in ints} == {"all-to-all", "all-gather"}
  assert all(r["dtypes"] == ["u8"] for r in ints)
  assert sum(r["sent_bytes"] for r in ints) <= bf16 / 16
  assert sum(r["sent_bytes"] for r in ints) == sign_vote.exchange_bytes(num_params, 8)
  # what floats remain along data are the scalar metrics
  assert floats and all(r["kind"] == "all-reduce" and r["max_elements"] == 1 for r in floats)
  # while the mean step all-reduces every gradient in float32 along data
  mean, _ = _step_hlo("mean")
  mean_float = sum(r["sent_bytes"] for r in mean if "data" in r["axes"])
  assert mean_float >= sign_vote.all_reduce_bytes(num_params, 8, bytes_per_param=4)


@pytest.mark.parametrize("exchange,optimizer,message", [
    ("sign_vote", "adamw", r"^config\.train\.gradient_exchange: 'sign_vote' needs "
                           r"config\.optimizer\.name in sign_sgd, signum, got 'adamw'$"),
    ("vote", "signum", r"^config\.train\.gradient_exchange: 'vote' is not one of mean, "
                       r"sign_vote$"),
    ("sign_vote", "signum", None),
    ("sign_vote", "sign_sgd", None),
])
def test_config_accepts_sign_vote_only_for_sign_sgd_and_signum(exchange, optimizer, message):
  config = trainer_config()
  with config.unlocked():
    config.train.gradient_exchange = exchange
    config.optimizer.name = optimizer
  if message is None:
    trainer.validate(config)
  else:
    with pytest.raises(ValueError, match=message):
      trainer.validate(config)


def trainer_config():
  from signflax import config_io  # noqa: PLC0415
  config = config_io.load_config_file(REPO / "signflax" / "configs" / "lm" / "tiny.py")
  with config.unlocked():
    config.data.max_bytes = 200_000
  return config


# ---- end to end: the trainer in subprocesses (4 devices, data=4) ----

STEPS = 12
ARGS = {
    "model.num_layers": 2, "model.d_model": 64, "model.max_seq_len": 32,
    "optimizer.name": "signum", "optimizer.learning_rate": 1e-3, "optimizer.warmup_steps": 2,
    "data.max_bytes": 300_000, "train.gradient_exchange": "sign_vote",
    "train.steps": STEPS, "train.global_batch_size": 8, "train.seq_len": 32,
    "train.log_every": 1, "train.eval_every": 0, "train.eval_batches": 1,
    "checkpoint.every_steps": 4, "mesh.data": -1,
}
COMPARED = ("step_loss", "replica_grad_l2", "param_l2", "update_rms")


def _argv(workdir, overrides=None):
  args = {**ARGS, **(overrides or {})}
  return ["train", "--workdir", str(workdir)] + [f"--config.{k}={v!r}" for k, v in args.items()]


def _env(devices):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  env.pop("JAX_COORDINATOR_ADDRESS", None)
  return env


def _start(workdir, devices=4, overrides=None):
  return subprocess.Popen([sys.executable, "-m", "signflax.cli"] + _argv(workdir, overrides),
                          cwd=REPO, env=_env(devices), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _records(workdir):
  merged = {}
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    record = json.loads(line)
    merged.setdefault(record["step"], {}).update(record)
  return {s: {k: r[k] for k in COMPARED} for s, r in merged.items() if s >= 1}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("vote_reference")
  proc = _start(workdir)
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-2000:]
  return workdir, _records(workdir)


@pytest.mark.slow
def test_kill_and_resume_with_sign_vote_is_exact(reference, tmp_path):
  _, expected = reference
  assert len(expected) == STEPS and expected[STEPS]["step_loss"] < expected[1]["step_loss"]
  proc = _start(tmp_path)
  while proc.poll() is None and not (tmp_path / "checkpoints" / "4").is_dir():
    time.sleep(0.01)  # kill -9 once the step-4 checkpoint is committed
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=60)
  resumed = _start(tmp_path)
  _, err = resumed.communicate(timeout=600)
  assert resumed.returncode == 0, err[-2000:]
  assert "resumed from the checkpoint at step" in err
  assert _records(tmp_path) == expected  # bit-identical, per-replica momenta included


@pytest.mark.slow
def test_restore_onto_another_data_size_is_a_one_line_error(reference, tmp_path):
  shutil.copytree(reference[0], tmp_path / "run")
  proc = _start(tmp_path / "run", devices=2)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 2
  lines = [l for l in err.splitlines() if "error:" in l]
  assert len(lines) == 1 and "per_replica" in lines[0] and "[4," in lines[0] \
      and "[2," in lines[0], err[-2000:]


@pytest.mark.slow
def test_two_processes_give_the_losses_of_one(reference, tmp_path):
  _, expected = reference
  env = dict(_env(2), DEVICES_PER_PROCESS="2",
             SIGNFLAX=f"{sys.executable} -m signflax.cli")
  proc = subprocess.run(["bash", str(REPO / "launch" / "local_multiprocess.sh"), "2"]
                        + _argv(tmp_path)[1:], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:]
  got = _records(tmp_path)
  for step in range(1, STEPS + 1):
    # the same votes, so the same parameters bit for bit; the logged loss is a float mean
    # over replicas, summed in another order by gloo
    assert got[step]["param_l2"] == expected[step]["param_l2"]
    assert got[step]["update_rms"] == expected[step]["update_rms"]
    np.testing.assert_allclose(got[step]["step_loss"], expected[step]["step_loss"], rtol=1e-6)


def _eval_losses(workdir):
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return {r["step"]: r["eval_loss"] for r in map(json.loads, lines) if "eval_loss" in r}


@pytest.mark.slow
def test_sign_vote_learns_about_as_fast_as_the_mean(reference, tmp_path):
  """Same steps, same data: the vote makes at least 80% of the mean exchange's progress."""
  proc = _start(tmp_path, overrides={"train.gradient_exchange": "mean"})
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-2000:]
  vote, mean = _eval_losses(reference[0]), _eval_losses(tmp_path)
  assert vote[0] == mean[0]
  assert vote[0] - vote[STEPS] >= 0.8 * (mean[0] - mean[STEPS]) > 0, (vote, mean)
