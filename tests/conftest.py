"""Test set-up: every test process sees 8 CPU devices, so sharded paths run on CPU.

Single-device references use ``jax.devices()[:1]``; the flag must be set before jax
is imported anywhere, which is why it lives here.
"""

import os

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The trainer's compilation cache defaults to a per-user directory ($XDG_CACHE_HOME/signflax/jax);
# tests (and the runs they start) use one of their own instead of the user's.
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
  import tempfile  # noqa: E402

  os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="signflax-test-cache-")

# What signflax.cli.main installs at start-up, for the tests that call the library directly.
from signflax.train import checkpoint_errors  # noqa: E402

checkpoint_errors.quiet_background_noise()
