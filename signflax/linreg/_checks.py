"""Argument checks of the lab's public functions: one-line ``ValueError``s naming the
argument and what it must be. Array arguments are checked element-wise (NaN fails
every check)."""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np


def _values(value: Any) -> np.ndarray:
  try:
    return np.asarray(value, np.float64)
  except (TypeError, ValueError):
    return np.asarray(np.nan)


def positive(name: str, value: Any) -> None:
  """Every element finite and > 0."""
  x = _values(value)
  _raise_if(name, "must be finite and > 0", value, x, ~(np.isfinite(x) & (x > 0)))


def non_negative(name: str, value: Any) -> None:
  """Every element finite and >= 0."""
  x = _values(value)
  _raise_if(name, "must be finite and >= 0", value, x, ~(np.isfinite(x) & (x >= 0)))


def greater_than(name: str, value: Any, low: float) -> None:
  """A finite scalar > ``low``."""
  x = _values(value)
  if x.ndim or not np.isfinite(x) or x <= low:
    raise ValueError(f"{name}: must be a finite number > {low:g}, got {value!r}")


def integer(name: str, value: Any, low: int) -> None:
  """An integer (Python or NumPy, not bool) >= ``low``."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
    raise ValueError(f"{name}: must be an integer >= {low}, got {value!r}")


def choice(name: str, value: Any, choices: Iterable[str]) -> None:
  choices = tuple(choices)
  if value not in choices:
    raise ValueError(f"{name}: must be one of {', '.join(choices)}, got {value!r}")


def _raise_if(name: str, rule: str, value: Any, x: np.ndarray, bad: np.ndarray) -> None:
  if x.size == 0:
    raise ValueError(f"{name}: {rule}, got an empty array")
  if np.any(bad):
    shown = repr(value) if x.size <= 4 else f"{x[bad].flat[0]!r} among {x.size} values"
    raise ValueError(f"{name}: {rule}, got {shown}")
