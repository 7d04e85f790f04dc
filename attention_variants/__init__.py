"""Pluggable attention variants behind one interface and one registry.

Public API::

    import attention_variants as av
    av.available()                       # ['bigbird', 'flash', 'full', ...]
    av.available(causal=True)            # those that can be built with causal=True
    attn = av.build("performer", heads=8, head_dim=64, num_features=256)
    out = attn(q, k, v, key_padding_mask=mask)   # (B, H, N, D) -> (B, H, N, D)
    with av.reference_paths():           # backend=auto runs the reference paths (double backward)
        ...

Depends on torch only. Every module of this package other than the infrastructure below
is a variant and registers itself with ``@register`` when imported here.
"""
import importlib
import pkgutil

from ._fast import reference_paths
from .base import Attention, AttentionConfig
from .registry import UnknownVariantError, available, build, check_causal, get, make_config, register

_INFRASTRUCTURE = {"base", "registry", "masking"}
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module not in _INFRASTRUCTURE and not _module.startswith("_"):
        importlib.import_module(f"{__name__}.{_module}")

__all__ = ["Attention", "AttentionConfig", "UnknownVariantError", "available", "build", "check_causal", "get",
           "make_config", "reference_paths", "register"]
