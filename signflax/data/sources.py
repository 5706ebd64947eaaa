"""Corpora, train/eval splits, token streams and random-access windows.

A corpus is a list of files. A split (``train`` / ``eval``) is a list of
:class:`Doc` byte ranges of those files, chosen without reading them (file
sizes only). A split's *token stream* is its documents tokenized and joined,
each followed by the tokenizer's ``eos_id``::

  doc_0 EOS doc_1 EOS doc_2 EOS ...

and window ``i`` of a stream is ``stream[i*T : i*T + T + 1]`` (``T = seq_len``):
consecutive windows overlap by one token, so every token but the first is a
target exactly once per epoch.

Splits (``split_by``):
  * ``file``: a file is in eval iff a stable hash of its path (relative to the
    corpus root) falls below ``eval_fraction``; eval and train share no file.
  * ``tail``: the last ``eval_fraction`` of every file's bytes is eval, the
    rest train (works for a single big file).
  * ``auto``: ``file`` for the stdlib corpus, ``tail`` for text files.

``max_bytes > 0`` caps the raw bytes read: eval gets ``round(max_bytes *
eval_fraction)`` (at least 1), train the rest, each filled in a fixed order
(``file``: by path hash, so a cap is a deterministic random sample of files;
``tail``: by path), the last document cut short.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import hashlib
import json
import os
import sysconfig
from typing import Iterator, Sequence

import numpy as np

from signflax import storage
from signflax.data import tokenizer as tokenizer_lib

SPLITS = ("train", "eval")
SPLIT_BY = ("auto", "file", "tail")
# Directories of the standard library that are not library source.
_STDLIB_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__", "test", "tests",
                               "idle_test"})
MANIFEST = "manifest.json"


@dataclasses.dataclass(frozen=True)
class Doc:
  """Bytes ``[start, stop)`` of the file ``path`` (``mtime_ns`` keys caches)."""
  path: str
  start: int
  stop: int
  mtime_ns: int


@dataclasses.dataclass(frozen=True)
class Corpus:
  """Files of a corpus: absolute paths, their names relative to ``root``, sizes."""
  root: str
  paths: tuple[str, ...]
  names: tuple[str, ...]
  sizes: tuple[int, ...]
  mtimes: tuple[int, ...]

  @property
  def num_bytes(self) -> int:
    return sum(self.sizes)


# ---------------------------------------------------------------------------
# Listing files.


def stdlib_root() -> str:
  return sysconfig.get_paths()["stdlib"]


def stdlib_files() -> list[str]:
  """Sorted ``.py`` files of the running interpreter's standard library.

  Skips site-packages, ``__pycache__`` and test directories (``test``,
  ``tests``, ``idle_test``): what remains is the library itself.
  """
  root = stdlib_root()
  files = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames
                         if d not in _STDLIB_SKIP_DIRS and not d.startswith("."))
    files.extend(os.path.join(dirpath, f) for f in filenames if f.endswith(".py"))
  return sorted(files)


def expand_paths(spec: str, field: str = "config.data.paths") -> list[str]:
  """Files named by ``spec``: comma-separated files, globs (``**`` allowed) or dirs.

  A directory stands for every regular, non-hidden file under it. Raises a
  one-line ValueError naming ``field`` if ``spec`` is empty or any item
  matches no file.
  """
  items = [s.strip() for s in str(spec or "").split(",") if s.strip()]
  if not items:
    raise ValueError(f"{field}: required for this source; give comma-separated files, "
                     "globs or directories")
  files = []
  for item in items:
    path = os.path.expanduser(item)
    if os.path.isdir(path):
      matches = _walk_files(path)
    else:
      matches = [m for m in glob.glob(path, recursive=True) if os.path.isfile(m)]
    if not matches:
      what = "directory has no files" if os.path.isdir(path) else "no files match"
      raise ValueError(f"{field}: {what} {item!r}")
    files.extend(matches)
  return sorted({os.path.abspath(f) for f in files})


def _walk_files(directory: str) -> list[str]:
  """Regular files under ``directory``, skipping hidden files and directories."""
  files = []
  for dirpath, dirnames, filenames in os.walk(directory):
    dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    files.extend(os.path.join(dirpath, f) for f in filenames if not f.startswith("."))
  return files


def list_corpus(source: str, paths: str = "", field: str = "config.data.paths") -> Corpus:
  """The files of a ``stdlib`` or ``text`` corpus (stat only, nothing read)."""
  if source == "stdlib":
    root, files = stdlib_root(), stdlib_files()
  elif source == "text":
    files = expand_paths(paths, field)
    root = os.path.commonpath(files) if len(files) > 1 else os.path.dirname(files[0])
  else:
    raise ValueError(f"config.data.source: {source!r} has no file list")
  stats = [os.stat(f) for f in files]
  return Corpus(root=root, paths=tuple(files),
                names=tuple(os.path.relpath(f, root).replace(os.sep, "/") for f in files),
                sizes=tuple(s.st_size for s in stats), mtimes=tuple(s.st_mtime_ns for s in stats))


# ---------------------------------------------------------------------------
# Splitting.


def resolve_split_by(source: str, split_by: str) -> str:
  if split_by == "auto":
    return "file" if source == "stdlib" else "tail"
  return split_by


def path_hash(name: str) -> float:
  """A stable number in [0, 1) for a relative path (the ``file`` split's coin)."""
  digest = hashlib.sha256(name.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") / 2.0**64


def split_budgets(max_bytes: int, eval_fraction: float) -> dict[str, int | None]:
  """Raw-byte budget per split (None = unlimited)."""
  if not max_bytes:
    return {"train": None, "eval": None}
  eval_bytes = max(1, round(max_bytes * eval_fraction))
  return {"train": max(max_bytes - eval_bytes, 0), "eval": eval_bytes}


def split_docs(corpus: Corpus, split: str, *, eval_fraction: float, split_by: str,
               max_bytes: int = 0) -> tuple[Doc, ...]:
  """The documents (byte ranges) of ``split``; deterministic, reads nothing."""
  if split not in SPLITS:
    raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
  candidates = []  # (order key, Doc)
  for path, name, size, mtime in zip(corpus.paths, corpus.names, corpus.sizes, corpus.mtimes):
    if split_by == "file":
      u = path_hash(name)
      if (u < eval_fraction) == (split == "eval"):
        candidates.append(((u, name), Doc(path, 0, size, mtime)))
    elif split_by == "tail":
      cut = size - int(size * eval_fraction)
      start, stop = (cut, size) if split == "eval" else (0, cut)
      candidates.append(((0.0, name), Doc(path, start, stop, mtime)))
    else:
      raise ValueError(f"config.data.split_by: {split_by!r}; allowed: {', '.join(SPLIT_BY)}")
  candidates.sort(key=lambda c: c[0])
  budget = split_budgets(max_bytes, eval_fraction)[split]
  docs = []
  for _, doc in candidates:
    if doc.stop <= doc.start:
      continue
    if budget is not None:
      if budget <= 0:
        break
      doc = dataclasses.replace(doc, stop=min(doc.stop, doc.start + budget))
      budget -= doc.stop - doc.start
    docs.append(doc)
  return tuple(docs)


def docs_bytes(docs: Sequence[Doc]) -> int:
  return sum(d.stop - d.start for d in docs)


# ---------------------------------------------------------------------------
# Tokenizing.


def read_doc(doc: Doc) -> bytes:
  with open(doc.path, "rb") as f:
    f.seek(doc.start)
    return f.read(doc.stop - doc.start)


def iter_doc_tokens(docs: Sequence[Doc], tok: tokenizer_lib.Tokenizer,
                    group: int = 256) -> Iterator[np.ndarray]:
  """Yields each document's tokens (no separator), batching HF encodes by ``group``."""
  encode_batch = getattr(tok, "encode_batch", None)
  if encode_batch is None:
    for doc in docs:
      yield tok.encode_bytes(read_doc(doc))
    return
  for i in range(0, len(docs), group):
    texts = [read_doc(d).decode("utf-8", errors="replace") for d in docs[i:i + group]]
    yield from encode_batch(texts)


def join_docs(arrays: Sequence[np.ndarray], eos_id: int, dtype: np.dtype) -> np.ndarray:
  """``a_0 EOS a_1 EOS ...`` as one array of ``dtype``."""
  out = np.empty(sum(len(a) + 1 for a in arrays), dtype)
  pos = 0
  for a in arrays:
    out[pos:pos + len(a)] = a
    out[pos + len(a)] = eos_id
    pos += len(a) + 1
  return out


def token_stream(docs: Sequence[Doc], tok: tokenizer_lib.Tokenizer) -> np.ndarray:
  """The split's packed token stream (read-only, smallest unsigned dtype)."""
  dtype = tokenizer_lib.token_dtype(tok.vocab_size)
  if isinstance(tok, tokenizer_lib.ByteTokenizer):
    # Fast path: bytes are ids; skip the int32 round trip.
    arrays = [np.frombuffer(read_doc(d), np.uint8) for d in docs]
  else:
    arrays = list(iter_doc_tokens(docs, tok))
  stream = join_docs(arrays, tok.eos_id, dtype)
  stream.setflags(write=False)
  return stream


@functools.lru_cache(maxsize=8)
def cached_token_stream(docs: tuple[Doc, ...], tokenizer_spec: str) -> np.ndarray:
  """Per-process cache of :func:`token_stream` (keyed on ranges and mtimes)."""
  return token_stream(docs, tokenizer_lib.get_tokenizer(tokenizer_spec))


# ---------------------------------------------------------------------------
# Windows: random-access sources for grain.


def num_windows(num_tokens: int, seq_len: int) -> int:
  """How many ``seq_len + 1``-token windows (stride ``seq_len``) a stream holds."""
  return max(num_tokens - 1, 0) // seq_len


class _Windows:
  """Random access to the ``seq_len + 1``-token windows (stride ``seq_len``) of a stream
  of ``num_tokens`` tokens, as int32; subclasses read tokens ``[start, stop)`` in ``_read``.
  """

  def __init__(self, num_tokens: int, seq_len: int):
    self._num_tokens, self._seq_len = num_tokens, seq_len
    self._len = num_windows(num_tokens, seq_len)

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, i: int) -> np.ndarray:
    if not 0 <= i < self._len:
      raise IndexError(i)
    start = int(i) * self._seq_len
    return self._read(start, start + self._seq_len + 1).astype(np.int32)

  def _read(self, start: int, stop: int) -> np.ndarray:
    raise NotImplementedError

  def __repr__(self) -> str:
    return f"{type(self).__name__}(tokens={self._num_tokens}, seq_len={self._seq_len})"


class ArrayWindows(_Windows):
  """Window ``i`` of an in-memory token stream, as int32[seq_len + 1]."""

  def __init__(self, tokens: np.ndarray, seq_len: int):
    super().__init__(len(tokens), seq_len)
    self._tokens = tokens

  def _read(self, start: int, stop: int) -> np.ndarray:
    return self._tokens[start:stop]


class ArrayRecordWindows(_Windows):
  """Window ``i`` of a token stream stored as fixed-size ArrayRecord chunks.

  Record ``c`` of the split's shards holds tokens ``[c*C, (c+1)*C)`` (``C =
  chunk_tokens``; only the last record may be shorter) as raw ``dtype`` bytes,
  so a window reads one or two records, never the whole split.
  """

  def __init__(self, shard_paths: Sequence[str], *, num_tokens: int, chunk_tokens: int,
               dtype: str, seq_len: int):
    import grain  # pylint: disable=import-outside-toplevel
    self._records = grain.sources.ArrayRecordDataSource(list(shard_paths))
    super().__init__(num_tokens, seq_len)
    self._chunk, self._dtype = chunk_tokens, np.dtype(dtype)

  def _read(self, start: int, stop: int) -> np.ndarray:
    first, last = start // self._chunk, (stop - 1) // self._chunk
    records = self._records.__getitems__(list(range(first, last + 1)))
    chunk = np.concatenate([np.frombuffer(r, self._dtype) for r in records])
    offset = start - first * self._chunk
    return chunk[offset:offset + stop - start]


# ---------------------------------------------------------------------------
# Prepared shards.


def data_cache_root() -> str:
  """Where prepared shards from object storage are copied: ``$SIGNFLAX_DATA_CACHE``, else
  ``$XDG_CACHE_HOME/signflax/prepared`` (``~/.cache/signflax/prepared``)."""
  if os.environ.get("SIGNFLAX_DATA_CACHE"):
    return os.path.expanduser(os.environ["SIGNFLAX_DATA_CACHE"])
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "signflax", "prepared")


@functools.lru_cache(maxsize=8)
def fetch_prepared(url: str, field: str = "config.data.paths") -> str:
  """A local copy of the ``prepare-data`` output at ``url`` (``gs://...``); its directory.

  ArrayRecord's reader reads local files only, so each host copies the shards once into
  :func:`data_cache_root`, keyed by the URL and the manifest's bytes (a re-prepared output
  gets a new copy). Every file of the output directory is copied, each renamed into place
  whole, the manifest last: a copy with a manifest is complete, and a killed copy resumes
  with the files it has. Memoized: a process reads the remote manifest once.
  """
  storage.configure_clients()
  remote = storage.path(url)
  manifest_file = remote if url.endswith(".json") else remote / MANIFEST
  try:
    text = manifest_file.read_text()
  except FileNotFoundError:
    raise ValueError(f"{field}: no {MANIFEST} in {url!r}; give the output directory of "
                     "`signflax prepare-data`") from None
  except Exception as e:  # noqa: BLE001 - credentials, bucket, network: one line
    raise ValueError(f"{field}: cannot read {os.fspath(manifest_file)} "
                     f"({type(e).__name__}: {storage.first_line(e)})") from None
  try:
    splits = json.loads(text)["splits"]
    listed = {f for info in splits.values() for f in info["files"]}
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    raise ValueError(f"{field}: {os.fspath(manifest_file)} is not a signflax prepare-data "
                     f"manifest ({type(e).__name__}: {e})") from None
  key = hashlib.sha256(f"{url}\n{text}".encode()).hexdigest()[:16]
  local = storage.path(data_cache_root()) / f"{storage.bucket(url)}-{key}"
  if (local / MANIFEST).is_file():
    return os.fspath(local)
  present = {p.name for p in manifest_file.parent.iterdir() if not p.is_dir()}
  if listed - present:
    raise ValueError(f"{field}: shard {min(listed - present)!r} listed in "
                     f"{os.fspath(manifest_file)} is missing")
  local.mkdir(parents=True, exist_ok=True)
  for name in sorted(present - {MANIFEST}):   # shards and their side files (unigram counts)
    if not (local / name).is_file():
      storage.download(manifest_file.parent / name, os.fspath(local / name))
  storage.write_text(local / MANIFEST, text)
  return os.fspath(local)


def manifest_path(paths: str, field: str = "config.data.paths") -> str:
  """The ``manifest.json`` of a ``prepare-data`` output directory (or the file itself); a
  ``gs://`` output is first copied to this host (:func:`fetch_prepared`)."""
  spec = os.path.expanduser(str(paths or "").strip())
  if not spec:
    raise ValueError(f"{field}: required for source='arrayrecord'; give the output directory "
                     "of `signflax prepare-data`")
  if "://" in spec:
    spec = fetch_prepared(spec, field)
  path = spec if spec.endswith(".json") else os.path.join(spec, MANIFEST)
  if not os.path.isfile(path):
    raise ValueError(f"{field}: no {MANIFEST} in {spec!r}; give the output directory of "
                     "`signflax prepare-data`")
  return path


@functools.lru_cache(maxsize=8)
def _read_manifest(path: str, mtime_ns: int) -> dict:
  del mtime_ns
  try:
    with open(path) as f:
      manifest = json.load(f)
    for key in ("vocab_size", "eos_id", "dtype", "chunk_tokens", "splits"):
      manifest[key]  # pylint: disable=pointless-statement
    for split in SPLITS:
      manifest["splits"][split]["tokens"]  # pylint: disable=pointless-statement
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ValueError(f"config.data.paths: {path} is not a signflax prepare-data manifest "
                     f"({type(e).__name__}: {e})") from None
  return manifest


def read_manifest(paths: str, field: str = "config.data.paths") -> tuple[str, dict]:
  """(directory, manifest) of prepared shards; one-line ValueError if missing or broken."""
  path = manifest_path(paths, field)
  return os.path.dirname(path), _read_manifest(path, os.stat(path).st_mtime_ns)


def shard_windows(directory: str, manifest: dict, split: str, seq_len: int) -> ArrayRecordWindows:
  info = manifest["splits"][split]
  shards = [os.path.join(directory, f) for f in info["files"]]
  missing = [s for s in shards if not os.path.isfile(s)]
  if missing:
    raise ValueError(f"config.data.paths: shard {missing[0]!r} listed in {MANIFEST} is missing")
  return ArrayRecordWindows(shards, num_tokens=info["tokens"],
                            chunk_tokens=manifest["chunk_tokens"], dtype=manifest["dtype"],
                            seq_len=seq_len)
