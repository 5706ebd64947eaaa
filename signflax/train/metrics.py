"""Peak FLOP/s per accelerator (for MFU); the metric sinks live in ``signflax.metric_writers``."""

from __future__ import annotations

import jax

# Peak dense bf16 FLOP/s per device (vendor datasheets), matched as a lower-case
# substring of ``jax.Device.device_kind``; the first match wins. CPUs have no entry.
PEAK_BF16_FLOPS = (
    ("h200", 989e12),
    ("h100 pcie", 756e12),
    ("h100", 989e12),
    ("gh200", 989e12),
    ("b200", 2250e12),
    ("a100", 312e12),
    ("l40s", 362e12),
    ("l4", 121e12),
    ("a10g", 70e12),
    ("v100", 125e12),
    ("tpu v6", 918e12),
    ("tpu v5 lite", 197e12),
    ("tpu v5e", 197e12),
    ("tpu v5", 459e12),
    ("tpu v4", 275e12),
    ("tpu v3", 123e12),
)


def peak_flops_per_device(device: jax.Device | None = None) -> float | None:
  """Peak bf16 FLOP/s of ``device`` (default: the first device), None if unknown (CPU)."""
  device = device or jax.devices()[0]
  if device.platform == "cpu":
    return None
  kind = device.device_kind.lower()
  return next((flops for name, flops in PEAK_BF16_FLOPS if name in kind), None)
