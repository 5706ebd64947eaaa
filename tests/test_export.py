"""checkpoint.load_params and `signflax export`: a checkpoint saved on 8 devices, read on 1.

The checkpoint is written by a subprocess with 8 forced CPU devices, FSDP-sharded,
in the trainer's layout (``checkpoints/<step>/{state,extra}``, state = {step,
params, opt_state}); it is read back by another subprocess with one device and,
resharded onto another mesh, in this 8-device process.
"""

import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from signflax import cli
from signflax.train import checkpoint as checkpoint_lib
from signflax.train import export

REPO = pathlib.Path(__file__).resolve().parent.parent
SHAPES = {"embed": (64, 16), "final_norm/scale": (16,),
          "layers/attn/q": (2, 16, 32), "layers/mlp/down": (2, 48, 16)}
STEPS = (3, 6)


def expected(step: int) -> dict[str, np.ndarray]:
  """The parameters saved at ``step``, by '/'-joined path."""
  return {name: (np.arange(np.prod(shape), dtype=np.float32).reshape(shape) / 7 + step)
          for name, shape in SHAPES.items()}


SAVE = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp, numpy as np, optax, orbax.checkpoint as ocp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from tests.test_export import expected
    from signflax.train import export

    assert jax.device_count() == 8
    mesh = Mesh(np.array(jax.devices()), ("fsdp",))
    def shard(x):  # FSDP: the largest axis split over the 8 devices
      spec = [None] * x.ndim
      if x.ndim > 1:
        spec[int(np.argmax(x.shape))] = "fsdp"
      return jax.device_put(x, NamedSharding(mesh, P(*spec)))
    options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False)
    manager = ocp.CheckpointManager(sys.argv[1], options=options)
    for step in (3, 6):
      params = jax.tree.map(shard, export.unflatten(expected(step)))
      opt_state = optax.adam(1e-3).init(params)
      state = {"step": jnp.int32(step), "params": params, "opt_state": opt_state}
      manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                 extra=ocp.args.JsonSave({"data": step})))
    manager.wait_until_finished()
""")

LOAD_ON_ONE_DEVICE = textwrap.dedent("""
    import sys
    import jax, numpy as np
    from signflax import cli
    from signflax.train import checkpoint, export
    from tests.test_export import expected

    assert jax.device_count() == 1
    workdir, output = sys.argv[1], sys.argv[2]
    params = checkpoint.load_params(workdir)
    assert all(type(x) is np.ndarray for x in jax.tree.leaves(params))
    for name, value in export.flatten(params).items():
      np.testing.assert_array_equal(value, expected(6)[name], err_msg=name)
    on_device = checkpoint.load_params(workdir, step=3, sharding=jax.sharding.SingleDeviceSharding(
        jax.devices()[0]))
    for name, value in export.flatten(on_device).items():
      np.testing.assert_array_equal(value, expected(3)[name], err_msg=name)
    assert cli.main(["export", "--workdir", workdir, "--step", "3", "--output", output]) == 0
""")


def _env(devices: int) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
  return env


def _python(script: str, *args, devices: int) -> None:
  proc = subprocess.run([sys.executable, "-c", script, *map(str, args)], cwd=REPO,
                        env=_env(devices), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A workdir whose checkpoints (steps 3 and 6) were saved FSDP-sharded on 8 devices."""
  path = tmp_path_factory.mktemp("run")
  _python(SAVE, path / "checkpoints", devices=8)
  return path


def test_saved_on_8_devices_loads_and_exports_on_1(workdir, tmp_path):
  output = tmp_path / "params.npz"
  _python(LOAD_ON_ONE_DEVICE, workdir, output, devices=1)
  with np.load(output) as npz:
    assert sorted(npz.files) == sorted(SHAPES)
    for name in SHAPES:
      np.testing.assert_array_equal(npz[name], expected(3)[name], err_msg=name)
    assert npz["layers/attn/q"].shape == (2, 16, 32)  # layer axis first, (fan_in, fan_out)


def test_load_params_onto_another_mesh(workdir):
  mesh = Mesh(np.array(jax.devices()[:4]).reshape(2, 2), ("x", "y"))
  replicated = NamedSharding(mesh, P())
  shardings = {"embed": NamedSharding(mesh, P("x", "y")), "final_norm": {"scale": replicated},
               "layers": {"attn": {"q": NamedSharding(mesh, P(None, "y", "x"))},
                          "mlp": {"down": replicated}}}
  params = checkpoint_lib.load_params(workdir / "checkpoints" / "6", sharding=shardings)
  assert params["embed"].sharding == shardings["embed"]
  assert params["layers"]["attn"]["q"].sharding == shardings["layers"]["attn"]["q"]
  for name, value in export.flatten(params).items():
    np.testing.assert_array_equal(value, expected(6)[name], err_msg=name)
  # the state item directory itself, and the step named twice consistently
  assert checkpoint_lib.read_params(workdir / "checkpoints" / "3" / "state", step=3)[1] == 3


def test_flatten_unflatten_round_trip():
  tree = export.unflatten(expected(1))
  assert tree["layers"]["attn"]["q"].shape == (2, 16, 32)
  flat = export.flatten(tree)
  assert flat.keys() == expected(1).keys()
  import ml_dtypes  # noqa: PLC0415 - jax's own dependency
  assert export.flatten({"w": np.ones(3, ml_dtypes.bfloat16)})["w"].dtype == np.float32


@pytest.mark.parametrize("args, message", [
    (["--step", "4"], "--step: no checkpoint at step 4 in "),
    (["--step", "-1"], "--step: must be an integer >= 0"),
    (["--step", "x"], "argument --step: invalid int value"),
    (["--output", "{tmp}/params.txt"], "--output: '{tmp}/params.txt' must end in .npz"),
    (["--output", "{tmp}/existing.npz/params.npz"], "is not a directory"),
    (["--output", "{tmp}/no/such/dir/params.npz"], "is not a directory"),
    (["--workdir", "{tmp}"], "--workdir: no checkpoint in "),
    (["--workdir", "{tmp}/nowhere"], "--workdir: '{tmp}/nowhere' is not a directory"),
    (["--workdir", "{run}/checkpoints/3", "--step", "6"], "--step: 6 differs from the step"),
])
def test_export_bad_input_is_one_line_exit_2(workdir, tmp_path, capsys, args, message):
  existing = tmp_path / "existing.npz"
  existing.write_bytes(b"kept")
  fill = lambda s: s.format(tmp=tmp_path, run=workdir)  # noqa: E731
  argv = {"--workdir": str(workdir), "--output": str(existing)}
  for flag, value in zip(args[::2], args[1::2]):
    argv[flag] = fill(value)
  assert cli.main(["export"] + [x for kv in argv.items() for x in kv]) == 2
  err = capsys.readouterr().err
  assert err.startswith("signflax export: error: ") and err.count("\n") == 1, err
  assert fill(message) in err
  assert existing.read_bytes() == b"kept"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.npz"]  # no temporary left


def test_load_params_rejects_incomplete_step_directory(tmp_path):
  (tmp_path / "checkpoints" / "5" / "state").mkdir(parents=True)
  with pytest.raises(ValueError, match=r"^workdir_or_step_dir: no checkpoint in "):
    checkpoint_lib.load_params(tmp_path)
  with pytest.raises(ValueError, match=r"^workdir_or_step_dir: .* is incomplete"):
    checkpoint_lib.load_params(tmp_path / "checkpoints" / "5")
  with pytest.raises(ValueError, match=r"^step: must be an integer"):
    checkpoint_lib.load_params(tmp_path, step=1.5)
