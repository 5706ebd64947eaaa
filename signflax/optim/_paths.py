"""Pytree key paths as strings: the one spelling used across signflax."""

from __future__ import annotations

from typing import Sequence

import jax


def path_name(path: Sequence, separator: str = "/") -> str:
  """A pytree key path as ``'layers/attn/q/kernel'`` (dict keys, attributes, indices).

  Whatever the containers (dict, list, tuple, NamedTuple, dataclass), each key is written
  bare: ``path_name(path, ".")`` gives ``'opt_state.0.mu.embed'``.
  """
  return jax.tree_util.keystr(tuple(path), simple=True, separator=separator)
