"""The ``fast`` backends of the approximate variants (issue 14) against their ``reference`` paths.

``fast`` (attention_variants/_fast.py) is the reduced-precision policy: matmuls along the length in
the compute dtype with fp32 accumulation, stabilizers / normalizers / log-sum-exps in fp32, and only
compute-dtype tensors saved for backward along the length. It must be the *same function*:

* fp32, no autocast: equal to the reference path to fp32 rounding (relative error < 1e-5), values
  and gradients, with padding and lengths that are not a multiple of the blocks;
* bf16 (bf16 inputs under autocast, as the encoder runs): within bf16 tolerance of the fp32
  reference path, ``BF16_RTOL`` (torch.testing's bf16 rtol, 4 bf16 ulps) for outputs and twice that
  for gradients (a backward passes through twice the roundings), also with values that share an
  offset (what biased projections give, and where a careless backward cancels in bf16);
* the kernel variants' fast paths against their float64 estimators (tests/variants/test_kernel_scale.py's
  definition) at score std 1, 2, 4: fp32 < 1e-5, bf16 < 2 bf16 ulps.

Measured worst cases of these checks (3 seeds, score std 1 and 4, offsets 0 and 3): outputs 0.3-0.7%,
gradients 0.4-2.6% (Nystrom's, whose reference path is itself 2.1% off float64 there).
"""
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import attention_variants as av
from attention_variants import _fast
from attention_variants._kernel import kernel_attention, quadratic_kernel_attention
from test_kernel_scale import DIMS, SCORE_STDS, TOL, float64_estimator, scaled_inputs
from test_kernel_scale import CASES as SCALE_CASES
from conftest import rel

BF16_RTOL = 1.6e-2                  # torch.testing.assert_close's default rtol for bfloat16
BF16_ULP = 2.0 ** -8
CASES = {                           # name -> (variant, knobs), tiny CPU shapes
    "performer": ("performer", {"num_features": 64}),
    "performer_relu": ("performer", {"num_features": 64, "kernel": "relu"}),
    "linear": ("linear", {}),
    "linformer": ("linformer", {"k": 32}),
    "linformer_shared": ("linformer", {"k": 32, "share_kv": True}),
    "nystrom": ("nystrom", {"landmarks": 8, "conv_kernel": 5}),
    "reformer": ("reformer", {"bucket_size": 16, "n_hashes": 2}),
    "reformer_own_bucket": ("reformer", {"bucket_size": 16, "n_hashes": 3, "attend_across_buckets": False}),
}
VARIANTS = sorted({name for name, _ in CASES.values()})


def pair(case, seed=0, max_length=256, **extra):
    """The reference and fast modules of a case, with the same parameters, in train mode."""
    name, knobs = CASES[case]
    ref = av.build(name, heads=2, head_dim=16, max_length=max_length, seed=seed, backend="reference",
                   **knobs, **extra).train()
    fast = av.build(name, heads=2, head_dim=16, max_length=max_length, seed=seed, backend="fast",
                    **knobs, **extra).train()
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def inputs(n=100, offset=0.0, scale=1.0, seed=0):
    """bf16-representable q, k, v (2, 2, n, 16) (v shifted by ``offset``), a mask padding the end
    of sequence 1, and a gradient for the output that is 0 at padded queries."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 2, n, 16, generator=g) * scale for _ in range(3))
    v = v + offset
    mask = torch.ones(2, n, dtype=torch.bool)
    mask[1, 3 * n // 4:] = False
    grad = torch.randn(2, 2, n, 16, generator=g) * mask[:, None, :, None]
    q, k, v, grad = (t.to(torch.bfloat16).float() for t in (q, k, v, grad))
    return q, k, v, mask, grad


def run(attn, q, k, v, mask, grad, dtype=torch.float32, autocast=False):
    """Output and gradients w.r.t. q, k, v (None where unused, e.g. reformer's k)."""
    ins = [t.to(dtype).requires_grad_() for t in (q, k, v)]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = attn(*ins, key_padding_mask=mask)
    grads = torch.autograd.grad(out, ins, grad.to(out.dtype), allow_unused=True)
    return out, grads


def real_rows(out, mask):
    return out[mask[:, None, :, None].expand_as(out)]


@pytest.mark.parametrize("n", [128, 100])
@pytest.mark.parametrize("case", list(CASES))
def test_fast_equals_reference_in_fp32(case, n):
    ref, fast = pair(case)
    q, k, v, mask, grad = inputs(n)
    out_r, grads_r = run(ref, q, k, v, mask, grad)
    out_f, grads_f = run(fast, q, k, v, mask, grad)
    assert fast.last_backend == "fast" and ref.last_backend == "reference"
    assert rel(real_rows(out_f, mask), real_rows(out_r, mask)) < 1e-5
    for g_f, g_r in zip(grads_f, grads_r):
        assert (g_f is None) == (g_r is None)
        if g_r is not None:
            assert rel(g_f, g_r) < 1e-5


@pytest.mark.parametrize("offset", [0.0, 3.0])
@pytest.mark.parametrize("case", list(CASES))
def test_fast_agrees_with_reference_in_bf16(case, offset):
    """bf16 inputs under autocast: fast within bf16 tolerance of the fp32 reference path. With
    ``offset=3`` a backward that does not centre the values fails (kernel variants: 6-24% off;
    Nystrom: 24%), as does a bf16 Performer projection (outputs 1.6-2.2% off)."""
    for seed in range(2):
        ref, fast = pair(case, seed=seed)
        q, k, v, mask, grad = inputs(200, offset, scale=1.5, seed=seed)
        out_r, grads_r = run(ref, q, k, v, mask, grad, torch.bfloat16, autocast=True)
        out_f, grads_f = run(fast, q, k, v, mask, grad, torch.bfloat16, autocast=True)
        assert out_f.dtype == out_r.dtype == torch.bfloat16
        assert rel(real_rows(out_f, mask), real_rows(out_r, mask)) < BF16_RTOL
        for g_f, g_r in zip(grads_f, grads_r):
            if g_r is not None:
                assert torch.isfinite(g_f).all()
                assert rel(g_f, g_r) < 2 * BF16_RTOL


@pytest.mark.parametrize("d,m", DIMS)
@pytest.mark.parametrize("score_std", SCORE_STDS)
@pytest.mark.parametrize("case", ["performer", "performer_relu", "linear"])
def test_fast_kernel_variants_match_float64_estimator(case, score_std, d, m):
    """tests/variants/test_kernel_scale.py's check for the fast paths: fp32 to fp32 tolerance, bf16 (inputs
    rounded to bf16 first, so only the path's own rounding counts) within two bf16 ulps."""
    name, knobs = SCALE_CASES[case]
    knobs = {**knobs, **({"num_features": m} if name == "performer" else {})}
    attn = av.build(name, heads=2, head_dim=d, max_length=256, backend="fast", **knobs).eval()
    q, k, v, mask = scaled_inputs(score_std, d)
    for dtype, bound in ((torch.float32, TOL), (torch.bfloat16, 2 * BF16_ULP)):
        qd, kd, vd = (t.to(dtype) for t in (q, k, v))
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = attn(qd, kd, vd, key_padding_mask=mask)
        ref = float64_estimator(attn, qd.double(), kd.double(), vd.double(), mask)
        err = rel(out, ref)
        assert err < bound, f"{case} {dtype} at score std {score_std}, head_dim {d}: {err:.2e}"


def saved_along_length(attn, n=200, autocast=True):
    """(dtype, shape) of every floating tensor saved for backward by one forward under bf16 autocast
    whose size is at least half of one (B, H, N, D) tensor: the ones that grow with N times a width
    (N = 200 exceeds every case's feature / landmark / projection count, so an (F, D) statistic
    does not count)."""
    q, k, v, mask, _ = inputs(n)
    big = q.numel() // 2
    seen = []

    def pack(t):
        if t.is_floating_point() and t.numel() >= big:
            seen.append((t.dtype, tuple(t.shape)))
        return t

    ins = [t.to(torch.bfloat16).requires_grad_() for t in (q, k, v)]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        attn(*ins, key_padding_mask=mask)
    return seen


@pytest.mark.parametrize("case", list(CASES))
def test_tensors_saved_along_the_length_are_bf16(case):
    """Under bf16 autocast the fast path saves only bf16 tensors along N (per-row statistics --
    normalizers, log-sum-exps, ``(B, H, N)`` -- are fp32 by design and smaller than the threshold)."""
    _, fast = pair(case)
    seen = saved_along_length(fast)
    assert seen, "nothing saved along N: the check would be vacuous"
    assert all(dtype == torch.bfloat16 for dtype, _ in seen), seen


@pytest.mark.parametrize("case", ["performer", "linear", "linformer", "nystrom", "reformer"])
def test_saved_tensor_check_catches_the_fp32_reference_paths(case):
    """The check above can fail: the reference paths keep fp32 copies along N for backward."""
    ref, _ = pair(case)
    assert any(dtype == torch.float32 for dtype, _ in saved_along_length(ref))


@pytest.mark.parametrize("name", VARIANTS)
def test_fast_bf16_module_finite_at_4096(name):
    """A bf16 module and bf16 inputs without autocast (how scripts/peers.py runs both sides) at
    N = 4096 with padding and scores of std ~9: finite values and gradients on the fast path."""
    knobs = dict(CASES[name][1])
    attn = av.build(name, heads=2, head_dim=16, max_length=4096, **knobs).to(torch.bfloat16).train()
    g = torch.Generator().manual_seed(1)
    q, k, v = ((torch.randn(1, 2, 4096, 16, generator=g) * 3).to(torch.bfloat16).requires_grad_() for _ in range(3))
    mask = torch.ones(1, 4096, dtype=torch.bool)
    mask[0, 3000:] = False
    out = attn(q, k, v, key_padding_mask=mask)
    assert attn.last_backend == "fast" and out.dtype == torch.bfloat16
    assert torch.isfinite(out).all()
    out.float().square().mean().backward()
    for t in ((q, v) if name == "reformer" else (q, k, v)):
        assert torch.isfinite(t.grad).all()


#: the variants whose ``auto`` takes the fast path on CPU in fp32 too (issue 38: it is the faster path
#: there and computes the same function; the kernel variants' fused fp32 path, reformer's blocked
#: windows, linformer's and nystrom's fused kernels)
CPU_FP32_FAST = {"linear", "performer", "hedgehog", "taylor", "random_feature", "reformer", "linformer", "nystrom"}


@pytest.mark.parametrize("name", VARIANTS)
def test_auto_backend_by_device_and_dtype(name):
    attn = av.build(name, heads=2, head_dim=16, max_length=64, **CASES[name][1]).eval()
    assert attn.config.backend == "auto"
    q, k, v = (torch.randn(1, 2, 64, 16) for _ in range(3))
    attn(q, k, v)
    assert attn.last_backend == ("fast" if name in CPU_FP32_FAST else "reference")   # fp32 on CPU
    with torch.autocast("cpu", dtype=torch.bfloat16):
        attn(q, k, v)
    assert attn.last_backend == "fast"                            # reduced precision
    attn(*(t.to(torch.bfloat16) for t in (q, k, v)))
    assert attn.last_backend == "fast"
    with pytest.raises(ValueError, match="reference"):
        av.build(name, heads=2, head_dim=16, backend="triton")


#: the variants whose ``auto`` takes a path without a forward-mode rule on the CPU, with tiny knobs
UNDER_FUNC = {"full": {}, "local": {"window": 8}, "bigbird": {"block_size": 4}, "reformer": {"bucket_size": 8},
              "linformer": {"k": 8}, "nystrom": {"landmarks": 8, "conv_kernel": 5}, "performer": {"num_features": 16}}


@pytest.mark.parametrize("name", sorted(UNDER_FUNC))
def test_auto_runs_the_reference_path_under_torch_func(name):
    """The fast paths' custom autograd functions and torch's fused CPU kernel have no forward-mode
    rule: under ``torch.func.jvp`` (the smoothness measures) ``auto`` runs the reference path, its
    output equals the plain forward's and (for the hash-free variants) its tangent equals the
    central finite difference."""
    attn = av.build(name, heads=2, head_dim=8, max_length=32, **UNDER_FUNC[name]).double().eval()
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 32, 8, generator=g, dtype=torch.float64) for _ in range(3))
    dq = torch.randn(q.shape, generator=g, dtype=torch.float64)
    out, tangent = torch.func.jvp(lambda x: attn(x, k, v), (q,), (dq,))
    assert (getattr(attn, "last_path", None) or attn.last_backend) == "reference"
    torch.testing.assert_close(out, attn(q, k, v), rtol=1e-10, atol=1e-12)
    if name != "reformer":  # its buckets move under a perturbation of q: no finite difference
        eps = 1e-6
        fd = (attn(q + eps * dq, k, v) - attn(q - eps * dq, k, v)) / (2 * eps)
        torch.testing.assert_close(tangent, fd, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["hedgehog", "taylor", "random_feature"])
def test_auto_is_fast_for_the_fp32_kernel_variants(name):
    """The kernel variants without a bf16 policy run their fused fp32 fast path under ``auto`` on
    every dtype (bf16 inputs are computed in fp32); ``reference`` stays selectable."""
    attn = av.build(name, heads=2, head_dim=16, max_length=64).eval()
    assert attn.config.backend == "auto"
    q, k, v = (torch.randn(1, 2, 64, 16) for _ in range(3))
    attn(q, k, v)
    assert attn.last_backend == "fast"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert attn(q, k, v).dtype == torch.float32
    assert attn.last_backend == "fast"
    ref = av.build(name, heads=2, head_dim=16, max_length=64, backend="reference").eval()
    ref.load_state_dict(attn.state_dict())
    torch.testing.assert_close(ref(q, k, v), attn(q, k, v), rtol=1e-5, atol=1e-6)
    assert ref.last_backend == "reference"
    with pytest.raises(ValueError, match="reference"):
        av.build(name, heads=2, head_dim=16, backend="triton")


def test_cpu_never_compiles(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("torch.compile called on CPU")

    monkeypatch.setattr(torch, "compile", forbidden)
    for case in CASES:
        _, fast = pair(case)
        q, k, v, mask, grad = inputs(64)
        out, _ = run(fast, q, k, v, mask, grad, torch.bfloat16, autocast=True)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("rel_floor", [0.0, 1e-3, 0.3])
def test_kernel_attention_fast_gradients(rel_floor):
    """``kernel_attention(phi_q, phi_k, v, mask, rel_floor=...)`` keeps its signature (default: the
    reference path); ``backend="fast"`` is the same function with exact gradients in float64,
    floored rows and a fully padded sequence included; inf/NaN at padded keys cannot leak."""
    g = torch.Generator().manual_seed(4)
    phi_q = torch.rand(2, 2, 12, 6, generator=g, dtype=torch.float64) + 0.1
    phi_k = torch.rand(2, 2, 14, 6, generator=g, dtype=torch.float64) + 0.1
    if rel_floor:
        phi_q, phi_k = phi_q - 0.6, phi_k - 0.6
    v = torch.randn(2, 2, 14, 3, generator=g, dtype=torch.float64) + 2
    mask = torch.ones(2, 14, dtype=torch.bool)
    mask[1, 9:] = False
    ref = kernel_attention(phi_q, phi_k, v, mask, rel_floor=rel_floor)
    torch.testing.assert_close(ref, quadratic_kernel_attention(phi_q, phi_k, v, mask, rel_floor=rel_floor))
    fast = kernel_attention(phi_q, phi_k, v, mask, rel_floor=rel_floor, backend="fast")
    torch.testing.assert_close(fast, ref)
    ins = [t.clone().requires_grad_() for t in (phi_q, phi_k, v)]
    assert torch.autograd.gradcheck(lambda a, b, c: kernel_attention(a, b, c, mask, rel_floor=rel_floor,
                                                                     backend="fast"), ins)
    none = torch.zeros(2, 14, dtype=torch.bool)
    out = kernel_attention(*ins, none, rel_floor=rel_floor, backend="fast")
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in ins)
    bad_k, bad_v = phi_k.clone(), v.clone()
    pad = ~mask[:, None, :, None]
    bad_k.masked_fill_(pad, float("inf"))
    bad_v.masked_fill_(pad, float("nan"))
    torch.testing.assert_close(kernel_attention(phi_q, bad_k, bad_v, mask, rel_floor=rel_floor, backend="fast"),
                               ref)


class OpLog(TorchDispatchMode):
    """Records every aten op (and its output shapes) run inside the block."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        shapes = [tuple(o.shape) for o in (out if isinstance(out, (tuple, list)) else [out]) if torch.is_tensor(o)]
        self.calls.append((str(func.overloadpacket), shapes))
        return out


def test_reformer_fast_sorts_once_and_copies_no_windows():
    """One sort per forward (all rounds at once; the inverse permutation by a scatter), one gather
    of the inputs and one of the outputs (the un-sort), and no look-back window copies (the
    reference path sorts twice and concatenates each (rounds, chunks, 2 x chunk, D) window tensor)."""
    b, h, n, d, rounds = 2, 2, 128, 16, 2
    ref, fast = pair("reformer", max_length=n)
    q, k, v = (torch.randn(b, h, n, d) for _ in range(3))
    logs = {}
    for name, attn in (("reference", ref), ("fast", fast)):
        with torch.no_grad(), OpLog() as log:
            attn(q, k, v)
        logs[name] = log.calls
    sorts = {name: sum(op in ("aten.sort", "aten.argsort") for op, _ in calls) for name, calls in logs.items()}
    assert sorts == {"reference": 2, "fast": 1}
    assert sum(op == "aten.index" for op, _ in logs["fast"]) == 3      # inputs; outputs and lse
    window = 2 * rounds * b * h * n * d
    assert not [s for op, shapes in logs["fast"] if op == "aten.cat" for s in shapes if math.prod(s) >= window]
    assert [s for op, shapes in logs["reference"] if op == "aten.cat" for s in shapes if math.prod(s) >= window]


@pytest.mark.gpu
@pytest.mark.parametrize("case", list(CASES))
def test_gpu_fast_agrees_with_reference_and_compiles(case):
    """On CUDA (compiled pointwise kernels, fp32-output matmuls): bf16 autocast, N = 1024, head_dim
    64; the same bounds as on CPU, and no compiled function fell back to eager."""
    name, knobs = CASES[case]
    torch.manual_seed(0)
    ref = av.build(name, heads=4, head_dim=64, max_length=1024, backend="reference", **knobs).cuda().train()
    fast = av.build(name, heads=4, head_dim=64, max_length=1024, backend="fast", **knobs).cuda().train()
    fast.load_state_dict(ref.state_dict())
    q, k, v = (torch.randn(2, 4, 1024, 64, device="cuda") for _ in range(3))
    v = v + 3
    mask = torch.ones(2, 1024, dtype=torch.bool, device="cuda")
    mask[1, 700:] = False
    grad = torch.randn(2, 4, 1024, 64, device="cuda") * mask[:, None, :, None]
    outs = [run(attn, q, k, v, mask, grad, torch.bfloat16, autocast=False) for attn in (ref, fast)]
    (out_r, grads_r), (out_f, grads_f) = outs
    assert rel(real_rows(out_f, mask), real_rows(out_r, mask)) < BF16_RTOL
    for g_f, g_r in zip(grads_f, grads_r):
        if g_r is not None:
            assert rel(g_f, g_r) < 2 * BF16_RTOL
    assert not _fast.COMPILE_FAILURES, _fast.COMPILE_FAILURES


@pytest.mark.gpu
def test_gpu_matmul_fp32_keeps_an_fp32_result():
    a = torch.randn(3, 256, 64, device="cuda").to(torch.bfloat16)
    b = torch.randn(3, 64, 96, device="cuda").to(torch.bfloat16)
    exact = a.double() @ b.double()
    assert rel(_fast.matmul_fp32(a, b), exact) < 1e-6          # a bf16 result would be ~2e-3 off
    assert not _fast.MATMUL_FP32_FALLBACK, f"upcast instead of an fp32-output bf16 matmul: {_fast.MATMUL_FP32_FALLBACK}"
