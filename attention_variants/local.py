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

from ._precision import lowest, upcast
from .base import Attention, AttentionConfig
from .masking import normalize_key_padding_mask
from .registry import register

BACKENDS = ("auto", "reference", "flex")


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


def local_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int,
                              key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Block-banded sliding-window attention, ``(B, H, N, D) x3 -> (B, H, N, D)``.

    Query ``i`` attends key ``j`` iff ``|i - j| <= window`` and key ``j`` is real.
    Memory O(B H N window); no Python loop over heads or chunks. (When ``3 * window >= N``
    the band is computed densely, which then costs no more.)
    """
    b, h, n, d = q.shape
    scale = 1.0 / math.sqrt(d)
    c = max(window, 1)                      # chunk size
    if 3 * c >= n:  # three chunks would cover the sequence: a dense (N, N) band is no larger
        scores = scores_qk(q, k.transpose(-2, -1), scale)
        i = torch.arange(n, device=q.device)
        allowed = ((i[:, None] - i[None, :]).abs() <= window)[None, None]
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
    band = (c + a - s).abs() <= window                # (c, 3c)
    real = (torch.ones(1, n, dtype=torch.bool, device=q.device)
            if key_padding_mask is None else key_padding_mask)
    real = F.pad(real, (c, c + pad), value=False)     # out-of-range keys are not real
    real = real.unfold(1, 3 * c, c)                   # (B or 1, nc, 3c)
    allowed = band[None, None, None] & real[:, None, :, None, :]  # (B|1, 1, nc, c, 3c)

    out = masked_softmax_av(scores, allowed, v_win)  # (B, H, nc, c, D)
    return out.reshape(b, h, nc * c, d)[:, :, :n]


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


def local_block_mask(n: int, window: int, key_padding_mask: torch.Tensor | None, device):
    """Flex ``BlockMask`` for ``|q_idx - kv_idx| <= window`` and real keys."""
    if key_padding_mask is None:
        def mask_mod(b, h, q_idx, kv_idx):
            return (q_idx - kv_idx).abs() <= window
        return make_block_mask(mask_mod, None, None, n, device)

    real = key_padding_mask

    def mask_mod(b, h, q_idx, kv_idx):
        return ((q_idx - kv_idx).abs() <= window) & real[b, kv_idx]
    return make_block_mask(mask_mod, real.shape[0], None, n, device)


def local_attention_flex(q, k, v, window: int, key_padding_mask=None):
    """Same function as :func:`local_attention_reference`, via flex_attention."""
    block_mask = local_block_mask(q.shape[-2], window, key_padding_mask, q.device)
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

def dispatch_backend(module, q, k, v, mask, reference):
    """Run ``module`` on its configured backend: ``flex`` (``module._flex``), ``reference``
    (the ``reference()`` thunk), or ``auto`` (flex on CUDA, falling back to the reference path).
    Sets ``module.last_backend``; shared by ``local`` and ``bigbird``."""
    backend = module.config.backend
    if backend == "auto":
        if q.is_cuda:
            out = run_flex_or_none(module, q, k, v, mask)
            if out is not None:
                return out
        backend = "reference"
    module.last_backend = backend
    if backend == "flex":
        return module._flex(q, k, v, mask)
    return reference()



# --------------------------------------------------------------------------- module
@dataclass
class LocalConfig(AttentionConfig):
    #: largest distance |i - j| a query may attend (each side); >= N - 1 equals full
    window: int = 256
    #: "auto" (flex on CUDA, reference elsewhere) | "reference" | "flex"
    backend: str = "auto"


@register("local", LocalConfig)
class LocalAttention(Attention):
    """Sliding-window softmax attention, ``|i - j| <= window`` (LRA "Local Attention",
    Tay et al. 2021; Parmar et al. 2018; Beltagy et al. 2020). ``(B, H, N, D)`` in and out;
    time O(N w d), memory O(N w)."""

    exact = False  # exact only when window >= N - 1
    complexity = "O(N w)"
    fast_devices = ("cuda",)

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
        n, window = q.shape[-2], self.config.window
        block_mask = self._block_masks.get(n, q.device, mask,
                                           lambda: local_block_mask(n, window, mask, q.device))
        return flex_with_block_mask(q, k, v, block_mask)

    def forward(self, q, k, v, key_padding_mask=None):
        if q.shape[-2] != k.shape[-2]:
            raise ValueError(f"local attention needs queries and keys of one length, got "
                             f"{q.shape[-2]} and {k.shape[-2]}")
        mask = normalize_key_padding_mask(key_padding_mask, q.shape[0], k.shape[-2], q.device)
        window = self.config.window
        return dispatch_backend(self, q, k, v, mask,
                                lambda: local_attention_reference(q, k, v, window, mask))
