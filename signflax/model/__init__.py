"""The LLaMA-style transformer (Flax NNX) and its FLOPs count."""

from signflax.model.transformer import (
    ATTENTION_IMPLEMENTATIONS,
    DTYPES,
    REMAT_POLICIES,
    Transformer,
    TransformerConfig,
    abstract_model,
    apply,
    apply_features,
    attention_implementation,
    cudnn_attention_supported,
    flops_per_token,
    init_params,
    splash_attention,
    target_platform,
)

__all__ = [
    "ATTENTION_IMPLEMENTATIONS",
    "DTYPES",
    "REMAT_POLICIES",
    "Transformer",
    "TransformerConfig",
    "abstract_model",
    "apply",
    "apply_features",
    "attention_implementation",
    "cudnn_attention_supported",
    "flops_per_token",
    "init_params",
    "splash_attention",
    "target_platform",
]
