"""``signflax compile``: the train step compiled for a TPU topology by libtpu on this CPU host.

The compile cases run the CLI in a subprocess: libtpu's compile-only client stays out
of the test process (which sees 8 forced CPU devices). They need the ``tpu`` extra
(``pip install 'signflax[tpu]'``); the parsing tests below need nothing.
"""

import json
import os
import subprocess
import sys

import pytest

from signflax import cli
from signflax import outcomes
from signflax.tpu import chips, hlo, plan

needs_libtpu = pytest.mark.skipif(not chips.libtpu_available(),
                                  reason="libtpu not installed (pip install 'signflax[tpu]')")


def _compile(*args, timeout=600):
  env = dict(os.environ, ALLOW_MULTIPLE_LIBTPU_LOAD="1", TPU_SKIP_MDS_QUERY="1")
  return subprocess.run([sys.executable, "-m", "signflax.cli", "compile", *args],
                        capture_output=True, text=True, timeout=timeout, env=env)


def _error_line(result) -> str:
  lines = [l for l in result.stderr.splitlines() if l.startswith("signflax compile:")]
  assert len(lines) == 1, result.stderr[-3000:]
  return lines[0]


@needs_libtpu
@pytest.mark.slow
def test_tiny_compiles_for_v5e_2x2_and_fits():
  """The tiny config on 4 compile-only v5e chips: fits, with every promised key, HBM
  under the chip's capacity, model FLOPs equal to flops_per_token x tokens, the
  compiler's per-loop FLOPs near the model's, and estimated times labelled so."""
  r = _compile("--config", "lm/tiny", "--topology", "v5e:2x2", "--json", "--no-eval",
               "--config.mesh.data=2", "--config.mesh.fsdp=2")
  assert r.returncode == 0, r.stderr[-3000:]
  report = json.loads(r.stdout)
  for key in ("fits", "chips", "mesh", "hbm_per_chip_gib", "hbm_capacity_gib",
              "flops_per_step", "est_step_s", "est_mfu", "compile_s", "collectives"):
    assert key in report, key
  assert report["fits"] is True and report["chips"] == 4 and report["chip"] == "v5e"
  assert report["mesh"] == {"data": 2, "fsdp": 2, "tensor": 1}
  assert report["attention"] == "splash"  # auto picks the Pallas kernel on TPU
  assert 0 < report["hbm_per_chip_gib"] < report["hbm_capacity_gib"] == 16.0
  tokens = 16 * 128
  assert report["flops_per_step"] == pytest.approx(report["flops_per_token"] * tokens)
  assert report["loop_trip_counts"] and max(report["loop_trip_counts"]) == 4  # 4 layers
  assert 0.7 < report["compiler_flops_check"] < 1.3
  assert 0 < report["est_mfu"] < 1 and report["est_step_s"] > 0
  assert report["assumptions"].startswith("estimated")
  axes = {c["axes"] for c in report["collectives"]}
  assert axes and axes <= {"data", "fsdp", "data+fsdp"}, axes
  assert all(c["bytes"] > 0 and c["link"] == "ici" for c in report["collectives"])


@needs_libtpu
@pytest.mark.slow
def test_a_step_that_does_not_fit_exits_3_naming_gib_and_knobs():
  r = _compile("--config", "lm/tiny", "--topology", "v5e:2x2", "--no-eval",
               "--config.train.global_batch_size=16384", "--config.model.vocab_size=32768")
  assert r.returncode == 3, r.stderr[-3000:]
  line = _error_line(r)
  assert "does not fit" in line and "GiB of HBM per chip" in line
  assert "remat=full" in line and "fsdp" in line and "loss_chunk_len" in line
  needed, there = [float(w) for w in line.split() if w.replace(".", "").isdigit()][:2]
  assert needed > there > 15


@pytest.mark.parametrize("args,match", [
    (("--topology", "v5x:2x2"), "is not a TPU topology"),
    (("--topology", "v5e"), "is not a TPU topology"),
    (("--topology", "v5e:2x2", "--config.mesh.data=3"), "config.mesh"),
    (("--topology", "v5e:2x2", "--config.model.remat=most"), "config.model.remat"),
    (("--topology", "v5e:2x2", "--config.train.global_batch_size=6"), "not divisible"),
    (("--topology", "v5e:2x2", "--config.model.attention_impl=splash",
      "--config.train.seq_len=96"), "multiple of 128"),
    (("--topology", "v5e:2x2", "--slices", "2", "--config.mesh.data=1",
      "--config.mesh.fsdp=-1"), "--slices"),
])
def test_bad_input_exits_2_with_one_line(args, match, capsys):
  """Checked before libtpu is touched (the chip count follows from the name)."""
  assert cli.main(["compile", "--config", "lm/tiny", *args]) == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("signflax compile: error: ")
  assert match in lines[0]


@needs_libtpu
def test_a_topology_libtpu_rejects_is_bad_input():
  r = _compile("--config", "lm/tiny", "--topology", "v5e:3x3",
               "--config.train.global_batch_size=18", timeout=120)
  assert r.returncode == 2 and "libtpu cannot build 'v5e:3x3'" in _error_line(r)


def test_libtpu_missing_says_how_to_install(monkeypatch):
  monkeypatch.setattr(chips, "libtpu_available", lambda: False)
  with pytest.raises(outcomes.BadInput, match=r"pip install 'signflax\[tpu\]'"):
    chips.topology_devices("v5e:2x2")


def test_parse_topology():
  assert chips.parse_topology("v5p:2x2x2") == ("v5p", (2, 2, 2))
  assert chips.parse_topology("v6e:16x16") == ("v6e", (16, 16))
  for bad in ("", "v5e:", "h100:2x2", "v5e:2", "v5e:2x2x2x2"):
    with pytest.raises(outcomes.BadInput):
      chips.parse_topology(bad)


def test_chip_table_has_sources_and_sane_figures():
  for chip in chips.CHIPS.values():
    assert chip.source.startswith("https://cloud.google.com/tpu/docs/")
    assert 100 < chip.peak_bf16_tflops < 1000 and chip.hbm_gib >= 16
    assert chip.ici_axis_gbps == chip.ici_gbps / chip.ici_ports


def test_out_of_memory_messages_are_parsed():
  assert plan.parse_out_of_memory("RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm. "
                                  "Used 41.73G of 15.75G hbm. Exceeded") == (41.73, 15.75)
  assert plan.parse_out_of_memory("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran "
                                  "out of memory: 512.00M of temporaries exceeds 1.00G") == (
                                      0.5, 1.0)
  assert plan.parse_out_of_memory("INVALID_ARGUMENT: something else") is None


HLO = """\
HloModule m

%cond (p: (s32[], f32[8])) -> pred[] {
  %c = s32[]{:T(128)} constant(12)
  %i = s32[] get-tuple-element(%p), index=0
  ROOT %lt = pred[] compare(%i, %c), direction=LT
}

%body (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %ag = bf16[4,1024]{1,0} all-gather(bf16[1,1024]{1,0} %x), channel_id=1, replica_groups=mesh['axis_0'=2,'axis_1'=4,'axis_2'=1] {'axis_1'}, dimensions={0}
  ROOT %t = (s32[], f32[8]) tuple(%i, %y)
}

ENTRY %main (a: f32[8]) -> f32[8] {
  %w = (s32[], f32[8]) while(%t0), condition=%cond, body=%body
  %ar = f32[256]{0} all-reduce(f32[256]{0} %g), channel_id=2, replica_groups=[2,4]<=[8], to_apply=%add
  ROOT %rs = f32[32]{0} reduce-scatter(f32[256]{0} %g), channel_id=3, replica_groups={{0,4},{1,5},{2,6},{3,7}}, dimensions={0}
}
"""


def test_collectives_by_mesh_axis_with_loop_trips():
  """A mesh (data 2, fsdp 4): an all-gather over fsdp in a 12-trip loop, an all-reduce
  over fsdp (iota groups of 4 consecutive ids) and a reduce-scatter over data."""
  assert hlo.loop_trip_counts(HLO) == [12]
  rows = {(r["kind"], r["axes"]): r for r in
          hlo.summarize(hlo.collectives(HLO, (2, 4, 1), ("data", "fsdp", "tensor")))}
  ag = rows["all-gather", "fsdp"]
  assert ag["runs"] == 12 and ag["bytes"] == pytest.approx(12 * 4 * 1024 * 2 * 3 / 4)
  assert rows["all-reduce", "fsdp"]["bytes"] == pytest.approx(256 * 4 * 2 * 3 / 4)
  assert rows["reduce-scatter", "data"]["bytes"] == pytest.approx(32 * 4 * 1)


def test_candidate_meshes_divide_chips_heads_and_batch():
  from signflax import model as model_lib
  cfg = model_lib.TransformerConfig(num_heads=4, num_kv_heads=2)
  meshes = plan.candidate_meshes(16, cfg, micro_batch=32)
  assert (1, 16, 1) in meshes and (16, 1, 1) in meshes and (2, 4, 2) in meshes
  for data, fsdp, tensor in meshes:
    assert data * fsdp * tensor == 16 and tensor in (1, 2) and 32 % (data * fsdp) == 0
  assert all(d % 2 == 0 for d, _, _ in plan.candidate_meshes(16, cfg, 32, slices=2))


@pytest.mark.parametrize("limit,start", [(37, 4), (4, 4), (3, 4), (1, 16), (0, 2), (100, 1)])
def test_bisection_finds_the_largest_batch_that_fits(limit, start):
  calls = []
  result = plan.bisect_largest(lambda b: calls.append(b) or b <= limit, start, max_doublings=8)
  assert result["per_chip_batch"] == limit and not result["capped"]
  assert len(calls) == len(set(calls)) <= 2 * max(1, limit // start).bit_length() + 6


def test_bisection_stops_doubling_at_the_cap():
  result = plan.bisect_largest(lambda b: True, 2, max_doublings=3)
  assert result == dict(per_chip_batch=16, probes=[(2, True), (4, True), (8, True), (16, True)],
                        capped=True)
