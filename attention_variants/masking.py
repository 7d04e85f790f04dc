"""The one place padding masks are normalised and padding/unpadding helpers live.

Convention everywhere: ``key_padding_mask`` is ``(batch, length)`` bool, ``True`` = real token.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def normalize_key_padding_mask(mask: torch.Tensor | None, batch: int, length: int,
                               device: torch.device | None = None) -> torch.Tensor | None:
    """Check and convert a key padding mask to ``(batch, length)`` bool (True = real).

    Returns ``None`` when the mask is ``None`` or marks every token real (no padding),
    so variants can take their unmasked fast path.
    """
    if mask is None:
        return None
    if mask.shape != (batch, length):
        raise ValueError(f"key_padding_mask must have shape (batch, length) = {(batch, length)}, "
                         f"got {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        raise TypeError(f"key_padding_mask must be bool (True = real token), got {mask.dtype}")
    if device is not None:
        mask = mask.to(device)
    return mask


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``(batch, length)`` bool -> ``(batch, 1, 1, length)`` additive bias (0 or -inf-like)."""
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    bias.masked_fill_(~mask, torch.finfo(dtype).min)
    return bias[:, None, None, :]


def pad_to_multiple(x: torch.Tensor, multiple: int, dim: int = -2) -> tuple[torch.Tensor, int]:
    """Zero-pad ``x`` along ``dim`` up to a multiple of ``multiple``; returns (padded, pad)."""
    length = x.shape[dim]
    pad = (-length) % multiple
    if pad == 0:
        return x, 0
    dim = dim % x.dim()
    widths = [0, 0] * (x.dim() - dim - 1) + [0, pad]
    return F.pad(x, widths), pad


def pad_mask_to_multiple(mask: torch.Tensor | None, batch: int, length: int, multiple: int,
                         device: torch.device) -> torch.Tensor | None:
    """Extend a key padding mask (or build one) so that internal padding is marked padded.

    Returns ``None`` when no padding is needed and none was given.
    """
    pad = (-length) % multiple
    if pad == 0:
        return mask
    if mask is None:
        mask = torch.ones(batch, length, dtype=torch.bool, device=device)
    return F.pad(mask, (0, pad), value=False)
