"""Nyströmformer attention (Xiong, Zeng, Chakraborty, Tan, Fung, Li & Singh 2021, AAAI,
"Nyströmformer: A Nyström-Based Algorithm for Approximating Self-Attention", arXiv:2102.03902).

Shapes: ``q, k, v: (B, H, N, D)`` -> ``(B, H, N, D)``; ``key_padding_mask: (B, N)`` bool,
True = real token.

With ``m = min(landmarks, N)`` landmarks ``Q~, K~: (B, H, m, D)`` taken as segment means of
``Q`` and ``K`` (``N`` split into ``m`` contiguous segments)::

    out = softmax(Q K~^T / sqrt(D)) · pinv(softmax(Q~ K~^T / sqrt(D))) · softmax(Q~ K^T / sqrt(D)) V
          + conv(V)

``pinv`` is the paper's iterative Moore-Penrose approximation (its Eq. 13, after Razavi et al.
2014): ``Z0 = A^T / (||A||_1 ||A||_inf)`` (per matrix), then ``pinv_iterations`` steps of
``Z <- Z (13 I - A Z (15 I - A Z (7 I - A Z))) / 4``, in fp32 even under autocast.
``conv`` is the reference code's optional skip connection: a learned depthwise
``Conv2d(heads, heads, (conv_kernel, 1))`` over the sequence, one filter per head, applied to
``V`` with padded rows zeroed; ``conv_kernel=0`` disables it (it must be odd otherwise).

Padding: landmarks are means over the real tokens of each segment only (padded tokens are
zeroed and not counted), the third kernel masks padded keys, and the conv sees zeros at padded
positions, so no output depends on padded tokens' contents. A segment with no real token
gives an *empty* landmark: its column is masked in the first two kernels and its row of the
second kernel is replaced by the identity row, so it drops out of the product exactly.
``N`` not a multiple of ``m`` is padded internally (as masked tokens) and unpadded.

Time O(N m D + m^3 · pinv_iterations), memory O(N m) per head: linear in N.

Backends (``backend``): ``reference`` -- the three kernels materialised, softmaxes and the
pseudo-inverse product in fp32; ``fast`` -- the same function with everything along N in the
compute dtype (:mod:`attention_variants._fast`): ``softmax(Q~ K^T) V`` and
``softmax(Q K~^T) (pinv · that)`` are two :func:`torch.nn.functional.scaled_dot_product_attention`
calls (fused kernels with fp32 softmax statistics; the ``(N, m)`` kernels are never stored; masks
as additive ``finfo.min`` biases, which is the reference's masked value), while the landmark
kernel, the pseudo-inverse iterations (they need it) and ``pinv · (kernel_3 V)`` stay fp32
``(m, m)`` / ``(m, D)`` work; ``auto`` -- ``fast`` on every device and dtype (on the CPU in fp32 the two
SDPA calls run torch's fused flash kernel: 1.2-1.7x faster than the reference's fwd+bwd at N = 512..2048,
measured; the same function to fp32 rounding). ``last_backend`` records which one ran.

The pseudo-inverse is most of the CPU time at the LRA sizes: ``4 pinv_iterations`` batched
``(m, m) @ (m, m)`` products forward and twice that backward (``72 B H m^3`` FLOPs with the defaults,
more than the ``O(N m D)`` kernels at N = 512, m = 64, D = 16): FLOP-bound, and what the method is.

Not causal by construction (``causal=True`` is refused at build time): each landmark is a segment mean
over queries or keys that includes future tokens, and the conv skip reads neighbours on both sides.
Decoding: no state (``decode_state_bytes`` is ``None`` with that reason).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ._fast import auto_or_reference, check_backend, compute_dtype, no_autocast
from .base import Attention, AttentionConfig
from ._kernel import _value_center
from ._precision import lowest, upcast, working_dtype
from .masking import additive_mask, normalize_key_padding_mask, pad_mask_to_multiple, pad_to_multiple
from .registry import register


def iterative_pinv(a: torch.Tensor, iterations: int) -> torch.Tensor:
    """Approximate Moore-Penrose pseudo-inverse of ``(..., m, m)`` matrices (Xiong et al. Eq. 13).

    Initial ``Z0 = A^T / (max column abs-sum * max row abs-sum)``, per matrix, which makes the
    iteration converge (Razavi et al. 2014); each step is a 7th-order Newton-Schulz-type update.
    No eps or clamp: ``Z0`` is homogeneous of degree -1 in ``A`` (as the pseudo-inverse), so
    ``pinv(c A) = pinv(A) / c`` for any ``c``, and its divisor is 0 only for ``A = 0`` (never the
    case here: softmax rows sum to 1, empty landmarks get identity rows). Computes in fp32, or
    float64 for float64 input (the reference of the same algorithm).
    """
    a = upcast(a)
    shape, m = a.shape, a.shape[-1]
    a = a.reshape(-1, m, m)                    # (batch, m, m): baddbmm's layout
    eye = torch.eye(m, dtype=a.dtype, device=a.device)
    norm_1 = a.abs().sum(dim=-2).amax(dim=-1)  # max column sum
    norm_inf = a.abs().sum(dim=-1).amax(dim=-1)  # max row sum
    z = a.transpose(-2, -1) / (norm_1 * norm_inf)[..., None, None]
    for _ in range(iterations):  # sequential by nature; every step is batched over (B, H)
        az = torch.bmm(a, z)
        # z (13 I - az (15 I - az (7 I - az))) / 4, each "c I - az t" one baddbmm (no separate
        # subtraction, in the forward or the backward); the 1/4 folds into the last one
        t = torch.baddbmm(15 * eye, az, 7 * eye - az, alpha=-1.0)
        t = torch.baddbmm(3.25 * eye, az, t, alpha=-0.25)
        z = torch.bmm(z, t)
    return z.reshape(shape)


@dataclass
class NystromConfig(AttentionConfig):
    #: number of landmarks m; Nystromformer LRA runs ("nystrom-64")
    landmarks: int = 64
    #: iterations of the pseudo-inverse; paper and reference code use 6
    pinv_iterations: int = 6
    #: depthwise conv on V over the sequence (odd; 0 = off); reference LRA config uses 35
    conv_kernel: int = 35
    #: "auto" (= fast, on every device) | "reference" | "fast"
    backend: str = "auto"


@register("nystrom", NystromConfig)
class NystromAttention(Attention):
    """Nyström approximation of softmax attention with segment-mean landmarks (Xiong et al. 2021).

    ``forward(q, k, v, key_padding_mask=None)``: ``(B, H, N, D)`` -> ``(B, H, N, D)``.
    """

    exact = False
    complexity = "O(N)"
    supports_causal = False
    causal_refusal = ("its landmarks are segment means of the queries and keys, so each one averages "
                      "future tokens into what every earlier query attends to (and the conv skip over V "
                      "reads neighbours on both sides)")

    def __init__(self, config: NystromConfig):
        super().__init__(config)
        if config.landmarks < 1:
            raise ValueError(f"nystrom: landmarks must be >= 1, got {config.landmarks}")
        if config.pinv_iterations < 0:
            raise ValueError(f"nystrom: pinv_iterations must be >= 0, got {config.pinv_iterations}")
        if config.conv_kernel < 0 or (config.conv_kernel and config.conv_kernel % 2 == 0):
            raise ValueError(f"nystrom: conv_kernel must be 0 (off) or odd, got {config.conv_kernel}")
        check_backend("nystrom", config.backend)
        self.last_backend: str | None = None
        self.conv = None
        if config.conv_kernel:
            self.conv = nn.Conv2d(config.heads, config.heads, kernel_size=(config.conv_kernel, 1),
                                  padding=(config.conv_kernel // 2, 0), groups=config.heads, bias=False)
            # seeded version of Conv2d's default init (kaiming-uniform, a=sqrt(5): bound 1/sqrt(fan_in))
            gen = torch.Generator().manual_seed(config.seed)
            bound = 1.0 / math.sqrt(config.conv_kernel)
            with torch.no_grad():
                self.conv.weight.copy_((torch.rand(self.conv.weight.shape, generator=gen) * 2 - 1) * bound)

    @staticmethod
    def landmarks_of(x: torch.Tensor, mask: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Segment means over real tokens: ``(B, H, N, D)``, ``(B, N)`` -> ``(B, H, m, D)``, empty ``(B, m)``.

        ``N`` must be a multiple of ``m``; a segment with no real token gives a zero landmark
        flagged in ``empty``.
        """
        b, h, n, d = x.shape
        keep = mask.to(x.dtype)
        sums = (x * keep[:, None, :, None]).reshape(b, h, m, n // m, d).sum(dim=-2)
        counts = keep.reshape(b, m, n // m).sum(dim=-1)
        # counts are integers: the clamp only turns an empty segment's 0/0 into 0/1 (flagged empty)
        return sums / counts.clamp(min=1)[:, None, :, None], counts == 0

    def forward(self, q, k, v, key_padding_mask=None):
        cfg = self.config
        b, h, n, d = q.shape
        if self.conv is not None and h != cfg.heads:
            raise ValueError(f"nystrom: conv built for heads={cfg.heads}, got {h} heads")
        mask = normalize_key_padding_mask(key_padding_mask, b, n, q.device)
        m = min(cfg.landmarks, n)
        full_mask = pad_mask_to_multiple(mask, b, n, m, q.device)
        padded = full_mask is not None
        if full_mask is None:
            full_mask = torch.ones(b, n, dtype=torch.bool, device=q.device)
        self.last_backend = auto_or_reference("fast") if cfg.backend == "auto" else cfg.backend
        if self.last_backend == "fast":
            cd = compute_dtype(q)
            with no_autocast(q.device):
                q, k, v = q.to(cd), k.to(cd), v.to(cd)
                qp, kp, vp = (pad_to_multiple(t, m)[0] for t in (q, k, v))
                vp = vp.masked_fill(~full_mask[:, None, :, None], 0)
                out = self._fast(qp, kp, vp, full_mask, padded, m)[..., :n, :]
                if self.conv is not None:
                    out = out + F.conv2d(vp[..., :n, :], self.conv.weight.to(cd), padding=self.conv.padding,
                                         groups=self.conv.groups)
                return out
        return self._reference(q, k, v, full_mask, m, n)

    def _fast(self, qp, kp, vp, full_mask, padded: bool, m: int):
        """The fast backend on padded inputs ``(B, H, Np, D)`` in the compute dtype (see the
        module docstring); returns ``(B, H, Np, D)``.

        In fp32/float64 it is ``kernel_1 (z (kernel_3 V))``: two fused attentions and the fp32
        pseudo-inverse. Under bf16/fp16 the values are centred on their mean over the real tokens,
        ``c``: kernel_3's rows sum to 1 over the real keys, so ``kernel_3 V = kernel_3 (V - c) + 1 c^T`` and the output is
        ``kernel_1 z kernel_3 (V - c) + (kernel_1 z 1) c^T``, the same function (``c`` a constant for
        autograd). Without it, with values sharing an offset (biased projections) the two bf16
        attentions' backward passes cancel large terms and the pseudo-inverse amplifies their
        rounding: gradients 24% off the fp32 path at an offset of 3 x the values' spread
        (the reference path: 2%); centred, on a par with the reference (measured)."""
        cd, scale = qp.dtype, 1.0 / math.sqrt(qp.shape[-1])
        q_l, empty = self.landmarks_of(qp, full_mask, m)
        k_l, _ = self.landmarks_of(kp, full_mask, m)
        key_bias = lm_bias = None
        if padded:  # additive biases: the reference's masked value finfo.min, never -inf (no NaN rows)
            key_bias, lm_bias = additive_mask(full_mask, cd), additive_mask(~empty, cd)
        acc = working_dtype(cd)
        d = qp.shape[-1]
        s2 = (q_l.to(acc) @ k_l.to(acc).transpose(-2, -1)) * scale                     # (B, H, m, m) fp32
        kernel_2 = torch.softmax(s2.masked_fill(empty[:, None, None, :], torch.finfo(acc).min), dim=-1)
        kernel_2 = torch.where(empty[:, None, :, None], torch.eye(m, dtype=acc, device=qp.device), kernel_2)
        z = iterative_pinv(kernel_2, self.config.pinv_iterations)                     # (B, H, m, m) fp32
        if cd == acc:  # fp32/float64: no rounding to tame, so no centring and no extra value columns
            ctx3 = F.scaled_dot_product_attention(q_l, kp, vp, attn_mask=key_bias)     # kernel_3 V: (B, H, m, D)
            return F.scaled_dot_product_attention(qp, k_l, z @ ctx3, attn_mask=lm_bias, scale=scale)
        keep = full_mask[:, None, :, None]
        center = _value_center(vp, full_mask, acc)  # the mean real value: a constant, see below
        v_c = (vp.to(acc) - center).to(cd).masked_fill(~keep, 0)
        ctx3 = F.scaled_dot_product_attention(q_l, kp, v_c, attn_mask=key_bias)     # kernel_3 (V - c): (B, H, m, D)
        # kernel_1 z kernel_3 V = kernel_1 [z kernel_3 (V - c) | z 1] [I ; c]: one attention over the
        # landmarks with the value columns [z kernel_3 (V - c) | z 1 | 0 ...], width a multiple of 8;
        # queries and landmark keys get zero columns up to that width (their scores are unchanged;
        # the fused kernels want one head width)
        width = (d + 1 + 7) // 8 * 8
        ctx = torch.cat([z @ ctx3.to(acc), z.sum(dim=-1, keepdim=True), ctx3.new_zeros(*z.shape[:-1], width - d - 1)],
                        dim=-1)
        o = F.scaled_dot_product_attention(F.pad(qp, (0, width - d)), F.pad(k_l, (0, width - d)), ctx.to(cd),
                                           attn_mask=lm_bias, scale=scale)
        return (o[..., :d].to(acc) + o[..., d:d + 1].to(acc) * center).to(cd)

    def _reference(self, q, k, v, full_mask, m: int, n: int):
        cfg = self.config
        d = q.shape[-1]
        qp, _ = pad_to_multiple(q, m)
        kp, _ = pad_to_multiple(k, m)
        vp, _ = pad_to_multiple(v, m)
        keep = full_mask[:, None, :, None]
        vp = vp.masked_fill(~keep, 0)
        scale = 1.0 / math.sqrt(d)

        q_l, empty = self.landmarks_of(qp, full_mask, m)
        k_l, _ = self.landmarks_of(kp, full_mask, m)
        real_l = ~empty[:, None, None, :]  # (B, 1, 1, m): landmark columns

        s1 = upcast(qp @ k_l.transpose(-2, -1)) * scale  # (B, H, Np, m), at least fp32
        neg = lowest(s1.dtype)
        kernel_1 = torch.softmax(s1.masked_fill(~real_l, neg), dim=-1)
        s2 = upcast(q_l @ k_l.transpose(-2, -1)) * scale  # (B, H, m, m)
        kernel_2 = torch.softmax(s2.masked_fill(~real_l, neg), dim=-1)
        eye = torch.eye(m, dtype=kernel_2.dtype, device=q.device)
        kernel_2 = torch.where(empty[:, None, :, None], eye, kernel_2)
        s3 = upcast(q_l @ kp.transpose(-2, -1)) * scale  # (B, H, m, Np)
        kernel_3 = torch.softmax(s3.masked_fill(~keep.transpose(-2, -1), neg), dim=-1)

        with torch.autocast(q.device.type, enabled=False):
            z = iterative_pinv(kernel_2, cfg.pinv_iterations)
            ctx = z @ (kernel_3 @ vp.to(kernel_3.dtype))  # (B, H, m, D), at least fp32
        out = kernel_1.to(v.dtype) @ ctx.to(v.dtype)
        out = out[..., :n, :]
        if self.conv is not None:
            out = out + self.conv(vp[..., :n, :])
        return out

    def decode_state_bytes(self, length: int, element_bytes: int = 4) -> tuple[int | None, str]:
        return None, "nystrom is not causal (its landmarks average future tokens): no decoding state"
