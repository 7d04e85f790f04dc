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
from torch.autograd.function import once_differentiable

from ._fast import REDUCED, CudaCompiled, check_backend, compute_dtype, no_autocast
from ._kernel import (causal_kernel_attention_reference, fast_kernel_attention, fp32, fused_kernel_attention,
                      in_batch_groups, kernel_attention, kernel_backend, kernel_decode_init, kernel_decode_step, kernel_state_bytes,
                      mask_keys, ones_column, zero_padded_rows_)
from ._precision import upcast, working_dtype
from .base import Attention, AttentionConfig
from .masking import normalize_key_padding_mask
from .registry import register


def elu_plus_one(x: torch.Tensor) -> torch.Tensor:
    """``elu(x) + 1`` in ``x``'s dtype, without cancellation: ``x + 1`` for ``x >= 0`` and ``exp(x)``
    for ``x < 0`` (``F.elu(x) + 1`` computes ``(exp(x) - 1) + 1``, which loses ``exp(x)`` to rounding
    once it falls below the dtype's epsilon: exactly 0 for ``x <= -16.6`` in fp32). Autograd gives
    the derivative ``1`` / ``exp(x)``; the clamp keeps the unselected branch finite (no ``0 * inf``)."""
    return torch.where(x >= 0, x + 1.0, torch.exp(x.clamp(max=0.0)))


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """``elu(x) + 1`` in the working dtype (at least fp32; float64 stays float64):
    ``(..., d) -> (..., d)``, strictly positive (:func:`elu_plus_one`)."""
    return elu_plus_one(upcast(x))


@CudaCompiled
def _elu_plus_one(x: torch.Tensor, cd: torch.dtype) -> torch.Tensor:
    """``elu(x) + 1`` computed in at least fp32 without cancellation, cast to ``cd``: ``exp(min(x, 0)) +
    max(x, 0)``, which is :func:`elu_plus_one` bit for bit (``1 + x`` for ``x >= 0``, ``exp(x) + 0``
    below), in two allocations instead of four (no autograd here: :class:`_EluFeatures` owns it)."""
    x = x.to(working_dtype(cd))
    return x.clamp(max=0.0).exp_().add_(x.clamp(min=0.0)).to(cd)


@CudaCompiled
def _elu_plus_one_backward(grad: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    return grad * torch.clamp(phi, max=1.0)


class _EluFeatures(torch.autograd.Function):
    """``elu(x) + 1`` in a compute dtype, saving only the features: the derivative is
    ``min(phi, 1)`` (1 where ``x > 0``, ``e^x = phi`` elsewhere)."""

    @staticmethod
    def forward(ctx, x, cd):
        phi = _elu_plus_one(x, cd)
        ctx.save_for_backward(phi)
        ctx.x_dtype = x.dtype
        return phi

    @staticmethod
    def backward(ctx, grad):
        (phi,) = ctx.saved_tensors
        return _elu_plus_one_backward(grad, phi).to(ctx.x_dtype), None


def _elu_plus_one_contiguous(x: torch.Tensor) -> torch.Tensor:
    """:func:`elu_plus_one` of ``x`` (any strides) into a fresh contiguous tensor of ``x``'s dtype, no
    autograd: ``exp(min(x, 0)) + max(x, 0)`` in four passes, the first reading ``x`` where it lies
    (the encoder's ``q``/``k`` are strided views of one projection), so every later pass and matmul
    sees contiguous memory (a strided operand would make ``matmul`` copy it each time)."""
    phi = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    torch.clamp(x, max=0.0, out=phi).exp_()
    return phi.add_(x.clamp(min=0.0))


class _LinearAttentionFunction(torch.autograd.Function):
    """Non-causal linear attention in the working dtype (fp32/float64) with a hand-written backward:
    ``q, k, v (B, H, N|M, D)``, ``mask (B, M)`` or None -> ``(B, H, N, D)``.

    Forward: ``phi = elu(x) + 1`` (:func:`_elu_plus_one_contiguous`), padded keys' feature rows and
    value rows zeroed (:func:`~attention_variants._kernel.zero_padded_rows_`: an inf/NaN there cannot
    leak), ``S = phi_k^T [v | 1]`` ``(F, D + 1)``, ``[num | den] = phi_q S`` (two matmuls; the normalizer rides along as the ones
    column) and ``out = num * (1 / den)``, the reciprocal taken once per row (a row whose keys are all
    padded has ``den = num = 0`` and outputs 0, :func:`~attention_variants._kernel.safe_denominator`).

    Backward, from ``g = dL/dout``: ``dL/dnum = g / den`` and ``dL/dden = -(g . out) / den`` side by side
    as ``G (N, D + 1)``; then ``dphi_q = G S^T``, ``dS = phi_q^T G``, ``dphi_k = [v | 1] dS^T``, ``dv =
    phi_k dS[:, :D]`` and the feature map's derivative ``min(phi, 1)`` (1 for ``x >= 0``, ``e^x = phi``
    below). Padded keys get exactly zero gradient: their rows of ``phi_k`` and ``[v | 1]`` are 0. Four
    matmuls and no ``(N, D + 1)`` zero-fill or strided division, which autograd's graph of the same
    forward spends. Saves ``phi_q, phi_k, [v | 1], S``, the reciprocals and ``out``: O((N + M)(F + D)).
    First-order only (``once_differentiable``): double backward and ``torch.func`` use the reference path."""

    @staticmethod
    def forward(ctx, q, k, v, mask):
        d = v.shape[-1]
        phi_q, phi_k = _elu_plus_one_contiguous(q), _elu_plus_one_contiguous(k)
        v1 = ones_column(v, mask)                                                # [v | 1], padded rows 0
        zero_padded_rows_(phi_k, mask)
        s = torch.matmul(phi_k.transpose(-1, -2), v1)                             # (B, H, F, D + 1)
        sums = torch.matmul(phi_q, s)                                             # (B, H, N, D + 1)
        den = sums[..., d]
        inv = torch.where(den == 0, torch.ones_like(den), den).reciprocal_()      # (B, H, N)
        out = sums[..., :d] * inv.unsqueeze(-1)
        ctx.save_for_backward(phi_q, phi_k, v1, s, inv, out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        phi_q, phi_k, v1, s, inv, out = ctx.saved_tensors
        d = out.shape[-1]
        gs = torch.empty(*g.shape[:-1], d + 1, dtype=g.dtype, device=g.device)    # [dL/dnum | dL/dden]
        torch.mul(g, inv.unsqueeze(-1), out=gs[..., :d])
        gs[..., d] = torch.linalg.vecdot(g, out).mul_(inv).neg_()
        g_s = torch.matmul(phi_q.transpose(-1, -2), gs)                           # (B, H, F, D + 1)
        g_q = _elu_plus_one_backward(torch.matmul(gs, s.transpose(-1, -2)), phi_q)
        g_k = _elu_plus_one_backward(torch.matmul(v1, g_s.transpose(-1, -2)), phi_k)
        g_v = torch.matmul(phi_k, g_s[..., :d])
        return g_q, g_k, g_v, None


@dataclass
class LinearConfig(AttentionConfig):
    #: "auto" (= fast, on every device and dtype) | "reference" | "fast"
    backend: str = "auto"
    #: tokens per chunk of the causal chunked kernel (causal=True); changes nothing but speed
    chunk_size: int = 64


@register("linear", LinearConfig)
class LinearAttention(Attention):
    """Katharopoulos et al. 2020: ``q, k, v (B, H, N, D) -> (B, H, N, D)``, O(N), no parameters.

    Backends (``backend``): ``reference`` (at least fp32), ``fast`` (in fp32/float64:
    :class:`_LinearAttentionFunction`, the normalizer as a ones column of the values, with a
    hand-written backward; under bf16/fp16: features and matmuls in the compute dtype,
    :func:`attention_variants._kernel.fast_kernel_attention`), ``auto`` = ``fast``.

    ``causal=True``: causal linear attention by prefix sums; the fast path is chunked
    (``chunk_size`` tokens, :func:`attention_variants._kernel.causal_kernel_attention`), the
    reference path the cumulative-sum definition; decoding keeps ``S = sum phi(k) [v | 1]^T``."""

    exact = False
    complexity = "O(N)"
    supports_causal = True

    def __init__(self, config: LinearConfig):
        super().__init__(config)
        check_backend("linear", config.backend)
        if config.chunk_size < 1:
            raise ValueError(f"linear needs chunk_size >= 1, got {config.chunk_size}")
        self.last_backend: str | None = None

    def feature_map(self, x: torch.Tensor, is_query: bool, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``elu(x) + 1`` for queries and keys alike (the interface of kernel variants; ``mask`` unused)."""
        return elu_feature_map(x)

    def forward(self, q, k, v, key_padding_mask=None):
        mask = normalize_key_padding_mask(key_padding_mask, q.shape[0], k.shape[-2], q.device)
        self.last_backend = kernel_backend(self.config.backend, q)
        if self.last_backend == "fast":
            cd = compute_dtype(q)
            if cd in REDUCED and not self.causal:
                with no_autocast(q.device):
                    phi_q, phi_k = _EluFeatures.apply(q, cd), _EluFeatures.apply(k, cd)
                return fast_kernel_attention(phi_q, phi_k, v, mask)
            return in_batch_groups(self._fused_attention, q, k, v, mask, q.shape[-1])
        with fp32(q.device):
            phi_q, phi_k = elu_feature_map(q), elu_feature_map(k)
        if self.causal:
            return causal_kernel_attention_reference(phi_q, phi_k, v, mask).to(v.dtype)
        return kernel_attention(phi_q, phi_k, v, mask)

    def _fused_attention(self, q, k, v, mask):
        """The fp32/float64 fast path. Non-causal: :class:`_LinearAttentionFunction` (features, both
        matmuls and a hand-written backward). Causal: :class:`_EluFeatures` (saving only the features;
        padded keys' rows zeroed so their features are finite) and the chunked
        :func:`~attention_variants._kernel.fused_kernel_attention`."""
        work = working_dtype(compute_dtype(q))
        with fp32(q.device):
            if not self.causal:
                return _LinearAttentionFunction.apply(q.to(work), k.to(work), v.to(work), mask).to(v.dtype)
            phi_q, phi_k = _EluFeatures.apply(q, work), _EluFeatures.apply(mask_keys(k, mask), work)
            out = fused_kernel_attention(phi_q, phi_k, v, mask, causal=True, chunk=self.config.chunk_size)
        return out.to(v.dtype)

    def decode_state_bytes(self, length: int, element_bytes: int = 4) -> tuple[int | None, str]:
        c = self.config
        return (kernel_state_bytes(c.heads, c.head_dim, c.head_dim, element_bytes),
                "running state sum phi(k) v^T (head_dim x head_dim) and normaliser sum phi(k) per head")

    def decode_init(self, batch: int, device: torch.device, dtype: torch.dtype):
        return kernel_decode_init(batch, self.config.heads, self.config.head_dim, self.config.head_dim, device, dtype)

    def decode_step(self, q, k, v, state):
        """One token: add ``phi(k) [v | 1]^T`` to the state and read it with ``phi(q)``: O(D^2) per head."""
        with fp32(q.device):
            out, state = kernel_decode_step(state, elu_feature_map(q), elu_feature_map(k), v)
        return out.to(v.dtype), state
