"""Performer attention with FAVOR+ (Choromanski et al. 2021, "Rethinking Attention with
Performers", ICLR).

The softmax kernel ``exp(q . k / sqrt(d))`` is estimated without bias by positive random
features. With ``x = q d^{-1/4}`` (and likewise for keys),

    phi(x) = exp(W x - |x|^2 / 2) / sqrt(m),   E[phi(x) . phi(y)] = exp(x . y),

where the ``m`` rows of ``W (m, d)`` are *orthogonal random features*: stacked blocks of the
Q factor of QR-decomposed ``d x d`` Gaussian matrices, each row rescaled by the norm of an
independent ``d``-dim Gaussian vector (chi-distributed with d degrees of freedom), so that each
row is marginally ``N(0, I_d)`` while rows within a block are exactly orthogonal (lower variance).
Attention is then the normalized kernel attention of :func:`attention_variants._kernel.kernel_attention`:
O(N m d) time and O(N (m + d)) memory per head, i.e. O(N).

Numerical stabilizer: ``exp`` is taken of ``W x - |x|^2/2 - c``. For queries ``c`` is the
per-row maximum over features; a factor ``exp(-c_i)`` that depends only on query i scales both
the numerator and the denominator of row i and cancels. For keys ``c`` must be one number shared
by every key of a (batch, head) -- the maximum over all real keys and features: a per-key shift
would reweight keys relative to one another and change the result. The maximum is taken over real
keys only (so padded keys cannot move it) and detached (it cancels, so its gradient is zero).

Normalizer guard: none that could bias the estimate. The features are positive, so the
normalizer ``phi(q_i) . sum_j phi(k_j)`` is a sum of non-negative terms; since the stabilizers put
it on an arbitrary scale, any absolute floor would shrink the outputs of legitimately small rows
(a clamp at 1e-6 gave relative errors up to 0.23 at score std 4, head_dim 64). Only a normalizer that is
exactly 0 (every key padded) is guarded, giving output 0 (:func:`_kernel.safe_denominator`). With
these stabilizers the fp32 normalizer stays far above the fp32 range: measured minimum ~1e-12 at
score std 16 (head_dim 64, 256 features, N = 256), against fp32's smallest normal 1e-38.

``kernel="relu"`` is the paper's generalized-kernel variant ``phi(x) = relu(W x) + kernel_eps``
(a positive but non-softmax kernel; its scale cancels in the normalization). ``kernel_eps`` is part
of the kernel's definition, not a guard: it is added to the unrescaled features (no stabilizer
is applied to this kernel), so it means the same thing at every input scale, and it keeps every
feature, hence every normalizer with at least one real key, strictly positive.

Projection redraws: the projection is a registered buffer drawn from ``torch.Generator`` seeded
with ``config.seed`` (draw i > 0 from a seed derived from ``(seed, i)``, so resuming a checkpoint
continues identically). Training forwards are counted in the buffer ``steps``; the forward that
starts step ``s`` (``s > 0``, ``s % redraw_interval == 0``) first redraws. ``redraw_interval=0``
never redraws; eval forwards never redraw and do not count. Each Performer layer counts its own
forwards (with gradient accumulation that is micro-batches, not optimizer steps).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._fast import REDUCED, CudaCompiled, check_backend, compute_dtype, matmul_fp32, no_autocast
from ._kernel import (ShiftedExpFeatures, causal_kernel_attention_reference, fast_kernel_attention, fp32,
                      fused_kernel_attention, in_batch_groups, kernel_attention, kernel_backend, kernel_decode_init,
                      kernel_decode_step, kernel_state_bytes, mask_keys, splitmix64)
from ._precision import upcast, working_dtype
from .base import Attention, AttentionConfig
from .masking import normalize_key_padding_mask
from .registry import register

KERNELS = ("softmax", "relu")


def gaussian_orthogonal_random_matrix(num_rows: int, dim: int, generator: torch.Generator,
                                      scaling: str = "chi") -> torch.Tensor:
    """``(num_rows, dim)`` orthogonal random features (Choromanski et al. 2021, Sec. 2.4).

    ``ceil(num_rows / dim)`` independent Haar-random orthogonal ``dim x dim`` blocks (QR of a
    Gaussian matrix, signs fixed by ``diag(R)``) are stacked and truncated to ``num_rows`` rows.
    ``scaling="chi"`` rescales row i by the norm of a fresh ``N(0, I_dim)`` vector, so every row
    has the marginal law of a Gaussian vector; ``"sqrt_d"`` uses the constant ``sqrt(dim)``.
    """
    num_blocks = math.ceil(num_rows / dim)
    g = torch.randn(num_blocks, dim, dim, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(g)                                   # batched over blocks
    diag = torch.diagonal(r, dim1=-2, dim2=-1)
    q = q * torch.where(diag < 0, -1.0, 1.0).unsqueeze(-2)      # Haar: fix the column signs
    w = q.transpose(-2, -1).reshape(num_blocks * dim, dim)[:num_rows]  # rows orthonormal per block
    if scaling == "chi":
        norms = torch.randn(num_rows, dim, generator=generator, dtype=torch.float64).norm(dim=1)
    elif scaling == "sqrt_d":
        norms = torch.full((num_rows,), math.sqrt(dim), dtype=torch.float64)
    else:
        raise ValueError(f"unknown scaling {scaling!r}; choose 'chi' or 'sqrt_d'")
    return (norms[:, None] * w).float()


def softmax_features(x: torch.Tensor, w: torch.Tensor, is_query: bool,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
    """FAVOR+ positive features of ``x (B, H, N, d)`` (already scaled by ``d^-1/4``) -> ``(B, H, N, m)``.

    Computes ``exp(x W^T - |x|^2/2 - c) / sqrt(m)`` in the working dtype (at least fp32) with the stabilizer ``c`` described in
    the module docstring (per query row; shared over the real keys of a (batch, head) for keys).
    Padded keys (``mask`` False) get feature 0.
    """
    x = upcast(x, w.dtype)
    m = w.shape[0]
    expo = torch.einsum("bhnd,md->bhnm", x, w.to(x.dtype)) - 0.5 * x.square().sum(-1, keepdim=True)
    if is_query:
        c = expo.amax(dim=-1, keepdim=True).detach()
    else:
        expo = mask_keys(expo, mask, float("-inf"))   # exp(-inf) = 0, and no gradient
        c = expo.amax(dim=(-2, -1), keepdim=True).detach()
        c = torch.where(torch.isfinite(c), c, torch.zeros_like(c))  # every key padded
    return torch.exp(expo - c) * (1.0 / math.sqrt(m))


def causal_softmax_key_features(x: torch.Tensor, w: torch.Tensor,
                                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal FAVOR+ key features of ``x (B, H, N, d)`` (already scaled by ``d^-1/4``): each key
    stabilised by its *own* shift ``r_j = max_f (W x_j - |x_j|^2 / 2)`` (detached), returned as
    ``(exp(W x_j - |x_j|^2/2 - r_j) / sqrt(m) (B, H, N, m), r (B, H, N))``; padded keys get feature 0
    and ``r = -inf``. The true feature is ``phi_j exp(r_j)``: the causal kernel carries ``r`` as the
    key's log-weight and shifts it by its running maximum over past keys
    (:func:`attention_variants._kernel.running_shift`), so no statistic of a later key enters an
    earlier query (unlike the non-causal stabiliser, a maximum over all keys)."""
    x = upcast(x, w.dtype)
    expo = torch.einsum("bhnd,md->bhnm", x, w.to(x.dtype)) - 0.5 * x.square().sum(-1, keepdim=True)
    expo = mask_keys(expo, mask, float("-inf"))
    r = expo.amax(dim=-1).detach()                                          # (B, H, N)
    shift = torch.where(torch.isfinite(r), r, torch.zeros_like(r))
    return torch.exp(expo - shift.unsqueeze(-1)) * (1.0 / math.sqrt(w.shape[0])), r


def relu_features(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """Generalized-kernel features ``relu(x W^T) + eps``: ``(B, H, N, d) -> (B, H, N, m)``, fp32."""
    x = upcast(x, w.dtype)
    return torch.relu(torch.einsum("bhnd,md->bhnm", x, w.to(x.dtype))) + eps


def project_fp32(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x W^T`` with an fp32 result for ``x (..., d)`` in any dtype and ``w (m, d)`` fp32: ``(..., m)``.

    Performer's features need it: rounding ``x W^T`` (or ``W``) to bf16 moves the exponent of each
    feature coherently (measured against the fp32 path: outputs 1.6-2.2% off; relu-kernel
    gradients 2.5% off), five times the error of bf16 features from an fp32 projection. On CUDA
    with bf16/fp16 ``x``: two tensor-core matmuls with fp32 output (:func:`matmul_fp32`) against
    ``W = W_hi + W_lo`` split into two bf16/fp16 parts (``W`` keeps ~16 mantissa bits);
    elsewhere an fp32 matmul (float64 stays float64).
    """
    if x.is_cuda and x.dtype in (torch.bfloat16, torch.float16):
        w_hi = w.to(x.dtype)
        w_lo = (w - w_hi.to(w.dtype)).to(x.dtype)
        return matmul_fp32(x, w_hi.t()) + matmul_fp32(x, w_lo.t())
    return matmul_fp32(x, w.to(working_dtype(x.dtype)).t())


@CudaCompiled
def _exp_features(proj: torch.Tensor, diag: torch.Tensor, c: torch.Tensor, keep: torch.Tensor | None,
                  scale: float, cd: torch.dtype) -> torch.Tensor:
    """``exp(proj - diag - c) * scale`` in fp32, 0 where ``keep`` is False, cast to ``cd``.
    ``proj (B, H, N, m)`` and ``diag (B, H, N)`` fp32, ``c (B, H, N)`` or ``(B, H, 1)``."""
    phi = torch.exp(proj - (diag + c).unsqueeze(-1)) * scale
    if keep is not None:
        phi = phi.masked_fill(~keep, 0.0)
    return phi.to(cd)


@CudaCompiled
def _exp_features_backward(grad: torch.Tensor, phi: torch.Tensor, acc: torch.dtype):
    """Gradients of :func:`_exp_features` w.r.t. ``proj`` (in ``phi``'s dtype) and ``diag`` (fp32)."""
    g = grad.to(acc) * phi.to(acc)
    return g.to(phi.dtype), -g.sum(dim=-1)


@CudaCompiled
def _relu_features(proj: torch.Tensor, eps: float, cd: torch.dtype) -> torch.Tensor:
    return (torch.relu(proj) + eps).to(cd)


@CudaCompiled
def _relu_features_backward(grad: torch.Tensor, phi: torch.Tensor, eps: float) -> torch.Tensor:
    """``d phi / d proj`` is 1 where ``proj > 0``, i.e. where ``phi`` exceeds ``eps`` (as rounded)."""
    return grad.to(phi.dtype) * (phi > eps).to(phi.dtype)            # phi > eps <=> proj > 0 (up to rounding)


class _PositiveFeatures(torch.autograd.Function):
    """Performer features of ``x (B, H, N, d)`` (in the compute dtype ``cd``, unscaled; ``w (m, d)``
    fp32 already scaled by ``d^-1/4``), computed once, in ``cd``, from an fp32 projection
    (:func:`project_fp32`): both kernels' gradients are sensitive to a bf16-rounded projection
    (measured against the fp32 path: softmax outputs 1.6-2.2% off, relu gradients 2.5%; with an fp32
    projection 0.4% and 0.4%).

    ``kernel="softmax"``: ``exp(x W^T - |x|^2 / (2 sqrt(d)) - c) / sqrt(m)`` with ``|x|^2`` reduced
    in fp32 and the stabilizer ``c`` of :func:`softmax_features` (per query row; shared by the real
    keys of a (batch, head)); ``d phi / d(x W^T) = phi`` and ``d phi / d|x|^2`` likewise, so the
    backward needs only ``phi`` and ``x``; ``c`` gets no gradient (detached there too). Padded keys
    (``mask`` False) get feature 0 and gradient 0. ``kernel="relu"``: ``relu(x W^T) + eps``,
    derivative 1 where ``phi > eps``. The pointwise chains are compiled on CUDA.
    """

    @staticmethod
    def forward(ctx, x, w, is_query, mask, kernel, eps):
        cd = x.dtype
        proj = project_fp32(x, w)                                              # (B, H, N, m) fp32
        ctx.kernel, ctx.eps = kernel, eps
        if kernel == "relu":
            phi = _relu_features(proj, eps, cd)
            ctx.save_for_backward(x, w, phi)
            return phi
        half_scale = 0.5 / math.sqrt(x.shape[-1])
        diag = half_scale * (x * x).sum(dim=-1, dtype=proj.dtype)               # (B, H, N)
        c = proj.amax(dim=-1) - diag
        keep = None
        if not is_query:
            if mask is not None:
                keep = mask[:, None, :, None]
                c = c.masked_fill(~mask[:, None, :], float("-inf"))
            c = c.amax(dim=-1, keepdim=True)
            c = torch.where(torch.isfinite(c), c, torch.zeros_like(c))           # every key padded
        phi = _exp_features(proj, diag, c, keep, 1.0 / math.sqrt(w.shape[0]), cd)
        ctx.save_for_backward(x, w, phi)
        ctx.half_scale = half_scale
        return phi

    @staticmethod
    def backward(ctx, grad):
        x, w, phi = ctx.saved_tensors
        if ctx.kernel == "relu":
            return torch.matmul(_relu_features_backward(grad, phi, ctx.eps), w.to(x.dtype)), None, None, None, None, None
        d_proj, d_diag = _exp_features_backward(grad, phi, working_dtype(x.dtype))
        d_x = torch.matmul(d_proj, w.to(x.dtype))
        d_x += x * (2 * ctx.half_scale * d_diag).unsqueeze(-1).to(x.dtype)       # d diag / dx
        return d_x, None, None, None, None, None


def fast_features(x: torch.Tensor, w: torch.Tensor, is_query: bool, mask: torch.Tensor | None,
                  cd: torch.dtype, kernel: str = "softmax", eps: float = 1e-3) -> torch.Tensor:
    """:func:`softmax_features` / :func:`relu_features` of ``x (B, H, N, d)`` (unscaled), computed
    once, in the compute dtype ``cd``: ``(B, H, N, m)`` (:class:`_PositiveFeatures`; the factor
    ``d^-1/4`` is folded into ``w``)."""
    return _PositiveFeatures.apply(x.to(cd), upcast(w) * x.shape[-1] ** -0.25, is_query, mask, kernel, eps)


@dataclass
class PerformerConfig(AttentionConfig):
    #: number of random features m (the paper and the LRA performer config use 256)
    num_features: int = 256
    #: "softmax" (FAVOR+, unbiased softmax estimator) or "relu" (generalized kernel)
    kernel: str = "softmax"
    #: redraw the projection every this many training forwards; 0 = never
    redraw_interval: int = 1000
    #: row norms of the projection: "chi" (paper, Gaussian-marginal rows) or "sqrt_d"
    scaling: str = "chi"
    #: added to relu features (keeps them positive); unused by the softmax kernel
    kernel_eps: float = 1e-3
    #: "auto" (= fast, on every device and dtype) | "reference" | "fast"
    backend: str = "auto"
    #: tokens per chunk of the causal chunked kernel (causal=True); changes nothing but speed (128:
    #: fastest measured for 256 features with the causal key shift, fwd+bwd at N = 4096)
    chunk_size: int = 128


@register("performer", PerformerConfig)
class Performer(Attention):
    """FAVOR+ attention: ``q, k, v (B, H, N, D) -> (B, H, N, D)`` in O(N); see the module docstring.

    Buffers: ``projection (num_features, head_dim)`` (shared by all heads, as in the reference
    implementations), ``steps`` (training forwards seen), ``draws`` (index of the current draw).

    Backends: ``reference`` (:meth:`feature_map` and :func:`~attention_variants._kernel.kernel_attention`),
    ``fast`` (fp32/float64: :meth:`_fused`; bf16/fp16: :func:`fast_features` and
    :func:`~attention_variants._kernel.fast_kernel_attention`), ``auto`` = ``fast``.

    ``causal=True``: every key is stabilised by its own shift and the kernel shifts the key weights
    by their running maximum over past keys (:func:`causal_softmax_key_features`); queries keep
    their per-row shift. Redraws happen between forwards, so a sequence is always encoded with one
    projection. Fast path chunked (``chunk_size``), reference the prefix-sum recurrence.
    """

    exact = False
    complexity = "O(N)"
    supports_causal = True

    def __init__(self, config: PerformerConfig):
        super().__init__(config)
        if config.kernel not in KERNELS:
            raise ValueError(f"unknown performer kernel {config.kernel!r}; choose one of {KERNELS}")
        if config.num_features < 1 or config.redraw_interval < 0:
            raise ValueError("performer needs num_features >= 1 and redraw_interval >= 0")
        check_backend("performer", config.backend)
        self.last_backend: str | None = None
        self.register_buffer("projection", self._draw(0))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("draws", torch.zeros((), dtype=torch.long))
        # host-side mirrors of the counters, so a training forward needs no device sync;
        # refreshed from the buffers whenever a state dict is loaded
        self._steps = 0
        self._draws = 0
        self.register_load_state_dict_post_hook(Performer._sync_counters)

    @staticmethod
    def _sync_counters(module, incompatible_keys) -> None:
        module._steps, module._draws = int(module.steps), int(module.draws)

    def _draw(self, index: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(splitmix64(self.config.seed, index))
        return gaussian_orthogonal_random_matrix(self.config.num_features, self.config.head_dim,
                                                 gen, self.config.scaling)

    @torch.no_grad()
    def redraw(self) -> None:
        """Replace the projection by the next draw of the seeded sequence."""
        self._draws += 1
        self.draws.fill_(self._draws)
        self.projection.copy_(self._draw(self._draws))

    @torch.no_grad()
    def _maybe_redraw(self) -> None:
        if not self.training:
            return
        interval = self.config.redraw_interval
        if interval > 0 and self._steps > 0 and self._steps % interval == 0:
            self.redraw()
        self._steps += 1
        self.steps.fill_(self._steps)

    def feature_map(self, x: torch.Tensor, is_query: bool, mask: torch.Tensor | None = None):
        """``(B, H, N, D) -> (B, H, N, num_features)`` features of queries or keys, at least fp32 (float64 stays float64)."""
        x = upcast(x) * x.shape[-1] ** -0.25
        if self.config.kernel == "relu":
            return relu_features(x, self.projection, self.config.kernel_eps)
        return softmax_features(x, self.projection, is_query, mask)

    def forward(self, q, k, v, key_padding_mask=None):
        mask = normalize_key_padding_mask(key_padding_mask, q.shape[0], k.shape[-2], q.device)
        self._maybe_redraw()
        self.last_backend = kernel_backend(self.config.backend, q)
        cfg = self.config
        if self.last_backend == "fast":
            cd = compute_dtype(q)
            if cd in REDUCED and not self.causal:
                with no_autocast(q.device):
                    phi_q = fast_features(q, self.projection, True, None, cd, cfg.kernel, cfg.kernel_eps)
                    phi_k = fast_features(k, self.projection, False, mask, cd, cfg.kernel, cfg.kernel_eps)
                return fast_kernel_attention(phi_q, phi_k, v, mask)
            return in_batch_groups(self._fused_attention, q, k, v, mask, cfg.num_features)
        with fp32(q.device):
            phi_q = self.feature_map(q, is_query=True)
            if self.causal:
                phi_k, log_w = self._causal_key_features(k, mask)
                return causal_kernel_attention_reference(phi_q, phi_k, v, mask, log_w=log_w).to(v.dtype)
            phi_k = self.feature_map(k, is_query=False, mask=mask)
        return kernel_attention(phi_q, phi_k, v, mask)

    def _fused_attention(self, q, k, v, mask):
        """The fast path (fp32/float64): :meth:`_fused_features` and
        :func:`~attention_variants._kernel.fused_kernel_attention` (causal: chunked)."""
        with fp32(q.device):
            phi_q, phi_k, log_w = self._fused_features(q, mask_keys(k, mask))
            out = fused_kernel_attention(phi_q, phi_k, v, mask, causal=self.causal, chunk=self.config.chunk_size,
                                         log_w=log_w)
        return out.to(v.dtype)

    def _causal_key_features(self, k: torch.Tensor, mask: torch.Tensor | None):
        """Reference causal key features and log-weights (None for the relu kernel)."""
        if self.config.kernel == "relu":
            return self.feature_map(k, is_query=False), None
        x = upcast(k) * k.shape[-1] ** -0.25
        return causal_softmax_key_features(x, self.projection, mask)

    def _fused_features(self, q: torch.Tensor, k: torch.Tensor):
        """The fast path's features in the working dtype (at least fp32): ``(phi_q, phi_k, log_w)``.

        Softmax kernel: the true features ``exp(x W^T - |x|^2 / 2) / sqrt(m)`` (``x = q d^-1/4``) are
        ``exp(x W^T - r)`` (``r`` the row's maximum, :class:`ShiftedExpFeatures`: one matmul, one
        max, an in-place shift and exp) times a per-row scalar. A query's scalar cancels in its
        row (so no ``|x|^2`` and no ``1/sqrt(m)`` for queries); a key's is carried as its log-weight
        ``log_w_j = r_j - |x_j|^2 / 2`` (``1/sqrt(m)`` is shared by every key and cancels), which
        the kernel shifts by the maximum over the real keys (over the past keys when causal).
        Every feature is in (0, 1]; the function is the reference path's (FAVOR+ with its
        stabilisers), rounded differently. ``k`` must have its padded rows zeroed. Relu kernel:
        the reference features. Time O(N m d), memory O(N m) per head; saved for backward: the
        features only."""
        work = working_dtype(q.dtype)
        q, k = q.to(work), k.to(work)
        if self.config.kernel == "relu":
            return self.feature_map(q, is_query=True), self.feature_map(k, is_query=False), None
        d = q.shape[-1]
        w_t = (self.projection.to(work) * d ** -0.25).t()                  # (d, m)
        phi_q, _ = ShiftedExpFeatures.apply(q, w_t)
        phi_k, r = ShiftedExpFeatures.apply(k, w_t)
        return phi_q, phi_k, r - (0.5 / math.sqrt(d)) * k.square().sum(dim=-1)

    def decode_state_bytes(self, length: int, element_bytes: int = 4) -> tuple[int | None, str]:
        c = self.config
        shift = c.kernel == "softmax"
        return (kernel_state_bytes(c.heads, c.num_features, c.head_dim, element_bytes, shift=shift),
                "running state sum phi(k) v^T (num_features x head_dim) and normaliser sum phi(k) per head"
                + (", plus the running key shift" if shift else ""))

    def decode_init(self, batch: int, device: torch.device, dtype: torch.dtype):
        c = self.config
        return kernel_decode_init(batch, c.heads, c.num_features, c.head_dim, device, dtype,
                                  shift=c.kernel == "softmax")

    def decode_step(self, q, k, v, state):
        """One token: the fast path's features of the new query and key, the key's log-weight
        rescaling the state when it raises the running shift. O(m d) per head."""
        with fp32(q.device):
            phi_q, phi_k, log_w = self._fused_features(q, k)
            out, state = kernel_decode_step(state, phi_q, phi_k, v, log_w=log_w)
        return out.to(v.dtype), state
