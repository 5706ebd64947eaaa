"""The transformer: logical axes on every parameter, shapes, causality, variants, FLOPs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from signflax import model as model_lib
from signflax.parallel import LOGICAL_AXIS_RULES

TINY = model_lib.TransformerConfig(vocab_size=64, num_layers=2, d_model=32, num_heads=4,
                                   max_seq_len=16)


def _tokens(batch=2, length=16, vocab=64, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, (batch, length)), jnp.int32)


def test_every_parameter_has_logical_axis_names():
  _, shapes, axes = model_lib.abstract_model(TINY)
  known = {name for name, _ in LOGICAL_AXIS_RULES}
  flat_shapes = jax.tree_util.tree_flatten_with_path(shapes)[0]
  flat_axes = jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, tuple))
  assert len(flat_shapes) == len(flat_axes) == 11
  for (path, shape), names in zip(flat_shapes, flat_axes):
    assert len(names) == len(shape.shape), (path, names, shape)
    assert all(n in known for n in names), (path, names)
    assert shape.dtype == jnp.float32
  assert axes["embed"] == ("vocab", "embed")
  assert axes["layers"]["attn"]["q"] == ("layers", "embed", "heads")
  assert axes["layers"]["mlp"]["down"] == ("layers", "mlp", "embed")
  assert shapes["layers"]["attn"]["q"].shape == (2, 32, 32)  # stacked over layers


def test_forward_shape_dtype_and_init_matches_abstract():
  graphdef, shapes, _ = model_lib.abstract_model(TINY)
  params = model_lib.init_params(TINY, jax.random.key(0))
  assert jax.tree.map(lambda x: x.shape, params) == jax.tree.map(lambda x: x.shape, shapes)
  logits = jax.jit(model_lib.apply, static_argnums=0)(graphdef, params, _tokens())
  assert logits.shape == (2, 16, 64) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))


def test_causal():
  graphdef, _, _ = model_lib.abstract_model(TINY)
  params = model_lib.init_params(TINY, jax.random.key(1))
  apply = jax.jit(model_lib.apply, static_argnums=0)
  tokens = _tokens(batch=1)
  changed = tokens.at[0, 9].set((tokens[0, 9] + 1) % 64)
  a, b = apply(graphdef, params, tokens), apply(graphdef, params, changed)
  np.testing.assert_allclose(a[0, :9], b[0, :9], atol=1e-6)
  assert np.abs(a[0, 9:] - b[0, 9:]).max() > 1e-4


@pytest.mark.parametrize("overrides", [
    dict(num_kv_heads=2, tie_embeddings=False),
    dict(remat="full", dtype="bfloat16", attention_impl="xla"),
])
def test_variants(overrides):
  cfg = model_lib.TransformerConfig(**{**TINY.__dict__, **overrides})
  graphdef, shapes, axes = model_lib.abstract_model(cfg)
  if not cfg.tie_embeddings:
    assert axes["lm_head"] == ("embed", "vocab")
    assert shapes["layers"]["attn"]["k"].shape == (2, 32, 16)  # 2 kv heads x 8
  params = model_lib.init_params(cfg, jax.random.key(0))
  loss = lambda p: jnp.mean(model_lib.apply(graphdef, p, _tokens()) ** 2)
  grads = jax.jit(jax.grad(loss))(params)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match=r"^config\.model\.num_kv_heads: 3 must divide"):
    model_lib.TransformerConfig(num_heads=4, num_kv_heads=3).check()
  with pytest.raises(ValueError, match=r"^config\.model\.remat: 'some'"):
    model_lib.TransformerConfig(remat="some").check()
  with pytest.raises(ValueError, match=r"^config\.model\.attention_impl: None is not one of "
                     r"auto, xla, cudnn, splash$"):
    model_lib.TransformerConfig(attention_impl=None).check()


def test_auto_attention_is_cudnn_only_where_it_can_run():
  """On CPU (and for float32 anywhere) "auto" is XLA's attention; explicit choices stand."""
  bf16 = model_lib.TransformerConfig(dtype="bfloat16")
  assert jax.default_backend() == "cpu"
  assert model_lib.attention_implementation(bf16) == "xla"
  assert not model_lib.cudnn_attention_supported(jnp.float32, 64)
  assert model_lib.attention_implementation(
      model_lib.TransformerConfig(dtype="bfloat16", attention_impl="cudnn")) == "cudnn"
  cfg = model_lib.TransformerConfig(**{**TINY.__dict__, "attention_impl": "auto"})
  xla = model_lib.TransformerConfig(**{**TINY.__dict__, "attention_impl": "xla"})
  params = model_lib.init_params(cfg, jax.random.key(0))
  a = model_lib.apply(model_lib.abstract_model(cfg)[0], params, _tokens())
  b = model_lib.apply(model_lib.abstract_model(xla)[0], params, _tokens())
  np.testing.assert_array_equal(a, b)


def test_flops_per_token_is_6n_plus_attention():
  _, shapes, axes = model_lib.abstract_model(TINY)
  norms = sum(s.size for s, a in zip(jax.tree.leaves(shapes),
                                      jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, tuple)))
              if a in (("embed",), ("layers", "embed")))
  matmul_params = sum(s.size for s in jax.tree.leaves(shapes)) - norms  # tied head counted once
  seq = 16
  expected = 6 * matmul_params + 12 * TINY.num_layers * TINY.num_heads * 8 * seq
  assert model_lib.flops_per_token(TINY, seq) == expected
