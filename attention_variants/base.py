"""The attention interface every variant implements.

Shapes follow :func:`torch.nn.functional.scaled_dot_product_attention`:
``q, k, v`` are ``(batch, heads, length, head_dim)`` and the output has the shape of ``q``.
``key_padding_mask`` is ``(batch, length)`` bool with ``True`` marking real tokens; a padded
key never changes the output of a real query.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn


@dataclass
class AttentionConfig:
    """Fields every variant's config carries; variants subclass it to add their own knobs."""

    heads: int = 8
    head_dim: int = 64
    max_length: int = 4096
    seed: int = 0


class Attention(nn.Module):
    """Base class of all variants.

    Subclasses set the class facts below (the report prints them) and implement
    ``forward(q, k, v, key_padding_mask=None) -> Tensor``.
    """

    #: whether the variant computes exact softmax attention
    exact: ClassVar[bool] = False
    #: time complexity in the sequence length N, e.g. "O(N^2)", "O(N)", "O(N log N)"
    complexity: ClassVar[str] = "O(N^2)"
    #: device types with a fused/fast kernel path (others use the reference path)
    fast_devices: ClassVar[tuple[str, ...]] = ()
    #: query i sees only keys j <= i (e.g. gated RFA); an instance may override this per config
    causal: bool = False
    #: registry name, set by :func:`attention_variants.register`
    name: ClassVar[str] = ""

    def __init__(self, config: AttentionConfig):
        super().__init__()
        self.config = config

    def extra_repr(self) -> str:
        return repr(self.config)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement forward()")
