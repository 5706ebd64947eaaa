"""KV-cache decoding (signflax.model.decode): equal to full recompute, and the sampler's rules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from signflax import config_io
from signflax import model as model_lib
from signflax import parallel
from signflax.model import decode
from signflax.train import setup


def _model(**overrides):
  fields = dict(vocab_size=384, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2,
                max_seq_len=96, init_std=0.3)
  cfg = model_lib.TransformerConfig(**{**fields, **overrides})
  graphdef, shapes, axes = model_lib.abstract_model(cfg)
  return cfg, graphdef, shapes, axes, model_lib.init_params(cfg, jax.random.key(3))


def _greedy(graphdef, params, prompt, n, **kw):
  gen = jax.jit(lambda p, x: decode.generate(graphdef, p, x, jax.random.key(0),
                                             max_new_tokens=n, eos_id=10_000, **kw))
  return gen(params, prompt)


def test_cache_equals_recompute_on_one_device():
  # untied head, one key/value head for four query heads, head_dim != d_model / heads
  _, graphdef, _, _, params = _model(tie_embeddings=False, num_kv_heads=1, head_dim=8,
                                     rope_theta=500.0)
  prompt = np.random.RandomState(0).randint(0, 384, (2, 7)).astype(np.int32)
  out = _greedy(graphdef, params, prompt, 64)
  reference = decode.greedy_recompute(graphdef, params, prompt, 64)
  assert int(out.num_steps) == 64 and decode.STOP_REASONS[int(out.stop_reason)] == "max_new_tokens"
  np.testing.assert_array_equal(np.asarray(out.tokens), reference)
  assert len(np.unique(reference)) > 5   # a real test: the greedy path is not one token


@pytest.mark.slow
def test_cache_equals_recompute_on_eight_devices_with_fsdp():
  _, graphdef, shapes, axes, params = _model()
  mesh = parallel.make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
  assert mesh.shape["fsdp"] == 8
  sharded = jax.device_put(params, parallel.state_shardings(shapes, axes, mesh))
  assert sharded["layers"]["attn"]["q"].sharding.spec[1] == "fsdp"
  for rows in (1, 8):
    prompt = np.random.RandomState(rows).randint(0, 384, (rows, 5)).astype(np.int32)
    single = decode.greedy_recompute(graphdef, params, prompt, 64)
    with jax.set_mesh(mesh):
      out = _greedy(graphdef, sharded, prompt, 64)
      reference = decode.greedy_recompute(graphdef, sharded, prompt, 64)
    np.testing.assert_array_equal(np.asarray(out.tokens), reference)
    np.testing.assert_array_equal(reference, single)


def test_prefill_logits_equal_the_forward_pass():
  cfg, graphdef, _, _, params = _model()
  tokens = np.random.RandomState(1).randint(0, 384, (3, 11)).astype(np.int32)
  full = jax.jit(model_lib.apply, static_argnums=0)(graphdef, params, tokens)
  feed = jax.jit(lambda p, x, c: decode.forward_cached(nnx.merge(graphdef, p), x, c))
  logits, cache = feed(params, tokens[:, :6], decode.init_cache(cfg, 3, 20))
  np.testing.assert_allclose(logits, full[:, 5], atol=1e-5)
  for t in range(6, 11):   # then one token at a time
    logits, cache = feed(params, tokens[:, t:t + 1], cache)
    np.testing.assert_allclose(logits, full[:, t], atol=1e-5)
  assert int(cache.length) == 11


def test_stops_at_context_and_at_eos():
  cfg, graphdef, _, _, params = _model(max_seq_len=16)
  prompt = np.full((1, 10), 7, np.int32)
  out = _greedy(graphdef, params, prompt, 64)
  # the last token may be predicted from a full context: 16 - 10 + 1 tokens
  assert int(out.num_steps) == 7 and decode.STOP_REASONS[int(out.stop_reason)] == "context"
  first = int(decode.greedy_recompute(graphdef, params, prompt, 1)[0, 0])
  gen = jax.jit(lambda p, x: decode.generate(graphdef, p, x, jax.random.key(0),
                                             max_new_tokens=5, eos_id=first))
  out = gen(params, prompt)
  assert int(out.num_steps) == 1 and bool(out.finished[0])
  assert decode.STOP_REASONS[int(out.stop_reason)] == "eos"


def test_sampler_rules():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 4000))
  keys = jax.random.key(0)
  draw = lambda **kw: np.asarray(decode.sample_logits(logits, keys, **kw))
  assert set(draw(temperature=0.0)) == {0}
  assert set(draw(temperature=1.0, top_k=2)) == {0, 1}
  assert set(draw(temperature=1.0, top_p=0.7)) == {0, 1}     # 0.5 < 0.7 <= 0.8
  assert set(draw(temperature=1.0, top_p=0.5)) == {0}
  counts = np.bincount(draw(temperature=1.0), minlength=4) / 4000
  np.testing.assert_allclose(counts, [0.5, 0.3, 0.15, 0.05], atol=0.03)
  hot = np.bincount(draw(temperature=5.0), minlength=4) / 4000
  assert hot[3] > 0.15                                       # flatter at high temperature
  np.testing.assert_array_equal(draw(temperature=0.8, top_p=0.9),
                                draw(temperature=0.8, top_p=0.9))   # same key, same draws


def test_padded_vocab_is_never_drawn():
  _, graphdef, _, _, params = _model()
  gen = jax.jit(lambda p, x, k: decode.generate(graphdef, p, x, k, max_new_tokens=32,
                                                eos_id=10_000, temperature=2.0,
                                                vocab_limit=258))
  out = gen(params, np.zeros((4, 3), np.int32), jax.random.key(1))
  assert np.asarray(out.tokens).max() < 258


@pytest.mark.parametrize("name", [n for n in config_io.packaged_config_names()
                                  if n.startswith("lm/")])
def test_generate_traces_for_every_packaged_config(name):
  cfg = setup.transformer_config(config_io.load_config_file(name), vocab_size=258)
  graphdef, shapes, _ = model_lib.abstract_model(cfg)
  prompt = jax.ShapeDtypeStruct((2, 5), jnp.int32)
  out = jax.eval_shape(lambda p, x: decode.generate(graphdef, p, x, jax.random.key(0),
                                                    max_new_tokens=7, eos_id=0, temperature=0.7,
                                                    top_k=40, top_p=0.9), shapes, prompt)
  assert out.tokens.shape == (2, 7) and out.tokens.dtype == jnp.int32
