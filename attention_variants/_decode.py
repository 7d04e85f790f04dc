"""Decoding state shared by the variants with a cached path (not a variant: leading underscore).

:class:`KVCache` holds the keys and values of the tokens generated so far for softmax-type
variants; kernel variants keep a running state instead (their own ``decode_step``).
"""
from __future__ import annotations

import torch


class KVCache:
    """Keys and values of the tokens so far, ``(B, H, n, D)`` views of buffers that grow by
    doubling, so appending a token costs O(H D) amortised (no O(n) copy per token).

    ``keep``: a step reads only the last ``keep`` tokens (a sliding window, the new token
    included); older ones are dropped, and the buffers hold at most ``2 keep`` tokens (when they
    fill, the last ``keep`` are moved to the front: O(keep H D) every ``keep`` tokens, O(H D)
    amortised). ``length`` counts every token appended."""

    def __init__(self, batch: int, heads: int, head_dim: int, device, dtype: torch.dtype, capacity: int = 16,
                 keep: int | None = None):
        if keep is not None and keep < 1:
            raise ValueError(f"KVCache: keep must be >= 1 (tokens a step reads), got {keep}")
        self.keep = keep
        if keep is not None:
            capacity = min(capacity, 2 * keep)
        self.keys = torch.empty(batch, heads, capacity, head_dim, device=device, dtype=dtype)
        self.values = torch.empty_like(self.keys)
        self.length = 0
        self._start = self._end = 0   # the buffers' rows that a step reads

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add ``k, v (B, H, t, D)``; return the cached keys and values a step reads (every token, or
        the last ``keep``), ``(B, H, n, D)`` views."""
        t = k.shape[-2]
        if self._end + t > self.keys.shape[-2]:
            start, end = self._start, self._end
            if self.keep is not None:  # drop what the window no longer reaches, then move the rest down
                start = max(start, end + t - self.keep)
                start = min(start, end)
            capacity = max(self.keys.shape[-2], end - start + t)
            if self.keep is None or end - start + t > self.keys.shape[-2]:
                capacity = max(2 * self.keys.shape[-2], end - start + t)

            def move(buf):
                new = buf.new_empty(*buf.shape[:2], capacity, buf.shape[-1]) if capacity != buf.shape[-2] else buf
                new[..., : end - start, :] = buf[..., start:end, :].clone()
                return new

            self.keys, self.values = move(self.keys), move(self.values)
            self._start, self._end = 0, end - start
        self.keys[..., self._end: self._end + t, :] = k
        self.values[..., self._end: self._end + t, :] = v
        self._end += t
        self.length += t
        if self.keep is not None:
            self._start = max(self._start, self._end - self.keep)
        return self.keys[..., self._start: self._end, :], self.values[..., self._start: self._end, :]


def kv_cache_bytes(heads: int, head_dim: int, length: int, element_bytes: int = 4) -> tuple[int, str]:
    """``decode_state_bytes`` of exact attention: the keys and values of ``length`` tokens, all heads."""
    return 2 * length * heads * head_dim * element_bytes, "KV cache: the keys and values of every past token"
