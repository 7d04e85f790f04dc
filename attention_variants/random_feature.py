"""Random Feature Attention, RFA (Peng et al. 2021, "Random Feature Attention", ICLR).

Random Fourier features (Rahimi & Recht 2007): with ``w_1..w_D ~ N(0, sigma^2 I_d)`` i.i.d.,

    phi(x) = sqrt(1/D) [sin(w_1 . x), ..., sin(w_D . x), cos(w_1 . x), ..., cos(w_D . x)]
    E[phi(x) . phi(y)] = exp(-sigma^2 |x - y|^2 / 2)
                       = exp(-sigma^2 |x|^2 / 2) exp(-sigma^2 |y|^2 / 2) exp(sigma^2 x . y)

and attention is the normalized kernel attention of
:func:`attention_variants._kernel.kernel_attention`: O(N D d) time, O(N (D + d)) memory per head,
i.e. O(N). Here ``num_features = D`` projections give ``2 D`` features.

What is implemented, precisely (the ``normalize`` knob):

* ``normalize=True`` (default; the paper): queries and keys are l2-normalized, ``x = q/|q|``,
  ``y = k/|k|``. Then ``|x| = |y| = 1``, the Gaussian-kernel-to-exp correction
  ``exp(sigma^2 (|x|^2 + |y|^2) / 2)`` is the constant ``exp(sigma^2)`` and cancels in the
  normalization: the variant estimates ``softmax_j(sigma^2 x . y_j)``, i.e. softmax attention on
  unit vectors with a learned inverse temperature ``sigma^2`` (cosine-similarity attention).
* ``normalize=False``: ``x = q d^{-1/4}``, ``y = k d^{-1/4}`` (the softmax scale 1/sqrt(d)), and
  every key's features are multiplied by ``exp(sigma^2 |y|^2 / 2)``; the query factor
  ``exp(sigma^2 |x|^2 / 2)`` multiplies numerator and denominator of its row and cancels. With
  ``sigma = 1`` numerator and denominator are then unbiased estimators of those of
  ``softmax(q k^T / sqrt(d)) v`` -- the setting of the convergence test against ``full``.
  The key factor is computed as ``exp(|y|^2/2 - max_j |y_j|^2/2)`` over the real keys of each
  (batch, head): a factor shared by every key cancels too, and this keeps it <= 1 (no overflow).

``sigma`` is a per-head scale multiplying the fixed random projection (``w = sigma_h w0`` with
``w0 ~ N(0, I)`` a seeded buffer); ``learned_sigma=True`` makes it a parameter (the paper learns
it), initialised to ``sigma_init``.

Denominator guard: sin/cos features are signed, so the estimated normalizer
``phi(q) . sum_j phi(k_j)`` can be near zero or negative (its true value is positive). Its
magnitude is clamped to ``eps`` with the sign kept (``_kernel.safe_denominator``): outputs stay
finite, and a negative estimate is not flipped (which would be a bias of its own).

Not implemented: the paper's gated variant (a learned sigmoid gate g_t with the causal
recurrence ``S_t = g_t S_{t-1} + (1 - g_t) phi(k_t) v_t^T``). It is defined for causal
(decoder) attention; this encoder is bidirectional, and an O(N)-time bidirectional version needs
either a sequential scan or prefix states of size O(N D d). Redraws are not implemented either:
the projection is fixed (a buffer drawn once from ``config.seed``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ._kernel import fp32, kernel_attention, mask_keys
from .base import Attention, AttentionConfig
from .masking import normalize_key_padding_mask
from .registry import register


@dataclass
class RandomFeatureConfig(AttentionConfig):
    #: number of random projections D (2 D features: sin and cos); LRA / paper scale 256
    num_features: int = 256
    #: l2-normalize queries and keys (the paper); False = unbiased softmax(qk/sqrt(d)) estimator
    normalize: bool = True
    #: learn the per-head scale sigma of the random projections (the paper)
    learned_sigma: bool = True
    #: initial (or, with learned_sigma=False, fixed) sigma
    sigma_init: float = 1.0
    #: lower bound on |normalizer| (sign kept)
    eps: float = 1e-6


@register("random_feature", RandomFeatureConfig)
class RandomFeatureAttention(Attention):
    """RFA: ``q, k, v (B, H, N, D) -> (B, H, N, D)`` in O(N); see the module docstring.

    Buffers / parameters: ``projection (num_features, head_dim)`` ~ N(0, I) from
    ``torch.Generator().manual_seed(config.seed)``; ``sigma (heads,)`` (parameter or buffer).
    """

    exact = False
    complexity = "O(N)"

    def __init__(self, config: RandomFeatureConfig):
        super().__init__(config)
        if config.num_features < 1:
            raise ValueError("random_feature needs num_features >= 1")
        gen = torch.Generator().manual_seed(config.seed)
        self.register_buffer("projection",
                             torch.randn(config.num_features, config.head_dim, generator=gen))
        sigma = torch.full((config.heads,), float(config.sigma_init))
        if config.learned_sigma:
            self.sigma = nn.Parameter(sigma)
        else:
            self.register_buffer("sigma", sigma)

    def feature_map(self, x: torch.Tensor, is_query: bool, mask: torch.Tensor | None = None):
        """``(B, H, N, d) -> (B, H, N, 2 num_features)`` fp32 random Fourier features."""
        heads = x.shape[1]
        if heads != self.sigma.shape[0]:
            raise ValueError(f"random_feature was built for {self.sigma.shape[0]} heads, got {heads}")
        x = x.float()
        x = F.normalize(x, dim=-1) if self.config.normalize else x * x.shape[-1] ** -0.25
        sigma = self.sigma.float()[None, :, None, None]
        proj = torch.einsum("bhnd,md->bhnm", x, self.projection.float()) * sigma
        phi = torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1) * (1.0 / math.sqrt(proj.shape[-1]))
        if self.config.normalize or is_query:
            return phi
        # Gaussian -> exp kernel correction exp(sigma^2 |y|^2 / 2) per key, shifted by its max
        # over the real keys (a shared factor cancels); padded keys get 0.
        log_c = 0.5 * sigma.square() * x.square().sum(-1, keepdim=True)        # (B, H, M, 1)
        log_c = mask_keys(log_c, mask, float("-inf"))
        top = log_c.amax(dim=-2, keepdim=True).detach()
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        return phi * torch.exp(log_c - top)

    def forward(self, q, k, v, key_padding_mask=None):
        mask = normalize_key_padding_mask(key_padding_mask, q.shape[0], k.shape[-2], q.device)
        with fp32(q.device):
            phi_q = self.feature_map(q, is_query=True)
            phi_k = self.feature_map(k, is_query=False, mask=mask)
        return kernel_attention(phi_q, phi_k, v, mask, self.config.eps)
