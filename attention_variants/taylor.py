"""Taylor (Based) linear attention: the 2nd-order Taylor expansion of ``exp`` as a feature map
(Arora, Eyuboglu, Zhang, Timalsina, Alberti, Zinsley, Zou, Rudra & Re 2024, "Simple linear
attention language models balance the recall-throughput tradeoff", ICML; arXiv 2402.18668;
the "Based" model).

With ``x`` a query or key projected to ``f = feature_dim`` dimensions (16 in Based),

    phi(x) = [1, x / f^(1/4), vec(x x^T) / (sqrt(2) sqrt(f))]      (1 + f + f^2 features)
    phi(q) . phi(k) = 1 + s + s^2 / 2,     s = q . k / sqrt(f)

the 2nd-order Taylor polynomial of ``exp(s)``, the softmax kernel at the usual 1/sqrt(d) scale.
It is >= 1/2 for every s, so the normalised linear attention
``out_i = sum_j K(q_i, k_j) v_j / sum_j K(q_i, k_j)`` needs no normalizer guard (issue 20).

Symmetric form (what is computed): ``x x^T`` is symmetric, so the ``f^2`` quadratic features
hold each product ``x_a x_b`` (a != b) twice; keeping the ``f (f + 1) / 2`` upper-triangular ones,
the diagonal scaled by ``1 / (sqrt(2) sqrt(f))`` and the off-diagonal by ``1 / sqrt(f)``, gives the
same inner product with ``1 + f + f (f + 1) / 2`` features: 153 instead of 273 at f = 16 (as in
fla's ``TaylorFeatureMap``). :func:`taylor_features` with ``symmetric=False`` is the literal
``vec(x x^T)`` form (the Based reference), kept for tests.

Projection: Based projects the layer input straight to ``f`` dimensions per head; this interface
receives per-head ``q, k`` of ``head_dim = d``, so a per-head ``d -> f`` linear map (no bias) is
applied first: ``projection (heads, d, f)``, learned when ``learned_projection`` (as Based's
projections are). Initialisation: a Haar-random semi-orthogonal matrix (orthonormal columns)
drawn from ``config.seed``, one per head. It keeps the per-coordinate statistics: for q, k with
i.i.d. coordinates the projected score ``s = q P . k P / sqrt(f)`` has the law of the softmax
score ``q . k / sqrt(d)`` of the unprojected head (and equals it when ``f = d``).
``feature_dim=None`` skips the projection (``f = d``; 2145 features at d = 64).

Cost per head: O(N d f) projection, O(N f^2) features, O(N F D) attention with
``F = 1 + f + f (f + 1) / 2``: O(N). Padded keys: their projected rows are zeroed before the
features (no inf/NaN reaches the products or their gradients) and
:func:`~attention_variants._kernel.kernel_attention` zeroes their features. fp32 with autocast
disabled (float64 stays float64).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ._kernel import (augment_ones, causal_kernel_attention_reference, fp32, fused_kernel_attention, in_batch_groups,
                      kernel_attention,
                      kernel_backend, kernel_decode_init, kernel_decode_step, kernel_state_bytes, mask_keys)
from ._precision import upcast, working_dtype
from .base import Attention, AttentionConfig
from .masking import normalize_key_padding_mask
from .registry import register


def taylor_features(x: torch.Tensor, symmetric: bool = True) -> torch.Tensor:
    """2nd-order Taylor features of ``x (..., f)``: ``(..., 1 + f + f (f + 1) / 2)`` symmetric, or
    ``(..., 1 + f + f^2)`` with ``symmetric=False``; ``phi(x) . phi(y) = 1 + s + s^2 / 2`` with
    ``s = x . y / sqrt(f)`` either way. Same dtype as ``x``; O(f^2) per row."""
    f = x.shape[-1]
    outer = x.unsqueeze(-1) * x.unsqueeze(-2)                             # (..., f, f)
    if symmetric:
        rows, cols = torch.triu_indices(f, f, device=x.device)
        scale = torch.full(rows.shape, 1.0 / math.sqrt(f), dtype=x.dtype, device=x.device)
        scale[rows == cols] = 1.0 / math.sqrt(2.0 * f)
        quad = outer[..., rows, cols] * scale
    else:
        quad = outer.flatten(-2) / math.sqrt(2.0 * f)
    return torch.cat([torch.ones_like(x[..., :1]), x * f ** -0.25, quad], dim=-1)


def taylor_factor_weights(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The symmetric Taylor features of ``x P`` as a product of two affine maps of ``[x | 1]``:
    ``phi = ([x | 1] A) * ([x | 1] B)`` with ``A, B (H, d + 1, F)``, ``F = 1 + f + f (f + 1) / 2``, from
    the projection ``p (H, d, f)``. Column by column: the constant ``1 = 1 * 1``; the linear
    ``(x P)_a / f^(1/4) = ((x P)_a / f^(1/4)) * 1``; the quadratic ``(x P)_a (x P)_b s_ab = ((x P)_a s_ab)
    * (x P)_b`` (``a <= b``, ``s`` = ``1 / sqrt(2 f)`` on the diagonal, ``1 / sqrt(f)`` off it): the
    columns of :func:`taylor_features` (``symmetric=True``) in the same order. Gathers on the small
    ``(H, d, f)`` projection replace the ``(N, f, f)`` outer product and its ``index``/``index_put_``;
    differentiable in ``p``. O(H d F)."""
    h, d, f = p.shape
    rows, cols = torch.triu_indices(f, f, device=p.device)
    scale = torch.full(rows.shape, 1.0 / math.sqrt(f), dtype=p.dtype, device=p.device)
    scale = scale.masked_fill(rows == cols, 1.0 / math.sqrt(2.0 * f))
    zero = p.new_zeros(h, d, 1)
    a = torch.cat([zero, p * f ** -0.25, p[..., rows] * scale], dim=-1)            # (H, d, F)
    b = torch.cat([zero, torch.zeros_like(p), p[..., cols]], dim=-1)
    ones, nil = p.new_ones(h, 1, 1), p.new_zeros(h, 1, f * (f + 1) // 2)
    a = torch.cat([a, torch.cat([ones, p.new_zeros(h, 1, f), nil], dim=-1)], dim=1)  # constant row
    b = torch.cat([b, torch.cat([ones, p.new_ones(h, 1, f), nil], dim=-1)], dim=1)
    return a, b


def semi_orthogonal(rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    """A Haar-random ``(rows, cols)`` matrix with orthonormal columns (rows >= cols) or rows."""
    big, small = max(rows, cols), min(rows, cols)
    g = torch.randn(big, small, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(g)
    q = q * torch.where(torch.diagonal(r) < 0, -1.0, 1.0)                # Haar: fix the signs
    return (q if rows >= cols else q.T).float()


@dataclass
class TaylorConfig(AttentionConfig):
    #: dimension f q and k are projected to before the features (Based: 16, i.e. 273 features
    #: in the full form, 153 in the symmetric one computed here); None = head_dim, no projection
    feature_dim: int | None = 16
    #: train the per-head head_dim -> feature_dim projection (Based's q/k projections are learned)
    learned_projection: bool = True
    #: "auto" (= fast) | "reference" (outer products, fp32) | "fast" (two matmuls and a product)
    backend: str = "auto"
    #: tokens per chunk of the causal chunked kernel (causal=True); changes nothing but speed
    chunk_size: int = 64


@register("taylor", TaylorConfig)
class TaylorAttention(Attention):
    """Based's Taylor linear attention: ``q, k, v (B, H, N, D) -> (B, H, N, D)`` in O(N).

    ``projection (heads, head_dim, feature_dim)`` (parameter, or buffer when not learned; absent
    with ``feature_dim=None``), shared by queries and keys as in Based's feature map.
    """

    exact = False
    complexity = "O(N)"
    supports_causal = True

    def __init__(self, config: TaylorConfig):
        super().__init__(config)
        kernel_backend(config.backend, torch.empty(0))
        if config.chunk_size < 1:
            raise ValueError(f"taylor needs chunk_size >= 1, got {config.chunk_size}")
        self.last_backend: str | None = None
        d = config.head_dim
        if config.feature_dim is None:
            self.feature_dim, self.projection = d, None
            return
        f = int(config.feature_dim)
        if f < 1:
            raise ValueError(f"taylor needs feature_dim >= 1 (or null for head_dim), got {config.feature_dim}")
        self.feature_dim = f
        gen = torch.Generator().manual_seed(config.seed)
        proj = torch.stack([semi_orthogonal(d, f, gen) for _ in range(config.heads)])
        if config.learned_projection:
            self.projection = nn.Parameter(proj)
        else:
            self.register_buffer("projection", proj)

    @property
    def num_features(self) -> int:
        """Features per query/key: ``1 + f + f (f + 1) / 2``."""
        f = self.feature_dim
        return 1 + f + f * (f + 1) // 2

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, N, head_dim) -> (B, H, N, feature_dim)`` in fp32 (float64 stays float64)."""
        x = upcast(x)
        if self.projection is None:
            return x
        if self.projection.shape[0] != x.shape[1]:
            raise ValueError(f"taylor was built for {self.projection.shape[0]} heads, got {x.shape[1]}")
        return torch.einsum("bhnd,hdf->bhnf", x, self.projection.to(x.dtype))

    def feature_map(self, x: torch.Tensor, is_query: bool, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, H, N, head_dim) -> (B, H, N, 1 + f + f (f + 1) / 2)`` features of queries or keys
        (the same map for both; padded keys' rows, per ``mask (B, N)``, are zeroed first)."""
        with fp32(x.device):
            if not is_query:
                x = mask_keys(x, mask)
            return taylor_features(self.project(x))

    def _fused_features(self, x: torch.Tensor) -> torch.Tensor:
        """The fast path's features of ``x (B, H, N, head_dim)`` (at least fp32): ``([x | 1] A) * ([x | 1] B)``
        (:func:`taylor_factor_weights`, the projection folded into ``A`` and ``B``): two
        ``(N, d + 1) x (d + 1, F)`` matmuls and one product, the same features as
        :meth:`feature_map`, rounded differently. Time O(N d F), memory O(N F) per head."""
        work = working_dtype(x.dtype)
        x = x.to(work)
        if self.projection is None:
            p = torch.eye(x.shape[-1], dtype=work, device=x.device).expand(x.shape[1], -1, -1)
        else:
            if self.projection.shape[0] != x.shape[1]:
                raise ValueError(f"taylor was built for {self.projection.shape[0]} heads, got {x.shape[1]}")
            p = self.projection.to(work)
        a, b = taylor_factor_weights(p)
        x1 = augment_ones(x)
        return torch.matmul(x1, a) * torch.matmul(x1, b)

    def _fused_attention(self, q, k, v, mask):
        """The fast path: :meth:`_fused_features` and :func:`~attention_variants._kernel.fused_kernel_attention`."""
        with fp32(q.device):
            phi_q, phi_k = self._fused_features(q), self._fused_features(mask_keys(k, mask))
            out = fused_kernel_attention(phi_q, phi_k, v, mask, causal=self.causal, chunk=self.config.chunk_size)
        return out.to(v.dtype)

    def decode_state_bytes(self, length: int, element_bytes: int = 4) -> tuple[int | None, str]:
        c = self.config
        return (kernel_state_bytes(c.heads, self.num_features, c.head_dim, element_bytes),
                "running state sum phi(k) v^T ((1 + f + f (f + 1) / 2) x head_dim, f = feature_dim) and "
                "normaliser sum phi(k) per head")

    def decode_init(self, batch: int, device: torch.device, dtype: torch.dtype):
        return kernel_decode_init(batch, self.config.heads, self.num_features, self.config.head_dim, device, dtype)

    def decode_step(self, q, k, v, state):
        """One token: O(F d) per head with ``F = 1 + f + f (f + 1) / 2`` features."""
        with fp32(q.device):
            out, state = kernel_decode_step(state, self._fused_features(q), self._fused_features(k), v)
        return out.to(v.dtype), state

    def forward(self, q, k, v, key_padding_mask=None):
        mask = normalize_key_padding_mask(key_padding_mask, q.shape[0], k.shape[-2], q.device)
        self.last_backend = kernel_backend(self.config.backend, q)
        if self.last_backend == "fast":
            return in_batch_groups(self._fused_attention, q, k, v, mask, self.num_features)
        phi_q = self.feature_map(q, is_query=True)
        phi_k = self.feature_map(k, is_query=False, mask=mask)
        if self.causal:
            return causal_kernel_attention_reference(phi_q, phi_k, v, mask).to(v.dtype)
        return kernel_attention(phi_q, phi_k, v, mask=mask)
