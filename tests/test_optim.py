"""signflax.optim: agreement with optax, Newton-Schulz accuracy, routing, schedules, sharding."""

import math
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
from optax.contrib import _muon as optax_muon
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import signflax.optim as sfo


def random_tree(seed=0, dtype=jnp.float32):
  keys = jax.random.split(jax.random.key(seed), 4)
  return {
      "w": jax.random.normal(keys[0], (8, 16), dtype),
      "b": jax.random.normal(keys[1], (16,), dtype),
      "nested": {"stack": jax.random.normal(keys[2], (3, 16, 4), dtype),
                 "scalar": jax.random.normal(keys[3], (), dtype)},
  }


def run_steps(tx, grads_seq, params):
  state = tx.init(params)
  outs = []
  for g in grads_seq:
    u, state = tx.update(g, state, params)
    outs.append(u)
    params = optax.apply_updates(params, u)
  return outs, params


def assert_trees_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


GRADS = [random_tree(s) for s in range(1, 6)]
PARAMS = random_tree(100)


# --- sign_sgd / signum ------------------------------------------------------------------


@pytest.mark.parametrize("lr", [1e-2, optax.linear_schedule(1e-2, 1e-3, 5)])
def test_sign_sgd_bit_identical_to_optax(lr):
  ours, _ = run_steps(sfo.sign_sgd(lr), GRADS, PARAMS)
  ref, _ = run_steps(optax.sign_sgd(lr), GRADS, PARAMS)
  assert_trees_equal(ours, ref)


@pytest.mark.parametrize("beta", [0.0, 0.9, 0.99])
def test_signum_bit_identical_to_optax(beta):
  ours, _ = run_steps(sfo.signum(3e-3, beta), GRADS, PARAMS)
  ref, _ = run_steps(optax.signum(3e-3, beta), GRADS, PARAMS)
  assert_trees_equal(ours, ref)


def test_weight_decay_is_decoupled():
  lr, wd = 0.1, 0.05
  (u_sign,), _ = run_steps(sfo.sign_sgd(lr, weight_decay=wd), GRADS[:1], PARAMS)
  expected = jax.tree.map(lambda g, p: -lr * (jnp.sign(g) + wd * p), GRADS[0], PARAMS)
  assert_trees_close(u_sign, expected)
  beta = 0.9
  (u1, u2), _ = run_steps(sfo.signum(lr, beta, weight_decay=wd), GRADS[:2], PARAMS)
  p1 = optax.apply_updates(PARAMS, u1)
  m2 = jax.tree.map(lambda g1, g2: beta * (1 - beta) * g1 + (1 - beta) * g2, *GRADS[:2])
  expected = jax.tree.map(lambda m, p: -lr * (jnp.sign(m) + wd * p), m2, p1)
  assert_trees_close(u2, expected)


def test_weight_decay_mask():
  mask = jax.tree.map(lambda x: x.ndim >= 2, PARAMS)
  (u,), _ = run_steps(sfo.sign_sgd(0.1, weight_decay=0.5, weight_decay_mask=mask), GRADS[:1],
                      PARAMS)
  np.testing.assert_allclose(u["b"], -0.1 * jnp.sign(GRADS[0]["b"]))
  np.testing.assert_allclose(u["w"], -0.1 * (jnp.sign(GRADS[0]["w"]) + 0.5 * PARAMS["w"]),
                             rtol=1e-6)


def test_signum_nesterov_formula():
  beta = 0.8
  tx = sfo.scale_by_signum(beta, nesterov=True)
  (u1, u2), _ = run_steps(tx, GRADS[:2], PARAMS)
  m1 = jax.tree.map(lambda g: (1 - beta) * g, GRADS[0])
  m2 = jax.tree.map(lambda m, g: beta * m + (1 - beta) * g, m1, GRADS[1])
  look = jax.tree.map(lambda m, g: beta * m + (1 - beta) * g, m2, GRADS[1])
  assert_trees_equal(u2, jax.tree.map(jnp.sign, look))


def test_signum_mu_dtype():
  tx = sfo.signum(1e-3, mu_dtype=jnp.bfloat16)
  state = tx.init(PARAMS)
  _, state = tx.update(GRADS[0], state, PARAMS)
  assert all(m.dtype == jnp.bfloat16 for m in jax.tree.leaves(state[0].momentum))


# --- orthogonalize ----------------------------------------------------------------------


def matrices_with_spectrum(key, batch, m, n, cond):
  """Random (batch, m, n) matrices with singular values log-spaced in [1, cond]."""
  k = min(m, n)
  ku, kv = jax.random.split(key)
  u, _ = jnp.linalg.qr(jax.random.normal(ku, (batch, m, k)))
  v, _ = jnp.linalg.qr(jax.random.normal(kv, (batch, n, k)))
  s = jnp.logspace(0, math.log10(cond), k)
  return jnp.einsum("bik,k,bjk->bij", u, s, v), jnp.einsum("bik,bjk->bij", u, v)


# preset, steps -> (band of singular values, max relative Frobenius error to U V^T);
# inputs with condition number 10. Measured values are printed by -s.
BANDS = {
    ("quintic", 5): ((0.66, 1.15), 0.25),
    ("quintic", 8): ((0.66, 1.15), 0.25),
    ("polar_express", 5): ((0.85, 1.14), 0.12),
    ("polar_express", 8): ((0.99, 1.01), 0.01),
}


@pytest.mark.parametrize("preset,steps", list(BANDS))
@pytest.mark.parametrize("shape", [(64, 32), (32, 64), (48, 48)])
def test_orthogonalize_band_and_polar_error(preset, steps, shape):
  x, polar = matrices_with_spectrum(jax.random.key(7), 3, *shape, cond=10.0)
  y = sfo.orthogonalize(x, steps=steps, coeffs=preset, dtype=jnp.float32)
  assert y.shape == x.shape and y.dtype == x.dtype
  sv = np.linalg.svd(np.asarray(y), compute_uv=False)
  rel_err = float(jnp.max(jnp.linalg.norm(y - polar, axis=(-2, -1))
                          / jnp.linalg.norm(polar, axis=(-2, -1))))
  (lo, hi), max_err = BANDS[(preset, steps)]
  print(f"{preset} steps={steps} shape={shape}: sv in [{sv.min():.3f}, {sv.max():.3f}], "
        f"rel. Frobenius error to UV^T {rel_err:.4f}")
  assert lo <= sv.min() and sv.max() <= hi
  assert rel_err <= max_err


def test_orthogonalize_bf16_and_leading_batch_axes():
  x, polar = matrices_with_spectrum(jax.random.key(3), 6, 32, 16, cond=4.0)
  x = x.reshape(2, 3, 32, 16)
  y = sfo.orthogonalize(x.astype(jnp.bfloat16), steps=8, coeffs="polar_express")
  assert y.dtype == jnp.bfloat16 and y.shape == (2, 3, 32, 16)
  err = jnp.linalg.norm(y.astype(jnp.float32).reshape(6, 32, 16) - polar, axis=(-2, -1))
  assert float(jnp.max(err / jnp.linalg.norm(polar, axis=(-2, -1)))) < 0.05
  # each batch element is orthogonalized on its own
  single = sfo.orthogonalize(x[1, 2], steps=8, coeffs="polar_express", dtype=jnp.float32)
  batched = sfo.orthogonalize(x, steps=8, coeffs="polar_express", dtype=jnp.float32)
  np.testing.assert_allclose(batched[1, 2], single, rtol=1e-5, atol=1e-6)


def test_orthogonalize_zero_matrix_and_explicit_table():
  for dtype in (jnp.float32, jnp.bfloat16):
    z = sfo.orthogonalize(jnp.zeros((2, 5, 3)), dtype=dtype)
    assert not np.any(np.isnan(np.asarray(z))) and float(jnp.abs(z).max()) == 0.0
  x = jax.random.normal(jax.random.key(0), (12, 20))
  table = np.tile(np.array([3.4445, -4.7750, 2.0315]), (5, 1))
  np.testing.assert_array_equal(sfo.orthogonalize(x, coeffs=table, dtype=jnp.float32),
                                sfo.orthogonalize(x, coeffs="quintic", dtype=jnp.float32))


def test_orthogonalize_matches_optax_newton_schulz():
  x = jax.random.normal(jax.random.key(1), (40, 24))
  ref = optax_muon.orthogonalize_via_newton_schulz(
      x, jnp.asarray([3.4445, -4.7750, 2.0315]), ns_steps=5, eps=1e-7)
  ours = sfo.orthogonalize(x, steps=5, dtype=jnp.float32, eps=1e-7)
  np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kwargs,field", [
    (dict(steps=0), "steps"), (dict(coeffs="cubic"), "coeffs"),
    (dict(coeffs=np.ones((4, 3))), "coeffs")])
def test_orthogonalize_rejects_bad_arguments(kwargs, field):
  with pytest.raises(ValueError, match=f"^{field}:"):
    sfo.orthogonalize(jnp.ones((3, 3)), **kwargs)


# --- Muon -------------------------------------------------------------------------------


def model_tree(seed=0):
  k = jax.random.split(jax.random.key(seed), 8)
  return {
      "embed": {"embedding": jax.random.normal(k[0], (64, 16))},
      "layers": {
          "attn": {"qkv": {"kernel": jax.random.normal(k[1], (2, 16, 48))},
                   "out": {"kernel": jax.random.normal(k[2], (2, 16, 16))}},
          "mlp": {"up": {"kernel": jax.random.normal(k[3], (2, 16, 32))},
                  "down": {"kernel": jax.random.normal(k[4], (2, 32, 16))}},
          "attn_norm": {"scale": jax.random.normal(k[5], (2, 16))},
      },
      "final_norm": {"scale": jax.random.normal(k[6], (16,))},
      "lm_head": {"kernel": jax.random.normal(k[7], (16, 64))},
  }


def test_muon_default_routing():
  labels = sfo.muon_labels(model_tree())
  assert labels["embed"]["embedding"] == "fallback"
  assert labels["lm_head"]["kernel"] == "fallback"
  assert labels["final_norm"]["scale"] == "fallback"
  assert labels["layers"]["attn_norm"]["scale"] == "fallback"
  for name in ("attn", "mlp"):
    assert set(jax.tree.leaves(labels["layers"][name])) == {"muon"}
  assert sfo.muon_labels({"num_heads_proj": jnp.ones((4, 4))})["num_heads_proj"] == "muon"


def test_muon_branches_get_their_updates():
  params, grads = model_tree(0), model_tree(1)
  lr = 0.02
  tx = sfo.muon(lr, ns_dtype=jnp.float32, fallback="signum", fallback_learning_rate=1e-3)
  u, _ = tx.update(grads, tx.init(params), params)
  # fallback leaves: signum's first step is -lr_fb * sign(g)
  for path in (("embed", "embedding"), ("lm_head", "kernel"), ("final_norm", "scale")):
    g, got = grads, u
    for key in path:
      g, got = g[key], got[key]
    np.testing.assert_allclose(got, -1e-3 * jnp.sign(g))
  # Muon leaves: per-layer orthogonalized, scaled by sqrt(max(1, fan_out / fan_in))
  qkv = u["layers"]["attn"]["qkv"]["kernel"]
  for layer in range(2):
    expected = sfo.orthogonalize(grads["layers"]["attn"]["qkv"]["kernel"][layer],
                                 dtype=jnp.float32) * math.sqrt(48 / 16)
    np.testing.assert_allclose(qkv[layer], -lr * expected, rtol=1e-4, atol=1e-6)


def test_muon_explicit_routing_pytree_and_callable():
  params = model_tree()
  only_up = jax.tree_util.tree_map_with_path(lambda p, _: "'up'" in str(p), params)
  labels = sfo.muon_labels(params, only_up)
  assert labels["layers"]["mlp"]["up"]["kernel"] == "muon"
  assert labels["layers"]["mlp"]["down"]["kernel"] == "fallback"
  labels = sfo.muon_labels(params, lambda path, leaf: leaf.ndim == 2)
  assert labels["embed"]["embedding"] == "muon" and labels["layers"]["mlp"]["up"]["kernel"] \
      == "fallback"


@pytest.mark.parametrize("scale,consistent_rms", [("shape", None), ("rms", 0.2)])
def test_scale_by_muon_matches_optax_contrib_without_nesterov(scale, consistent_rms):
  """nesterov=False: optax bias-corrects m_t, a positive scalar that orthogonalization
  removes, so the two agree to float32 tolerance (eps aside)."""
  params = {"a": jnp.zeros((16, 48)), "b": jnp.zeros((2, 32, 16))}
  dims = {"a": optax.contrib.MuonDimensionNumbers(0, 1),
          "b": optax.contrib.MuonDimensionNumbers(1, 2)}
  ours = sfo.scale_by_muon(0.9, nesterov=False, ns_dtype=jnp.float32, scale=scale,
                           rms_target=0.2)
  ref = optax.chain(
      optax.contrib.scale_by_muon(beta=0.9, nesterov=False, eps=1e-7,
                                  weight_dimension_numbers=dims),
      optax_muon.scale_by_shape(dims, consistent_rms=consistent_rms))
  grads = [jax.tree.map(lambda p, s=s: jax.random.normal(jax.random.key(s), p.shape), params)
           for s in range(4)]
  ours_u, _ = run_steps(ours, grads, params)
  ref_u, _ = run_steps(ref, grads, params)
  assert_trees_close(ours_u, ref_u, rtol=2e-4, atol=2e-5)


def test_scale_by_muon_nesterov_intended_difference():
  """Nesterov: step 1 agrees with optax (both directions are multiples of g_1); later we
  use Jordan et al.'s un-bias-corrected blend beta*m_t + (1-beta)*g_t, optax bias-corrects
  both terms, so later steps differ by design."""
  params = {"a": jnp.zeros((16, 24))}
  grads = [{"a": jax.random.normal(jax.random.key(s), (16, 24))} for s in range(3)]
  ours_u, _ = run_steps(sfo.scale_by_muon(0.9, ns_dtype=jnp.float32, scale="none"), grads,
                        params)
  dims = {"a": optax.contrib.MuonDimensionNumbers(0, 1)}
  ref_u, _ = run_steps(optax.contrib.scale_by_muon(beta=0.9, eps=1e-7,
                                                   weight_dimension_numbers=dims), grads, params)
  assert_trees_close(ours_u[0], ref_u[0], rtol=2e-4, atol=2e-5)
  beta, m = 0.9, 0.0
  for t, g in enumerate(grads):
    m = beta * m + (1 - beta) * g["a"]
    expected = sfo.orthogonalize(beta * m + (1 - beta) * g["a"], dtype=jnp.float32)
    np.testing.assert_allclose(ours_u[t]["a"], expected, rtol=1e-4, atol=1e-5)
  assert not np.allclose(ours_u[2]["a"], ref_u[2]["a"], rtol=1e-3, atol=1e-4)


def test_scale_by_muon_rms_scale_gives_target_rms():
  g = {"w": jax.random.normal(jax.random.key(0), (64, 256))}
  tx = sfo.scale_by_muon(scale="rms", rms_target=0.2, ns_dtype=jnp.float32,
                         coeffs="polar_express", steps=8)
  u, _ = tx.update(g, tx.init(g))
  rms = float(jnp.sqrt(jnp.mean(jnp.square(u["w"]))))
  # polar factor of a 64x256 matrix: rms = sqrt(64 / (64*256)); times 0.2*sqrt(256)
  assert abs(rms - 0.2) < 0.01


def test_scale_by_muon_rejects_vectors():
  with pytest.raises(ValueError, match="ndim >= 2"):
    sfo.scale_by_muon().init({"b": jnp.zeros(3)})


# --- schedules --------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["linear", "cosine", "1-sqrt", "exponential"])
def test_wsd_schedule_key_points(shape):
  peak, end, init = 1.0, 0.01, 0.1
  sched = sfo.wsd_schedule(peak, 100, warmup_steps=10, decay_steps=20, init_value=init,
                           end_value=end, decay_shape=shape)
  v = lambda t: float(sched(t))
  assert v(0) == pytest.approx(init)
  assert v(5) == pytest.approx(init + (peak - init) / 2)
  assert v(10) == pytest.approx(peak) and v(79) == pytest.approx(peak)
  assert v(80) == pytest.approx(peak)                                   # decay starts
  midway = {"linear": (peak + end) / 2, "cosine": (peak + end) / 2,
            "1-sqrt": end + (peak - end) * (1 - math.sqrt(0.5)),
            "exponential": math.sqrt(peak * end)}[shape]
  assert v(90) == pytest.approx(midway, rel=1e-5)
  assert v(100) == pytest.approx(end) and v(10_000) == pytest.approx(end)
  values = np.asarray(jax.vmap(sched)(jnp.arange(0, 120)))
  assert np.all(np.diff(values[:11]) > 0)                               # warmup rises
  assert np.all(np.diff(values[80:101]) < 0)                            # decay falls
  assert np.all(values[10:81] == values[10])                            # stable


def test_wsd_schedule_decay_fraction_and_jit():
  sched = sfo.wsd_schedule(2.0, 1000, decay_fraction=0.1)
  assert float(sched(899)) == 2.0 and float(sched(950)) == pytest.approx(1.0)
  assert float(jax.jit(sched)(jnp.int32(950))) == pytest.approx(1.0)


@pytest.mark.parametrize("kwargs,field", [
    (dict(total_steps=0), "total_steps"),
    (dict(warmup_steps=60, decay_steps=50), "decay_steps"),
    (dict(decay_steps=101), "decay_steps"),
    (dict(decay_fraction=1.5), "decay_fraction"),
    (dict(decay_shape="step"), "decay_shape"),
    (dict(decay_shape="exponential", end_value=0.0), "end_value"),
    (dict(peak_value=-1.0), "peak_value")])
def test_wsd_schedule_rejects_bad_arguments(kwargs, field):
  args = dict(peak_value=1.0, total_steps=100) | kwargs
  with pytest.raises(ValueError, match=f"^{field}:"):
    sfo.wsd_schedule(args.pop("peak_value"), args.pop("total_steps"), **args)


def test_batch_scaled_learning_rate():
  assert sfo.batch_scaled_learning_rate(1e-3, 256, 64, "sqrt") == pytest.approx(2e-3)
  assert sfo.batch_scaled_learning_rate(1e-3, 256, 64, "linear") == pytest.approx(4e-3)
  sched = sfo.batch_scaled_learning_rate(sfo.wsd_schedule(1.0, 10), 16, 4, "sqrt")
  assert float(sched(0)) == pytest.approx(2.0)
  with pytest.raises(ValueError, match="^rule:"):
    sfo.batch_scaled_learning_rate(1e-3, 2, 1, "cubic")


# --- diagnostics ------------------------------------------------------------------------


def test_gradient_noise_stats_dense_and_sparse_noise():
  n, d = 4096, 100
  key = jax.random.key(0)
  dense = {"a": 1.0 + jax.random.normal(key, (n, d))}
  sparse_sigma = jnp.zeros(d).at[0].set(1.0)
  sparse = {"a": 1.0 + jax.random.normal(key, (n, d)) * sparse_sigma}
  s_dense, s_sparse = sfo.gradient_noise_stats(dense), sfo.gradient_noise_stats(sparse)
  assert float(s_dense["noise_density"]) == pytest.approx(1.0, abs=0.01)
  assert float(s_sparse["noise_density"]) == pytest.approx(1 / d, rel=1e-4)
  assert float(s_dense["mean_grad_l1"]) == pytest.approx(d, rel=0.01)
  assert float(s_dense["mean_grad_l2"]) == pytest.approx(math.sqrt(d), rel=0.01)
  assert float(s_dense["sigma_l2"]) == pytest.approx(math.sqrt(d), rel=0.02)


def test_gradient_noise_stats_per_module_and_jit():
  grads = {"embed": jax.random.normal(jax.random.key(1), (3, 10, 4)),
           "layers": {"w": jax.random.normal(jax.random.key(2), (3, 5)) * 0.0,
                      "v": jax.random.normal(jax.random.key(3), (3, 2, 2))}}
  stats = jax.jit(sfo.gradient_noise_stats)(grads)
  assert set(stats["per_module"]) == {"embed", "layers"}
  pm = stats["per_module"]
  total_l1 = float(pm["embed"]["sigma_l1"] + pm["layers"]["sigma_l1"])
  assert float(stats["sigma_l1"]) == pytest.approx(total_l1, rel=1e-6)
  assert 1 / 49 <= float(stats["noise_density"]) <= 1.0
  with pytest.raises(ValueError, match="n >= 2"):
    sfo.gradient_noise_stats({"a": jnp.ones((1, 3))})


# --- factory and validation -------------------------------------------------------------


def test_get_optimizer_every_name_steps():
  params = model_tree()
  for name in sfo.OPTIMIZERS:
    tx = sfo.get_optimizer(name, 1e-3)
    u, _ = jax.jit(tx.update)(model_tree(1), tx.init(params), params)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(u)), name


def test_get_optimizer_errors_list_valid_choices():
  with pytest.raises(ValueError, match="must be one of sgd, momentum, adamw"):
    sfo.get_optimizer("adam", 1e-3)
  with pytest.raises(ValueError, match="unknown keyword.*betta.*allowed: beta"):
    sfo.get_optimizer("signum", 1e-3, betta=0.9)


@pytest.mark.parametrize("build,field", [
    (lambda: sfo.signum(1e-3, beta=1.0), "beta"),
    (lambda: sfo.scale_by_signum(-0.1), "beta"),
    (lambda: sfo.sign_sgd(-1.0), "learning_rate"),
    (lambda: sfo.sign_sgd(1e-3, weight_decay=-0.1), "weight_decay"),
    (lambda: sfo.muon(1e-3, coeffs="cubic"), "coeffs"),
    (lambda: sfo.muon(1e-3, steps=0), "steps"),
    (lambda: sfo.muon(1e-3, scale="spectral"), "scale"),
    (lambda: sfo.muon(1e-3, fallback="sgd"), "fallback"),
    (lambda: sfo.momentum(1e-3, beta=1.5), "beta"),
    (lambda: sfo.adamw(1e-3, b2=1.0), "b2")])
def test_constructors_reject_bad_arguments(build, field):
  with pytest.raises(ValueError, match=f"^{field}:"):
    build()


# --- composition with optax -------------------------------------------------------------

COMPOSABLE = {
    "sign_sgd": lambda: sfo.sign_sgd(1e-2, weight_decay=0.1),
    "signum": lambda: sfo.signum(1e-2, nesterov=True, weight_decay=0.1),
    "muon": lambda: sfo.muon(1e-2, ns_dtype=jnp.float32, weight_decay=0.1),
}


@pytest.mark.parametrize("name", list(COMPOSABLE))
def test_chain_multisteps_and_jit(name):
  params, grads = model_tree(), [model_tree(s) for s in (1, 2, 3, 4)]
  tx = optax.chain(optax.clip_by_global_norm(1.0), COMPOSABLE[name]())
  multi = optax.MultiSteps(tx, every_k_schedule=2)
  state = multi.init(params)
  update = jax.jit(multi.update)
  u1, state = update(grads[0], state, params)
  assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(u1))
  u2, state = update(grads[1], state, params)
  mean = jax.tree.map(lambda a, b: (a + b) / 2, grads[0], grads[1])
  ref, _ = tx.update(mean, tx.init(params), params)
  assert_trees_close(u2, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("factory", [sfo.sign_sgd, sfo.signum, sfo.muon])
def test_inject_hyperparams(factory):
  params = model_tree()
  static = ("steps", "ns_dtype") if factory is sfo.muon else ()
  tx = optax.inject_hyperparams(factory, static_args=static)(
      learning_rate=sfo.wsd_schedule(1e-2, 10, warmup_steps=2), weight_decay=0.1)
  state = tx.init(params)
  step = jax.jit(tx.update)
  lrs = []
  for s in range(3):
    _, state = step(model_tree(s), state, params)
    lrs.append(float(state.hyperparams["learning_rate"]))
  assert lrs == pytest.approx([0.0, 5e-3, 1e-2])


@pytest.mark.parametrize("name", list(COMPOSABLE))
def test_sharded_matches_unsharded(name):
  """Parameters sharded over 8 forced CPU devices give the unsharded updates."""
  mesh = jax.make_mesh((2, 4), ("data", "fsdp"))
  params, grads = model_tree(), [model_tree(s) for s in (1, 2, 3)]

  def spec(x):
    if x.ndim >= 2 and x.shape[-1] % 4 == 0 and x.shape[-2] % 2 == 0:
      return P(*([None] * (x.ndim - 2)), "data", "fsdp")
    return P()

  shard = lambda t: jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, spec(x))), t)
  tx = COMPOSABLE[name]()

  def run(params, grads):
    state = tx.init(params)
    step = jax.jit(tx.update)
    for g in grads:
      u, state = step(g, state, params)
      params = optax.apply_updates(params, u)
    return params

  ref = run(params, grads)
  got = run(shard(params), [shard(g) for g in grads])
  assert got["layers"]["mlp"]["up"]["kernel"].sharding.spec == P(None, "data", "fsdp")
  assert_trees_close(got, ref, rtol=1e-5, atol=1e-5)


def test_optim_imports_only_jax_numpy_optax():
  code = ("import sys, signflax.optim; "
          "bad = [m for m in ('flax', 'grain', 'orbax', 'tensorboard', 'ml_collections', "
          "'matplotlib', 'signflax.train', 'signflax.model', 'signflax.data') if m in sys.modules]; "
          "print(bad); sys.exit(1 if bad else 0)")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
  assert result.returncode == 0, result.stdout + result.stderr


def _collectives(hlo: str) -> int:
  kinds = ("all-reduce", "all-gather", "all-to-all", "collective-permute", "reduce-scatter")
  return sum(len(re.findall(rf"\b{k}(-start)?\(", hlo)) for k in kinds)


def test_muon_under_auto_mesh_needs_no_collectives_per_iteration():
  """FSDP-sharded weights under jax.set_mesh: whole matrices are spread over devices, so
  Newton-Schulz adds no communication per iteration (5 and 10 steps compile to the same
  number of collectives), and the result equals the unsharded one."""
  from signflax import parallel
  mesh = parallel.make_mesh({"data": 1, "fsdp": 8, "tensor": 1})
  params = {"q": jnp.ones((4, 32, 32)), "k": jnp.ones((4, 32, 32)),
            "up": jnp.ones((4, 32, 64)), "down": jnp.ones((4, 64, 32))}
  grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(p.shape[-1]), p.shape), params)
  spec = {"q": P(None, "fsdp"), "k": P(None, "fsdp"), "up": P(None, "fsdp"),
          "down": P(None, None, "fsdp")}
  shardings = {k: NamedSharding(mesh, v) for k, v in spec.items()}
  counts, results = [], []
  for steps in (5, 10):
    tx = sfo.scale_by_muon(steps=steps, ns_dtype=jnp.float32)
    with jax.set_mesh(mesh):
      fn = jax.jit(lambda g, s, tx=tx: tx.update(g, s)[0], in_shardings=(shardings, None),
                   out_shardings=shardings)
      counts.append(_collectives(fn.lower(grads, tx.init(params)).compile().as_text()))
      results.append(fn(grads, tx.init(params)))
    ref, _ = tx.update(grads, tx.init(params))
    assert_trees_close(results[-1], ref, rtol=1e-5, atol=1e-5)
  assert counts[0] == counts[1] <= 2 * len(params), counts  # one re-layout in, one out


# --- every hyperparameter checked -----------------------------------------------------------

BAD_HYPERPARAMETERS = [  # (build, exception, argument)
    (lambda: sfo.adamw(1e-3, eps=-1e-8), ValueError, "eps"),
    (lambda: sfo.adamw(1e-3, eps=float("nan")), ValueError, "eps"),
    (lambda: sfo.adamw(1e-3, b1="0.9"), TypeError, "b1"),
    (lambda: sfo.adamw(1e-3, nesterov="yes"), TypeError, "nesterov"),
    (lambda: sfo.adamw(1e-3, mu_dtype="int8"), TypeError, "mu_dtype"),
    (lambda: sfo.adamw(1e-3, weight_decay_mask="kernel"), TypeError, "weight_decay_mask"),
    (lambda: sfo.adamw(1e-3, weight_decay_mask={"w": 1.0}), TypeError, "weight_decay_mask"),
    (lambda: sfo.lion(1e-3, b2=float("inf")), ValueError, "b2"),
    (lambda: sfo.sign_sgd(float("inf")), ValueError, "learning_rate"),
    (lambda: sfo.sign_sgd(True), TypeError, "learning_rate"),
    (lambda: sfo.sgd(1e-3, weight_decay=float("inf")), ValueError, "weight_decay"),
    (lambda: sfo.signum(1e-3, beta="0.9"), TypeError, "beta"),
    (lambda: sfo.signum(1e-3, nesterov=1), TypeError, "nesterov"),
    (lambda: sfo.momentum(1e-3, nesterov=None), TypeError, "nesterov"),
    (lambda: sfo.muon(1e-3, steps=2.5), ValueError, "steps"),
    (lambda: sfo.muon(1e-3, ns_dtype="int32"), TypeError, "ns_dtype"),
    (lambda: sfo.muon(1e-3, rms_target=-1.0), ValueError, "rms_target"),
    (lambda: sfo.muon(1e-3, coeffs=np.full((5, 3), np.inf)), ValueError, "coeffs"),
    (lambda: sfo.muon(1e-3, fallback_learning_rate=float("nan")), ValueError,
     "fallback_learning_rate"),
    (lambda: sfo.muon(1e-3, muon_params="hidden"), TypeError, "muon_params"),
    (lambda: sfo.wsd_schedule(float("inf"), 100), ValueError, "peak_value"),
    (lambda: sfo.wsd_schedule(1.0, 100, end_value="0"), TypeError, "end_value"),
    (lambda: sfo.wsd_schedule(1.0, 100.0), ValueError, "total_steps"),
    (lambda: sfo.batch_scaled_learning_rate(float("inf"), 4, 2, "sqrt"), ValueError, "base_lr"),
]


@pytest.mark.parametrize("build,error,field", BAD_HYPERPARAMETERS)
def test_every_hyperparameter_is_checked(build, error, field):
  with pytest.raises(error, match=f"^{field}: ") as info:
    build()
  assert "\n" not in str(info.value)


def test_traced_hyperparameters_pass_through():
  params = {"w": jnp.ones((4, 8))}

  @jax.jit
  def update(lr, b1, eps):
    tx = sfo.adamw(lr, b1=b1, eps=eps)
    return tx.update(params, tx.init(params), params)[0]

  assert np.all(np.isfinite(update(1e-3, 0.9, 1e-8)["w"]))


def test_public_modules_and_reexports():
  import importlib
  with pytest.raises(ModuleNotFoundError):
    importlib.import_module("signflax.optim.muon")
  assert sfo.scale_by_sign is optax.scale_by_sign
  from signflax.optim import registry
  assert registry.OPTIMIZERS is sfo.OPTIMIZERS and registry.get_optimizer is sfo.get_optimizer
  path = jax.tree_util.tree_flatten_with_path({"a": [{"b": 1}]})[0][0][0]
  assert sfo.path_name(path) == "a/0/b" and sfo.path_name(path, ".") == "a.0.b"
  assert sfo.batch_scale_factor(np.array([4, 16]), 4, "sqrt").tolist() == [1.0, 2.0]
