"""Next-token cross entropy: plain, and fused with the LM head matmul (chunked logits).

    loss = cross_entropy(hidden @ head.astype(hidden.dtype), targets)   # full [B, T, V] logits
    loss = linear_cross_entropy(hidden, head, targets, chunk_len=128)   # same loss and grads,
                                                                        # [B, 128, V] at a time
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from jax import lax

from signflax import parallel


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean next-token cross entropy in nats (float32): ``mean(lse(z) - z[y])``, z = f32 logits."""
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), targets))


def _check_chunk_len(chunk_len, seq_len: int) -> None:
  if not isinstance(chunk_len, int) or chunk_len <= 0 or seq_len % chunk_len:
    raise ValueError(f"chunk_len: {chunk_len!r} must be a positive divisor of the "
                     f"sequence length {seq_len}")


def _to_chunks(x: jax.Array, chunk_len: int) -> jax.Array:
  """``[B, T, ...] -> [T/c, B, c, ...]``: split the sequence axis, never the (sharded) batch."""
  b, t = x.shape[:2]
  return jnp.moveaxis(x.reshape((b, t // chunk_len, chunk_len) + x.shape[2:]), 1, 0)


def _from_chunks(x: jax.Array) -> jax.Array:
  """``[T/c, B, c, ...] -> [B, T, ...]``, the inverse of ``_to_chunks``."""
  n, b, c = x.shape[:3]
  return jnp.moveaxis(x, 0, 1).reshape((b, n * c) + x.shape[3:])


def _chunk_logits(h: jax.Array, w: jax.Array, y: jax.Array):
  """One chunk: the logits (in ``h.dtype``, as the plain ``hidden @ head.astype(dtype)``),
  their float32 log-normalizer and the sum over the chunk of ``lse - z[y]``.

  ``z[y]`` is gathered from the ``h.dtype`` logits, then cast: the same value as from
  the f32 ones, with no f32 copy of the chunk kept for the gather.
  """
  logits = h @ w                                                  # [B, c, V]
  lse = jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)     # [B, c]
  z_y = jnp.take_along_axis(logits, y[..., None], axis=-1)[..., 0].astype(jnp.float32)
  return logits, lse, jnp.sum(lse - z_y)


def _loss(hidden, head, targets, chunk_len):
  """The loss alone (eval, or no gradient): a scan over chunks, no full logits."""
  w = head.astype(hidden.dtype)

  def body(total, xs):
    h, y = xs
    return total + _chunk_logits(h, w, y)[2], None

  total, _ = lax.scan(body, jnp.zeros((), jnp.float32),
                      (_to_chunks(hidden, chunk_len), _to_chunks(targets, chunk_len)))
  return total / targets.size


def _loss_and_grads(hidden, head, targets, chunk_len):
  """The loss, ``dL/dhidden`` (hidden.dtype) and ``dL/dhead`` (float32) in one scan.

  ``dL/dhead`` is summed per batch shard (``[S, d, V]``, S sharded like the batch)
  inside the scan and over shards once at the end: one reduction per call, not one
  per chunk.
  """
  w = head.astype(hidden.dtype)
  inv_n = 1.0 / targets.size
  shards = parallel.logical_axis_size("batch")
  shards = shards if hidden.shape[0] % shards == 0 else 1
  per_shard = lambda x: x.reshape((shards, x.shape[0] // shards) + x.shape[1:])

  def body(carry, xs):
    total, d_head = carry
    h, y = xs
    logits, lse, loss_sum = _chunk_logits(h, w, y)
    onehot = y[..., None] == jnp.arange(logits.shape[-1], dtype=y.dtype)
    d_z = ((jnp.exp(logits.astype(jnp.float32) - lse[..., None]) - onehot)
           * inv_n).astype(h.dtype)                               # dL/dlogits
    d_h = d_z @ w.T
    d_head = d_head + jnp.einsum("sbcd,sbcv->sdv", per_shard(h), per_shard(d_z),
                                 preferred_element_type=jnp.float32)
    return (total + loss_sum, parallel.constrain(d_head, ("batch", None, None))), d_h

  d_head = parallel.constrain(jnp.zeros((shards,) + head.shape, jnp.float32),
                              ("batch", None, None))
  (total, d_head), d_hidden = lax.scan(
      body, (jnp.zeros((), jnp.float32), d_head),
      (_to_chunks(hidden, chunk_len), _to_chunks(targets, chunk_len)))
  return total * inv_n, _from_chunks(d_hidden), jnp.sum(d_head, axis=0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _linear_cross_entropy(hidden, head, targets, chunk_len):
  return _loss(hidden, head, targets, chunk_len)


def _fwd(hidden, head, targets, chunk_len):
  loss, d_hidden, d_head = _loss_and_grads(hidden, head, targets, chunk_len)
  return loss, (d_hidden, d_head.astype(head.dtype))


def _bwd(chunk_len, res, g):
  """The loss is a scalar: its gradients are the forward's, times the cotangent ``g``."""
  del chunk_len
  g = g.astype(jnp.float32)
  scale = lambda d: (g * d.astype(jnp.float32)).astype(d.dtype)
  return (*map(scale, res), None)


_linear_cross_entropy.defvjp(_fwd, _bwd)


def linear_cross_entropy(hidden: jax.Array, head: jax.Array, targets: jax.Array,
                         *, chunk_len: int) -> jax.Array:
  """``cross_entropy(hidden @ head.astype(hidden.dtype), targets)`` without the full logits.

  ``hidden [B, T, d]`` (compute dtype), ``head [d, V]`` (float32 param), ``targets
  [B, T]`` int. The sequence axis is cut into ``T / chunk_len`` chunks scanned one at a
  time (never the batch axis: it is the data-parallel one, so every chunk stays
  batch-sharded). With ``z = h W`` (f32), ``p = softmax(z)``, ``N = B T``:

    L = (1/N) sum_i [logsumexp(z_i) - z_i[y_i]]
    dL/dz = (p - onehot(y)) / N        (cast to hidden.dtype, as the plain path does)
    dL/dh = dL/dz W^T                  (hidden.dtype)
    dL/dW = h^T dL/dz                  (accumulated over chunks in float32)

  The loss is a scalar, so a ``jax.custom_vjp`` forward computes both gradients
  chunk by chunk while the logits are live, keeps them as the residuals, and the
  backward only scales them by the incoming cotangent. Memory: one chunk of
  ``B * chunk_len * V`` logits (in hidden.dtype and in f32) instead of ``B * T * V``;
  the residuals are the size of ``hidden`` and of ``head``. FLOPs are those of the
  plain forward + backward (three matmuls of ``2 N d V``), with no recompute. The
  undifferentiated call (eval) scans for the loss alone.

  Under data parallelism (``B`` sharded over S devices of the current mesh) each
  device accumulates ``dL/dW`` over its own rows (an ``[S, d, V]`` float32 carry
  sharded like the batch: ``d x V`` per device) and the shards are summed once after
  the scan, so there is one cross-device reduction per call, as in the plain path.

  Related: Liger kernel's fused linear cross entropy; "Cut your losses in
  large-vocabulary language models" (Wijmans et al., 2024).
  """
  _check_chunk_len(chunk_len, hidden.shape[1])
  return _linear_cross_entropy(hidden, head, targets, chunk_len)
