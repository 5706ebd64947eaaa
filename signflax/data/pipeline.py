"""The data pipeline: config, validation, Grain iterators and the unigram baseline.

Per split the pipeline is::

  windows of seq_len+1 tokens (random access)
    -> shuffle(seed), reshuffled every epoch          [train, if shuffle]
    -> repeat(num_epochs)
    -> cut to whole global batches
    -> batch(local_batch) -> every process_count-th batch from process_index
    -> {"inputs": w[:, :-1], "targets": w[:, 1:]}

Global batch ``s`` is windows ``[s*G, (s+1)*G)`` of the (shuffled, repeated)
sequence; process ``p`` of ``P`` reads rows ``[p*L, (p+1)*L)`` of it (``L =
G // P``) and nothing else, so concatenating the processes' batches in process
order gives exactly the one-process batch. Every stage is a ``grain.MapDataset``
(random access), so the iterator's state is one index and
``set_state(get_state())`` resumes exactly.
"""

from __future__ import annotations

import os

import grain
import ml_collections
import numpy as np

from signflax import config_schema as cs
from signflax.data import sources
from signflax.data import tokenizer as tokenizer_lib

SOURCES = ("stdlib", "text", "arrayrecord")


SCHEMA = cs.Schema({
    "source": cs.choice(*SOURCES, default="stdlib",
                        doc="stdlib (the running Python's standard library .py files, no "
                            "download), text (local text files) or arrayrecord (shards "
                            "written by signflax prepare-data)"),
    "paths": cs.string(default="",
                       doc="text: comma-separated files, globs (** ok) or directories; "
                           "arrayrecord: the prepare-data output directory; unused for stdlib"),
    "tokenizer": cs.string(default="byte",
                           doc="byte (ids 0..255, eos 256, bos 257) or a path to a Hugging "
                               "Face tokenizer.json; arrayrecord: the shards' tokenizer"),
    "eval_fraction": cs.real(0, 1, low_open=True, high_open=True, default=0.05,
                             doc="share of the corpus held out for eval (arrayrecord: fixed "
                                 "when the shards were written)"),
    "split_by": cs.choice(*sources.SPLIT_BY, default="auto",
                          doc="auto is file for stdlib and tail for text "
                              "(signflax.data.sources)"),
    "max_bytes": cs.integer(0, default=0,
                            doc="cap on the raw text bytes read, 0 = all (stdlib/text only)"),
    "shuffle": cs.boolean(default=True,
                          doc="shuffle train windows with the seed (eval never is)"),
    "num_workers": cs.integer(0, default=0,
                              doc="grain worker processes (0 = read in the training process)"),
    "prefetch": cs.integer(0, default=2,
                           doc="batches read ahead by a background thread (0 = synchronous)"),
}, doc="What the model reads: source, tokenizer, eval split and the Grain pipeline.")


@SCHEMA.rule
def _tokenizer_exists(data) -> str | None:
  try:
    tokenizer_lib.check_tokenizer_spec(data["tokenizer"])
  except ValueError as e:
    return str(e)
  return None


def default_data_config() -> ml_collections.ConfigDict:
  """The ``config.data`` fields at their defaults (declared in ``SCHEMA``)."""
  return SCHEMA.defaults()


def build_tokenizer(data_config) -> tokenizer_lib.Tokenizer:
  """The tokenizer named by ``data_config.tokenizer`` (cached per process)."""
  return tokenizer_lib.get_tokenizer(data_config.tokenizer)


# ---------------------------------------------------------------------------
# Splits.


def _corpus_docs(data_config, split: str) -> tuple[sources.Doc, ...]:
  source = data_config.source
  corpus = sources.list_corpus(source, data_config.paths)
  if corpus.num_bytes == 0:
    where = "the standard library" if source == "stdlib" else repr(data_config.paths)
    raise ValueError(f"config.data.paths: the corpus is empty (0 bytes of text in {where})")
  fraction = data_config.eval_fraction
  split_by = sources.resolve_split_by(source, data_config.split_by)
  docs = sources.split_docs(corpus, split, eval_fraction=fraction, split_by=split_by,
                            max_bytes=data_config.max_bytes)
  if not docs:
    if split_by == "file":
      raise ValueError(
          f"config.data.eval_fraction: none of the {len(corpus.paths)} files falls in the "
          f"{split} split with eval_fraction={fraction}; add files, change eval_fraction or set "
          "config.data.split_by='tail'")
    if data_config.max_bytes:
      raise ValueError(f"config.data.max_bytes: {data_config.max_bytes} leaves no text "
                       f"for the {split} split; raise it or set it to 0 (all)")
    raise ValueError(f"config.data.eval_fraction: {fraction} of the {corpus.num_bytes}-byte "
                     f"corpus leaves the {split} split empty; add text or change eval_fraction")
  return docs


def split_tokens(data_config, split: str) -> np.ndarray:
  """The packed token stream of ``split`` (stdlib/text; cached per process)."""
  _check_split(split)
  docs = _corpus_docs(data_config, split)
  return sources.cached_token_stream(docs, data_config.tokenizer)


def _check_split(split: str) -> None:
  if split not in sources.SPLITS:
    raise ValueError(f"split: expected one of {', '.join(sources.SPLITS)}, got {split!r}")


def _shards(data_config):
  """(directory, manifest) of arrayrecord shards, checked against the tokenizer."""
  directory, manifest = sources.read_manifest(data_config.paths)
  tok = build_tokenizer(data_config)
  fingerprint = tokenizer_lib.tokenizer_fingerprint(data_config.tokenizer)
  if ((manifest["vocab_size"], manifest["eos_id"]) != (tok.vocab_size, tok.eos_id)
      or manifest.get("tokenizer_fingerprint", fingerprint) != fingerprint):
    raise ValueError(
        f"config.data.tokenizer: {tok.name!r} (vocab {tok.vocab_size}) is not the tokenizer the "
        f"shards in {directory!r} were written with ({manifest.get('tokenizer')!r}, vocab "
        f"{manifest['vocab_size']})")
  return directory, manifest


def split_num_tokens(data_config, split: str) -> int:
  """Tokens in ``split``'s stream; byte/arrayrecord without reading the text."""
  _check_split(split)
  source = data_config.source
  if source == "arrayrecord":
    return int(_shards(data_config)[1]["splits"][split]["tokens"])
  if data_config.tokenizer == tokenizer_lib.BYTE:
    docs = _corpus_docs(data_config, split)  # one byte = one token, plus one EOS per doc
    return sources.docs_bytes(docs) + len(docs)
  return len(split_tokens(data_config, split))


def windows(data_config, split: str, seq_len: int):
  """Random-access windows of ``seq_len + 1`` tokens of ``split``."""
  _check_split(split)
  if data_config.source == "arrayrecord":
    directory, manifest = _shards(data_config)
    if not manifest["splits"][split]["tokens"]:
      return sources.ArrayWindows(np.zeros(0, np.uint16), seq_len)
    return sources.shard_windows(directory, manifest, split, seq_len)
  return sources.ArrayWindows(split_tokens(data_config, split), seq_len)


# ---------------------------------------------------------------------------
# Public API.


def validate(data_config, *, seq_len: int, global_batch_size: int,
             process_count: int = 1) -> None:
  """Raises a one-line ValueError naming the field if the data config is unusable.

  Checks every field, that the files exist, that the corpus is not empty, and
  that both splits hold at least one global batch of ``seq_len + 1``-token
  windows. With the byte tokenizer nothing is read (file sizes suffice); a
  tokenizer.json corpus is tokenized once and cached for ``make_iterator``.
  """
  SCHEMA.check(data_config, prefix="config.data")
  for name, value in (("seq_len", seq_len), ("global_batch_size", global_batch_size),
                      ("process_count", process_count)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"{name}: must be an integer >= 1, got {value!r}")
  if global_batch_size % process_count:
    raise ValueError(f"global_batch_size: {global_batch_size} is not divisible by the "
                     f"{process_count} processes; use a multiple of {process_count}")
  for split in sources.SPLITS:
    tokens = split_num_tokens(data_config, split)
    have = sources.num_windows(tokens, seq_len)
    if have < global_batch_size:
      raise ValueError(
          f"config.data: the {split} split has {tokens} tokens = {have} windows of seq_len+1="
          f"{seq_len + 1}, fewer than one global batch of {global_batch_size}; add data, raise "
          "config.data.max_bytes, or lower the batch size or seq_len")


def make_iterator(data_config, *, split: str, seq_len: int, global_batch_size: int, seed: int,
                  process_index: int = 0, process_count: int = 1,
                  num_epochs: int | None = None) -> grain.DatasetIterator:
  """A checkpointable iterator over this process's share of the global batches.

  Yields ``{"inputs": int32[L, seq_len], "targets": int32[L, seq_len]}`` with
  ``L = global_batch_size // process_count`` and ``targets[:, t] ==
  inputs[:, t + 1]`` within each window. ``split="train"`` is shuffled with
  ``seed`` (when ``config.data.shuffle``), reshuffled each epoch, and repeats
  ``num_epochs`` times (None = forever); ``split="eval"`` is in corpus order and
  ``num_epochs=None`` means one pass. Incomplete final global batches are
  dropped. ``get_state()`` / ``set_state(state)`` save and restore the position
  (a small dict, e.g. for an Orbax ``grain`` checkpoint item).
  """
  # ``validate`` ran once at the edge (the CLI or the caller): the config is trusted here.
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index: must be in [0, {process_count}), got {process_index}")
  if num_epochs is not None and (isinstance(num_epochs, bool) or not isinstance(num_epochs, int)
                                 or num_epochs < 1):
    raise ValueError(f"num_epochs: must be None or an integer >= 1, got {num_epochs!r}")
  if split == "eval" and num_epochs is None:
    num_epochs = 1
  local_batch = global_batch_size // process_count

  ds = grain.MapDataset.source(windows(data_config, split, seq_len))
  if split == "train" and data_config.shuffle:
    ds = ds.shuffle(seed=shuffle_seed(seed))
  ds = ds.repeat(num_epochs)
  if num_epochs is not None:  # keep whole global batches only, so all processes agree
    ds = ds[:len(ds) // global_batch_size * global_batch_size]
  ds = ds.batch(local_batch, drop_remainder=True)
  ds = ds[process_index::process_count]
  ds = ds.map(_split_inputs_targets)

  prefetch = data_config.prefetch
  ids = ds.to_iter_dataset(grain.ReadOptions(num_threads=1 if prefetch else 0,
                                             prefetch_buffer_size=prefetch))
  workers = data_config.num_workers
  if workers:
    _ensure_absl_flags_parsed()
    ids = ids.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return iter(ids)


def shuffle_seed(seed: int) -> int:
  """A 32-bit shuffle seed mixed from ``seed``.

  Grain reshuffles epoch ``e`` with ``seed + e``; mixing first keeps runs with
  neighbouring seeds (0, 1, ...) from replaying each other's epochs.
  """
  return int(np.random.SeedSequence(int(seed) % 2**64).generate_state(1, np.uint32)[0])


def _ensure_absl_flags_parsed() -> None:
  """Grain's worker processes read absl flags; outside ``absl.app`` use their defaults."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def describe(data_config, *, seq_len: int | None = None) -> dict:
  """A summary to log: source, tokenizer, vocab size, tokens (and windows) per split."""
  tok = build_tokenizer(data_config)
  info = {"source": data_config.source, "tokenizer": tok.name,
          "vocab_size": tok.vocab_size, "eos_id": tok.eos_id}
  for split in sources.SPLITS:
    info[f"{split}_tokens"] = split_num_tokens(data_config, split)
    if seq_len:
      info[f"{split}_windows"] = sources.num_windows(info[f"{split}_tokens"], seq_len)
  return info


def _split_inputs_targets(windows_batch: np.ndarray) -> dict[str, np.ndarray]:
  return {"inputs": np.ascontiguousarray(windows_batch[:, :-1]),
          "targets": np.ascontiguousarray(windows_batch[:, 1:])}


def unigram_counts(data_config, split: str = "eval") -> np.ndarray:
  """int64[vocab_size] token counts of ``split``'s stream (separators included)."""
  SCHEMA.check(data_config, prefix="config.data")
  _check_split(split)
  vocab_size = build_tokenizer(data_config).vocab_size
  if data_config.source == "arrayrecord":
    directory, manifest = _shards(data_config)
    counts = np.load(os.path.join(directory, manifest["splits"][split]["unigram_counts"]))
  else:
    counts = np.bincount(split_tokens(data_config, split), minlength=vocab_size)
  return counts.astype(np.int64)


def entropy(counts: np.ndarray) -> float:
  """Entropy in nats of the distribution ``counts / counts.sum()``."""
  counts = np.asarray(counts, np.float64)
  p = counts[counts > 0] / counts.sum()
  return float(-(p * np.log(p)).sum())


def unigram_entropy(data_config, *, split: str = "eval") -> float:
  """Entropy (nats/token) of ``split``'s token unigram distribution.

  The loss of the best context-free predictor fitted to that very split: a
  language model's eval loss should end far below it.
  """
  counts = unigram_counts(data_config, split)
  if not counts.sum():
    raise ValueError(f"config.data: the {split} split is empty")
  return entropy(counts)
