"""Linear Transformer attention (Katharopoulos et al. 2020, "Transformers are RNNs", ICML).

``phi(x) = elu(x) + 1`` (positive), and attention is the normalized kernel attention
``phi(Q) (phi(K)^T V) / (phi(Q) (phi(K)^T 1))``, computed right-to-left in O(N d^2) time and
O(N d) memory per head (O(N) in the sequence length). As in the paper, Q and K are not scaled
by 1/sqrt(d) (the feature map is not an estimator of the softmax kernel).

Normalizer: the exact ratio. The features are strictly positive, so the normalizer is positive
whenever a key is real; the paper's ``eps = 1e-6`` is not used (an absolute bound does not scale
with the features and would bias rows with small normalizers). A row whose keys are all padded
has normalizer exactly 0 and outputs 0 (:func:`attention_variants._kernel.safe_denominator`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ._kernel import fp32, kernel_attention
from .base import Attention, AttentionConfig
from .masking import normalize_key_padding_mask
from .registry import register


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """``elu(x) + 1`` in fp32: ``(..., d) -> (..., d)``, strictly positive."""
    return F.elu(x.float()) + 1.0


@dataclass
class LinearConfig(AttentionConfig):
    """No knobs of its own."""


@register("linear", LinearConfig)
class LinearAttention(Attention):
    """Katharopoulos et al. 2020: ``q, k, v (B, H, N, D) -> (B, H, N, D)``, O(N), no parameters."""

    exact = False
    complexity = "O(N)"

    def feature_map(self, x: torch.Tensor, is_query: bool, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``elu(x) + 1`` for queries and keys alike (the interface of kernel variants; ``mask`` unused)."""
        return elu_feature_map(x)

    def forward(self, q, k, v, key_padding_mask=None):
        mask = normalize_key_padding_mask(key_padding_mask, q.shape[0], k.shape[-2], q.device)
        with fp32(q.device):
            phi_q, phi_k = elu_feature_map(q), elu_feature_map(k)
        return kernel_attention(phi_q, phi_k, v, mask)
