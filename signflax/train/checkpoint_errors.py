"""What a failed checkpoint read or write means: incompatible, corrupt, transient, or a
failed save; decided from the root cause and its error code.

* **transient** (``is_transient``): an OS error code that passes (EIO, EAGAIN,
  ETIMEDOUT, EBUSY, EINTR, connection resets, ...), found on an ``OSError`` or in
  a TensorStore message (``[os_error_code='5']``); a status ``UNAVAILABLE``,
  ``DEADLINE_EXCEEDED``, ``RESOURCE_EXHAUSTED`` or ``ABORTED``; HTTP 429 or 5xx
  from object storage; ``MemoryError``, timeouts. Any other OS error but a
  missing file (a permission, a stale handle) is transient too: a checkpoint is
  set aside only on positive evidence of damage.
* **corrupt**: everything else: a missing or truncated file, Orbax's own checks,
  a checksum mismatch.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sys
import traceback

from signflax import outcomes


class IncompatibleCheckpointError(outcomes.IncompatibleCheckpoint):
  """The checkpoint holds a different model or optimizer (names, shapes or dtypes)."""


class CorruptCheckpointError(RuntimeError):
  """A checkpoint's files are missing, truncated, or fail their checksums."""


class TransientCheckpointError(outcomes.TransientIO):
  """Reading a checkpoint kept failing with an error that may pass (I/O, memory)."""


class CheckpointSaveError(outcomes.SaveFailed):
  """A save failed (disk full, file too large, ...); the message is one line."""


class NoReadableCheckpoint(outcomes.BadInput):
  """Every checkpoint in the directory is corrupt (nothing was moved)."""


TRANSIENT_ERRNOS = frozenset({
    errno.EIO, errno.EAGAIN, errno.ETIMEDOUT, errno.EBUSY, errno.EINTR, errno.ENOMEM,
    errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED, errno.ENETUNREACH,
    errno.ENETDOWN, errno.EHOSTUNREACH, errno.ESTALE, errno.ENOLCK})
MISSING_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EISDIR})
TRANSIENT_STATUS = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED")
_DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
_OS_ERROR_CODE = re.compile(r"os_error_code\s*=\s*'?(\d+)")
_HTTP_STATUS = re.compile(r"HTTP (?:response code|status(?: code)?)\s*[:=]?\s*(\d{3})",
                          re.IGNORECASE)


def chain(e: BaseException):
  """``e`` and its causes/contexts, outermost first."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    yield e
    e = e.__cause__ or e.__context__


def first_line(e: BaseException, limit: int = 200) -> str:
  """The first line of ``e``'s root cause (TensorStore's, naming the array and file)."""
  e = list(chain(e))[-1]
  return f"{type(e).__name__}: " + (str(e).strip().splitlines() or [""])[0][:limit]


def error_code(e: BaseException) -> int | None:
  """The OS error code of ``e``: ``OSError.errno`` or TensorStore's ``os_error_code``."""
  if isinstance(e, OSError) and e.errno is not None:
    return e.errno
  match = _OS_ERROR_CODE.search(str(e))
  return int(match.group(1)) if match else None


def http_status(e: BaseException) -> int | None:
  """The HTTP status of an object-storage error, if it names one."""
  code = getattr(e, "code", None)
  if isinstance(code, int) and 100 <= code < 600:
    return code
  match = _HTTP_STATUS.search(str(e))
  return int(match.group(1)) if match else None


def is_transient(e: BaseException) -> bool:
  """Whether an error (anywhere in its chain) may pass on retry; see the module docstring."""
  for err in chain(e):
    if isinstance(err, (MemoryError, TimeoutError, ConnectionError)):
      return True
    code = error_code(err)
    if code is not None:
      if code in TRANSIENT_ERRNOS:
        return True
      if code in MISSING_ERRNOS:
        return False
      if isinstance(err, OSError):
        return True  # no positive evidence of damage: never set aside for it
    if str(err).lstrip().startswith(TRANSIENT_STATUS):
      return True
    status = http_status(err)
    if status is not None and (status == 429 or status >= 500):
      return True
  return False


def transient_reason(e: BaseException) -> str:
  """Why a transient error is one, briefly: ``Input/output error (errno 5)``, ``HTTP 503``,
  or the root cause's first line."""
  for err in chain(e):
    code = error_code(err)
    if code is not None:
      return f"{os.strerror(code)} (errno {code})"
    status = http_status(err)
    if status is not None:
      return f"HTTP {status}"
  return first_line(e)


def disk_full_reason(e: BaseException) -> str | None:
  """'No space left on device' / 'File too large' if ``e`` (or its cause) says so."""
  for err in chain(e):
    if isinstance(err, OSError) and err.errno in _DISK_FULL:
      return err.strerror or str(err)
    for reason in ("No space left on device", "File too large", "Disk quota exceeded"):
      if reason in str(err):
        return reason
  return None


# ---------------------------------------------------------------------------- process hooks


class _DropOrbaxErrors(logging.Filter):
  """Drops log records from Orbax's own files (its background threads' tracebacks)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "orbax" not in record.pathname


def _from_orbax(obj) -> bool:
  code = getattr(obj, "cr_code", None) or getattr(obj, "__code__", None)
  return "orbax" in getattr(code, "co_filename", "")


def _closed_loop_callback(exc_type, exc, tb) -> bool:
  """A TensorStore read finishing after Orbax closed the event loop of a failed restore."""
  return (exc_type is RuntimeError and str(exc) == "Event loop is closed"
          and any(frame.name == "call_soon_threadsafe"
                  for frame in traceback.extract_tb(tb)))


def quiet_background_noise() -> None:
  """Process-wide, installed once at start-up (``signflax.cli.main``): silences the chatter of Orbax's background work when a save or restore fails
  ("Task exception was never retrieved", "Exception ignored in: <coroutine ...>",
  "Event loop is closed" from reads still in flight, tracebacks on the absl logger):
  the error itself is raised to the caller, reported in one line, and written to the
  error log."""
  logging.getLogger("asyncio").setLevel(logging.CRITICAL)
  absl = logging.getLogger("absl")
  if not any(isinstance(f, _DropOrbaxErrors) for f in absl.filters):
    absl.addFilter(_DropOrbaxErrors())
  if getattr(sys.unraisablehook, "_signflax", False):
    return
  previous_unraisable, previous_except = sys.unraisablehook, sys.excepthook

  def unraisable_hook(unraisable):
    if not (_from_orbax(unraisable.object) or _closed_loop_callback(
        unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback)):
      previous_unraisable(unraisable)

  def except_hook(exc_type, exc, tb):
    if not _closed_loop_callback(exc_type, exc, tb):
      previous_except(exc_type, exc, tb)

  unraisable_hook._signflax = True  # noqa: SLF001 - installed once
  sys.unraisablehook, sys.excepthook = unraisable_hook, except_hook
