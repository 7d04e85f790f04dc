"""Exact softmax attention through fused kernels (FlashAttention and friends).

Computes the same function as ``full`` via
:func:`torch.nn.functional.scaled_dot_product_attention` with a selectable backend, or
``xformers.ops.memory_efficient_attention``. Time O(N^2 d), memory O(N) per head on the
fused backends (the ``math`` backend materializes like ``full``).

Backends: ``auto`` (first that runs, in the order cudnn, flash, efficient, math; the one
that ran is kept in ``last_backend``), ``cudnn``, ``flash``, ``efficient``, ``math``,
``xformers``. On the CPU ``auto`` tries ``flash`` then ``math``: torch's CPU flash kernel
(``_scaled_dot_product_flash_attention_for_cpu``) takes the boolean padding mask, so a padded
batch keeps the fused kernel (O(N) memory, no ``(N, N)`` scores, no "safe softmax" passes) and a
query whose keys are all padding gets 0, as on ``math``. The CUDA FlashAttention kernel takes no
mask: with padding an explicit ``flash`` request on CUDA runs ``efficient`` instead (recorded in
``last_backend``) and ``auto`` skips it there.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from .base import Attention, AttentionConfig
from .masking import normalize_key_padding_mask
from .registry import register

SDPA_BACKENDS = {
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}
BACKENDS = ("auto", *SDPA_BACKENDS, "xformers")
AUTO_ORDER = ("cudnn", "flash", "efficient", "math")


class BackendUnavailableError(RuntimeError):
    """The requested attention backend cannot run on this device / dtype / input."""


def _xformers_ops():
    try:
        import xformers.ops as xops  # noqa: PLC0415 - optional dependency
    except Exception as err:  # ImportError, or a binary built for another torch
        raise BackendUnavailableError(
            f"backend 'xformers' is unavailable: importing xformers failed ({type(err).__name__}: {err}). "
            "Install an xformers build that matches your torch (pip install 'lra-bench[xformers]'), "
            f"or choose another backend: {', '.join(BACKENDS)}.") from err
    return xops


def xformers_attention(q, k, v, mask):
    """``memory_efficient_attention`` on ``(B, H, N, D)`` inputs (it wants ``(B, N, H, D)``)."""
    xops = _xformers_ops()
    if not q.is_cuda:
        raise BackendUnavailableError("backend 'xformers' needs CUDA tensors; got device "
                                      f"{q.device}. Choose backend=auto on this device.")
    bias = None
    if mask is not None:
        b, h, n, _ = q.shape
        m = k.shape[-2]
        aligned = (m + 7) // 8 * 8  # xformers wants the bias' last dim 8-aligned in memory
        storage = torch.zeros(b, h, n, aligned, dtype=q.dtype, device=q.device)
        storage[..., :m].masked_fill_(~mask[:, None, None, :], float("-inf"))
        bias = storage[..., :m]
    out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                          attn_bias=bias)
    return out.transpose(1, 2)


def sdpa(q, k, v, mask, backend: str | None):
    """SDPA with a bool padding mask, restricted to one backend (None = torch's choice)."""
    attn_mask = None if mask is None else mask[:, None, None, :]
    ctx = contextlib.nullcontext() if backend is None else sdpa_kernel([SDPA_BACKENDS[backend]])
    with ctx:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


@dataclass
class FlashConfig(AttentionConfig):
    backend: str = "auto"


@register("flash", FlashConfig)
class FlashAttention(Attention):
    """Fused exact softmax attention (Dao et al. 2022; SDPA / cuDNN / xformers kernels)."""

    exact = True
    complexity = "O(N^2)"
    fast_devices = ("cuda", "cpu")

    def __init__(self, config: FlashConfig):
        super().__init__(config)
        if config.backend not in BACKENDS:
            raise ValueError(f"unknown flash backend {config.backend!r}; choose one of {', '.join(BACKENDS)}")
        self.last_backend: str | None = None
        self._auto_choice: dict[tuple, str] = {}

    def forward(self, q, k, v, key_padding_mask=None):
        mask = normalize_key_padding_mask(key_padding_mask, q.shape[0], k.shape[-2], q.device)
        backend = self.config.backend
        if backend == "xformers":
            self.last_backend = "xformers"
            return xformers_attention(q, k, v, mask)
        if backend == "auto":
            return self._auto(q, k, v, mask)
        if backend == "flash" and mask is not None and q.is_cuda:
            backend = "efficient"  # the CUDA flash kernel takes no mask (the CPU one does)
        try:
            out = sdpa(q, k, v, mask, backend)
        except RuntimeError as err:
            raise BackendUnavailableError(
                f"SDPA backend {backend!r} cannot run this input (device {q.device.type}, dtype {q.dtype}, "
                f"head_dim {q.shape[-1]}, padding mask {'yes' if mask is not None else 'no'}): {err}. "
                f"Choose backend=auto to fall back automatically; backends: {', '.join(BACKENDS)}.") from err
        self.last_backend = backend
        return out

    def _auto(self, q, k, v, mask):
        key = (q.device.type, q.dtype, q.shape[-1], mask is not None, torch.is_grad_enabled())
        if key in self._auto_choice:
            self.last_backend = self._auto_choice[key]
            return sdpa(q, k, v, mask, self.last_backend)
        order = AUTO_ORDER if q.is_cuda else ("flash", "math")
        errors = []
        for backend in order:
            if backend == "flash" and mask is not None and q.is_cuda:
                continue  # the CUDA flash kernel takes no mask (the CPU one does)
            try:
                out = sdpa(q, k, v, mask, backend)
            except RuntimeError as err:
                errors.append(f"{backend}: {err}")
                continue
            self._auto_choice[key] = self.last_backend = backend
            return out
        raise BackendUnavailableError("no SDPA backend could run this input: " + "; ".join(errors))
