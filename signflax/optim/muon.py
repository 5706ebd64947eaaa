"""Muon: momentum orthogonalized by Newton-Schulz iterations.

Conventions: a weight of shape ``(..., fan_in, fan_out)`` multiplies activations as
``x @ W`` (Flax's kernel layout); every leading axis is a batch axis (e.g. layers
stacked for ``nnx.scan``), orthogonalized independently.
"""

from __future__ import annotations

import collections
import math
import re
from typing import Any, Callable, NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from signflax.optim import _checks
from signflax.optim import transforms

# Keller Jordan's quintic: the same (a, b, c) every step; it drives singular values
# into a band around 1 rather than to exactly 1 (see orthogonalize).
_QUINTIC = (3.4445, -4.7750, 2.0315)

# Amsel et al. 2025, "The Polar Express", Algorithm 1 (degree 5): per-step optimal
# coefficients; all but the last divided by (1.01, 1.01^3, 1.01^5) for bf16 safety.
# Steps past the table repeat the last row.
_POLAR_EXPRESS = tuple(
    (a / 1.01, b / 1.01**3, c / 1.01**5) for a, b, c in (
        (8.28721201814563, -23.595886519098837, 17.300387312530933),
        (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
        (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
        (3.3184196573706015, -2.488488024314874, 0.51004894012372),
        (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
        (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
        (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    )) + ((1.875, -1.25, 0.375),)

# preset -> (coefficients for step i, safety factor on the initial normalisation)
COEFF_PRESETS = {
    "quintic": (lambda i: _QUINTIC, 1.0),
    "polar_express": (lambda i: _POLAR_EXPRESS[min(i, len(_POLAR_EXPRESS) - 1)], 1.01),
}
SCALES = ("shape", "rms", "none")
FALLBACKS = ("adamw", "signum")

# Path tokens that mark an embedding or an output head (kept out of Muon by default).
_NOT_HIDDEN = re.compile(r"(^|[/._])(embed\w*|\w*embedding\w*|wte|wpe|lm_head|head|unembed\w*|"
                         r"output_head|logits?|\w*norm\w*|scale|bias)($|[/._])")


def resolve_coeffs(coeffs: Union[str, Any], steps: int) -> tuple[np.ndarray | jax.Array, float]:
  """Returns ``(coefficients of shape (steps, 3), normalisation safety factor)``."""
  _checks.check_int("steps", steps, 1)
  if isinstance(coeffs, str):
    _checks.check_choice("coeffs", coeffs, COEFF_PRESETS)
    per_step, safety = COEFF_PRESETS[coeffs]
    return np.asarray([per_step(i) for i in range(steps)], np.float64), safety
  table = coeffs if isinstance(coeffs, jax.Array) else np.asarray(coeffs, np.float64)
  if table.shape != (steps, 3):
    raise ValueError(f"coeffs: an explicit table must have shape (steps, 3) = ({steps}, 3), "
                     f"got {tuple(table.shape)}; or use one of {', '.join(COEFF_PRESETS)}")
  return table, 1.0


def _batch_axis_spec(batch: int, mesh) -> tuple[str, ...] | None:
  """Mesh axes (in order, size > 1) whose product divides ``batch``: where to spread it."""
  axes, size = [], 1
  for name, n in zip(mesh.axis_names, mesh.axis_sizes):
    if n > 1 and batch % (size * n) == 0:
      axes.append(name)
      size *= n
  return tuple(axes) or None


def _whole_matrices(x: jax.Array) -> jax.Array:
  """Places a stack of matrices ``(B, m, n)`` so each device holds whole matrices.

  Newton-Schulz then runs without communication: no Gram matrix is all-reduced and no
  operand all-gathered inside the iteration, only one re-layout before and after.

  * Explicitly sharded arrays (``AxisType.Explicit``): the matrix axes are unsharded,
    the batch axis keeps its sharding.
  * Under a mesh context (``jax.set_mesh``, as the trainer runs): the batch axis is
    spread over the mesh axes whose sizes divide it, the matrix axes replicated.
  * Otherwise (no mesh, nothing sharded): unchanged.
  """
  sharding = getattr(jax.typeof(x), "sharding", None)
  if isinstance(sharding, jax.sharding.NamedSharding) and any(
      t == jax.sharding.AxisType.Explicit for t in sharding.mesh.axis_types):
    spec = tuple(sharding.spec) + (None,) * (x.ndim - len(sharding.spec))
    if spec[-2] is None and spec[-1] is None:
      return x
    target = jax.sharding.NamedSharding(sharding.mesh, jax.P(*spec[:-2], None, None))
    return jax.sharding.reshard(x, target)
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or x.ndim != 3 or mesh.size == 1:
    return x
  return jax.lax.with_sharding_constraint(x, jax.P(_batch_axis_spec(x.shape[0], mesh), None, None))


def orthogonalize(x: jax.Array, *, steps: int = 5, coeffs: Union[str, Any] = "quintic",
                  dtype: Any = jnp.bfloat16, eps: float = 1e-7) -> jax.Array:
  r"""Newton-Schulz approximation of the polar factor :math:`UV^\top` of :math:`X = U\Sigma V^\top`.

  Works on the last two axes (leading axes are a batch) of a tall or wide ``x``:

  .. math::
    X_0 = X / (s\,\|X\|_F + \epsilon), \qquad
    X_{k+1} = a_k X_k + (b_k A_k + c_k A_k^2) X_k, \quad A_k = X_k X_k^\top

  on the orientation whose Gram matrix :math:`A_k` is the smaller. Each step maps every
  singular value :math:`\sigma \mapsto a\sigma + b\sigma^3 + c\sigma^5`, leaving the
  singular vectors alone. Presets:

  * ``"quintic"`` (Jordan et al. 2024): (3.4445, -4.7750, 2.0315) every step, :math:`s=1`.
    Not convergent by design: singular values end in a band around 1, about
    [0.68, 1.14] after 5 or more steps (float32, condition number <= 10).
  * ``"polar_express"`` (Amsel et al. 2025): per-step minimax-optimal coefficients,
    :math:`s = 1.01`. Singular values in about [0.85, 1.13] after 5 steps and within
    1e-2 of 1 after 8 (float32, condition number <= 10).

  A zero matrix stays zero (never NaN). The iteration runs in ``dtype`` (bfloat16 by
  default, as in practice; float32 for reference results); the result has ``x``'s dtype.

  Args:
    x: array with ``ndim >= 2``.
    steps: number of iterations, >= 1.
    coeffs: ``"quintic"``, ``"polar_express"`` or an explicit (steps, 3) table.
    dtype: dtype of the iteration.
    eps: added to the norm in the initial normalisation.
  """
  if x.ndim < 2:
    raise ValueError(f"x: orthogonalize needs ndim >= 2, got shape {x.shape}")
  table, safety = resolve_coeffs(coeffs, steps)
  out_dtype = x.dtype
  wide = x.shape[-2] <= x.shape[-1]
  if not wide:
    x = jnp.swapaxes(x, -1, -2)
  norm = jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=(-2, -1), keepdims=True))
  x = (x.astype(jnp.float32) / (safety * norm + eps)).astype(dtype)
  for k in range(steps):
    a, b, c = (table[k, i].astype(dtype) if isinstance(table, jax.Array)
               else jnp.asarray(table[k, i], dtype) for i in range(3))
    gram = x @ jnp.swapaxes(x, -1, -2)
    x = a * x + (b * gram + c * (gram @ gram)) @ x
  if not wide:
    x = jnp.swapaxes(x, -1, -2)
  return x.astype(out_dtype)


def _shape_scale(shape: tuple[int, ...], scale: str, rms_target: float) -> float:
  fan_in, fan_out = shape[-2], shape[-1]
  if scale == "shape":
    return math.sqrt(max(1.0, fan_out / fan_in))
  if scale == "rms":
    return rms_target * math.sqrt(max(fan_in, fan_out))
  return 1.0


def _orthogonalize_grouped(leaves: list[jax.Array], **ns_kwargs) -> list[jax.Array]:
  """Orthogonalizes every leaf, batching matrices of one shape into one call.

  Each leaf becomes a stack of wide (m <= n) matrices; stacks with the same (m, n) and
  dtype are concatenated, so e.g. all of a transformer's square attention projections
  run as one batched Newton-Schulz instead of one small loop each.
  """
  stacks, groups = [], collections.defaultdict(list)
  for i, leaf in enumerate(leaves):
    tall = leaf.shape[-2] > leaf.shape[-1]
    mat = jnp.swapaxes(leaf, -1, -2) if tall else leaf
    mat = _whole_matrices(mat.reshape((-1,) + mat.shape[-2:]))
    stacks.append((mat, tall))
    groups[(mat.shape[-2:], mat.dtype)].append(i)
  results = [None] * len(leaves)
  for members in groups.values():
    mats = [stacks[i][0] for i in members]
    batch = mats[0] if len(mats) == 1 else jnp.concatenate(mats, axis=0)
    out = orthogonalize(_whole_matrices(batch), **ns_kwargs)
    offsets = np.cumsum([0] + [m.shape[0] for m in mats])
    for i, start, stop in zip(members, offsets[:-1], offsets[1:]):
      piece = out[start:stop]
      leaf, (_, tall) = leaves[i], stacks[i]
      if tall:
        piece = jnp.swapaxes(piece, -1, -2)
      results[i] = piece.reshape(leaf.shape)
  return results


class ScaleByMuonState(NamedTuple):
  """State of :func:`scale_by_muon`: the momentum buffer."""
  momentum: optax.Updates


def scale_by_muon(beta: float = 0.95, *, nesterov: bool = True, steps: int = 5,
                  coeffs: Union[str, Any] = "quintic", ns_dtype: Any = jnp.bfloat16,
                  scale: str = "shape", rms_target: float = 0.2
                  ) -> optax.GradientTransformation:
  r"""Muon's direction: orthogonalized momentum, rescaled per matrix.

  .. math::
    m_t &= \beta m_{t-1} + (1 - \beta) g_t, \qquad
    v_t = \beta m_t + (1 - \beta) g_t \ \text{(Nesterov) or } m_t \\
    u_t &= \gamma(W)\, \mathrm{NS}(v_t), \qquad
    \gamma = \sqrt{\max(1, n_{out}/n_{in})} \ (\texttt{"shape"}) \ \text{ or } \
    \rho \sqrt{\max(n_{in}, n_{out})} \ (\texttt{"rms"})

  ``"rms"`` makes the update RMS about ``rms_target`` (Moonlight: matches AdamW's
  typical 0.2-0.4, so AdamW learning rates and weight decay transfer). Every leaf must
  have ndim >= 2 (last two axes fan_in, fan_out; leading axes batch); route other
  leaves elsewhere with :func:`muon` or ``optax.partition``. Matrices of equal shape
  are batched into one Newton-Schulz call.

  Differences from ``optax.contrib.scale_by_muon``: no bias correction (Jordan et al.'s
  form; orthogonalization is scale-invariant, so it only matters for the Nesterov
  blend), shape scaling built in, same-shape batching, bf16 iteration by default.

  References:
    Jordan et al., Muon: An optimizer for hidden layers in neural networks, 2024.
    Liu et al., Muon is Scalable for LLM Training (Moonlight), 2025.
    Amsel et al., The Polar Express, 2025.
  """
  _checks.check_range("beta", beta, 0.0, 1.0, high_open=True)
  _checks.check_choice("scale", scale, SCALES)
  _checks.check_non_negative("rms_target", rms_target)
  resolve_coeffs(coeffs, steps)  # validate early
  ns_kwargs = dict(steps=steps, coeffs=coeffs, dtype=ns_dtype)

  def init_fn(params):
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
      if jnp.ndim(leaf) < 2:
        raise ValueError(f"params: scale_by_muon needs ndim >= 2 for every leaf, "
                         f"{jax.tree_util.keystr(path)} has shape {jnp.shape(leaf)}; "
                         "route it to another optimizer with muon(..., muon_params=...)")
    return ScaleByMuonState(momentum=optax.tree.zeros_like(params))

  def update_fn(updates, state, params=None):
    del params
    momentum, direction = transforms.momentum_direction(updates, state.momentum, beta, nesterov)
    leaves, treedef = jax.tree.flatten(direction)
    ortho = _orthogonalize_grouped(leaves, **ns_kwargs)
    scaled = [o * jnp.asarray(_shape_scale(o.shape, scale, rms_target), o.dtype) for o in ortho]
    return jax.tree.unflatten(treedef, scaled), ScaleByMuonState(momentum=momentum)

  return optax.GradientTransformation(init_fn, update_fn)


def path_name(path) -> str:
  """``'a/b/0/kernel'`` for a pytree key path."""
  return jax.tree_util.keystr(path, simple=True, separator="/")


def is_hidden_matrix(path, leaf) -> bool:
  """Default Muon routing: ndim >= 2 and the path names no embedding, head, norm or bias.

  Norms, biases and scales are excluded by name too, because stacking over layers makes
  them 2-D.
  """
  return jnp.ndim(leaf) >= 2 and not _NOT_HIDDEN.search(path_name(path).lower())


def muon_labels(params, muon_params: Union[None, Callable, Any] = None):
  """Pytree of ``"muon"`` / ``"fallback"`` labels, one per leaf of ``params``."""
  if muon_params is None:
    muon_params = is_hidden_matrix
  if callable(muon_params):
    return jax.tree_util.tree_map_with_path(
        lambda p, x: "muon" if muon_params(p, x) else "fallback", params)
  return jax.tree.map(lambda use, _: "muon" if use else "fallback", muon_params, params)


def _matrices_only(params):
  return jax.tree.map(lambda x: jnp.ndim(x) >= 2, params)


def muon(learning_rate: optax.ScalarOrSchedule, *, beta: float = 0.95, nesterov: bool = True,
         steps: int = 5, coeffs: Union[str, Any] = "quintic", ns_dtype: Any = jnp.bfloat16,
         scale: str = "shape", rms_target: float = 0.2, weight_decay: float = 0.0,
         muon_params: Union[None, Callable, Any] = None,
         fallback: Union[str, optax.GradientTransformation] = "adamw",
         fallback_learning_rate: optax.ScalarOrSchedule | None = None
         ) -> optax.GradientTransformation:
  r"""Muon for hidden weight matrices, ``fallback`` for everything else.

  Hidden matrices: :math:`W \leftarrow W - \eta\,(u_t + \lambda W)` with :math:`u_t`
  from :func:`scale_by_muon`. Embeddings, the output head, norms, biases and scalars go
  to ``fallback``: ``"adamw"`` (b1=0.9, b2=0.95, eps=1e-8), ``"signum"`` (beta=0.9),
  or any ``GradientTransformation`` (used as given, learning rate included). Built-in
  fallbacks use ``fallback_learning_rate`` (default: ``learning_rate``, right for
  ``scale="rms"``; with ``scale="shape"`` Muon's rate is typically ~10x AdamW's, so set
  it) and decay only matrices (not norms, biases or scalars) by ``weight_decay``.

  Routing: a leaf is Muon's when ``muon_params(path, leaf)`` is true (a callable), or
  its entry is True (a pytree of bools); by default when ndim >= 2 and its path names no
  embedding or head (``embed*``, ``*embedding*``, ``wte``, ``wpe``, ``lm_head``,
  ``head``, ``unembed*``, ``logits``; nor a norm, ``scale`` or ``bias``, which are 2-D
  when stacked over layers). Layer-stacked leaves are orthogonalized per layer.

  With ``optax.inject_hyperparams``, pass ``static_args=("steps", "ns_dtype")``: the
  iteration count shapes the program and dtypes are not hyperparameters.
  """
  _checks.check_non_negative("learning_rate", learning_rate)
  _checks.check_non_negative("weight_decay", weight_decay)
  if fallback_learning_rate is None:
    fallback_learning_rate = learning_rate
  _checks.check_non_negative("fallback_learning_rate", fallback_learning_rate)
  if isinstance(fallback, str):
    _checks.check_choice("fallback", fallback, FALLBACKS)
  elif not isinstance(fallback, optax.GradientTransformation):
    raise ValueError(f"fallback: must be one of {', '.join(map(repr, FALLBACKS))} or an "
                     f"optax.GradientTransformation, got {fallback!r}")

  hidden = optax.chain(
      scale_by_muon(beta, nesterov=nesterov, steps=steps, coeffs=coeffs, ns_dtype=ns_dtype,
                    scale=scale, rms_target=rms_target),
      optax.add_decayed_weights(weight_decay),
      optax.scale_by_learning_rate(learning_rate),
  )
  if fallback == "adamw":
    other = optax.adamw(fallback_learning_rate, b1=0.9, b2=0.95, eps=1e-8,
                        weight_decay=weight_decay, mask=_matrices_only)
  elif fallback == "signum":
    other = optax.chain(transforms.scale_by_signum(0.9),
                        optax.add_decayed_weights(weight_decay, mask=_matrices_only),
                        optax.scale_by_learning_rate(fallback_learning_rate))
  else:
    other = fallback
  return optax.partition({"muon": hidden, "fallback": other},
                         lambda params: muon_labels(params, muon_params))
