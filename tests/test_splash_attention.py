"""Splash attention (the Pallas TPU kernel, run here in interpret mode) against XLA's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from signflax import model as model_lib
from signflax import parallel
from signflax.model import transformer


def _qkv(dtype, b=1, t=256, h=4, kv=2, d=32, seed=0):
  kq, kk, kv_ = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(kq, (b, t, h, d), jnp.float32).astype(dtype),
          jax.random.normal(kk, (b, t, kv, d), jnp.float32).astype(dtype),
          jax.random.normal(kv_, (b, t, kv, d), jnp.float32).astype(dtype))


def _xla(q, k, v):
  return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla")


def _loss(attend):
  # A fixed random cotangent so every output element reaches the gradients.
  def loss(q, k, v):
    out = attend(q, k, v).astype(jnp.float32)
    w = jax.random.normal(jax.random.key(7), out.shape, jnp.float32)
    return jnp.sum(out * w)
  return loss


@pytest.mark.slow
@pytest.mark.parametrize("dtype,atol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_splash_matches_xla_forward_and_gradients(dtype, atol):
  """Causal GQA (4 query heads on 2 kv heads), two 128-blocks per sequence: the kernel
  skips the fully masked block. f32 to 1e-5; bf16 to bf16's resolution, in bf16."""
  q, k, v = _qkv(dtype)
  splash = lambda q, k, v: model_lib.splash_attention(q, k, v, interpret=True, block=128)
  out, ref = jax.jit(splash)(q, k, v), jax.jit(_xla)(q, k, v)
  assert out.dtype == dtype and out.shape == q.shape
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32),
                             atol=atol, rtol=atol)
  grads = jax.jit(jax.grad(_loss(splash), argnums=(0, 1, 2)))(q, k, v)
  ref_grads = jax.jit(jax.grad(_loss(_xla), argnums=(0, 1, 2)))(q, k, v)
  for name, g, r in zip("qkv", grads, ref_grads):
    assert g.dtype == dtype, name
    g, r = np.asarray(g, np.float32), np.asarray(r, np.float32)
    # Gradients sum over up to t terms: scale the tolerance by the gradient's size.
    np.testing.assert_allclose(g, r, atol=atol * max(1.0, np.abs(r).max()), rtol=atol,
                               err_msg=f"d{name}")


def test_splash_is_causal():
  """Changing the last position's keys and values leaves every earlier output alone."""
  q, k, v = _qkv(jnp.float32, h=2, kv=2)
  k2, v2 = k.at[:, -1].set(5.0), v.at[:, -1].set(-5.0)
  splash = jax.jit(lambda q, k, v: model_lib.splash_attention(q, k, v, interpret=True,
                                                              block=128))
  a, b = splash(q, k, v), splash(q, k2, v2)
  np.testing.assert_array_equal(np.asarray(a[:, :-1]), np.asarray(b[:, :-1]))
  assert not np.allclose(np.asarray(a[:, -1]), np.asarray(b[:, -1]))


def test_splash_under_a_mesh_shards_batch_and_heads():
  """Under a (data 2, fsdp 2, tensor 2) mesh the kernel runs per shard (shard_map) and
  still equals XLA attention."""
  mesh = parallel.make_mesh(dict(data=2, fsdp=2, tensor=2), jax.devices()[:8])
  q, k, v = _qkv(jnp.float32, b=4, t=128)
  with jax.set_mesh(mesh):
    out = jax.jit(lambda q, k, v: model_lib.splash_attention(q, k, v, interpret=True))(q, k, v)
  np.testing.assert_allclose(np.asarray(out), np.asarray(_xla(q, k, v)), atol=1e-5, rtol=1e-5)


def test_auto_picks_splash_on_tpu_only():
  cfg = model_lib.TransformerConfig(dtype="bfloat16", attention_impl="auto")
  assert model_lib.target_platform() == "cpu"
  assert model_lib.attention_implementation(cfg) == "xla"
  assert model_lib.attention_implementation(
      model_lib.TransformerConfig(attention_impl="splash")) == "splash"
  assert "splash" in transformer.ATTENTION_IMPLEMENTATIONS
  with pytest.raises(ValueError, match="multiple of 128, got 96"):
    model_lib.splash_attention(*_qkv(jnp.float32, t=96), interpret=True)


@pytest.mark.slow
def test_model_with_splash_equals_model_with_xla():
  """The whole tiny model: same logits with attention_impl splash (interpret) and xla."""
  base = dict(vocab_size=64, num_layers=1, d_model=64, num_heads=2, max_seq_len=128)
  tokens = jax.random.randint(jax.random.key(1), (1, 128), 0, 64)
  params = model_lib.init_params(model_lib.TransformerConfig(**base), jax.random.key(0))
  outs = {}
  for impl in ("xla", "splash"):
    graphdef, _, _ = model_lib.abstract_model(
        model_lib.TransformerConfig(**base, attention_impl=impl))
    outs[impl] = jax.jit(lambda p, t: model_lib.apply(graphdef, p, t))(params, tokens)
  np.testing.assert_allclose(np.asarray(outs["splash"]), np.asarray(outs["xla"]),
                             atol=1e-4, rtol=1e-4)
