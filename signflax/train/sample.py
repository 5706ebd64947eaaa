"""``signflax sample``: text from a trained run, decoded with a KV cache.

    signflax sample --workdir runs/tiny --prompt 'def ' [--max-new-tokens 256]
        [--temperature 0.8] [--top-k K] [--top-p P] [--seed S] [--num-samples K]
        [--step N] [--config.mesh.fsdp=8 ...]

The prompt follows the document separator (EOS), as every document does in
training. ``--num-samples K`` decodes K rows at once (one batch, independent
draws). Prefill and the sampling loop are one jitted program per shape
(``signflax.model.decode.generate``), on the run's mesh (``--config.mesh.*``
overrides as in training) with the parameters sharded as in training.
Temperature 0 is greedy; the same seed gives the same text. stdout gets the
text (prompt + continuation, samples separated by a ``---`` line); stderr gets
one status line per sample (tokens, why it stopped: eos, max_new_tokens or
context) and the decoding speed.
"""

from __future__ import annotations

import argparse
import math
import pathlib
import sys
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from signflax import config_io
from signflax.model import decode
from signflax.outcomes import BadInput, UsageError

PROG = "signflax sample"
SEPARATOR = "---"


class _Parser(argparse.ArgumentParser):
  def error(self, message):
    raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
  p = _Parser(prog=PROG, description="Sample text from a trained run with a KV cache.")
  p.add_argument("--workdir", required=True, help="the training workdir")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  prompt = p.add_mutually_exclusive_group(required=True)
  prompt.add_argument("--prompt", help="the text to continue ('' = a new document)")
  prompt.add_argument("--prompt-file", help="a UTF-8 file holding the prompt")
  p.add_argument("--max-new-tokens", type=int, default=256)
  p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
  p.add_argument("--top-k", type=int, default=0, help="keep the k likeliest tokens (0 = all)")
  p.add_argument("--top-p", type=float, default=1.0, help="nucleus mass in (0, 1]")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--num-samples", type=int, default=1)
  return p


def parse_args(argv: Sequence[str]):
  """``(args, --config.mesh.* overrides)``; UsageError for anything out of range."""
  overrides, rest = config_io.split_overrides(argv)
  args = _parser().parse_args(rest)
  if not (math.isfinite(args.temperature) and args.temperature >= 0):
    raise UsageError(f"--temperature: must be a finite number >= 0 (0 = greedy), got "
                     f"{args.temperature}")
  if not 0 < args.top_p <= 1:
    raise UsageError(f"--top-p: must be in (0, 1], got {args.top_p}")
  for flag, value, low in (("--top-k", args.top_k, 0), ("--max-new-tokens", args.max_new_tokens, 1),
                           ("--num-samples", args.num_samples, 1), ("--seed", args.seed, 0)):
    if value < low:
      raise UsageError(f"{flag}: must be an integer >= {low}, got {value}")
  if args.prompt_file is not None:
    try:
      args.prompt = pathlib.Path(args.prompt_file).expanduser().read_text("utf-8")
    except (OSError, UnicodeDecodeError) as e:
      raise UsageError(f"--prompt-file: cannot read {args.prompt_file!r} ({e})") from None
  return args, overrides


def prompt_tokens(tokenizer, text: str, context: int) -> np.ndarray:
  """The document separator then ``text``'s tokens; BadInput if they exceed ``context``."""
  tokens = np.concatenate([[tokenizer.eos_id], tokenizer.encode(text)]).astype(np.int32)
  if len(tokens) > context:
    raise BadInput(f"--prompt: {len(tokens)} tokens (with the document separator) are longer "
                   f"than the model's context of {context} tokens; shorten it")
  return tokens


def continuation(row: np.ndarray, num_steps: int, eos_id: int) -> tuple[np.ndarray, bool]:
  """``(the row's tokens up to its EOS, whether it reached EOS)``."""
  row = row[:num_steps]
  ends = np.flatnonzero(row == eos_id)
  return (row[:ends[0]], True) if len(ends) else (row, False)


def main(argv: Sequence[str] | None = None) -> int:
  args, overrides = parse_args(list(sys.argv[1:] if argv is None else argv))
  from signflax.train import trained as trained_lib  # pylint: disable=import-outside-toplevel
  # The prompt is checked against the context before any checkpoint is read.
  config = trained_lib.run_config(args.workdir, overrides)
  cfg = trained_lib.model_config(config)
  tokenizer = _tokenizer(config)
  prompt = prompt_tokens(tokenizer, args.prompt, cfg.max_seq_len)
  run = trained_lib.load(args.workdir, args.step, overrides)

  batch = np.broadcast_to(prompt, (args.num_samples, len(prompt)))
  generate = jax.jit(lambda params, prompt, key, temperature, top_p: decode.generate(
      run.graphdef, params, prompt, key, max_new_tokens=args.max_new_tokens,
      eos_id=tokenizer.eos_id, temperature=temperature, top_k=args.top_k, top_p=top_p,
      vocab_limit=tokenizer.vocab_size))
  inputs = (run.params, jnp.asarray(batch), jax.random.key(args.seed),
            jnp.float32(args.temperature), jnp.float32(args.top_p))
  with jax.set_mesh(run.mesh):
    start = time.monotonic()
    compiled = generate.lower(*inputs).compile()
    compile_s = time.monotonic() - start
    start = time.monotonic()
    out = jax.device_get(compiled(*inputs))
    decode_s = time.monotonic() - start
  num_steps = int(out.num_steps)
  global_reason = decode.STOP_REASONS[int(out.stop_reason)]
  texts, statuses = [], []
  generated = num_steps * args.num_samples  # decoded, EOS-padded rows included
  for i, row in enumerate(np.asarray(out.tokens)):
    tokens, at_eos = continuation(row, num_steps, tokenizer.eos_id)
    texts.append(args.prompt + tokenizer.decode(tokens))
    reason = "eos" if at_eos else global_reason
    statuses.append(f"sample {i + 1}/{args.num_samples}: {len(tokens)} tokens, stopped at "
                    f"{reason}" + (f" (the model's context of {cfg.max_seq_len} tokens)"
                                   if reason == "context" else ""))
  sys.stdout.write(f"\n{SEPARATOR}\n".join(texts) + "\n")
  sys.stdout.flush()
  for line in statuses:
    _status(line)
  _status(f"{generated} tokens in {decode_s:.2f}s ({generated / max(decode_s, 1e-9):,.0f} "
          f"tokens/s; compile {compile_s:.1f}s not counted) | step {run.step} of {args.workdir} "
          f"| mesh {dict(run.mesh.shape)}")
  return 0


def _tokenizer(config):
  from signflax import data as data_lib  # pylint: disable=import-outside-toplevel
  try:
    return data_lib.build_tokenizer(config.data)
  except ValueError as e:
    raise BadInput(str(e)) from e


def _status(line: str) -> None:
  print(line, file=sys.stderr, flush=True)


if __name__ == "__main__":
  sys.exit(main())
