"""Reductions whose summation order is fixed by the summed axis alone.

Why the lab needs them. XLA:CPU picks how to sum by the whole operand's shape: a
multiply + reduce may become a YNNPACK fusion (its own blocked kernel) or a loop fusion,
and a long reduce may be split by the tree-reduction rewriter into a ``reduce-window``
of 32 followed by a reduce; a ``dot`` picks its blocking by (m, n, k). The shape a device
sees changes with the number of seeds it holds (1 vs 8 devices), the number of learning
rates and the batch size, so the same run's sum was associated differently: 1e-7 to 1e-6
relative drift for SGD, momentum and adamw (sign methods hide it).

Here every sum is a fixed tree of elementwise adds, which XLA does not reassociate (no
fast-math on CPU): the axis is padded with zeros and cut into ``m`` chunks of
``lanes`` contiguous elements, the chunks are added pairwise (a balanced tree built in
Python), then the ``lanes`` partial sums are halved pairwise. ``m`` and ``lanes`` depend
only on the axis length, so a run's risk is the same bit for bit whatever shares its
program, and the chunk adds are vectorized along the lanes (as fast as XLA's own
reduce on the lab's shapes, often faster).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

LANES = 64          # contiguous elements summed last, pairwise
_MAX_CHUNKS = 128   # beyond, lanes double, so the unrolled tree stays small


def _pad(x: jnp.ndarray, axis: int, size: int) -> jnp.ndarray:
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, widths) if size > x.shape[axis] else x


def _pairwise(parts: list) -> jnp.ndarray:
  while len(parts) > 1:
    parts = [parts[i] + parts[i + 1] if i + 1 < len(parts) else parts[i]
             for i in range(0, len(parts), 2)]
  return parts[0]


def _halve(x: jnp.ndarray, axis: int) -> jnp.ndarray:
  """Pairwise sum over ``axis`` (length a power of two) by halving."""
  while x.shape[axis] > 1:
    half = x.shape[axis] // 2
    x = (jax.lax.slice_in_dim(x, 0, half, axis=axis)
         + jax.lax.slice_in_dim(x, half, 2 * half, axis=axis))
  return jnp.squeeze(x, axis)


def _power_of_two(n: int) -> int:
  return 1 << max(n - 1, 0).bit_length()


def ordered_sum(x: jnp.ndarray, axis: int = -1) -> jnp.ndarray:
  r"""``jnp.sum(x, axis)`` in an order that depends only on ``x.shape[axis]``.

  For a length :math:`n \le` ``LANES``: a pairwise tree (zero-padded to a power of
  two). Longer: :math:`n` is padded to :math:`m \cdot \ell` (``lanes`` :math:`\ell \ge`
  ``LANES``, :math:`m \le` 128 chunks), the chunks are summed by a balanced pairwise tree,
  then the :math:`\ell` lanes pairwise. Padding adds exact zeros.
  """
  return ordered_dot(x, jnp.ones((), x.dtype), axis)


def ordered_dot(a: jnp.ndarray, b: jnp.ndarray, axis: int = -1) -> jnp.ndarray:
  """``jnp.sum(a * b, axis)`` (``a``, ``b`` broadcastable) in ``ordered_sum``'s order.

  ``a`` and ``b`` are padded and sliced apart and multiplied chunk by chunk, so the
  broadcast product is never padded or stored whole (several times faster than
  ``ordered_sum`` of the product)."""
  shape = jnp.broadcast_shapes(a.shape, b.shape)
  axis = axis % len(shape)
  a, b = (jnp.expand_dims(x, tuple(range(len(shape) - x.ndim))) for x in (a, b))
  n = shape[axis]

  def chunk(x, start, stop):
    if x.shape[axis] == 1:                       # broadcast along the summed axis
      return x
    return jax.lax.slice_in_dim(x, start, stop, axis=axis)

  if n <= LANES:
    size = _power_of_two(n)
    a, b = (_pad(x, axis, size) if x.shape[axis] > 1 else x for x in (a, b))
    return _halve(jnp.broadcast_to(a * b, shape[:axis] + (size,) + shape[axis + 1:]), axis)
  lanes = LANES * _power_of_two(-(-n // (LANES * _MAX_CHUNKS)))
  chunks = -(-n // lanes)
  a, b = (_pad(x, axis, chunks * lanes) if x.shape[axis] > 1 else x for x in (a, b))
  parts = [chunk(a, k * lanes, (k + 1) * lanes) * chunk(b, k * lanes, (k + 1) * lanes)
           for k in range(chunks)]
  parts = [jnp.broadcast_to(p, shape[:axis] + (lanes,) + shape[axis + 1:]) for p in parts]
  return _halve(_pairwise(parts), axis)


def minibatch_gradient(features: jnp.ndarray, delta: jnp.ndarray,
                       targets: jnp.ndarray) -> jnp.ndarray:
  r"""Gradient of :math:`\frac{1}{2B}\sum_b (\langle \phi_b, \delta_c\rangle - t_b)^2`
  for every seed s and config c, in a fixed summation order:

  .. math::
    g_{s,c} = \frac1B \sum_b \phi_{s,b} \big(\langle \phi_{s,b}, \delta_{s,c}\rangle
              - t_{s,b}\big).

  Args:
    features: ``(S, B, d)`` samples :math:`\phi` (shared by a seed's configs).
    delta: ``(S, C, d)`` the states the loss is linear in (:math:`\theta - \theta^*`,
      or :math:`\theta` with targets carrying :math:`\langle x, b\rangle`).
    targets: ``(S, B)`` what each sample's prediction is compared with.

  Returns:
    ``(S, C, d)``; each entry depends on its own seed and config only, bit for bit.
  """
  residual = ordered_dot(features[:, None, :, :], delta[:, :, None, :], -1) \
      - targets[:, None, :]                                                  # (S, C, B)
  return ordered_dot(features[:, None, :, :], residual[..., None], 2) / features.shape[1]


def ordered_matvec(x: jnp.ndarray, matrix: jnp.ndarray) -> jnp.ndarray:
  """``x @ matrix`` for ``x`` ``(..., k)`` and ``matrix`` ``(..., k, n)`` (leading axes
  broadcast), each output summed over k in ``ordered_sum``'s order."""
  return ordered_dot(x[..., :, None], matrix, -2)
