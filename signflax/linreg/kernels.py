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
only on the axis length. One more freedom is closed: LLVM contracts ``a * b + c`` into
an FMA, and which of two products it leaves unrounded follows the surrounding code, so
every product is rounded before the tree adds it (``_rounded_product``). A sum is then
the IEEE value of a tree fixed by its length (tested against a NumPy model), a run's
risk is the same bit for bit whatever shares its program, and XLA fuses each tree into
one vectorized loop. The minibatch gradient at d=1000, B=16, 8 seeds x 16 configs takes
200 us a step on one CPU core, against 539 us with the tree stored level by level and
137 us for an ``einsum`` whose order follows the shapes.

``normal`` draws ``jax.random.normal``'s numbers bit for bit, several times faster on CPU.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

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
  """Pairwise sum over ``axis`` (length a power of two) by halving: element i of the
  first half plus element i of the second, until one is left. Each element is its own
  slice, so XLA fuses the whole tree into one loop over the other axes (vectorized along
  the last), instead of storing every level."""
  return _halve_parts([jax.lax.slice_in_dim(x, i, i + 1, axis=axis)
                       for i in range(x.shape[axis])]).squeeze(axis)


def _halve_parts(parts: list) -> jnp.ndarray:
  while len(parts) > 1:
    half = len(parts) // 2
    parts = [parts[i] + parts[i + half] for i in range(half)]
  return parts[0]


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
  broadcast product is never padded or stored whole; XLA fuses the whole tree into one
  loop. Each product is rounded before it is summed (``_rounded_product``), so the
  result is the tree's IEEE value whatever XLA and LLVM fuse."""
  shape = jnp.broadcast_shapes(a.shape, b.shape)
  axis = axis % len(shape)
  a, b = (jnp.expand_dims(x, tuple(range(len(shape) - x.ndim))) for x in (a, b))
  n = shape[axis]
  if n <= LANES:
    lanes, chunks = 1, _power_of_two(n)
  else:
    lanes = LANES * _power_of_two(-(-n // (LANES * _MAX_CHUNKS)))
    chunks = -(-n // lanes)
  a, b = (_pad(x, axis, chunks * lanes) if x.shape[axis] > 1 else x for x in (a, b))

  def chunk(x, k):
    if x.shape[axis] == 1:                       # broadcast along the summed axis
      return x
    return jax.lax.slice_in_dim(x, k * lanes, (k + 1) * lanes, axis=axis)

  zero = jax.lax.optimization_barrier(jnp.zeros((), jnp.result_type(a, b)))
  parts = [_rounded_product(chunk(a, k), chunk(b, k), zero) for k in range(chunks)]
  parts = [jnp.broadcast_to(p, shape[:axis] + (lanes,) + shape[axis + 1:]) for p in parts]
  if n <= LANES:
    return _halve_parts(parts).squeeze(axis)
  return _halve(_pairwise(parts), axis)


def _rounded_product(a, b, zero):
  """``a * b`` rounded to the dtype. LLVM contracts ``a * b + c`` into one FMA (no
  rounding of the product) where it can, and which product of ``p + q`` it picks depends
  on the surrounding code, so a sum of raw products varies with the program. Adding a
  runtime zero (hidden from XLA's simplifier behind a barrier) leaves the rounded product
  whether or not LLVM contracts that add."""
  return a * b + zero


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
  # Each pass is stored behind a barrier, so its fused loop is the same whatever
  # consumes it (the optimizer's update): the order holds by construction, the loop's
  # speed should not depend on the optimizer either.
  residual = ordered_dot(features[:, None, :, :], delta[:, :, None, :], -1) \
      - targets[:, None, :]                                                  # (S, C, B)
  residual = jax.lax.optimization_barrier(residual)
  gradient = ordered_dot(features[:, None, :, :], residual[..., None], 2) / features.shape[1]
  return jax.lax.optimization_barrier(gradient)


# Threefry-2x32 (Salmon et al. 2011, 20 rounds), as ``jax.random`` defines it.
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def _threefry2x32(k0, k1, x0, x1):
  """The Threefry-2x32 block cipher of counters ``(x0, x1)`` under key ``(k0, k1)``,
  unrolled: five groups of four rounds, each group followed by a key injection."""
  keys = (k0, k1, k0 ^ k1 ^ _PARITY)
  x0, x1 = x0 + keys[0], x1 + keys[1]
  for group in range(5):
    for rotation in _ROTATIONS[group % 2]:
      x0 = x0 + x1
      x1 = ((x1 << np.uint32(rotation)) | (x1 >> np.uint32(32 - rotation))) ^ x0
    x0 = x0 + keys[(group + 1) % 3]
    x1 = x1 + keys[(group + 2) % 3] + np.uint32(group + 1)
  return x0, x1


def _fast_normal_applies(key, shape, dtype) -> bool:
  if jnp.dtype(dtype) != jnp.float32 or math.prod(shape) >= 2**32:
    return False
  if not jax.config.jax_threefry_partitionable:
    return False
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    return str(jax.random.key_impl(key)) == "threefry2x32"
  return key.shape == (2,) and jax.config.jax_default_prng_impl == "threefry2x32"


def normal(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
  r"""``jax.random.normal(key, shape, dtype)``, bit for bit, several times faster on CPU.

  ``jax.random`` draws a float32 normal as :math:`\sqrt2\,\mathrm{erf}^{-1}(u)`, ``u``
  uniform in :math:`(-1, 1)` from the 32 bits :math:`b_0 \oplus b_1` of
  :math:`(b_0, b_1) = \mathrm{threefry}_{2\times32}(\text{key}, (0, i))` at flat index
  ``i``. On CPU it lowers threefry's 20 rounds as a five-trip loop with the rotations as
  data, a pass over memory per trip. Here the rounds are unrolled into one fused loop
  with constant rotations, and the bits are materialized once before the float transform
  (fused with ``erf_inv`` the loop vectorizes worse). Other key implementations, dtypes,
  and ``jax_threefry_partitionable=False`` fall back to ``jax.random.normal``.
  """
  if not _fast_normal_applies(key, shape, dtype):
    return jax.random.normal(key, shape, dtype)
  k0, k1 = (jax.random.key_data(key)
            if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else key)
  index = jax.lax.iota(np.uint32, math.prod(shape)).reshape(shape)
  b0, b1 = _threefry2x32(k0, k1, jnp.zeros_like(index), index)
  bits = jax.lax.optimization_barrier(b0 ^ b1)
  one = np.array(1.0, np.float32)
  uniform = jax.lax.bitcast_convert_type((bits >> np.uint32(9)) | one.view(np.uint32),
                                         jnp.float32) - one                    # [0, 1)
  low = np.nextafter(np.float32(-1), np.float32(0))
  uniform = jax.lax.max(low, uniform * (one - low) + low)                     # (-1, 1)
  return np.float32(np.sqrt(2)) * jax.lax.erf_inv(uniform)
