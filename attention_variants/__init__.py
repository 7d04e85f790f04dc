"""Pluggable attention variants behind one interface and one registry.

Public API::

    import attention_variants as av
    av.available()                       # ['bigbird', 'flash', 'full', ...]
    attn = av.build("performer", heads=8, head_dim=64, num_features=256)
    out = attn(q, k, v, key_padding_mask=mask)   # (B, H, N, D) -> (B, H, N, D)

Depends on torch only.
"""
from .base import Attention, AttentionConfig
from .registry import UnknownVariantError, available, build, get, make_config, register

# In-tree variants register themselves on import.
from . import full, flash  # noqa: E402,F401  (isort: skip)

__all__ = ["Attention", "AttentionConfig", "UnknownVariantError", "available", "build", "get",
           "make_config", "register"]
