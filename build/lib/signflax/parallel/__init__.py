"""Device mesh, logical->mesh sharding rules and multi-process start-up.

Every model parameter carries logical axis names (``embed``, ``mlp``, ``heads``,
``kv``, ``vocab``, ``layers``); ``LOGICAL_AXIS_RULES`` is the one table that maps
them onto the mesh axes ``data``, ``fsdp`` and ``tensor``.
"""

from signflax.parallel.mesh import (
    MESH_AXES,
    is_multi_process,
    make_mesh,
    maybe_initialize_distributed,
    resolve_mesh_shape,
)
from signflax.parallel.sharding import (
    BATCH_AXES,
    LOGICAL_AXIS_RULES,
    batch_sharding,
    constrain,
    logical_axis_size,
    logical_to_mesh_spec,
    replicated,
    state_shardings,
)

__all__ = [
    "BATCH_AXES",
    "LOGICAL_AXIS_RULES",
    "MESH_AXES",
    "batch_sharding",
    "constrain",
    "is_multi_process",
    "logical_axis_size",
    "logical_to_mesh_spec",
    "make_mesh",
    "maybe_initialize_distributed",
    "replicated",
    "resolve_mesh_shape",
    "state_shardings",
]
