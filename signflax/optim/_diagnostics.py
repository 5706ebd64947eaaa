"""Gradient-noise diagnostics."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

def _sums(leaves: list[jax.Array]) -> dict[str, jax.Array]:
  """Per-coordinate mean and std of stacked gradients, reduced to l1/l2 sums."""
  out = {k: jnp.zeros((), jnp.float32) for k in ("g1", "g2", "s1", "s2", "d")}
  for g in leaves:
    g = g.astype(jnp.float32)
    mean = jnp.mean(g, axis=0)
    sigma = jnp.std(g, axis=0, ddof=1)
    out["g1"] += jnp.sum(jnp.abs(mean))
    out["g2"] += jnp.sum(jnp.square(mean))
    out["s1"] += jnp.sum(sigma)
    out["s2"] += jnp.sum(jnp.square(sigma))
    out["d"] += mean.size
  return out


def _summarise(s: dict[str, jax.Array]) -> dict[str, jax.Array]:
  safe = jnp.where(s["s2"] > 0, s["d"] * s["s2"], 1.0)
  return {
      "noise_density": jnp.where(s["s2"] > 0, jnp.square(s["s1"]) / safe, 0.0),
      "mean_grad_l1": s["g1"],
      "mean_grad_l2": jnp.sqrt(s["g2"]),
      "sigma_l1": s["s1"],
      "sigma_l2": jnp.sqrt(s["s2"]),
  }


def gradient_noise_stats(grads: Any) -> dict[str, Any]:
  r"""Summarises gradient noise from ``n >= 2`` independent mini-batch gradients.

  Every leaf of ``grads`` has a leading axis of size ``n``: the same parameter's
  gradient on ``n`` independent mini-batches (e.g. the micro-batches of gradient
  accumulation). With per-coordinate mean :math:`\bar g_i` and sample std
  :math:`\sigma_i` (ddof=1, the noise of one mini-batch gradient) over all :math:`d`
  coordinates:

  .. math::
    \phi(\sigma) = \frac{\|\sigma\|_1^2}{d\,\|\sigma\|_2^2} \in [1/d, 1]

  is the noise density of Tao et al. (2026): near :math:`1/d` the noise sits in a few
  coordinates, where signSGD can beat SGD by up to a factor :math:`d`; near 1 it is
  spread evenly. 0 is returned when the noise is exactly zero.

  Returns:
    ``{"noise_density", "mean_grad_l1", "mean_grad_l2", "sigma_l1", "sigma_l2"}`` over
    all coordinates, plus ``"per_module"``: the same five for each top-level key of
    ``grads``. float32 scalars; jit-compatible.
  """
  flat = jax.tree_util.tree_flatten_with_path(grads)[0]
  if not flat:
    raise ValueError("grads: empty pytree")
  n = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else 0 for _, leaf in flat}
  if min(n) < 2 or len(n) != 1:
    raise ValueError(f"grads: every leaf needs the same leading axis n >= 2 (one gradient "
                     f"per mini-batch), got leading sizes {sorted(n)}")
  modules: dict[str, list[jax.Array]] = {}
  for path, leaf in flat:
    name = jax.tree_util.keystr(path[:1], simple=True, separator="/")
    modules.setdefault(name, []).append(leaf)
  per_module = {name: _sums(leaves) for name, leaves in modules.items()}
  total = {k: sum(s[k] for s in per_module.values()) for k in ("g1", "g2", "s1", "s2", "d")}
  stats = _summarise(total)
  stats["per_module"] = {name: _summarise(s) for name, s in per_module.items()}
  return stats
