"""The attention interface every variant implements.

Shapes follow :func:`torch.nn.functional.scaled_dot_product_attention`:
``q, k, v`` are ``(batch, heads, length, head_dim)`` and the output has the shape of ``q``.
``key_padding_mask`` is ``(batch, length)`` bool with ``True`` marking real tokens; a padded
key never changes the output of a real query.

Causal attention (``causal=True`` in any variant's config): query ``i`` sees keys ``j <= i`` only,
in values and in gradients; padding keeps its meaning. A variant that cannot be causal by
construction sets :attr:`Attention.supports_causal` False and says why in
:attr:`Attention.causal_refusal`; building it with ``causal=True`` then fails before any work.

Decoding (generation one token at a time): a variant with a cached path implements
:meth:`Attention.decode_init` and :meth:`Attention.decode_step`; :meth:`Attention.decode_state_bytes`
states what a decoder keeps per sequence at context length N (the KV cache, a window, a
recurrent state), or ``None`` with the reason where there is no fixed-size decoding state.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn


class NoDecodingPath(NotImplementedError):
    """A variant without a cached decoding path (KV cache or running state) was asked to decode
    (:meth:`Attention.decode_init` / :meth:`Attention.decode_step`): generate with its causal
    forward instead. A ``NotImplementedError``, so callers that catch that keep working."""


@dataclass
class AttentionConfig:
    """Fields every variant's config carries; variants subclass it to add their own knobs."""

    heads: int = 8
    head_dim: int = 64
    max_length: int = 4096
    seed: int = 0
    #: query i sees keys j <= i only (values and gradients); refused at build time by variants that
    #: cannot be causal (:attr:`Attention.supports_causal`)
    causal: bool = False


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
    #: whether ``causal=True`` is possible (False: mixes keys along the length by construction)
    supports_causal: ClassVar[bool] = False
    #: why not, when ``supports_causal`` is False (printed by the build-time error)
    causal_refusal: ClassVar[str] = "it does not implement a causal mask"
    #: registry name, set by :func:`attention_variants.register`
    name: ClassVar[str] = ""

    def __init__(self, config: AttentionConfig):
        super().__init__()
        self.config = config

    @property
    def causal(self) -> bool:
        """Query i sees only keys j <= i (``config.causal``; a variant may be causal by
        construction, e.g. gated RFA, and override this)."""
        return bool(getattr(self.config, "causal", False))

    def decode_state_bytes(self, length: int, element_bytes: int = 4) -> tuple[int | None, str]:
        """``(bytes, what)``: the memory a decoder keeps per sequence (all heads of this layer) to
        generate the next token after ``length`` tokens, with ``element_bytes`` per number (4 for
        fp32): e.g. a KV cache ``2 length heads head_dim`` numbers, a recurrent state
        ``heads features head_dim`` plus a normaliser. ``(None, why)`` where there is no
        fixed-size decoding state. Variants override it; the default says it is not stated."""
        return None, f"{self.name or type(self).__name__} does not state its decoding state"

    def decode_init(self, batch: int, device: torch.device, dtype: torch.dtype):
        """The empty decoding state of ``batch`` sequences (before any token); see :meth:`decode_step`."""
        raise NoDecodingPath(f"{self.name or type(self).__name__} has no cached decoding path")

    def decode_step(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state):
        """One generated token: ``q, k, v (B, H, 1, D)`` of the new position -> ``(out (B, H, 1, D),
        new state)``, equal to the causal forward's output at that position. Only variants with a
        cached path (KV cache, running state) implement it."""
        raise NoDecodingPath(f"{self.name or type(self).__name__} has no cached decoding path")

    def extra_repr(self) -> str:
        return repr(self.config)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement forward()")
