r"""Dimension numbers for Muon: which axes of a weight form the matrix it orthogonalizes.

A weight of any rank is read as a stack of matrices: its *reduction* axes (fan-in, the
axes contracted with the input) are flattened into the matrix's rows, its *output* axes
(fan-out) into its columns, and every other axis is a batch axis (e.g. layers stacked
for ``nnx.scan``), orthogonalized independently:

.. math::  W[b, r_1, \dots, r_k, o_1, \dots, o_l] \;\to\;
           M_b \in \mathbb{R}^{(r_1 \cdots r_k) \times (o_1 \cdots o_l)}

Muon is told the dimension numbers per leaf, as a pytree (a :class:`MuonDims` or None
per leaf) or as a callable ``(path, leaf) -> MuonDims | None``; None sends the leaf to
the fallback optimizer. The recipes below cover Flax's layouts.
"""

from __future__ import annotations

import math
import re
import warnings
from typing import Any, Callable, Mapping, NamedTuple, Sequence, Union

import jax
import numpy as np

from signflax.optim._paths import path_name

Axes = Union[int, Sequence[int]]

# Path tokens that mark an embedding or an output head (kept out of Muon by default).
_NOT_HIDDEN = re.compile(r"(^|[/._])(embed\w*|\w*embedding\w*|wte|wpe|lm_head|head|unembed\w*|"
                         r"output_head|logits?|\w*norm\w*|scale|bias)($|[/._])")
# Path tokens under which a 3-D leaf's first axis is evidently a stack of layers.
_LAYER_STACK = re.compile(r"(^|[/._])(layers?|blocks?|stack\w*|scan\w*|repeat\w*|h)($|[/._])")


class MuonDims(NamedTuple):
  """Muon's dimension numbers for one weight: its reduction (fan-in) and output axes.

  Each is an axis or a tuple of axes (negative counts from the end); every other axis
  is a batch axis. ``MuonDims(0, (1, 2))`` reads a ``DenseGeneral`` kernel (D, H, Dh)
  as one D x (H*Dh) matrix; ``MuonDims((0, 1, 2), 3)`` a conv kernel (kh, kw, cin,
  cout) as one (kh*kw*cin) x cout matrix.
  """
  reduction_axes: Axes = -2
  output_axes: Axes = -1


LAST_TWO_AXES = MuonDims(-2, -1)
DimsFn = Callable[[Any, Any], Union[MuonDims, None]]


def is_dims_leaf(x: Any) -> bool:
  """True for a leaf of a dimension-numbers pytree: None, MuonDims or optax's kind."""
  return x is None or isinstance(x, MuonDims) or (
      hasattr(x, "reduction_axis") and hasattr(x, "output_axis"))


def _axes(value: Axes) -> tuple[int, ...]:
  return (value,) if isinstance(value, (int, np.integer)) else tuple(value)


def normalize(dims: Any, shape: Sequence[int], name: str
              ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
  """``(batch, reduction, output)`` axes of a leaf of ``shape``, each non-negative.

  Accepts :class:`MuonDims` and ``optax.contrib.MuonDimensionNumbers``.
  """
  if hasattr(dims, "reduction_axis"):
    dims = MuonDims(dims.reduction_axis, dims.output_axis)
  if not isinstance(dims, MuonDims):
    raise TypeError(f"dimension_numbers: {name} needs a MuonDims or None, got {dims!r}")
  ndim = len(shape)
  try:
    red, out = (tuple(int(a) for a in _axes(v)) for v in dims)
  except TypeError:
    raise TypeError(f"dimension_numbers: {name}: axes must be ints or tuples of ints, "
                    f"got {dims!r}") from None
  every = red + out
  if not red or not out or any(not -ndim <= a < ndim for a in every) or len(
      {a % ndim for a in every}) != len(every):
    raise ValueError(f"dimension_numbers: {name} (shape {tuple(shape)}) needs non-empty, "
                     f"disjoint, in-range reduction and output axes, got {dims!r}")
  red, out = tuple(a % ndim for a in red), tuple(a % ndim for a in out)
  batch = tuple(a for a in range(ndim) if a not in red and a not in out)
  return batch, red, out


def fan_in_out(shape: Sequence[int], dims: Any) -> tuple[int, int]:
  """``(rows, columns)`` of the matrix Muon sees for a leaf of ``shape``."""
  _, red, out = normalize(dims, shape, "leaf")
  return math.prod(shape[a] for a in red), math.prod(shape[a] for a in out)


# --- recipes ------------------------------------------------------------------------------


def dense_general_dims(ndim: int, num_input_axes: int = 1, num_batch_axes: int = 0
                       ) -> MuonDims:
  """A Flax ``DenseGeneral`` / NNX ``LinearGeneral`` kernel: inputs first, outputs last.

  The kernel is ``(*batch, *inputs, *outputs)``: e.g. (D, H, Dh) for a q/k/v projection
  (``num_input_axes=1``: one D x (H*Dh) matrix), (H, Dh, D) for the output projection
  (``num_input_axes=2``), and a leading layer axis under ``nn.scan`` (``num_batch_axes=1``).
  """
  first = num_batch_axes + num_input_axes
  if not (num_input_axes >= 1 and num_batch_axes >= 0 and first < ndim):
    raise ValueError(f"num_input_axes: {num_input_axes} input and {num_batch_axes} batch "
                     f"axes leave no output axis in a {ndim}-D kernel")
  return MuonDims(tuple(range(num_batch_axes, first)), tuple(range(first, ndim)))


def conv_dims(ndim: int = 4) -> MuonDims:
  """A convolution kernel (\\*spatial, cin, cout): one (prod spatial * cin) x cout matrix."""
  return MuonDims(tuple(range(ndim - 1)), ndim - 1)


def einsum_dims(equation: str, batch: str = "") -> MuonDims:
  """An NNX ``Einsum`` kernel from its equation, e.g. ``"BTD,NDH->BTNH"`` -> ``MuonDims(1, (0, 2))``.

  Kernel letters contracted away (absent from the output) are the reduction axes; the
  kernel's other letters are outputs, except those in ``batch`` (e.g. ``"C"`` in Gemma's
  key/value kernel ``"BSD,CKDH->CBSKH"``, which stacks two separate matrices).
  """
  lhs, _, result = equation.replace(" ", "").partition("->")
  operands = lhs.split(",")
  if len(operands) != 2 or not result:
    raise ValueError(f"equation: needs the form 'input,kernel->output', got {equation!r}")
  kernel = operands[1]
  red = tuple(i for i, c in enumerate(kernel) if c not in result and c not in batch)
  out = tuple(i for i, c in enumerate(kernel) if c in result and c not in batch)
  if not red or not out:
    raise ValueError(f"equation: kernel {kernel!r} of {equation!r} needs contracted and "
                     f"output letters (batch={batch!r})")
  return MuonDims(red, out)


def logical_axes_dims(axes: Sequence[str], *, model_axis: str = "embed",
                      batch_names: Sequence[str] = ("layers",),
                      fallback_names: Sequence[str] = ("vocab",)) -> MuonDims | None:
  """Dimension numbers from a weight's logical axis names (MaxText / nnx partitioning).

  Axes named in ``batch_names`` are batch axes. A leaf with any axis in
  ``fallback_names`` (the embedding, the output head) or fewer than two other axes (norm
  scales, biases) gets None: the fallback optimizer. Otherwise the model axis decides:
  ``[embed, heads, head_dim]`` reads ``embed`` into ``heads x head_dim`` (it comes first),
  ``[heads, head_dim, embed]`` the reverse; without it the last axis is the output.
  MaxText's ``[embed, layers, heads, head_dim]`` becomes ``MuonDims(0, (2, 3))``.
  """
  axes = tuple(axes)
  matrix = [i for i, a in enumerate(axes) if a not in batch_names]
  if len(matrix) < 2 or any(a in fallback_names for a in axes):
    return None
  if axes[matrix[0]] == model_axis:
    return MuonDims(matrix[0], tuple(matrix[1:]))
  return MuonDims(tuple(matrix[:-1]), matrix[-1])


def dims_from_logical_axes(axes_tree: Any, **kwargs) -> Any:
  """:func:`logical_axes_dims` for each leaf of a pytree of axis-name tuples."""
  return jax.tree.map(lambda a: logical_axes_dims(a, **kwargs), axes_tree,
                      is_leaf=lambda x: isinstance(x, tuple))


def is_hidden_matrix(path, leaf) -> bool:
  """Default Muon routing: ndim >= 2 and the path names no embedding, head, norm or bias.

  Norms, biases and scales are excluded by name too, because stacking over layers makes
  them 2-D.
  """
  return np.ndim(leaf) >= 2 and not _NOT_HIDDEN.search(path_name(path).lower())


def hidden_matrix_dims(path, leaf) -> MuonDims | None:
  """The default: the last two axes of every :func:`is_hidden_matrix` leaf, else None."""
  return LAST_TWO_AXES if is_hidden_matrix(path, leaf) else None


def dims_by_path(rules: Mapping[str, Union[MuonDims, None, Callable[[Any], Any]]],
                 default: DimsFn = hidden_matrix_dims) -> DimsFn:
  """A ``(path, leaf) -> MuonDims | None`` callable from regular expressions on paths.

  The first pattern that ``re.search``-es the leaf's :func:`path_name` (``'a/b/kernel'``)
  gives its dimension numbers: a :class:`MuonDims`, None (the fallback optimizer, e.g.
  for an output layer not called ``head``), or a callable ``leaf -> MuonDims | None``.
  Leaves no pattern matches get ``default(path, leaf)``::

    dims = sfo.dims_by_path({r"linear2": None,                      # output layer
                             r"(query|key|value)/kernel": sfo.MuonDims(0, (1, 2)),
                             r"out/kernel": sfo.MuonDims((0, 1), 2)})
  """
  compiled = [(re.compile(pattern), value) for pattern, value in rules.items()]

  def dims(path, leaf):
    name = path_name(path)
    for pattern, value in compiled:
      if pattern.search(name):
        return value(leaf) if callable(value) else value
    return default(path, leaf)

  return dims


# --- resolution per leaf --------------------------------------------------------------------

_WARNED: set[str] = set()


def _warn_unlabelled(flat) -> None:
  """Warns once per leaf read with the default dims although its batch axes are doubtful."""
  doubtful = [name for name, leaf in ((path_name(p), x) for p, x in flat)
              if np.ndim(leaf) >= 3 and not (np.ndim(leaf) == 3 and _LAYER_STACK.search(name))
              and name not in _WARNED]
  if doubtful:
    _WARNED.update(doubtful)
    warnings.warn(
        f"Muon reads the last two axes of {', '.join(doubtful)} as the matrix and the others "
        "as a batch of separate matrices; if that is not the layout, pass dimension_numbers "
        "(see signflax.optim.MuonDims)", stacklevel=4)


def leaf_dims(dimension_numbers: Any, tree: Any) -> list[tuple[Any, Any]]:
  """``[(dims or None, leaf)]`` in ``jax.tree.leaves(tree)`` order.

  ``dimension_numbers``: None (the last two axes, with a warning for doubtful layouts),
  a callable ``(path, leaf) -> dims | None``, or a pytree with a dims-or-None leaf for
  each leaf of ``tree`` (matched by path, so ``optax.MaskedNode`` placeholders in
  ``tree`` need no entry).
  """
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  if dimension_numbers is None:
    _warn_unlabelled(flat)
    return [(LAST_TWO_AXES, leaf) for _, leaf in flat]
  if callable(dimension_numbers):
    return [(dimension_numbers(path, leaf), leaf) for path, leaf in flat]
  table = {path_name(p): d for p, d in jax.tree_util.tree_flatten_with_path(
      dimension_numbers, is_leaf=is_dims_leaf)[0]}
  missing = [path_name(p) for p, _ in flat if path_name(p) not in table]
  if missing:
    raise ValueError(f"dimension_numbers: no entry for {', '.join(missing[:3])}; give one "
                     "MuonDims or None per parameter, or a callable (path, leaf) -> dims")
  return [(table[path_name(p)], leaf) for p, leaf in flat]
