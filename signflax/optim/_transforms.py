"""Sign-based gradient transformations.

``scale_by_sign`` is ``optax.scale_by_sign`` itself (re-exported by ``signflax.optim``).

Each is an ``optax.GradientTransformation`` with pure ``init``/``update`` functions and a
``NamedTuple`` state, so they compose with ``optax.chain``, ``optax.MultiSteps``,
``optax.masked``/``optax.partition`` and ``optax.inject_hyperparams``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from signflax.optim import _checks


def momentum_direction(updates: optax.Updates, momentum: optax.Updates, beta: float,
                       nesterov: bool) -> tuple[optax.Updates, optax.Updates]:
  r"""One EMA step and the direction to use: ``(m_t, m_t or the Nesterov look-ahead)``.

  .. math::  m_t = \beta m_{t-1} + (1 - \beta) g_t, \qquad
             d_t = \beta m_t + (1 - \beta) g_t \ \text{(Nesterov)}

  Written in ``optax.tree.update_moment``'s operand order, so results are bit-identical.
  """
  ema = lambda g, m: (1 - beta) * g + beta * m
  momentum = jax.tree.map(ema, updates, momentum)
  return momentum, jax.tree.map(ema, updates, momentum) if nesterov else momentum


class ScaleBySignumState(NamedTuple):
  """State of :func:`scale_by_signum`: the momentum (an EMA of gradients)."""
  momentum: optax.Updates


def scale_by_signum(beta: float = 0.9, *, nesterov: bool = False,
                    mu_dtype: Any = None) -> optax.GradientTransformation:
  r"""Sign of an exponential moving average of the gradients (Signum).

  .. math::
    m_t &= \beta m_{t-1} + (1 - \beta) g_t \\
    u_t &= \operatorname{sign}(m_t) \quad\text{or, with Nesterov,}\quad
    u_t = \operatorname{sign}(\beta m_t + (1 - \beta) g_t)

  No bias correction: it would not change the sign. Without Nesterov this is
  bit-identical to the first two stages of ``optax.signum``.

  Args:
    beta: momentum decay in [0, 1); 0 gives signSGD.
    nesterov: take the sign of the Nesterov look-ahead instead of ``m_t``.
    mu_dtype: dtype of the momentum buffer (None: the gradient's dtype). Under
      ``optax.inject_hyperparams`` give it as a string (``"bfloat16"``): a dtype class
      such as ``jnp.bfloat16`` is callable, so it would be taken for a schedule.

  References:
    Bernstein et al., signSGD: Compressed Optimisation for Non-Convex Problems, 2018.
  """
  _checks.check_range("beta", beta, 0.0, 1.0, high_open=True)
  _checks.check_bool("nesterov", nesterov)
  _checks.check_dtype("mu_dtype", mu_dtype)
  mu_dtype = None if mu_dtype is None else jnp.dtype(mu_dtype)

  def init_fn(params):
    return ScaleBySignumState(momentum=optax.tree.zeros_like(params, dtype=mu_dtype))

  def update_fn(updates, state, params=None):
    del params
    momentum, direction = momentum_direction(updates, state.momentum, beta, nesterov)
    signs = jax.tree.map(lambda d, g: jnp.sign(d).astype(g.dtype), direction, updates)
    return signs, ScaleBySignumState(momentum=optax.tree.cast(momentum, mu_dtype))

  return optax.GradientTransformation(init_fn, update_fn)
