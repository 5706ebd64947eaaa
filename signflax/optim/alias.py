"""Optimizers as ``optax.chain``s of transforms, and one factory for configs."""

from __future__ import annotations

import inspect
from typing import Any, Callable

import optax

from signflax.optim import _checks
from signflax.optim import muon as muon_lib
from signflax.optim import transforms


def sign_sgd(learning_rate: optax.ScalarOrSchedule, *, weight_decay: float = 0.0,
             weight_decay_mask: Any = None) -> optax.GradientTransformation:
  r"""signSGD with decoupled weight decay.

  .. math::  \theta_{t+1} = \theta_t - \eta_t\,(\operatorname{sign}(g_t) + \lambda \theta_t)

  With ``weight_decay=0`` the updates are bit-identical to ``optax.sign_sgd``.
  ``weight_decay_mask``: pytree of bools or callable params -> bools (``optax.masked``).

  References:
    Bernstein et al., signSGD: Compressed Optimisation for Non-Convex Problems, 2018.
  """
  _checks.check_non_negative("learning_rate", learning_rate)
  _checks.check_non_negative("weight_decay", weight_decay)
  return optax.chain(
      transforms.scale_by_sign(),
      optax.add_decayed_weights(weight_decay, mask=weight_decay_mask),
      optax.scale_by_learning_rate(learning_rate),
  )


def signum(learning_rate: optax.ScalarOrSchedule, beta: float = 0.9, *, nesterov: bool = False,
           weight_decay: float = 0.0, weight_decay_mask: Any = None,
           mu_dtype: Any = None) -> optax.GradientTransformation:
  r"""Signum (sign of momentum) with decoupled weight decay.

  .. math::
    m_t = \beta m_{t-1} + (1 - \beta) g_t, \qquad
    \theta_{t+1} = \theta_t - \eta_t\,(\operatorname{sign}(m_t) + \lambda \theta_t)

  (Nesterov: :math:`\operatorname{sign}(\beta m_t + (1-\beta) g_t)`). With
  ``weight_decay=0`` and no Nesterov the updates are bit-identical to ``optax.signum``.

  References:
    Bernstein et al., signSGD: Compressed Optimisation for Non-Convex Problems, 2018.
  """
  _checks.check_non_negative("learning_rate", learning_rate)
  _checks.check_non_negative("weight_decay", weight_decay)
  return optax.chain(
      transforms.scale_by_signum(beta, nesterov=nesterov, mu_dtype=mu_dtype),
      optax.add_decayed_weights(weight_decay, mask=weight_decay_mask),
      optax.scale_by_learning_rate(learning_rate),
  )


def sgd(learning_rate: optax.ScalarOrSchedule, *, weight_decay: float = 0.0,
        weight_decay_mask: Any = None) -> optax.GradientTransformation:
  r"""Plain SGD, :math:`\theta_{t+1} = \theta_t - \eta_t (g_t + \lambda\theta_t)`."""
  _checks.check_non_negative("learning_rate", learning_rate)
  _checks.check_non_negative("weight_decay", weight_decay)
  return optax.chain(optax.add_decayed_weights(weight_decay, mask=weight_decay_mask),
                     optax.sgd(learning_rate))


def momentum(learning_rate: optax.ScalarOrSchedule, beta: float = 0.9, *,
             nesterov: bool = False, weight_decay: float = 0.0,
             weight_decay_mask: Any = None) -> optax.GradientTransformation:
  r"""SGD with heavy-ball momentum, :math:`m_t = \beta m_{t-1} + g_t`,
  :math:`\theta_{t+1} = \theta_t - \eta_t (m_t + \lambda\theta_t)` (``optax.sgd``'s form)."""
  _checks.check_non_negative("learning_rate", learning_rate)
  _checks.check_range("beta", beta, 0.0, 1.0, high_open=True)
  _checks.check_non_negative("weight_decay", weight_decay)
  return optax.chain(optax.trace(decay=beta, nesterov=nesterov),
                     optax.add_decayed_weights(weight_decay, mask=weight_decay_mask),
                     optax.scale_by_learning_rate(learning_rate))


def adamw(learning_rate: optax.ScalarOrSchedule, *, b1: float = 0.9, b2: float = 0.999,
          eps: float = 1e-8, weight_decay: float = 1e-4, weight_decay_mask: Any = None,
          mu_dtype: Any = None, nesterov: bool = False) -> optax.GradientTransformation:
  """``optax.adamw`` with checked arguments (``weight_decay_mask`` is its ``mask``)."""
  _checks.check_non_negative("learning_rate", learning_rate)
  _checks.check_range("b1", b1, 0.0, 1.0, high_open=True)
  _checks.check_range("b2", b2, 0.0, 1.0, high_open=True)
  _checks.check_non_negative("weight_decay", weight_decay)
  return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                     mask=weight_decay_mask, mu_dtype=mu_dtype, nesterov=nesterov)


def lion(learning_rate: optax.ScalarOrSchedule, *, b1: float = 0.9, b2: float = 0.99,
         weight_decay: float = 1e-3, weight_decay_mask: Any = None,
         mu_dtype: Any = None) -> optax.GradientTransformation:
  """``optax.lion`` with checked arguments (``weight_decay_mask`` is its ``mask``)."""
  _checks.check_non_negative("learning_rate", learning_rate)
  _checks.check_range("b1", b1, 0.0, 1.0, high_open=True)
  _checks.check_range("b2", b2, 0.0, 1.0, high_open=True)
  _checks.check_non_negative("weight_decay", weight_decay)
  return optax.lion(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay,
                    mask=weight_decay_mask, mu_dtype=mu_dtype)


OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "sgd": sgd,
    "momentum": momentum,
    "adamw": adamw,
    "lion": lion,
    "sign_sgd": sign_sgd,
    "signum": signum,
    "muon": muon_lib.muon,
}


def optimizer_keywords(name: str) -> tuple[str, ...]:
  """The keyword arguments ``get_optimizer(name, ...)`` accepts besides learning_rate."""
  params = inspect.signature(OPTIMIZERS[name]).parameters
  return tuple(p for p in params if p != "learning_rate")


def get_optimizer(name: str, learning_rate: optax.ScalarOrSchedule,
                  **kwargs: Any) -> optax.GradientTransformation:
  """Builds the optimizer ``name`` (one of :data:`OPTIMIZERS`) for configs.

  ``get_optimizer("signum", 1e-3, beta=0.95, weight_decay=0.1)``. An unknown name or
  keyword raises a ValueError listing the valid ones.
  """
  if name not in OPTIMIZERS:
    raise ValueError(f"optimizer name: must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
  allowed = optimizer_keywords(name)
  unknown = sorted(set(kwargs) - set(allowed))
  if unknown:
    raise ValueError(f"optimizer {name!r}: unknown keyword(s) {', '.join(unknown)}; "
                     f"allowed: {', '.join(allowed)}")
  return OPTIMIZERS[name](learning_rate, **kwargs)
