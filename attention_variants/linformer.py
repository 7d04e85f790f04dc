"""Linformer attention (Wang, Li, Khabsa, Fang & Ma 2020, "Linformer: Self-Attention with
Linear Complexity", arXiv:2006.04768).

Shapes: ``q, k, v: (B, H, N, D)`` -> ``(B, H, N, D)``; ``key_padding_mask: (B, N)`` bool,
True = real token.

Keys and values are projected along the length with learned matrices ``E, F: (k, max_length)``
(the first ``N`` columns are used when ``N < max_length``)::

    out = softmax(Q (E K)^T / sqrt(D)) (F V)        E K, F V: (B, H, k, D)

Sharing: ``E`` and ``F`` are shared across heads (the paper's "headwise sharing", Sec. 4);
``share_kv=True`` ties ``F = E`` ("key-value sharing", which is what the LRA reference code
does, with a single ``(max_len, 16)`` kernel). Layerwise sharing is the encoder's business.
Initialisation: Xavier-uniform over ``(k, max_length)``, as the LRA reference code, drawn from
``torch.Generator(seed)``.

Padding: the projections mix positions, so padding cannot be excluded the way softmax masking
does; instead padded rows of ``K`` and ``V`` are zeroed **before** projecting, which makes every
output independent of the padded keys' and values' contents (the property the interface asks
for). Zero rows add nothing to ``E K`` and ``F V``, so a right-padded sequence gives its real
queries the same outputs as the real prefix run alone.

Time O(N k D), memory O(N k) per head (``reference``), O(N + k) on the ``fast`` backend.

Backends (``backend``): ``reference`` -- the matmuls above with the scores and softmax in fp32
(autocast casts the projections); ``fast`` -- the projections ``E K``, ``F V`` in the compute
dtype (:mod:`attention_variants._fast`; fp32 accumulation), then the attention over the ``k``
projected keys as one :func:`torch.nn.functional.scaled_dot_product_attention` call (fused
kernels: fp32 softmax statistics, the ``(N, k)`` scores never stored); ``auto`` -- ``fast`` on every
device and dtype (on the CPU in fp32 it runs torch's fused flash kernel over the ``k`` projected keys:
3x faster than the reference's fwd+bwd at the Text size, measured, and the same function to fp32
rounding). ``last_backend`` records which one ran.

Not causal by construction (``causal=True`` is refused at build time): every projected key
``(E K)_r = sum_n E_rn K_n`` mixes all positions, future ones included. Decoding: no state
(``decode_state_bytes`` is ``None`` with that reason).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ._fast import auto_or_reference, check_backend, compute_dtype, no_autocast
from ._precision import upcast
from .base import Attention, AttentionConfig
from .masking import normalize_key_padding_mask
from .registry import register


@dataclass
class LinformerConfig(AttentionConfig):
    #: projected length; the paper's main setting (k=256; LRA's Nystromformer runs "linformer-256")
    k: int = 256
    #: tie F = E (key-value sharing); False = separate E and F (the paper's default)
    share_kv: bool = False
    #: "auto" (= fast, on every device) | "reference" | "fast"
    backend: str = "auto"


@register("linformer", LinformerConfig)
class LinformerAttention(Attention):
    """Low-rank length projections of keys and values (Wang et al. 2020).

    ``forward(q, k, v, key_padding_mask=None)``: ``(B, H, N, D)`` -> ``(B, H, N, D)``, ``N <= max_length``.
    """

    exact = False
    complexity = "O(N k)"
    supports_causal = False
    causal_refusal = ("it projects keys and values along the length (E K, F V with E, F of shape (k, N)): "
                      "every projected key and value mixes all positions, future ones included, so no query "
                      "can be limited to its past")

    def __init__(self, config: LinformerConfig):
        super().__init__(config)
        if config.k < 1:
            raise ValueError(f"linformer: k must be >= 1, got {config.k}")
        check_backend("linformer", config.backend)
        self.last_backend: str | None = None
        gen = torch.Generator().manual_seed(config.seed)
        bound = math.sqrt(6.0 / (config.k + config.max_length))

        def init():
            return (torch.rand(config.k, config.max_length, generator=gen) * 2 - 1) * bound

        self.E = nn.Parameter(init())
        self.F = None if config.share_kv else nn.Parameter(init())

    def projections(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(E, F)`` restricted to the first ``n`` positions, each ``(k, n)``."""
        if n > self.config.max_length:
            raise ValueError(f"linformer: length {n} exceeds max_length={self.config.max_length}; "
                             "its projections cover max_length positions, raise max_length")
        e = self.E[:, :n]
        f = e if self.F is None else self.F[:, :n]
        return e, f

    def forward(self, q, k, v, key_padding_mask=None):
        b, h, n, d = q.shape
        mask = normalize_key_padding_mask(key_padding_mask, b, k.shape[-2], q.device)
        if mask is not None:
            keep = mask[:, None, :, None]
            k = k.masked_fill(~keep, 0)
            v = v.masked_fill(~keep, 0)
        e, f = self.projections(k.shape[-2])
        self.last_backend = auto_or_reference("fast") if self.config.backend == "auto" else self.config.backend
        if self.last_backend == "fast":
            cd = compute_dtype(q)
            with no_autocast(q.device):
                k_proj = torch.einsum("kn,bhnd->bhkd", e.to(cd), k.to(cd))  # (B, H, k, D)
                v_proj = torch.einsum("kn,bhnd->bhkd", f.to(cd), v.to(cd))
                return F.scaled_dot_product_attention(q.to(cd), k_proj, v_proj)
        k_proj = torch.matmul(e.to(k.dtype), k)  # (B, H, k, D)
        v_proj = torch.matmul(f.to(v.dtype), v)
        scores = upcast(torch.matmul(q, k_proj.transpose(-2, -1))) * (1.0 / math.sqrt(d))
        probs = torch.softmax(scores, dim=-1).to(v_proj.dtype)
        return torch.matmul(probs, v_proj)

    def decode_state_bytes(self, length: int, element_bytes: int = 4) -> tuple[int | None, str]:
        return None, "linformer is not causal (its length projections mix future tokens): no decoding state"
