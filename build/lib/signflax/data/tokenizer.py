"""Tokenizers: byte-level (the default) and Hugging Face ``tokenizer.json``.

Both expose the same small interface (:class:`Tokenizer`)::

  tok.vocab_size          # ids are 0 .. vocab_size - 1
  tok.eos_id, tok.bos_id  # eos_id separates documents in the packed stream
  tok.encode(text) -> np.ndarray[int32]
  tok.encode_bytes(raw) -> np.ndarray[int32]   # raw UTF-8 bytes, no decode needed
  tok.decode(ids) -> str                       # special tokens are dropped

The ``tokenizers`` package is imported only when a ``tokenizer.json`` is used.
"""

from __future__ import annotations

import functools
import hashlib
import os
from typing import Protocol, Sequence

import numpy as np

BYTE = "byte"

# Token strings tried, in order, when looking for a tokenizer's EOS / BOS.
_EOS_NAMES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>", "[SEP]")
_BOS_NAMES = ("<|begin_of_text|>", "<s>", "<bos>", "<|bos|>", "[CLS]")


class Tokenizer(Protocol):
  """What the data pipeline and the trainer need from a tokenizer."""

  name: str
  vocab_size: int
  eos_id: int
  bos_id: int

  def encode(self, text: str) -> np.ndarray: ...

  def encode_bytes(self, raw: bytes) -> np.ndarray: ...

  def decode(self, ids: Sequence[int] | np.ndarray) -> str: ...


class ByteTokenizer:
  """UTF-8 bytes as ids 0..255, then ``eos_id = 256`` and ``bos_id = 257``.

  ``decode(encode(s)) == s`` for every string ``s``. Encoding raw bytes is a
  zero-copy ``np.frombuffer``, so the whole standard library tokenizes in well
  under a second.
  """

  name = BYTE
  vocab_size = 258
  eos_id = 256
  bos_id = 257

  def encode(self, text: str) -> np.ndarray:
    return self.encode_bytes(text.encode("utf-8"))

  def encode_bytes(self, raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, dtype=np.uint8).astype(np.int32)

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    ids = np.asarray(ids)
    return ids[ids < 256].astype(np.uint8).tobytes().decode("utf-8", errors="replace")

  def __repr__(self) -> str:
    return "ByteTokenizer(vocab_size=258, eos_id=256, bos_id=257)"


class HFTokenizer:
  """A Hugging Face ``tokenizers`` tokenizer loaded from a ``tokenizer.json``.

  ``eos_id`` is the first of ``<|endoftext|>``, ``<|end_of_text|>``, ``</s>``,
  ``<eos>``, ``<|eos|>``, ``[SEP]`` in the vocabulary; if none is, one extra id
  (the old vocab size) is appended as the separator. ``bos_id`` is found the
  same way (``<|begin_of_text|>``, ``<s>``, ...) and falls back to ``eos_id``,
  as in GPT-2. Text is encoded without the tokenizer's own post-processing
  (``add_special_tokens=False``): the pipeline inserts separators itself.
  """

  def __init__(self, path: str):
    tokenizers = import_tokenizers()
    self.name = path
    self._tok = tokenizers.Tokenizer.from_file(path)
    vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
    eos = _first_id(self._tok, _EOS_NAMES)
    if eos is None:
      eos, vocab_size = vocab_size, vocab_size + 1
    bos = _first_id(self._tok, _BOS_NAMES)
    self.vocab_size, self.eos_id = vocab_size, eos
    self.bos_id = eos if bos is None else bos

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, np.int32)

  def encode_bytes(self, raw: bytes) -> np.ndarray:
    return self.encode(raw.decode("utf-8", errors="replace"))

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    """Encodes many texts at once (parallel in the Rust library)."""
    encodings = self._tok.encode_batch(list(texts), add_special_tokens=False)
    return [np.asarray(e.ids, np.int32) for e in encodings]

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    ids = [int(i) for i in np.asarray(ids).reshape(-1) if i < self._tok.get_vocab_size()]
    return self._tok.decode(ids, skip_special_tokens=True)

  def __repr__(self) -> str:
    return (f"HFTokenizer({self.name!r}, vocab_size={self.vocab_size}, "
            f"eos_id={self.eos_id}, bos_id={self.bos_id})")


def _first_id(tok, names: Sequence[str]) -> int | None:
  for name in names:
    token_id = tok.token_to_id(name)
    if token_id is not None:
      return int(token_id)
  return None


def import_tokenizers(field: str = "config.data.tokenizer"):
  """Imports the ``tokenizers`` package or raises a one-line ValueError."""
  try:
    import tokenizers  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ValueError(f"{field}: a tokenizer.json needs the 'tokenizers' package; "
                     "run `pip install tokenizers` (or use tokenizer='byte')") from None
  return tokenizers


def check_tokenizer_spec(spec: str, field: str = "config.data.tokenizer") -> None:
  """Raises ValueError unless ``spec`` is 'byte' or an existing ``*.json`` file."""
  if not isinstance(spec, str) or not spec:
    raise ValueError(f"{field}: expected 'byte' or a path to a Hugging Face tokenizer.json, "
                     f"got {spec!r}")
  if spec == BYTE:
    return
  path = os.path.expanduser(spec)
  if not spec.endswith(".json"):
    raise ValueError(f"{field}: unknown tokenizer {spec!r}; allowed: 'byte' or a path to a "
                     "Hugging Face tokenizer.json")
  if not os.path.isfile(path):
    raise ValueError(f"{field}: no such file {spec!r}; allowed: 'byte' or a path to a "
                     "Hugging Face tokenizer.json")
  import_tokenizers(field)


def get_tokenizer(spec: str, field: str = "config.data.tokenizer") -> Tokenizer:
  """Returns the tokenizer for ``spec`` ('byte' or a tokenizer.json path); cached."""
  check_tokenizer_spec(spec, field)
  if spec == BYTE:
    return ByteTokenizer()
  path = os.path.abspath(os.path.expanduser(spec))
  return _load_hf(path, os.stat(path).st_mtime_ns, field)


@functools.lru_cache(maxsize=4)
def _load_hf(path: str, mtime_ns: int, field: str) -> HFTokenizer:
  del mtime_ns  # part of the cache key only
  try:
    return HFTokenizer(path)
  except ValueError:
    raise
  except Exception as e:  # noqa: BLE001 - a broken file is bad input
    raise ValueError(f"{field}: cannot load {path!r}: "
                     f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e


def tokenizer_fingerprint(spec: str) -> str:
  """'byte', or the sha256 of the tokenizer.json bytes (recorded in shard manifests)."""
  if spec == BYTE:
    return BYTE
  path = os.path.abspath(os.path.expanduser(spec))
  return _file_sha256(path, os.stat(path).st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _file_sha256(path: str, mtime_ns: int) -> str:
  del mtime_ns  # part of the cache key only
  with open(path, "rb") as f:
    return "sha256:" + hashlib.sha256(f.read()).hexdigest()


def token_dtype(vocab_size: int) -> np.dtype:
  """The smallest unsigned dtype that holds every id (streams are stored in it)."""
  return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)
