"""`signflax prepare-data`: tokenize text into ArrayRecord shards.

  signflax prepare-data --input 'corpus/**/*.txt' --output data/corpus \\
      [--tokenizer byte|tokenizer.json] [--eval-fraction 0.05] [--split-by auto|file|tail] \\
      [--max-bytes 0] [--chunk-tokens 4096] [--records-per-shard 4096] [--overwrite]

``--input stdlib`` prepares the built-in standard-library corpus. The train and
eval splits are chosen exactly as the in-memory ``text``/``stdlib`` sources
choose them, and each split's token stream (documents joined by EOS) is cut
into records of ``--chunk-tokens`` tokens (raw little-endian uint16, or uint32
for vocabularies over 65536), ``--records-per-shard`` records per file::

  OUTPUT/manifest.json              vocab_size, eos_id, tokenizer, dtype, chunk_tokens,
                                    per split: files, tokens, documents, bytes
  OUTPUT/train-00000.array_record   ...
  OUTPUT/eval-00000.array_record
  OUTPUT/unigram_train.npy, unigram_eval.npy   token counts (for the entropy baseline)

Training then reads the shards with ``--config.data.source=arrayrecord
--config.data.paths=OUTPUT`` and the same tokenizer. Shards are written to a
temporary sibling directory and moved into place only when complete, so a
failed run leaves an existing OUTPUT untouched; a non-empty OUTPUT is refused
without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Sequence

import numpy as np

from signflax import storage
from signflax.data import sources
from signflax.data import tokenizer as tokenizer_lib

PROG = "signflax prepare-data"


class _Parser(argparse.ArgumentParser):
  """argparse with one-line errors (raised, reported by main with exit code 2)."""

  def error(self, message):
    raise ValueError(message)


def _parser() -> argparse.ArgumentParser:
  p = _Parser(prog=PROG, description="Tokenize text files into ArrayRecord shards for training.")
  p.add_argument("--input", nargs="+", required=True,
                 help="text files, globs ('**' ok) or directories; or 'stdlib'")
  p.add_argument("--output", required=True, help="output directory (must be empty or absent)")
  p.add_argument("--tokenizer", default="byte", help="'byte' or a Hugging Face tokenizer.json")
  p.add_argument("--eval-fraction", type=float, default=0.05,
                 help="share held out for eval, in (0, 1)")
  p.add_argument("--split-by", choices=sources.SPLIT_BY, default="auto",
                 help="file: whole files by path hash; tail: the end of every file; "
                      "auto: file for stdlib, tail for text")
  p.add_argument("--max-bytes", type=int, default=0, help="cap on raw text bytes read (0 = all)")
  p.add_argument("--chunk-tokens", type=int, default=4096, help="tokens per record")
  p.add_argument("--records-per-shard", type=int, default=4096, help="records per shard file")
  p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
  return p


def _check_args(args) -> None:
  if not 0.0 < args.eval_fraction < 1.0:
    raise ValueError(f"--eval-fraction: must be in (0, 1), got {args.eval_fraction}")
  for name in ("chunk_tokens", "records_per_shard"):
    if getattr(args, name) < 1:
      raise ValueError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(args, name)}")
  if args.max_bytes < 0:
    raise ValueError(f"--max-bytes: must be >= 0 (0 = all), got {args.max_bytes}")
  if storage.is_remote(args.output):
    error = storage.access_error(args.output)
    if error:
      raise ValueError(error.replace("--workdir", "--output", 1))
    remote = storage.path(args.output)
    if remote.is_dir() and any(remote.iterdir()) and not args.overwrite:
      raise ValueError(f"--output: {args.output!r} is not empty; pass --overwrite to replace it")
    return
  out = os.path.abspath(os.path.expanduser(args.output))
  if os.path.exists(out) and not os.path.isdir(out):
    raise ValueError(f"--output: {args.output!r} exists and is not a directory")
  if os.path.isdir(out) and os.listdir(out) and not args.overwrite:
    raise ValueError(f"--output: {args.output!r} is not empty; pass --overwrite to replace it")


def _split_plan(args, out: str) -> tuple[str, dict[str, tuple[sources.Doc, ...]]]:
  """(source name, docs per split) exactly as the in-memory sources pick them."""
  if args.input == ["stdlib"]:
    source, corpus = "stdlib", sources.list_corpus("stdlib")
  else:
    source, corpus = "text", sources.list_corpus("text", ",".join(args.input), field="--input")
  inside = [] if storage.is_remote(out) else [
      p for p in corpus.paths if os.path.commonpath([out, p]) == out]
  if inside:  # --overwrite would delete them
    raise ValueError(f"--output: {args.output!r} holds input file {inside[0]!r}; "
                     "write the shards somewhere else")
  if corpus.num_bytes == 0:
    raise ValueError(f"--input: the corpus is empty (0 bytes in {len(corpus.paths)} files)")
  split_by = sources.resolve_split_by(source, args.split_by)
  plan = {}
  for split in sources.SPLITS:
    plan[split] = sources.split_docs(corpus, split, eval_fraction=args.eval_fraction,
                                     split_by=split_by, max_bytes=args.max_bytes)
    if not plan[split]:
      hint = ("add files or use --split-by tail" if split_by == "file" else
              "add text, change --eval-fraction or raise --max-bytes")
      raise ValueError(f"--input: no text falls in the {split} split (split_by={split_by}, "
                       f"eval_fraction={args.eval_fraction}, {corpus.num_bytes} bytes); {hint}")
  return source, plan


def write_split(docs: Sequence[sources.Doc], tok: tokenizer_lib.Tokenizer, out_dir: str,
                split: str, *, chunk_tokens: int, records_per_shard: int) -> dict:
  """Streams ``docs`` through the tokenizer into ``{split}-NNNNN.array_record`` shards."""
  from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
  dtype = tokenizer_lib.token_dtype(tok.vocab_size).newbyteorder("<")
  counts = np.zeros(tok.vocab_size, np.int64)
  files, writer, records, tokens = [], None, 0, 0
  pending, pending_len = [], 0
  eos = np.array([tok.eos_id], np.int32)

  def write(chunk: np.ndarray):
    nonlocal writer, records
    if records % records_per_shard == 0:
      if writer is not None:
        writer.close()
      files.append(f"{split}-{len(files):05d}.array_record")
      writer = array_record_module.ArrayRecordWriter(os.path.join(out_dir, files[-1]),
                                                     "group_size:1")
    writer.write(chunk.astype(dtype).tobytes())
    records += 1

  for doc_tokens in sources.iter_doc_tokens(docs, tok):
    piece = np.concatenate([doc_tokens.astype(np.int32), eos])
    counts += np.bincount(piece, minlength=tok.vocab_size)
    tokens += len(piece)
    pending.append(piece)
    pending_len += len(piece)
    if pending_len >= chunk_tokens:
      stream = np.concatenate(pending)
      whole = len(stream) // chunk_tokens * chunk_tokens
      for start in range(0, whole, chunk_tokens):
        write(stream[start:start + chunk_tokens])
      pending, pending_len = [stream[whole:]], len(stream) - whole
  if pending_len:
    write(np.concatenate(pending))
  if writer is not None:
    writer.close()
  np.save(os.path.join(out_dir, f"unigram_{split}.npy"), counts)
  return {"files": files, "tokens": tokens, "records": records, "documents": len(docs),
          "bytes": sources.docs_bytes(docs), "unigram_counts": f"unigram_{split}.npy"}


def _upload(local: str, out) -> None:
  """Uploads the finished shards to object storage, the manifest last: a reader that
  finds the manifest finds every shard it names. ``--overwrite`` removes the old
  contents first (object storage has no atomic directory swap)."""
  if out.exists():
    out.rmtree()
  names = sorted(os.listdir(local), key=lambda n: n == sources.MANIFEST)
  out.mkdir(parents=True, exist_ok=True)
  for name in names:
    with open(os.path.join(local, name), "rb") as f:
      (out / name).write_bytes(f.read())


def prepare(args) -> dict:
  """Writes the shards and manifest of ``args`` into ``args.output``; returns the manifest."""
  _check_args(args)
  tok = tokenizer_lib.get_tokenizer(args.tokenizer, field="--tokenizer")
  remote = storage.is_remote(args.output)
  out = args.output if remote else os.path.abspath(os.path.expanduser(args.output))
  source, plan = _split_plan(args, out)
  # Object storage: the shards are written to a local directory and uploaded when done.
  parent = tempfile.gettempdir() if remote else os.path.dirname(out)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out.rstrip('/'))}.tmp-", dir=parent)
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private
  try:
    manifest = {
        "format": "signflax-tokens", "version": 1, "source": source,
        "input": list(args.input), "tokenizer": args.tokenizer,
        "tokenizer_fingerprint": tokenizer_lib.tokenizer_fingerprint(args.tokenizer),
        "vocab_size": tok.vocab_size, "eos_id": tok.eos_id, "bos_id": tok.bos_id,
        "dtype": tokenizer_lib.token_dtype(tok.vocab_size).newbyteorder("<").str,
        "chunk_tokens": args.chunk_tokens, "eval_fraction": args.eval_fraction,
        "split_by": sources.resolve_split_by(source, args.split_by),
        "max_bytes": args.max_bytes, "splits": {},
    }
    for split, docs in plan.items():
      manifest["splits"][split] = write_split(docs, tok, tmp, split,
                                              chunk_tokens=args.chunk_tokens,
                                              records_per_shard=args.records_per_shard)
    with open(os.path.join(tmp, sources.MANIFEST), "w") as f:
      json.dump(manifest, f, indent=2)
    if remote:
      _upload(tmp, storage.path(out))
      shutil.rmtree(tmp)
    elif os.path.isdir(out):  # empty, or --overwrite: swap in the finished directory
      old = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old-", dir=parent)
      os.rename(out, os.path.join(old, "d"))
      os.rename(tmp, out)
      shutil.rmtree(old)
    else:
      os.rename(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return manifest


def main(argv: Sequence[str] | None = None) -> int:
  """Entry point of ``signflax prepare-data``; returns the exit code."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if any(a in ("-h", "--help") for a in argv):
    _parser().print_help()
    return 0
  start = time.perf_counter()
  try:
    args = _parser().parse_args(argv)
    manifest = prepare(args)
  except ValueError as e:
    print(f"{PROG}: error: {e}", file=sys.stderr)
    return 2
  for split, info in manifest["splits"].items():
    print(f"{split}: {info['documents']} documents, {info['bytes']} bytes -> {info['tokens']} "
          f"tokens in {len(info['files'])} shard(s)")
  print(f"wrote {args.output} (vocab_size {manifest['vocab_size']}) in "
        f"{time.perf_counter() - start:.1f} s")
  return 0
