"""Property tests: a lab run's risk is the same bit for bit whatever shares its program.

Random shapes (d, B, seeds, learning rates) from a seeded generator, each run on a mesh of
8 devices and on a mesh of 1 device with another grid (fewer seeds, other learning
rates), for every optimizer (sgd, momentum, adamw, sign_sgd, signum), under minibatch and
Hessian-aligned noise (linreg) and on power-law random features (PLRF). XLA:CPU sums by
the operand's shape (YNNPACK fusions, reduce-window splits, dot blocking), so before
``kernels.ordered_sum`` these differed by 1e-7..1e-6 relative at shapes such as d=64, B=4.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from signflax import linreg
from signflax.linreg import kernels, plrf
from signflax.optim import get_optimizer

OPTIMIZERS = {
    "sgd": optax.sgd,
    "momentum": functools.partial(get_optimizer, "momentum"),
    "adamw": functools.partial(get_optimizer, "adamw", weight_decay=0.01),
    "sign_sgd": optax.sign_sgd,
    "signum": functools.partial(get_optimizer, "signum"),
}
_NAMES = tuple(OPTIMIZERS)
_LR_UNIT = 2.0**-12     # learning rates are multiples of it; the multiple picks the optimizer


def _every_optimizer(learning_rate) -> optax.GradientTransformation:
  """Each config runs one of ``OPTIMIZERS``, picked by its learning rate
  ``(5 j + i) * _LR_UNIT`` (optimizer i): one compiled program trains every optimizer.
  Each config's update is exactly its optimizer's (the others' are computed, then
  dropped by an elementwise select). A schedule (PLRF) is read at step 0."""
  peak = learning_rate(0) if callable(learning_rate) else learning_rate
  which = jnp.round(peak / _LR_UNIT).astype(jnp.int32) % len(_NAMES)
  members = [OPTIMIZERS[n](learning_rate) for n in _NAMES]

  def init(params):
    return tuple(m.init(params) for m in members)

  def update(grads, state, params=None):
    results = [m.update(grads, s, params) for m, s in zip(members, state)]
    updates = [u for u, _ in results]
    pick = lambda *leaves: jnp.select([which == i for i in range(len(leaves))], leaves)
    return jax.tree.map(pick, *updates), tuple(s for _, s in results)

  return optax.GradientTransformation(init, update)


def _learning_rates(rng, count: int) -> np.ndarray:
  """``count`` distinct rates covering every optimizer (count >= 5)."""
  j = rng.choice(np.arange(1, 13), size=count, replace=count > 12)
  return (5 * j + np.arange(count) % len(_NAMES)) * _LR_UNIT


def _shapes(seed: int, count: int):
  rng = np.random.default_rng(seed)
  for _ in range(count):
    yield dict(d=int(rng.integers(5, 90)), batch=int(rng.integers(1, 9)),
               seeds=int(rng.integers(2, 12)), lrs=_learning_rates(rng, int(rng.integers(5, 9))),
               sub_seeds=int(rng.integers(1, 4)), rng=rng)


def _sub_grid(shape):
  """A different grid for the 1-device run: the first few seeds, some of the rates in
  another order."""
  lrs = shape["lrs"]
  pick = shape["rng"].permutation(lrs.size)[:max(len(_NAMES), lrs.size - 2)]
  return min(shape["sub_seeds"], shape["seeds"]), pick


def test_ordered_sum_is_independent_of_the_other_axes_and_devices():
  """The kernels alone: 12 random shapes, sharded over 8 devices, one device, one row."""
  assert len(jax.devices()) == 8
  mesh8 = linreg.seed_mesh()
  rng = np.random.default_rng(7)
  grad = jax.jit(kernels.minibatch_gradient)
  ordered = jax.jit(kernels.ordered_sum, static_argnums=1)
  for _ in range(12):
    s, c, b, d = (8 * int(rng.integers(1, 3)), int(rng.integers(1, 20)), int(rng.integers(1, 12)),
                  int(rng.choice([rng.integers(2, 64), rng.integers(64, 200)])))
    features = jnp.asarray(rng.standard_normal((s, b, d)), jnp.float32)
    delta = jnp.asarray(rng.standard_normal((s, c, d)), jnp.float32)
    targets = jnp.asarray(rng.standard_normal((s, b)), jnp.float32)
    rows = NamedSharding(mesh8, P("runs"))
    sharded = grad(*jax.device_put((features, delta, targets), rows))
    whole = grad(features, delta, targets)
    one = grad(features[1:2], delta[1:2, -1:], targets[1:2])
    np.testing.assert_array_equal(np.asarray(sharded), np.asarray(whole))
    np.testing.assert_array_equal(np.asarray(whole)[1:2, -1:], np.asarray(one))
    # The sum itself is a sum: close to float64's.
    exact = np.einsum("sbd,scd->scb", np.float64(features), np.float64(delta))
    np.testing.assert_allclose(ordered(features[:, None] * delta[:, :, None], -1),
                               exact, rtol=1e-4, atol=1e-4 * np.sqrt(d))


def _float32_tree(products: np.ndarray) -> np.ndarray:
  """``ordered_sum``'s order in NumPy float32 over the last axis: the specification."""
  n = products.shape[-1]
  power_of_two = lambda m: 1 << max(m - 1, 0).bit_length()

  def halve(parts):
    while len(parts) > 1:
      half = len(parts) // 2
      parts = [parts[i] + parts[i + half] for i in range(half)]
    return parts[0]

  if n <= kernels.LANES:
    padded = np.zeros(products.shape[:-1] + (power_of_two(n),), np.float32)
    padded[..., :n] = products
    return halve(list(np.moveaxis(padded, -1, 0)))
  lanes = kernels.LANES * power_of_two(-(-n // (kernels.LANES * 128)))
  chunks = -(-n // lanes)
  padded = np.zeros(products.shape[:-1] + (chunks * lanes,), np.float32)
  padded[..., :n] = products
  parts = [padded[..., k * lanes:(k + 1) * lanes] for k in range(chunks)]
  while len(parts) > 1:
    parts = [parts[i] + parts[i + 1] if i + 1 < len(parts) else parts[i]
             for i in range(0, len(parts), 2)]
  return halve(list(np.moveaxis(parts[0], -1, 0)))


@pytest.mark.parametrize("n", [1, 2, 3, 17, 64, 65, 130, 1000, 8193, 20001])
def test_ordered_dot_is_the_float32_tree_of_rounded_products(n):
  """Every product is rounded to float32 before the fixed tree sums it: no FMA keeps a
  product unrounded (LLVM's choice of which would follow the program), on any axis,
  broadcast or not."""
  rng = np.random.default_rng(n)
  a = rng.standard_normal((3, 1, 2, n)).astype(np.float32)
  b = rng.standard_normal((3, 4, 1, n)).astype(np.float32)
  expected = _float32_tree(a * b)
  dot = jax.jit(kernels.ordered_dot, static_argnums=2)
  np.testing.assert_array_equal(dot(a, b, -1), expected)
  np.testing.assert_array_equal(dot(np.moveaxis(a, -1, 1), np.moveaxis(b, -1, 1), 1), expected)
  np.testing.assert_array_equal(jax.jit(kernels.ordered_sum)(a[:, 0]), _float32_tree(a[:, 0]))


@pytest.mark.slow
def test_each_optimizer_alone_is_bit_identical_across_grids_and_devices():
  """Without the dispatcher (whose select hides how an update fuses): each optimizer's
  own program, 8 devices and all rates against one device and one rate, at the issue's
  shape (d=64, B=4) and past ``LANES`` (d=130; minibatch and PLRF, where the sums are)."""
  one_device = jax.devices()[:1]
  for d, batch, seeds in [(64, 4, 8), (130, 2, 3)]:
    problem = linreg.power_law_problem(d, 3.0, 1.5, noise_std=0.5)
    features = plrf.plrf_problem(d + 9, d, 1.0, 0.7, noise_std=0.1)
    lrs = _learning_rates(np.random.default_rng(d), 5)
    for name, optimizer in OPTIMIZERS.items():
      for noise in linreg.NOISE_MODELS if d <= kernels.LANES else ["minibatch"]:
        run = lambda rates, devices: linreg.simulate(
            problem, optimizer, rates, [batch], 7, num_seeds=seeds, noise_model=noise,
            record_steps=[3, 7], devices=devices).risk
        np.testing.assert_array_equal(run(lrs[1:2], one_device)[:, :, 0],
                                      run(lrs, None)[:, :, 1], err_msg=f"{name} {noise} d={d}")
      run = lambda rates, devices: plrf.simulate_plrf(
          features, optimizer, rates, batch, 7, num_seeds=seeds, record_steps=[3, 7],
          devices=devices).risk
      np.testing.assert_array_equal(run(lrs[1:2], one_device)[:, 0], run(lrs, None)[:, 1],
                                    err_msg=f"{name} plrf d={d}")


def test_the_issues_sgd_example_is_bit_identical_on_one_and_eight_devices():
  """``simulate(power_law_problem(64, 3, 2), optax.sgd, [0.01, 0.05], [4], 130,
  num_seeds=8, noise_model="minibatch")`` differed by 3.6e-7 between 1 and 8 devices."""
  problem = linreg.power_law_problem(64, 3, 2)
  run = lambda devices: linreg.simulate(problem, optax.sgd, [0.01, 0.05], [4], 130,
                                        num_seeds=8, noise_model="minibatch",
                                        devices=devices).risk
  np.testing.assert_array_equal(run(jax.devices()[:1]), run(None))


@pytest.mark.slow
@pytest.mark.parametrize("noise_model", ["minibatch", "hessian_aligned"])
def test_linreg_runs_are_bit_identical_across_shapes_devices_and_grids(noise_model):
  one_device = jax.devices()[:1]
  for shape in _shapes(seed=26 if noise_model == "minibatch" else 62, count=20):
    problem = linreg.power_law_problem(shape["d"], 3.0, 1.5, noise_std=0.5)
    kwargs = dict(noise_model=noise_model, record_steps=[2, 5])
    full = linreg.simulate(problem, _every_optimizer, shape["lrs"], [shape["batch"]], 5,
                           num_seeds=shape["seeds"], **kwargs)
    seeds, pick = _sub_grid(shape)
    sub = linreg.simulate(problem, _every_optimizer, shape["lrs"][pick], [shape["batch"]], 5,
                          num_seeds=seeds, devices=one_device, **kwargs)
    np.testing.assert_array_equal(sub.risk, full.risk[:seeds, :, pick], err_msg=str(shape))
    assert np.all(np.isfinite(full.risk)) and np.ptp(full.risk[..., -1]) > 0


@pytest.mark.slow
def test_plrf_runs_are_bit_identical_across_shapes_devices_grids_and_stacks():
  one_device = jax.devices()[:1]
  for shape in _shapes(seed=2026, count=20):
    v = shape["d"] + int(shape["rng"].integers(0, 60))
    problem = plrf.plrf_problem(v, shape["d"], 1.0, 0.7, noise_std=0.1, seed=[3, 1])
    kwargs = dict(record_steps=[2, 5], schedules="constant")
    full = plrf.simulate_plrf(problem, _every_optimizer, shape["lrs"], shape["batch"], 5,
                              num_seeds=shape["seeds"], **kwargs)          # (W, S, C, R)
    seeds, pick = _sub_grid(shape)
    single = plrf.embeddings(problem)[1]                                  # W of seed 1 alone
    sub = plrf.simulate_plrf(single, _every_optimizer, shape["lrs"][pick], shape["batch"], 5,
                             num_seeds=seeds, devices=one_device, **kwargs)
    np.testing.assert_array_equal(sub.risk, full.risk[1, :seeds][:, pick], err_msg=str(shape))
    assert np.all(np.isfinite(full.risk)) and np.ptp(full.risk[..., -1]) > 0


@pytest.mark.slow
def test_every_optimizer_dispatch_runs_each_optimizer_exactly():
  """The dispatcher used above trains config i exactly as its own optimizer would."""
  problem = linreg.power_law_problem(33, 3.0, 1.5)
  lrs = _learning_rates(np.random.default_rng(0), 5)
  mixed = linreg.simulate(problem, _every_optimizer, lrs, [3], 6, num_seeds=2,
                          noise_model="minibatch", record_steps=[6])
  for i, name in enumerate(_NAMES):
    alone = linreg.simulate(problem, OPTIMIZERS[name], lrs[i:i + 1], [3], 6, num_seeds=2,
                            noise_model="minibatch", record_steps=[6])
    np.testing.assert_array_equal(alone.risk[:, :, 0], mixed.risk[:, :, i], err_msg=name)


@pytest.mark.parametrize("shape", [(), (1,), (7,), (3, 5), (2, 3, 129), (4097,)])
def test_fast_normal_is_jax_random_normal_bit_for_bit(shape):
  """``kernels.normal`` (unrolled Threefry) draws ``jax.random.normal``'s numbers: raw and
  typed keys, under jit and vmap."""
  for key in (jax.random.PRNGKey(0), jax.random.PRNGKey(2**31 + 5), jax.random.key(42),
              jax.random.fold_in(jax.random.key(7), 3)):
    np.testing.assert_array_equal(kernels.normal(key, shape), jax.random.normal(key, shape))
    keys = jax.random.split(key, 3)
    fast = jax.jit(jax.vmap(lambda k: kernels.normal(k, shape)))(keys)
    np.testing.assert_array_equal(fast, jax.vmap(lambda k: jax.random.normal(k, shape))(keys))


def test_fast_normal_falls_back_where_it_does_not_apply():
  """Other dtypes, key implementations and the non-partitionable Threefry are drawn by
  ``jax.random.normal`` itself."""
  key = jax.random.PRNGKey(3)
  for dtype in (jnp.bfloat16, jnp.float16):
    np.testing.assert_array_equal(kernels.normal(key, (5, 3), dtype),
                                  jax.random.normal(key, (5, 3), dtype))
  rbg = jax.random.key(3, impl="rbg")
  np.testing.assert_array_equal(kernels.normal(rbg, (9,)), jax.random.normal(rbg, (9,)))
  with jax.threefry_partitionable(False):
    np.testing.assert_array_equal(kernels.normal(key, (4, 6)), jax.random.normal(key, (4, 6)))


@pytest.mark.parametrize("num_features,batch_size", [(3, 1), (40, 3), (512, 1), (512, 16),
                                                     (5000, 64), (300000, 1)])
def test_plrf_chunk_size(num_features, batch_size):
  """A power of two <= 64 whose chunk holds <= 2^18 numbers per row (or a single step)."""
  size = plrf.chunk_size(num_features, batch_size)
  assert size in (1, 2, 4, 8, 16, 32, 64)
  assert size == 1 or size * batch_size * (num_features + 1) <= 2**18
  assert size == 64 or 2 * size * batch_size * (num_features + 1) > 2**18


@pytest.mark.slow
def test_plrf_trajectory_is_independent_of_chunks_and_record_steps():
  """Runs crossing sample chunks (U = 64 here): the risk at step 150 is the same bit for
  bit whether the run stops to record at 7, 64, 65 and 128 or not, on 8 devices or one."""
  problem = plrf.plrf_problem(40, 24, 1.0, 0.7, noise_std=0.1)
  assert plrf.chunk_size(40, 3) == 64
  lrs = _learning_rates(np.random.default_rng(5), 6)
  run = functools.partial(plrf.simulate_plrf, problem, _every_optimizer, lrs, 3, 150,
                          num_seeds=8, schedules="wsd")
  stops = run(record_steps=[7, 64, 65, 128, 150])
  straight = run(record_steps=[150])
  one = run(record_steps=[65, 150], devices=jax.devices()[:1])
  np.testing.assert_array_equal(stops.risk[..., -1], straight.risk[..., -1])
  np.testing.assert_array_equal(one.risk, stops.risk[..., [2, 4]])
  assert np.all(np.isfinite(stops.risk)) and np.ptp(stops.risk[..., -1]) > 0


def test_plrf_chunks_hold_each_steps_own_samples(monkeypatch):
  """Drawing U steps' samples at once changes no sample: a run drawn one step at a time
  agrees to float32 rounding (the embedding's product has another blocking)."""
  problem = plrf.plrf_problem(30, 12, 1.0, 0.7, noise_std=0.1)
  run = lambda: plrf.simulate_plrf(problem, lambda lr: optax.sgd(lr), [0.02, 0.05], 2, 100,
                                   num_seeds=2, record_steps=[37, 100]).risk
  chunked = run()
  monkeypatch.setattr(plrf, "chunk_size", lambda num_features, batch_size: 1)
  stepwise = run()
  np.testing.assert_allclose(chunked, stepwise, rtol=1e-5)
  assert np.ptp(chunked) > 0
