"""Exact softmax attention through fused kernels (FlashAttention and friends).

Computes the same function as ``full`` via
:func:`torch.nn.functional.scaled_dot_product_attention` with a selectable backend, or
``xformers.ops.memory_efficient_attention``. Time O(N^2 d), memory O(N) per head on the
fused backends (the ``math`` backend materializes like ``full``).

Backends: ``auto`` (first that runs, in the order cudnn, flash, efficient, math; the one
that ran is kept in ``last_backend``), ``cudnn``, ``flash``, ``efficient``, ``math``,
``xformers``. On the CPU ``auto`` tries ``flash`` then ``math``: torch's CPU flash kernel
(``_scaled_dot_product_flash_attention_for_cpu``) takes the padding mask (as a ``(B, 1, 1, N)``
``0 / -inf`` bias), so a padded batch keeps the fused kernel (O(N) memory, no ``(N, N)`` scores,
no "safe softmax" passes) and a query whose keys are all padding gets 0, as on ``math``. The CUDA
FlashAttention kernel takes no mask: with padding an explicit ``flash`` request on CUDA runs
``efficient`` instead (recorded in ``last_backend``) and ``auto`` skips it there.

Causal (``causal=True``; query ``i`` sees keys ``j <= i``; a query with no real key at or before
it outputs 0, never NaN):

* no padding: ``is_causal=True`` on every SDPA backend; xformers' ``LowerTriangularMask``;
* padding, CPU: the flash kernel takes ``is_causal=True`` together with the padding bias (the aten
  op does; SDPA's Python API refuses both at once), so it stays fused; ``math`` gets the
  materialized ``tril & padding`` mask;
* padding, CUDA: ``efficient`` / ``math`` / ``cudnn`` (and xformers) get the materialized
  ``(B, 1, N, N)`` bias ``tril & padding`` with ``finfo.min`` (not ``-inf``, so no row is all
  ``-inf``) and the rows with no allowed key are set to 0. The CUDA ``flash`` kernel takes no mask:
  it runs with ``is_causal`` alone when the padding is **right padding** (every row's real tokens
  come first), which is exact for every real query (its keys at or before it are all real); a padded
  query then also sees the padded keys before it (its output is never read: the encoder masks it).
  Any other padding falls back to ``efficient`` (recorded in ``last_backend``).

Decoding: :meth:`FlashAttention.decode_step` appends the new key and value to a :class:`KVCache` and
attends the new query to every cached key (one SDPA call, no mask): O(n D) per head and token;
the state is the KV cache, ``2 n H D`` numbers.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ._decode import KVCache, kv_cache_bytes
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
    """The requested attention backend cannot run this device / dtype / input."""


def _xformers_ops():
    try:
        import xformers.ops as xops  # noqa: PLC0415 - optional dependency
    except Exception as err:  # ImportError, or a binary built for another torch
        raise BackendUnavailableError(
            f"backend 'xformers' is unavailable: importing xformers failed ({type(err).__name__}: {err}). "
            "Install an xformers build that matches your torch (pip install 'lra-bench[xformers]'), "
            f"or choose another backend: {', '.join(BACKENDS)}.") from err
    return xops


def causal_padding_allowed(mask: torch.Tensor, n: int) -> torch.Tensor:
    """``(B, 1, N, N)`` bool: query ``i`` may attend key ``j`` iff ``j <= i`` and key ``j`` is real."""
    tril = torch.ones(n, n, dtype=torch.bool, device=mask.device).tril()
    return tril[None, None] & mask[:, None, None, :]


def _min_bias(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``0`` where allowed, ``finfo.min`` elsewhere: no row is all ``-inf`` (no NaN on any kernel)."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, torch.finfo(dtype).min)


def xformers_attention(q, k, v, mask, causal: bool = False):
    """``memory_efficient_attention`` on ``(B, H, N, D)`` inputs (it wants ``(B, N, H, D)``)."""
    xops = _xformers_ops()
    if not q.is_cuda:
        raise BackendUnavailableError("backend 'xformers' needs CUDA tensors; got device "
                                      f"{q.device}. Choose backend=auto on this device.")
    bias, has_key = None, None
    b, h, n, _ = q.shape
    m = k.shape[-2]
    if causal and mask is None:
        bias = xops.LowerTriangularMask()
    elif mask is not None:
        aligned = (m + 7) // 8 * 8  # xformers wants the bias' last dim 8-aligned in memory
        storage = torch.zeros(b, h, n, aligned, dtype=q.dtype, device=q.device)
        if causal:
            allowed = causal_padding_allowed(mask, n)
            storage[..., :m].masked_fill_(~allowed, torch.finfo(q.dtype).min)
            has_key = allowed.any(dim=-1, keepdim=True)
        else:
            storage[..., :m].masked_fill_(~mask[:, None, None, :], float("-inf"))
        bias = storage[..., :m]
    out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                          attn_bias=bias).transpose(1, 2)
    return out if has_key is None else torch.where(has_key, out, 0.0)


def cpu_flash(q, k, v, mask, causal: bool = False):
    """torch's fused CPU flash kernel, ``(B, H, N, D) x3 -> (B, H, N, D)``, with the padding as a
    ``(B, 1, 1, M)`` ``0 / -inf`` bias (in the inputs' dtype, which the kernel wants) and
    ``is_causal`` together with it. Rows with no allowed key give 0. Time O(N M D), memory O(N D).
    Under CPU autocast the inputs are cast to its dtype first, as SDPA's autocast rule does."""
    if torch.is_autocast_enabled(q.device.type):
        dtype = torch.get_autocast_dtype(q.device.type)
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    bias = None
    if mask is not None:
        bias = torch.zeros(mask.shape[0], 1, 1, mask.shape[-1], dtype=q.dtype, device=q.device)
        bias.masked_fill_(~mask[:, None, None, :], float("-inf"))
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, attn_mask=bias)[0]


def sdpa(q, k, v, mask, backend: str | None, causal: bool = False):
    """SDPA with a bool padding mask, restricted to one backend (None = torch's choice); ``causal``
    as described in the module docstring."""
    if q.device.type == "cpu" and backend == "flash":
        return cpu_flash(q, k, v, mask, causal)
    ctx = contextlib.nullcontext() if backend is None else sdpa_kernel([SDPA_BACKENDS[backend]])
    with ctx:
        if not causal:
            attn_mask = None if mask is None else mask[:, None, None, :]
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        if mask is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        if backend == "flash":  # CUDA flash: right padding only (the caller checked it)
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        allowed = causal_padding_allowed(mask, q.shape[-2])
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=_min_bias(allowed, q.dtype))
        return torch.where(allowed.any(dim=-1, keepdim=True), out, 0.0)


def is_right_padding(mask: torch.Tensor) -> bool:
    """Every row's real tokens come first (``True...True False...False``)."""
    return bool((mask[:, 1:] <= mask[:, :-1]).all())


@dataclass
class FlashConfig(AttentionConfig):
    backend: str = "auto"


@register("flash", FlashConfig)
class FlashAttention(Attention):
    """Fused exact softmax attention (Dao et al. 2022; SDPA / cuDNN / xformers kernels)."""

    exact = True
    complexity = "O(N^2)"
    fast_devices = ("cuda", "cpu")
    supports_causal = True

    def __init__(self, config: FlashConfig):
        super().__init__(config)
        if config.backend not in BACKENDS:
            raise ValueError(f"unknown flash backend {config.backend!r}; choose one of {', '.join(BACKENDS)}")
        self.last_backend: str | None = None
        self._auto_choice: dict[tuple, str] = {}

    def forward(self, q, k, v, key_padding_mask=None):
        mask = normalize_key_padding_mask(key_padding_mask, q.shape[0], k.shape[-2], q.device)
        causal = self.causal
        if causal and q.shape[-2] != k.shape[-2]:
            raise ValueError(f"flash: causal attention needs queries and keys of one length, got "
                             f"{q.shape[-2]} and {k.shape[-2]}")
        backend = self.config.backend
        if backend == "xformers":
            self.last_backend = "xformers"
            return xformers_attention(q, k, v, mask, causal)
        if backend == "auto":
            return self._auto(q, k, v, mask, causal)
        if backend == "flash" and mask is not None and q.is_cuda and not (causal and is_right_padding(mask)):
            backend = "efficient"  # the CUDA flash kernel takes no mask (the CPU one does)
        try:
            out = sdpa(q, k, v, mask, backend, causal)
        except RuntimeError as err:
            raise BackendUnavailableError(
                f"SDPA backend {backend!r} cannot run this input (device {q.device.type}, dtype {q.dtype}, "
                f"head_dim {q.shape[-1]}, padding mask {'yes' if mask is not None else 'no'}): {err}. "
                f"Choose backend=auto to fall back automatically; backends: {', '.join(BACKENDS)}.") from err
        self.last_backend = backend
        return out

    def _auto(self, q, k, v, mask, causal):
        key = (q.device.type, q.dtype, q.shape[-1], mask is not None, torch.is_grad_enabled(), causal)
        if key in self._auto_choice:
            self.last_backend = self._auto_choice[key]
            return sdpa(q, k, v, mask, self.last_backend, causal)
        order = AUTO_ORDER if q.is_cuda else ("flash", "math")
        errors = []
        for backend in order:
            if backend == "flash" and mask is not None and q.is_cuda:
                continue  # the CUDA flash kernel takes no mask (the CPU one does)
            try:
                out = sdpa(q, k, v, mask, backend, causal)
            except RuntimeError as err:
                errors.append(f"{backend}: {err}")
                continue
            self._auto_choice[key] = self.last_backend = backend
            return out
        raise BackendUnavailableError("no SDPA backend could run this input: " + "; ".join(errors))

    # ------------------------------------------------------------------ decoding
    def decode_state_bytes(self, length: int, element_bytes: int = 4) -> tuple[int | None, str]:
        return kv_cache_bytes(self.config.heads, self.config.head_dim, length, element_bytes)

    def decode_init(self, batch: int, device: torch.device, dtype: torch.dtype) -> KVCache:
        return KVCache(batch, self.config.heads, self.config.head_dim, device, dtype)

    def decode_step(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: KVCache):
        """``q, k, v (B, H, 1, D)``: append ``k, v`` to the cache and attend ``q`` to every cached key
        (itself included) with SDPA, no mask: O(n D) per head."""
        keys, values = state.append(k, v)
        return F.scaled_dot_product_attention(q, keys, values), state
