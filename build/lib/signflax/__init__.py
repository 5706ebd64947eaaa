"""signflax: a JAX training stack for sign-based optimizers.

Subpackages (imports only point down this list):
  experiments  sweeps, scaling-law fits, phase diagrams, figures
  train        train state, sharded step, loop, checkpoints, metrics
  data         Grain pipelines: sources, tokenizers, packing
  model        Flax NNX LLaMA-style transformer with logical axis names
  parallel     device mesh, logical->mesh rules, jax.distributed start-up
  linreg       power-law linear regression: problems, simulator, theory
  optim        pure Optax transforms (jax, numpy and optax only)

Importing ``signflax`` imports nothing heavy; import the subpackage you need.
"""

__version__ = "0.1.0"
