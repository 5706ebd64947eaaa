"""signflax.optim: sign-based optimizers as Optax gradient transformations.

Pure Optax: imports only jax, numpy and optax, so library users need nothing else.

    import optax, signflax.optim as sfo
    tx = optax.chain(optax.clip_by_global_norm(1.0),
                     sfo.signum(sfo.wsd_schedule(1e-3, 10_000, warmup_steps=500)))

The algorithms live in private modules; this package is the public API. Configs build
optimizers by name through :mod:`signflax.optim.registry`.
"""

from optax import scale_by_sign

from signflax.optim._alias import momentum
from signflax.optim._alias import sgd
from signflax.optim._alias import sign_sgd
from signflax.optim._alias import signum
from signflax.optim._diagnostics import gradient_noise_stats
from signflax.optim._muon import NS_IMPLS
from signflax.optim._muon import ScaleByMuonState
from signflax.optim._muon import muon
from signflax.optim._muon import muon_labels
from signflax.optim._muon import orthogonalize
from signflax.optim._muon import scale_by_muon
from signflax.optim._muon import uses_gram
from signflax.optim._muon_dims import MuonDims
from signflax.optim._muon_dims import conv_dims
from signflax.optim._muon_dims import dense_general_dims
from signflax.optim._muon_dims import dims_by_path
from signflax.optim._muon_dims import dims_from_logical_axes
from signflax.optim._muon_dims import einsum_dims
from signflax.optim._muon_dims import hidden_matrix_dims
from signflax.optim._muon_dims import is_hidden_matrix
from signflax.optim._muon_dims import logical_axes_dims
from signflax.optim._paths import path_name
from signflax.optim._schedules import batch_scale_factor
from signflax.optim._schedules import batch_scaled_learning_rate
from signflax.optim._schedules import wsd_schedule
from signflax.optim._transforms import ScaleBySignumState
from signflax.optim._transforms import scale_by_signum
from signflax.optim.registry import OPTIMIZERS
from signflax.optim.registry import adamw
from signflax.optim.registry import get_optimizer
from signflax.optim.registry import lion
from signflax.optim.registry import optimizer_keywords

__all__ = [
    "MuonDims", "NS_IMPLS", "OPTIMIZERS", "ScaleByMuonState", "ScaleBySignumState", "adamw",
    "batch_scale_factor", "batch_scaled_learning_rate", "conv_dims", "dense_general_dims",
    "dims_by_path", "dims_from_logical_axes", "einsum_dims", "get_optimizer",
    "gradient_noise_stats", "hidden_matrix_dims", "is_hidden_matrix", "lion",
    "logical_axes_dims", "momentum", "muon", "muon_labels", "optimizer_keywords",
    "orthogonalize", "path_name", "scale_by_muon", "scale_by_sign", "scale_by_signum", "sgd",
    "sign_sgd", "signum", "uses_gram", "wsd_schedule",
]
