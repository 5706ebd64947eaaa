"""Reading a compiled program's text: loop trip counts and collectives by mesh axis.

Bytes are what one device sends in a ring: all-reduce ``2(g-1)/g x size``,
all-gather and all-to-all ``(g-1)/g x size``, reduce-scatter ``(g-1) x result``,
collective-permute ``size``, for a group of ``g`` devices. A collective inside a
loop body counts once per trip.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict

import numpy as np

COLLECTIVES = ("all-reduce", "all-gather", "all-to-all", "reduce-scatter", "collective-permute")
DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2,
               "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}

_HEADER = re.compile(r"^(ENTRY )?%(\S+) .*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT )?%\S+ = (\(.*?\)|\S+) (" + "|".join(COLLECTIVES)
                    + r")(-start)?\((.*)$")
_ARRAY = re.compile(r"\b(pred|[suf]\d+|bf16)\[([\d,]*)\]")
_MESH_GROUPS = re.compile(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}")


def computations(hlo: str) -> tuple[dict[str, list[str]], str | None]:
  """``{computation name: its lines}`` and the entry's name."""
  comps, current, entry = defaultdict(list), None, None
  for line in hlo.splitlines():
    if m := _HEADER.match(line):
      current = m.group(2)
      entry = current if m.group(1) else entry
    elif current:
      comps[current].append(line)
  return comps, entry


def _trip_count(line: str, comps: dict[str, list[str]]) -> int:
  """A while loop's trip count: XLA's ``known_trip_count``, else the bound its
  condition compares the counter with (scans count 0, 1, ..., n-1)."""
  if t := re.search(r'"known_trip_count":\{"n":"(\d+)"', line):
    return int(t.group(1))
  cond = re.search(r"condition=%([\w.\-]+)", line)
  bounds = [int(c) for l in comps.get(cond.group(1), []) if cond
            for c in re.findall(r"s32\[\](?:\{[^}]*\})? constant\((\d+)\)", l)]
  return max(bounds) if bounds else 1


def multipliers(hlo: str) -> dict[str, int]:
  """How many times each computation runs per call of the entry (loop trip counts)."""
  comps, entry = computations(hlo)
  mult = defaultdict(int)
  mult[entry] = 1
  order = [entry]
  for name in order:
    for line in comps[name]:
      trips = _trip_count(line, comps) if " while(" in line else 1
      for role, callee in re.findall(r"\b(body|calls|to_apply|condition)=%([\w.\-]+)", line):
        if callee not in mult:
          order.append(callee)
        mult[callee] += mult[name] * (trips if role == "body" else 1)
  return mult


def loop_trip_counts(hlo: str) -> list[int]:
  """The trip count of every while loop in the program, outermost first."""
  comps, entry = computations(hlo)
  return [_trip_count(line, comps) for name in comps for line in comps[name]
          if " while(" in line]


def replica_groups(attrs: str, num_devices: int) -> list[list[int]]:
  """A collective's device groups from its HLO attributes: explicit lists, the iota form
  ``[g,n]<=[dims]T(perm)``, or permute pairs; all devices when none are written."""
  if m := re.search(r"replica_groups=\[([\d,]+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", attrs):
    shape = [int(x) for x in m.group(1).split(",")]
    dims = [int(x) for x in m.group(2).split(",")]
    ids = np.arange(math.prod(dims)).reshape(dims)
    if m.group(3):
      ids = ids.transpose([int(x) for x in m.group(3).split(",")])
    return ids.reshape(shape).tolist()
  if m := re.search(r"(?:replica_groups|source_target_pairs)=\{(\{[\d,{}]*\})\}", attrs):
    groups = [[int(x) for x in g.split(",") if x]
              for g in re.findall(r"\{([\d,]*)\}", m.group(1))]
    return [g for g in groups if g] or [list(range(num_devices))]
  return [list(range(num_devices))]


def _groups(attrs: str, mesh_shape: tuple[int, ...], axis_names: tuple[str, ...]):
  """(a list of device-id groups, or None) and (the mesh axes named, or None)."""
  if m := _MESH_GROUPS.search(attrs):  # replica_groups=mesh['axis_0'=4,...] {'axis_0',...}
    names = re.findall(r"'axis_(\d+)'", m.group(2))
    return None, tuple(axis_names[int(i)] for i in names if mesh_shape[int(i)] > 1)
  return replica_groups(attrs, math.prod(mesh_shape)), None


def collectives(hlo: str, mesh_shape: tuple[int, ...], axis_names: tuple[str, ...]
                ) -> list[dict]:
  """Every collective of compiled ``hlo``: kind, bytes sent per device (all runs), runs,
  group size and the mesh axes its groups span (``mesh_shape``/``axis_names``: the
  mesh the program was compiled for, devices numbered in its row-major order)."""
  coords = np.stack(np.unravel_index(np.arange(math.prod(mesh_shape)), mesh_shape), -1)
  mult, current, out = multipliers(hlo), None, []
  for line in hlo.splitlines():
    if m := _HEADER.match(line):
      current = m.group(2)
      continue
    m = _INSTR.match(line)
    if not m:
      continue
    shape, kind, start, rest = m.groups()
    arrays = [(d, math.prod(int(x) for x in dims.split(",") if x))
              for d, dims in _ARRAY.findall(shape)]
    if start and kind != "all-reduce" and len(arrays) > 1:
      arrays = arrays[len(arrays) // 2:]   # async start: (operands, results)
    groups, axes = _groups(rest, mesh_shape, axis_names)
    if axes is None:
      spans = {i for grp in groups for i in range(len(mesh_shape))
               if len(set(coords[grp, i])) > 1}
      axes = tuple(a for i, a in enumerate(axis_names) if i in spans)
    g = (math.prod(mesh_shape[axis_names.index(a)] for a in axes) if groups is None
         else len(groups[0]))
    size = sum(n * DTYPE_BYTES.get(d, 4) for d, n in arrays)
    factor = {"all-reduce": 2 * (g - 1) / g, "all-gather": (g - 1) / g,
              "all-to-all": (g - 1) / g, "reduce-scatter": g - 1,
              "collective-permute": 1.0}[kind] if g > 1 else 0.0
    runs = mult.get(current, 1) or 1
    out.append(dict(kind=kind, bytes=factor * size * runs, runs=runs, group=g, axes=axes))
  return out


def summarize(records: list[dict]) -> list[dict]:
  """Collectives grouped by (kind, axes): count, runs and bytes sent per device."""
  table: dict[tuple, dict] = {}
  for r in records:
    if not r["axes"] or not r["bytes"]:
      continue
    key = (r["kind"], "+".join(r["axes"]))
    row = table.setdefault(key, dict(kind=key[0], axes=key[1], count=0, runs=0, bytes=0.0))
    row["count"] += 1
    row["runs"] += r["runs"]
    row["bytes"] += r["bytes"]
  return sorted(table.values(), key=lambda r: -r["bytes"])
