"""Full softmax attention, materialized: the LRA paper's baseline ("Transformer").

``softmax(Q K^T / sqrt(d)) V`` with the ``(N, N)`` score matrix held in memory.
Time O(N^2 d), memory O(N^2) per head. Softmax is taken in at least fp32 for stability.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._decode import KVCache
from ._precision import upcast
from .base import Attention, AttentionConfig
from .masking import normalize_key_padding_mask
from .registry import register


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      key_padding_mask: torch.Tensor | None = None,
                      attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Reference attention: ``(B, H, N, D) x3 -> (B, H, N, D)``, materializing ``(B, H, N, M)``.

    ``key_padding_mask``: ``(B, M)`` bool, True = real key. ``attn_mask``: optional bool mask
    broadcastable to ``(B, H, N, M)``, True = may attend. Used as ground truth by tests and
    the benchmark's exactness measurement. Scores and softmax run in float32 for half-precision
    inputs and in the inputs' own precision otherwise (float64 stays float64).
    """
    scores = torch.matmul(q, k.transpose(-2, -1))
    scores = upcast(scores) * (1.0 / math.sqrt(q.shape[-1]))
    allowed = None
    if key_padding_mask is not None:
        allowed = key_padding_mask[:, None, None, :]
    if attn_mask is not None:
        allowed = attn_mask if allowed is None else allowed & attn_mask
    if allowed is not None:
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    return torch.matmul(probs, v)


@dataclass
class FullConfig(AttentionConfig):
    pass


def causal_softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Causal reference attention: query ``i`` attends keys ``j <= i`` that are real; a query with
    no such key (a padded position before the first real token) outputs 0, so nothing after it
    can reach it. ``(B, H, N, D) x3 -> (B, H, N, D)``, materializing ``(B, H, N, N)``."""
    n, m = q.shape[-2], k.shape[-2]
    allowed = torch.ones(n, m, dtype=torch.bool, device=q.device).tril(m - n)
    if key_padding_mask is not None:
        allowed = allowed & key_padding_mask[:, None, None, :]
    out = softmax_attention(q, k, v, attn_mask=allowed)
    return out * allowed.any(dim=-1, keepdim=True).to(out.dtype)


@register("full", FullConfig)
class FullAttention(Attention):
    """Materialized softmax attention (Vaswani et al. 2017); the LRA "Transformer" row.
    ``causal=True``: the lower-triangular mask (:func:`causal_softmax_attention`)."""

    exact = True
    complexity = "O(N^2)"
    supports_causal = True

    def forward(self, q, k, v, key_padding_mask=None):
        mask = normalize_key_padding_mask(key_padding_mask, q.shape[0], k.shape[-2], q.device)
        if self.causal:
            return causal_softmax_attention(q, k, v, mask)
        return softmax_attention(q, k, v, mask)

    def decode_state_bytes(self, length: int, element_bytes: int = 4) -> tuple[int | None, str]:
        c = self.config
        return 2 * length * c.heads * c.head_dim * element_bytes, "KV cache: the keys and values of every past token"

    def decode_init(self, batch: int, device: torch.device, dtype: torch.dtype) -> KVCache:
        return KVCache(batch, self.config.heads, self.config.head_dim, device, dtype)

    def decode_step(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: KVCache):
        """Attend the new query to every cached key and itself: O(n D) per head."""
        keys, values = state.append(k, v)
        return softmax_attention(q, keys, values), state
