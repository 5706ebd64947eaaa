"""Muon: momentum orthogonalized by Newton-Schulz iterations.

Conventions: a weight multiplies activations as ``x @ W`` (Flax's kernel layout). Which
axes form the matrix is given by dimension numbers (``_muon_dims``); without them a
weight is ``(..., fan_in, fan_out)`` and every leading axis is a batch axis (e.g. layers
stacked for ``nnx.scan``), orthogonalized independently.

Sharding: with no mesh, nothing is re-laid out. Under ``jax.set_mesh`` the stacks of
matrices are spread over the mesh by their batch axis, whole matrices per device, so
Newton-Schulz needs no communication. Explicitly sharded weights (``AxisType.Explicit``)
are orthogonalized in an ``auto_axes`` region the same way, and the update comes back
with the gradient's sharding.
"""

from __future__ import annotations

import collections
import math
from typing import Any, Callable, NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from signflax.optim import _checks
from signflax.optim import _muon_dims
from signflax.optim import _paths
from signflax.optim import _transforms

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
NS_DTYPES = ("auto",)
# Gram iteration: re-form the Gram matrix from X after every this many steps, per dtype
# (measured: docs/muon_gram.md; without restarts bfloat16 diverges at condition number 100).
GRAM_RESTART_EVERY = {"float32": 5, "float64": 0, "bfloat16": 3, "float16": 3}
DEFAULT_STEPS = 5


def resolve_steps(steps: Any, coeffs: Union[str, Any]) -> int:
  """The iteration count: ``steps``, else the rows of an explicit table, else 5."""
  if isinstance(steps, (jax.core.Tracer, jax.Array)):
    raise TypeError("steps: got a traced value (optax.inject_hyperparams traces numbers); "
                    "pass static_args=('steps', 'ns_dtype') to optax.inject_hyperparams, or "
                    "leave steps out: it is taken from coeffs")
  if steps is None:
    return DEFAULT_STEPS if isinstance(coeffs, str) else int(np.shape(coeffs)[0])
  _checks.check_int("steps", steps, 1)
  return steps


def resolve_coeffs(coeffs: Union[str, Any], steps: Any = None
                   ) -> tuple[np.ndarray | jax.Array, float]:
  """Returns ``(coefficients of shape (steps, 3), normalisation safety factor)``.

  An explicit table may be traced (``optax.inject_hyperparams``): its shape is static.
  """
  if isinstance(coeffs, str):
    _checks.check_choice("coeffs", coeffs, COEFF_PRESETS)
    steps = resolve_steps(steps, coeffs)
    per_step, safety = COEFF_PRESETS[coeffs]
    return np.asarray([per_step(i) for i in range(steps)], np.float64), safety
  table = coeffs if isinstance(coeffs, jax.Array) else np.asarray(coeffs, np.float64)
  if table.ndim != 2 or table.shape[1] != 3 or table.shape[0] < 1:
    raise ValueError(f"coeffs: an explicit table must have shape (steps, 3), got "
                     f"{tuple(table.shape)}; or use one of {', '.join(COEFF_PRESETS)}")
  steps = resolve_steps(steps, table)
  if table.shape[0] != steps:
    raise ValueError(f"coeffs: an explicit table must have shape (steps, 3) = ({steps}, 3), "
                     f"got {tuple(table.shape)}; or use one of {', '.join(COEFF_PRESETS)}")
  if not isinstance(table, jax.Array) and not np.all(np.isfinite(table)):
    raise ValueError("coeffs: the explicit table must be finite")
  return table, 1.0


def resolve_ns_dtype(dtype: Any) -> jnp.dtype:
  """``"auto"``: float32 on CPU (bf16 is slower there and less exact), bfloat16 on GPU/TPU.

  Resolved from ``jax.default_backend()`` when called, i.e. at update (trace) time.
  """
  if isinstance(dtype, str) and dtype == "auto":
    return jnp.dtype(jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16)
  return jnp.dtype(dtype)


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

  Under a mesh context (``jax.set_mesh``, auto axes) the batch axis is spread over the
  mesh axes whose sizes divide it and the matrix axes are replicated, so Newton-Schulz
  runs without communication: no Gram matrix is all-reduced and no operand all-gathered
  inside the iteration, only one re-layout before and after. With no mesh: unchanged.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return x
  return jax.lax.with_sharding_constraint(x, jax.P(_batch_axis_spec(x.shape[0], mesh), None, None))


NS_IMPLS = ("standard", "gram", "auto")
"""The Newton-Schulz iterations ``ns_impl`` names: on the matrix, on its Gram matrix, or per
leaf by aspect ratio (see ``uses_gram``)."""
# ``ns_impl="auto"`` runs the Gram iteration on matrices at least this many times wider
# than tall (n / m, m <= n). On paper (5 steps) the Gram form costs 4 m^2 n + 34 m^3 FLOPs
# against 20 m^2 n + 10 m^3, equal at n / m = 1.5; measured on CPU in float32
# (benchmarks/optim_bench.py --aspect-sweep), it wins from about 1.5 (NOTES.md).
GRAM_MIN_ASPECT = 1.5


def _coefficients(table, k: int, dtype):
  return tuple(table[k, i].astype(dtype) if isinstance(table, jax.Array)
               else jnp.asarray(table[k, i], dtype) for i in range(3))


def _standard_iteration(x: jax.Array, table, dtype) -> jax.Array:
  for k in range(table.shape[0]):
    a, b, c = _coefficients(table, k, dtype)
    gram = x @ jnp.swapaxes(x, -1, -2)
    x = a * x + (b * gram + c * (gram @ gram)) @ x
  return x


def _gram_iteration(x: jax.Array, table, dtype, restart_every: int = 0) -> jax.Array:
  r"""The Newton-Schulz polynomial applied through the small Gram matrix.

  With :math:`X_k = Q_k X_0` and :math:`R_k = X_k X_k^\top` (both :math:`m \times m`),
  a step :math:`X_{k+1} = P_k X_k`, :math:`P_k = a_k I + b_k R_k + c_k R_k^2`, becomes

  .. math::
    Q_{k+1} = P_k Q_k, \qquad R_{k+1} = P_k R_k P_k

  (:math:`P_k` is a polynomial in :math:`R_k`, hence symmetric and commuting with it),
  so the :math:`m \times n` operand is touched twice: :math:`R_0 = X_0 X_0^\top` and
  :math:`X_K = Q_K X_0`. Every ``restart_every`` steps (0: never) the Gram matrix is
  formed afresh from :math:`X = Q X_0` (2 more :math:`m \times n` products), which drops
  the rounding error :math:`R` has accumulated: an eigenvalue of :math:`R` rounded below
  zero grows geometrically under the polynomial instead of settling near 1.
  """
  steps = table.shape[0]
  gram = lambda y: y @ jnp.swapaxes(y, -1, -2)
  eye = jnp.eye(x.shape[-2], dtype=dtype)
  r, q = gram(x), None
  for k in range(steps):
    a, b, c = _coefficients(table, k, dtype)
    p = a * eye + b * r + c * (r @ r)
    q = p if q is None else p @ q
    if k == steps - 1:
      break
    if restart_every and (k + 1) % restart_every == 0:
      x, q = q @ x, None
      r = gram(x)
    else:
      r = (p @ r) @ p
  return q @ x


def uses_gram(shape: tuple[int, ...], impl: str) -> bool:
  """Whether ``impl`` runs the Gram iteration on matrices of ``shape`` (last two axes)."""
  m, n = sorted(shape[-2:])
  return impl == "gram" or (impl == "auto" and n >= GRAM_MIN_ASPECT * m)


def orthogonalize(x: jax.Array, *, steps: int = DEFAULT_STEPS, coeffs: Union[str, Any] = "quintic",
                  dtype: Any = jnp.bfloat16, eps: float = 1e-7, impl: str = "auto",
                  gram_restart_every: int | None = None) -> jax.Array:
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

  ``impl``: ``"standard"`` iterates on :math:`X` (:math:`4m^2n + 2m^3` FLOPs a step for
  :math:`m \le n`); ``"gram"`` iterates on the :math:`m \times m` Gram matrix (see
  :func:`_gram_iteration`: :math:`4m^2n` once plus :math:`8m^3` a step), the same
  polynomial up to rounding; ``"auto"`` (default, as in :func:`scale_by_muon`): Gram
  when :math:`n/m \ge` ``GRAM_MIN_ASPECT``.
  In bfloat16 the Gram iteration loses more than the standard one on ill-conditioned
  inputs (the Gram matrix squares the condition number), so it is re-formed from
  :math:`X` every ``gram_restart_every`` steps (default ``GRAM_RESTART_EVERY``: 3 in
  bfloat16, 5 in float32); see docs/muon_gram.md for measured error bounds.

  A zero matrix stays zero (never NaN). The iteration runs in ``dtype`` (bfloat16 by
  default, as in practice; float32 for reference results; ``"auto"``: float32 on CPU,
  bfloat16 on GPU/TPU); the result has ``x``'s dtype.

  Args:
    x: array with ``ndim >= 2``.
    steps: number of iterations, >= 1.
    coeffs: ``"quintic"``, ``"polar_express"`` or an explicit (steps, 3) table.
    dtype: dtype of the iteration.
    eps: added to the norm in the initial normalisation.
    impl: ``"standard"``, ``"gram"`` or ``"auto"``.
    gram_restart_every: the Gram iteration re-forms its Gram matrix from :math:`X`
      after every this many steps (0: never; None: ``GRAM_RESTART_EVERY`` of ``dtype``).
  """
  if x.ndim < 2:
    raise ValueError(f"x: orthogonalize needs ndim >= 2, got shape {x.shape}")
  _checks.check_choice("impl", impl, NS_IMPLS)
  if gram_restart_every is not None:
    _checks.check_int("gram_restart_every", gram_restart_every, 0)
  table, safety = resolve_coeffs(coeffs, steps)
  dtype = resolve_ns_dtype(dtype)
  out_dtype = x.dtype
  wide = x.shape[-2] <= x.shape[-1]
  if not wide:
    x = jnp.swapaxes(x, -1, -2)
  norm = jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=(-2, -1), keepdims=True))
  x = (x.astype(jnp.float32) / (safety * norm + eps)).astype(dtype)
  if uses_gram(x.shape, impl):
    if gram_restart_every is None:
      gram_restart_every = GRAM_RESTART_EVERY.get(jnp.dtype(dtype).name, 3)
    x = _gram_iteration(x, table, dtype, gram_restart_every)
  else:
    x = _standard_iteration(x, table, dtype)
  if not wide:
    x = jnp.swapaxes(x, -1, -2)
  return x.astype(out_dtype)


def _shape_scale(fan_in: int, fan_out: int, scale: str, rms_target: Any) -> Any:
  if scale == "shape":
    return math.sqrt(max(1.0, fan_out / fan_in))
  if scale == "rms":
    return rms_target * math.sqrt(max(fan_in, fan_out))
  return 1.0


class _Stack(NamedTuple):
  """A leaf read as a wide stack of matrices ``(B, m, n)``, and how to undo it."""
  mats: jax.Array
  perm: tuple[int, ...]         # leaf axes in (batch, reduction, output) order
  tall: bool                    # rows > columns: stored transposed


def _to_stack(leaf: jax.Array, dims: Any, name: str) -> _Stack:
  batch, red, out = _muon_dims.normalize(dims, leaf.shape, name)
  perm = batch + red + out
  x = leaf if perm == tuple(range(leaf.ndim)) else jnp.transpose(leaf, perm)
  size = lambda axes: math.prod(leaf.shape[a] for a in axes)
  x = x.reshape(size(batch), size(red), size(out))
  tall = x.shape[1] > x.shape[2]
  return _Stack(jnp.swapaxes(x, 1, 2) if tall else x, perm, tall)


def _from_stack(mats: jax.Array, stack: _Stack, shape: tuple[int, ...]) -> jax.Array:
  if stack.tall:
    mats = jnp.swapaxes(mats, 1, 2)
  x = mats.reshape(tuple(shape[a] for a in stack.perm))
  return x if stack.perm == tuple(range(len(shape))) else jnp.transpose(x, np.argsort(stack.perm))


def _orthogonalize_grouped(leaves: list[jax.Array], dims: list[Any], names: list[str],
                           **ns_kwargs) -> list[jax.Array]:
  """Orthogonalizes every leaf, batching matrices of one shape into one call.

  Each leaf becomes a stack of wide (m <= n) matrices; stacks with the same (m, n) and
  dtype are concatenated, so e.g. all of a transformer's square attention projections
  run as one batched Newton-Schulz instead of one small loop each.
  """
  stacks = [_to_stack(x, d, n) for x, d, n in zip(leaves, dims, names)]
  groups = collections.defaultdict(list)
  for i, stack in enumerate(stacks):
    groups[(stack.mats.shape[1:], stack.mats.dtype)].append(i)
  results = [None] * len(leaves)
  for members in groups.values():
    mats = [stacks[i].mats for i in members]
    batch = mats[0] if len(mats) == 1 else jnp.concatenate(mats, axis=0)
    out = orthogonalize(_whole_matrices(batch), **ns_kwargs)
    offsets = np.cumsum([0] + [m.shape[0] for m in mats])
    for i, start, stop in zip(members, offsets[:-1], offsets[1:]):
      results[i] = _from_stack(out[start:stop], stacks[i], leaves[i].shape)
  return results


def _explicit_sharding(x: jax.Array):
  """The NamedSharding of an explicitly sharded array (``AxisType.Explicit``), else None."""
  sharding = getattr(jax.typeof(x), "sharding", None)
  if isinstance(sharding, jax.sharding.NamedSharding) and any(
      t == jax.sharding.AxisType.Explicit for t in sharding.mesh.axis_types):
    return sharding
  return None


def _orthogonalize_leaves(leaves: list[jax.Array], dims: list[Any], names: list[str],
                          **ns_kwargs) -> list[jax.Array]:
  """:func:`_orthogonalize_grouped` in every sharding mode.

  Explicitly sharded leaves: reshapes and concatenations of sharded axes have no single
  right output sharding, so the work runs with the mesh's axes made automatic
  (``jax.sharding.auto_axes``), laid out as under ``jax.set_mesh``, and each update is
  resharded to its gradient's sharding on the way out.
  """
  grouped = lambda *xs: tuple(_orthogonalize_grouped(list(xs), dims, names, **ns_kwargs))
  shardings = [_explicit_sharding(x) for x in leaves]
  explicit = [s for s in shardings if s is not None]
  if not explicit:
    return list(grouped(*leaves))
  out_shardings = tuple(jax.typeof(x).sharding for x in leaves)
  with jax.sharding.use_abstract_mesh(explicit[0].mesh.abstract_mesh):
    return list(jax.sharding.auto_axes(grouped, out_sharding=out_shardings)(*leaves))


class ScaleByMuonState(NamedTuple):
  """State of :func:`scale_by_muon`: the momentum buffer."""
  momentum: optax.Updates


def _check_muon_args(beta, nesterov, steps, coeffs, ns_dtype, scale, rms_target,
                     ns_impl) -> None:
  _checks.check_range("beta", beta, 0.0, 1.0, high_open=True)
  _checks.check_bool("nesterov", nesterov)
  _checks.check_choice("scale", scale, SCALES)
  _checks.check_non_negative("rms_target", rms_target)
  _checks.check_dtype("ns_dtype", ns_dtype, allow_none=False, extra=NS_DTYPES)
  _checks.check_choice("ns_impl", ns_impl, NS_IMPLS)
  resolve_coeffs(coeffs, steps)


def scale_by_muon(beta: float = 0.95, *, nesterov: bool = True, steps: int | None = None,
                  coeffs: Union[str, Any] = "quintic", ns_dtype: Any = "bfloat16",
                  scale: str = "shape", rms_target: float = 0.2,
                  dimension_numbers: Any = None, ns_impl: str = "auto"
                  ) -> optax.GradientTransformation:
  r"""Muon's direction: orthogonalized momentum, rescaled per matrix.

  .. math::
    m_t &= \beta m_{t-1} + (1 - \beta) g_t, \qquad
    v_t = \beta m_t + (1 - \beta) g_t \ \text{(Nesterov) or } m_t \\
    u_t &= \gamma(W)\, \mathrm{NS}(v_t), \qquad
    \gamma = \sqrt{\max(1, n_{out}/n_{in})} \ (\texttt{"shape"}) \ \text{ or } \
    \rho \sqrt{\max(n_{in}, n_{out})} \ (\texttt{"rms"})

  ``"rms"`` makes the update RMS about ``rms_target`` (Moonlight: matches AdamW's
  typical 0.2-0.4, so AdamW learning rates and weight decay transfer).

  Which axes form each matrix: ``dimension_numbers``, a pytree with a
  :class:`MuonDims` per leaf or a callable ``(path, leaf) -> MuonDims``; multi-axis
  inputs and outputs are flattened into one :math:`n_{in} \times n_{out}` matrix and
  restored afterwards, other axes are a batch. Default: the last two axes are
  (fan_in, fan_out), with a warning for leaves of ndim >= 3 that do not look like a
  layer stack. Every leaf must have ndim >= 2; route other leaves elsewhere with
  :func:`muon` or ``optax.partition``. Matrices of equal shape are batched into one
  Newton-Schulz call. ``ns_dtype``: the iteration's dtype, ``"auto"`` for float32 on
  CPU and bfloat16 on GPU/TPU.
  ``ns_impl``: ``"standard"`` (iterate on the matrix), ``"gram"`` (iterate on its
  smaller Gram matrix, fewer FLOPs for wide matrices) or ``"auto"`` (Gram where
  ``max(m, n) / min(m, n) >= GRAM_MIN_ASPECT``); see :func:`orthogonalize`.

  Differences from ``optax.contrib.scale_by_muon``: no bias correction (Jordan et al.'s
  form; orthogonalization is scale-invariant, so it only matters for the Nesterov
  blend), shape scaling built in, same-shape batching, bf16 iteration by default.

  References:
    Jordan et al., Muon: An optimizer for hidden layers in neural networks, 2024.
    Liu et al., Muon is Scalable for LLM Training (Moonlight), 2025.
    Amsel et al., The Polar Express, 2025.
  """
  _check_muon_args(beta, nesterov, steps, coeffs, ns_dtype, scale, rms_target, ns_impl)

  def leaf_dims(tree):
    pairs = _muon_dims.leaf_dims(dimension_numbers, tree)
    names = [_paths.path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    return [d for d, _ in pairs], names

  def init_fn(params):
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
      if jnp.ndim(leaf) < 2:
        raise ValueError(f"params: scale_by_muon needs ndim >= 2 for every leaf, "
                         f"{_paths.path_name(path)} has shape {jnp.shape(leaf)}; "
                         "route it to another optimizer with muon(..., muon_params=...)")
    for dims, name, leaf in zip(*leaf_dims(params), jax.tree.leaves(params)):
      if dims is None:
        raise ValueError(f"dimension_numbers: {name} has None (fallback) but scale_by_muon "
                         "has no fallback; route it elsewhere with muon(...)")
      _muon_dims.normalize(dims, jnp.shape(leaf), name)
    return ScaleByMuonState(momentum=optax.tree.zeros_like(params))

  def update_fn(updates, state, params=None):
    del params
    momentum, direction = _transforms.momentum_direction(updates, state.momentum, beta,
                                                         nesterov)
    leaves, treedef = jax.tree.flatten(direction)
    dims, names = leaf_dims(direction)
    ortho = _orthogonalize_leaves(leaves, dims, names, steps=resolve_steps(steps, coeffs),
                                  coeffs=coeffs, dtype=resolve_ns_dtype(ns_dtype),
                                  impl=ns_impl)
    scaled = [o * jnp.asarray(_shape_scale(*_muon_dims.fan_in_out(o.shape, d), scale,
                                           rms_target), o.dtype)
              for o, d in zip(ortho, dims)]
    return jax.tree.unflatten(treedef, scaled), ScaleByMuonState(momentum=momentum)

  return optax.GradientTransformation(init_fn, update_fn)


def muon_labels(params, muon_params: Union[None, Callable, Any] = None,
                dimension_numbers: Any = None):
  """Pytree of ``"muon"`` / ``"fallback"`` labels, one per leaf of ``params``.

  A leaf is Muon's when ``muon_params`` says so (default :func:`is_hidden_matrix`,
  unless ``dimension_numbers`` is given) and its dimension numbers, if given, are not
  None.
  """
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  use = [True] * len(flat)
  if dimension_numbers is not None:
    use = [d is not None for d, _ in _muon_dims.leaf_dims(dimension_numbers, params)]
  if muon_params is None and dimension_numbers is None:
    muon_params = _muon_dims.is_hidden_matrix
  if callable(muon_params):
    use = [u and bool(muon_params(p, x)) for u, (p, x) in zip(use, flat)]
  elif muon_params is not None:
    use = [u and bool(m) for u, m in zip(use, jax.tree.leaves(muon_params))]
  return jax.tree.unflatten(treedef, ["muon" if u else "fallback" for u in use])


def _matrices_only(params):
  return jax.tree.map(lambda x: jnp.ndim(x) >= 2, params)


def muon(learning_rate: optax.ScalarOrSchedule, *, beta: float = 0.95, nesterov: bool = True,
         steps: int | None = None, coeffs: Union[str, Any] = "quintic",
         ns_dtype: Any = "bfloat16", ns_impl: str = "auto", scale: str = "shape",
         rms_target: float = 0.2, weight_decay: float = 0.0,
         muon_params: Union[None, Callable, Any] = None,
         dimension_numbers: Any = None,
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

  Routing and layout:

  * ``dimension_numbers``: a pytree with a :class:`MuonDims` or None per leaf, or a
    callable ``(path, leaf) -> MuonDims | None`` (see :func:`dims_by_path`,
    :func:`dense_general_dims`, :func:`einsum_dims`, :func:`conv_dims`,
    :func:`logical_axes_dims`). None sends the leaf to ``fallback``; that is how an
    output layer not called ``head`` (``linear2``, ``out``) leaves Muon.
  * ``muon_params``: a callable ``(path, leaf) -> bool`` or a pytree of bools; with
    ``dimension_numbers`` both must agree for a leaf to be Muon's.
  * Neither: a leaf is Muon's when ndim >= 2 and its path names no embedding or head
    (``embed*``, ``*embedding*``, ``wte``, ``wpe``, ``lm_head``, ``head``, ``unembed*``,
    ``logits``; nor a norm, ``scale`` or ``bias``, which are 2-D when stacked over
    layers), its last two axes being the matrix; layer-stacked leaves are orthogonalized
    per layer.

  The state comes from ``optax.partition``: each branch's state holds an
  ``optax.MaskedNode()`` in place of every leaf the other branch owns. ``MaskedNode`` is
  an empty pytree, so ``jax.tree.leaves(state)`` and ``jax.tree.map`` skip it, but code
  that walks the state's containers by hand and expects arrays meets it. Walk it with
  ``jax.tree.leaves_with_path(state)`` or, to see the placeholders,
  ``jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, optax.MaskedNode))`` and drop
  them with ``isinstance(x, optax.MaskedNode)``.

  With ``optax.inject_hyperparams`` nothing needs to be static with the defaults:
  ``steps`` defaults to the coefficient table's length and ``ns_dtype`` is a string
  (``"bfloat16"``, ``"float32"``, ``"auto"``). If you pass ``steps`` or a dtype object,
  give ``static_args=("steps", "ns_dtype")``.
  """
  _checks.check_learning_rate("learning_rate", learning_rate)
  _checks.check_non_negative("weight_decay", weight_decay)
  if fallback_learning_rate is None:
    fallback_learning_rate = learning_rate
  _checks.check_learning_rate("fallback_learning_rate", fallback_learning_rate)
  _checks.check_mask("muon_params", muon_params)
  if isinstance(fallback, str):
    _checks.check_choice("fallback", fallback, FALLBACKS)
  elif not isinstance(fallback, optax.GradientTransformation):
    raise ValueError(f"fallback: must be one of {', '.join(map(repr, FALLBACKS))} or an "
                     f"optax.GradientTransformation, got {fallback!r}")

  hidden = optax.chain(
      scale_by_muon(beta, nesterov=nesterov, steps=steps, coeffs=coeffs, ns_dtype=ns_dtype,
                    ns_impl=ns_impl, scale=scale, rms_target=rms_target,
                    dimension_numbers=dimension_numbers),
      optax.add_decayed_weights(weight_decay),
      optax.scale_by_learning_rate(learning_rate),
  )
  if fallback == "adamw":
    other = optax.adamw(fallback_learning_rate, b1=0.9, b2=0.95, eps=1e-8,
                        weight_decay=weight_decay, mask=_matrices_only)
  elif fallback == "signum":
    other = optax.chain(_transforms.scale_by_signum(0.9),
                        optax.add_decayed_weights(weight_decay, mask=_matrices_only),
                        optax.scale_by_learning_rate(fallback_learning_rate))
  else:
    other = fallback
  return optax.partition({"muon": hidden, "fallback": other},
                         lambda params: muon_labels(params, muon_params, dimension_numbers))
