"""signflax.train.loss: the fused linear + cross entropy equals the plain path, with less memory."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from signflax.train.loss import cross_entropy, linear_cross_entropy

B, T, D, V = 4, 64, 32, 300


def make_inputs(b=B, t=T, d=D, v=V, dtype=jnp.float32, seed=0):
  kh, kw, ky = jax.random.split(jax.random.key(seed), 3)
  hidden = jax.random.normal(kh, (b, t, d), jnp.float32).astype(dtype)
  head = jax.random.normal(kw, (d, v), jnp.float32) / np.sqrt(d)
  targets = jax.random.randint(ky, (b, t), 0, v, jnp.int32)
  return hidden, head, targets


def plain(hidden, head, targets):
  return cross_entropy((hidden @ head.astype(hidden.dtype)).astype(jnp.float32), targets)


@functools.cache
def fused(chunk_len):
  return lambda hidden, head, targets: linear_cross_entropy(
      hidden, head, targets, chunk_len=chunk_len)


@functools.cache
def jitted_value_and_grad(fn):
  return jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))


def loss_and_grads(fn, hidden, head, targets):
  return jitted_value_and_grad(fn)(hidden, head, targets)


def rel_err(a, b):
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("chunk_len", [T, T // 4, 8, 1])
def test_float32_matches_plain(chunk_len):
  hidden, head, targets = make_inputs()
  loss, (dh, dw) = loss_and_grads(fused(chunk_len), hidden, head, targets)
  ref, (ref_dh, ref_dw) = loss_and_grads(plain, hidden, head, targets)
  assert loss.dtype == jnp.float32 and dh.dtype == hidden.dtype and dw.dtype == head.dtype
  np.testing.assert_allclose(loss, ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(dh, ref_dh, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(dw, ref_dw, rtol=1e-5, atol=1e-6)
  # the undifferentiated (eval) path: the primal scan
  np.testing.assert_allclose(jax.jit(fused(chunk_len))(hidden, head, targets), ref,
                             rtol=1e-5, atol=1e-6)


def test_cross_entropy_is_mean_lse_minus_target_logit():
  hidden, head, targets = make_inputs()
  z = np.asarray(hidden @ head, np.float64)
  lse = np.log(np.sum(np.exp(z - z.max(-1, keepdims=True)), -1)) + z.max(-1)
  want = np.mean(lse - np.take_along_axis(z, np.asarray(targets)[..., None], -1)[..., 0])
  np.testing.assert_allclose(plain(hidden, head, targets), want, rtol=1e-5)


@pytest.mark.parametrize("chunk_len", [T, 16])
def test_bfloat16_matches_plain(chunk_len):
  hidden, head, targets = make_inputs(dtype=jnp.bfloat16)
  loss, (dh, dw) = loss_and_grads(fused(chunk_len), hidden, head, targets)
  ref, (ref_dh, ref_dw) = loss_and_grads(plain, hidden, head, targets)
  assert dh.dtype == jnp.bfloat16 and dw.dtype == jnp.float32
  np.testing.assert_allclose(loss, ref, rtol=1e-3)
  assert rel_err(dh, ref_dh) < 2e-2
  assert rel_err(dw, ref_dw) < 2e-2
  np.testing.assert_allclose(jax.jit(fused(chunk_len))(hidden, head, targets), ref, rtol=1e-3)


def test_cotangent_scales_gradients():
  hidden, head, targets = make_inputs()
  loss, (dh, dw) = loss_and_grads(fused(16), hidden, head, targets)
  loss3, (dh3, dw3) = jax.jit(jax.value_and_grad(lambda *a: 3.0 * fused(16)(*a), argnums=(0, 1)))(
      hidden, head, targets)
  np.testing.assert_allclose(loss3, 3 * loss, rtol=1e-6)
  np.testing.assert_allclose(dh3, 3 * dh, rtol=1e-6, atol=1e-9)
  np.testing.assert_allclose(dw3, 3 * dw, rtol=1e-6, atol=1e-9)
  # grad w.r.t. hidden alone, integer targets passed through
  np.testing.assert_allclose(jax.grad(fused(16))(hidden, head, targets), dh, rtol=1e-6)


@pytest.mark.parametrize("chunk_len", [0, -8, 48, 65])
def test_bad_chunk_len(chunk_len):
  hidden, head, targets = make_inputs()
  with pytest.raises(ValueError, match=rf"^chunk_len: {chunk_len} must .* sequence length {T}"):
    linear_cross_entropy(hidden, head, targets, chunk_len=chunk_len)


def batch_sharded_inputs():
  """(mesh, rows sharding, batch-sharded inputs, unsharded reference loss and grads)."""
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  hidden, head, targets = make_inputs(b=16)
  reference = loss_and_grads(fused(16), hidden, head, targets)
  rows = NamedSharding(mesh, P("data"))
  args = (jax.device_put(hidden, rows), jax.device_put(head, NamedSharding(mesh, P())),
          jax.device_put(targets, rows))
  return mesh, rows, args, reference


def assert_matches(result, reference, dw_atol=1e-7):
  (loss, (dh, dw)), (ref, (ref_dh, ref_dw)) = result, reference
  np.testing.assert_allclose(loss, ref, rtol=1e-6)
  np.testing.assert_allclose(dh, ref_dh, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(dw, ref_dw, rtol=1e-5, atol=dw_atol)


def test_sharded_matches_unsharded():
  _, rows, args, reference = batch_sharded_inputs()
  result = loss_and_grads(fused(16), *args)
  assert result[1][0].sharding.is_equivalent_to(rows, 3)
  assert_matches(result, reference)


def test_under_a_mesh_the_head_gradient_is_reduced_once_not_per_chunk():
  """The scan's body holds no all-reduce: per-device partial sums, one reduction after."""
  mesh, _, args, reference = batch_sharded_inputs()
  with jax.set_mesh(mesh):
    step = jax.jit(jax.value_and_grad(fused(8), argnums=(0, 1)))
    hlo = step.lower(*args).compile().as_text()
    result = step(*args)
  body_name = re.search(r" while\(.*body=(%[\w.\-]+)", hlo).group(1)
  body = hlo[hlo.index(f"\n{body_name} "):].split("\n}\n", 1)[0]
  in_body = re.findall(r"= ([^=]+?) all-reduce\(", body)
  assert all(shape == "f32[]" for shape in in_body), in_body  # the loss sum only
  assert re.search(r"= f32\[32,300\]\S* all-reduce\(", hlo)  # dL/dhead: once, after the scan
  assert_matches(result, reference, dw_atol=1e-6)


def temp_bytes(fn, *args):
  compiled = jax.jit(jax.value_and_grad(fn, argnums=(0, 1))).lower(*args).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_fused_temp_memory_is_a_fraction_of_plain():
  shapes = (jax.ShapeDtypeStruct((8, 512, 64), jnp.float32),
            jax.ShapeDtypeStruct((64, 4096), jnp.float32),
            jax.ShapeDtypeStruct((8, 512), jnp.int32))
  plain_bytes, fused_bytes = temp_bytes(plain, *shapes), temp_bytes(fused(64), *shapes)
  assert fused_bytes < plain_bytes / 3, f"fused {fused_bytes} vs plain {plain_bytes} bytes"
