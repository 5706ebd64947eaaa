"""Typed outcomes: what a signflax operation can end in, besides success.

The library raises these (or returns them, for outcomes that are not failures);
only ``signflax.cli.main`` turns them into one line on stderr and an exit code.
Every message is one line that names what is wrong and what is allowed, with no
command prefix: the CLI adds ``signflax <command>: error:``.

=========================  =========  ================================================
outcome                    exit code  meaning
=========================  =========  ================================================
``BadInput``               2          a config field, argument, data path or file is bad
``UsageError``             2          a command-line argument is bad (a ``BadInput``)
``IncompatibleCheckpoint`` 2          a checkpoint of another model or layout
``DoesNotFit``             3          a program needs more accelerator memory than there is
``Diverged``               1          the loss became NaN or Inf (the run is finished)
``SaveFailed``             1          a checkpoint could not be written (retry the run)
``TransientIO``            1          storage failed in a way a retry may fix
``Preempted``              0          a preemption notice was honoured: state saved
=========================  =========  ================================================

A run that ends without failing returns a ``Finished``: ``DONE`` (exit 0),
``PREEMPTED`` (SIGTERM honoured, state saved: exit 0) or ``INTERRUPTED``
(SIGINT honoured, state saved: exit 130, the shell's code for Ctrl-C).

``BadInput`` subclasses ``ValueError`` so code that validates with plain
``ValueError`` keeps working.
"""

from __future__ import annotations

import enum


def one_line(error: BaseException | str) -> str:
  """The error's message with all whitespace runs collapsed to single spaces."""
  return " ".join(str(error).split())


class SignflaxError(Exception):
  """Base of every typed outcome; ``exit_code`` is what the CLI exits with."""
  exit_code = 1


class BadInput(SignflaxError, ValueError):
  """Bad config, argument, data path or input file; nothing was started."""
  exit_code = 2


class UsageError(BadInput):
  """Bad command-line input."""


class IncompatibleCheckpoint(BadInput):
  """A checkpoint that cannot be restored into this run (other shapes, other layout)."""


class DoesNotFit(SignflaxError):
  """A compiled program needs more memory per device than the device has."""
  exit_code = 3


class Diverged(SignflaxError):
  """The loss became non-finite; the last good checkpoint is kept. A finished outcome."""


class SaveFailed(SignflaxError):
  """Writing a checkpoint failed; the run can be retried from the last good one."""


class TransientIO(SignflaxError):
  """A storage error that a retry may fix (EIO, EAGAIN, timeouts, HTTP 429/5xx)."""


class Preempted(SignflaxError):
  """A preemption notice was honoured: state saved at the current step."""
  exit_code = 0


class Finished(enum.Enum):
  """How a run that did not fail ended; ``exit_code`` is what the CLI exits with."""
  DONE = "done"
  PREEMPTED = "preempted"      # SIGTERM (a preemption notice): checkpoint saved
  INTERRUPTED = "interrupted"  # SIGINT (Ctrl-C): checkpoint saved

  @property
  def exit_code(self) -> int:
    return 130 if self is Finished.INTERRUPTED else 0


def exit_code(outcome: "BaseException | Finished | int | None") -> int:
  """0 for success (None), an int as given, a ``Finished``'s or a ``SignflaxError``'s
  code, else 1."""
  if outcome is None:
    return 0
  if isinstance(outcome, int) and not isinstance(outcome, bool):
    return outcome
  return getattr(outcome, "exit_code", 1)
