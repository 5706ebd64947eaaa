"""TPU chips and topologies: published figures per chip, compile-only devices of a slice.

``topology_devices("v5e:4x4")`` returns the compile-only devices libtpu describes
for that slice: programs can be compiled for them on any host (no TPU needed),
never run. The figures in ``CHIPS`` are the vendor's, per chip:

==========  ==========  =======  ========  =============  ====  ===========
generation  peak bf16   HBM      HBM       ICI (bidir.)   ICI   DCN
            TFLOP/s     GiB      GB/s      GB/s per chip  ports GB/s/chip
==========  ==========  =======  ========  =============  ====  ===========
v4          275         32       1200      300            6     3.125
v5e         197         16       819       400            4     3.125
v5p         459         95       2765      1200           6     6.25
v6e         918         32       1640      800            4     12.5
==========  ==========  =======  ========  =============  ====  ===========

Sources (Google Cloud TPU documentation, "System architecture" of each version):
https://cloud.google.com/tpu/docs/v4, https://cloud.google.com/tpu/docs/v5e,
https://cloud.google.com/tpu/docs/v5p, https://cloud.google.com/tpu/docs/v6e.
DCN per chip is the pod's data-center network bandwidth over its chips (v5e:
6.4 Tbit/s over 256 chips; v5p: 50 Gbit/s per chip as listed; v6e: 25.6 Tbit/s
over 256 chips; v4: taken as v5e's). The compiler's own HBM limit (15.75 GiB
on v5e) is a little under the nominal capacity; a program fits when the TPU
compiler accepts it.
"""

from __future__ import annotations

import math
import os
import re
from typing import NamedTuple

from signflax import outcomes

INSTALL_HINT = "pip install 'signflax[tpu]'"


class Chip(NamedTuple):
  """Published figures of one TPU chip."""
  generation: str
  peak_bf16_tflops: float   # dense bf16 matmul peak, TFLOP/s
  hbm_gib: float            # HBM capacity, GiB
  hbm_gbps: float           # HBM bandwidth, GB/s
  ici_gbps: float           # bidirectional inter-chip interconnect bandwidth per chip, GB/s
  ici_ports: int            # ICI links per chip
  dcn_gbps: float           # data-center network bandwidth per chip, GB/s
  source: str

  @property
  def ici_axis_gbps(self) -> float:
    """What one chip sends per second in a ring collective along one torus axis: its two
    links on that axis, one way each (= one port's bidirectional bandwidth)."""
    return self.ici_gbps / self.ici_ports


CHIPS = {
    "v4": Chip("v4", 275.0, 32.0, 1200.0, 300.0, 6, 3.125, "https://cloud.google.com/tpu/docs/v4"),
    "v5e": Chip("v5e", 197.0, 16.0, 819.0, 400.0, 4, 3.125,
                "https://cloud.google.com/tpu/docs/v5e"),
    "v5p": Chip("v5p", 459.0, 95.0, 2765.0, 1200.0, 6, 6.25,
                "https://cloud.google.com/tpu/docs/v5p"),
    "v6e": Chip("v6e", 918.0, 32.0, 1640.0, 800.0, 4, 12.5,
                "https://cloud.google.com/tpu/docs/v6e"),
}
# libtpu's device_kind -> generation
DEVICE_KINDS = {"TPU v4": "v4", "TPU v5 lite": "v5e", "TPU v5e": "v5e", "TPU v5": "v5p",
                "TPU v5p": "v5p", "TPU v6 lite": "v6e", "TPU v6e": "v6e"}

_TOPOLOGY = re.compile(r"^(v4|v5e|v5p|v6e):(\d+(?:x\d+){1,2})$")


def parse_topology(name: str) -> tuple[str, tuple[int, ...]]:
  """``"v5e:4x4"`` -> ``("v5e", (4, 4))``; raises ``BadInput`` naming the accepted form."""
  match = _TOPOLOGY.match(name or "")
  if not match:
    raise outcomes.BadInput(
        f"--topology: {name!r} is not a TPU topology; use GENERATION:AxB[xC] with generation "
        f"one of {', '.join(CHIPS)}, e.g. v5e:2x2, v5e:16x16, v6e:16x16, v5p:2x2x2")
  return match.group(1), tuple(int(n) for n in match.group(2).split("x"))


def num_chips(name: str, slices: int = 1) -> int:
  """Chips in ``slices`` slices of topology ``name`` (one jax device per chip)."""
  _, dims = parse_topology(name)
  return math.prod(dims) * slices


def libtpu_available() -> bool:
  try:
    import libtpu  # noqa: F401  (the wheel jax[tpu] installs)
  except ImportError:
    return False
  return True


def topology_devices(name: str, slices: int = 1) -> list:
  """The compile-only devices of ``slices`` slices of topology ``name`` (slice-major order).

  Raises ``BadInput`` for an unknown or unsupported topology (libtpu's reason in
  one line), and for a missing libtpu with the command that installs it.
  """
  generation, _ = parse_topology(name)
  if slices < 1:
    raise outcomes.BadInput(f"--slices: must be a positive integer, got {slices}")
  if not libtpu_available():
    raise outcomes.BadInput(f"compiling for TPU needs libtpu, which is not installed; "
                            f"install it with: {INSTALL_HINT}")
  # Compile-only: no TPU is opened, so skip the metadata server and the lock on the chips.
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies
  try:
    desc = topologies.get_topology_desc(platform="tpu", topology_name=name, num_slices=slices)
  except Exception as e:  # libtpu raises JaxRuntimeError(INVALID_ARGUMENT: ...)
    reason = outcomes.one_line(e).replace("INVALID_ARGUMENT: ", "")
    raise outcomes.BadInput(f"--topology: libtpu cannot build {name!r} ({reason}); "
                            f"e.g. v5e:2x2, v5e:4x4, v5e:16x16, v6e:16x16, v5p:2x2x2") from None
  devices = list(desc.devices)
  kind = DEVICE_KINDS.get(devices[0].device_kind)
  if kind != generation:  # never seen; a libtpu that names chips differently
    raise outcomes.BadInput(f"--topology: libtpu gave {devices[0].device_kind!r} devices for "
                            f"{name!r}, which this table does not know")
  return sorted(devices, key=lambda d: (getattr(d, "slice_index", 0), d.id))


def chip_of(devices) -> Chip:
  return CHIPS[DEVICE_KINDS[devices[0].device_kind]]
