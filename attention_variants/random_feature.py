"""Random Feature Attention, RFA (Peng et al. 2021, "Random Feature Attention", ICLR).

Random Fourier features (Rahimi & Recht 2007): with ``w_1..w_D ~ N(0, sigma^2 I_d)`` i.i.d.,

    phi(x) = sqrt(1/D) [sin(w_1 . x), ..., sin(w_D . x), cos(w_1 . x), ..., cos(w_D . x)]
    E[phi(x) . phi(y)] = exp(-sigma^2 |x - y|^2 / 2)
                       = exp(-sigma^2 |x|^2 / 2) exp(-sigma^2 |y|^2 / 2) exp(sigma^2 x . y)

and (ungated) attention is the normalized kernel attention of
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

Normalizer guard (``normalizer_floor``, a relative floor ``delta``): sin/cos features are signed,
so the estimated normalizer ``den_i = phi(q_i) . sum_j phi(k_j)`` can be near zero or negative
(its true value is positive), and the plain ratio is then unbounded. The estimator implemented is

    out_i = num_i / (sign(den_i) max(|den_i|, delta M_i)),   M_i = |phi(q_i)|_2 sum_j |phi(k_j)|_2

(sign(0) = +1; ``M_i`` over the real keys, with the gate weights when gated). ``M_i`` bounds
``|den_i|`` (Cauchy-Schwarz) and scales with the features exactly as ``den_i`` does, so the floor
is relative to the row's own scale and the key-correction shift cancels in it. It bounds
``|out_i| <= max_j |v_j| / delta`` and the ratio's condition number by ``1 / delta``, so the fp32
path agrees with this estimator in float64 to ~1e3 fp32 roundoffs (tested: < 2e-4 relative). A
negative estimate is not flipped (that would be a bias of its own). ``delta = 0`` gives the plain
ratio, unbounded (only an exactly-zero normalizer, e.g. every key padded, is guarded: output 0).

Why ``delta = 1e-3`` is safe: ``|phi(x)|_2 = 1`` (times the key correction), so ``den_i / M_i`` is
the correction-weighted mean estimated kernel value over the keys, and its estimation noise is
about ``1 / sqrt(2 D N)`` (3e-3 at D = 256 projections and N = 256 keys, 7e-4 at N = 4096): the
floor only alters rows whose estimate is within a few noise levels of 0. Measured (head_dim 64,
D = 256, N = 256 and 1024, random q, k): with ``normalize=True`` no row is floored at
``sigma^2 <= 2``, 0.1-0.2% at ``sigma^2 = 4`` and 25-40% at ``sigma^2 = 8``, where as many
estimates are negative; with ``normalize=False`` ~40-50% of the estimated normalizers are
negative at every score scale (the Gaussian kernel of these unnormalized vectors is far below the
estimation noise), and 3-35% of rows are floored.

Gating (``gate=True``; the paper's RFA-Gate, section 3 "Learning with recency bias"): a learned
sigmoid gate ``g_t`` per head and position gives the causal recurrence

    S_t = g_t S_{t-1} + (1 - g_t) phi(k_t) v_t^T,     z_t = g_t z_{t-1} + (1 - g_t) phi(k_t)
    out_t = phi(q_t)^T S_t / (phi(q_t) . z_t)

i.e. query t attends to keys ``j <= t`` with weights decaying by ``prod_{j < s <= t} g_s``.
**Gated attention is causal**: a query sees its own and earlier positions only (the instance's
``causal`` is True). The encoder then puts its CLS token last, where it sees every token
(:class:`lra.model.Encoder`).

The paper computes the gate from the layer input, ``g_t = sigmoid(w_g . x_t + b_g)``; this
interface only receives per-head ``q, k, v``, so here the gate comes from the key,
``g_t = sigmoid(k_t . w_h + b_h)``, with parameters ``gate_weight (heads, head_dim)``
initialised to 0 and ``gate_bias (heads,)`` initialised to ``gate_bias_init``. The default 2
gives ``g = 0.88``, an initial recency window of about ``1 / (1 - g) = 8`` tokens, chosen so
that the sigmoid starts in its responsive range (slope ``g (1 - g) = 0.10``); a larger value
starts with a longer memory (5: about 150 tokens) at a flatter slope (0.007).

The recurrence is computed in a chunked parallel form
(:func:`attention_variants._kernel.gated_kernel_attention`, chunk size ``C = gate_chunk``):
O(N C F + N F d) time and O(N (C + F + d) + N F d / C) memory per head with ``F = 2 D``
features, still O(N); decays are taken in log space. A padded key gets ``g = 1`` and weight 0
and so changes nothing. With ``normalize=False`` the key correction ``exp(sigma^2 |y|^2 / 2)``
is folded into the key weights and shifted by their causal running maximum ``M_t`` over the keys
``j <= t`` (:func:`attention_variants._kernel.running_shift`) instead of the maximum over the whole
sequence, so no later key -- however large -- enters or underflows an earlier query. Gated RFA has
this one path (both backends).

``causal=True`` without the gate: causal RFA by prefix sums (the fast path chunked with
``gate_chunk`` tokens, :func:`attention_variants._kernel.causal_kernel_attention`; the reference
path the cumulative-sum definition), the floor's mass ``sum_{j <= t} |phi(k_j)|`` over past keys.

Redraws are not implemented: the projection is fixed (a buffer drawn once from ``config.seed``).

Backends (``backend``): ``reference`` (:meth:`feature_map`, norms computed) and ``fast``
(:class:`FourierFeatures`: one ``sin`` of a phase-shifted projection with ``sigma`` folded in,
analytic feature norms, the normalizer as a ones column of the values,
:func:`attention_variants._kernel.fused_kernel_attention`); ``auto`` = ``fast``. The two compute
the same function.

Precision: always at least fp32 (autocast disabled; no bf16 policy, unlike performer / linear). The
sin/cos features are signed, so the normalizer is a sum that cancels; rounding the features to
bf16 moves ``den_i`` by up to ~2^-9 of the row's mass ``M_i`` (the floor's own scale), which is
more than the floor ``delta M_i = 1e-3 M_i`` itself: rows near the floor -- exactly the ones it
exists for -- would be decided by rounding. Keeping the features in fp32 for the normalizer means
keeping them in fp32 for backward too, which leaves nothing for a bf16 path to save.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ._kernel import (augment_ones, causal_kernel_attention_reference, fp32, fused_kernel_attention,
                      gated_kernel_attention, in_batch_groups, kernel_attention, kernel_backend, kernel_decode_init, kernel_decode_step,
                      kernel_state_bytes, mask_keys)
from ._precision import upcast, working_dtype
from .base import Attention, AttentionConfig
from .masking import normalize_key_padding_mask
from .registry import register


class FourierFeatures(torch.autograd.Function):
    """Unscaled random Fourier features ``[sin(sigma_h W x), cos(sigma_h W x)]`` of ``x (B, H, N, d)``
    as one ``sin`` of a phase-shifted projection: ``sin([x | 1] [sigma_h W | 0 ; sigma_h W | pi/2]^T)``
    (the phase rides in the matmul as a ones column), computed in place: ``(B, H, N, 2 D)``.
    ``w (D, d)``, ``sigma (H,)``. Saves only ``x`` and the features: the derivative of each
    feature is its partner (``d sin(a) = cos(a)``, the second half; ``d cos(a) = -sin(a)``, the
    first), so the backward is two half-width products and one ``(N, 2D) x (2D, d)`` matmul
    ``Y = dphi' [W; -W]`` giving ``dx = sigma_h Y`` and ``d sigma_h = sum x . Y``. No ``cos``, no
    ``(N, 2D)`` temporaries in the forward; the backward reuses the incoming gradient's buffer
(internal use only: the features must not be an autograd root). Time O(N D d), memory O(N D) per head."""

    @staticmethod
    def forward(ctx, x, w, sigma):
        half = w.shape[0]
        ws = sigma[:, None, None] * w                                       # (H, D, d)
        phase = torch.cat([torch.zeros(half, dtype=x.dtype, device=x.device),
                           torch.full((half,), math.pi / 2, dtype=x.dtype, device=x.device)])
        w_aug = torch.cat([torch.cat([ws, ws], dim=1), phase.expand(ws.shape[0], 2 * half)[..., None]], dim=-1)
        phi = torch.matmul(augment_ones(x), w_aug.transpose(-1, -2)).sin_()  # (B, H, N, 2 D)
        ctx.save_for_backward(x, w, sigma, phi)
        return phi

    @staticmethod
    def backward(ctx, g):
        x, w, sigma, phi = ctx.saved_tensors
        half = w.shape[0]
        if g.is_contiguous() and g.shape == phi.shape:   # a fresh buffer (the features are never a root)
            d_unsigned = g
            d_unsigned[..., :half].mul_(phi[..., half:])
            d_unsigned[..., half:].mul_(phi[..., :half])
        else:
            d_unsigned = torch.empty_like(phi)
            torch.mul(g[..., :half], phi[..., half:], out=d_unsigned[..., :half])
            torch.mul(g[..., half:], phi[..., :half], out=d_unsigned[..., half:])
        y = torch.matmul(d_unsigned, torch.cat([w, -w], dim=0))            # (B, H, N, d)
        d_x = y * sigma[:, None, None] if ctx.needs_input_grad[0] else None
        d_sigma = (x * y).sum(dim=(0, 2, 3)) if ctx.needs_input_grad[2] else None
        return d_x, None, d_sigma


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
    #: relative floor delta: |normalizer| >= delta |phi(q)| sum_j |phi(k_j)| (sign kept); 0 = plain ratio
    normalizer_floor: float = 1e-3
    #: the paper's gate (RFA-Gate, "Learning with recency bias"), g_t = sigmoid(k_t . w_h + b_h);
    #: makes the attention causal
    gate: bool = False
    #: initial gate bias b_h (2.0: g = 0.88, an ~8-token recency window at initialisation)
    gate_bias_init: float = 2.0
    #: chunk size of the gated recurrence's chunked parallel form, and of the ungated causal kernel
    gate_chunk: int = 64
    #: "auto" (= fast) | "reference" | "fast" (both always at least fp32; see the module docstring)
    backend: str = "auto"


@register("random_feature", RandomFeatureConfig)
class RandomFeatureAttention(Attention):
    """RFA: ``q, k, v (B, H, N, D) -> (B, H, N, D)`` in O(N); see the module docstring.

    Buffers / parameters: ``projection (num_features, head_dim)`` ~ N(0, I) from
    ``torch.Generator().manual_seed(config.seed)``; ``sigma (heads,)`` (parameter or buffer);
    with ``gate=True`` also ``gate_weight (heads, head_dim)`` and ``gate_bias (heads,)``, and the
    attention is causal.
    """

    exact = False
    complexity = "O(N)"
    supports_causal = True

    def __init__(self, config: RandomFeatureConfig):
        super().__init__(config)
        kernel_backend(config.backend, torch.empty(0))
        self.last_backend: str | None = None
        if config.num_features < 1:
            raise ValueError("random_feature needs num_features >= 1")
        if not 0 <= config.normalizer_floor < 1:
            raise ValueError(f"random_feature: normalizer_floor must be in [0, 1) (relative to the row's "
                             f"mass; >= 1 would floor every row), got {config.normalizer_floor}")
        gen = torch.Generator().manual_seed(config.seed)
        self.register_buffer("projection",
                             torch.randn(config.num_features, config.head_dim, generator=gen))
        sigma = torch.full((config.heads,), float(config.sigma_init))
        if config.learned_sigma:
            self.sigma = nn.Parameter(sigma)
        else:
            self.register_buffer("sigma", sigma)
        if config.gate:
            if config.gate_chunk < 1:
                raise ValueError("random_feature needs gate_chunk >= 1")
            self.gate_weight = nn.Parameter(torch.zeros(config.heads, config.head_dim))
            self.gate_bias = nn.Parameter(torch.full((config.heads,), float(config.gate_bias_init)))

    @property
    def causal(self) -> bool:
        """Gated RFA is causal by construction (query t sees keys <= t); ungated RFA is causal with
        ``causal=True`` (prefix sums)."""
        return self.config.gate or self.config.causal

    def feature_map(self, x: torch.Tensor, is_query: bool, mask: torch.Tensor | None = None):
        """``(B, H, N, d) -> (B, H, N, 2 num_features)`` fp32 random Fourier features."""
        phi, log_c = self._features(x, is_query, mask)
        if log_c is None:
            return phi
        # Gaussian -> exp kernel correction exp(sigma^2 |y|^2 / 2) per key, shifted by its max
        # over the real keys (a shared factor cancels); padded keys get 0.
        top = log_c.amax(dim=-1, keepdim=True).detach()
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        return phi * torch.exp(log_c - top).unsqueeze(-1)

    def _features(self, x: torch.Tensor, is_query: bool, mask: torch.Tensor | None):
        """Uncorrected features and, for keys with ``normalize=False``, the log of the key
        correction ``sigma^2 |y|^2 / 2`` as ``(B, H, N)`` (-inf at padded keys); else None."""
        heads = x.shape[1]
        if heads != self.sigma.shape[0]:
            raise ValueError(f"random_feature was built for {self.sigma.shape[0]} heads, got {heads}")
        x = upcast(x, self.sigma.dtype, self.projection.dtype)
        x = F.normalize(x, dim=-1) if self.config.normalize else x * x.shape[-1] ** -0.25
        sigma = self.sigma.to(x.dtype)[None, :, None, None]
        proj = torch.einsum("bhnd,md->bhnm", x, self.projection.to(x.dtype)) * sigma
        phi = torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1) * (1.0 / math.sqrt(proj.shape[-1]))
        if self.config.normalize or is_query:
            return phi, None
        log_c = 0.5 * sigma.square() * x.square().sum(-1, keepdim=True)        # (B, H, M, 1)
        return phi, mask_keys(log_c, mask, float("-inf")).squeeze(-1)

    def gate_logits(self, k: torch.Tensor) -> torch.Tensor:
        """``(B, H, N, d) -> (B, H, N)`` gate logits (at least fp32) ``k_t . w_h + b_h`` (``g = sigmoid``)."""
        k = upcast(k, self.gate_weight.dtype)
        return (torch.einsum("bhnd,hd->bhn", k, self.gate_weight.to(k.dtype))
                + self.gate_bias.to(k.dtype)[None, :, None])

    def _fused_features(self, q: torch.Tensor, k: torch.Tensor):
        """The fast path's features (at least fp32): ``(phi_q, phi_k, log_w)`` with unscaled
        :class:`FourierFeatures` (the ``1/sqrt(D)`` factor is shared and cancels, and every feature
        vector has the analytic norm ``sqrt(D)``, ``sin^2 + cos^2 = 1``) and, with
        ``normalize=False``, the key correction as log-weights ``sigma^2 |y_j|^2 / 2`` (shifted by the
        kernel; else None). ``k`` must have its padded rows zeroed."""
        if q.shape[1] != self.sigma.shape[0]:
            raise ValueError(f"random_feature was built for {self.sigma.shape[0]} heads, got {q.shape[1]}")
        work = working_dtype(q.dtype, self.sigma.dtype)
        q, k = q.to(work), k.to(work)
        if self.config.normalize:
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        else:
            q, k = q * q.shape[-1] ** -0.25, k * k.shape[-1] ** -0.25
        w, sigma = self.projection.to(work), self.sigma.to(work)
        phi_q, phi_k = FourierFeatures.apply(q, w, sigma), FourierFeatures.apply(k, w, sigma)
        log_w = None if self.config.normalize else 0.5 * sigma.square()[:, None] * k.square().sum(dim=-1)
        return phi_q, phi_k, log_w

    def _fused_attention(self, q, k, v, mask):
        """The fast path (ungated): :meth:`_fused_features`, analytic norms ``sqrt(D)`` for the floor,
        :func:`~attention_variants._kernel.fused_kernel_attention` (causal: chunked)."""
        half = math.sqrt(self.config.num_features)
        with fp32(q.device):
            phi_q, phi_k, log_w = self._fused_features(q, mask_keys(k, mask))
            out = fused_kernel_attention(phi_q, phi_k, v, mask, causal=self.causal, chunk=self.config.gate_chunk,
                                         log_w=log_w, rel_floor=self.config.normalizer_floor, q_norm=half, k_norm=half)
        return out.to(v.dtype)

    def decode_state_bytes(self, length: int, element_bytes: int = 4) -> tuple[int | None, str]:
        c = self.config
        shift = not c.normalize
        return (kernel_state_bytes(c.heads, 2 * c.num_features, c.head_dim, element_bytes, shift=shift,
                                   floor=c.normalizer_floor > 0),
                "running state sum phi(k) v^T (2 num_features x head_dim) and normaliser sum phi(k) per head"
                + (", the running key shift" if shift else "") + (", the floor's mass" if c.normalizer_floor else "")
                + (" (decayed by the gate)" if c.gate else ""))

    def decode_init(self, batch: int, device: torch.device, dtype: torch.dtype):
        c = self.config
        return kernel_decode_init(batch, c.heads, 2 * c.num_features, c.head_dim, device, dtype, shift=not c.normalize)

    def decode_step(self, q, k, v, state):
        """One token: add the key's features (decayed by the gate when gated) to the running state
        and read it with the query's. O(D d) per head."""
        c = self.config
        half = math.sqrt(c.num_features)
        with fp32(q.device):
            phi_q, phi_k, log_w = self._fused_features(q, k)
            log_g = None
            if c.gate:
                logit = self.gate_logits(k)
                log_g = F.logsigmoid(logit)
                gate_w = F.logsigmoid(-logit)
                log_w = gate_w if log_w is None else log_w + gate_w
            out, state = kernel_decode_step(state, phi_q, phi_k, v, log_w=log_w, log_g=log_g,
                                            rel_floor=c.normalizer_floor, q_norm=half, k_norm=half)
        return out.to(v.dtype), state

    def forward(self, q, k, v, key_padding_mask=None):
        mask = normalize_key_padding_mask(key_padding_mask, q.shape[0], k.shape[-2], q.device)
        self.last_backend = kernel_backend(self.config.backend, q)
        if self.last_backend == "fast" and not self.config.gate:
            return in_batch_groups(self._fused_attention, q, k, v, mask, 2 * self.config.num_features)
        with fp32(q.device):
            phi_q = self.feature_map(q, is_query=True)
            if self.config.gate:
                phi_k, log_c = self._features(k, is_query=False, mask=mask)
                logit = self.gate_logits(k)
                if mask is not None:  # a padded key's logit is unused; keep inf/NaN out of it
                    logit = logit.masked_fill(~mask[:, None, :], 0.0)
                return gated_kernel_attention(phi_q, phi_k, v, logit, mask,
                                              rel_floor=self.config.normalizer_floor,
                                              chunk=self.config.gate_chunk, key_log_scale=log_c)
            if self.causal:
                phi_k, log_c = self._features(k, is_query=False, mask=mask)
                return causal_kernel_attention_reference(phi_q, phi_k, v, mask, log_w=log_c,
                                                         rel_floor=self.config.normalizer_floor).to(v.dtype)
            phi_k = self.feature_map(k, is_query=False, mask=mask)
        return kernel_attention(phi_q, phi_k, v, mask, rel_floor=self.config.normalizer_floor)
