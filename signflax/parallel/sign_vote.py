r"""1-bit majority vote across data-parallel replicas (signSGD / Signum with majority vote).

Each of the ``R`` replicas along a mesh axis (``data``) holds its own direction
``d_r`` (its gradient, or its own Signum momentum) and sends one bit per coordinate;
every replica applies the same voted sign

.. math::  v = \operatorname{sign}\Big(\sum_{r=1}^{R} \operatorname{sign}(d_r)\Big)

(Bernstein et al., 2019, "signSGD with majority vote is communication efficient and
fault tolerant"). On the wire (``exchange="all_to_all"``, the default): the bits of
all leaves are concatenated, packed 8 per ``uint8`` and split into ``R`` slices; an
all-to-all gives replica ``j`` every replica's bits of slice ``j``, it counts them in
int32 and packs its voted slice, and an all-gather returns the voted bits to all.
Each device sends ``2 (R-1)/R`` bits per coordinate, 1/16 of a ring all-reduce of
bf16 (``2 (R-1)/R x 16`` bits). ``exchange="all_gather"`` gathers every replica's
bits instead (``(R-1)`` bits sent per coordinate): equal at ``R = 2``, worse above.

One bit cannot say "zero", so two rules keep coordinates that nobody moves from
drifting, and both flip with the step ``t``:

* **zero in**: a replica ``r`` whose ``d_r`` is exactly 0 votes ``+1`` if ``r + t``
  is odd, else ``-1`` (an all-zero coordinate splits evenly, or by one vote that
  alternates with ``t`` when ``R`` is odd);
* **tie out**: a tied count (``R`` even, ``sum = 0``) gives ``+1`` on even steps and
  ``-1`` on odd steps.

So the voted sign is always ``+1`` or ``-1``, and a coordinate that stays tied (say
an embedding row no example touches) oscillates by one learning-rate step around
where it was instead of drifting.

* **non-finite abstains**: a replica whose direction has a NaN or Inf coordinate
  (a bad host) sends no vote at all: its bits are all 0 and the majority is taken
  over the ``V`` replicas that vote, ``v = sign(2 c - V)`` with ``c`` the +1 votes
  among them (``V`` is one float scalar summed over ``axis``). A tie (``2c = V``,
  including ``V = 0``) follows the tie rule. :func:`nonfinite_replicas` gives the
  abstainers; ``vote(..., abstain=mask)`` lets a caller name them instead. Counting is in int32, so the result does not
depend on the order of the reduction: it is bit-identical to the one-device
``sign(sum of signs)`` with these rules (see :func:`reference_vote`).

The layer works on any pytree under any mesh: stacked directions ``[R, *shape]``
sharded over ``axis`` on the leading dimension, and each leaf's ``PartitionSpec``
over the other mesh axes (``fsdp``, ``tensor``): the exchange is a ``jax.shard_map``
manual over every mesh axis, so each group of ``R`` devices holding the same shard
votes on that shard alone; nothing moves along the other axes.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh, PartitionSpec

EXCHANGES = ("all_to_all", "all_gather")
# The dict key that holds per-replica optimizer state (leaves [R, *param shape]);
# ``parallel.state_shardings`` shards such leaves over ``data`` on the leading axis.
PER_REPLICA = "per_replica"


def sign_bits(x: jax.Array, replica: jax.Array | int, step: jax.Array | int) -> jax.Array:
  """One vote per coordinate: ``x > 0``, and for ``x == 0`` ``(replica + step)`` odd."""
  zero_vote = (jnp.asarray(replica, jnp.int32) + jnp.asarray(step, jnp.int32)) % 2 == 1
  return (x > 0) | ((x == 0) & zero_vote)


def pack(bits: jax.Array) -> jax.Array:
  """``bool[..., 8k] -> uint8[..., k]``: 8 votes per byte along the last axis."""
  if bits.shape[-1] % 8:
    raise ValueError(f"bits: the last axis must be a multiple of 8, got shape {bits.shape}")
  return jnp.packbits(bits, axis=-1)


def unpack(packed: jax.Array) -> jax.Array:
  """``uint8[..., k] -> bool[..., 8k]``, the inverse of :func:`pack`."""
  return jnp.unpackbits(packed, axis=-1).astype(jnp.bool_)


def majority(counts: jax.Array, replicas: jax.Array | int, step: jax.Array | int) -> jax.Array:
  """``counts`` of +1 votes among ``replicas`` voters -> the voted bit (True = +1); ties by
  step parity."""
  margin = 2 * counts.astype(jnp.int32) - jnp.asarray(replicas, jnp.int32)
  return (margin > 0) | ((margin == 0) & (jnp.asarray(step, jnp.int32) % 2 == 0))


def nonfinite_replicas(stacked: Any) -> jax.Array:
  """``bool[R]``: whether replica ``r``'s slice of the stacked pytree has a NaN or Inf."""
  flags = [jnp.any(~jnp.isfinite(x), axis=tuple(range(1, x.ndim)))
           for x in jax.tree.leaves(stacked)]
  return functools.reduce(jnp.logical_or, flags)


def _padded_len(n: int, replicas: int) -> int:
  """Bits per replica slice: ``n`` split ``replicas`` ways, each a whole number of bytes."""
  return -(-n // (8 * replicas)) * 8


def _spec_entries(spec: PartitionSpec, ndim: int) -> tuple:
  return tuple(spec) + (None,) * (ndim - len(spec))


def vote(directions: Any, specs: Any, *, mesh: Mesh, step: jax.Array | int,
         axis: str = "data", exchange: str = "all_to_all",
         abstain: jax.Array | None = None) -> Any:
  """The majority-voted sign (+1/-1, in each leaf's dtype) of per-replica directions.

  Args:
    directions: pytree of ``[R, *shape]`` arrays, ``R = mesh.shape[axis]``, the
      leading axis sharded over ``axis`` (one slice per replica).
    specs: pytree (the same structure) of the ``PartitionSpec`` of each unstacked
      leaf over the other mesh axes; it must not name ``axis``.
    mesh: the mesh (concrete or abstract).
    step: int scalar, the parity that breaks ties and spreads zero votes.
    axis: the mesh axis whose replicas vote.
    exchange: "all_to_all" (vote on a slice each, then all-gather the voted bits) or
      "all_gather" (gather all bits, everyone counts everything).
    abstain: ``bool[R]``, the replicas that send no vote; None = those whose
      direction is not finite (:func:`nonfinite_replicas`).

  Returns:
    pytree of ``shape`` arrays, sharded by ``specs`` and replicated over ``axis``.
  """
  if exchange not in EXCHANGES:
    raise ValueError(f"exchange: {exchange!r} is not one of {', '.join(EXCHANGES)}")
  if axis not in mesh.axis_names:
    raise ValueError(f"axis: {axis!r} is not a mesh axis of {tuple(mesh.axis_names)}")
  replicas = mesh.shape[axis]
  leaves, treedef = jax.tree.flatten(directions)
  spec_leaves = treedef.flatten_up_to(specs)
  for x in leaves:
    if x.ndim < 1 or x.shape[0] != replicas:
      raise ValueError(f"directions: every leaf needs a leading axis of {replicas} replicas "
                       f"(mesh axis {axis!r}), got shape {x.shape}")
  entries = [_spec_entries(s, x.ndim - 1) for s, x in zip(spec_leaves, leaves)]
  if any(axis in (e if isinstance(e, tuple) else (e,)) for es in entries for e in es):
    raise ValueError(f"specs: a leaf spec names the voting axis {axis!r}")
  in_specs = tuple(PartitionSpec(axis, *e) for e in entries)
  out_specs = tuple(PartitionSpec(*e) for e in entries)
  step = jnp.asarray(step, jnp.int32)
  if abstain is None:
    abstain = nonfinite_replicas(leaves)

  def local_vote(step, abstains, *local):
    r = lax.axis_index(axis)
    shapes = [x.shape[1:] for x in local]
    sizes = [math.prod(s) for s in shapes]
    bits = jnp.concatenate([sign_bits(x.reshape(-1), r, step) for x in local]) & ~abstains[0]
    # A float scalar: exact for any replica count, and the only float sent along `axis`.
    voters = replicas - lax.psum(abstains[0].astype(jnp.float32), axis).astype(jnp.int32)
    chunk = _padded_len(bits.size, replicas)
    bits = jnp.pad(bits, (0, chunk * replicas - bits.size))
    if exchange == "all_to_all":
      slices = lax.all_to_all(pack(bits.reshape(replicas, chunk)), axis, 0, 0, tiled=True)
      counts = jnp.sum(unpack(slices).astype(jnp.int32), axis=0)     # my slice, all replicas
      voted = lax.all_gather(pack(majority(counts, voters, step)), axis, tiled=True)
    else:
      every = lax.all_gather(pack(bits), axis)                        # [R, bytes]
      voted = pack(majority(jnp.sum(unpack(every).astype(jnp.int32), axis=0), voters, step))
    voted = unpack(voted)[:sum(sizes)]
    out, start = [], 0
    for x, shape, size in zip(local, shapes, sizes):
      signs = jnp.where(voted[start:start + size], 1, -1).astype(x.dtype)
      out.append(signs.reshape(shape))
      start += size
    return tuple(out)

  # check_vma off: leaves replicated over fsdp/tensor are concatenated with sharded
  # ones, so the checker cannot see that their votes agree across those axes (they
  # do: every device of a replica holds the same copy, hence the same bits).
  voted = jax.shard_map(local_vote, mesh=mesh,
                        in_specs=(PartitionSpec(), PartitionSpec(axis), *in_specs),
                        out_specs=out_specs, check_vma=False)(
                            step, jnp.asarray(abstain, jnp.bool_), *leaves)
  return jax.tree.unflatten(treedef, voted)


def reference_vote(directions: Any, step: int, abstain: Any = None) -> Any:
  """One-host NumPy reference of :func:`vote`: ``sign(sum_r s_r)`` over the replicas that
  vote, with the same rules (``abstain``: bool[R]; None = the non-finite replicas)."""
  leaves = [np.asarray(d) for d in jax.tree.leaves(directions)]
  if abstain is None:
    abstain = np.zeros(leaves[0].shape[0], bool)
    for d in leaves:
      abstain |= ~np.isfinite(d.astype(np.float32)).reshape(d.shape[0], -1).all(axis=1)
  abstain = np.asarray(abstain, bool)

  def one(d):
    d = np.asarray(d)
    replica = np.arange(d.shape[0]).reshape((-1,) + (1,) * (d.ndim - 1))
    zero_vote = np.where((replica + step) % 2 == 1, 1, -1)
    votes = np.where(d > 0, 1, np.where(d < 0, -1, zero_vote))
    total = np.sum(np.where(abstain.reshape(replica.shape), 0, votes), axis=0)
    tie = 1 if step % 2 == 0 else -1
    return np.where(total > 0, 1, np.where(total < 0, -1, tie)).astype(d.dtype)
  return jax.tree.map(one, directions)


def exchange_bytes(num_params: int, replicas: int, exchange: str = "all_to_all") -> int:
  """Bytes one device sends per step for ``num_params`` coordinates (ring collectives)."""
  if replicas == 1:
    return 0
  chunk_bytes = _padded_len(num_params, replicas) // 8
  if exchange == "all_to_all":
    return 2 * (replicas - 1) * chunk_bytes       # all-to-all + all-gather of one slice each
  return (replicas - 1) * replicas * chunk_bytes   # all-gather of every replica's bits


def all_reduce_bytes(num_params: int, replicas: int, bytes_per_param: int = 2) -> float:
  """Bytes one device sends per step in a ring all-reduce (reduce-scatter + all-gather)."""
  return 2 * (replicas - 1) / replicas * num_params * bytes_per_param


class MajorityVoteState(NamedTuple):
  """State of :func:`majority_vote`."""
  count: jax.Array   # int32 steps taken: the parity of the zero and tie rules
  local: Any         # {PER_REPLICA: the local transform's state, leaves [R, ...]}
  outer: Any         # the state of the transform applied to the voted signs


def majority_vote(local: optax.GradientTransformation, outer: optax.GradientTransformation,
                  *, mesh: Mesh, specs: Any, axis: str = "data",
                  exchange: str = "all_to_all") -> optax.GradientTransformation:
  r"""Per-replica ``local`` transform, 1-bit majority vote, then ``outer`` on the signs.

  .. math::
    d_r, s_r \leftarrow \mathrm{local}(g_r, s_r) \ \ (\text{each replica } r), \qquad
    v = \operatorname{vote}(d_1, \dots, d_R), \qquad u = \mathrm{outer}(v)

  ``update`` takes the *stacked* per-replica gradients (leaves ``[R, *shape]``,
  sharded over ``axis``) and the unstacked params; it returns ordinary updates.
  signSGD with majority vote: ``local = optax.identity()``, ``outer =
  signflax.optim.sign_sgd(lr, ...)``. Signum with majority vote (each replica keeps
  its own momentum, as in the paper): ``local = scale_by_signum(beta)``, the same
  ``outer``. A replica whose gradient or direction is not finite abstains from the
  vote and keeps its local state for this step. The local state has a leading replica axis under the key
  :data:`PER_REPLICA`, so it checkpoints like any state and restores onto the same
  number of replicas only (it holds ``R`` different momenta).
  """
  replicas = mesh.shape[axis]

  def init_fn(params):
    local_state = local.init(params)
    stacked = jax.tree.map(lambda x: jnp.broadcast_to(x, (replicas,) + jnp.shape(x)),
                           local_state)
    return MajorityVoteState(jnp.zeros((), jnp.int32), {PER_REPLICA: stacked},
                             outer.init(params))

  def update_fn(updates, state, params=None):
    directions, local_state = jax.vmap(local.update, in_axes=(0, 0, None))(
        updates, state.local[PER_REPLICA], params)
    abstain = nonfinite_replicas(updates) | nonfinite_replicas(directions)
    # An abstaining replica keeps its local state: one bad step does not poison its momentum.
    local_state = jax.tree.map(
        lambda new, old: jnp.where(abstain.reshape((-1,) + (1,) * (new.ndim - 1)), old, new),
        local_state, state.local[PER_REPLICA])
    signs = vote(directions, specs, mesh=mesh, step=state.count, axis=axis,
                 exchange=exchange, abstain=abstain)
    updates, outer_state = outer.update(signs, state.outer, params)
    return updates, MajorityVoteState(state.count + 1, {PER_REPLICA: local_state},
                                      outer_state)

  return optax.GradientTransformation(init_fn, update_fn)
