"""Mesh, logical->mesh rules, and the sharded step equal to the one-device step."""

import os
import pathlib
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from signflax import model as model_lib
from signflax import optim
from signflax import parallel
from signflax.train import optimizer as optimizer_lib
from signflax.train import step as step_lib

SHARDED = dict(data=2, fsdp=2, tensor=2)
ONE = dict(data=1, fsdp=1, tensor=1)


def test_resolve_mesh_shape():
  assert parallel.resolve_mesh_shape(dict(data=-1, fsdp=2, tensor=1), 8) == (4, 2, 1)
  assert parallel.resolve_mesh_shape(SHARDED, 8) == (2, 2, 2)
  with pytest.raises(ValueError, match=r"^config\.mesh: .* needs 4 devices, found 8"):
    parallel.resolve_mesh_shape(dict(data=2, fsdp=2, tensor=1), 8)
  with pytest.raises(ValueError, match=r"^config\.mesh: sizes must be positive"):
    parallel.resolve_mesh_shape(dict(data=-1, fsdp=-1, tensor=1), 8)


def test_logical_to_mesh_spec():
  mesh = parallel.make_mesh(SHARDED)
  assert parallel.logical_to_mesh_spec(("layers", "embed", "mlp")) == P(None, "fsdp", "tensor")
  assert parallel.logical_to_mesh_spec(("batch", "length")) == P(("data", "fsdp"), None)
  # a mesh axis is used once; an axis that does not divide the dimension is dropped
  assert parallel.logical_to_mesh_spec(("heads", "kv")) == P("tensor", None)
  assert parallel.logical_to_mesh_spec(("vocab", "embed"), shape=(63, 32), mesh=mesh) == \
      P(None, "fsdp")


def test_state_shardings_follow_params():
  mesh = parallel.make_mesh(SHARDED)
  params = {"layers": {"w": jnp.zeros((2, 8, 16))}, "scale": jnp.zeros((8,))}
  axes = {"layers": {"w": ("layers", "embed", "mlp")}, "scale": ("embed",)}
  state = (params, optax.adam(1e-3).init(params))
  shardings = parallel.state_shardings(state, axes, mesh)
  adam = shardings[1][0]
  assert adam.mu["layers"]["w"].spec == P(None, "fsdp", "tensor")
  assert adam.nu["scale"].spec == P("fsdp")
  assert adam.count.spec == P()


TINY = model_lib.TransformerConfig(vocab_size=64, num_layers=2, d_model=32, num_heads=4,
                                   num_kv_heads=2, max_seq_len=16)


def _opt_config(name):
  # Muon's Newton-Schulz in float32 (bf16 by default) and a larger AdamW eps: Adam's
  # first step is g / (|g| + eps) ~ sign(g), which turns float32 rounding of tiny
  # gradient coordinates into O(lr) differences; the test is about the step's numerics.
  config = optimizer_lib.default_optimizer_config()
  config.update(dict(name=name, learning_rate=1e-2, schedule="constant", warmup_steps=0))
  config.muon.ns_dtype = "float32"
  config.adamw.eps = 1e-4
  return config


def _one_step(mesh_sizes, devices, state, tx, schedule, graphdef, axes, batch, grad_accum,
              loss_chunk_len):
  mesh = parallel.make_mesh(mesh_sizes, devices)
  with jax.set_mesh(mesh):
    shardings = step_lib.state_shardings(TINY, tx, mesh, axes)
    step = step_lib.jit_train_step(
        step_lib.make_train_step(graphdef, tx, schedule, grad_accum=grad_accum,
                                 loss_chunk_len=loss_chunk_len), mesh, shardings)
    new_state, metrics = step(jax.device_put(state, shardings),
                              jax.device_put(batch, parallel.batch_sharding(mesh)))
  spec = new_state.params["layers"]["mlp"]["gate"].sharding.spec
  return jax.device_get(new_state), jax.device_get(metrics), spec


@pytest.mark.slow
@pytest.mark.parametrize("name,grad_accum,loss_chunk_len",
                         [(n, 1, 0) for n in optim.OPTIMIZERS] + [("adamw", 2, 0), ("sgd", 2, 4)])
def test_sharded_step_equals_single_device(name, grad_accum, loss_chunk_len):
  graphdef, _, axes = model_lib.abstract_model(TINY)
  tx, schedule = optimizer_lib.make_optimizer(_opt_config(name), 10, axes)
  state = jax.device_get(step_lib.init_state(TINY, tx, jax.random.key(0)))  # host copy
  tokens = np.random.default_rng(0).integers(0, 64, (8, 17)).astype(np.int32)
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
  args = (state, tx, schedule, graphdef, axes, batch, grad_accum, loss_chunk_len)

  ref, ref_metrics, _ = _one_step(ONE, jax.devices()[:1], *args)
  out, metrics, spec = _one_step(SHARDED, jax.devices(), *args)

  assert spec == P(None, "fsdp", "tensor")  # really sharded
  np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-6)
  np.testing.assert_allclose(metrics["grad_l2"], ref_metrics["grad_l2"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(out.params), jax.tree.leaves(ref.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(out.opt_state), jax.tree.leaves(ref.opt_state)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  if grad_accum > 1:
    np.testing.assert_allclose(metrics["noise_density"], ref_metrics["noise_density"], rtol=1e-4)


@pytest.mark.slow
def test_two_processes_reject_a_mesh_whose_batch_axes_do_not_span_them(tmp_path):
  """2 processes x 1 device with tensor=2: each process would feed rows nobody reads."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
         "PYTHONPATH": str(pathlib.Path(__file__).resolve().parent.parent)}
  procs = [subprocess.Popen(
      [sys.executable, "-m", "signflax.cli", "train", "--workdir", str(tmp_path / "run"),
       "--config.mesh.tensor=2", f"--config.distributed.coordinator_address=127.0.0.1:{port}",
       "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}"],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  for proc in procs:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("signflax train: error: config.mesh:")
    assert "tensor': 2" in lines[0] and "2 processes (1 device(s) each)" in lines[0]
  assert not (tmp_path / "run").exists()
