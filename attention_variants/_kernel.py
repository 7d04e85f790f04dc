"""Shared machinery of the kernel (feature-map) attention variants: linear, performer,
random_feature, hedgehog, taylor.

Not a variant (the leading underscore keeps the package's auto-importer from registering it).

Kernel attention replaces ``softmax(Q K^T) V`` by ``phi(Q) (phi(K)^T V) / (phi(Q) (phi(K)^T 1))``
for a feature map ``phi: R^d -> R^m``. Computing ``phi(K)^T V`` first makes it O(N m d) in time
and O((N + m) d) in memory per head: linear in the sequence length N.

* Reference paths: :func:`kernel_attention` (non-causal), :func:`causal_kernel_attention_reference`
  (causal: the cumulative-sum definition), :func:`gated_kernel_attention_reference` (gated RFA).
* Fast paths (``backend="fast"``, what ``auto`` runs on every device, :func:`kernel_backend`):
  :func:`fused_kernel_attention` in at least fp32 -- the normalizer as a ones column of the
  values, a feature map's per-key factor carried as a log-weight on the small side -- and, causal,
  the chunked :func:`causal_kernel_attention` (quadratic within a chunk, an ``F x (D + 1)`` state
  between chunks, a causal running shift for the key weights); :func:`fast_kernel_attention` is
  the bf16/fp16 policy of linear and performer (non-causal).
* Decoding: :class:`KernelState`, :func:`kernel_decode_init`, :func:`kernel_decode_step`,
  :func:`kernel_state_bytes`.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F

from ._fast import CudaCompiled, check_backend, matmul_fp32, no_autocast, reference_required, resolve_backend
from ._precision import working_dtype


#: context that disables autocast on a device's type so the enclosed math runs in fp32; tensors must
#: still be upcast explicitly (``.float()``): it only stops autocast from downcasting the matmuls
fp32 = no_autocast


def splitmix64(seed: int, index: int) -> int:
    """A well-mixed 63-bit seed derived from ``(seed, index)``; ``index == 0`` gives ``seed``.

    Used to derive the seed of the ``index``-th redraw of a random projection so that draw i
    is a pure function of (config.seed, i): reproducible after resuming from a checkpoint.
    """
    if index == 0:
        return seed
    z = (seed * 0x9E3779B97F4A7C15 + index * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF


def mask_keys(x: torch.Tensor, mask: torch.Tensor | None, value: float = 0.0) -> torch.Tensor:
    """Fill the rows of padded keys of ``x: (B, H, M, F)`` with ``value`` (``mask: (B, M)``, True = real).

    ``masked_fill`` (not multiplication) so that inf/NaN in padded rows cannot leak through as
    ``0 * inf``; its backward sends zero gradient to the filled entries.
    """
    if mask is None:
        return x
    return x.masked_fill(~mask[:, None, :, None], value)


def zero_padded_rows_(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Set the rows of padded keys of ``x: (B, H, M, F)`` to 0 in place (``mask: (B, M)``, True = real)
    and return ``x``. An assignment, so inf/NaN there cannot survive as ``0 * inf``. On CPU it writes
    the padded rows by index (``O(padded rows)``; a broadcast boolean ``masked_fill_`` costs several
    passes over all of ``x`` there); on other devices ``masked_fill_`` (no host sync for the indices)."""
    if mask is None:
        return x
    if x.device.type == "cpu":
        b, m = (~mask).nonzero(as_tuple=True)
        x.transpose(1, 2)[b, m] = 0.0
        return x
    return x.masked_fill_(~mask[:, None, :, None], 0.0)


def safe_denominator(den: torch.Tensor, floor: torch.Tensor | None = None) -> torch.Tensor:
    """The normalizer ``den`` ready to divide by: ``|den|`` raised to ``floor`` (sign kept, 0 counts
    as positive) where a floor is given, then exact zeros replaced by 1.

    Scale-free: there is no absolute threshold. ``floor`` must be a multiple of the row's own
    mass (see :func:`normalizer_floor`), so it scales with the features exactly as ``den`` does
    and any stabilizer's rescaling cancels. A normalizer still exactly 0 belongs to a row with no
    mass at all (every key padded, whose features are zeroed; or, with positive features, every
    product underflowing), whose numerator is 0 too: its output is 0, with finite gradients
    (dividing by 1, not by 0, so no ``0/0`` reaches autograd).
    """
    if floor is not None:
        den = torch.where(den >= 0, torch.maximum(den, floor), torch.minimum(den, -floor))
    return torch.where(den == 0, torch.ones_like(den), den)


def normalizer_floor(phi_q: torch.Tensor, key_mass: torch.Tensor, rel_floor: float) -> torch.Tensor:
    """``rel_floor * |phi_q_i|_2 * key_mass_i`` as ``(B, H, N)`` (callers skip it when ``rel_floor == 0``).

    ``key_mass_i = sum_j w_ij |phi_k_j|_2`` over the keys query i sees (``w_ij`` = 1, or its gate
    weights) is an upper bound of ``|phi_q_i . sum_j w_ij phi_k_j|`` (Cauchy-Schwarz), so the
    floor caps the amplification ``|out_i| <= max_j |v_j| / rel_floor`` and is relative to the
    row's own scale: multiplying the query or key features by any factor scales it as the
    normalizer. Meant for signed features (random Fourier features); positive features need none.
    """
    return rel_floor * phi_q.norm(dim=-1) * key_mass


def kernel_attention(phi_q: torch.Tensor, phi_k: torch.Tensor, v: torch.Tensor,
                     mask: torch.Tensor | None, *, rel_floor: float = 0.0,
                     backend: str = "reference") -> torch.Tensor:
    """Normalized linear attention ``phi_q (phi_k^T v) / (phi_q (phi_k^T 1))`` in O(N).

    ``backend="reference"`` (the default) is the fp32 path described here; ``"fast"`` computes
    the same function in ``phi_q``'s dtype (:func:`fast_kernel_attention`); ``"auto"`` picks by
    device and dtype (:func:`attention_variants._fast.resolve_backend`).

    Shapes: ``phi_q (B, H, N, F)``, ``phi_k (B, H, M, F)``, ``v (B, H, M, D)``,
    ``mask (B, M)`` bool (True = real key) or None; returns ``(B, H, N, D)`` in ``v``'s dtype.

    Time O((N + M) F D), memory O((N + M)(F + D) + F D) per head; the ``(N, M)`` matrix is never
    formed. Padded keys' features are zeroed (and their values too, so a non-finite padded value
    cannot leak) before both the numerator ``phi_k^T v`` and the denominator ``phi_k^T 1``, so a
    padded key changes no output. Everything runs in fp32 with autocast disabled (the inputs are
    upcast; float64 inputs stay float64: the same function as a float64 reference).

    Guard (:func:`safe_denominator`), scale-free so that a feature map's stabilizer may rescale
    ``phi_q`` per query and ``phi_k`` by a shared factor: with ``rel_floor == 0`` (positive
    features) the output is exactly the ratio, except that a row whose normalizer is exactly 0
    (every key padded) outputs 0. ``rel_floor > 0`` (signed features, whose estimated normalizer
    can cross 0) also raises ``|normalizer|`` to ``rel_floor * |phi_q_i| * sum_j |phi_k_j|``
    (:func:`normalizer_floor`, sign kept); this costs O((N + M) F) more.
    """
    check_backend("kernel_attention", backend)
    if resolve_backend(backend, phi_q) == "fast":
        return fast_kernel_attention(phi_q, phi_k, v, mask, rel_floor=rel_floor)
    out_dtype = v.dtype
    with fp32(v.device):
        work = working_dtype(v.dtype)
        phi_q, phi_k, v = phi_q.to(work), phi_k.to(work), v.to(work)
        phi_k = mask_keys(phi_k, mask)
        v = mask_keys(v, mask)
        kv = torch.einsum("bhmf,bhmd->bhfd", phi_k, v)           # (B, H, F, D)
        k_sum = phi_k.sum(dim=-2)                                 # (B, H, F)
        num = torch.einsum("bhnf,bhfd->bhnd", phi_q, kv)          # (B, H, N, D)
        den = torch.einsum("bhnf,bhf->bhn", phi_q, k_sum)         # (B, H, N)
        floor = (normalizer_floor(phi_q, phi_k.norm(dim=-1).sum(dim=-1, keepdim=True), rel_floor)
                 if rel_floor else None)
        out = num / safe_denominator(den, floor).unsqueeze(-1)
    return out.to(out_dtype)


def fast_kernel_attention(phi_q: torch.Tensor, phi_k: torch.Tensor, v: torch.Tensor,
                          mask: torch.Tensor | None, *, rel_floor: float = 0.0) -> torch.Tensor:
    """:func:`kernel_attention`'s function (same guard, same masking) with the fast-path precision
    and memory policy, for features computed in the dtype the matmuls want (bf16 under autocast).

    Shapes as :func:`kernel_attention`; returns ``v``'s dtype. The matmuls along the length
    (``phi_k^T v``, ``phi_q (phi_k^T v)`` and the backward's) take operands in
    ``phi_q``'s dtype (``phi_k`` and ``v`` are cast to it) with fp32 accumulation; the
    normalizer ``phi_k^T 1`` is summed in fp32, ``phi_q . (phi_k^T 1)`` is reduced in fp32,
    ``phi_k^T v`` has an fp32 result, and the division is done in fp32. A custom autograd function
    (:class:`_FastKernelAttention`) saves for backward only ``phi_q``, ``phi_k``, ``v`` (as given:
    padded keys are re-masked in the backward) and O(F D + N) fp32 statistics; the ``(N, F)``
    features are never held in fp32. Its backward centres the values (:func:`_value_center`) and
    recomputes one ``(N, F) x (F, D)`` product. Pointwise parts are compiled on CUDA. float64
    inputs give the float64 function.

    ``rel_floor > 0``: the floor ``rel_floor |phi_q_i| sum_j |phi_k_j|`` is computed with autograd
    outside the custom function (norms reduced in fp32) and its gradient flows where it is active.
    """
    cd = phi_q.dtype
    with no_autocast(phi_q.device):
        phi_k = phi_k.to(cd)
        floor = None
        if rel_floor:
            acc = working_dtype(cd)
            q_norm = torch.linalg.vector_norm(phi_q, dim=-1, dtype=acc)
            k_norm = torch.linalg.vector_norm(mask_keys(phi_k, mask), dim=-1, dtype=acc)
            floor = rel_floor * q_norm * k_norm.sum(dim=-1, keepdim=True)     # normalizer_floor, in fp32
        return _FastKernelAttention.apply(phi_q, phi_k, v, mask, floor)


@CudaCompiled
def _normalizer(phi_q: torch.Tensor, k_sum: torch.Tensor) -> torch.Tensor:
    """``phi_q . k_sum`` reduced in ``k_sum``'s (fp32) dtype: ``(B, H, N, F), (B, H, F) -> (B, H, N)``."""
    return (phi_q.to(k_sum.dtype) * k_sum.unsqueeze(-2)).sum(dim=-1)


@CudaCompiled
def _guarded_ratio(num: torch.Tensor, den: torch.Tensor, floor: torch.Tensor | None, out_dtype: torch.dtype):
    """``num / safe_denominator(den, floor)`` in ``den``'s (fp32) dtype, cast to ``out_dtype``; also
    the effective normalizer ``den_eff``, ``den / den_eff`` (1 where unguarded) and each row's state
    (0: the raw normalizer, 1: the floor, 2: exactly zero, divided by 1), for the backward."""
    raw = den
    state = torch.zeros_like(den, dtype=torch.uint8)
    if floor is not None:
        floored = den.abs() < floor
        den = torch.where(floored, torch.where(den >= 0, floor, -floor), den)
        state = torch.where(floored, 1, state).to(torch.uint8)
    zero = den == 0
    state = torch.where(zero, 2, state).to(torch.uint8)
    den = torch.where(zero, torch.ones_like(den), den)
    return (num.to(den.dtype) / den.unsqueeze(-1)).to(out_dtype), den, raw / den, state


@CudaCompiled
def _ratio_backward(grad: torch.Tensor, num_c: torch.Tensor, center: torch.Tensor, den: torch.Tensor,
                    ratio: torch.Tensor, state: torch.Tensor, cd: torch.dtype):
    """Backward of ``out = num / den_eff`` written with centred values (:func:`_value_center`):
    ``out = num_c / den_eff + center * den / den_eff``, ``center`` a constant. Returns
    ``[grad / den_eff | d/d den]`` as ``(B, H, N, D + 1)`` in ``cd`` and the floor's gradient.

    Unguarded rows (``den_eff = den``): ``d/d den = -grad . num_c / den^2``. Guarded rows (floored or
    zero): ``den_eff`` does not follow ``den``, so ``d/d den = grad . center / den_eff``, and on
    floored rows ``d/d floor = -sign(den_eff) grad . out / den_eff``."""
    g = grad.to(den.dtype)
    g_out_c = (g * num_c.to(den.dtype)).sum(dim=-1) / den
    g_center = (g * center).sum(dim=-1)
    g_raw = torch.where(state == 0, -g_out_c / den, g_center / den)
    g_floor = torch.where(state == 1, -(g_out_c + g_center * ratio) / den * torch.sign(den),
                          torch.zeros_like(g_raw))
    return torch.cat([g / den.unsqueeze(-1), g_raw.unsqueeze(-1)], dim=-1).to(cd), g_floor


class _FastKernelAttention(torch.autograd.Function):
    """``phi_q (phi_k^T v) / guard(phi_q . phi_k^T 1, floor)`` with a hand-written backward (see
    :func:`fast_kernel_attention`). Inputs: features ``(B, H, N, F)``, ``(B, H, M, F)`` in one
    dtype, ``v (B, H, M, D)``, ``mask (B, M)`` or None, ``floor (B, H, N)`` or None.

    The forward uses the values as given. The backward is written with values centred on the mean
    of the real keys' values (:func:`_value_center`), from ``phi_k^T v`` kept in fp32, so that its
    two large terms do not cancel in the compute dtype."""

    @staticmethod
    def forward(ctx, phi_q, phi_k, v, mask, floor):
        cd = phi_q.dtype
        acc = working_dtype(cd)
        pk, vm = _masked_keys_values(phi_k, v, mask, cd)
        kv = matmul_fp32(pk.transpose(-1, -2), vm)                   # (B, H, F, D) in fp32
        k_sum = pk.sum(dim=-2, dtype=acc)                            # (B, H, F) normalizer sums
        num = torch.matmul(phi_q, kv.to(cd))                         # (B, H, N, D), fp32 accumulation
        den = _normalizer(phi_q, k_sum)                              # (B, H, N) in fp32
        out, den, ratio, state = _guarded_ratio(num, den, floor, v.dtype)
        ctx.save_for_backward(phi_q, phi_k, v, mask, kv, k_sum, den, ratio, state)
        ctx.has_floor = floor is not None
        return out

    @staticmethod
    def backward(ctx, grad):
        phi_q, phi_k, v, mask, kv, k_sum, den, ratio, state = ctx.saved_tensors
        cd = phi_q.dtype
        center = _value_center(v, mask, kv.dtype)                    # (B, H, 1, D) in fp32
        kv_c = (kv - k_sum.unsqueeze(-1) * center).to(cd)             # phi_k^T (v - center), (B, H, F, D)
        num_c = torch.matmul(phi_q, kv_c)                            # recomputed: (B, H, N, D)
        g_aug, g_floor = _ratio_backward(grad, num_c, center, den, ratio, state, cd)  # (B, H, N, D + 1)
        kvs = torch.cat([kv_c, k_sum.to(cd).unsqueeze(-1)], dim=-1)  # (B, H, F, D + 1)
        d_phi_q = torch.matmul(g_aug, kvs.transpose(-1, -2)) if ctx.needs_input_grad[0] else None
        d_phi_k = d_v = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            d_kvs = torch.matmul(phi_q.transpose(-1, -2), g_aug)       # (B, H, F, D + 1)
            d_kv, d_k_sum = d_kvs[..., :-1], d_kvs[..., -1]
            pk, vm_c = _masked_keys_values(phi_k, v, mask, cd, center)
            if ctx.needs_input_grad[1]:
                d_phi_k = torch.matmul(vm_c, d_kv.transpose(-1, -2)).add_(d_k_sum.unsqueeze(-2))
                if mask is not None:
                    d_phi_k.masked_fill_(~mask[:, None, :, None], 0)
            if ctx.needs_input_grad[2]:
                d_v = torch.matmul(pk, d_kv).to(v.dtype)               # 0 at padded keys (pk = 0)
        return d_phi_q, d_phi_k, d_v, None, (g_floor if ctx.has_floor else None)


def _value_center(v: torch.Tensor, mask: torch.Tensor | None, acc: torch.dtype) -> torch.Tensor:
    """The mean of the real keys' values, ``(B, H, 1, D)`` in ``acc`` (0 where none is real).

    Why the backward centres: the gradient w.r.t. ``phi_q_i`` is
    ``sum_j phi_k_j (v_j - out_i) . g_i / den_i``, i.e. ``(phi_k^T v)^T g_i - (phi_k^T 1) (out_i . g_i)``,
    two terms that nearly cancel when the values share an offset (as values from a biased linear
    layer do) and attention is spread out; in bf16 their rounding then dominates (measured against
    the fp32 path with a value offset of 3 x their spread: gradient errors of 6-24%). With
    ``num = num_c + center den`` (``num_c`` the numerator of ``v - center``) the same gradient is
    ``(phi_k^T (v - center))^T g_i - (phi_k^T 1)(num_c_i . g_i) / den_i``, whose terms are on the
    scale of the centred values (errors under 1.1%). ``center`` is a constant for autograd: the
    function does not depend on it. The forward uses the values as given, so its only rounding is
    that of aggregate sums (rounding each ``v_j - center`` instead costs 4x in output accuracy when
    attention is spread out, measured)."""
    with torch.no_grad():
        if mask is None:
            return v.mean(dim=-2, keepdim=True, dtype=acc)
        keep = mask[:, None, :, None]
        total = v.masked_fill(~keep, 0).sum(dim=-2, keepdim=True, dtype=acc)
        return total / mask.sum(dim=-1).clamp(min=1).to(acc)[:, None, None, None]


def _masked_keys_values(phi_k, v, mask, cd, center=None):
    """``phi_k`` and ``v`` (minus ``center`` if given, in fp32) in ``cd``, with padded keys' rows
    zeroed (masked_fill: no inf/NaN from padded rows)."""
    v = v.to(cd) if center is None else (v.to(center.dtype) - center).to(cd)
    return mask_keys(phi_k, mask), mask_keys(v, mask)


def quadratic_kernel_attention(phi_q: torch.Tensor, phi_k: torch.Tensor, v: torch.Tensor,
                               mask: torch.Tensor | None, *, rel_floor: float = 0.0) -> torch.Tensor:
    """The O(N^2) definition ``(phi_q phi_k^T * mask) v / row_sums`` with :func:`kernel_attention`'s
    guard; for tests and debugging. fp32, or float64 for float64 inputs."""
    with fp32(v.device):
        work = working_dtype(v.dtype)
        phi_q, phi_k = phi_q.to(work), phi_k.to(work)
        a = torch.einsum("bhnf,bhmf->bhnm", phi_q, phi_k)
        k_norm = phi_k.norm(dim=-1)                               # (B, H, M)
        if mask is not None:
            a = a.masked_fill(~mask[:, None, None, :], 0.0)
            k_norm = k_norm.masked_fill(~mask[:, None, :], 0.0)
        floor = normalizer_floor(phi_q, k_norm.sum(dim=-1, keepdim=True), rel_floor) if rel_floor else None
        den = safe_denominator(a.sum(-1), floor).unsqueeze(-1)
        return (a @ v.to(work) / den).to(v.dtype)


def _segment_sums(a: torch.Tensor) -> torch.Tensor:
    """``a (..., C) -> (..., C, C)`` with ``out[i, j] = a_{j+1} + ... + a_i`` for ``j <= i``, -inf above.

    Summed directly over each segment (a masked cumulative sum) rather than as a difference of
    prefix sums ``A_i - A_j``, which loses precision when the prefix sums are large.
    """
    c = a.shape[-1]
    ones = torch.ones(c, c, dtype=torch.bool, device=a.device)
    x = a.unsqueeze(-1).expand(*a.shape, c)                       # x[..., i, j] = a_i
    x = x.masked_fill(~ones.tril(-1), 0.0)                         # keep j < i
    return x.cumsum(dim=-2).masked_fill(~ones.tril(), float("-inf"))


def running_shift(log_w: torch.Tensor) -> torch.Tensor:
    """The causal stabiliser of key log-weights ``log_w (B, H, N)``: ``M_t = max_{j <= t} log_w_j``
    (detached; a padded key has ``log_w = -inf``), ``-inf`` until the first real key.

    A factor ``exp(-M_t)`` multiplies every term query ``t`` sums (numerator, normalizer and the
    floor's mass alike) and cancels; with it every key weight ``exp(log_w_j - M_t)`` is <= 1 (no
    overflow) and the largest is 1 (no underflow of the row), and it uses no key after ``t``.
    O(N) time and memory."""
    return log_w.detach().cummax(dim=-1).values


def _finite_or_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def _chunked_sums(phi_q: torch.Tensor, phi_k: torch.Tensor, v1: torch.Tensor, chunk: int,
                  log_w: torch.Tensor | None = None, log_g: torch.Tensor | None = None,
                  shift: bool = False) -> torch.Tensor:
    """Causal unnormalized sums ``s_t = sum_{j <= t} w_tj (phi_q_t . phi_k_j) v1_j``, chunked:
    ``phi_q, phi_k (B, H, N, F)``, ``v1 (B, H, N, E)`` -> ``(B, H, N, E)``.

    Weights ``w_tj = exp(log_w_j - M_t + sum_{j < s <= t} log_g_s)``: ``log_w (B, H, N)`` are key
    log-weights (None: 0; -inf at a padded key), ``log_g (B, H, N)`` log decays <= 0 (None: 0), and
    ``M_t`` the causal running maximum of ``log_w`` (:func:`running_shift`) when ``shift``, else 0.
    With neither, ``w_tj = 1``: plain causal linear attention.

    Chunked form (fla's "chunk" algorithm, in torch), chunk size ``C``, ``N`` padded to a multiple
    of ``C`` with zero features (weight 0): inside a chunk the ``(C, C)`` lower-triangular matrix
    ``(phi_q phi_k^T) * w`` multiplies ``v1``; between chunks a state ``sum_j w phi_k_j v1_j^T``
    ``(B, H, F, E)`` is carried: unweighted, an exclusive ``cumsum`` of the chunks' ``phi_k^T v1``;
    weighted, a loop over the ``N / C`` chunks that decays and rescales the state (one fused
    multiply-add each). Every exponent is <= 0: weights are exponentials of non-positive
    log-space sums (products of gates never divided, the shift never exceeded), so nothing
    overflows and no ``0/0`` arises. Nothing at ``j > t`` reaches ``s_t``: the masked entries are
    filled (not multiplied), so their gradient is exactly 0.

    Time O(N C (F + E) + N F E); memory O(N (C + F + E) + (N / C) F E) per head (the chunk states;
    never O(N F E)).
    """
    b, h, n, f = phi_q.shape
    e = v1.shape[-1]
    pad = (-n) % chunk
    if pad:
        phi_q, phi_k, v1 = (F.pad(t, (0, 0, 0, pad)) for t in (phi_q, phi_k, v1))
        if log_g is not None:
            log_g = F.pad(log_g, (0, pad))
        if log_w is not None:
            log_w = F.pad(log_w, (0, pad), value=float("-inf"))
    nc = (n + pad) // chunk
    qc, kc, vc = (t.reshape(b, h, nc, chunk, t.shape[-1]) for t in (phi_q, phi_k, v1))
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=phi_q.device).tril()
    scores = torch.matmul(qc, kc.transpose(-1, -2))                          # (B, H, nc, C, C)

    if log_w is None and log_g is None:
        out = torch.matmul(scores.masked_fill(~causal, 0.0), vc)              # within-chunk part
        kv = torch.matmul(kc.transpose(-1, -2), vc)                          # (B, H, nc, F, E)
        entering = F.pad(kv[:, :, :-1], (0, 0, 0, 0, 1, 0)).cumsum(dim=2)     # exclusive prefix sums
        out = out + torch.matmul(qc, entering)
        return out.reshape(b, h, nc * chunk, e)[:, :, :n]

    zeros = phi_q.new_zeros(b, h, nc, chunk)
    lw = zeros if log_w is None else log_w.reshape(b, h, nc, chunk)
    lg = zeros if log_g is None else log_g.reshape(b, h, nc, chunk)
    if shift and log_w is not None:
        m_raw = running_shift(log_w).reshape(b, h, nc, chunk)                 # -inf before any real key
    else:
        m_raw = zeros
    m = _finite_or_zero(m_raw)                                                # M_t, 0 where no key yet
    m_end = m[..., -1]                                                        # (B, H, nc)
    m_prev = F.pad(m_raw[..., -1], (1, 0), value=float("-inf"))[..., :-1]     # M at the previous chunk's end
    seg = _segment_sums(lg) if log_g is not None else \
        zeros.unsqueeze(-1).expand(b, h, nc, chunk, chunk).masked_fill(~causal, float("-inf"))
    weights = torch.exp(seg + lw.unsqueeze(-2) - m.unsqueeze(-1))            # [i, j]: key j -> query i
    out = torch.matmul(scores * weights, vc)                                 # within-chunk part

    to_end = torch.exp(seg[..., -1, :] + lw - m_end.unsqueeze(-1))           # (B, H, nc, C)
    update = torch.matmul((kc * to_end.unsqueeze(-1)).transpose(-1, -2), vc)   # (B, H, nc, F, E)
    decay = torch.exp(lg.sum(dim=-1) + m_prev - m_end)      # state: end of c-1 -> end of c (0 before any key)
    state = v1.new_zeros(b, h, f, e)
    entering = []
    for c in range(nc):
        entering.append(state)
        if c + 1 < nc:
            state = torch.addcmul(update[:, :, c], state, decay[:, :, c, None, None])
    entering = torch.stack(entering, dim=2)                                  # (B, H, nc, F, E)
    from_start = torch.exp(lg.cumsum(dim=-1) + m_prev.unsqueeze(-1) - m)     # decay since the chunk's start
    out = out + torch.matmul(qc * from_start.unsqueeze(-1), entering)
    return out.reshape(b, h, nc * chunk, e)[:, :, :n]


def ones_column(v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``[v | 1]`` ``(B, H, M, D + 1)``, contiguous, with padded keys' rows zeroed
    (:func:`augment_ones`, then :func:`zero_padded_rows_`: no inf/NaN leaks); differentiable in ``v``
    (padded rows get zero gradient)."""
    return zero_padded_rows_(augment_ones(v), mask)


def causal_kernel_attention(phi_q: torch.Tensor, phi_k: torch.Tensor, v: torch.Tensor,
                            mask: torch.Tensor | None, *, rel_floor: float = 0.0, chunk: int = 64,
                            log_w: torch.Tensor | None = None, k_norm=None, q_norm=None) -> torch.Tensor:
    """Causal normalized kernel attention, chunked (the fast path of every causal kernel variant):

        out_t = sum_{j <= t} w_tj (phi_q_t . phi_k_j) v_j / guard(sum_{j <= t} w_tj phi_q_t . phi_k_j)

    with ``w_tj = exp(log_w_j - M_t)`` (key log-weights ``log_w (B, H, N)``, e.g. a stabilised
    key's own shift; ``M_t`` their causal running maximum, :func:`running_shift`) or ``w_tj = 1``
    (``log_w=None``). ``phi_q, phi_k (B, H, N, F)`` (finite also at padded keys), ``v (B, H, N, D)``,
    ``mask (B, N)`` (True = real) or None; returns ``(B, H, N, D)`` in the working dtype of
    ``v`` (at least fp32). Numerator and normalizer come from one set of sums over ``[v | 1]``.

    Padding: a padded key's ``[v | 1]`` row is zeroed (and its weight is 0), so it changes no
    query; a query with no real key at or before it has normalizer 0 and outputs 0
    (:func:`safe_denominator`). Guard: :func:`kernel_attention`'s; with ``rel_floor > 0`` the floor
    ``rel_floor |phi_q_t| sum_{j <= t} w_tj |phi_k_j|`` uses past keys only (norms ``q_norm (B, H,
    N)`` and ``k_norm (B, H, N)``, tensors or numbers, computed when None). ``chunk`` changes only
    the speed. Time O(N C (F + D) + N F D), memory O(N (C + F + D) + (N / C) F D) per head
    (:func:`_chunked_sums`).
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    d = v.shape[-1]
    work = working_dtype(phi_q.dtype, phi_k.dtype, v.dtype)
    with fp32(v.device):
        phi_q, phi_k, v = phi_q.to(work), phi_k.to(work), v.to(work)
        v1 = ones_column(v, mask)
        if log_w is not None:
            log_w = log_w.to(work)
            if mask is not None:
                log_w = log_w.masked_fill(~mask[:, None, :], float("-inf"))
        sums = _chunked_sums(phi_q, phi_k, v1, chunk, log_w=log_w, shift=log_w is not None)
        floor = None
        if rel_floor:
            q_norm = phi_q.norm(dim=-1) if q_norm is None else q_norm
            k_norm = phi_k.norm(dim=-1) if k_norm is None else k_norm
            k_norm = torch.as_tensor(k_norm, dtype=work, device=v.device).expand(phi_k.shape[:-1])
            if mask is not None:
                k_norm = k_norm.masked_fill(~mask[:, None, :], 0.0)
            if log_w is None:
                mass = k_norm.cumsum(dim=-1)
            else:
                ones = torch.ones_like(phi_q[..., :1])
                mass = _chunked_sums(ones, k_norm.unsqueeze(-1), ones, chunk, log_w=log_w, shift=True)[..., 0]
            floor = rel_floor * q_norm * mass
        return sums[..., :d] / safe_denominator(sums[..., d], floor).unsqueeze(-1)


def causal_kernel_attention_reference(phi_q: torch.Tensor, phi_k: torch.Tensor, v: torch.Tensor,
                                      mask: torch.Tensor | None, *, rel_floor: float = 0.0,
                                      log_w: torch.Tensor | None = None) -> torch.Tensor:
    """The cumulative-sum definition of :func:`causal_kernel_attention` (its reference path):

        S_t = sum_{j <= t} w_tj phi_k_j [v_j | 1]^T,   out_t = phi_q_t^T S_t[:, :D] / guard(phi_q_t . S_t[:, D])

    ``log_w=None``: ``S = cumsum(phi_k [v | 1]^T)`` over positions, ``(B, H, N, F, D + 1)`` held in
    memory: O(N F D) time and memory per head. With key log-weights ``log_w``, the shift ``M_t``
    changes with ``t``, so the prefix sum is the recurrence ``S_t = exp(M_{t-1} - M_t) S_{t-1} +
    exp(log_w_t - M_t) phi_k_t [v_t | 1]^T`` (a loop over the N positions; O(F D) state).
    Computes in the working dtype (float64 stays float64); padded keys as in the fast path.
    """
    d = v.shape[-1]
    work = working_dtype(phi_q.dtype, phi_k.dtype, v.dtype)
    with fp32(v.device):
        phi_q, phi_k, v = phi_q.to(work), phi_k.to(work), v.to(work)
        phi_k = mask_keys(phi_k, mask)
        v1 = ones_column(v, mask)
        k_norm = phi_k.norm(dim=-1)
        if log_w is None:
            s = torch.cumsum(phi_k.unsqueeze(-1) * v1.unsqueeze(-2), dim=2)        # (B, H, N, F, D + 1)
            sums = torch.einsum("bhnf,bhnfe->bhne", phi_q, s)
            mass = k_norm.cumsum(dim=-1)
        else:
            log_w = log_w.to(work)
            if mask is not None:
                log_w = log_w.masked_fill(~mask[:, None, :], float("-inf"))
            state = kernel_decode_init(phi_q.shape[0], phi_q.shape[1], phi_q.shape[-1], d, v.device, work,
                                       shift=True)
            outs, masses = [], []
            for t in range(phi_q.shape[2]):
                state = _decode_update(state, phi_k[:, :, t], v1[:, :, t], log_w[:, :, t], None, k_norm[:, :, t])
                outs.append(torch.einsum("bhf,bhfe->bhe", phi_q[:, :, t], state.s))
                masses.append(state.mass)
            sums, mass = torch.stack(outs, dim=2), torch.stack(masses, dim=2)
        floor = rel_floor * phi_q.norm(dim=-1) * mass if rel_floor else None
        return sums[..., :d] / safe_denominator(sums[..., d], floor).unsqueeze(-1)


class KernelState:
    """The decoding state of a kernel variant, per sequence and head: ``s (B, H, F, D + 1)`` =
    ``sum_j w_j phi_k_j [v_j | 1]^T`` (numerator state and normalizer), and where used the running
    shift ``m (B, H)`` (:func:`running_shift`; -inf before any key) and the floor's mass
    ``mass (B, H)`` = ``sum_j w_j |phi_k_j|``. Constant size in the length."""

    def __init__(self, s: torch.Tensor, m: torch.Tensor | None, mass: torch.Tensor):
        self.s, self.m, self.mass = s, m, mass


def kernel_decode_init(batch: int, heads: int, features: int, head_dim: int, device, dtype,
                       shift: bool = False) -> KernelState:
    """The empty :class:`KernelState` (no token yet) in the working dtype of ``dtype``."""
    work = working_dtype(dtype)
    s = torch.zeros(batch, heads, features, head_dim + 1, device=device, dtype=work)
    m = torch.full((batch, heads), float("-inf"), device=device, dtype=work) if shift else None
    return KernelState(s, m, torch.zeros(batch, heads, device=device, dtype=work))


def _decode_update(state: KernelState, phi_k: torch.Tensor, v1: torch.Tensor, log_w: torch.Tensor | None,
                   log_g: torch.Tensor | None, k_norm) -> KernelState:
    """Add one key: ``phi_k (B, H, F)``, ``v1 (B, H, D + 1)`` (``[v | 1]``), ``log_w, log_g (B, H)``
    or None: ``S <- g exp(M_old - M) S + exp(log_w - M) phi_k v1^T`` (``M`` the running shift when
    the state has one). O(F D) per head."""
    s, m, mass = state.s, state.m, state.mass
    decay = None if log_g is None else torch.exp(log_g)
    weight = None
    if log_w is not None:
        if m is not None:
            m_new = torch.maximum(m, log_w)
            m_eff = _finite_or_zero(m_new)
            rescale = torch.exp(m - m_eff)                      # exp(-inf) = 0 before any key
            decay = rescale if decay is None else decay * rescale
            weight = torch.exp(log_w - m_eff)
            m = m_new
        else:
            weight = torch.exp(log_w)
    term = phi_k.unsqueeze(-1) * v1.unsqueeze(-2)
    kn = torch.as_tensor(k_norm, dtype=s.dtype, device=s.device)
    if weight is not None:
        term = term * weight[..., None, None]
        kn = kn * weight
    if decay is not None:
        s = s * decay[..., None, None]
        mass = mass * decay
    return KernelState(s + term, m, mass + kn)


def kernel_decode_step(state: KernelState, phi_q: torch.Tensor, phi_k: torch.Tensor, v: torch.Tensor,
                       *, log_w: torch.Tensor | None = None, log_g: torch.Tensor | None = None,
                       rel_floor: float = 0.0, q_norm=None, k_norm=None):
    """One generated token of causal kernel attention: the new position's ``phi_q, phi_k (B, H, 1, F)``,
    ``v (B, H, 1, D)``, its key log-weight ``log_w`` and log decay ``log_g (B, H, 1)`` or None ->
    ``(out (B, H, 1, D), new state)``, equal to :func:`causal_kernel_attention` at that position
    (same guard; the floor's mass is carried in the state). O(F D) time per head, O(F D) memory."""
    d = v.shape[-1]
    work = state.s.dtype
    phi_q, phi_k, v = phi_q[:, :, 0].to(work), phi_k[:, :, 0].to(work), v[:, :, 0].to(work)
    v1 = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)
    kn = phi_k.norm(dim=-1) if k_norm is None else _row(k_norm, work)
    state = _decode_update(state, phi_k, v1, None if log_w is None else log_w[:, :, 0].to(work),
                           None if log_g is None else log_g[:, :, 0].to(work), kn)
    sums = torch.einsum("bhf,bhfe->bhe", phi_q, state.s)
    floor = None
    if rel_floor:
        qn = phi_q.norm(dim=-1) if q_norm is None else _row(q_norm, work)
        floor = rel_floor * qn * state.mass
    out = sums[..., :d] / safe_denominator(sums[..., d], floor).unsqueeze(-1)
    return out.unsqueeze(2), state


def _row(x, dtype):
    """A per-row norm given as a number or a ``(B, H, 1)`` tensor, for one decoding position."""
    return x[:, :, 0].to(dtype) if torch.is_tensor(x) and x.dim() > 0 else float(x)


def kernel_state_bytes(heads: int, features: int, head_dim: int, element_bytes: int, *, shift: bool = False,
                       floor: bool = False) -> int:
    """Bytes of a kernel variant's decoding state per sequence (all heads): per head the
    ``features x head_dim`` state ``sum phi(k) v^T`` and the ``features`` normalizer ``sum phi(k)``,
    plus one number for a running shift and one for the floor's mass where used. Independent of
    the length."""
    return heads * (features * (head_dim + 1) + int(shift) + int(floor)) * element_bytes


def gated_kernel_attention(phi_q: torch.Tensor, phi_k: torch.Tensor, v: torch.Tensor,
                           gate_logit: torch.Tensor, mask: torch.Tensor | None, *, rel_floor: float = 0.0,
                           chunk: int = 64, key_log_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Causal gated kernel attention (gated RFA, Peng et al. 2021) in O(N), chunked and batched.

    With ``g_t = sigmoid(gate_logit_t)`` and ``c_t = exp(key_log_scale_t)`` (1 when None)::

        S_t = g_t S_{t-1} + (1 - g_t) c_t phi_k_t v_t^T,   z_t = g_t z_{t-1} + (1 - g_t) c_t phi_k_t
        out_t = phi_q_t^T S_t / (phi_q_t . z_t)             (S_0 = 0, z_0 = 0)

    so query t sees keys ``j <= t`` only, with weight ``w_tj = (1 - g_j) c_j prod_{j < s <= t} g_s``.
    Shapes: ``phi_q, phi_k (B, H, N, F)``, ``v (B, H, N, D)``, ``gate_logit (B, H, N)``,
    ``key_log_scale (B, H, N)`` or None, ``mask (B, N)`` bool (True = real) or None; returns
    ``(B, H, N, D)`` in ``v``'s dtype. A padded key has ``g = 1`` and weight 0: it changes nothing.

    The guard is :func:`kernel_attention`'s (:func:`safe_denominator`): exact ratio, 0 where the
    normalizer is exactly 0, and with ``rel_floor > 0`` ``|phi_q_t . z_t|`` raised to
    ``rel_floor |phi_q_t| sum_j w_tj |phi_k_j|`` (sign kept); that mass is one more run of the
    chunked recurrence with a single feature ``|phi_k_j|``, O(N C) extra.
    Chunked form: see :func:`_chunked_sums` (log decays ``log g``, key log-weights ``log (1 - g) +
    key_log_scale``; with ``key_log_scale`` the weights are shifted by their causal running maximum
    ``M_t``, :func:`running_shift`: no key after ``t`` enters query ``t``, not even through the
    stabiliser). Time O(N C F + N F D), memory O(N (C + F + D) + (N / C) F D) per head. fp32 with
    autocast disabled (float64 stays float64).
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    out_dtype = v.dtype
    d = v.shape[-1]
    with fp32(v.device):
        work = working_dtype(v.dtype)
        phi_q, phi_k, v, logit = (t.to(work) for t in (phi_q, phi_k, v, gate_logit))
        phi_k = mask_keys(phi_k, mask)
        v1 = mask_keys(torch.cat([v, torch.ones_like(v[..., :1])], dim=-1), mask)   # [v | 1]
        log_g = F.logsigmoid(logit)                                           # log g_t <= 0
        log_w = F.logsigmoid(-logit)                                          # log (1 - g_t)
        if key_log_scale is not None:
            log_w = log_w + key_log_scale.to(work)
        if mask is not None:
            real = mask[:, None, :]                                           # (B, 1, N)
            log_g = log_g.masked_fill(~real, 0.0)                             # padded: g = 1
            log_w = log_w.masked_fill(~real, float("-inf"))                   # padded: weight 0
        shift = key_log_scale is not None
        sums = _chunked_sums(phi_q, phi_k, v1, chunk, log_w, log_g, shift)   # [numerator | normalizer]
        floor = None
        if rel_floor:
            ones = torch.ones_like(phi_q[..., :1])
            mass = _chunked_sums(ones, phi_k.norm(dim=-1, keepdim=True), ones, chunk, log_w, log_g, shift)
            floor = normalizer_floor(phi_q, mass[..., 0], rel_floor)
        out = sums[..., :d] / safe_denominator(sums[..., d], floor).unsqueeze(-1)
    return out.to(out_dtype)


def gated_kernel_attention_reference(phi_q: torch.Tensor, phi_k: torch.Tensor, v: torch.Tensor,
                                     gate_logit: torch.Tensor, mask: torch.Tensor | None, *,
                                     rel_floor: float = 0.0) -> torch.Tensor:
    """The literal sequential recurrence of :func:`gated_kernel_attention` (a loop over positions).

    Slow (N steps); for tests. Computes in the inputs' dtype (pass float64 for a reference).
    """
    g = torch.sigmoid(gate_logit)
    w = 1.0 - g
    if mask is not None:
        real = mask[:, None, :]
        g = torch.where(real, g, torch.ones_like(g))
        w = torch.where(real, w, torch.zeros_like(w))
        phi_k = mask_keys(phi_k, mask)
        v = mask_keys(v, mask)
    b, h, n, f = phi_q.shape
    s = phi_q.new_zeros(b, h, f, v.shape[-1])
    z = phi_q.new_zeros(b, h, f)
    mass = phi_q.new_zeros(b, h)                         # sum_j w_tj |phi_k_j|, for the floor
    outs = []
    for t in range(n):
        gt, wt = g[:, :, t, None], w[:, :, t, None]
        s = gt[..., None] * s + (wt * phi_k[:, :, t])[..., None] * v[:, :, t, None, :]
        z = gt * z + wt * phi_k[:, :, t]
        mass = g[:, :, t] * mass + w[:, :, t] * phi_k[:, :, t].norm(dim=-1)
        num = torch.einsum("bhf,bhfd->bhd", phi_q[:, :, t], s)
        den = torch.einsum("bhf,bhf->bh", phi_q[:, :, t], z)
        floor = normalizer_floor(phi_q[:, :, t], mass, rel_floor) if rel_floor else None
        outs.append(num / safe_denominator(den, floor).unsqueeze(-1))
    return torch.stack(outs, dim=2)


# ----------------------------------------------------------------------------- fused (fp32) fast paths

def kernel_backend(backend: str, x: torch.Tensor) -> str:
    """``reference`` or ``fast`` for a kernel variant's ``backend`` knob: ``auto`` is ``fast`` on every
    device and dtype, except where :func:`attention_variants._fast.reference_required` (``torch.func``
    transforms, :func:`attention_variants.reference_paths`). On CPU in fp32 the fast path computes the same function with fewer passes
    over the ``(N, F)`` features (measured faster than the reference path at every N >= 256 of
    the Text step, see each variant's notes); under bf16/fp16 it is the reduced-precision policy of
    :mod:`attention_variants._fast` where a variant has one."""
    check_backend("kernel attention", backend)
    if reference_required():
        # the fast paths' custom autograd functions have no forward-mode or vmap rules; under
        # torch.func transforms (the smoothness measures' jvp / vjp) the reference path runs:
        # the same function, with plain autograd
        return "reference"
    return "fast" if backend == "auto" else backend


class ShiftedExpFeatures(torch.autograd.Function):
    """``(x (..., N, d), w (..., d, F)) -> (exp(x w - r), r)`` with ``r = max_f (x w)`` per row
    ``(..., N)``: exponential features of a projection, each row shifted by its own maximum (every
    entry in (0, 1], the largest exactly 1). ``r`` is returned as a constant (no gradient): a
    per-row factor ``exp(r)`` cancels in a query's row, and for a key the caller carries it as the
    key's log-weight (see :func:`fused_kernel_attention`), so the gradient of the true feature
    ``exp(x w)`` is exact. ``w`` broadcasts over the leading dimensions (e.g. ``(d, F)`` or
    ``(H, d, F)`` for ``x (B, H, N, d)``).

    The projection is computed here and shifted and exponentiated in place (no ``(N, F)``
    temporaries); only the features are saved. Backward: ``d proj = g * phi`` (one pass, in the
    incoming gradient's buffer: internal use only, the features must not be an autograd root), then
    ``d x = d proj w^T`` and, if ``w`` needs it, ``d w = x^T d proj`` summed over broadcast
    dimensions. Time O(N d F), memory O(N F)."""

    @staticmethod
    def forward(ctx, x, w):
        proj = torch.matmul(x, w)
        r = proj.amax(dim=-1, keepdim=True)
        phi = proj.sub_(r).exp_()
        ctx.save_for_backward(x, w, phi)
        ctx.mark_non_differentiable(r)
        return phi, r.squeeze(-1)

    @staticmethod
    def backward(ctx, g_phi, _g_r):
        x, w, phi = ctx.saved_tensors
        # the features are an intermediate of a variant's forward (never an autograd root), so their
        # incoming gradient is a fresh buffer of the consuming matmul's backward: reuse it in place
        d_proj = g_phi.mul_(phi) if g_phi.is_contiguous() and g_phi.shape == phi.shape else g_phi * phi
        d_x = torch.matmul(d_proj, w.transpose(-1, -2)) if ctx.needs_input_grad[0] else None
        d_w = None
        if ctx.needs_input_grad[1]:
            d_w = torch.matmul(x.transpose(-1, -2), d_proj)
            lead = d_w.dim() - w.dim()
            if lead:
                d_w = d_w.sum(dim=tuple(range(lead)))
            for i, size in enumerate(w.shape[:-2]):
                if size == 1 and d_w.shape[i] != 1:
                    d_w = d_w.sum(dim=i, keepdim=True)
        return d_x, d_w


#: on CPU, the fast paths may run the batch in groups whose ``(N, F)`` feature tensors hold at most
#: this many bytes each (0: off, the default). Why it exists: tensors above glibc's largest mmap
#: threshold (32 MiB) are mapped and unmapped at every allocation and page-faulted on first touch
#: (at the Text step's size one 134 MB RFA feature tensor took longer to allocate-and-write in a
#: matmul than an in-place ``sin`` over it); groups of <= 8 MiB come from the heap and stay in cache.
#: Why it is off: measured on the shared 2-core machine, attention forward+backward at batch 32,
#: N = 512, with 8 MiB groups: 1 thread -23% (RFA) / -26% (Performer) CPU time, but 2 threads
#: (what the CPU step runs) +240% / +170%: each group multiplies the ops, hence the OpenMP
#: barriers, and on an oversubscribed machine a barrier waits for a descheduled thread.
CPU_GROUP_BYTES = 0


def in_batch_groups(fn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                    features: int) -> torch.Tensor:
    """``fn(q, k, v, mask)`` (a fast path's attention, ``(B, H, N, D)`` in and out), over groups of the
    batch on CPU when :data:`CPU_GROUP_BYTES` > 0 (off by default, see there), concatenated: each
    group's ``(H, N, features)`` feature tensors fit :data:`CPU_GROUP_BYTES`. The same function (rows of a batch never interact); on other devices,
    or when the whole batch fits, one call. O(1) extra memory; ``B / group`` calls."""
    b = q.shape[0]
    item = torch.empty((), dtype=working_dtype(q.dtype)).element_size()
    per_row = q.shape[1] * max(q.shape[-2], k.shape[-2]) * features * item
    if CPU_GROUP_BYTES <= 0 or q.device.type != "cpu" or b == 1 or per_row * b <= CPU_GROUP_BYTES:
        return fn(q, k, v, mask)
    g = max(1, CPU_GROUP_BYTES // per_row)
    return torch.cat([fn(q[i:i + g], k[i:i + g], v[i:i + g], None if mask is None else mask[i:i + g])
                      for i in range(0, b, g)])


def augment_ones(x: torch.Tensor) -> torch.Tensor:
    """``[x | 1]``: ``(..., d) -> (..., d + 1)``, so that a bias or a constant feature folds into one matmul."""
    return torch.cat([x, torch.ones_like(x[..., :1])], dim=-1)


def fused_kernel_attention(phi_q: torch.Tensor, phi_k: torch.Tensor, v: torch.Tensor,
                           mask: torch.Tensor | None, *, causal: bool = False, chunk: int = 64,
                           log_w: torch.Tensor | None = None, rel_floor: float = 0.0,
                           q_norm=None, k_norm=None) -> torch.Tensor:
    """The fast path's kernel attention in the working dtype (at least fp32; float64 stays float64):

        out_i = sum_j w_ij (phi_q_i . phi_k_j) v_j / guard(sum_j w_ij phi_q_i . phi_k_j)

    over the real keys ``j`` (``j <= i`` when ``causal``), with key weights ``w_ij = exp(log_w_j -
    c_i)`` (``log_w (B, H, M)``, None: ``w = 1``): a feature map's per-key factor kept in log space
    on the small side, ``c`` a shift that cancels: the maximum over the real keys (non-causal) or
    the causal running maximum (:func:`running_shift`). ``phi_q (B, H, N, F)``, ``phi_k (B, H, M,
    F)`` (must be finite at padded keys: the fast paths compute them from zeroed key rows),
    ``v (B, H, M, D)``, ``mask (B, M)`` or None; returns ``(B, H, N, D)`` in the working dtype.

    Non-causal: ``[num | den] = phi_q (phi_k^T (w [v | 1]))``, two matmuls, the normalizer
    appended to the values as a ones column (no pass over ``(N, F)`` for it); padded keys have a
    zero ``w [v | 1]`` row, so they change nothing and get zero gradient. Causal:
    :func:`causal_kernel_attention` (chunked, ``chunk`` tokens). Guard: :func:`safe_denominator`,
    with ``rel_floor > 0`` the floor ``rel_floor |phi_q_i| sum_j w_ij |phi_k_j|`` from the norms
    ``q_norm (B, H, N)``, ``k_norm (B, H, M)`` (tensors or numbers, e.g. a feature map's analytic
    norm; computed when None). Time O((N + M) F D), memory O((N + M)(F + D) + F D) per head
    (non-causal); autograd saves only the features, ``[v | 1]`` and ``(F, D)`` statistics.
    """
    if causal:
        return causal_kernel_attention(phi_q, phi_k, v, mask, rel_floor=rel_floor, chunk=chunk,
                                       log_w=log_w, q_norm=q_norm, k_norm=k_norm)
    d = v.shape[-1]
    work = working_dtype(phi_q.dtype, phi_k.dtype, v.dtype)
    with fp32(v.device):
        phi_q, phi_k, v = phi_q.to(work), phi_k.to(work), v.to(work)
        v1 = ones_column(v, mask)                                             # (B, H, M, D + 1)
        w = None
        if log_w is not None:
            log_w = log_w.to(work)
            if mask is not None:
                log_w = log_w.masked_fill(~mask[:, None, :], float("-inf"))
            c = _finite_or_zero(log_w.detach().amax(dim=-1, keepdim=True))
            w = torch.exp(log_w - c)                                           # (B, H, M), <= 1, 0 if padded
            v1 = v1 * w.unsqueeze(-1)
        # (phi_k^T v1)^T = v1^T phi_k, so that the features' gradients come out contiguous
        kv_t = torch.matmul(v1.transpose(-1, -2), phi_k)                       # (B, H, D + 1, F)
        sums = torch.matmul(phi_q, kv_t.transpose(-1, -2))                     # (B, H, N, D + 1)
        floor = None
        if rel_floor:
            q_norm = phi_q.norm(dim=-1) if q_norm is None else q_norm
            if k_norm is None:
                k_norm = phi_k.norm(dim=-1)
            k_norm = torch.as_tensor(k_norm, dtype=work, device=v.device).expand(phi_k.shape[:-1])
            if w is not None:
                k_norm = k_norm * w
            if mask is not None:
                k_norm = k_norm.masked_fill(~mask[:, None, :], 0.0)
            floor = rel_floor * q_norm * k_norm.sum(dim=-1, keepdim=True)
        return sums[..., :d] / safe_denominator(sums[..., d], floor).unsqueeze(-1)
