"""When a run must stop early: a preemption notice (SIGTERM), or a non-finite loss.

    stopper = PreemptionHandler(check_every=10)   # installs the SIGTERM handler
    for step in ...:
      ...
      if stopper.should_stop(step):              # same answer on every process
        save a checkpoint at ``step`` and exit 0

``guard_nonfinite(train_step)`` makes a step that produced a NaN/Inf loss or
parameters keep the previous parameters and optimizer state (and report
``nonfinite = 1``), for ``config.checkpoint.nan_policy = "skip"``; with
``"stop"`` the trainer ends the run instead (``NonFiniteError``), keeping the
last good checkpoint.
"""

from __future__ import annotations

import signal
import sys
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

NAN_POLICIES = ("stop", "skip")


class NonFiniteError(RuntimeError):
  """The loss or parameters became NaN/Inf (``nan_policy="stop"``)."""


class PreemptionHandler:
  """Turns SIGTERM into a stop step all processes agree on.

  The handler only sets a flag. ``should_stop(step)`` is True once the flag is
  set here, in a single-process run checked at every step. With several
  processes the flags are all-gathered every ``check_every`` steps (one tiny
  host collective), and JAX's own preemption sync point (the coordination
  service's notice, e.g. a TPU maintenance event) is asked every step, so every
  process stops at the same step. ``restore()`` puts the previous handler back.
  """

  def __init__(self, *, check_every: int = 10, signals=(signal.SIGTERM,)):
    self.check_every = max(1, int(check_every))
    self.multi_process = jax.process_count() > 1
    self.requested = False
    self._previous = {}
    for sig in signals:
      self._previous[sig] = signal.signal(sig, self._on_signal)

  def _on_signal(self, signum, frame):  # noqa: ARG002 - signal handler signature
    self.requested = True
    print(f"signflax: {signal.Signals(signum).name} received; saving a checkpoint and "
          "stopping", file=sys.stderr, flush=True)

  def should_stop(self, step: int) -> bool:
    if not self.multi_process:
      return self.requested
    if _reached_sync_point(step):
      return True
    if step % self.check_every:
      return False
    flags = multihost_utils.process_allgather(np.int32(self.requested))
    return bool(np.any(flags))

  def restore(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}


def _reached_sync_point(step: int) -> bool:
  """JAX's preemption sync point; False where the preemption service is not running."""
  try:
    return multihost_utils.reached_preemption_sync_point(step)
  except (RuntimeError, AttributeError):
    return False


def guard_nonfinite(train_step: Callable) -> Callable:
  """Wraps a train step so a non-finite step leaves params and optimizer state unchanged.

  The step counter still advances (the data iterator has moved on); the metrics
  gain ``nonfinite`` (1.0 for a skipped step). Finite means the loss and the new
  parameters' L2 norm (``param_l2``) are finite.
  """
  def step(state, batch):
    new_state, metrics = train_step(state, batch)
    ok = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["param_l2"])
    keep = lambda new, old: jnp.where(ok, new, old)
    new_state = new_state._replace(params=jax.tree.map(keep, new_state.params, state.params),
                                   opt_state=jax.tree.map(keep, new_state.opt_state,
                                                          state.opt_state))
    return new_state, {**metrics, "nonfinite": 1.0 - ok.astype(jnp.float32)}
  return step


def check_finite(step: int, metrics: dict, last_checkpoint: int | None) -> None:
  """Raises NonFiniteError naming the step when the host metrics' loss or params are not finite."""
  bad = [k for k in ("loss", "step_loss", "param_l2") if k in metrics
         and metrics[k] is not None and not np.isfinite(metrics[k])]
  if bad:
    kept = (f"the last good checkpoint (step {last_checkpoint}) is kept" if last_checkpoint
            is not None else "no checkpoint was saved")
    raise NonFiniteError(
        f"non-finite {', '.join(bad)} at step {step}; stopping ({kept}). Lower "
        "config.optimizer.learning_rate, or set config.checkpoint.nan_policy='skip' to skip "
        "such steps")
