"""Hedgehog: linear attention with a learned, softmax-mimicking feature map (Zhang, Bhatia,
Kumbong & Re 2024, "The Hedgehog & the Porcupine: Expressive Linear Attentions with Softmax
Mimicry", ICLR; arXiv 2402.04347).

Per head, queries and keys each get their own trainable map (a linear layer ``head_dim ->
feature_dim`` with bias, initialised to the identity and zero bias, as in the paper) followed by
the paper's activation, applied to ``u = x W + b``:

* ``activation="softmax"`` (the paper's default, and the LoLCATs code's ``softmax_dim``):
  ``phi(x) = [softmax(u), softmax(-u)]`` over the feature dimension: ``2 feature_dim`` positive
  features in (0, 1), no stabilizer needed.
* ``activation="exp"``: ``phi(x) = [exp(u), exp(-u)]``, computed as ``exp(+-u - c)`` with a
  stabilizer ``c`` that cancels in the normalised attention: per query row ``c_i = max_f |u_if|``
  (a factor of query i's numerator and normalizer), for keys one ``c = max |u_jf|`` over the real
  keys of a (batch, head) (a factor shared by every key). Every exponent is then <= 0.

The attention is the normalised linear attention of these features
(:func:`attention_variants._kernel.kernel_attention`):
``out_i = sum_j (phi(q_i) . phi(k_j)) v_j / sum_j phi(q_i) . phi(k_j)``, O(N F D) time and
O(N (F + D) + F D) memory per head with ``F = 2 feature_dim`` features: O(N). The features are
strictly positive, so the normalizer is the exact ratio with no floor (issue 20); a row whose keys
are all padded outputs 0.

The map only learns to mimic softmax when it is trained to: the paper distils each layer's
softmax attention weights into it (cross-entropy between the softmax weights of the same q, k
and these normalised linear weights), see :mod:`lra.distill` and the ``attention.distill``
training option. Without distillation it is simply a trainable positive feature map.

Padding: a padded key's input row is zeroed before the map (so inf/NaN in it cannot reach the
features or their gradients), it is excluded from the key stabilizer, and
:func:`~attention_variants._kernel.kernel_attention` zeroes its features before both sums.
Precision: the map and the attention run in fp32 with autocast disabled (float64 stays float64).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ._kernel import (ShiftedExpFeatures, augment_ones, causal_kernel_attention_reference, fp32, fused_kernel_attention,
                      in_batch_groups,
                      kernel_attention, kernel_backend, kernel_decode_init, kernel_decode_step, kernel_state_bytes,
                      mask_keys)
from ._precision import working_dtype
from .base import Attention, AttentionConfig
from .masking import normalize_key_padding_mask
from .registry import register

ACTIVATIONS = ("softmax", "exp")


def hedgehog_activation(u: torch.Tensor, activation: str, is_query: bool,
                        mask: torch.Tensor | None = None) -> torch.Tensor:
    """``[f(u), f(-u)]``: ``(B, H, N, f) -> (B, H, N, 2 f)`` positive features (see the module docstring).

    ``mask (B, N)`` (True = real) is used by the ``exp`` keys' shared stabilizer only.
    """
    if activation == "softmax":
        return torch.cat([torch.softmax(u, dim=-1), torch.softmax(-u, dim=-1)], dim=-1)
    if activation != "exp":
        raise ValueError(f"unknown hedgehog activation {activation!r}; choose one of {ACTIVATIONS}")
    size = u.detach().abs().amax(dim=-1, keepdim=True)                # (B, H, N, 1)
    if is_query:
        c = size
    else:
        c = mask_keys(size, mask, float("-inf")).amax(dim=-2, keepdim=True)
        c = torch.where(torch.isfinite(c), c, torch.zeros_like(c))    # every key padded
    return torch.cat([torch.exp(u - c), torch.exp(-u - c)], dim=-1)


@dataclass
class HedgehogConfig(AttentionConfig):
    #: output dimension f of the learned map (2 f features); None = head_dim (the paper's d -> d map)
    feature_dim: int | None = None
    #: "softmax" ([softmax(u), softmax(-u)], the paper / LoLCATs default) or "exp" ([exp(u), exp(-u)])
    activation: str = "softmax"
    #: one map (per q and per k) shared by all heads instead of one per head
    share_heads: bool = False
    #: "auto" (= fast) | "reference" | "fast" (one matmul of [x | 1] against [W, -W; b, -b], one
    #: softmax over both halves or one shifted exp; the same function)
    backend: str = "auto"
    #: tokens per chunk of the causal chunked kernel (causal=True); changes nothing but speed
    chunk_size: int = 64


@register("hedgehog", HedgehogConfig)
class Hedgehog(Attention):
    """Hedgehog linear attention: ``q, k, v (B, H, N, D) -> (B, H, N, D)`` in O(N).

    Parameters: ``q_weight, k_weight (G, head_dim, feature_dim)`` initialised to the identity
    (``torch.eye(head_dim, feature_dim)``) and ``q_bias, k_bias (G, feature_dim)`` to zero, with
    ``G = 1`` when ``share_heads`` else ``heads``.
    """

    exact = False
    complexity = "O(N)"
    supports_causal = True

    def __init__(self, config: HedgehogConfig):
        super().__init__(config)
        kernel_backend(config.backend, torch.empty(0))
        if config.chunk_size < 1:
            raise ValueError(f"hedgehog needs chunk_size >= 1, got {config.chunk_size}")
        self.last_backend: str | None = None
        if config.activation not in ACTIVATIONS:
            raise ValueError(f"unknown hedgehog activation {config.activation!r}; choose one of {ACTIVATIONS}")
        f = config.head_dim if config.feature_dim is None else int(config.feature_dim)
        if f < 1:
            raise ValueError(f"hedgehog needs feature_dim >= 1 (or null for head_dim), got {config.feature_dim}")
        self.feature_dim = f
        groups = 1 if config.share_heads else config.heads
        eye = torch.eye(config.head_dim, f).expand(groups, -1, -1)
        self.q_weight = nn.Parameter(eye.clone())
        self.k_weight = nn.Parameter(eye.clone())
        self.q_bias = nn.Parameter(torch.zeros(groups, f))
        self.k_bias = nn.Parameter(torch.zeros(groups, f))

    @property
    def num_features(self) -> int:
        """Features per query/key: ``2 feature_dim``."""
        return 2 * self.feature_dim

    def feature_map(self, x: torch.Tensor, is_query: bool, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, H, N, head_dim) -> (B, H, N, 2 feature_dim)`` fp32 features of queries or keys.

        ``mask (B, N)`` (True = real): padded keys' inputs are zeroed and they are left out of the
        ``exp`` stabilizer (their features are zeroed later by the attention). Cost O(N d f).
        """
        heads = x.shape[1]
        weight, bias = (self.q_weight, self.q_bias) if is_query else (self.k_weight, self.k_bias)
        if weight.shape[0] not in (1, heads):
            raise ValueError(f"hedgehog was built for {weight.shape[0]} heads, got {heads}")
        work = working_dtype(x.dtype)
        with fp32(x.device):
            x = x.to(work)
            if not is_query:
                x = mask_keys(x, mask)
            u = torch.einsum("bhnd,hdf->bhnf", x, weight.to(work)) + bias.to(work)[None, :, None, :]
            return hedgehog_activation(u, self.config.activation, is_query, mask)

    def _fused_features(self, x: torch.Tensor, is_query: bool):
        """The fast path's features of ``x (B, H, N, head_dim)`` (at least fp32; padded key rows must
        be zeroed): ``(phi, log_w)``. ``u2 = [x | 1] [W, -W; b, -b]`` gives ``[u, -u]`` in one matmul;
        ``softmax``: one softmax over each half of a ``(..., 2, f)`` view (``log_w`` None);
        ``exp``: :class:`~attention_variants._kernel.ShiftedExpFeatures` shifts each row by its own
        maximum ``max_f |u_f|`` (a query's factor cancels; a key's is returned as its log-weight,
        which the kernel shifts by the maximum over the real -- or, causal, the past -- keys: the
        reference path's shared key stabiliser, and causal). Time O(N d f), memory O(N f)."""
        heads = x.shape[1]
        weight, bias = (self.q_weight, self.q_bias) if is_query else (self.k_weight, self.k_bias)
        if weight.shape[0] not in (1, heads):
            raise ValueError(f"hedgehog was built for {weight.shape[0]} heads, got {heads}")
        work = working_dtype(x.dtype)
        w = torch.cat([weight, bias.unsqueeze(1)], dim=1).to(work)             # (G, d + 1, f)
        w2 = torch.cat([w, -w], dim=-1)                                        # (G, d + 1, 2 f)
        x1 = augment_ones(x.to(work))
        if self.config.activation == "softmax":
            u2 = torch.matmul(x1, w2)
            shape = u2.shape
            return torch.softmax(u2.view(*shape[:-1], 2, self.feature_dim), dim=-1).view(shape), None
        phi, r = ShiftedExpFeatures.apply(x1, w2)
        return phi, (None if is_query else r)

    def _fused_attention(self, q, k, v, mask):
        """The fast path: :meth:`_fused_features` and :func:`~attention_variants._kernel.fused_kernel_attention`."""
        with fp32(q.device):
            phi_q, _ = self._fused_features(q, True)
            phi_k, log_w = self._fused_features(mask_keys(k, mask), False)
            out = fused_kernel_attention(phi_q, phi_k, v, mask, causal=self.causal, chunk=self.config.chunk_size,
                                         log_w=log_w)
        return out.to(v.dtype)

    def decode_state_bytes(self, length: int, element_bytes: int = 4) -> tuple[int | None, str]:
        c = self.config
        shift = c.activation == "exp"
        return (kernel_state_bytes(c.heads, self.num_features, c.head_dim, element_bytes, shift=shift),
                "running state sum phi(k) v^T (2 feature_dim x head_dim) and normaliser sum phi(k) per head"
                + (", plus the running key shift" if shift else ""))

    def decode_init(self, batch: int, device: torch.device, dtype: torch.dtype):
        c = self.config
        return kernel_decode_init(batch, c.heads, self.num_features, c.head_dim, device, dtype,
                                  shift=c.activation == "exp")

    def decode_step(self, q, k, v, state):
        """One token: O(f d) per head."""
        with fp32(q.device):
            phi_q, _ = self._fused_features(q, True)
            phi_k, log_w = self._fused_features(k, False)
            out, state = kernel_decode_step(state, phi_q, phi_k, v, log_w=log_w)
        return out.to(v.dtype), state

    def forward(self, q, k, v, key_padding_mask=None):
        mask = normalize_key_padding_mask(key_padding_mask, q.shape[0], k.shape[-2], q.device)
        self.last_backend = kernel_backend(self.config.backend, q)
        if self.last_backend == "fast":
            return in_batch_groups(self._fused_attention, q, k, v, mask, self.num_features)
        phi_q = self.feature_map(q, is_query=True)
        if self.causal:
            phi_k, log_w = self._causal_key_features(k, mask)
            return causal_kernel_attention_reference(phi_q, phi_k, v, mask, log_w=log_w).to(v.dtype)
        phi_k = self.feature_map(k, is_query=False, mask=mask)
        return kernel_attention(phi_q, phi_k, v, mask=mask)

    def _causal_key_features(self, k: torch.Tensor, mask: torch.Tensor | None):
        """Reference causal key features: ``softmax``: :meth:`feature_map` (per row, causal as it
        is); ``exp``: each key shifted by its own ``r_j = max_f |u_jf|`` (detached), returned with
        ``r`` as the log-weights the causal kernel shifts by their running maximum."""
        if self.config.activation == "softmax":
            return self.feature_map(k, is_query=False, mask=mask), None
        work = working_dtype(k.dtype)
        with fp32(k.device):
            x = mask_keys(k.to(work), mask)
            u = (torch.einsum("bhnd,hdf->bhnf", x, self.k_weight.to(work))
                 + self.k_bias.to(work)[None, :, None, :])
            r = u.detach().abs().amax(dim=-1, keepdim=True)
            return torch.cat([torch.exp(u - r), torch.exp(-u - r)], dim=-1), r.squeeze(-1)
