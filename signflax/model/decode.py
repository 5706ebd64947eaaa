"""Autoregressive decoding with a key/value cache.

Prefill runs the prompt through the model once and stores every layer's keys
and values; each further step feeds one token per row and attends over the
cache, so a step costs one token's matmuls plus reading the cache, instead of a
forward pass over the whole sequence. The math is the model's own (the same
modules, parameters and RoPE); attention over the cache masks the slots after
each query's position:

    out_t = softmax(q_t K[:s]^T / sqrt(d_head)) V[:s],   s = t + 1 filled slots.

``generate`` runs prefill and the whole sampling loop inside one ``jax.jit``
(a ``lax.while_loop`` that stops when every row has emitted EOS, when
``max_new_tokens`` are out, or when the context is full), so it compiles once
per (batch, prompt length, max_new_tokens) and reads no value back per token.
Under ``jax.set_mesh(mesh)`` with parameters sharded as in training, the cache
is sharded over the batch and key/value heads (``cache_axes``).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from signflax.model import transformer
from signflax.parallel import constrain

# Logical axes of a cache array [layers, batch, cache_len, kv_heads, head_dim].
CACHE_AXES = ("layers", "batch", "length", "act_heads", None)
STOP_REASONS = ("eos", "max_new_tokens", "context")


class KVCache(NamedTuple):
  """Keys and values of the positions fed so far, for every layer."""
  k: jax.Array        # [layers, batch, cache_len, kv_heads, head_dim], compute dtype
  v: jax.Array
  length: jax.Array   # int32 scalar: slots filled (the next position)


def init_cache(cfg: transformer.TransformerConfig, batch_size: int, cache_len: int) -> KVCache:
  """An empty cache for ``batch_size`` rows of up to ``cache_len`` positions."""
  shape = (cfg.num_layers, batch_size, cache_len, cfg.kv_heads, cfg.qk_dim)
  zeros = constrain(jnp.zeros(shape, cfg.compute_dtype), CACHE_AXES)
  return KVCache(zeros, zeros, jnp.zeros((), jnp.int32))


def _attend_cached(attn: transformer.Attention, x, positions, k_cache, v_cache, start):
  """Attention of ``x[b, t]`` at ``positions`` over the cache after writing its keys/values
  at slots ``[start, start + t)``; returns ``(output, k_cache, v_cache)``."""
  cfg, dtype = attn.cfg, x.dtype
  b, t, _ = x.shape
  q = (x @ attn.q[...].astype(dtype)).reshape(b, t, cfg.num_heads, cfg.qk_dim)
  k = (x @ attn.k[...].astype(dtype)).reshape(b, t, cfg.kv_heads, cfg.qk_dim)
  v = (x @ attn.v[...].astype(dtype)).reshape(b, t, cfg.kv_heads, cfg.qk_dim)
  q = transformer.rotary_embedding(q, positions, cfg.rope_theta)
  k = transformer.rotary_embedding(k, positions, cfg.rope_theta)
  k_cache = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), (0, start, 0, 0))
  v_cache = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), (0, start, 0, 0))
  slots = jnp.arange(k_cache.shape[1])
  mask = slots[None, None, None, :] <= positions[:, None, :, None]   # [b, 1, t, cache_len]
  out = jax.nn.dot_product_attention(q, k_cache, v_cache, mask=mask)
  return out.reshape(b, t, -1) @ attn.o[...].astype(dtype), k_cache, v_cache


def forward_cached(model: transformer.Transformer, tokens: jax.Array, cache: KVCache
                   ) -> tuple[jax.Array, KVCache]:
  """Feeds ``tokens[b, t]`` at positions ``cache.length + [0, t)``.

  Returns the float32 logits ``[b, vocab]`` of the last position and the cache
  with ``t`` more slots filled.
  """
  cfg, dtype = model.cfg, model.cfg.compute_dtype
  b, t = tokens.shape
  start = cache.length
  positions = jnp.broadcast_to(start + jnp.arange(t, dtype=jnp.int32), (b, t))
  table = constrain(model.embed[...], (None, None))
  x = jnp.take(table, tokens, axis=0).astype(dtype)

  @nnx.scan(in_axes=(0, nnx.Carry, 0, 0), out_axes=(nnx.Carry, 0, 0),
            transform_metadata={nnx.PARTITION_NAME: "layers"})
  def run_layers(block, x, k_cache, v_cache):
    h, k_cache, v_cache = _attend_cached(block.attn, block.attn_norm(x), positions,
                                         k_cache, v_cache, start)
    x = x + h
    x = x + block.mlp(block.mlp_norm(x))
    return x, k_cache, v_cache

  x, k, v = run_layers(model.layers, x, cache.k, cache.v)
  x = model.final_norm(x[:, -1])
  logits = (x @ model.head().astype(dtype)).astype(jnp.float32)
  return logits, KVCache(constrain(k, CACHE_AXES), constrain(v, CACHE_AXES), start + t)


def sample_logits(logits: jax.Array, key: jax.Array, *, temperature, top_k: int = 0,
                  top_p=1.0) -> jax.Array:
  """One token per row of ``logits[b, vocab]``.

  ``temperature == 0`` is greedy (argmax). Otherwise the logits are divided by
  the temperature, cut to the ``top_k`` largest (0 = all) and to the smallest
  set whose probability reaches ``top_p`` (nucleus sampling; 1 = all), and a
  token is drawn from the softmax of what remains.
  """
  greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  temperature = jnp.asarray(temperature, jnp.float32)
  scaled = logits / jnp.where(temperature > 0, temperature, 1.0)
  ordered = jnp.sort(scaled, axis=-1)[..., ::-1]
  if top_k:
    kth = ordered[..., min(top_k, logits.shape[-1]) - 1:][..., :1]
    scaled = jnp.where(scaled < kth, -jnp.inf, scaled)
    ordered = jnp.where(ordered < kth, -jnp.inf, ordered)
  # Nucleus: keep the tokens whose preceding cumulative probability is below top_p.
  probs = jax.nn.softmax(ordered, axis=-1)
  before = jnp.cumsum(probs, axis=-1) - probs
  cutoff = jnp.min(jnp.where(before < top_p, ordered, jnp.inf), axis=-1, keepdims=True)
  scaled = jnp.where(scaled < cutoff, -jnp.inf, scaled)
  drawn = jax.random.categorical(key, scaled, axis=-1).astype(jnp.int32)
  return jnp.where(temperature > 0, drawn, greedy)


class Generated(NamedTuple):
  """What ``generate`` returns (arrays; ``stop_reason`` is an index into STOP_REASONS)."""
  tokens: jax.Array        # int32[b, max_new_tokens]; after a row's EOS: eos_id
  num_steps: jax.Array     # int32: tokens generated per row (<= max_new_tokens)
  finished: jax.Array      # bool[b]: the row emitted EOS
  stop_reason: jax.Array   # int32 scalar


def generate(graphdef, params: dict, prompt: jax.Array, key: jax.Array, *,
             max_new_tokens: int, eos_id: int, temperature=0.0, top_k: int = 0, top_p=1.0,
             vocab_limit: int | None = None, context: int | None = None) -> Generated:
  """Samples up to ``max_new_tokens`` after ``prompt[b, P]`` with a KV cache (jit me).

  ``vocab_limit``: ids at or above it (the padded rows of the embedding) are never
  drawn. ``context`` (default ``cfg.max_seq_len``): the most positions the model
  attends over; the last token may be predicted from a full context, so at most
  ``context - P + 1`` tokens come out. Static: ``max_new_tokens``, ``eos_id``,
  ``top_k``, ``vocab_limit``, ``context``; ``temperature`` and ``top_p`` may be traced.
  """
  # Modules are merged inside each traced function: an NNX module may not cross into
  # the while loop's trace.
  feed = lambda tokens, cache: forward_cached(nnx.merge(graphdef, params), tokens, cache)
  cfg = nnx.merge(graphdef, params).cfg
  context = context or cfg.max_seq_len
  b, prompt_len = prompt.shape
  cache_len = max(min(context, prompt_len + max_new_tokens - 1), prompt_len)

  def pick(logits, key):
    if vocab_limit is not None and vocab_limit < logits.shape[-1]:
      logits = jnp.where(jnp.arange(logits.shape[-1]) < vocab_limit, logits, -jnp.inf)
    return sample_logits(logits, key, temperature=temperature, top_k=top_k, top_p=top_p)

  logits, cache = feed(prompt, init_cache(cfg, b, cache_len))
  key, first_key = jax.random.split(key)
  first = pick(logits, first_key)
  tokens = jnp.full((b, max_new_tokens), eos_id, jnp.int32).at[:, 0].set(first)
  finished = first == eos_id

  def more(carry):
    n, _, finished, cache, _ = carry
    return (n < max_new_tokens) & ~jnp.all(finished) & (cache.length < context)

  def step(carry):
    n, tokens, finished, cache, key = carry
    logits, cache = feed(jax.lax.dynamic_slice_in_dim(tokens, n - 1, 1, 1), cache)
    key, step_key = jax.random.split(key)
    token = jnp.where(finished, eos_id, pick(logits, step_key))
    tokens = jax.lax.dynamic_update_slice_in_dim(tokens, token[:, None], n, 1)
    return n + 1, tokens, finished | (token == eos_id), cache, key

  n, tokens, finished, cache, _ = jax.lax.while_loop(
      more, step, (jnp.int32(1), tokens, finished, cache, key))
  reason = jnp.where(jnp.all(finished), 0, jnp.where(n >= max_new_tokens, 1, 2))
  return Generated(tokens, n, finished, reason.astype(jnp.int32))


@functools.partial(jax.jit, static_argnums=0)
def _argmax_at(graphdef, params, buffer, position):
  logits = transformer.apply(graphdef, params, buffer)
  return jnp.argmax(jax.lax.dynamic_index_in_dim(logits, position - 1, 1, False), -1)


def greedy_recompute(graphdef, params: dict, prompt, num_tokens: int) -> np.ndarray:
  """Greedy decoding by re-running the full forward pass on the growing sequence.

  The reference for the cache: token ``i`` is the argmax of the logits at the
  last filled position of a ``[b, P + num_tokens]`` buffer (causal attention, so
  the unfilled tail changes nothing). One jitted forward per token (compiled once
  per buffer shape); returns int32[b, num_tokens].
  """
  prompt = np.asarray(prompt, np.int32)
  b, prompt_len = prompt.shape
  buffer = np.zeros((b, prompt_len + num_tokens), np.int32)
  buffer[:, :prompt_len] = prompt
  for i in range(num_tokens):
    buffer[:, prompt_len + i] = np.asarray(_argmax_at(graphdef, params, buffer, prompt_len + i))
  return buffer[:, prompt_len:]
