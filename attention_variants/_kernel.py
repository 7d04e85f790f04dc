"""Shared machinery of the kernel (feature-map) attention variants: performer, random_feature, linear.

Not a variant (the leading underscore keeps the package's auto-importer from registering it).

Kernel attention replaces ``softmax(Q K^T) V`` by ``phi(Q) (phi(K)^T V) / (phi(Q) (phi(K)^T 1))``
for a feature map ``phi: R^d -> R^m``. Computing ``phi(K)^T V`` first makes it O(N m d) in time
and O((N + m) d) in memory per head: linear in the sequence length N.
"""
from __future__ import annotations

import contextlib

import torch


def fp32(device: torch.device):
    """Context that disables autocast on ``device``'s type so the enclosed math runs in fp32.

    Tensors must still be upcast explicitly (``.float()``); this only stops autocast from
    downcasting the matmuls/einsums back to bf16/fp16.
    """
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:  # a device type autocast does not know: nothing to disable
        return contextlib.nullcontext()


def splitmix64(seed: int, index: int) -> int:
    """A well-mixed 63-bit seed derived from ``(seed, index)``; ``index == 0`` gives ``seed``.

    Used to derive the seed of the ``index``-th redraw of a random projection so that draw i
    is a pure function of (config.seed, i): reproducible after resuming from a checkpoint.
    """
    if index == 0:
        return seed
    z = (seed * 0x9E3779B97F4A7C15 + index * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF


def mask_keys(x: torch.Tensor, mask: torch.Tensor | None, value: float = 0.0) -> torch.Tensor:
    """Fill the rows of padded keys of ``x: (B, H, M, F)`` with ``value`` (``mask: (B, M)``, True = real).

    ``masked_fill`` (not multiplication) so that inf/NaN in padded rows cannot leak through as
    ``0 * inf``; its backward sends zero gradient to the filled entries.
    """
    if mask is None:
        return x
    return x.masked_fill(~mask[:, None, :, None], value)


def safe_denominator(den: torch.Tensor, eps: float) -> torch.Tensor:
    """Clamp ``|den|`` to at least ``eps`` keeping its sign (0 counts as positive).

    For positive feature maps (performer, linear) this is ``den.clamp_min(eps)``; for signed
    ones (random Fourier features) it also keeps a negative normalizer away from zero.
    """
    return torch.where(den >= 0, den.clamp_min(eps), den.clamp_max(-eps))


def kernel_attention(phi_q: torch.Tensor, phi_k: torch.Tensor, v: torch.Tensor,
                     mask: torch.Tensor | None, eps: float = 1e-6) -> torch.Tensor:
    """Normalized linear attention ``phi_q (phi_k^T v) / (phi_q (phi_k^T 1))`` in O(N).

    Shapes: ``phi_q (B, H, N, F)``, ``phi_k (B, H, M, F)``, ``v (B, H, M, D)``,
    ``mask (B, M)`` bool (True = real key) or None; returns ``(B, H, N, D)`` in ``v``'s dtype.

    Time O((N + M) F D), memory O((N + M)(F + D) + F D) per head; the ``(N, M)`` matrix is never
    formed. Padded keys' features are zeroed (and their values too, so a non-finite padded value
    cannot leak) before both the numerator ``phi_k^T v`` and the denominator ``phi_k^T 1``, so a
    padded key changes no output. Everything runs in fp32 with autocast disabled (the inputs are
    upcast), and the denominator's magnitude is clamped to ``eps`` (sign kept, see
    :func:`safe_denominator`): a query whose normalizer vanishes (e.g. every key padded) gets a
    finite output instead of NaN/inf.
    """
    out_dtype = v.dtype
    with fp32(v.device):
        phi_q, phi_k, v = phi_q.float(), phi_k.float(), v.float()
        phi_k = mask_keys(phi_k, mask)
        v = mask_keys(v, mask)
        kv = torch.einsum("bhmf,bhmd->bhfd", phi_k, v)           # (B, H, F, D)
        k_sum = phi_k.sum(dim=-2)                                 # (B, H, F)
        num = torch.einsum("bhnf,bhfd->bhnd", phi_q, kv)          # (B, H, N, D)
        den = torch.einsum("bhnf,bhf->bhn", phi_q, k_sum)         # (B, H, N)
        out = num / safe_denominator(den, eps).unsqueeze(-1)
    return out.to(out_dtype)


def quadratic_kernel_attention(phi_q: torch.Tensor, phi_k: torch.Tensor, v: torch.Tensor,
                               mask: torch.Tensor | None, eps: float = 1e-6) -> torch.Tensor:
    """The O(N^2) definition ``(phi_q phi_k^T * mask) v / row_sums``; for tests and debugging."""
    with fp32(v.device):
        a = torch.einsum("bhnf,bhmf->bhnm", phi_q.float(), phi_k.float())
        if mask is not None:
            a = a.masked_fill(~mask[:, None, None, :], 0.0)
        den = safe_denominator(a.sum(-1, keepdim=True), eps)
        return (a @ v.float() / den).to(v.dtype)
