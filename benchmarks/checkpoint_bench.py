"""What checkpoint checksums and the persistent compilation cache cost and save.

    python benchmarks/checkpoint_bench.py                         # tiny and llama_100m states
    python benchmarks/checkpoint_bench.py --configs tiny --compile tiny,gpt2_124m

Checksums: builds the train state of each config (AdamW, one CPU device), then times a
save (``Checkpointer.save`` + ``close``: the whole write) and a restore (read + verify)
with and without per-array checksums; median of ``--repeats``. Compile: compiles the
train step of each ``--compile`` config in fresh processes, without the cache, with an
empty cache (a first run) and with a warm one (every restart after it). Prints tables
and writes JSON (``--json``); nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _config(name: str):
  from signflax.cli import load_config_file  # noqa: PLC0415
  return load_config_file(ROOT / "configs" / "lm" / f"{name}.py")


def _state(name: str):
  """The config's sharded train state on one device, and its abstract twin."""
  import jax  # noqa: PLC0415
  from signflax import model as model_lib  # noqa: PLC0415
  from signflax import parallel  # noqa: PLC0415
  from signflax.train import optimizer as optimizer_lib  # noqa: PLC0415
  from signflax.train import step as step_lib  # noqa: PLC0415
  from signflax.train import trainer  # noqa: PLC0415
  config = _config(name)
  with config.unlocked():
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 1, 1
  cfg = trainer.model_config(config, config.model.vocab_size or 258)
  mesh = parallel.make_mesh(config.mesh)
  _, _, param_axes = model_lib.abstract_model(cfg)
  tx, _ = optimizer_lib.make_optimizer(config.optimizer, config.train.steps, param_axes)
  with jax.set_mesh(mesh):
    state, _ = step_lib.create_sharded_state(cfg, tx, mesh, param_axes, 0)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          state)
  return state, abstract


def checksum_rows(names, repeats: int) -> list[dict]:
  import jax  # noqa: PLC0415
  from signflax.train import checkpoint as checkpoint_lib  # noqa: PLC0415
  rows = []
  for name in names:
    state, abstract = _state(name)
    nbytes = checkpoint_lib.tree_nbytes(state)
    checkpoint_lib.checksums(state)                          # compile the checksum once
    t0 = time.perf_counter()
    for _ in range(repeats):
      checkpoint_lib.checksums(state)
    checksum_s = (time.perf_counter() - t0) / repeats
    for checksum in (False, True):
      save, restore = [], []
      for _ in range(repeats):
        directory = pathlib.Path(tempfile.mkdtemp(prefix="ckpt_bench_"))
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
          shutil.rmtree(directory, ignore_errors=True)
      rows.append({"config": name, "state_gb": nbytes / 1e9, "checksum": checksum,
                   "save_s": statistics.median(save), "restore_s": statistics.median(restore),
                   "checksum_pass_s": checksum_s})
    del state
  return rows


def _compile_child(name: str, cache: str) -> None:
  """Compiles the config's train step once (in this fresh process) and prints seconds."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  from signflax import model as model_lib  # noqa: PLC0415
  from signflax import parallel  # noqa: PLC0415
  from signflax.train import optimizer as optimizer_lib  # noqa: PLC0415
  from signflax.train import recovery  # noqa: PLC0415
  from signflax.train import step as step_lib  # noqa: PLC0415
  from signflax.train import trainer  # noqa: PLC0415
  recovery.enable_compilation_cache(cache or None)
  config = _config(name)
  with config.unlocked():
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 1, 1
  t = config.train
  cfg = trainer.model_config(config, config.model.vocab_size or 258)
  mesh = parallel.make_mesh(config.mesh)
  graphdef, _, param_axes = model_lib.abstract_model(cfg)
  tx, schedule = optimizer_lib.make_optimizer(config.optimizer, t.steps, param_axes)
  with jax.set_mesh(mesh):
    shardings = step_lib.state_shardings(cfg, tx, mesh, param_axes)
    abstract = trainer._abstract_state(cfg, tx, shardings)  # noqa: SLF001
    batch = {k: jax.ShapeDtypeStruct((t.global_batch_size // t.grad_accum * t.grad_accum,
                                      t.seq_len), jnp.int32,
                                     sharding=parallel.batch_sharding(mesh))
             for k in ("inputs", "targets")}
    step = step_lib.jit_train_step(
        step_lib.make_train_step(graphdef, tx, schedule, grad_accum=t.grad_accum,
                                 noise_stats=t.noise_stats,
                                 loss_chunk_len=t.get("loss_chunk_len", 0)), mesh, shardings)
    t0 = time.perf_counter()
    step.lower(abstract, batch).compile()
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
    finally:
      shutil.rmtree(cache, ignore_errors=True)
  return rows


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--configs", default="tiny,llama_100m",
                      help="configs/lm/<name>.py states to checksum ('' = none)")
  parser.add_argument("--compile", default="", help="configs to time compiling, e.g. tiny,gpt2_124m")
  parser.add_argument("--repeats", type=int, default=3)
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
            platform.machine(), "checksum_rows": [], "compile_rows": []}
  names = [n for n in args.configs.split(",") if n]
  if names:
    result["checksum_rows"] = checksum_rows(names, args.repeats)
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
