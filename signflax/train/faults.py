r"""Faulty and adversarial data-parallel replicas (``config.train.faults``), a research option.

Each of the ``R`` replicas along ``data`` computes its own gradient ``g_r``; the
replicas in ``F`` (``faults.replicas``: a count ``k`` means ``0..k-1``, or a list
of indices) replace theirs, from step ``start_step`` on, before the exchange and
inside the same compiled step:

==============  ==========================================================================
``sign_flip``   :math:`-g_r`
``random_sign`` :math:`|g_r| \odot \xi`, :math:`\xi_i = \pm 1` at random (a stream
                keyed on the step alone, so a resumed run sees the same signs)
``scaled``      :math:`-s\, g_r`, ``s = faults.scale``
``alie``        :math:`\mu_H - z\,\sigma_H` per coordinate, the mean and standard deviation
                over the honest replicas ``H`` (Baruch et al., 2019, "A Little Is Enough");
                ``z = faults.z``, or (None) their :math:`z_{max}` for ``R`` and ``|F|``
``zero``        :math:`0`
``nan``         NaN everywhere (a bad host)
==============  ==========================================================================

``gradient_exchange = "mean"`` then averages the ``R`` corrupted gradients (so a
NaN replica makes the step non-finite and ``checkpoint.nan_policy`` decides);
``"sign_vote"`` votes on them (a non-finite replica abstains; see
``signflax.parallel.sign_vote``). Logged per step: ``faulty_fraction`` (the share
of replicas corrupted this step) and ``honest_sign_agreement``, the fraction of
coordinates where the sign the exchange produced equals the one the honest
replicas alone would have produced (sign_vote: the vote over all gradients vs the
vote with the faulty replicas abstaining; mean: the sign of the mean vs the sign of
the honest mean). With no faulty replica configured, nothing here is traced: the
step's program is the one without the option.
"""

from __future__ import annotations

import statistics
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from signflax.parallel import sign_vote

KINDS = ("sign_flip", "random_sign", "scaled", "alie", "zero", "nan")
# The random_sign stream's root key; the step is folded in.
_RANDOM_SIGN_SEED = 29


class Faults(NamedTuple):
  """Which replicas misbehave, how, and from which step (static: part of the program)."""
  replicas: tuple[int, ...]   # indices along `data`
  num_replicas: int           # R, the size of `data`
  kind: str
  start_step: int = 0
  scale: float = 10.0
  z: float | None = None


def faulty_indices(replicas: Any) -> tuple[int, ...]:
  """``None``/``0`` -> (); a count ``k`` -> ``0..k-1``; a list -> its sorted indices."""
  if replicas is None:
    return ()
  if isinstance(replicas, int) and not isinstance(replicas, bool):
    return tuple(range(replicas))
  return tuple(sorted(int(r) for r in replicas))


def check(faults_config, num_replicas: int) -> str | None:
  """Why ``config.train.faults`` cannot run on ``num_replicas`` data replicas (None if it can)."""
  if faults_config is None:
    return None
  replicas = faults_config.get("replicas")
  field = "config.train.faults.replicas"
  is_int = lambda x: isinstance(x, (int, np.integer)) and not isinstance(x, bool)
  if replicas is None or (is_int(replicas) and replicas == 0):
    return None
  if is_int(replicas):
    if replicas < 0:
      return f"{field}: must be a count >= 0 or a list of replica indices, got {replicas!r}"
  elif not (isinstance(replicas, (list, tuple)) and replicas and all(map(is_int, replicas))):
    return f"{field}: must be a count >= 0 or a list of replica indices, got {replicas!r}"
  elif len(set(replicas)) != len(replicas):
    return f"{field}: {list(replicas)} names a replica twice"
  indices = faulty_indices(replicas)
  if num_replicas < 2:
    return (f"{field}: faults need at least 2 data-parallel replicas; the mesh has "
            f"data={num_replicas}")
  if indices[0] < 0 or indices[-1] >= num_replicas:
    return (f"{field}: {replicas!r} names replicas outside 0..{num_replicas - 1} "
            f"(mesh data={num_replicas})")
  if len(indices) >= num_replicas:
    return (f"{field}: {replicas!r} leaves no honest replica among data={num_replicas}; "
            f"at most {num_replicas - 1} may be faulty")
  return None


def from_config(faults_config, num_replicas: int) -> Faults | None:
  """The static ``Faults`` of ``config.train.faults`` (checked), or None when no replica is faulty."""
  if faults_config is None:
    return None
  indices = faulty_indices(faults_config.get("replicas"))
  if not indices:
    return None
  error = check(faults_config, num_replicas)
  if error:
    raise ValueError(error)
  return Faults(indices, num_replicas, faults_config.kind, int(faults_config.start_step),
                float(faults_config.scale),
                None if faults_config.z is None else float(faults_config.z))


def alie_z(num_replicas: int, num_faulty: int) -> float:
  r"""Baruch et al.'s :math:`z_{max}`: :math:`\Phi^{-1}((n - s)/n)`, :math:`s = \lfloor n/2 + 1
  \rfloor - m`, the largest shift that keeps the faulty values inside the honest crowd."""
  supporters = max(1, num_replicas // 2 + 1 - num_faulty)
  return statistics.NormalDist().inv_cdf((num_replicas - supporters) / num_replicas)


def _replica_shape(mask: jax.Array, x: jax.Array) -> jax.Array:
  return mask.reshape((-1,) + (1,) * (x.ndim - 1))


def active_replicas(faults: Faults, step: jax.Array) -> jax.Array:
  """``bool[R]``: the replicas corrupted at ``step``."""
  mask = np.zeros(faults.num_replicas, bool)
  mask[list(faults.replicas)] = True
  return jnp.asarray(mask) & (jnp.asarray(step) >= faults.start_step)


def corrupt(stacked: Any, faults: Faults, step: jax.Array) -> tuple[Any, jax.Array]:
  """Per-replica gradients (leaves ``[R, ...]``) -> (the gradients the replicas send, active mask)."""
  active = active_replicas(faults, step)
  honest = np.ones(faults.num_replicas, bool)
  honest[list(faults.replicas)] = False
  key = jax.random.fold_in(jax.random.key(_RANDOM_SIGN_SEED), step)
  z = alie_z(faults.num_replicas, len(faults.replicas)) if faults.z is None else faults.z

  def one(i, g):
    if faults.kind == "sign_flip":
      bad = -g
    elif faults.kind == "scaled":
      bad = -faults.scale * g
    elif faults.kind == "zero":
      bad = jnp.zeros_like(g)
    elif faults.kind == "nan":
      bad = jnp.full_like(g, jnp.nan)
    elif faults.kind == "random_sign":
      bad = jnp.abs(g) * jax.random.rademacher(jax.random.fold_in(key, i), g.shape, g.dtype)
    elif faults.kind == "alie":
      h = _replica_shape(jnp.asarray(honest), g)
      x = g.astype(jnp.float32)
      mean = jnp.sum(jnp.where(h, x, 0), axis=0) / honest.sum()
      std = jnp.sqrt(jnp.sum(jnp.where(h, jnp.square(x - mean), 0), axis=0) / honest.sum())
      bad = jnp.broadcast_to(mean - z * std, g.shape)
    else:
      raise ValueError(f"config.train.faults.kind: {faults.kind!r} is not one of "
                       f"{', '.join(KINDS)}")
    return jnp.where(_replica_shape(active, g), bad.astype(g.dtype), g)

  leaves, treedef = jax.tree.flatten(stacked)
  return jax.tree.unflatten(treedef, [one(i, g) for i, g in enumerate(leaves)]), active


def _agreement(a: Any, b: Any) -> jax.Array:
  """The fraction of coordinates where two sign pytrees agree."""
  differ = sum(jnp.sum(x != y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  return 1 - differ / sum(x.size for x in jax.tree.leaves(a))  # exactly 1 when all agree


def vote_metrics(sent: Any, active: jax.Array, step: jax.Array,
                 vote_fn: Callable[..., Any]) -> dict:
  """sign_vote: ``faulty_fraction`` and ``honest_sign_agreement`` of the sent gradients' vote.

  ``vote_fn(stacked, abstain=bool[R], step=...)`` is the exchange's vote; the honest-only
  vote is the same vote with the faulty replicas (and any non-finite one) abstaining.
  """
  nonfinite = sign_vote.nonfinite_replicas(sent)
  voted = vote_fn(sent, abstain=nonfinite, step=step)
  honest = vote_fn(sent, abstain=nonfinite | active, step=step)
  return {"faulty_fraction": jnp.mean(active.astype(jnp.float32)),
          "honest_sign_agreement": _agreement(voted, honest)}


def mean_metrics(sent: Any, active: jax.Array) -> tuple[Any, dict]:
  """mean: (the mean of the sent gradients, ``faulty_fraction``, ``honest_sign_agreement``)."""
  mean = jax.tree.map(lambda g: jnp.mean(g, axis=0), sent)
  honest = ~active

  def honest_mean(g):
    h = _replica_shape(honest, g)
    return jnp.sum(jnp.where(h, g, 0), axis=0) / jnp.sum(honest)

  signs = lambda tree: jax.tree.map(jnp.sign, tree)
  agreement = _agreement(signs(mean), signs(jax.tree.map(honest_mean, sent)))
  return mean, {"faulty_fraction": jnp.mean(active.astype(jnp.float32)),
                "honest_sign_agreement": agreement}
