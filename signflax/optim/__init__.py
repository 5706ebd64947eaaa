"""signflax.optim: sign-based optimizers as Optax gradient transformations.

Pure Optax: imports only jax, numpy and optax, so library users need nothing else.

    import optax, signflax.optim as sfo
    tx = optax.chain(optax.clip_by_global_norm(1.0),
                     sfo.signum(sfo.wsd_schedule(1e-3, 10_000, warmup_steps=500)))
"""

from signflax.optim.alias import OPTIMIZERS
from signflax.optim.alias import adamw
from signflax.optim.alias import get_optimizer
from signflax.optim.alias import lion
from signflax.optim.alias import momentum
from signflax.optim.alias import optimizer_keywords
from signflax.optim.alias import sgd
from signflax.optim.alias import sign_sgd
from signflax.optim.alias import signum
from signflax.optim.diagnostics import gradient_noise_stats
from signflax.optim.muon import ScaleByMuonState
from signflax.optim.muon import is_hidden_matrix
from signflax.optim.muon import muon
from signflax.optim.muon import muon_labels
from signflax.optim.muon import orthogonalize
from signflax.optim.muon import scale_by_muon
from signflax.optim.schedules import batch_scaled_learning_rate
from signflax.optim.schedules import wsd_schedule
from signflax.optim.transforms import ScaleBySignumState
from signflax.optim.transforms import scale_by_sign
from signflax.optim.transforms import scale_by_signum

__all__ = [
    "OPTIMIZERS", "ScaleByMuonState", "ScaleBySignumState", "adamw",
    "batch_scaled_learning_rate", "get_optimizer", "gradient_noise_stats",
    "is_hidden_matrix", "lion", "momentum", "muon", "muon_labels", "optimizer_keywords",
    "orthogonalize", "scale_by_muon", "scale_by_sign", "scale_by_signum", "sgd", "sign_sgd",
    "signum", "wsd_schedule",
]
