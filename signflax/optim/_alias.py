"""Optimizers as ``optax.chain``s of transforms."""

from __future__ import annotations

from typing import Any

import optax

from signflax.optim import _checks
from signflax.optim import _transforms


def _check_common(learning_rate, weight_decay, weight_decay_mask) -> None:
  _checks.check_learning_rate("learning_rate", learning_rate)
  _checks.check_non_negative("weight_decay", weight_decay)
  _checks.check_mask("weight_decay_mask", weight_decay_mask)


def sign_sgd(learning_rate: optax.ScalarOrSchedule, *, weight_decay: float = 0.0,
             weight_decay_mask: Any = None) -> optax.GradientTransformation:
  r"""signSGD with decoupled weight decay.

  .. math::  \theta_{t+1} = \theta_t - \eta_t\,(\operatorname{sign}(g_t) + \lambda \theta_t)

  With ``weight_decay=0`` the updates are bit-identical to ``optax.sign_sgd``.
  ``weight_decay_mask``: pytree of bools or callable params -> bools (``optax.masked``).

  References:
    Bernstein et al., signSGD: Compressed Optimisation for Non-Convex Problems, 2018.
  """
  _check_common(learning_rate, weight_decay, weight_decay_mask)
  return optax.chain(
      optax.scale_by_sign(),
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
  Under ``optax.inject_hyperparams`` give ``mu_dtype`` as a string (``"bfloat16"``).

  References:
    Bernstein et al., signSGD: Compressed Optimisation for Non-Convex Problems, 2018.
  """
  _check_common(learning_rate, weight_decay, weight_decay_mask)
  return optax.chain(
      _transforms.scale_by_signum(beta, nesterov=nesterov, mu_dtype=mu_dtype),
      optax.add_decayed_weights(weight_decay, mask=weight_decay_mask),
      optax.scale_by_learning_rate(learning_rate),
  )


def sgd(learning_rate: optax.ScalarOrSchedule, *, weight_decay: float = 0.0,
        weight_decay_mask: Any = None) -> optax.GradientTransformation:
  r"""Plain SGD, :math:`\theta_{t+1} = \theta_t - \eta_t (g_t + \lambda\theta_t)`."""
  _check_common(learning_rate, weight_decay, weight_decay_mask)
  return optax.chain(optax.add_decayed_weights(weight_decay, mask=weight_decay_mask),
                     optax.sgd(learning_rate))


def momentum(learning_rate: optax.ScalarOrSchedule, beta: float = 0.9, *,
             nesterov: bool = False, weight_decay: float = 0.0,
             weight_decay_mask: Any = None) -> optax.GradientTransformation:
  r"""SGD with heavy-ball momentum, :math:`m_t = \beta m_{t-1} + g_t`,
  :math:`\theta_{t+1} = \theta_t - \eta_t (m_t + \lambda\theta_t)` (``optax.sgd``'s form)."""
  _check_common(learning_rate, weight_decay, weight_decay_mask)
  _checks.check_range("beta", beta, 0.0, 1.0, high_open=True)
  _checks.check_bool("nesterov", nesterov)
  return optax.chain(optax.trace(decay=beta, nesterov=nesterov),
                     optax.add_decayed_weights(weight_decay, mask=weight_decay_mask),
                     optax.scale_by_learning_rate(learning_rate))
