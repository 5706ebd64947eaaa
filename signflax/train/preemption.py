"""When a run must stop early: a signal (SIGTERM, SIGINT), or a non-finite loss.

    stopper = PreemptionHandler(check_every=10)   # at the very start of a run
    ... build, compile, first eval: check stopper.should_stop(step, now=True) between them
    for step in ...:
      ...
      if stopper.should_stop(step):              # same answer on every process
        save a checkpoint at ``step``; exit with stopper.exit_code

SIGTERM (a preemption notice) and SIGINT (Ctrl-C) both ask for a checkpoint at
the current step; the run then exits 0 (SIGTERM) or 130 (SIGINT, the shell's
code for Ctrl-C), without a traceback. A second SIGINT exits at once (130): the
last committed checkpoint stays intact, since Orbax commits a save by renaming a
complete temporary directory, and the next start removes the unfinished one.

``guard_nonfinite(train_step)`` makes a step that produced a NaN/Inf loss or
parameters keep the previous parameters and optimizer state (and report
``nonfinite = 1``), for ``config.checkpoint.nan_policy = "skip"``; with
``"stop"`` the trainer ends the run instead (``NonFiniteError``), keeping the
last good checkpoint.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from signflax import outcomes

NAN_POLICIES = ("stop", "skip")
EXIT_CODES = {signal.SIGTERM: 0, signal.SIGINT: 130}


class NonFiniteError(outcomes.Diverged):
  """The loss or parameters became NaN/Inf (``nan_policy="stop"``)."""


class PreemptionHandler:
  """Turns SIGTERM/SIGINT into a stop step all processes agree on.

  The handler only sets a flag (and, for a second SIGINT, exits at once).
  ``should_stop(step)`` is True once the flag is set here, in a single-process
  run checked at every step. With several processes the flags are all-gathered
  every ``check_every`` steps (one tiny host collective; ``now=True`` forces
  one), and JAX's own preemption sync point (the coordination service's notice,
  e.g. a TPU maintenance event) is asked every step, so every process stops at
  the same step. ``restore()`` puts the previous handlers back.
  """

  def __init__(self, *, check_every: int = 10,
               signals=(signal.SIGTERM, signal.SIGINT)):
    self.check_every = max(1, int(check_every))
    self.received = None   # the first signal received, if any
    self._signals, self._previous = tuple(signals), {}
    self.install()

  def install(self) -> None:
    """(Re)installs the handlers, e.g. after ``jax.distributed.initialize`` put its own
    SIGTERM notifier in place; ``restore()`` still returns to the very first ones."""
    for sig in self._signals:
      previous = signal.signal(sig, self._on_signal)
      self._previous.setdefault(sig, previous)

  @property
  def requested(self) -> bool:
    return self.received is not None

  @property
  def exit_code(self) -> int:
    """0 after SIGTERM (or none), 130 after SIGINT."""
    return EXIT_CODES.get(self.received, 0)

  @property
  def outcome(self) -> outcomes.Finished:
    """INTERRUPTED after SIGINT, else PREEMPTED (the state was saved either way)."""
    return (outcomes.Finished.INTERRUPTED if self.received == signal.SIGINT
            else outcomes.Finished.PREEMPTED)

  def _on_signal(self, signum, frame):  # noqa: ARG002 - signal handler signature
    name = signal.Signals(signum).name
    if self.received is not None and signum == signal.SIGINT:
      print(f"signflax: second {name}; exiting now (the last committed checkpoint is kept)",
            file=sys.stderr, flush=True)
      os._exit(EXIT_CODES[signal.SIGINT])  # noqa: SLF001 - leave at once, no cleanup
    if self.received is None:
      self.received = signum
      hint = " (Ctrl-C again to exit at once)" if signum == signal.SIGINT else ""
      print(f"signflax: {name} received; saving a checkpoint and stopping{hint}",
            file=sys.stderr, flush=True)

  def should_stop(self, step: int, *, now: bool = False) -> bool:
    """Whether to stop at ``step``; ``now`` makes processes agree even off the cadence."""
    if jax.process_count() == 1:  # asked here: the handler is up before jax.distributed starts
      return self.requested
    if _reached_sync_point(step):
      return True
    if step % self.check_every and not now:
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
