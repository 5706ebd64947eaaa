"""The device mesh (``data``, ``fsdp``, ``tensor``) and jax.distributed start-up."""

from __future__ import annotations

import math
import os
from typing import Mapping, Sequence

import jax
from jax.sharding import AxisType, Mesh

MESH_AXES = ("data", "fsdp", "tensor")


def resolve_mesh_shape(sizes: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
  """Returns the mesh shape for ``MESH_AXES``; one axis may be -1 (= the remaining devices).

  Raises:
    ValueError: (one line) if the sizes do not multiply to ``num_devices``.
  """
  shape = [int(sizes.get(axis, 1)) for axis in MESH_AXES]
  fill = [axis for axis, size in zip(MESH_AXES, shape) if size == -1]
  bad = [f"{a}={s}" for a, s in zip(MESH_AXES, shape) if s == 0 or s < -1]
  if bad or len(fill) > 1:
    raise ValueError(f"config.mesh: sizes must be positive with at most one -1, got "
                     f"{dict(zip(MESH_AXES, shape))}")
  fixed = math.prod(s for s in shape if s != -1)
  if fill:
    if num_devices % fixed:
      raise ValueError(f"config.mesh: {num_devices} devices do not divide by the fixed axes "
                       f"{dict(zip(MESH_AXES, shape))}")
    shape[MESH_AXES.index(fill[0])] = num_devices // fixed
  elif fixed != num_devices:
    raise ValueError(f"config.mesh: {dict(zip(MESH_AXES, shape))} needs {fixed} devices, "
                     f"found {num_devices}; use -1 for one axis to take the rest")
  return tuple(shape)


def make_mesh(sizes: Mapping[str, int],
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds a ``(data, fsdp, tensor)`` mesh over ``devices`` (default: all devices).

  Axes are ``Auto``: jit places arrays by the in/out shardings we declare and the
  compiler propagates the rest (the GSPMD style of MaxText).
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(sizes, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def is_multi_process(config) -> bool:
  """Whether this run spans several processes (explicitly configured or from the cluster env)."""
  dist = config.get("distributed") or {}
  if dist.get("coordinator_address"):
    return True
  env = os.environ
  return bool(dist.get("auto", True)) and (
      "JAX_COORDINATOR_ADDRESS" in env
      or int(env.get("SLURM_NTASKS", "1")) > 1
      or "," in env.get("TPU_WORKER_HOSTNAMES", ""))


def maybe_initialize_distributed(config) -> bool:
  """Calls ``jax.distributed.initialize`` for multi-process runs; returns whether it did.

  Explicit start-up when ``config.distributed.coordinator_address`` is set
  (``num_processes`` and ``process_id`` from the config); otherwise when the
  environment names a multi-process job jax reads itself (a SLURM job with
  several tasks, a multi-host TPU slice, ``JAX_COORDINATOR_ADDRESS``) unless
  ``config.distributed.auto`` is False. Single-process runs do nothing. Call it
  before anything touches ``jax.devices()``;
  a second call does nothing.
  """
  if not is_multi_process(config):
    return False
  if jax.distributed.is_initialized():  # validation started it already
    return True
  dist = config.get("distributed") or {}
  if dist.get("coordinator_address"):
    jax.distributed.initialize(coordinator_address=dist["coordinator_address"],
                               num_processes=dist.get("num_processes"),
                               process_id=dist.get("process_id"))
  else:
    jax.distributed.initialize()  # jax reads the cluster environment itself
  return True
