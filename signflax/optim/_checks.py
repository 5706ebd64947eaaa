"""Argument checks shared by the constructors: one-line errors naming the argument.

A wrong type raises TypeError, a wrong value ValueError. Values that are traced (e.g.
hyperparameters injected by ``optax.inject_hyperparams`` inside ``jax.jit``) and
schedules (callables, where a schedule is allowed) cannot be checked and are let through.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np

_INJECT_HINT = "optax.inject_hyperparams turns numbers and callables into traced values"


def _is_traced(value: Any) -> bool:
  return isinstance(value, jax.core.Tracer)


def _scalar(name: str, value: Any) -> float | None:
  """``float(value)`` for a concrete real scalar, None for a tracer; TypeError otherwise."""
  if _is_traced(value):
    return None
  if isinstance(value, (bool, np.bool_)) or not isinstance(
      value, (int, float, np.number, np.ndarray, jax.Array)) or np.ndim(value) != 0 or (
          not np.issubdtype(np.asarray(value).dtype, np.number)) or np.iscomplexobj(value):
    raise TypeError(f"{name}: must be a real number, got {value!r}")
  return float(value)


def check_range(name: str, value: Any, low: float = -math.inf, high: float = math.inf, *,
                low_open: bool = False, high_open: bool = False,
                schedule: bool = False) -> None:
  """Raises unless ``value`` is a finite real number in the interval from ``low`` to ``high``.

  ``schedule=True`` lets callables through (an Optax schedule in place of a number).
  """
  if schedule and callable(value):
    return
  x = _scalar(name, value)
  if x is None:
    return
  ok = ((x > low) if low_open else (x >= low)) and ((x < high) if high_open else (x <= high))
  if not (ok and math.isfinite(x)):
    lo = f"({low}" if low_open else f"[{low}"
    hi = f"{high})" if high_open else f"{high}]"
    raise ValueError(f"{name}: must be a finite number in {lo}, {hi}, got {value!r}")


def check_non_negative(name: str, value: Any, *, schedule: bool = False) -> None:
  check_range(name, value, 0.0, schedule=schedule)


def check_learning_rate(name: str, value: Any) -> None:
  """A finite number >= 0 or a schedule (step -> rate)."""
  check_non_negative(name, value, schedule=True)


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
  choices = tuple(choices)
  if not isinstance(value, str) or value not in choices:
    raise ValueError(f"{name}: must be one of {', '.join(map(repr, choices))}, got {value!r}")


def check_int(name: str, value: Any, low: int) -> None:
  if _is_traced(value) or isinstance(value, jax.Array):
    raise TypeError(f"{name}: must be a Python int, got a traced value ({_INJECT_HINT}; "
                    f"pass static_args=({name!r},) to it)")
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
    raise ValueError(f"{name}: must be an integer >= {low}, got {value!r}")


def check_bool(name: str, value: Any) -> None:
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{name}: must be True or False, got {value!r}")


def check_dtype(name: str, value: Any, *, allow_none: bool = True,
                extra: tuple[str, ...] = ()) -> None:
  """A floating dtype (``jnp.bfloat16``, ``"float32"``, ...), None if allowed, or ``extra``."""
  if (value is None and allow_none) or (isinstance(value, str) and value in extra):
    return
  if _is_traced(value) or isinstance(value, jax.Array):
    raise TypeError(f"{name}: got an array, not a dtype ({_INJECT_HINT}); give it as a "
                    f"string such as 'bfloat16', or pass static_args=({name!r},)")
  try:
    dtype = jnp.dtype(value)
  except TypeError:
    dtype = None
  if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
    allowed = "a floating dtype" + "".join(f" or {e!r}" for e in extra)
    raise TypeError(f"{name}: must be {allowed}, got {value!r}")


def check_mask(name: str, value: Any) -> None:
  """None, a callable ``params -> bools``, or a pytree of bools (``optax.masked``'s mask)."""
  if value is None or callable(value):
    return
  leaves = jax.tree.leaves(value)
  bad = [x for x in leaves if not (isinstance(x, (bool, np.bool_)) or _is_traced(x) or (
      isinstance(x, (np.ndarray, jax.Array)) and x.dtype == bool))]
  if isinstance(value, str) or bad:
    raise TypeError(f"{name}: must be None, a callable params -> bools or a pytree of "
                    f"bools, got {bad[0] if bad else value!r}")
