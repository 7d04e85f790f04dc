"""The map whose smoothness is measured, and the closed-form bound for softmax.

Castin, Ablin & Peyre (2024, "How Smooth Is Attention?") study self-attention as a map of the
whole sequence, ``X (n, d) -> Attention(X W_Q, X W_K, X W_V)``. Here the projections are explicit
(:class:`Projections`, ``H`` heads), the attention is any registered variant, and the map returns
the heads side by side, ``(n, H * d_h)`` (what a multi-head layer hands its output projection).

Conventions: ``q_i = x_i W_Q + b_Q`` with ``W_Q: (d, d_h)``; the softmax score of query ``i`` and
key ``j`` is ``q_i . k_j / sqrt(d_h) = x_j^T A x_i`` (+ bias terms) with

    A = W_K W_Q^T / sqrt(d_h)       (d, d),

the matrix the reference code (github.com/vcastin/how-smooth-is-attention, ``compute_A``) builds
as ``K^T Q / sqrt(d_h)`` from ``(d_h, d)`` weights.

:func:`softmax_bound` is the reference code's closed-form upper bound on the local Lipschitz
constant of softmax self-attention at ``X`` (``compute_bound``), per head
``||W_V||_2 sqrt(R_A^2 r^2 (n + 1) + n)`` with ``R_A = max_i ||A x_i||``,
``r = max_{i,j} ||x_i - x_j||``, summed over heads. Projections with biases are handled exactly by
appending a constant coordinate 1 to every token (``W <- [W; b]``): the map of the augmented
tokens contains the original one, so the bound stays valid.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class Projections:
    """``w: (3, H, d, d_h)`` query/key/value weights, ``b: (3, H, d_h)`` biases or None."""

    w: torch.Tensor
    b: torch.Tensor | None = None

    @property
    def heads(self) -> int:
        return self.w.shape[1]

    @property
    def dim(self) -> int:
        return self.w.shape[2]

    @property
    def head_dim(self) -> int:
        return self.w.shape[3]

    def to(self, **kw) -> "Projections":
        return Projections(self.w.to(**kw), None if self.b is None else self.b.to(**kw))

    def augmented(self) -> "Projections":
        """Bias-free projections of tokens with a constant 1 appended: ``(3, H, d + 1, d_h)``."""
        if self.b is None:
            return self
        return Projections(torch.cat([self.w, self.b[:, :, None, :]], dim=2))

    def score_matrix(self, head: int = 0) -> torch.Tensor:
        """``A = W_K W_Q^T / sqrt(d_h)`` of one head, ``(d, d)`` (biases ignored)."""
        wq, wk = self.w[0, head], self.w[1, head]
        return wk @ wq.T / math.sqrt(self.head_dim)


def random_projections(d: int, head_dim: int | None = None, *, heads: int = 1, seed: int = 0,
                       weight_std: float = 1.0, dtype: torch.dtype = torch.float32,
                       device: torch.device | str = "cpu") -> Projections:
    """Bias-free ``N(0, weight_std^2)`` projections drawn from ``torch.Generator(seed + 1)``."""
    head_dim = head_dim or d
    gen = torch.Generator().manual_seed(seed + 1)
    w = torch.randn(3, heads, d, head_dim, generator=gen, dtype=torch.float64) * weight_std
    return Projections(w.to(device=device, dtype=dtype))


def projected_map(attention: Callable, proj: Projections) -> Callable[[torch.Tensor], torch.Tensor]:
    """``X (n, d) -> attention(X W_Q + b_Q, X W_K + b_K, X W_V + b_V)`` as ``(n, H * d_h)``.

    ``attention`` takes ``(1, H, n, d_h)`` q, k, v (the registry interface). Cost: the variant's
    plus ``O(n d H d_h)`` for the projections.
    """
    w, b = proj.w, proj.b

    def fn(x: torch.Tensor) -> torch.Tensor:
        qkv = torch.einsum("nd,shde->shne", x, w.to(x.dtype))     # (3, H, n, d_h)
        if b is not None:
            qkv = qkv + b.to(x.dtype)[:, :, None, :]
        out = attention(qkv[0][None], qkv[1][None], qkv[2][None])[0]   # (H, n, d_h)
        return out.transpose(0, 1).reshape(x.shape[0], -1)

    return fn


def softmax_bound(x: torch.Tensor, proj: Projections) -> float:
    """Upper bound on ``||J||_2`` of softmax self-attention with ``proj`` at ``x (n, d)``
    (the reference code's ``compute_bound``; see the module docstring). Cost O(n^2 d + H n d^2)."""
    x = x.detach().double()
    p = proj.augmented().to(dtype=x.dtype, device=x.device)
    if proj.b is not None:
        x = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], dim=1)
    n = x.shape[0]
    r = float(torch.cdist(x, x).max()) if n > 1 else 0.0
    total = 0.0
    for h in range(p.heads):
        a = p.score_matrix(h)                                  # (d, d)
        r_a = float((x @ a.T).norm(dim=-1).max())             # max_i ||A x_i||
        v_norm = float(torch.linalg.matrix_norm(p.w[2, h], ord=2))
        total += v_norm * math.sqrt(r_a ** 2 * r ** 2 * (n + 1) + n)
    return total
