"""Gram Newton-Schulz: the standard iteration's polynomial through the small Gram matrix."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import signflax.optim as sfo
from signflax.optim import _muon


def conditioned(m, n, cond, seed=0):
  """(x, exact): an m x n matrix with singular values log-spaced in [1/cond, 1], and the
  exact result of 5 quintic steps on it (the polynomial applied to its singular values)."""
  rng = np.random.default_rng(seed)
  k = min(m, n)
  u, _ = np.linalg.qr(rng.standard_normal((m, k)))
  v, _ = np.linalg.qr(rng.standard_normal((n, k)))
  sig = np.logspace(0, -np.log10(cond), k)
  s = sig / np.sqrt(np.sum(sig ** 2))
  for a, b, c in [_muon._QUINTIC] * 5:
    s = a * s + b * s ** 3 + c * s ** 5
  return (u * sig) @ v.T, (u * s) @ v.T


def error(x, exact, **kwargs):
  """Spectral-norm distance of the orthogonalized x from the exact polynomial."""
  y = sfo.orthogonalize(jnp.asarray(x, jnp.float32), **kwargs)
  return float(np.linalg.norm(np.asarray(y, np.float64) - exact, 2))


@pytest.mark.parametrize("shape", [(16, 48), (48, 16), (3, 8, 40), (2, 2, 24, 24)])
@pytest.mark.parametrize("coeffs, steps", [("quintic", 5), ("polar_express", 5),
                                           ("polar_express", 8), ("quintic", 1)])
def test_gram_equals_standard_in_float32(shape, coeffs, steps):
  x = jax.random.normal(jax.random.key(0), shape)
  kw = dict(coeffs=coeffs, steps=steps, dtype=jnp.float32)
  standard = sfo.orthogonalize(x, impl="standard", **kw)
  for restart_every in (0, 2, None):
    gram = sfo.orthogonalize(x, impl="gram", gram_restart_every=restart_every, **kw)
    assert gram.shape == x.shape and gram.dtype == x.dtype
    np.testing.assert_allclose(gram, standard, atol=3e-4, rtol=1e-3)


def test_gram_with_an_explicit_table_and_zero_input():
  table = np.asarray([[3.0, -3.2, 1.2], [2.0, -1.5, 0.5], [1.875, -1.25, 0.375]])
  x = jax.random.normal(jax.random.key(1), (12, 40))
  kw = dict(coeffs=table, steps=None, dtype=jnp.float32)
  np.testing.assert_allclose(sfo.orthogonalize(x, impl="gram", **kw),
                             sfo.orthogonalize(x, impl="standard", **kw), atol=2e-5, rtol=1e-4)
  zero = sfo.orthogonalize(jnp.zeros((2, 8, 32)), impl="gram")
  assert not np.any(zero) and np.all(np.isfinite(zero))


@pytest.mark.parametrize("cond", [1.0, 10.0, 1e2, 1e3])
def test_orthogonality_error_bounds(cond):
  """The bounds docs/muon_gram.md states, on a 128 x 512 matrix (5 quintic steps,
  spectral norm against the exact polynomial): float32 Gram <= 1e-3; bfloat16 Gram
  (restarted every 3 steps, the default) <= 1.5x the standard iteration's error + 0.02."""
  x, exact = conditioned(128, 512, cond)
  f32 = dict(dtype=jnp.float32)
  assert error(x, exact, impl="standard", **f32) < 1e-4
  assert error(x, exact, impl="gram", **f32) < 1e-3
  bf16_standard = error(x, exact, impl="standard", dtype=jnp.bfloat16)
  bf16_gram = error(x, exact, impl="gram", dtype=jnp.bfloat16)
  assert bf16_standard < 0.3
  assert bf16_gram <= 1.5 * bf16_standard + 0.02


def test_bfloat16_gram_without_restarts_is_unsafe_at_condition_100():
  """Where bfloat16 Gram NS is not safe: never re-formed, R's rounding errors put
  eigenvalues below zero and the polynomial drives them away (error >> 1); one restart
  brings it back to the standard iteration's level."""
  x, exact = conditioned(128, 512, 1e3)
  assert error(x, exact, impl="gram", dtype=jnp.bfloat16, gram_restart_every=0) > 1.0
  assert error(x, exact, impl="gram", dtype=jnp.bfloat16, gram_restart_every=3) < 0.3


def test_auto_chooses_by_aspect_ratio():
  assert not sfo.uses_gram((64, 64), "auto") and sfo.uses_gram((64, 64), "gram")
  assert sfo.uses_gram((7, 64, 64 * 2), "auto") and sfo.uses_gram((64 * 2, 64), "auto")
  assert not sfo.uses_gram((64, 64 * 2), "standard")
  edge = int(64 * _muon.GRAM_MIN_ASPECT)
  assert sfo.uses_gram((64, edge), "auto") and not sfo.uses_gram((64, edge - 1), "auto")
  # auto runs exactly one of the two, per leaf
  g = {"square": jax.random.normal(jax.random.key(2), (16, 16)),
       "wide": jax.random.normal(jax.random.key(3), (16, 64))}
  update = lambda impl: sfo.scale_by_muon(ns_impl=impl, ns_dtype="float32").update(
      g, sfo.scale_by_muon(ns_dtype="float32").init(g))[0]
  auto, gram, standard = update("auto"), update("gram"), update("standard")
  np.testing.assert_array_equal(auto["square"], standard["square"])
  np.testing.assert_array_equal(auto["wide"], gram["wide"])


@pytest.mark.parametrize("bad", ["Gram", "fast", None, 1])
def test_bad_ns_impl_names_the_argument(bad):
  with pytest.raises(ValueError, match="ns_impl"):
    sfo.muon(0.02, ns_impl=bad)
  with pytest.raises(ValueError, match="impl"):
    sfo.orthogonalize(jnp.ones((4, 8)), impl=bad)


@pytest.mark.parametrize("bad", [-1, 1.5, "3"])
def test_bad_gram_restart_every_names_the_argument(bad):
  with pytest.raises((ValueError, TypeError), match="gram_restart_every"):
    sfo.orthogonalize(jnp.ones((4, 8)), impl="gram", gram_restart_every=bad)
