"""Shared machinery of the kernel (feature-map) attention variants: performer, random_feature, linear.

Not a variant (the leading underscore keeps the package's auto-importer from registering it).

Kernel attention replaces ``softmax(Q K^T) V`` by ``phi(Q) (phi(K)^T V) / (phi(Q) (phi(K)^T 1))``
for a feature map ``phi: R^d -> R^m``. Computing ``phi(K)^T V`` first makes it O(N m d) in time
and O((N + m) d) in memory per head: linear in the sequence length N.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F

from ._fast import CudaCompiled, check_backend, matmul_fp32, no_autocast, resolve_backend
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
    Chunked form: see :func:`_gated_sums`. Time O(N C F + N F D), memory
    O(N (C + F + D) + (N / C) F D) per head. fp32 with autocast disabled (float64 stays float64).
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
        sums = _gated_sums(phi_q, phi_k, v1, log_g, log_w, chunk, shift)     # [numerator | normalizer]
        floor = None
        if rel_floor:
            ones = torch.ones_like(phi_q[..., :1])
            mass = _gated_sums(ones, phi_k.norm(dim=-1, keepdim=True), ones, log_g, log_w, chunk, shift)
            floor = normalizer_floor(phi_q, mass[..., 0], rel_floor)
        out = sums[..., :d] / safe_denominator(sums[..., d], floor).unsqueeze(-1)
    return out.to(out_dtype)


def _gated_sums(phi_q: torch.Tensor, phi_k: torch.Tensor, v1: torch.Tensor, log_g: torch.Tensor,
                log_w: torch.Tensor, chunk: int, shift: bool) -> torch.Tensor:
    """Unnormalized gated sums ``sum_{j <= t} w_tj (phi_q_t . phi_k_j) v1_j``, chunked: ``(B, H, N, E)``.

    ``phi_q, phi_k (B, H, N, F)``, ``v1 (B, H, N, E)``, ``log_g`` (log gates) and ``log_w`` (log key
    weights) ``(B, H, N)``, with ``w_tj = exp(log_w_j + sum_{j < s <= t} log_g_s)``.

    Chunked parallel form, chunk size ``C``: inside a chunk the weights form a lower-triangular
    ``(C, C)`` matrix ``exp(log g segment sums + log weight)``; across chunks the state
    ``sum_j w phi_k_j v1_j^T: (B, H, F, E)`` is carried (a loop over the ``N / C`` chunks, one fused
    multiply-add each). Decays and weights are exponentials of non-positive log-space sums
    (products of gates are never divided): no overflow, no 0/0. With ``shift``, ``log_w`` is
    shifted by its running maximum up to the end of each chunk (the carried state is rescaled when
    the maximum grows): key weights cannot overflow, and every sum of chunk c is multiplied by the
    same ``exp(-m_c)``, which cancels in any ratio of two such sums (normalizer, floor).
    """
    b, h, n, f = phi_q.shape
    e = v1.shape[-1]
    pad = (-n) % chunk            # pad to a multiple of the chunk: g = 1, weight 0, zero features
    if pad:
        phi_q, phi_k, v1 = (F.pad(t, (0, 0, 0, pad)) for t in (phi_q, phi_k, v1))
        log_g = F.pad(log_g, (0, pad))
        log_w = F.pad(log_w, (0, pad), value=float("-inf"))
    nc = (n + pad) // chunk
    phi_q, phi_k, v1 = (t.reshape(b, h, nc, chunk, t.shape[-1]) for t in (phi_q, phi_k, v1))
    log_g, log_w = log_g.reshape(b, h, nc, chunk), log_w.reshape(b, h, nc, chunk)

    ratio = None                                                          # exp(m_c - m_{c+1})
    if shift:   # per-chunk shift m_c: running max of the key log-weights (a shared factor cancels)
        top = log_w.detach().amax(dim=-1).cummax(dim=-1).values          # (B, H, nc)
        seen = torch.isfinite(top)
        m = torch.where(seen, top, torch.zeros_like(top))
        log_w = log_w - m.unsqueeze(-1)
        nxt = torch.cat([m[..., 1:], m[..., -1:]], dim=-1)
        ratio = torch.where(seen, torch.exp(m - nxt), torch.ones_like(m))

    seg = _segment_sums(log_g)                                            # (B, H, nc, C, C)
    weights = torch.exp(seg + log_w.unsqueeze(-2))                        # [i, j]: key j -> query i
    scores = torch.einsum("bhcif,bhcjf->bhcij", phi_q, phi_k) * weights
    out = torch.einsum("bhcij,bhcjd->bhcid", scores, v1)                  # within-chunk part

    # state contributions of each chunk at its end, and the state entering each chunk
    to_end = torch.exp(seg[..., -1, :] + log_w)                           # (B, H, nc, C)
    update = torch.einsum("bhcjf,bhcjd->bhcfd", phi_k * to_end.unsqueeze(-1), v1)  # (B, H, nc, F, E)
    decay = torch.exp(log_g.sum(dim=-1))                                  # prod of the chunk's g
    if ratio is not None:
        update = update * ratio[..., None, None]
        decay = decay * ratio
    state = v1.new_zeros(b, h, f, e)
    entering = []
    for c in range(nc):
        entering.append(state)
        if c + 1 < nc:
            state = torch.addcmul(update[:, :, c], state, decay[:, :, c, None, None])
    entering = torch.stack(entering, dim=2)                               # (B, H, nc, F, E)
    from_start = torch.exp(log_g.cumsum(dim=-1))                          # decay since chunk start
    out = out + torch.einsum("bhcif,bhcfd->bhcid", phi_q * from_start.unsqueeze(-1), entering)
    return out.reshape(b, h, nc * chunk, e)[:, :, :n]


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
