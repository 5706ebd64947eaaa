"""What checkpoint checksums and the persistent compilation cache cost and save.

    python benchmarks/checkpoint_bench.py                         # tiny and llama_100m states
    python benchmarks/checkpoint_bench.py --configs tiny --compile tiny,gpt2_124m
    python benchmarks/checkpoint_bench.py --configs tiny --root gs://bucket/bench   # on GCS

Checksums: builds the train state of each config (AdamW, one CPU device), then times a
save (``Checkpointer.save`` + ``close``: the whole write) and a restore (read + verify)
with and without per-array checksums; median of ``--repeats``. ``--root`` puts the
checkpoints there instead of a local temporary directory (``gs://...``: Cloud Storage,
or an emulator named by ``STORAGE_EMULATOR_HOST``). Compile: compiles the
train step of each ``--compile`` config in fresh processes, without the cache, with an
empty cache (a first run) and with a warm one (every restart after it). Prints tables
and writes JSON (``--json``); nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _run(name: str):
  """``setup`` of configs/lm/<name> on one device (the benchmark's own process)."""
  from signflax.config_io import load_config_file  # noqa: PLC0415
  from signflax.train import setup as setup_lib  # noqa: PLC0415
  config = load_config_file(f"lm/{name}")
  with config.unlocked():
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 1, 1
  return setup_lib.setup(config, vocab_size=config.model.vocab_size or 258)


def _bench_dir(root: str, i: int):
  """A fresh checkpoint root: a local temporary directory, or ``root/run-<pid>-<i>``."""
  from signflax import storage  # noqa: PLC0415
  if not root:
    return storage.path(tempfile.mkdtemp(prefix="ckpt_bench_"))
  return storage.path(root) / f"run-{os.getpid()}-{i}"


def checksum_rows(names, repeats: int, root: str = "") -> list[dict]:
  import jax  # noqa: PLC0415
  from signflax import storage  # noqa: PLC0415
  from signflax.train import checkpoint as checkpoint_lib  # noqa: PLC0415
  rows = []
  for name in names:
    run = _run(name)
    state, abstract = run.init_state(), run.abstract_state
    nbytes = checkpoint_lib.tree_nbytes(state)
    checkpoint_lib.checksums(state)                          # compile the checksum once
    t0 = time.perf_counter()
    for _ in range(repeats):
      checkpoint_lib.checksums(state)
    checksum_s = (time.perf_counter() - t0) / repeats
    for checksum in (False, True):
      save, restore = [], []
      for i in range(repeats):
        directory = _bench_dir(root, 2 * i + checksum)
        try:
          ckpt = checkpoint_lib.Checkpointer(directory / "c", checksum=checksum)
          t0 = time.perf_counter()
          ckpt.save(1, state, {"data": {}})
          ckpt.close()
          save.append(time.perf_counter() - t0)
          ckpt = checkpoint_lib.Checkpointer(directory / "c", checksum=checksum)
          t0 = time.perf_counter()
          restored = ckpt.restore(1, abstract)
          jax.block_until_ready(restored.state)
          restore.append(time.perf_counter() - t0)
          ckpt.close()
        finally:
          if directory.exists():
            storage.remove(directory)
      rows.append({"config": name, "root": root or "local", "state_gb": nbytes / 1e9,
                   "checksum": checksum,
                   "save_s": statistics.median(save), "restore_s": statistics.median(restore),
                   "checksum_pass_s": checksum_s})
    del state
  return rows


def _compile_child(name: str, cache: str) -> None:
  """Compiles the config's train step once (in this fresh process) and prints seconds."""
  import jax  # noqa: PLC0415
  from signflax.train import recovery  # noqa: PLC0415
  recovery.enable_compilation_cache(cache or None)
  run = _run(name)
  with jax.set_mesh(run.mesh):
    t0 = time.perf_counter()
    run.train_step.lower(run.abstract_state, run.abstract_batch()).compile()
    print(json.dumps({"compile_s": time.perf_counter() - t0}))


def compile_rows(names) -> list[dict]:
  rows = []
  for name in names:
    cache = tempfile.mkdtemp(prefix="jax_cache_bench_")
    try:
      for label, cache_dir in (("no cache", ""), ("empty cache", cache), ("warm cache", cache)):
        out = subprocess.run([sys.executable, __file__, "--compile-child", name, cache_dir],
                             capture_output=True, text=True, check=True, cwd=ROOT)
        seconds = json.loads(out.stdout.strip().splitlines()[-1])["compile_s"]
        rows.append({"config": name, "cache": label, "compile_s": seconds})
        print(f"  {name} {label}: {seconds:.2f}s", file=sys.stderr, flush=True)
    finally:
      shutil.rmtree(cache, ignore_errors=True)
  return rows


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--configs", default="tiny,llama_100m",
                      help="packaged lm/<name> configs whose states to checksum ('' = none)")
  parser.add_argument("--compile", default="", help="configs to time compiling, e.g. tiny,gpt2_124m")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--root", default="", help="where checkpoints go (default: a local "
                      "temporary directory; gs://bucket/prefix for Cloud Storage)")
  parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" /
                                            "checkpoint_bench_cpu.json"))
  parser.add_argument("--compile-child", nargs=2, metavar=("CONFIG", "CACHE"),
                      help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.compile_child:
    _compile_child(*args.compile_child)
    return 0
  import jax  # noqa: PLC0415
  result = {"device": jax.devices()[0].device_kind, "host": platform.processor() or
            platform.machine(), "cpus": os.cpu_count(),
            "load_average_1min": os.getloadavg()[0],   # a shared host skews every timing
            "checksum_rows": [], "compile_rows": []}
  names = [n for n in args.configs.split(",") if n]
  if names:
    from signflax import storage  # noqa: PLC0415
    error = storage.access_error(args.root) if storage.is_remote(args.root) else None
    if error:   # access_error also points tensorstore at an emulator, if one is set
      parser.exit(2, f"checkpoint_bench: {error.replace('--workdir', '--root', 1)}\n")
    result["checksum_rows"] = checksum_rows(names, args.repeats, args.root)
    print(f"checkpoints in {args.root or 'a local temporary directory'}")
    print(f"{'config':<12} {'state':>8} {'checksums':>9} {'save s':>8} {'restore s':>9} "
          f"{'checksum pass s':>15}")
    for r in result["checksum_rows"]:
      print(f"{r['config']:<12} {r['state_gb']:>6.3f}GB {'on' if r['checksum'] else 'off':>9} "
            f"{r['save_s']:>8.3f} {r['restore_s']:>9.3f} {r['checksum_pass_s']:>15.3f}")
  compile_names = [n for n in args.compile.split(",") if n]
  if compile_names:
    result["compile_rows"] = compile_rows(compile_names)
    print(f"\n{'config':<12} {'cache':<12} {'compile s':>9}")
    for r in result["compile_rows"]:
      print(f"{r['config']:<12} {r['cache']:<12} {r['compile_s']:>9.2f}")
  if args.json:
    path = pathlib.Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
