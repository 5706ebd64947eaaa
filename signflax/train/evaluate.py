"""``signflax eval``: a trained run's loss on held-out text, in nats/token and bits per byte.

    signflax eval --workdir runs/tiny [--step N] [--data PATH_OR_GLOB] [--split eval] [--json]

Without ``--data`` it scores the run's own eval split over exactly the windows
the trainer's eval reads (``config.train.eval_batches`` global batches of
``seq_len + 1``-token windows, in corpus order), so its loss is the
``eval_loss`` that ``metrics.jsonl`` logged at that step (printed beside it).
``--data`` takes text files (comma-separated files, globs or directories, each
file one document, every token scored once: the last, shorter window too) or the
output directory of ``signflax prepare-data`` (its ``--split``, default eval).

With ``N`` scored target tokens of losses ``l_i`` (nats) that decode to ``B``
UTF-8 bytes (special tokens count 0)::

    loss = sum l_i / N        perplexity = exp(loss)        bits/byte = sum l_i / (B ln 2)

Bits per byte does not depend on the tokenizer, so a byte model and a BPE model
compare on it.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from signflax import config_io
from signflax import data as data_lib
from signflax import metric_writers
from signflax import model as model_lib
from signflax import parallel
from signflax.data import pipeline, sources
from signflax.outcomes import BadInput, UsageError

PROG = "signflax eval"


class _Parser(argparse.ArgumentParser):
  def error(self, message):
    raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
  p = _Parser(prog=PROG, description="Evaluate a trained run: nats/token, perplexity, "
                                     "bits per byte.")
  p.add_argument("--workdir", required=True, help="the training workdir")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--data", default=None,
                 help="text files/globs/directories, or a prepare-data output directory "
                      "(default: the run's own eval split)")
  p.add_argument("--split", choices=sources.SPLITS, default="eval",
                 help="which split of prepared shards (--data DIR with a manifest.json)")
  p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
  return p


# ---------------------------------------------------------------------------- bytes per token


def token_byte_lengths(tok: data_lib.Tokenizer, vocab_size: int) -> np.ndarray:
  """int64[vocab_size]: the UTF-8 bytes each id stands for (special and padded ids: 0)."""
  lengths = np.zeros(vocab_size, np.int64)
  if isinstance(tok, data_lib.ByteTokenizer):
    lengths[:256] = 1
    return lengths
  inner = tok._tok  # pylint: disable=protected-access
  special = {t.content for t in inner.get_added_tokens_decoder().values() if t.special}
  special |= {inner.id_to_token(i) for i in (tok.eos_id, tok.bos_id)}   # separators: 0 bytes
  byte_level = _is_byte_level(inner)
  unicode_to_byte = {c: b for b, c in _bytes_to_unicode().items()}
  for i in range(min(inner.get_vocab_size(), vocab_size)):
    token = inner.id_to_token(i)
    if token is None or token in special:
      continue
    if byte_level:
      lengths[i] = sum(1 for c in token if c in unicode_to_byte)
    elif token.startswith("<0x") and token.endswith(">") and len(token) == 6:
      lengths[i] = 1                                    # SentencePiece byte fallback
    else:
      lengths[i] = len(token.replace("\u2581", " ").encode("utf-8"))
  return lengths


def _is_byte_level(inner) -> bool:
  spec = json.loads(inner.to_str())
  parts = [spec.get("pre_tokenizer") or {}, spec.get("decoder") or {}]
  return any("ByteLevel" in json.dumps(p) for p in parts)


def _bytes_to_unicode() -> dict[int, str]:
  from signflax.train import hf  # pylint: disable=import-outside-toplevel
  return hf._bytes_to_unicode()  # pylint: disable=protected-access


# ---------------------------------------------------------------------------- windows


class Windows:
  """Full ``seq_len + 1``-token windows, then optionally one shorter tail window."""

  def __init__(self, full, tail: np.ndarray | None, description: str):
    self.full, self.tail, self.description = full, tail, description

  def __len__(self) -> int:
    return len(self.full) + (self.tail is not None)

  def __getitem__(self, i: int) -> np.ndarray:
    return np.asarray(self.full[i] if i < len(self.full) else self.tail, np.int32)


def run_eval_windows(config) -> Windows:
  """The trainer's eval windows: whole global batches, ``config.train.eval_batches`` of them
  (0 = all)."""
  t = config.train
  full = pipeline.windows(config.data, "eval", t.seq_len)
  batches = len(full) // t.global_batch_size
  if t.eval_batches:
    batches = min(batches, t.eval_batches)
  return Windows(_Prefix(full, batches * t.global_batch_size), None, "the run's eval split")


class _Prefix:
  def __init__(self, seq, n):
    self.seq, self.n = seq, n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return self.seq[i]


def text_windows(spec: str, tok, tokenizer_spec: str, seq_len: int) -> Windows:
  """Every file of ``spec`` a document: all tokens scored, the tail in a short window."""
  try:
    files = sources.expand_paths(spec, field="--data")
  except ValueError as e:
    raise BadInput(str(e)) from e
  docs = tuple(sources.Doc(f, 0, os.path.getsize(f), os.stat(f).st_mtime_ns) for f in files)
  stream = sources.cached_token_stream(docs, tokenizer_spec)
  full = sources.ArrayWindows(stream, seq_len)
  start = len(full) * seq_len
  tail = stream[start:] if len(stream) - start >= 2 else None
  return Windows(full, tail, f"{len(files)} file(s) of {spec!r}")


def shard_windows(spec: str, data_config, split: str, seq_len: int) -> Windows:
  config = copy.deepcopy(data_config)
  config.source, config.paths = "arrayrecord", spec
  try:
    full = pipeline.windows(config, split, seq_len)
  except ValueError as e:
    raise BadInput(str(e).replace("config.data.paths", "--data")) from e
  return Windows(full, None, f"the {split} split of the shards in {spec!r}")


def _is_shards(spec: str) -> bool:
  path = os.path.expanduser(spec)
  return (spec.startswith("gs://") or path.endswith(sources.MANIFEST)
          or os.path.isfile(os.path.join(path, sources.MANIFEST)))


# ---------------------------------------------------------------------------- scoring


def make_score_fn(graphdef, loss_chunk_len: int = 0):
  """params, inputs, targets, weights -> float32 sum of ``weights * nats`` per batch.

  ``loss_chunk_len > 0``: the logits are made ``[b, loss_chunk_len, vocab]`` at a time.
  """
  def score(params, inputs, targets, weights):
    hidden, head = model_lib.apply_features(graphdef, params, inputs)
    b, t, _ = hidden.shape
    chunk = loss_chunk_len or t

    def chunk_nats(args):
      h, y, w = args
      logits = (h @ head.astype(h.dtype)).astype(jnp.float32)
      nats = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, y[..., None], -1)[..., 0]
      return jnp.sum(nats * w)

    cut = lambda x: jnp.moveaxis(x.reshape((b, t // chunk, chunk) + x.shape[2:]), 1, 0)
    return jnp.sum(jax.lax.map(chunk_nats, (cut(hidden), cut(targets), cut(weights))))
  return score


def batches(windows: Windows, rows: int, seq_len: int) -> Iterator[dict[str, np.ndarray]]:
  """``{inputs, targets, weights}`` of ``rows`` windows; the last batch padded (weight 0)."""
  for start in range(0, len(windows), rows):
    inputs = np.zeros((rows, seq_len), np.int32)
    targets = np.zeros((rows, seq_len), np.int32)
    weights = np.zeros((rows, seq_len), np.float32)
    for r, i in enumerate(range(start, min(start + rows, len(windows)))):
      w = windows[i]
      n = len(w) - 1
      inputs[r, :n], targets[r, :n], weights[r, :n] = w[:-1], w[1:], 1.0
    yield {"inputs": inputs, "targets": targets, "weights": weights}


def evaluate(run, windows: Windows, *, progress: bool = True) -> dict:
  """Scores ``windows`` with the run's parameters; the figures of the module docstring."""
  t = run.config.train
  rows = max(t.global_batch_size // t.grad_accum, 1)
  lengths = token_byte_lengths(run.tokenizer, run.model.vocab_size)
  shards = math.prod(run.mesh.shape[a] for a in ("data", "fsdp"))
  sharding = (parallel.batch_sharding(run.mesh) if rows % shards == 0
              else parallel.replicated(run.mesh))
  chunk = t.loss_chunk_len if t.get("loss_chunk_len") else 0
  score = jax.jit(make_score_fn(run.graphdef, chunk),
                  in_shardings=(jax.tree.map(lambda x: x.sharding, run.params),
                                sharding, sharding, sharding),
                  out_shardings=parallel.replicated(run.mesh))
  num_batches = -(-len(windows) // rows)
  bar = metric_writers.ProgressBar(num_batches, enabled=progress and num_batches >= 8)
  every = 1 if bar.tty else max(num_batches // 10, 1)
  total_nats, tokens, nbytes, start = 0.0, 0, 0, time.monotonic()
  with jax.set_mesh(run.mesh):
    for i, batch in enumerate(batches(windows, rows, t.seq_len), 1):
      nats = float(score(run.params, *(batch[k] for k in ("inputs", "targets", "weights"))))
      mask = batch["weights"] > 0
      total_nats += nats
      tokens += int(mask.sum())
      nbytes += int(lengths[batch["targets"][mask]].sum())
      if i % every == 0 or i == num_batches:
        bar.update(i, total_nats / max(tokens, 1), tokens / (time.monotonic() - start))
  bar.close()
  if not tokens:
    raise BadInput(f"--data: {windows.description} holds no window of 2 or more tokens")
  loss = total_nats / tokens
  return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)),
          "bits_per_byte": total_nats / nbytes / math.log(2) if nbytes else None,
          "tokens": tokens, "bytes": nbytes, "windows": len(windows)}


def main(argv: Sequence[str] | None = None) -> int:
  overrides, rest = config_io.split_overrides(list(sys.argv[1:] if argv is None else argv))
  args = _parser().parse_args(rest)
  from signflax.train import trained as trained_lib  # pylint: disable=import-outside-toplevel
  config = trained_lib.run_config(args.workdir, overrides)
  trained_lib.model_config(config)
  t = config.train
  try:
    tok = data_lib.build_tokenizer(config.data)
    if args.data is None:
      windows = run_eval_windows(config)
    elif _is_shards(args.data):
      windows = shard_windows(args.data, config.data, args.split, t.seq_len)
    else:
      windows = text_windows(args.data, tok, config.data.tokenizer, t.seq_len)
  except ValueError as e:
    raise BadInput(str(e)) from e
  run = trained_lib.load(args.workdir, args.step, overrides)
  result = {"workdir": str(args.workdir), "step": run.step, "data": windows.description,
            **evaluate(run, windows, progress=not args.json)}
  if args.data is None and run.step is not None:
    result["logged_eval_loss"] = trained_lib.final_eval_loss(args.workdir, run.step)
  if args.json:
    print(json.dumps(result))
    return 0
  bpb = result["bits_per_byte"]
  print(f"{result['data']} at step {run.step}: {result['loss']:.6f} nats/token | perplexity "
        f"{result['perplexity']:.4g} | " + (f"{bpb:.6f} bits/byte" if bpb is not None else
                                             "bits/byte n/a (no bytes)")
        + f" | {result['tokens']:,} tokens, {result['bytes']:,} bytes, "
        f"{result['windows']:,} windows")
  logged = result.get("logged_eval_loss")
  if logged is not None:
    print(f"logged eval loss at step {run.step}: {logged:.6f} (difference "
          f"{abs(result['loss'] - logged):.1e})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
