"""Argument checks shared by the constructors: one-line ValueErrors naming the argument.

Values that are traced (e.g. hyperparameters injected by ``optax.inject_hyperparams``
inside ``jax.jit``) or schedules (callables) cannot be checked and are let through.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import jax


def concrete_float(value: Any) -> float | None:
  """``float(value)`` for a concrete scalar; None for callables, tracers and arrays."""
  if callable(value) or isinstance(value, jax.core.Tracer):
    return None
  try:
    return float(value)
  except (TypeError, ValueError):
    return None


def check_range(name: str, value: Any, low: float = -math.inf, high: float = math.inf, *,
                low_open: bool = False, high_open: bool = False) -> None:
  """Raises ValueError unless ``value`` lies in the interval from ``low`` to ``high``."""
  x = concrete_float(value)
  if x is None:
    return
  ok = ((x > low) if low_open else (x >= low)) and ((x < high) if high_open else (x <= high))
  if not ok or math.isnan(x):
    lo = f"({low}" if low_open else f"[{low}"
    hi = f"{high})" if high_open else f"{high}]"
    raise ValueError(f"{name}: must be in {lo}, {hi}, got {value!r}")


def check_non_negative(name: str, value: Any) -> None:
  check_range(name, value, 0.0)


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
  choices = tuple(choices)
  if value not in choices:
    raise ValueError(f"{name}: must be one of {', '.join(map(repr, choices))}, got {value!r}")


def check_int(name: str, value: Any, low: int) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < low:
    raise ValueError(f"{name}: must be an integer >= {low}, got {value!r}")


def is_static_zero(value: Any) -> bool:
  """True for a Python/NumPy scalar equal to zero (not for tracers or schedules)."""
  x = concrete_float(value)
  return x is not None and x == 0.0 and not isinstance(value, jax.Array)
