"""Full softmax attention, materialized: the LRA paper's baseline ("Transformer").

``softmax(Q K^T / sqrt(d)) V`` with the ``(N, N)`` score matrix held in memory.
Time O(N^2 d), memory O(N^2) per head. Softmax is taken in at least fp32 for stability.

Backends (knob ``backend``), one function (the same probabilities, the same output):

* ``reference`` -- :func:`softmax_attention` as written: ``matmul``, scale, ``masked_fill``,
  ``softmax``, ``matmul``, each a fresh ``(B, H, N, N)`` tensor, autograd through all of them.
* ``fast`` -- :func:`materialized_attention`: the same probabilities held in memory (this variant is
  the materialized baseline; the fused kernel that never holds them is ``flash``), computed in blocks
  of at most :data:`BLOCK_ELEMENTS` scores (4 MiB of fp32): ``(Q/sqrt(d)) K^T`` into one buffer, the padding as an
  additive ``0 / finfo.min`` bias added in place (the reference's ``masked_fill`` value), the
  softmax in place, ``P V``; a hand-written backward that reuses the stored ``P``
  (``dS = P (dP - rowsum(dO O))``, in place). Each block is a small allocation that the C allocator
  reuses; the reference's full-size temporaries are fresh ``mmap`` pages every call (on a 2-core
  Xeon each ``(32, 4, 512, 512)`` fp32 temporary costs ~0.1 s of page faults, more than the
  arithmetic). Same FLOPs, O(B H N M) memory (the stored probabilities) plus one block.
* ``auto`` -- ``fast`` on the CPU, ``reference`` elsewhere. ``last_path`` records which one ran;
  ``last_backend`` stays None (both paths are materialized, which is what ``lra.timing`` reads from a
  None backend: its analytic FLOPs count the backward as 2x the forward, no recomputation).

Measured on a 2-core Xeon (fwd+bwd of one layer at the Text size, B 32, H 4, N 512, D 16, one thread,
CPU time): reference 1.07 s, fast 0.35 s; the training step 3.4 s -> 0.83 s. Both are fp32 rounding of
the float64 function (relative error 3e-7 at score std 1, 5e-7 at std 4, the same for both).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from ._decode import KVCache, kv_cache_bytes
from ._fast import auto_or_reference, no_autocast
from ._precision import lowest, upcast, working_dtype
from .base import Attention, AttentionConfig
from .masking import normalize_key_padding_mask
from .registry import register

BACKENDS = ("auto", "reference", "fast")
#: scores per block of :func:`materialized_attention` (4 MiB of fp32): well below glibc's largest mmap
#: threshold (32 MiB), so blocks come from the reused heap instead of fresh pages
BLOCK_ELEMENTS = 1 << 20


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      key_padding_mask: torch.Tensor | None = None,
                      attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Reference attention: ``(B, H, N, D) x3 -> (B, H, N, D)``, materializing ``(B, H, N, M)``.

    ``key_padding_mask``: ``(B, M)`` bool, True = real key. ``attn_mask``: optional bool mask
    broadcastable to ``(B, H, N, M)``, True = may attend. Used as ground truth by tests and
    the benchmark's exactness measurement. Scores and softmax run in float32 for half-precision
    inputs and in the inputs' own precision otherwise (float64 stays float64).
    """
    scores = torch.matmul(q, k.transpose(-2, -1))
    scores = upcast(scores) * (1.0 / math.sqrt(q.shape[-1]))
    allowed = None
    if key_padding_mask is not None:
        allowed = key_padding_mask[:, None, None, :]
    if attn_mask is not None:
        allowed = attn_mask if allowed is None else allowed & attn_mask
    if allowed is not None:
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    return torch.matmul(probs, v)


def causal_allowed(n: int, m: int, key_padding_mask: torch.Tensor | None, device) -> torch.Tensor:
    """``(B|1, 1, N, M)`` bool: query ``i`` (the last ``N`` of ``M`` positions) may attend real key ``j <= i + M - N``."""
    allowed = torch.ones(n, m, dtype=torch.bool, device=device).tril(m - n)[None, None]
    if key_padding_mask is not None:
        allowed = allowed & key_padding_mask[:, None, None, :]
    return allowed


def causal_softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Causal reference attention: query ``i`` attends keys ``j <= i`` that are real; a query with
    no such key (a padded position before the first real token) outputs 0, so nothing after it
    can reach it. ``(B, H, N, D) x3 -> (B, H, N, D)``, materializing ``(B, H, N, N)``."""
    allowed = causal_allowed(q.shape[-2], k.shape[-2], key_padding_mask, q.device)
    out = softmax_attention(q, k, v, attn_mask=allowed)
    return out * allowed.any(dim=-1, keepdim=True).to(out.dtype)


def _blocks(groups: int, rows: int, cols: int):
    """``(group slice, row slice)`` pairs covering ``(groups, rows)`` with at most
    :data:`BLOCK_ELEMENTS` scores (``rows x cols`` each group) per block."""
    per_group = rows * cols
    if per_group <= BLOCK_ELEMENTS:
        step = max(1, BLOCK_ELEMENTS // per_group)
        return [(slice(g, min(g + step, groups)), slice(0, rows)) for g in range(0, groups, step)]
    step = max(1, BLOCK_ELEMENTS // cols)
    return [(slice(g, g + 1), slice(r, min(r + step, rows))) for g in range(groups) for r in range(0, rows, step)]


class _MaterializedSoftmax(torch.autograd.Function):
    """``softmax(q k^T * scale + bias) v`` on ``q (G, N, D)``, ``k (G, M, D)``, ``v (G, M, Dv)`` in
    one dtype, block by block (:func:`_blocks`), storing the probabilities for the backward.

    ``key_bias``: ``(G, 1, M)`` additive ``0 / finfo.min`` or None; ``causal``: also ``finfo.min`` at
    ``j > i + M - N``, and rows with no allowed key give 0 (``has_key (G, N)`` False; None = every
    row has one). ``empty_groups``: ``(G,)`` bool, groups whose every key is masked (non-causal: their
    rows are uniform, as the reference's ``masked_fill``; their score gradient is 0, as its).

    Time O(G N M D) forward (2 ``bmm`` per block) and backward (4 per block); memory: the probabilities
    ``G N M`` (stored, as the reference stores them) plus one block of :data:`BLOCK_ELEMENTS` scores in the
    backward. The score gradient uses ``rowsum(P dP) = rowsum(dO O)`` (O(G N D), no product over ``(N, M)``)."""

    @staticmethod
    def forward(ctx, q, k, v, key_bias, causal, has_key, empty_groups, scale):
        g, n, _ = q.shape
        m = k.shape[1]
        qs = q * scale
        out = q.new_empty(g, n, v.shape[-1])
        neg = lowest(q.dtype)
        upper = torch.ones(n, m, dtype=torch.bool, device=q.device).triu(m - n + 1) if causal else None
        probs = []
        for gs, rs in _blocks(g, n, m):
            s = torch.bmm(qs[gs, rs], k[gs].transpose(1, 2))
            if key_bias is not None:
                s.add_(key_bias[gs])                  # padded: s + finfo.min == finfo.min
            if upper is not None:
                s.masked_fill_(upper[rs], neg)        # after the bias: exactly finfo.min, never -inf
            torch.softmax(s, dim=-1, out=s)
            if has_key is not None:
                s.mul_(has_key[gs, rs, None])
            torch.bmm(s, v[gs], out=out[gs, rs])
            probs.append(s)
        ctx.probs = probs
        ctx.scale = scale
        ctx.save_for_backward(qs, k, v, out, empty_groups)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out):
        with no_autocast(d_out.device):
            return _MaterializedSoftmax._backward(ctx, d_out)

    @staticmethod
    def _backward(ctx, d_out):
        qs, k, v, out, empty_groups = ctx.saved_tensors
        probs, scale = ctx.probs, ctx.scale
        g, n, _ = qs.shape
        d_out = d_out.contiguous()
        delta = (d_out * out).sum(dim=-1, keepdim=True)                       # rowsum(P * dP), (G, N, 1)
        if empty_groups is not None:
            delta = delta.masked_fill(empty_groups[:, None, None], 0.0)
            d_out_s = d_out.masked_fill(empty_groups[:, None, None], 0.0)   # no score gradient there
        else:
            d_out_s = d_out
        dq, dk, dv = torch.empty_like(qs), torch.zeros_like(k), torch.zeros_like(v)
        for (gs, rs), p in zip(_blocks(g, n, k.shape[1]), probs):
            dv[gs] += torch.bmm(p.transpose(1, 2), d_out[gs, rs])
            ds = torch.bmm(d_out_s[gs, rs], v[gs].transpose(1, 2))
            ds.sub_(delta[gs, rs]).mul_(p)
            torch.bmm(ds, k[gs], out=dq[gs, rs])
            dk[gs] += torch.bmm(ds.transpose(1, 2), qs[gs, rs])
        return dq.mul_(scale), dk, dv, None, None, None, None, None


def materialized_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           key_padding_mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
    """The ``fast`` backend: :func:`softmax_attention` (``causal``: :func:`causal_softmax_attention`)
    block by block with the probabilities stored (see the module docstring).

    ``q (B, H, N, D)``, ``k, v (B, H, M, D)``, ``key_padding_mask (B, M)`` -> ``(B, H, N, D)`` in
    ``v``'s dtype. Computes in :func:`working_dtype` (bf16 is lifted to fp32; float64 stays float64).
    Time O(B H N M D); memory O(B H N M) for the stored probabilities plus one block of
    :data:`BLOCK_ELEMENTS` scores for the backward."""
    b, h, n, d = q.shape
    m = k.shape[-2]
    work = working_dtype(q.dtype, k.dtype, v.dtype)
    with no_autocast(q.device):
        q3, k3, v3 = (x.to(work).reshape(b * h, x.shape[-2], x.shape[-1]) for x in (q, k, v))
        key_bias = has_key = empty = None
        if key_padding_mask is not None:
            bias = torch.zeros(b, 1, m, dtype=work, device=q.device).masked_fill_(
                ~key_padding_mask[:, None, :], lowest(work))
            key_bias = bias.repeat_interleave(h, dim=0)                                    # (G, 1, M)
            real = key_padding_mask.any(dim=-1).repeat_interleave(h)                       # (G,)
            if causal:
                first = torch.where(key_padding_mask.any(-1), key_padding_mask.to(torch.int8).argmax(-1), m)
                rows = torch.arange(n, device=q.device) + (m - n)
                has = rows[None, :] >= first[:, None]                                      # (B, N)
                if not bool(has.all()):
                    has_key = has.to(work).repeat_interleave(h, dim=0)
            elif not bool(real.all()):
                empty = ~real
        out = _MaterializedSoftmax.apply(q3, k3, v3, key_bias, causal, has_key, empty, 1.0 / math.sqrt(d))
    return out.view(b, h, n, -1).to(v.dtype)


@dataclass
class FullConfig(AttentionConfig):
    #: "auto" (fast on the CPU, reference elsewhere) | "reference" | "fast"
    backend: str = "auto"


@register("full", FullConfig)
class FullAttention(Attention):
    """Materialized softmax attention (Vaswani et al. 2017); the LRA "Transformer" row.
    ``causal=True``: the lower-triangular mask (:func:`causal_softmax_attention`)."""

    exact = True
    complexity = "O(N^2)"
    supports_causal = True

    def __init__(self, config: FullConfig):
        super().__init__(config)
        if config.backend not in BACKENDS:
            raise ValueError(f"unknown full backend {config.backend!r}; choose one of {', '.join(BACKENDS)}")
        #: the path the last forward ran ("fast" | "reference"); ``last_backend`` is left None (module docstring)
        self.last_path: str | None = None

    def forward(self, q, k, v, key_padding_mask=None):
        mask = normalize_key_padding_mask(key_padding_mask, q.shape[0], k.shape[-2], q.device)
        backend = self.config.backend
        if backend == "auto":
            backend = auto_or_reference("fast") if q.device.type == "cpu" else "reference"
        self.last_path = backend
        if backend == "fast":
            return materialized_attention(q, k, v, mask, causal=self.causal)
        if self.causal:
            return causal_softmax_attention(q, k, v, mask)
        return softmax_attention(q, k, v, mask)

    def decode_state_bytes(self, length: int, element_bytes: int = 4) -> tuple[int | None, str]:
        return kv_cache_bytes(self.config.heads, self.config.head_dim, length, element_bytes)

    def decode_init(self, batch: int, device: torch.device, dtype: torch.dtype) -> KVCache:
        return KVCache(batch, self.config.heads, self.config.head_dim, device, dtype)

    def decode_step(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: KVCache):
        """Attend the new query to every cached key and itself: O(n D) per head."""
        keys, values = state.append(k, v)
        return softmax_attention(q, keys, values), state
