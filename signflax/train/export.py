"""`signflax export`: a checkpoint's parameters as one ``.npz`` file, for use outside JAX.

  signflax export --workdir runs/tiny [--step 1000] --output params.npz
  signflax export --workdir runs/tiny --format hf --output hf/tiny   # signflax.train.hf

Each array is stored under its parameter path joined by ``/`` (``embed``,
``layers/attn/q``, ``final_norm/scale``, ...) in its saved dtype (bfloat16 and
other non-numpy floats as float32), layer axis first, kernels ``(fan_in,
fan_out)``; read it back with ``numpy.load`` (``unflatten`` rebuilds the tree). Any device
count works (see ``signflax.train.params.load_params``). The file is written beside its
final name and renamed into place, so an existing file is replaced only by a
complete one.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
from typing import Any, Sequence

import jax
import numpy as np

PROG = "signflax export"


class _Parser(argparse.ArgumentParser):
  """argparse with one-line errors (raised, reported by main with exit code 2)."""

  def error(self, message):
    raise ValueError(message)


def _parser() -> argparse.ArgumentParser:
  p = _Parser(prog=PROG, description="Write a checkpoint's parameters to an .npz file.")
  p.add_argument("--workdir", required=True,
                 help="a training workdir, its checkpoints/ directory or one step directory")
  p.add_argument("--step", type=int, default=None, help="which step (default: the latest)")
  p.add_argument("--output", required=True,
                 help="the .npz file to write (--format hf: a new directory)")
  p.add_argument("--format", choices=("npz", "hf"), default="npz",
                 help="npz (default) or hf: a Hugging Face LlamaForCausalLM directory "
                      "(config.json, model.safetensors, tokenizer; signflax.train.hf)")
  return p


def flatten(params: Any) -> dict[str, np.ndarray]:
  """``{"layers/attn/q": array, ...}``: every leaf under its '/'-joined path."""
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    leaf = np.asarray(leaf)
    if leaf.dtype.kind == "V":  # bfloat16 and other ml_dtypes: plain numpy would see raw bytes
      leaf = leaf.astype(np.float32)
    flat[jax.tree_util.keystr(path, simple=True, separator="/")] = leaf
  return flat


def unflatten(flat: dict[str, np.ndarray]) -> dict:
  """The nested dict ``flatten`` came from (for an ``np.load``-ed file)."""
  params: dict = {}
  for name, value in flat.items():
    *parents, leaf = name.split("/")
    node = params
    for key in parents:
      node = node.setdefault(key, {})
    node[leaf] = np.asarray(value)
  return params


def _open_output(output: str) -> tuple[pathlib.Path, int, str]:
  """``(path, fd, temporary sibling)`` for ``output``, or ValueError before anything is read."""
  path = pathlib.Path(output).expanduser()
  if path.suffix != ".npz":
    raise ValueError(f"--output: {output!r} must end in .npz")
  if path.is_dir():
    raise ValueError(f"--output: {output!r} is a directory")
  parent = path.parent
  if not parent.is_dir():
    raise ValueError(f"--output: {str(parent)!r} is not a directory")
  try:  # the real test of writability (os.access says yes to root everywhere)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=parent)
  except OSError as e:
    raise ValueError(f"--output: cannot write in {str(parent)!r} ({e.strerror})") from e
  return path, fd, tmp


def _write_npz(flat: dict[str, np.ndarray], path: pathlib.Path, fd: int, tmp: str) -> None:
  """Writes ``flat`` into the open temporary ``tmp``, then renames it to ``path``."""
  try:
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp's 0600 would outlive the rename
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **flat)
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def main(argv: Sequence[str] | None = None) -> int:
  tmp = None
  try:
    args = _parser().parse_args(argv)
    if args.format == "hf":
      from signflax.train import hf  # pylint: disable=import-outside-toplevel
      print(hf.export(args.workdir, args.step, args.output))
      return 0
    output, fd, tmp = _open_output(args.output)
    from signflax.train import params as params_lib  # Orbax loads only once the arguments are good
    params, step = params_lib.read_params(args.workdir, args.step)
  except ValueError as e:
    if tmp is not None:
      os.close(fd)
      os.unlink(tmp)
    message = str(e)
    for argument, flag in (("workdir_or_step_dir:", "--workdir:"), ("step:", "--step:")):
      if message.startswith(argument):
        message = flag + message[len(argument):]
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2
  flat = flatten(params)
  _write_npz(flat, output, fd, tmp)
  count = sum(x.size for x in flat.values())
  nbytes = sum(x.nbytes for x in flat.values())
  print(f"wrote {len(flat)} arrays ({count / 1e6:.2f}M parameters, {nbytes / 2**20:.1f} MiB) "
        f"from step {step if step is not None else '?'} to {output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
