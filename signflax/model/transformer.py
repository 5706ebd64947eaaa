"""A LLaMA-style decoder-only transformer in Flax NNX.

RMSNorm, rotary position embeddings, SwiGLU MLP, optional grouped-query
attention, tied or untied embeddings, no biases. Parameters are float32 and
carry logical axis names (``nnx.with_partitioning``); compute runs in
``config.dtype``. The blocks are stacked on a leading ``layers`` axis
(``nnx.vmap`` at init) and applied with ``nnx.scan``, so compile time does not
grow with depth; ``config.remat`` rematerializes each block in the backward pass.

Parameter paths name their role (``embed``, ``layers/attn/q``, ``lm_head``), so
path-routed optimizers such as Muon can tell matrices from embeddings.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from signflax import config_schema as cs
from signflax.parallel import constrain

REMAT_POLICIES = {
    "none": None,  # no rematerialization
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}
ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn", "splash")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Shape and numerics of the transformer (mirrors ``config.model``)."""
  vocab_size: int = 256
  num_layers: int = 4
  d_model: int = 256
  num_heads: int = 4
  num_kv_heads: int | None = None   # None = num_heads (no GQA)
  head_dim: int | None = None       # None = d_model // num_heads
  mlp_dim: int | None = None        # None = 8/3 d_model rounded up to a multiple of 64
  max_seq_len: int = 128            # the model's context (RoPE tables)
  rope_theta: float = 10_000.0
  norm_eps: float = 1e-6
  tie_embeddings: bool = True
  dtype: str = "float32"            # compute dtype; params stay float32
  attention_impl: str = "auto"      # "auto" (splash on TPU, cudnn where supported, else xla),
                                    # "xla", "cudnn", "splash"
  remat: str = "none"               # a key of REMAT_POLICIES
  init_std: float = 0.02

  @classmethod
  def from_config(cls, model_config) -> "TransformerConfig":
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(dict(model_config)) - set(fields))
    if unknown:
      raise ValueError(f"config.model: unknown field(s) {', '.join(unknown)}; fields: "
                       f"{', '.join(fields)}")
    return cls(**dict(model_config))

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  @property
  def qk_dim(self) -> int:
    return self.head_dim or self.d_model // self.num_heads

  @property
  def hidden_dim(self) -> int:
    return self.mlp_dim or 64 * -(-(8 * self.d_model // 3) // 64)

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]

  def check(self) -> None:
    """Raises a one-line ValueError naming the bad ``config.model`` field (``SCHEMA``)."""
    SCHEMA.check(dataclasses.asdict(self), prefix="config.model")


SCHEMA = cs.from_dataclass(TransformerConfig, {
    "vocab_size": cs.integer(1, optional=True,
                             doc="None = the tokenizer's vocabulary, padded to a multiple of 128"),
    "num_layers": cs.integer(1, doc="transformer blocks (stacked, applied with nnx.scan)"),
    "d_model": cs.integer(1, doc="width of the residual stream"),
    "num_heads": cs.integer(1, doc="query heads"),
    "num_kv_heads": cs.integer(1, optional=True,
                               doc="key/value heads (grouped-query attention); None = num_heads"),
    "head_dim": cs.integer(1, optional=True, doc="None = d_model // num_heads"),
    "mlp_dim": cs.integer(1, optional=True,
                          doc="SwiGLU hidden size; None = 8/3 d_model rounded up to 64"),
    "max_seq_len": cs.integer(1, doc="the model's context (RoPE tables)"),
    "rope_theta": cs.real(0, low_open=True, doc="RoPE base frequency"),
    "norm_eps": cs.real(0, low_open=True, doc="RMSNorm epsilon"),
    "tie_embeddings": cs.boolean(doc="the output head reuses the input embedding"),
    "dtype": cs.choice(*DTYPES, doc="compute dtype; parameters stay float32"),
    "attention_impl": cs.choice(*ATTENTION_IMPLEMENTATIONS,
                                doc="auto = cudnn where supported, else xla"),
    "remat": cs.choice(*REMAT_POLICIES,
                       doc="rematerialization of each block in the backward pass"),
    "init_std": cs.real(0, low_open=True, doc="standard deviation of the normal init"),
}, doc="Shape and numerics of the transformer (``signflax.model.TransformerConfig``).")


@SCHEMA.rule
def _heads_fit(model) -> str | None:
  if model["attention_impl"] == "cudnn" and model["dtype"] == "float32":
    return ("config.model.attention_impl: 'cudnn' needs dtype bfloat16 or float16, "
            "got float32")
  heads = model["num_heads"]
  kv_heads = model["num_kv_heads"] or heads
  if heads % kv_heads:
    return f"config.model.num_kv_heads: {kv_heads} must divide num_heads={heads}"
  if model["head_dim"] is None and model["d_model"] % heads:
    return (f"config.model.num_heads: {heads} must divide d_model={model['d_model']} "
            "(or set head_dim)")
  qk_dim = model["head_dim"] or model["d_model"] // heads
  if qk_dim % 2:
    return f"config.model.head_dim: must be even for rotary embeddings, got {qk_dim}"
  return None


def _param(rngs: nnx.Rngs, init: Callable, shape, axes: tuple[str, ...]) -> nnx.Param:
  """A float32 parameter annotated with logical axis names."""
  return nnx.Param(nnx.with_partitioning(init, axes)(rngs.params(), shape, jnp.float32))


class RMSNorm(nnx.Module):
  """y = x / rms(x) * scale, computed in float32."""

  def __init__(self, dim: int, eps: float, *, rngs: nnx.Rngs):
    self.scale = _param(rngs, nnx.initializers.ones, (dim,), ("embed",))
    self.eps = eps

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * self.scale[...]).astype(x.dtype)


def cudnn_attention_supported(dtype, head_dim: int) -> bool:
  """Whether cuDNN's fused (flash) attention can run here.

  It needs an NVIDIA GPU of compute capability >= 8.0 (Ampere, Hopper), a 16-bit
  dtype, and a head size that is a multiple of 8 and at most 128.
  """
  if jax.default_backend() != "gpu" or jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16):
    return False
  capability = getattr(jax.devices()[0], "compute_capability", "0")
  return float(capability) >= 8.0 and head_dim % 8 == 0 and head_dim <= 128


def target_platform() -> str:
  """The platform the code being traced will run on: the context mesh's, else the default.

  Under ``jax.set_mesh`` with compile-only TPU devices (``signflax compile``) this
  is "tpu" on a CPU host.
  """
  mesh = jax.sharding.get_abstract_mesh()
  device = None if mesh.empty else getattr(mesh, "abstract_device", None)
  return device.platform if device is not None else jax.default_backend()


def attention_implementation(cfg: "TransformerConfig", length: int | None = None) -> str:
  """``cfg.attention_impl`` resolved: "auto" is "splash" on TPU, "cudnn" where
  supported, else "xla".

  ``jax.nn.dot_product_attention(implementation=None)`` means XLA's attention,
  which writes the [batch, heads, length, length] scores and probabilities to
  memory in the forward pass and again in the backward; the fused kernels (cuDNN
  on GPU, Pallas splash attention on TPU) keep them on chip (FlashAttention), so
  "auto" asks for one whenever it can run (splash: a sequence ``length`` that is a
  multiple of 128, the kernel's smallest tile).
  """
  if cfg.attention_impl != "auto":
    return cfg.attention_impl
  if target_platform() == "tpu" and (length is None or length % 128 == 0):
    return "splash"
  return "cudnn" if cudnn_attention_supported(cfg.compute_dtype, cfg.qk_dim) else "xla"


def _splash_block(length: int) -> int:
  """The kernel's tile along the sequence: 512, 256 or 128, whichever divides it."""
  block = next((block for block in (512, 256, 128) if length % block == 0), None)
  if block is None:
    raise ValueError(f"config.model.attention_impl: 'splash' needs a sequence length that is "
                     f"a multiple of 128, got {length}")
  return block


def splash_attention(q, k, v, *, interpret: bool | None = None, block: int | None = None):
  """Causal attention by the Pallas splash-attention kernel (TPU FlashAttention).

  ``q [b, t, h, d]``, ``k, v [b, t, h_kv, d]`` -> ``[b, t, h, d]``:
  softmax(q k^T / sqrt(d) + causal mask) v, computed block by block without
  writing the [t, t] scores to memory; fully masked blocks are skipped.
  ``interpret`` (None = unless the target is a TPU) runs the kernel in the Pallas
  interpreter, so it can be tested on CPU. Under a mesh the kernel runs per
  shard (``shard_map``): examples over the batch axes, heads over ``tensor``
  where it divides both head counts. ``block``: the tile along the sequence, a
  multiple of 128 (None = 512, 256 or 128, whichever divides the length first).
  """
  from jax.experimental.pallas.ops.tpu import splash_attention as splash  # only when used

  if interpret is None:
    interpret = target_platform() != "tpu"
  b, t, h, d = q.shape
  q = q * jnp.asarray(d ** -0.5, q.dtype)
  q, k, v = (x.transpose(0, 2, 1, 3) for x in (q, k, v))  # [b, heads, t, d]
  mesh = jax.sharding.get_abstract_mesh()
  # A Mosaic kernel cannot be partitioned by the compiler: run it manual over every
  # mesh axis (axes already manual, e.g. inside a per-replica shard_map, stay so).
  free = () if mesh.empty else tuple(a for a in mesh.axis_names if a not in mesh.manual_axes)
  batch_axes = tuple(a for a in ("data", "fsdp") if a in free and mesh.shape[a] > 1)
  if batch_axes and b % math.prod(mesh.shape[a] for a in batch_axes):
    batch_axes = ()
  head_axis = "tensor" if ("tensor" in free and mesh.shape["tensor"] > 1
                           and h % mesh.shape["tensor"] == 0
                           and k.shape[1] % mesh.shape["tensor"] == 0) else None

  def local(q, k, v):
    tile = block or _splash_block(t)
    sizes = splash.BlockSizes(block_q=tile, block_kv=tile, block_kv_compute=tile,
                              block_q_dkv=tile, block_kv_dkv=tile, block_kv_dkv_compute=tile,
                              block_q_dq=tile, block_kv_dq=tile)
    mask = splash.MultiHeadMask([splash.CausalMask((t, t))] * q.shape[1])
    kernel = splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                    interpret=interpret)
    return jax.vmap(kernel)(q, k, v)

  if free:
    spec = jax.sharding.PartitionSpec(batch_axes or None, head_axis, None, None)
    local = jax.shard_map(local, in_specs=(spec, spec, spec), out_specs=spec,
                          axis_names=frozenset(free), check_vma=False)
  return local(q, k, v).transpose(0, 2, 1, 3)


def attention(q, k, v, implementation: str):
  """Causal attention ``[b, t, h, d]`` by ``implementation`` ("xla", "cudnn", "splash")."""
  if implementation == "splash":
    return splash_attention(q, k, v)
  return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=implementation)


def rotary_embedding(x, positions, theta: float):
  """Rotates pairs (x[..., :d/2], x[..., d/2:]) of ``x[b, t, h, d]`` by position-dependent angles."""
  half = x.shape[-1] // 2
  freq = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angle = positions[..., None].astype(jnp.float32) * freq  # [b, t, half]
  sin, cos = jnp.sin(angle)[:, :, None, :], jnp.cos(angle)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class Attention(nnx.Module):
  """Causal multi-head attention with grouped key/value heads and RoPE.

  Projections are stored as matrices (``[embed, heads*head_dim]``), so Muon
  orthogonalizes each one as a whole.
  """

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    d, q_dim, kv_dim = cfg.d_model, cfg.num_heads * cfg.qk_dim, cfg.kv_heads * cfg.qk_dim
    init = nnx.initializers.normal(cfg.init_std)
    out_init = nnx.initializers.normal(cfg.init_std / (2 * cfg.num_layers) ** 0.5)
    self.q = _param(rngs, init, (d, q_dim), ("embed", "heads"))
    self.k = _param(rngs, init, (d, kv_dim), ("embed", "kv"))
    self.v = _param(rngs, init, (d, kv_dim), ("embed", "kv"))
    self.o = _param(rngs, out_init, (q_dim, d), ("heads", "embed"))

  def __call__(self, x, positions):
    cfg, dtype = self.cfg, x.dtype
    b, t, _ = x.shape
    q = (x @ self.q[...].astype(dtype)).reshape(b, t, cfg.num_heads, cfg.qk_dim)
    k = (x @ self.k[...].astype(dtype)).reshape(b, t, cfg.kv_heads, cfg.qk_dim)
    v = (x @ self.v[...].astype(dtype)).reshape(b, t, cfg.kv_heads, cfg.qk_dim)
    q = constrain(rotary_embedding(q, positions, cfg.rope_theta), ("batch", "length", "act_heads", None))
    k = rotary_embedding(k, positions, cfg.rope_theta)
    out = attention(q, k, v, attention_implementation(cfg, t))
    return out.reshape(b, t, -1) @ self.o[...].astype(dtype)


class MLP(nnx.Module):
  """SwiGLU: (silu(x W_gate) * x W_up) W_down."""

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    d, h = cfg.d_model, cfg.hidden_dim
    init = nnx.initializers.normal(cfg.init_std)
    out_init = nnx.initializers.normal(cfg.init_std / (2 * cfg.num_layers) ** 0.5)
    self.gate = _param(rngs, init, (d, h), ("embed", "mlp"))
    self.up = _param(rngs, init, (d, h), ("embed", "mlp"))
    self.down = _param(rngs, out_init, (h, d), ("mlp", "embed"))

  def __call__(self, x):
    dtype = x.dtype
    hidden = jax.nn.silu(x @ self.gate[...].astype(dtype)) * (x @ self.up[...].astype(dtype))
    hidden = constrain(hidden, ("batch", "length", "act_mlp"))
    return hidden @ self.down[...].astype(dtype)


class Block(nnx.Module):
  """Pre-norm residual block: x + attn(norm(x)), then + mlp(norm(x))."""

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps, rngs=rngs)
    self.attn = Attention(cfg, rngs=rngs)
    self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps, rngs=rngs)
    self.mlp = MLP(cfg, rngs=rngs)

  def __call__(self, x, positions):
    x = x + self.attn(self.attn_norm(x), positions)
    x = x + self.mlp(self.mlp_norm(x))
    return constrain(x, ("batch", "length", "act_embed"))


class Transformer(nnx.Module):
  """Decoder-only LM: tokens ``int32[b, t]`` -> logits ``float32[b, t, vocab]``."""

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    cfg.check()
    self.cfg = cfg
    self.embed = _param(rngs, nnx.initializers.normal(cfg.init_std),
                        (cfg.vocab_size, cfg.d_model), ("vocab", "embed"))

    @nnx.split_rngs(splits=cfg.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make_blocks(rngs):
      return Block(cfg, rngs=rngs)

    self.layers = make_blocks(rngs)
    self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps, rngs=rngs)
    if not cfg.tie_embeddings:
      self.lm_head = _param(rngs, nnx.initializers.normal(cfg.init_std),
                            (cfg.d_model, cfg.vocab_size), ("embed", "vocab"))

  def features(self, tokens, positions=None):
    """The final-normed hidden states ``[b, t, d_model]`` in the compute dtype."""
    cfg, dtype = self.cfg, self.cfg.compute_dtype
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    # Gather from the whole table (all-gathered, as FSDP does for every weight):
    # a gather from a (vocab, embed)-sharded table cannot emit batch-sharded rows.
    table = constrain(self.embed[...], (None, None))
    x = jnp.take(table, tokens, axis=0).astype(dtype)
    x = constrain(x, ("batch", "length", "act_embed"))

    def apply_block(block, x):
      return block(x, positions)

    policy = REMAT_POLICIES[cfg.remat]
    if cfg.remat != "none":
      apply_block = nnx.remat(apply_block, policy=policy, prevent_cse=False)

    @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry,
              transform_metadata={nnx.PARTITION_NAME: "layers"})
    def run_layers(block, x):
      return apply_block(block, x)

    return self.final_norm(run_layers(self.layers, x))

  def head(self) -> jax.Array:
    """The output projection ``float32[d_model, vocab]`` (the embedding's transpose if tied)."""
    return self.embed[...].T if self.cfg.tie_embeddings else self.lm_head[...]

  def __call__(self, tokens, positions=None):
    x = self.features(tokens, positions)
    logits = x @ self.head().astype(x.dtype)
    return constrain(logits, ("batch", "length", "act_vocab")).astype(jnp.float32)


def flops_per_token(cfg: TransformerConfig, seq_len: int) -> float:
  """Training FLOPs per token: 6 N + attention (PaLM appendix B, forward + backward).

  N counts the parameters used in matrix multiplies (all blocks plus the output
  projection, whether or not it is tied; the embedding lookup is free). The
  attention term 12 L H_q d_head T is for full (non-causal-skipping) score and
  value matmuls, as in PaLM's and MaxText's MFU.
  """
  d, L = cfg.d_model, cfg.num_layers
  attn = d * cfg.num_heads * cfg.qk_dim * 2 + d * cfg.kv_heads * cfg.qk_dim * 2
  mlp = 3 * d * cfg.hidden_dim
  matmul_params = L * (attn + mlp) + d * cfg.vocab_size
  return 6.0 * matmul_params + 12.0 * L * cfg.num_heads * cfg.qk_dim * seq_len


# Functional interface: the trainer keeps parameters as a plain nested dict of
# arrays (what Optax, Orbax and path-routed optimizers want) and merges them into
# the module only inside jitted functions.


def _build(cfg: TransformerConfig, rng) -> Transformer:
  # Sharding is applied by jit's out_shardings (signflax.parallel), not eagerly.
  with nnx.use_eager_sharding(False):
    return Transformer(cfg, rngs=nnx.Rngs(params=rng))


def init_params(cfg: TransformerConfig, rng: jax.Array) -> dict:
  """Initial float32 parameters as a nested dict (jit it with out_shardings)."""
  return nnx.to_pure_dict(nnx.state(_build(cfg, rng), nnx.Param))


def abstract_model(cfg: TransformerConfig):
  """Returns ``(graphdef, param shapes, param logical axes)`` without allocating.

  ``param shapes`` is a nested dict of ``jax.ShapeDtypeStruct``; ``param
  logical axes`` has the same structure with a tuple of names per parameter.
  """
  model = nnx.eval_shape(lambda: _build(cfg, jax.random.key(0)))
  graphdef, state = nnx.split(model, nnx.Param)
  axes = jax.tree.map(lambda v: tuple(v.get_metadata()["out_sharding"]), state,
                      is_leaf=lambda x: isinstance(x, nnx.Variable))
  return graphdef, nnx.to_pure_dict(state), nnx.to_pure_dict(axes)


def apply(graphdef, params: dict, tokens: jax.Array) -> jax.Array:
  """Logits ``float32[b, t, vocab]`` of the model ``graphdef`` with ``params``."""
  return nnx.merge(graphdef, params)(tokens)


def apply_features(graphdef, params: dict, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(hidden [b, t, d_model] in the compute dtype, head float32[d_model, vocab])``.

  For losses that never hold the whole ``[b, t, vocab]`` logits (see
  ``signflax.train.loss.linear_cross_entropy``).
  """
  model = nnx.merge(graphdef, params)
  return model.features(tokens), model.head()
