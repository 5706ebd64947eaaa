"""Compile the real train step for a TPU topology on any host; fit it in HBM; estimate it.

``compile_report(config, "v5e:4x4")`` builds the run with ``signflax.train.setup``
on the topology's compile-only devices (``chips.topology_devices``), compiles the
train step (and the eval step) with the TPU compiler in libtpu, and returns one
JSON-able dict: the compiler's HBM per chip against the chip's capacity, step
FLOPs, the collectives of the compiled program by mesh axis, and a roofline
estimate of the step time. Nothing runs on a TPU; every time is **estimated**.

The roofline (``estimate``), per step:

* compute: executed FLOPs / (chips x peak bf16). Executed FLOPs are the model's
  (``model.flops_per_token`` x tokens: 6 N + attention, PaLM's count) times 4/3
  under ``remat=full`` (the forward pass runs twice);
* memory: the compiler's bytes accessed per chip / HBM bandwidth;
* collectives: the bytes each chip sends (``hlo.collectives``, loop trips
  included) / the bandwidth of one torus axis (ICI) or the chip's share of the
  data-center network (DCN, for the axis that spans slices);
* step time = the largest of the three (perfect overlap); tokens/s and MFU follow.

XLA's cost analysis counts a loop body once, so with scanned layers (and the
chunked loss, and gradient accumulation) its FLOPs and bytes cover one trip of
each loop. ``compiler_flops_check`` compares its FLOPs with the model's formula
applied to one trip of each loop (~1.0 when both agree); the compiler's bytes
are scaled up by the same loop factor.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pathlib
import re
import time
from typing import Any, Callable, Sequence

import numpy as np

from signflax import model as model_lib
from signflax import outcomes
from signflax import parallel
from signflax.tpu import chips as chips_lib
from signflax.tpu import hlo as hlo_lib

GIB = 2.0 ** 30
REMAT_FLOPS = {"none": 1.0, "dots": 1.0, "dots_no_batch": 1.0, "full": 4.0 / 3.0}
ASSUMPTIONS = ("estimated, not measured: step time = max(compute, HBM traffic, collectives), "
               "perfect overlap; compute at peak bf16 with remat=full recomputing the forward "
               "pass; HBM bytes from the compiler's cost analysis scaled by loop trips; "
               "collective bytes per chip from the compiled program over one torus axis' ICI "
               "(chip ICI / ports) or the chip's DCN share")
# Knobs named when a config does not fit
FIT_KNOBS = ("--config.model.remat=full", "a larger mesh.fsdp", "a smaller "
             "train.global_batch_size (or a larger train.grad_accum)",
             "train.loss_chunk_len (e.g. 256)")


# ---------------------------------------------------------------------------- config


def model_config(config) -> model_lib.TransformerConfig:
  """``config.model`` as a TransformerConfig; vocab_size None follows ``config.data``'s
  tokenizer, padded to a multiple of 128 as the trainer does."""
  from signflax.train import setup as setup_lib
  return setup_lib.transformer_config(config)


def validate(config, num_chips: int, slices: int = 1) -> tuple[int, int, int]:
  """Every check that needs no compiler; returns the mesh shape (data, fsdp, tensor).

  Raises ``BadInput`` (one line naming the field) for a bad config, a mesh that
  does not divide the chips, or a batch the mesh cannot split.
  """
  from signflax.train import optimizer as optimizer_lib
  from signflax.train import schema
  try:
    missing = [g for g in schema.GROUPS if g not in config]
    if missing:
      raise ValueError(f"config: missing group(s) {', '.join(missing)}")
    optimizer_lib.check_keyword_groups(config.optimizer)
    schema.SCHEMA.check(config)
    optimizer_lib.check_optimizer(config.optimizer, config.train.steps)
    cfg = model_config(config)
    cfg.check()
    shape = parallel.resolve_mesh_shape(config.mesh, num_chips)
  except outcomes.BadInput:
    raise
  except ValueError as e:
    raise outcomes.BadInput(outcomes.one_line(e)) from None
  t = config.train
  if t.seq_len > cfg.max_seq_len:
    raise outcomes.BadInput(f"config.train.seq_len: {t.seq_len} is longer than the model's "
                            f"context config.model.max_seq_len={cfg.max_seq_len}")
  if cfg.attention_impl == "splash" and t.seq_len % 128:
    raise outcomes.BadInput(f"config.model.attention_impl: 'splash' needs config.train.seq_len "
                            f"a multiple of 128, got {t.seq_len}")
  data, fsdp, _ = shape
  if data % slices:
    raise outcomes.BadInput(f"config.mesh.data: {data} must be a multiple of --slices={slices} "
                            f"(the data axis spans the slices)")
  micro = t.global_batch_size // t.grad_accum
  if micro % (data * fsdp):
    raise outcomes.BadInput(
        f"config.train.global_batch_size: {t.global_batch_size} (microbatch {micro} with "
        f"grad_accum={t.grad_accum}) is not divisible by data*fsdp={data * fsdp} of mesh "
        f"{dict(zip(parallel.MESH_AXES, shape))} on {num_chips} chips")
  return shape


def build_mesh(shape: Sequence[int], devices: list, slices: int = 1):
  """A (data, fsdp, tensor) mesh over compile-only devices; with several slices the
  data axis is outermost over the slices (DCN) and the rest lies within each slice."""
  from jax.experimental import mesh_utils
  from jax.sharding import AxisType, Mesh
  if slices == 1:
    return parallel.make_mesh(dict(zip(parallel.MESH_AXES, shape)), devices)
  data, fsdp, tensor = shape
  grid = mesh_utils.create_hybrid_device_mesh((data // slices, fsdp, tensor), (slices, 1, 1),
                                              devices)
  return Mesh(grid, parallel.MESH_AXES, axis_types=(AxisType.Auto,) * 3)


# ---------------------------------------------------------------------------- compile


def _memory(stats) -> dict[str, float]:
  arguments, outputs = stats.argument_size_in_bytes, stats.output_size_in_bytes
  temporaries, alias = stats.temp_size_in_bytes, stats.alias_size_in_bytes
  code = stats.generated_code_size_in_bytes
  return dict(arguments=arguments / GIB, temporaries=temporaries / GIB, outputs=outputs / GIB,
              aliased=alias / GIB, generated_code=code / GIB,
              total=(arguments + outputs - alias + temporaries + code) / GIB)


_OOM = (re.compile(r"Used ([\d.]+)([KMGT]) of ([\d.]+)([KMGT]) hbm"),
        re.compile(r"([\d.]+)([KMGT]) of temporaries exceeds ([\d.]+)([KMGT])"))
_UNIT = {"K": 2.0 ** -20, "M": 2.0 ** -10, "G": 1.0, "T": 1024.0}


def parse_out_of_memory(message: str) -> tuple[float, float] | None:
  """(GiB needed, GiB there) from the TPU compiler's out-of-memory error, else None."""
  if "RESOURCE_EXHAUSTED" not in message and "out of memory" not in message.lower():
    return None
  for pattern in _OOM:
    if m := pattern.search(message):
      return float(m.group(1)) * _UNIT[m.group(2)], float(m.group(3)) * _UNIT[m.group(4)]
  return float("nan"), float("nan")


def _compile(fn, *args):
  """(compiled or None, seconds, (GiB needed, GiB there) when out of memory)."""
  start = time.perf_counter()
  try:
    compiled = fn.lower(*args).compile()
  except Exception as e:  # XlaRuntimeError: the compiler's own refusal
    oom = parse_out_of_memory(str(e))
    if oom is None:
      raise
    return None, time.perf_counter() - start, oom
  return compiled, time.perf_counter() - start, None


def compile_report(config, topology: str, *, slices: int = 1, with_eval: bool = True,
                   devices: list | None = None) -> dict[str, Any]:
  """Compiles ``config``'s train (and eval) step for ``topology``; see the module doc.

  Returns a JSON-able report whose ``fits`` says whether the TPU compiler placed
  the step in HBM. Raises ``BadInput`` for a bad topology or config (before
  compiling).
  """
  import jax
  from signflax.train import setup as setup_lib

  shape = validate(config, chips_lib.num_chips(topology, slices), slices)
  devices = devices or chips_lib.topology_devices(topology, slices)
  chip = chips_lib.chip_of(devices)
  cfg = model_config(config)
  mesh = build_mesh(shape, devices, slices)
  run = setup_lib.setup(config, vocab_size=cfg.vocab_size, noise_stats=False, mesh=mesh)
  t = config.train
  with jax.set_mesh(mesh):
    attention = model_lib.attention_implementation(run.model_config, t.seq_len)
    train, train_s, oom = _compile(run.train_step, run.abstract_state, run.abstract_batch())
    evaluation = None
    if train is not None and with_eval:
      evaluation, eval_s, _ = _compile(run.eval_step, run.abstract_state.params,
                                       run.abstract_batch())
  report: dict[str, Any] = dict(
      topology=topology, slices=slices, chip=chip.generation,
      device_kind=devices[0].device_kind, chips=len(devices),
      mesh=dict(zip(parallel.MESH_AXES, shape)), remat=cfg.remat, attention=attention,
      dtype=cfg.dtype, num_params=run.num_params, global_batch_size=t.global_batch_size,
      grad_accum=t.grad_accum, seq_len=t.seq_len, loss_chunk_len=t.loss_chunk_len,
      per_chip_batch=t.global_batch_size / len(devices),
      hbm_capacity_gib=chip.hbm_gib, compile_s=round(train_s, 2))
  report.update(flops_per_step=step_flops(cfg, t), flops_per_token=model_lib.flops_per_token(
      cfg, t.seq_len))
  if train is None:
    needed, there = oom
    report.update(fits=False, hbm_per_chip_gib=needed, hbm_limit_gib=there, collectives=[],
                  est_step_s=None, est_mfu=None, est_tokens_per_s=None)
    return report
  memory = _memory(train.memory_analysis())
  cost = _cost(train)
  text = train.as_text()
  records = hlo_lib.collectives(text, tuple(mesh.devices.shape), tuple(mesh.axis_names))
  report.update(fits=memory["total"] <= chip.hbm_gib, hbm_per_chip_gib=memory["total"],
                hbm_breakdown_gib=memory, loop_trip_counts=hlo_lib.loop_trip_counts(text))
  report.update(estimate(cfg, t, chip, len(devices), slices, cost, records, dict(mesh.shape)))
  if evaluation is not None:
    report.update(eval_compile_s=round(eval_s, 2),
                  eval_hbm_per_chip_gib=_memory(evaluation.memory_analysis())["total"])
  return report


def _cost(compiled) -> dict[str, float]:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {k: float(v) for k, v in (cost or {}).items()
          if k in ("flops", "bytes accessed", "transcendentals", "optimal_seconds")}


# ---------------------------------------------------------------------------- estimate


def step_flops(cfg: model_lib.TransformerConfig, train) -> float:
  """The model's FLOPs of one step, all chips: ``flops_per_token`` x global tokens."""
  return model_lib.flops_per_token(cfg, train.seq_len) * train.global_batch_size * train.seq_len


def one_trip_flops(cfg: model_lib.TransformerConfig, train, chips: int) -> float:
  """Per chip, the model's FLOPs with every loop counted once, as XLA's cost analysis
  counts them: one layer (of the scan), one loss chunk, one microbatch."""
  head = 6.0 * cfg.d_model * cfg.vocab_size
  layer = (model_lib.flops_per_token(cfg, train.seq_len) - head) / cfg.num_layers
  chunks = train.seq_len // train.loss_chunk_len if train.loss_chunk_len else 1
  tokens = train.global_batch_size * train.seq_len / chips / train.grad_accum
  return tokens * (layer * REMAT_FLOPS[cfg.remat] + head / chunks)


def estimate(cfg, train, chip: chips_lib.Chip, chips: int, slices: int, cost: dict,
             records: list[dict], mesh_shape: dict) -> dict[str, Any]:
  """The roofline step-time estimate (see the module doc) and the collectives table."""
  model_flops = step_flops(cfg, train)
  executed = model_flops * REMAT_FLOPS[cfg.remat]
  compute_s = executed / (chips * chip.peak_bf16_tflops * 1e12)
  one_trip = one_trip_flops(cfg, train, chips)
  loop_factor = executed / chips / one_trip
  hbm_bytes = cost.get("bytes accessed", 0.0) * loop_factor
  hbm_s = hbm_bytes / (chip.hbm_gbps * 1e9)
  table = []
  for row in hlo_lib.summarize(records):
    dcn = slices > 1 and "data" in row["axes"].split("+")
    if dcn:  # the slice-crossing share: a hierarchical collective sends 1/(chips per slice)
      group = math.prod(mesh_shape[a] for a in row["axes"].split("+"))
      seconds = row["bytes"] / max(group // slices, 1) / (chip.dcn_gbps * 1e9)
    else:
      seconds = row["bytes"] / (chip.ici_axis_gbps * 1e9)
    table.append(dict(row, link="dcn" if dcn else "ici", est_s=seconds))
  collective_s = sum(r["est_s"] for r in table)
  step_s = max(compute_s, hbm_s, collective_s)
  tokens = train.global_batch_size * train.seq_len
  return dict(
      collectives=table, compiler_flops=cost.get("flops"),
      compiler_flops_check=(cost["flops"] / one_trip) if cost.get("flops") else None,
      compiler_optimal_seconds=cost.get("optimal_seconds"),
      est_compute_s=compute_s, est_hbm_s=hbm_s, est_collective_s=collective_s,
      est_step_s=step_s, est_tokens_per_s=tokens / step_s,
      est_mfu=model_flops / (step_s * chips * chip.peak_bf16_tflops * 1e12),
      est_bound=max((("compute", compute_s), ("hbm", hbm_s), ("collectives", collective_s)),
                    key=lambda kv: kv[1])[0],
      assumptions=ASSUMPTIONS)


def no_fit_message(report: dict) -> str:
  """One line: GiB needed against GiB there, and the knobs that help."""
  needed, there = report["hbm_per_chip_gib"], report.get("hbm_limit_gib") or report[
      "hbm_capacity_gib"]
  return (f"does not fit: the train step needs {needed:.2f} GiB of HBM per chip, a "
          f"{report['chip']} chip has {there:.2f} GiB (mesh {report['mesh']}, remat "
          f"{report['remat']}, {report['per_chip_batch']:g} sequences of {report['seq_len']} "
          f"per chip); try {', '.join(FIT_KNOBS)}")


# ---------------------------------------------------------------------------- cache


def cache_key(config, topology: str, slices: int) -> str:
  import jax
  plain = json.loads(config.to_json_best_effort())
  for volatile in ("checkpoint", "distributed"):
    plain.pop(volatile, None)
  plain["train"].pop("seed", None)
  text = json.dumps(dict(config=plain, topology=topology, slices=slices, jax=jax.__version__,
                         libtpu=_libtpu_version()), sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:20]


def _libtpu_version() -> str:
  try:
    from importlib.metadata import version
    return version("libtpu")
  except Exception:
    return "?"


class Cache:
  """A JSON file of compile reports keyed by ``cache_key`` (None path: memory only)."""

  def __init__(self, path: str | pathlib.Path | None):
    self.path = pathlib.Path(path) if path else None
    self.entries = (json.loads(self.path.read_text())
                    if self.path and self.path.exists() else {})

  def report(self, config, topology: str, slices: int = 1, **kwargs) -> dict:
    key = cache_key(config, topology, slices)
    cached = key in self.entries
    if not cached:
      self.entries[key] = compile_report(config, topology, slices=slices, **kwargs)
      if self.path:  # merge with what other processes wrote meanwhile
        self.path.parent.mkdir(parents=True, exist_ok=True)
        on_disk = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.entries = {**on_disk, **self.entries}
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.entries, indent=1, default=float))
        tmp.replace(self.path)
    return dict(self.entries[key], cached=cached)


# ---------------------------------------------------------------------------- search


def state_bytes_per_chip(config, mesh_shape: Sequence[int]) -> float:
  """Parameters and optimizer state per chip, from their shapes and logical shardings."""
  import jax
  from jax.sharding import AbstractMesh, AxisType
  from signflax.train import optimizer as optimizer_lib
  from signflax.train import step as step_lib
  cfg = model_config(config)
  _, shapes, axes = model_lib.abstract_model(cfg)
  tx, _ = optimizer_lib.make_optimizer(config.optimizer, config.train.steps, axes)
  abstract = jax.eval_shape(lambda: step_lib.init_state(cfg, tx, jax.random.key(0)))
  mesh = AbstractMesh(tuple(mesh_shape), parallel.MESH_AXES, axis_types=(AxisType.Auto,) * 3)
  shardings = parallel.state_shardings(abstract, axes, mesh)
  return float(sum(math.prod(s.shard_shape(a.shape)) * a.dtype.itemsize
                   for a, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings))))


def activation_bytes_per_chip(cfg: model_lib.TransformerConfig, train, mesh_shape,
                              attention: str) -> float:
  """A rough upper estimate of the activations the backward pass keeps, per chip."""
  data, fsdp, tensor = mesh_shape
  seqs = train.global_batch_size / train.grad_accum / (data * fsdp)
  tokens, d, h = seqs * train.seq_len, cfg.d_model, cfg.hidden_dim
  act = 2 if cfg.compute_dtype != np.float32 else 4
  per_layer = {"none": 12 * d + 4 * h, "dots": 6 * d + 3 * h, "dots_no_batch": 6 * d + 3 * h,
               "full": d}[cfg.remat] * tokens * act / tensor
  scores = (0 if attention == "splash" or cfg.remat == "full"
            else 6 * seqs * cfg.num_heads * train.seq_len ** 2 / tensor)
  chunk = train.loss_chunk_len or train.seq_len
  logits = 3 * 4 * seqs * chunk * cfg.vocab_size / tensor
  recompute = (12 * d + 4 * h) * tokens * act / tensor  # one layer live in the backward pass
  return cfg.num_layers * (per_layer + scores) + logits + recompute


def candidate_meshes(num_chips: int, cfg: model_lib.TransformerConfig, micro_batch: int,
                     slices: int = 1) -> list[tuple[int, int, int]]:
  """(data, fsdp, tensor) over the chips: tensor in 1, 2, 4, 8 dividing both head
  counts; data*fsdp dividing the microbatch; data a multiple of the slices."""
  out = []
  for tensor in (1, 2, 4, 8):
    if num_chips % tensor or cfg.num_heads % tensor or cfg.kv_heads % tensor:
      continue
    rest = num_chips // tensor
    for data in (d for d in range(1, rest + 1) if rest % d == 0):
      fsdp = rest // data
      if micro_batch % (data * fsdp) or data % slices:
        continue
      out.append((data, fsdp, tensor))
  return out


def with_overrides(config, **overrides):
  """A copy of ``config`` with ``{dotted.field: value}`` set (no type checks)."""
  config = config.copy_and_resolve_references()
  for dotted, value in overrides.items():
    node, *path = config, *dotted.split(".")
    for name in path[:-1]:
      node = node[name]
    node[path[-1]] = value
  return config


def search(config, topology: str, *, slices: int = 1, cache: Cache | None = None,
           remats: Sequence[str] = ("none", "dots", "full"), max_compiles: int = 6,
           log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
  """The fastest (mesh, remat) that fits at the config's global batch, and the largest
  per-chip batch that fits with it (by bisection).

  Candidates whose analytic memory (``state_bytes_per_chip`` +
  ``activation_bytes_per_chip``) exceeds 1.5x HBM are dropped without compiling;
  the rest are compiled (at most ``max_compiles``) in the order of their paper
  step time (compute + parameter all-gathers), and the fastest by the compiled
  estimate wins.
  """
  cache = cache or Cache(None)
  n = chips_lib.num_chips(topology, slices)
  validate(config, n, slices)  # the config as given must be sane
  devices = chips_lib.topology_devices(topology, slices)
  chip = chips_lib.chip_of(devices)
  cfg = model_config(config)
  t = config.train
  attention = "splash" if t.seq_len % 128 == 0 and cfg.attention_impl in ("auto", "splash") \
      else "xla"
  micro = t.global_batch_size // t.grad_accum
  rows, candidates = [], []
  for mesh_shape in candidate_meshes(n, cfg, micro, slices):
    state = state_bytes_per_chip(config, mesh_shape)
    for remat in remats:
      c = dataclasses.replace(cfg, remat=remat)
      paper_gib = (state + activation_bytes_per_chip(c, t, mesh_shape, attention)) / GIB
      data, fsdp, tensor = mesh_shape
      gather_s = (4 * state / max(fsdp, 1) * (fsdp - 1)) / (chip.ici_axis_gbps * 1e9) \
          if fsdp > 1 else 0.0
      paper_s = (step_flops(c, t) * REMAT_FLOPS[remat] / (n * chip.peak_bf16_tflops * 1e12)
                 + gather_s)
      row = dict(mesh=dict(zip(parallel.MESH_AXES, mesh_shape)), remat=remat,
                 paper_hbm_gib=paper_gib, paper_step_s=paper_s)
      (candidates if paper_gib <= 1.5 * chip.hbm_gib else rows).append(row)
      if paper_gib > 1.5 * chip.hbm_gib:
        row["skipped"] = "paper memory over 1.5x HBM"
  candidates.sort(key=lambda r: r["paper_step_s"])
  for row in candidates[:max_compiles]:
    overrides = {f"mesh.{k}": v for k, v in row["mesh"].items()}
    log(f"compiling mesh {row['mesh']} remat {row['remat']}")
    report = cache.report(with_overrides(config, **overrides, **{"model.remat": row["remat"]}),
                          topology, slices, devices=devices, with_eval=False)
    row.update(fits=report["fits"], hbm_per_chip_gib=report["hbm_per_chip_gib"],
               est_step_s=report["est_step_s"], est_mfu=report["est_mfu"],
               compile_s=report["compile_s"])
    rows.append(row)
  for row in candidates[max_compiles:]:
    rows.append(dict(row, skipped=f"beyond --max-compiles={max_compiles}"))
  fitting = [r for r in rows if r.get("fits")]
  result: dict[str, Any] = dict(topology=topology, slices=slices, chips=n, chip=chip.generation,
                                global_batch_size=t.global_batch_size, candidates=rows)
  if not fitting:
    result.update(best=None)
    return result
  best = min(fitting, key=lambda r: r["est_step_s"])
  result["best"] = best
  result["overrides"] = ([f"--config.mesh.{k}={v}" for k, v in best["mesh"].items()]
                         + [f"--config.model.remat={best['remat']}"])
  result["largest_per_chip_batch"] = largest_batch(
      with_overrides(config, **{f"mesh.{k}": v for k, v in best["mesh"].items()},
            **{"model.remat": best["remat"]}), topology, slices=slices, cache=cache,
      devices=devices, log=log)
  return result


def largest_batch(config, topology: str, *, slices: int = 1, cache: Cache | None = None,
                  devices=None, log: Callable[[str], None] = lambda _: None,
                  max_doublings: int = 6) -> dict[str, Any]:
  """The largest per-chip batch (sequences per chip, grad_accum 1) that fits with the
  config's mesh and remat: one compile per probe (``bisect_largest``)."""
  cache = cache or Cache(None)
  devices = devices or chips_lib.topology_devices(topology, slices)
  n = len(devices)

  def fits(per_chip: int) -> bool:
    c = with_overrides(config, **{"train.global_batch_size": per_chip * n,
                                  "train.grad_accum": 1})
    log(f"  per-chip batch {per_chip}")
    return cache.report(c, topology, slices, devices=devices, with_eval=False)["fits"]

  start = max(1, config.train.global_batch_size // config.train.grad_accum // n)
  return bisect_largest(fits, start, max_doublings)


def bisect_largest(fits: Callable[[int], bool], start: int, max_doublings: int = 6
                   ) -> dict[str, Any]:
  """The largest integer b >= 1 with ``fits(b)``, for a monotone ``fits``: doubling from
  ``start`` until one does not fit, then bisection; ~2 log2(b / start) probes.

  Returns ``per_chip_batch`` (0 if not even 1 fits), the ``probes`` in order, and
  ``capped`` (doubling stopped after ``max_doublings`` fits: the answer is a lower bound).
  """
  probes: list[tuple[int, bool]] = []

  def probe(b: int) -> bool:
    ok = fits(b)
    probes.append((b, ok))
    return ok

  lo, hi = 0, start
  for _ in range(max_doublings + 1):
    if not probe(hi):
      break
    lo, hi = hi, hi * 2
  else:
    return dict(per_chip_batch=lo, probes=probes, capped=True)
  while hi - lo > 1:
    mid = (lo + hi) // 2
    lo, hi = (mid, hi) if probe(mid) else (lo, mid)
  return dict(per_chip_batch=lo, probes=probes, capped=False)
