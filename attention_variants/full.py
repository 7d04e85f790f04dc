"""Full softmax attention, materialized: the LRA paper's baseline ("Transformer").

``softmax(Q K^T / sqrt(d)) V`` with the ``(N, N)`` score matrix held in memory.
Time O(N^2 d), memory O(N^2) per head. Softmax is taken in at least fp32 for stability.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

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


@register("full", FullConfig)
class FullAttention(Attention):
    """Materialized softmax attention (Vaswani et al. 2017); the LRA "Transformer" row."""

    exact = True
    complexity = "O(N^2)"

    def forward(self, q, k, v, key_padding_mask=None):
        mask = normalize_key_padding_mask(key_padding_mask, q.shape[0], k.shape[-2], q.device)
        return softmax_attention(q, k, v, mask)
