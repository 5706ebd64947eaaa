"""Where runs write: local directories and Cloud Storage (``gs://``), through ``etils.epath``.

Every workdir path is an ``epath.Path``: a local path reads and writes the local
disk as before; ``gs://bucket/run`` goes through gcsfs (files) and Orbax's
tensorstore (checkpoint arrays). Object storage has no append, no rename and no
``flock``, so the few operations that need them live here with one definition for
each kind of path:

    workdir = storage.path("gs://bucket/run")
    storage.access_error(workdir)            # None, or one line naming the bucket and cause
    storage.write_text(workdir / "config.json", text)   # atomic on both
    storage.append_text(workdir / "history.jsonl", line)
    storage.move(workdir / "tb", workdir / "failed_starts/t/tb")
    storage.remove(workdir / "tb")

A local GCS emulator (``STORAGE_EMULATOR_HOST``) is honoured by every layer:
``configure_clients`` points tensorstore at it too.
"""

from __future__ import annotations

import os
import shutil
from typing import Union

from etils import epath

PathLike = Union[str, os.PathLike]
REMOTE_SCHEMES = ("gs",)
_EXTRA_HINT = "pip install 'signflax[gcs]'"


def is_remote(p: PathLike) -> bool:
  """Whether ``p`` is an object-store URL (``scheme://...``) rather than a local path."""
  return "://" in os.fspath(p)


def path(p: PathLike) -> epath.Path:
  """``p`` as an ``epath.Path``: a local path (relative ones stay relative) or a URL."""
  return epath.Path(os.fspath(p))


def bucket(p: PathLike) -> str:
  """``gs://bucket/a/b`` -> ``bucket``."""
  return os.fspath(p).split("://", 1)[1].split("/", 1)[0]


def configure_clients() -> None:
  """With ``STORAGE_EMULATOR_HOST`` set (a GCS emulator), points tensorstore's GCS driver
  at it as well and gives it a test token; turns off gcsfs's gRPC bucket probe, which an
  emulator does not answer. Call before the first ``gs://`` access. No-op otherwise."""
  host = os.environ.get("STORAGE_EMULATOR_HOST")
  if not host:
    return
  url = host if "://" in host else f"http://{host}"
  os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", url)
  os.environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")
  os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def _credentials_error(name: str) -> str | None:
  """Why no Google credentials are usable (None if some are, or an emulator needs none)."""
  if os.environ.get("STORAGE_EMULATOR_HOST"):
    return None
  try:
    import google.auth  # noqa: PLC0415
    import google.auth.exceptions  # noqa: PLC0415
  except ImportError:
    return f"--workdir: gs://{name}: gs:// workdirs need the gcs extra ({_EXTRA_HINT})"
  try:
    google.auth.default()
  except google.auth.exceptions.DefaultCredentialsError as e:
    cause = str(e).split(". ")[0]
    return (f"--workdir: gs://{name}: no Google Cloud credentials ({cause}); run "
            "`gcloud auth application-default login` or set GOOGLE_APPLICATION_CREDENTIALS")
  return None


def access_error(workdir: PathLike) -> str | None:
  """Why ``workdir`` (an object-store URL) cannot hold a run, as one line naming the bucket
  and the cause: unsupported scheme, missing extra, no credentials, no such bucket, no
  permission, unreachable. Writes and removes one probe object; None if that worked."""
  url = os.fspath(workdir)
  scheme = url.split("://", 1)[0]
  if scheme not in REMOTE_SCHEMES:
    return (f"--workdir: {url}: {scheme}:// is not supported; use a local path or "
            f"{', '.join(s + '://' for s in REMOTE_SCHEMES)}")
  name = bucket(url)
  if not name:
    return f"--workdir: {url}: no bucket name (expected gs://BUCKET/PATH)"
  error = _credentials_error(name)
  if error:
    return error
  configure_clients()
  try:
    import gcsfs  # noqa: PLC0415
  except ImportError:
    return f"--workdir: gs://{name}: gs:// workdirs need the gcs extra ({_EXTRA_HINT})"
  fs = gcsfs.GCSFileSystem(retries=1)
  probe = f"{url.split('://', 1)[1].rstrip('/')}/.signflax-write-probe-{os.getpid()}"
  try:  # a probe object, not a bucket lookup: object rights do not include storage.buckets.get
    fs.pipe(probe, b"")
    fs.rm(probe)
  except PermissionError as e:
    return f"--workdir: gs://{name}: permission denied ({first_line(e)})"
  except FileNotFoundError:
    return f"--workdir: gs://{name}: the bucket does not exist (create it, or fix the name)"
  except Exception as e:  # noqa: BLE001 - any client error becomes the one line
    return f"--workdir: gs://{name}: cannot write ({type(e).__name__}: {first_line(e)})"
  return None


def first_line(e: BaseException) -> str:
  return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def write_text(p: epath.Path, text: str) -> None:
  """Writes ``p`` whole: a kill never leaves half a file (a temporary file renamed into
  place locally; one object upload, atomic by itself, on object storage)."""
  if is_remote(p):
    p.write_text(text, encoding="utf-8")
    return
  tmp = p.parent / f".{p.name}.{os.getpid()}.tmp"  # concurrent writers: one each
  tmp.write_text(text, encoding="utf-8")
  os.replace(os.fspath(tmp), os.fspath(p))


def append_text(p: epath.Path, text: str) -> None:
  """Appends ``text`` to ``p`` (object storage: read, then rewrite the whole object)."""
  if is_remote(p):
    old = p.read_text(encoding="utf-8") if p.exists() else ""
    p.write_text(old + text, encoding="utf-8")
    return
  with open(os.fspath(p), "a", encoding="utf-8") as f:
    f.write(text)


def upload_dir(local: str, dst: epath.Path) -> None:
  """Copies the files of local directory ``local`` into ``dst`` (each uploaded whole)."""
  dst.mkdir(parents=True, exist_ok=True)
  for name in sorted(os.listdir(local)):
    with open(os.path.join(local, name), "rb") as f:
      (dst / name).write_bytes(f.read())


def download(src: epath.Path, dst: str) -> None:
  """Copies file ``src`` (local or remote) to local path ``dst``, streamed in 16 MiB
  pieces into a temporary file renamed into place: ``dst`` is whole or absent."""
  tmp = f"{dst}.{os.getpid()}.tmp"  # concurrent downloaders on one host: one each
  with src.open("rb") as reader, open(tmp, "wb") as writer:
    shutil.copyfileobj(reader, writer, 16 << 20)
  os.replace(tmp, dst)


def size(p: epath.Path) -> int:
  """Bytes in file ``p``."""
  return p.stat().length


def remove(p: epath.Path) -> None:
  """Removes file or directory tree ``p``."""
  if p.is_dir():
    p.rmtree()
  else:
    p.unlink()


def _files(tree: epath.Path) -> list[epath.Path]:
  out = []
  for child in tree.iterdir():
    out.extend(_files(child) if child.is_dir() else [child])
  return out


def move(src: epath.Path, dst: epath.Path) -> None:
  """Moves a file or directory tree (object storage: copy every object, then delete)."""
  if not is_remote(src):
    shutil.move(os.fspath(src), os.fspath(dst))
    return
  if not src.is_dir():
    src.copy(dst)
    src.unlink()
    return
  prefix = len(os.fspath(src).rstrip("/")) + 1
  for f in _files(src):
    target = dst / os.fspath(f)[prefix:]
    target.parent.mkdir(parents=True, exist_ok=True)
    f.copy(target)
  src.rmtree()
