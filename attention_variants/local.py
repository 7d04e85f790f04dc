"""Sliding-window ("local") softmax attention: the LRA "Local Attention" row.

Each query attends only to the keys near it (bidirectional)::

    query i may attend key j  <=>  |i - j| <= window        (and key j is real)

so ``window`` is the largest distance a query can look, on each side, and a query sees at
most ``2 * window + 1`` keys. With ``window >= N - 1`` every key is in reach and the
result equals ``full`` attention. (The LRA code, Tay et al. 2021, implements its
local-attention baseline as non-overlapping blocks of 50 tokens; the sliding window here is
the same idea without block edges, as in Longformer's local part, Beltagy et al. 2020, and
Image Transformer's 1D local attention, Parmar et al. 2018.)

Shapes: ``q, k, v: (B, H, N, D)`` -> ``(B, H, N, D)``; ``key_padding_mask: (B, N)`` bool,
True = real token.

Complexity: time O(N w d), memory O(N w) per head (w = ``window``); the ``(N, N)`` score
matrix is never formed except when the window covers the whole sequence anyway.

Backends (knob ``backend``):

* ``reference`` -- block-banded, runs on any device. The sequence is padded to a multiple
  of the chunk size ``c = window``, queries are viewed as ``(B, H, N/c, c, D)`` and each
  chunk attends to the concatenation of its previous, own and next key chunks
  (``3c`` keys, gathered with ``unfold``), masked by ``|i - j| <= window`` and the key
  padding mask. Every key within distance ``window`` lies in those three chunks.
* ``flex`` -- :func:`torch.nn.attention.flex_attention.flex_attention` with a
  ``create_block_mask`` sliding-window ``mask_mod`` combined with the key padding mask;
  compiled with ``torch.compile`` on CUDA (eager, unfused, elsewhere -- for testing).
* ``auto`` -- ``flex`` on CUDA tensors, ``reference`` otherwise. If the compiled kernel
  fails on some input, ``auto`` falls back to ``reference``. ``last_backend`` records
  which one ran.

A query none of whose allowed keys is real (only possible for a padded query) gets a zero
output, never NaN, on both backends.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ._decode import KVCache
from ._fast import auto_or_reference
from ._precision import lowest, upcast
from .base import Attention, AttentionConfig, NoDecodingPath
from .full import softmax_attention
from .masking import normalize_key_padding_mask
from .registry import register

BACKENDS = ("auto", "reference", "flex", "sdpa")


def masked_softmax_av(scores: torch.Tensor, allowed: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax(scores)`` over allowed entries (last dim), then ``@ v``; NaN-free.

    ``scores``: ``(..., Q, K)`` (taken in at least fp32; float64 stays float64), ``allowed``: bool broadcastable to it,
    ``v``: ``(..., K, D)``. Rows with no allowed entry produce zeros.
    """
    scores = upcast(scores)
    scores = scores.masked_fill(~allowed, lowest(scores.dtype))
    probs = torch.softmax(scores, dim=-1)
    probs = probs * allowed.any(dim=-1, keepdim=True)  # empty rows -> 0, not uniform
    return torch.matmul(probs.to(v.dtype), v)


def scores_qk(q: torch.Tensor, k_t: torch.Tensor, scale: float) -> torch.Tensor:
    """``q @ k_t * scale`` for ``k_t: (..., D, M)``. Both operands are made contiguous
    first: strided operands send CPU bf16 batched matmul (forward and backward) down a
    path 10-30x slower; the copies are O(N D)."""
    return torch.matmul(q.contiguous(), k_t.contiguous()) * scale


def band_mask(dist: torch.Tensor, window: int, causal: bool) -> torch.Tensor:
    """Allowed (query, key) pairs from ``dist`` = query position minus key position:
    ``|dist| <= window``, or ``0 <= dist <= window`` when ``causal``."""
    return ((dist >= 0) & (dist <= window)) if causal else dist.abs() <= window


def local_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int,
                              key_padding_mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
    """Block-banded sliding-window attention, ``(B, H, N, D) x3 -> (B, H, N, D)``.

    Query ``i`` attends key ``j`` iff ``|i - j| <= window`` (``causal``: ``0 <= i - j <= window``)
    and key ``j`` is real. Memory O(B H N window); no Python loop over heads or chunks. (When
    ``3 * window >= N`` the band is computed densely, which then costs no more.)
    """
    b, h, n, d = q.shape
    scale = 1.0 / math.sqrt(d)
    c = max(window, 1)                      # chunk size
    if 3 * c >= n:  # three chunks would cover the sequence: a dense (N, N) band is no larger
        scores = scores_qk(q, k.transpose(-2, -1), scale)
        i = torch.arange(n, device=q.device)
        allowed = band_mask(i[:, None] - i[None, :], window, causal)[None, None]
        if key_padding_mask is not None:
            allowed = allowed & key_padding_mask[:, None, None, :]
        return masked_softmax_av(scores, allowed, v)

    nc = -(-n // c)                         # number of chunks
    pad = nc * c - n
    # keys/values padded by one chunk on the left and one (plus the tail) on the right, so
    # that chunk n's neighbourhood is rows [n*c, n*c + 3c) of the padded tensor
    kp = F.pad(k, (0, 0, c, c + pad))
    vp = F.pad(v, (0, 0, c, c + pad))
    k_win = kp.unfold(2, 3 * c, c)                  # (B, H, nc, D, 3c)
    v_win = vp.unfold(2, 3 * c, c).transpose(-1, -2)  # (B, H, nc, 3c, D)
    qc = F.pad(q, (0, 0, 0, pad)).view(b, h, nc, c, d)

    scores = scores_qk(qc, k_win, scale)            # (B, H, nc, c, 3c)

    # query a of chunk m is position m*c + a; key slot s is position (m-1)*c + s; their
    # distance c + a - s does not depend on m
    a = torch.arange(c, device=q.device)[:, None]
    s = torch.arange(3 * c, device=q.device)[None, :]
    band = band_mask(c + a - s, window, causal)      # (c, 3c)
    real = (torch.ones(1, n, dtype=torch.bool, device=q.device)
            if key_padding_mask is None else key_padding_mask)
    real = F.pad(real, (c, c + pad), value=False)     # out-of-range keys are not real
    real = real.unfold(1, 3 * c, c)                   # (B or 1, nc, 3c)
    allowed = band[None, None, None] & real[:, None, :, None, :]  # (B|1, 1, nc, c, 3c)

    out = masked_softmax_av(scores, allowed, v_win)  # (B, H, nc, c, D)
    return out.reshape(b, h, nc * c, d)[:, :, :n]


# --------------------------------------------------------------------------- fused (SDPA) path
def fused_masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor | None,
                           is_causal: bool = False) -> torch.Tensor:
    """``softmax(q k^T / sqrt(D))`` over ``allowed`` entries, times ``v``, through one fused kernel.

    ``q (B, H, L, D)``, ``k, v (B, H, S, D)``; ``allowed``: bool broadcastable to ``(B, H, L, S)``
    (True = may attend; None = every key). ``is_causal``: additionally ``j <= i`` (top-left aligned;
    the kernel skips the blocks above the diagonal). A row with no allowed key gives 0, never NaN.

    On the CPU: torch's flash kernel (``_scaled_dot_product_flash_attention_for_cpu``) with
    ``allowed`` as a ``0 / -inf`` bias in the inputs' dtype (the kernel gives 0 to a row that is all
    ``-inf``); under CPU autocast the inputs are cast to its dtype first, as SDPA does. Elsewhere:
    SDPA with a ``0 / finfo.min`` bias (no all ``-inf`` row on any backend), rows without an allowed
    key set to 0. Time O(B H L S D); memory O(B H L D) plus the bias (``allowed``'s shape, materialized).
    """
    if q.shape[-2] == 0 or k.shape[-2] == 0 or q.shape[0] == 0:  # the CPU kernel divides by these sizes
        return q.new_zeros(*q.shape[:-1], v.shape[-1]) + 0 * (q.sum() + k.sum() + v.sum())
    if q.device.type == "cpu":
        if torch.is_autocast_enabled("cpu"):
            dtype = torch.get_autocast_dtype("cpu")
            q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        bias = None if allowed is None else torch.where(
            allowed, torch.zeros((), dtype=q.dtype, device=q.device),
            torch.full((), float("-inf"), dtype=q.dtype, device=q.device))
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, is_causal,
                                                                          attn_mask=bias)[0]
    if allowed is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
    if is_causal:
        n, m = q.shape[-2], k.shape[-2]
        allowed = allowed & torch.ones(n, m, dtype=torch.bool, device=q.device).tril()
    neg = torch.finfo(q.dtype).min
    bias = torch.where(allowed, torch.zeros((), dtype=q.dtype, device=q.device),
                       torch.full((), neg, dtype=q.dtype, device=q.device))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    return torch.where(allowed.any(dim=-1, keepdim=True), out, 0.0)


def local_block_size(n: int, window: int, causal: bool) -> int | None:
    """Query block of :func:`local_attention_fused`, or None for the dense banded form.

    A block of ``c`` queries reads ``c + 2 w`` keys (``c + w`` causal); the dense form reads ``N``
    (``~N/2`` causal: the kernel skips the blocks above the diagonal) but has no per-block overhead.
    Measured on a 2-core Xeon (fwd+bwd, N = 256..4096, w = 25..256): ``c = w/2`` clamped to
    ``[64, 128]`` (causal: ``w/4`` in ``[32, 64]``), blocked when it reads under 3/4 of the dense
    form's keys (causal: under half)."""
    if causal:
        c = min(max(window // 4, 32), 64)
        blocked = c + window < n / 2
    else:
        c = min(max(window // 2, 64), 128)
        blocked = c + 2 * window < 0.75 * n
    return c if blocked and n > 2 * c else None


def local_attention_fused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int,
                          key_padding_mask: torch.Tensor | None = None, causal: bool = False,
                          block: int | None = -1) -> torch.Tensor:
    """Sliding-window attention through :func:`fused_masked_attention` (the ``sdpa`` backend),
    ``(B, H, N, D) x3 -> (B, H, N, D)``: the same function as :func:`local_attention_reference`
    (``causal``: :func:`causal_local_attention_reference`).

    Dense (``block=None``, or when :func:`local_block_size` says so): one kernel call over ``(N, N)``
    with the band ``&`` padding as a ``(B, 1, N, N)`` bias. Blocked: queries in blocks of ``c``,
    block ``m`` (positions ``mc .. mc + c - 1``) reads the keys ``mc - w .. mc + c - 1 + w`` (causal:
    up to ``mc + c - 1``), laid out as a batch of ``B N / c`` blocks ``(B nc, H, c, D)`` against
    ``(B nc, H, c + 2w, D)`` keys with a ``(B nc, 1, c, c + 2w)`` band ``&`` padding bias.
    Time O(B H N (c + 2w) D) blocked, O(B H N^2 D) dense; memory O(B N (c + 2w)) for the bias and
    O(B H N (1 + 2w / c) D) for the gathered keys; no scores are stored (the kernel recomputes them
    in the backward pass)."""
    b, h, n, d = q.shape
    w = window
    c = local_block_size(n, w, causal) if block == -1 else block
    real = key_padding_mask
    if c is None:
        i = torch.arange(n, device=q.device)
        band = band_mask(i[:, None] - i[None, :], w, causal)
        allowed = band[None, None] if real is None else band[None, None] & real[:, None, None, :]
        return fused_masked_attention(q, k, v, allowed, is_causal=causal)

    nc = -(-n // c)
    pad = nc * c - n
    width = c + w if causal else c + 2 * w
    right = pad if causal else pad + w

    def windows(x):  # (B, H, N, D) -> (B nc, H, width, D): block m's keys
        xw = F.pad(x, (0, 0, w, right)).unfold(2, width, c)                     # (B, H, nc, D, width)
        return xw.permute(0, 2, 1, 4, 3).reshape(b * nc, h, width, d)

    qb = F.pad(q, (0, 0, 0, pad)).view(b, h, nc, c, d).transpose(1, 2).reshape(b * nc, h, c, d)
    a = torch.arange(c, device=q.device)[:, None]
    t = torch.arange(width, device=q.device)[None, :]
    band = band_mask(a + w - t, w, causal)            # (c, width): a + w - t = query minus key position
    real = torch.ones(1, n, dtype=torch.bool, device=q.device) if real is None else real
    real = F.pad(real, (w, right), value=False).unfold(1, width, c)            # (B|1, nc, width)
    allowed = (band & real[:, :, None, :]).reshape(-1, 1, c, width)            # (B nc | nc, 1, c, width)
    if allowed.shape[0] != b * nc:
        allowed = allowed.repeat(b, 1, 1, 1)
    out = fused_masked_attention(qb, windows(k), windows(v), allowed)         # (B nc, H, c, D)
    return out.view(b, nc, h, c, d).transpose(1, 2).reshape(b, h, nc * c, d)[:, :, :n]


# --------------------------------------------------------------------------- flex path
_compiled_flex = None


def flex_attention_fn(device_type: str):
    """``flex_attention``, compiled once per process on CUDA (default ``dynamic``: a second
    sequence length compiles a dynamic-shape kernel instead of one per length, which would
    hit dynamo's recompile limit in length sweeps); eager (unfused) elsewhere."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention  # noqa: PLC0415

    if device_type != "cuda":
        return flex_attention
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention)
    return _compiled_flex


class BlockMaskCache:
    """Keeps the last flex ``BlockMask`` built by one module, keyed by sequence length, device
    and the padding-mask tensor (identity and in-place version), so repeated calls with the
    same mask (evaluation, benchmarking) skip rebuilding it."""

    def __init__(self):
        self._key: tuple | None = None
        self._mask: torch.Tensor | None = None
        self._block_mask = None

    def get(self, n: int, device: torch.device, mask: torch.Tensor | None, build, extra=()):
        key = (n, str(device), None if mask is None else mask._version, *extra)
        if self._block_mask is not None and key == self._key and mask is self._mask:
            return self._block_mask
        self._block_mask = build()
        self._key, self._mask = key, mask
        return self._block_mask


def make_block_mask(mask_mod, batch: int | None, heads: int | None, n: int, device: torch.device):
    """``create_block_mask`` over an ``(n, n)`` pattern; compiled on CUDA so the full
    ``(B, H, n, n)`` boolean mask is never materialized."""
    from torch.nn.attention.flex_attention import create_block_mask  # noqa: PLC0415

    device = torch.device(device)
    return create_block_mask(mask_mod, batch, heads, n, n, device=device, _compile=device.type == "cuda")


def flex_with_block_mask(q, k, v, block_mask):
    """Run flex attention with ``block_mask`` over ``(B, H, N, D)`` inputs, in one dtype
    (the autocast dtype when autocast is on for CUDA)."""
    dtype = q.dtype
    if q.is_cuda and torch.is_autocast_enabled("cuda"):
        dtype = torch.get_autocast_dtype("cuda")
    with torch.autocast(q.device.type, enabled=False):
        return flex_attention_fn(q.device.type)(q.to(dtype), k.to(dtype), v.to(dtype),
                                                block_mask=block_mask)


def local_block_mask(n: int, window: int, key_padding_mask: torch.Tensor | None, device, causal: bool = False):
    """Flex ``BlockMask`` for ``|q_idx - kv_idx| <= window`` (``causal``: ``0 <= q_idx - kv_idx <= window``)
    and real keys."""
    if key_padding_mask is None:
        def mask_mod(b, h, q_idx, kv_idx):
            return band_mask(q_idx - kv_idx, window, causal)
        return make_block_mask(mask_mod, None, None, n, device)

    real = key_padding_mask

    def mask_mod(b, h, q_idx, kv_idx):
        return band_mask(q_idx - kv_idx, window, causal) & real[b, kv_idx]
    return make_block_mask(mask_mod, real.shape[0], None, n, device)


def local_attention_flex(q, k, v, window: int, key_padding_mask=None, causal: bool = False):
    """Same function as :func:`local_attention_reference`, via flex_attention."""
    block_mask = local_block_mask(q.shape[-2], window, key_padding_mask, q.device, causal)
    return flex_with_block_mask(q, k, v, block_mask)


def run_flex_or_none(module, q, k, v, mask):
    """``backend=auto`` on CUDA: ``module._flex(...)``, or None when flex cannot run this
    input kind (remembered per device/dtype/head_dim so it is not retried every call).
    Out-of-memory is re-raised, never hidden."""
    kind = (str(q.device), q.dtype, q.shape[-1], torch.is_autocast_enabled(q.device.type))
    failed = module._flex_failed
    if kind in failed:
        return None
    try:
        out = module._flex(q, k, v, mask)
    except torch.OutOfMemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - e.g. no Triton / unsupported head_dim: stay correct
        failed[kind] = f"{type(err).__name__}: {err}"
        return None
    module.last_backend = "flex"
    return out

def dispatch_backend(module, q, k, v, mask, reference, fused):
    """Run ``module`` on its configured backend: ``flex`` (``module._flex``), ``sdpa`` (the
    ``fused()`` thunk), ``reference`` (the ``reference()`` thunk), or ``auto``: flex on CUDA (falling
    back to the reference path), sdpa on the CPU (torch's fused flash kernel with a mask), reference
    elsewhere. Sets ``module.last_backend``; shared by ``local`` and ``bigbird``."""
    backend = module.config.backend
    if backend == "auto":
        if q.is_cuda:
            out = run_flex_or_none(module, q, k, v, mask)
            if out is not None:
                return out
        backend = auto_or_reference("sdpa") if q.device.type == "cpu" else "reference"
    module.last_backend = backend
    if backend == "flex":
        return module._flex(q, k, v, mask)
    if backend == "sdpa":
        return fused()
    return reference()



# --------------------------------------------------------------------------- module
@dataclass
class LocalConfig(AttentionConfig):
    #: largest distance |i - j| a query may attend (each side; causal: back only); >= N - 1 equals full
    window: int = 256
    #: "auto" (flex on CUDA, sdpa on the CPU, reference elsewhere) | "reference" | "flex" | "sdpa"
    backend: str = "auto"


@register("local", LocalConfig)
class LocalAttention(Attention):
    """Sliding-window softmax attention, ``|i - j| <= window`` (LRA "Local Attention",
    Tay et al. 2021; Parmar et al. 2018; Beltagy et al. 2020). ``(B, H, N, D)`` in and out;
    time O(N w d), memory O(N w). ``causal=True``: the causal window ``i - window <= j <= i``
    (each query sees its ``window`` predecessors and itself); decoding keeps only that window."""

    exact = False  # exact only when window >= N - 1
    complexity = "O(N w)"
    fast_devices = ("cuda", "cpu")
    supports_causal = True

    def __init__(self, config: LocalConfig):
        super().__init__(config)
        if not isinstance(config.window, int) or config.window < 0:
            raise ValueError(f"local: window must be an int >= 0 (max attended distance |i-j|), "
                             f"got {config.window!r}")
        if config.backend not in BACKENDS:
            raise ValueError(f"unknown local backend {config.backend!r}; choose one of {', '.join(BACKENDS)}")
        self.last_backend: str | None = None
        self._block_masks = BlockMaskCache()
        self._flex_failed: dict[tuple, str] = {}  # input kinds flex could not run (auto backend)

    def _flex(self, q, k, v, mask):
        n, window, causal = q.shape[-2], self.config.window, self.causal
        block_mask = self._block_masks.get(n, q.device, mask,
                                           lambda: local_block_mask(n, window, mask, q.device, causal),
                                           extra=(causal,))
        return flex_with_block_mask(q, k, v, block_mask)

    def forward(self, q, k, v, key_padding_mask=None):
        if q.shape[-2] != k.shape[-2]:
            raise ValueError(f"local attention needs queries and keys of one length, got "
                             f"{q.shape[-2]} and {k.shape[-2]}")
        mask = normalize_key_padding_mask(key_padding_mask, q.shape[0], k.shape[-2], q.device)
        window, causal = self.config.window, self.causal
        return dispatch_backend(self, q, k, v, mask,
                                lambda: local_attention_reference(q, k, v, window, mask, causal),
                                lambda: local_attention_fused(q, k, v, window, mask, causal))

    # ------------------------------------------------------------------ decoding
    def decode_state_bytes(self, length: int, element_bytes: int = 4) -> tuple[int | None, str]:
        """The keys and values of the last ``min(length, window)`` tokens: ``2 min(n, w) H D`` numbers
        (the next query sees them and itself)."""
        c = self.config
        kept = min(length, c.window)
        return (2 * kept * c.heads * c.head_dim * element_bytes,
                f"the window: keys and values of the last min(N, window={c.window}) tokens")

    def decode_init(self, batch: int, device: torch.device, dtype: torch.dtype) -> KVCache:
        """A :class:`KVCache` that keeps the last ``window + 1`` tokens (the window and the new one)."""
        if not self.causal:
            raise NoDecodingPath("local: decoding needs causal=True (the bidirectional window reads "
                                      "future tokens)")
        c = self.config
        return KVCache(batch, c.heads, c.head_dim, device, dtype, keep=c.window + 1)

    def decode_step(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: KVCache):
        """``q, k, v (B, H, 1, D)``: append to the window cache, attend ``q`` to the last
        ``window + 1`` keys (itself included): O(w D) per head and token."""
        keys, values = state.append(k, v)
        return softmax_attention(q, keys, values), state
