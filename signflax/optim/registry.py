"""For configs: every optimizer by name, with checked arguments.

``get_optimizer("signum", 1e-3, beta=0.95)`` builds one of :data:`OPTIMIZERS` from
plain config values; ``optimizer_keywords(name)`` lists what a config may set. AdamW and
Lion are ``optax.adamw`` / ``optax.lion`` with their arguments checked first (optax
checks none), so a config typo fails in one line instead of training on nonsense.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import optax

from signflax.optim import _alias
from signflax.optim import _checks
from signflax.optim import _muon


def _check_adam_family(learning_rate, b1, b2, weight_decay, weight_decay_mask, mu_dtype
                       ) -> None:
  _alias._check_common(learning_rate, weight_decay, weight_decay_mask)
  _checks.check_range("b1", b1, 0.0, 1.0, high_open=True)
  _checks.check_range("b2", b2, 0.0, 1.0, high_open=True)
  _checks.check_dtype("mu_dtype", mu_dtype)


def adamw(learning_rate: optax.ScalarOrSchedule, *, b1: float = 0.9, b2: float = 0.999,
          eps: float = 1e-8, weight_decay: float = 1e-4, weight_decay_mask: Any = None,
          mu_dtype: Any = None, nesterov: bool = False) -> optax.GradientTransformation:
  """``optax.adamw`` with checked arguments (``weight_decay_mask`` is its ``mask``)."""
  _check_adam_family(learning_rate, b1, b2, weight_decay, weight_decay_mask, mu_dtype)
  _checks.check_non_negative("eps", eps)
  _checks.check_bool("nesterov", nesterov)
  return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                     mask=weight_decay_mask, mu_dtype=mu_dtype, nesterov=nesterov)


def lion(learning_rate: optax.ScalarOrSchedule, *, b1: float = 0.9, b2: float = 0.99,
         weight_decay: float = 1e-3, weight_decay_mask: Any = None,
         mu_dtype: Any = None) -> optax.GradientTransformation:
  """``optax.lion`` with checked arguments (``weight_decay_mask`` is its ``mask``)."""
  _check_adam_family(learning_rate, b1, b2, weight_decay, weight_decay_mask, mu_dtype)
  return optax.lion(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay,
                    mask=weight_decay_mask, mu_dtype=mu_dtype)


OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "sgd": _alias.sgd,
    "momentum": _alias.momentum,
    "adamw": adamw,
    "lion": lion,
    "sign_sgd": _alias.sign_sgd,
    "signum": _alias.signum,
    "muon": _muon.muon,
}
"""Every optimizer a config can name: ``name -> constructor(learning_rate, **keywords)``."""


def optimizer_keywords(name: str) -> tuple[str, ...]:
  """The keyword arguments ``get_optimizer(name, ...)`` accepts besides learning_rate."""
  params = inspect.signature(OPTIMIZERS[name]).parameters
  return tuple(p for p in params if p != "learning_rate")


def get_optimizer(name: str, learning_rate: optax.ScalarOrSchedule,
                  **kwargs: Any) -> optax.GradientTransformation:
  """Builds the optimizer ``name`` (one of :data:`OPTIMIZERS`) for configs.

  ``get_optimizer("signum", 1e-3, beta=0.95, weight_decay=0.1)``. An unknown name or
  keyword raises a ValueError listing the valid ones.

  ``optax.inject_hyperparams(get_optimizer)(name="signum", learning_rate=sched,
  beta=0.95)`` works and injects ``learning_rate`` only: the wrapper cannot see inside
  ``**kwargs``, so it hands them over unchanged as one dict named ``kwargs``. To inject
  the others too, wrap the optimizer itself: ``optax.inject_hyperparams(OPTIMIZERS[name])``.
  """
  if name not in OPTIMIZERS:
    raise ValueError(f"optimizer name: must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
  if set(kwargs) == {"kwargs"} and isinstance(kwargs["kwargs"], dict):
    kwargs = kwargs["kwargs"]  # as optax.inject_hyperparams passes **kwargs
  allowed = optimizer_keywords(name)
  unknown = sorted(set(kwargs) - set(allowed))
  if unknown:
    raise ValueError(f"optimizer {name!r}: unknown keyword(s) {', '.join(unknown)}; "
                     f"allowed: {', '.join(allowed)}")
  return OPTIMIZERS[name](learning_rate, **kwargs)
