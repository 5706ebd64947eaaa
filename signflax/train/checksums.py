"""Per-array checksums of a train state, computed where the arrays live (any mesh).

    expected = checksums(state)                 # {leaf name: 16 hex digits}, saved in ``extra``
    bad = checksum_mismatches(restored, expected)
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from signflax import optim


def dotted(path) -> str:
  """A pytree path as 'opt_state.0.mu.embed' (``signflax.optim.path_name`` with dots)."""
  return optim.path_name(path, ".")


def _leaf_checksum(x: jax.Array) -> jax.Array:
  """Two position-weighted sums of ``x``'s bits, uint32[2].

  With ``u_i`` the bits of element ``i`` (flat index) as uint32 and ``g(u) = u ^ (u >> 16)``
  (a bijection), ``a = sum_i g(u_i) (2i + 1)`` and
  ``b = sum_i (u_i + i) (2 i c + 1)`` mod 2^32, ``c`` an odd constant. One changed element
  always changes ``a`` (odd weights are invertible mod 2^32); several changes cancel in
  both with probability about 2^-64. Elementwise ops and a full reduction only, so a
  sharded array is checksummed where it lives, the same on any mesh.
  """
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  width = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
  u = jax.lax.bitcast_convert_type(x, width).astype(jnp.uint32)   # 8-byte: trailing dim 2
  index = jnp.zeros(u.shape, jnp.uint32)
  for axis, size in enumerate(u.shape):
    index = index * jnp.uint32(size) + jax.lax.broadcasted_iota(jnp.uint32, u.shape, axis)
  a = jnp.sum((u ^ (u >> 16)) * (2 * index + 1), dtype=jnp.uint32)
  b = jnp.sum((u + index) * (2 * index * jnp.uint32(0x9E3779B1) + 1), dtype=jnp.uint32)
  return jnp.stack([a, b])


@functools.lru_cache(maxsize=8)
def _checksum_fn(out_sharding) -> Callable:
  return jax.jit(lambda tree: jax.tree.map(_leaf_checksum, tree), out_shardings=out_sharding)


def checksums(state: Any) -> dict[str, str]:
  """``{leaf name: 16 hex digits}`` for every array in ``state`` (see ``_leaf_checksum``)."""
  leaves = jax.tree_util.tree_flatten_with_path(state)[0]
  if not leaves:
    return {}
  sharding = getattr(leaves[0][1], "sharding", None)
  replicated = (jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
                if isinstance(sharding, jax.sharding.NamedSharding) else None)
  sums = jax.device_get(_checksum_fn(replicated)([leaf for _, leaf in leaves]))
  return {dotted(path): "%08x%08x" % tuple(int(v) for v in np.asarray(s))
          for (path, _), s in zip(leaves, sums)}


def checksum_mismatches(state: Any, expected: dict[str, str]) -> list[str]:
  """Names of ``state``'s arrays whose checksum differs from ``expected`` (absent = unchecked)."""
  got = checksums(state)
  return [name for name, value in got.items() if name in expected and expected[name] != value]
