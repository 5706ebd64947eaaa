"""Muon dimension numbers (the README recipes) and Muon in every sharding mode."""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

import signflax.optim as sfo

F32 = dict(ns_dtype="float32")


def normal(seed, shape):
  return jax.random.normal(jax.random.key(seed), shape)


def muon_update(tx, grads, params=None):
  params = grads if params is None else params
  return tx.update(grads, tx.init(params), params)[0]


def expected(g, rows, cols, perm=None):
  """-lr * shape-scaled orthogonalization of g read as a (rows x cols) matrix."""
  x = g if perm is None else jnp.transpose(g, perm)
  o = sfo.orthogonalize(x.reshape(-1, rows, cols), dtype=jnp.float32).reshape(x.shape)
  if perm is not None:
    o = jnp.transpose(o, np.argsort(perm))
  return o * math.sqrt(max(1.0, cols / rows))


# --- recipes ------------------------------------------------------------------------------


def test_recipe_linen_dense_general_qkv_and_out():
  """(D, H, Dh) q/k/v kernels are one D x (H*Dh) matrix; the output projection
  (H, Dh, D) one (H*Dh) x D matrix; under nn.scan a leading layer axis is a batch."""
  g = {"query": {"kernel": normal(0, (16, 4, 8))}, "out": {"kernel": normal(1, (4, 8, 16))},
       "scanned": {"kernel": normal(2, (3, 16, 4, 8))}}
  dims = {"query": {"kernel": sfo.dense_general_dims(3, num_input_axes=1)},
          "out": {"kernel": sfo.dense_general_dims(3, num_input_axes=2)},
          "scanned": {"kernel": sfo.dense_general_dims(4, num_input_axes=1, num_batch_axes=1)}}
  assert dims["out"]["kernel"] == sfo.MuonDims((0, 1), (2,))
  u = muon_update(sfo.scale_by_muon(dimension_numbers=dims, **F32), g)
  np.testing.assert_allclose(u["query"]["kernel"], expected(g["query"]["kernel"], 16, 32),
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(u["out"]["kernel"], expected(g["out"]["kernel"], 32, 16),
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(u["scanned"]["kernel"], expected(g["scanned"]["kernel"], 16, 32),
                             rtol=1e-4, atol=1e-5)


def test_recipe_nnx_einsum_and_linear_general():
  """Gemma's einsum kernels: q (N, D, H), kv (C, K, D, H) with C a batch, out (N, H, D)."""
  assert sfo.einsum_dims("BTD,NDH->BTNH") == sfo.MuonDims((1,), (0, 2))
  assert sfo.einsum_dims("BSD,CKDH->CBSKH", batch="C") == sfo.MuonDims((2,), (1, 3))
  assert sfo.einsum_dims("BTNH,NHD->BTD") == sfo.MuonDims((0, 1), (2,))
  g = {"q": normal(0, (4, 16, 8)), "kv": normal(1, (2, 4, 16, 8))}
  dims = sfo.dims_by_path({r"^q$": sfo.einsum_dims("BTD,NDH->BTNH"),
                           r"^kv$": sfo.einsum_dims("BSD,CKDH->CBSKH", batch="C")})
  u = muon_update(sfo.scale_by_muon(dimension_numbers=dims, **F32), g)
  np.testing.assert_allclose(u["q"], expected(g["q"], 16, 32, perm=(1, 0, 2)), rtol=1e-4,
                             atol=1e-5)
  np.testing.assert_allclose(u["kv"], expected(g["kv"], 16, 32, perm=(0, 2, 1, 3)),
                             rtol=1e-4, atol=1e-5)
  # NNX LinearGeneral(in_features=(4, 8), out_features=16): kernel (4, 8, 16)
  assert sfo.dense_general_dims(3, num_input_axes=2) == sfo.MuonDims((0, 1), (2,))


def test_recipe_convolution():
  g = {"conv": {"kernel": normal(0, (3, 3, 4, 8))}}
  u = muon_update(sfo.scale_by_muon(dimension_numbers={"conv": {"kernel": sfo.conv_dims()}},
                                    **F32), g)
  np.testing.assert_allclose(u["conv"]["kernel"], expected(g["conv"]["kernel"], 36, 8),
                             rtol=1e-4, atol=1e-5)


def test_recipe_maxtext_logical_axes():
  axes = {"query": ("embed", "layers", "heads", "head_dim"),
          "out": ("heads", "layers", "head_dim", "embed"),
          "wi": ("embed", "layers", "mlp"), "embedding": ("vocab", "embed"),
          "norm": ("layers", "embed")}
  dims = sfo.dims_from_logical_axes(axes)
  assert dims["query"] == sfo.MuonDims(0, (2, 3)) and dims["out"] == sfo.MuonDims((0, 2), 3)
  assert dims["wi"] == sfo.MuonDims(0, (2,))
  assert dims["embedding"] is None and dims["norm"] is None
  g = {"query": normal(0, (16, 2, 4, 8)), "out": normal(1, (4, 2, 8, 16)),
       "wi": normal(2, (16, 2, 32)), "embedding": normal(3, (64, 16)),
       "norm": normal(4, (2, 16))}
  u = muon_update(sfo.muon(1.0, dimension_numbers=dims, fallback="signum",
                           fallback_learning_rate=1e-3, **F32), g)
  np.testing.assert_allclose(u["query"], -expected(g["query"], 16, 32, perm=(1, 0, 2, 3)),
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(u["out"], -expected(g["out"], 32, 16, perm=(1, 0, 2, 3)),
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(u["embedding"], -1e-3 * jnp.sign(g["embedding"]))


def test_recipe_output_layer_not_named_head_goes_to_fallback():
  params = {"linear1": {"kernel": normal(0, (16, 32))}, "linear2": {"kernel": normal(1, (32, 10))}}
  dims = sfo.dims_by_path({r"linear2": None})
  labels = sfo.muon_labels(params, dimension_numbers=dims)
  assert labels == {"linear1": {"kernel": "muon"}, "linear2": {"kernel": "fallback"}}
  hidden = lambda path, leaf: sfo.is_hidden_matrix(path, leaf) and "linear2" not in \
      sfo.path_name(path)
  assert sfo.muon_labels(params, hidden) == labels
  u = muon_update(sfo.muon(1.0, dimension_numbers=dims, fallback="signum",
                           fallback_learning_rate=1e-3, **F32), params)
  np.testing.assert_allclose(u["linear2"]["kernel"], -1e-3 * jnp.sign(params["linear2"]["kernel"]))


def test_default_warns_once_for_doubtful_leaves_only():
  g = {"layers": {"w": normal(0, (2, 8, 8))}, "dense": {"kernel": normal(1, (8, 2, 4))}}
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    tx = sfo.scale_by_muon(**F32)
    muon_update(tx, g)
    muon_update(tx, g)
  messages = [str(w.message) for w in caught]
  assert len(messages) == 1 and "dense/kernel" in messages[0] and "layers/w" not in messages[0]


def test_dimension_numbers_errors():
  with pytest.raises(ValueError, match="^dimension_numbers: w"):
    sfo.scale_by_muon(dimension_numbers={"w": sfo.MuonDims(0, 0)}).init({"w": jnp.ones((4, 4))})
  with pytest.raises(ValueError, match="^dimension_numbers: no entry for v"):
    sfo.scale_by_muon(dimension_numbers={"w": sfo.MuonDims()}).init(
        {"w": jnp.ones((4, 4)), "v": jnp.ones((4, 4))})
  # optax's dimension numbers are accepted as they are
  dims = {"w": optax.contrib.MuonDimensionNumbers(0, 1)}
  sfo.scale_by_muon(dimension_numbers=dims).init({"w": jnp.ones((4, 4))})


def test_masked_node_walk_from_docstring():
  params = {"w": jnp.ones((4, 4)), "b": jnp.ones(4)}
  state = sfo.muon(1e-2).init(params)
  is_masked = lambda x: isinstance(x, optax.MaskedNode)
  nodes = jax.tree.leaves(state, is_leaf=is_masked)
  assert any(is_masked(x) for x in nodes)
  shapes = [x.shape for x in nodes if not is_masked(x)]
  assert (4, 4) in shapes and (4,) in shapes
  walked = [(sfo.path_name(p), x.shape) for p, x in jax.tree.leaves_with_path(state)]
  assert sorted(shape for _, shape in walked) == sorted(shapes)


def test_readme_dims_by_path_snippet():
  dims = sfo.dims_by_path({
      r"linear2": None,
      r"(query|key|value)/kernel": sfo.MuonDims(0, (1, 2)),
      r"attention/out/kernel": sfo.MuonDims((0, 1), 2),
      r"conv\w*/kernel": lambda leaf: sfo.conv_dims(leaf.ndim),
  })
  params = {"conv1": {"kernel": normal(0, (3, 3, 4, 8))}, "linear2": {"kernel": normal(1, (8, 10))},
            "attention": {"query": {"kernel": normal(2, (8, 2, 4))},
                          "out": {"kernel": normal(3, (2, 4, 8))}},
            "linear1": {"kernel": normal(4, (8, 8)), "bias": normal(5, (8,))}}
  labels = sfo.muon_labels(params, dimension_numbers=dims)
  assert labels["linear2"]["kernel"] == "fallback" and labels["linear1"]["bias"] == "fallback"
  assert labels["conv1"]["kernel"] == labels["attention"]["out"]["kernel"] == "muon"
  u = muon_update(sfo.muon(1.0, dimension_numbers=dims, **F32), params)
  np.testing.assert_allclose(u["conv1"]["kernel"], -expected(params["conv1"]["kernel"], 36, 8),
                             rtol=1e-4, atol=1e-5)


# --- inject_hyperparams and dtypes ----------------------------------------------------------


def test_inject_hyperparams_needs_no_static_args():
  params = {"w": normal(0, (8, 16))}
  tx = optax.inject_hyperparams(sfo.muon)(learning_rate=0.1, ns_dtype="float32")
  u, _ = jax.jit(tx.update)(params, tx.init(params), params)
  np.testing.assert_allclose(u["w"], -0.1 * expected(params["w"], 8, 16), rtol=1e-4, atol=1e-5)
  table = np.tile(np.array([3.4445, -4.7750, 2.0315]), (5, 1))
  tx = optax.inject_hyperparams(sfo.muon)(learning_rate=0.1, ns_dtype="float32", coeffs=table)
  u2, _ = jax.jit(tx.update)(params, tx.init(params), params)
  np.testing.assert_allclose(u2["w"], u["w"], rtol=1e-6, atol=1e-7)
  tx = optax.inject_hyperparams(sfo.muon)(learning_rate=0.1, steps=5)
  with pytest.raises(TypeError, match=r"static_args=\('steps', 'ns_dtype'\)"):
    jax.jit(tx.update)(params, tx.init(params), params)


def test_inject_hyperparams_get_optimizer_and_mu_dtype():
  params = {"w": normal(0, (8, 16))}
  tx = optax.inject_hyperparams(sfo.get_optimizer)(
      name="signum", learning_rate=0.1, beta=0.5)
  u, state = jax.jit(tx.update)(params, tx.init(params), params)
  np.testing.assert_array_equal(u["w"], -0.1 * jnp.sign(params["w"]))
  assert float(state.hyperparams["learning_rate"]) == pytest.approx(0.1)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    tx = optax.inject_hyperparams(sfo.signum)(learning_rate=0.1, mu_dtype="bfloat16")
    state = tx.init(params)
    assert state.inner_state[0].momentum["w"].dtype == jnp.bfloat16
    with pytest.raises(TypeError, match="^mu_dtype: .*'bfloat16'"):
      optax.inject_hyperparams(sfo.signum)(learning_rate=0.1, mu_dtype=jnp.bfloat16).init(params)


def test_ns_dtype_auto_is_float32_on_cpu():
  g = {"w": normal(0, (8, 16))}
  auto = muon_update(sfo.scale_by_muon(ns_dtype="auto"), g)
  np.testing.assert_array_equal(auto["w"], muon_update(sfo.scale_by_muon(**F32), g)["w"])


# --- sharding modes -------------------------------------------------------------------------

MIXED = {  # name -> (shape, spec, dims); 2-D, layer-stacked 3-D and 4-D einsum leaves
    "proj": ((16, 32), P("fsdp", None), None),
    "layers/up": ((2, 16, 32), P(None, "fsdp", "tensor"), None),
    "layers/down": ((2, 32, 16), P("data", "tensor", "fsdp"), None),
    "q": ((4, 16, 8), P("tensor", "fsdp", None), sfo.einsum_dims("BTD,NDH->BTNH")),
    "kv": ((2, 4, 16, 64), P(None, "tensor", None, "fsdp"),
           sfo.einsum_dims("BSD,CKDH->CBSKH", batch="C")),
}


def _mixed_tree(seed):
  return {name: normal(seed + i, shape) for i, (name, (shape, _, _)) in enumerate(MIXED.items())}


def _mixed_dims(path, leaf):
  return MIXED[sfo.path_name(path)][2] or sfo.MuonDims()


@pytest.mark.parametrize("ns_impl", ["auto", "gram", "standard"])
@pytest.mark.parametrize("mode", ["explicit", "auto", "explicit_1x1"])
def test_mixed_tree_every_sharding_mode(mode, ns_impl):
  """Explicit and auto axes (and a 1x1x1 explicit mesh), with each Newton-Schulz
  iteration: same updates as with no mesh, and under explicit axes each update keeps its
  gradient's sharding."""
  shape = (1, 1, 1) if mode == "explicit_1x1" else (1, 2, 4)
  axis_type = AxisType.Auto if mode == "auto" else AxisType.Explicit
  mesh = jax.make_mesh(shape, ("data", "fsdp", "tensor"), axis_types=(axis_type,) * 3)
  tx = sfo.scale_by_muon(dimension_numbers=_mixed_dims, ns_impl=ns_impl, **F32)
  grads = [_mixed_tree(10 * s) for s in range(2)]
  params = _mixed_tree(100)

  def run(grads, params):
    state, outs = tx.init(params), []
    for g in grads:
      u, state = jax.jit(tx.update)(g, state, params)
      outs.append(u)
    return outs

  ref = run(grads, params)
  shardings = {k: NamedSharding(mesh, spec) for k, (_, spec, _) in MIXED.items()}
  put = lambda t: jax.device_put(t, shardings)
  with jax.set_mesh(mesh):
    got = run([put(g) for g in grads], put(params))
    if mode != "auto":
      out = jax.jit(tx.update)(put(grads[0]), tx.init(put(params)))[0]
      for k, (_, spec, _) in MIXED.items():
        assert out[k].sharding.is_equivalent_to(shardings[k], len(spec)), k
  for a, b in zip(got, ref):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5), a, b)


# --- a Gemma-like NNX model under an explicit fsdp x tensor mesh ----------------------------

GEMMA_SPECS = {  # Gemma's einsum layouts, vocab 32, width 16, 4 heads of 8
    "embedding": ((32, 16), P("tensor", "fsdp")),
    "q_einsum": ((4, 16, 8), P("tensor", "fsdp", None)),
    "kv_einsum": ((2, 4, 16, 8), P(None, "tensor", "fsdp", None)),
    "attn_vec_einsum": ((4, 8, 16), P("tensor", None, "fsdp")),
    "gating_einsum": ((2, 16, 32), P(None, "fsdp", "tensor")),
    "linear": ((32, 16), P("tensor", "fsdp")),
    "final_norm": ((16,), P()),
    "out": ((16, 32), P("fsdp", "tensor")),
}
GEMMA_DIMS = sfo.dims_by_path({
    r"q_einsum": sfo.einsum_dims("BTD,NDH->BTNH"),
    r"kv_einsum": sfo.einsum_dims("BSD,CKDH->CBSKH", batch="C"),
    r"attn_vec_einsum": sfo.einsum_dims("BTNH,NHD->BTD"),
    r"gating_einsum": sfo.MuonDims(1, 2),   # two (D x F) matrices: gate and up
    r"^out": None,                          # the output layer -> AdamW
})


@pytest.mark.slow
def test_gemma_like_nnx_model_explicit_mesh_equals_one_device():
  from flax import nnx

  class Gemma(nnx.Module):
    def __init__(self, mesh):
      for i, (name, (shape, spec)) in enumerate(GEMMA_SPECS.items()):
        value = 0.3 * normal(i, shape) + (name == "final_norm")
        if mesh is not None:
          value = jax.device_put(value, NamedSharding(mesh, spec))
        setattr(self, name, nnx.Param(value))

    def __call__(self, tokens):
      # Weights are gathered for the forward pass: the optimizer is under test, not the
      # model's collectives; gradients come back with the parameters' shardings.
      w = {k: (getattr(self, k)[...] if jax.sharding.get_abstract_mesh().empty else
               jax.sharding.reshard(getattr(self, k)[...], P())) for k in GEMMA_SPECS}
      x = w["embedding"][tokens]
      q = jnp.einsum("BTD,NDH->BTNH", x, w["q_einsum"])
      k, v = jnp.einsum("BSD,CKDH->CBSKH", x, w["kv_einsum"])
      att = jax.nn.softmax(jnp.einsum("BTNH,BSNH->BNTS", q, k) / math.sqrt(8), axis=-1)
      x = x + jnp.einsum("BTNH,NHD->BTD", jnp.einsum("BNTS,BSNH->BTNH", att, v),
                         w["attn_vec_einsum"])
      gate, up = jnp.einsum("BTD,CDF->CBTF", x, w["gating_einsum"])
      x = x + (jax.nn.gelu(gate) * up) @ w["linear"]
      return (x * w["final_norm"]) @ w["out"]

  tokens = jax.random.randint(jax.random.key(0), (4, 9), 0, 32)

  def train(mesh):
    model = Gemma(mesh)
    tx = sfo.muon(0.02, dimension_numbers=GEMMA_DIMS, fallback_learning_rate=3e-3, **F32)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, tokens):
      def loss_fn(model):
        logits = model(tokens[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()
      loss, grads = nnx.value_and_grad(loss_fn)(model)
      optimizer.update(model, grads)
      return loss

    losses = [float(step(model, optimizer, tokens)) for _ in range(3)]
    return losses, nnx.state(model, nnx.Param), nnx.state(optimizer.opt_state)

  mesh = jax.make_mesh((2, 4), ("fsdp", "tensor"), axis_types=(AxisType.Explicit,) * 2)
  with jax.set_mesh(mesh):
    losses, params, opt_state = train(mesh)
  assert params["q_einsum"][...].sharding.spec == GEMMA_SPECS["q_einsum"][1]
  ref_losses, ref_params, ref_opt_state = train(None)
  assert losses[-1] < losses[0]
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  close = lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4,
                                                  atol=1e-5)
  jax.tree.map(close, params, ref_params)
  jax.tree.map(close, opt_state, ref_opt_state)
