"""Decoding state shared by the variants with a cached path (not a variant: leading underscore).

:class:`KVCache` holds the keys and values of the tokens generated so far for softmax-type
variants; kernel variants keep a running state instead (their own ``decode_step``).
"""
from __future__ import annotations

import torch


class KVCache:
    """Keys and values of the tokens so far, ``(B, H, n, D)`` views of buffers that grow by
    doubling, so appending a token costs O(H D) amortised (no O(n) copy per token).

    ``window``: keep only the last ``window`` tokens' views (a sliding-window variant); the
    buffers still grow, but what a step reads is the window."""

    def __init__(self, batch: int, heads: int, head_dim: int, device, dtype: torch.dtype, capacity: int = 16):
        self.keys = torch.empty(batch, heads, capacity, head_dim, device=device, dtype=dtype)
        self.values = torch.empty_like(self.keys)
        self.length = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add ``k, v (B, H, t, D)``; return every cached key and value, ``(B, H, n, D)`` views."""
        t = k.shape[-2]
        if self.length + t > self.keys.shape[-2]:
            capacity = max(2 * self.keys.shape[-2], self.length + t)
            grow = lambda buf: torch.cat([buf[..., : self.length, :], buf.new_empty(  # noqa: E731
                *buf.shape[:2], capacity - self.length, buf.shape[-1])], dim=-2)
            self.keys, self.values = grow(self.keys), grow(self.values)
        self.keys[..., self.length: self.length + t, :] = k
        self.values[..., self.length: self.length + t, :] = v
        self.length += t
        return self.keys[..., : self.length, :], self.values[..., : self.length, :]
