"""Logical axis names -> mesh axes: the one rule table, and the shardings built from it."""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from signflax.parallel.sign_vote import PER_REPLICA

# The one table. A logical name missing here (or mapped to None) is replicated.
# Parameters: embed/mlp/heads/kv/vocab/layers. Activations: batch/length/act_*.
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),   # examples: data parallel + fully-sharded data parallel
    ("embed", "fsdp"),             # model width of weights: ZeRO-3 style parameter sharding
    ("vocab", "tensor"),           # embedding rows / logits columns
    ("mlp", "tensor"),             # SwiGLU hidden units (Megatron column/row split)
    ("heads", "tensor"),           # query heads x head_dim
    ("kv", "tensor"),              # key/value heads x head_dim
    ("layers", None),              # the stacked-layer axis scanned over
    ("length", None),
    ("act_embed", None),           # width of activations (batch already uses fsdp)
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("replica", "data"),           # per-replica optimizer state (majority vote), see below
)

BATCH_AXES = ("batch", "length")


def _mesh_axes(name: str | None, rules) -> tuple[str, ...]:
  target = dict(rules).get(name) if name is not None else None
  if target is None:
    return ()
  return (target,) if isinstance(target, str) else tuple(target)


def logical_to_mesh_spec(logical_axes: Sequence[str | None], *,
                         shape: Sequence[int] | None = None,
                         mesh: Mesh | None = None,
                         rules=LOGICAL_AXIS_RULES) -> PartitionSpec:
  """Maps logical axis names to a ``PartitionSpec`` over mesh axes.

  A mesh axis is used at most once (the first dimension that asks gets it). With
  ``shape`` and ``mesh`` given, mesh axes of size 1, and axes that do not divide
  their dimension, are dropped so the array is replicated along them instead.
  """
  used: set[str] = set()
  spec = []
  for dim, name in enumerate(logical_axes):
    axes = []
    for axis in _mesh_axes(name, rules):
      if axis in used:
        continue
      if mesh is not None:
        extent = math.prod(mesh.shape[a] for a in axes + [axis])
        if mesh.shape[axis] == 1 or (shape is not None and shape[dim] % extent):
          continue
      axes.append(axis)
      used.add(axis)
    spec.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
  return PartitionSpec(*spec)


def _path_key(path) -> tuple[str, ...]:
  """The dict keys along a pytree path (namedtuple fields and indices skipped)."""
  return tuple(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def state_shardings(tree: Any, param_axes: Any, mesh: Mesh,
                    rules=LOGICAL_AXIS_RULES) -> Any:
  """NamedShardings for a pytree that holds parameters and parameter-shaped state.

  Args:
    tree: arrays or ``jax.ShapeDtypeStruct``s, e.g. a train state of params and
      optimizer state (Adam moments, momenta are nested dicts like the params).
    param_axes: nested dict of logical axis tuples, the structure of the params.
    mesh: the device mesh.

  A leaf whose dict-key path ends with a parameter's path and whose shape equals
  that parameter's is sharded like it; under a ``sign_vote.PER_REPLICA`` key, a
  leaf ``[R, *param shape]`` (one copy per data-parallel replica) is sharded like
  it with the leading axis over ``data``; every other leaf (step, counters, scalar
  statistics, factored moments) is replicated.
  """
  by_path = {_path_key(p): axes for p, axes in jax.tree_util.tree_flatten_with_path(
      param_axes, is_leaf=lambda x: isinstance(x, tuple))[0]}
  lengths = sorted({len(k) for k in by_path}, reverse=True)

  def sharding(path, leaf):
    key = _path_key(path)
    stacked = PER_REPLICA in key
    for n in lengths:
      axes = by_path.get(key[len(key) - n:]) if len(key) >= n else None
      if axes is not None and stacked:
        axes = ("replica",) + tuple(axes)
      if axes is not None and len(axes) == len(leaf.shape):
        return NamedSharding(mesh, logical_to_mesh_spec(axes, shape=leaf.shape, mesh=mesh,
                                                        rules=rules))
    return NamedSharding(mesh, PartitionSpec())

  return jax.tree_util.tree_map_with_path(sharding, tree)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Sharding of a ``[batch, length, ...]`` batch: examples over (data, fsdp)."""
  return NamedSharding(mesh, logical_to_mesh_spec(BATCH_AXES[:ndim] + (None,) * (ndim - 2)))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def constrain(x: jax.Array, logical_axes: Sequence[str | None],
              rules=LOGICAL_AXIS_RULES) -> jax.Array:
  """``with_sharding_constraint`` by logical names; a no-op outside a mesh context.

  The model calls this on activations; under ``jax.set_mesh(mesh)`` it pins them
  (e.g. the residual stream to batch-sharded), elsewhere it does nothing.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  spec = logical_to_mesh_spec(logical_axes, rules=rules)
  spec = PartitionSpec(*(_keep_present(s, mesh) for s in spec))
  return jax.lax.with_sharding_constraint(x, spec)


def logical_axis_size(name: str, rules=LOGICAL_AXIS_RULES) -> int:
  """How many ways the current mesh splits logical axis ``name`` (1 outside a mesh)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return 1
  return math.prod(mesh.shape[a] for a in _mesh_axes(name, rules)
                   if a in mesh.axis_names and a not in mesh.manual_axes)


def _keep_present(entry, mesh):
  """Drops mesh axes the current mesh does not have (e.g. a mesh without 'tensor') and
  manual ones (inside ``shard_map`` over ``data`` each replica sees its own rows)."""
  if entry is None:
    return None
  axes = tuple(a for a in ((entry,) if isinstance(entry, str) else entry)
               if a in mesh.axis_names and a not in mesh.manual_axes)
  return None if not axes else axes[0] if len(axes) == 1 else axes
