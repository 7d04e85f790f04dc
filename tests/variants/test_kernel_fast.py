"""The kernel variants' fast paths (``auto`` on every device) against their reference paths, which
tests/variants/test_float64_definitions.py checks against the methods' definitions.

* float64: outputs and gradients (into q, k, v and every parameter: sigma, the Hedgehog maps, the
  Taylor projection) equal the reference path's to float64 rounding, at score std 1 and 4, with
  padding, non-causal and causal;
* fp32: the same within fp32 rounding;
* padded keys holding inf/NaN change nothing on the fast path either.
"""
from __future__ import annotations

import math

import pytest
import torch

import attention_variants as av

B, H, N, D = 2, 2, 29, 8
CASES = {
    "linear": ("linear", {}),
    "performer": ("performer", {"num_features": 16}),
    "performer_relu": ("performer", {"num_features": 16, "kernel": "relu"}),
    "rfa": ("random_feature", {"num_features": 8}),
    "rfa_unnormalized": ("random_feature", {"num_features": 8, "normalize": False}),
    "hedgehog": ("hedgehog", {}),
    "hedgehog_exp": ("hedgehog", {"activation": "exp"}),
    "hedgehog_shared": ("hedgehog", {"share_heads": True, "feature_dim": 5}),
    "taylor": ("taylor", {"feature_dim": 4}),
    "taylor_unprojected": ("taylor", {"feature_dim": None}),
}


def pair(case, dtype, causal=False, chunk=6):
    name, knobs = CASES[case]
    extra = {"causal": causal}
    extra["gate_chunk" if name == "random_feature" else "chunk_size"] = chunk
    ref = av.build(name, heads=H, head_dim=D, max_length=64, seed=3, backend="reference", **knobs, **extra)
    fast = av.build(name, heads=H, head_dim=D, max_length=64, seed=3, backend="fast", **knobs, **extra)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():  # move learned maps off their initialisation
        for p in ref.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.2)
    fast.load_state_dict(ref.state_dict())
    return ref.to(dtype).train(), fast.to(dtype).train()


def inputs(score_std, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = math.sqrt(score_std)
    q, k = (torch.randn(B, H, N, D, generator=g, dtype=torch.float64) * s for _ in range(2))
    v = torch.randn(B, H, N, D, generator=g, dtype=torch.float64) + 1.0
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[1, 20:] = False
    mask[0, :3] = False
    grad = torch.randn(B, H, N, D, generator=g, dtype=torch.float64) * mask[:, None, :, None]
    return [t.to(dtype) for t in (q, k, v, grad)] + [mask]


def run(attn, q, k, v, grad, mask):
    ins = [t.clone().requires_grad_() for t in (q, k, v)]
    params = [p for p in attn.parameters() if p.requires_grad]
    out = attn(*ins, key_padding_mask=mask)
    grads = torch.autograd.grad(out, ins + params, grad)
    return out, grads


def rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("score_std", [1.0, 4.0])
@pytest.mark.parametrize("case", list(CASES))
def test_fast_equals_reference_in_float64(case, score_std, causal):
    ref, fast = pair(case, torch.float64, causal)
    q, k, v, grad, mask = inputs(score_std, torch.float64)
    out_r, grads_r = run(ref, q, k, v, grad, mask)
    out_f, grads_f = run(fast, q, k, v, grad, mask)
    assert fast.last_backend == "fast" and ref.last_backend == "reference"
    assert out_f.dtype == torch.float64
    real = mask[:, None, :, None].expand_as(out_r)
    assert rel(out_f[real], out_r[real]) < 1e-12
    for g_f, g_r in zip(grads_f, grads_r):
        assert rel(g_f, g_r) < 1e-10


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("case", list(CASES))
def test_fast_equals_reference_in_fp32(case, causal):
    ref, fast = pair(case, torch.float32, causal)
    q, k, v, grad, mask = inputs(2.0, torch.float32, seed=1)
    out_r, grads_r = run(ref, q, k, v, grad, mask)
    out_f, grads_f = run(fast, q, k, v, grad, mask)
    real = mask[:, None, :, None].expand_as(out_r)
    tol = 2e-4 if CASES[case][0] == "random_feature" else 2e-5   # signed features: the floor's condition number
    assert rel(out_f[real], out_r[real]) < tol
    for g_f, g_r in zip(grads_f, grads_r):
        assert rel(g_f, g_r) < 10 * tol


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("case", list(CASES))
def test_fast_path_ignores_non_finite_padded_keys(case, causal):
    _, fast = pair(case, torch.float32, causal)
    q, k, v, grad, mask = inputs(1.0, torch.float32, seed=2)
    out = fast(q, k, v, key_padding_mask=mask)
    pad = ~mask[:, None, :, None].expand_as(k)
    k2, v2 = k.clone(), v.clone()
    k2[pad], v2[pad] = float("inf"), float("nan")
    ins = [t.requires_grad_() for t in (q.clone(), k2, v2)]
    out2 = fast(*ins, key_padding_mask=mask)
    real = ~pad
    assert torch.isfinite(out2[real]).all()
    torch.testing.assert_close(out2[real], out[real])
    (out2 * grad).sum().backward()
    for t in ins:
        assert torch.isfinite(t.grad).all() and (t.grad[pad] == 0).all()


@pytest.mark.parametrize("case", ["performer", "hedgehog_exp", "rfa_unnormalized"])
def test_fast_path_keeps_the_function_at_extreme_key_scales(case):
    """Keys whose log-weights span hundreds (one key 30x the others): the shift keeps every weight
    <= 1, so no overflow; outputs stay finite and equal the reference path's."""
    ref, fast = pair(case, torch.float64)
    q, k, v, grad, mask = inputs(1.0, torch.float64, seed=3)
    k = k.clone()
    k[:, :, 7] *= 30
    torch.testing.assert_close(fast(q, k, v, key_padding_mask=mask), ref(q, k, v, key_padding_mask=mask),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("case", ["linear", "performer", "rfa", "hedgehog_exp", "taylor"])
def test_batch_groups_compute_the_same_function(case, causal, monkeypatch):
    """On CPU the fast paths run the batch in groups that keep each feature tensor small
    (``_kernel.CPU_GROUP_BYTES``): the outputs and gradients equal one call's to fp32 rounding (a
    batched matmul may block a smaller batch differently; parameter gradients sum in another order)."""
    from attention_variants import _kernel

    _, fast = pair(case, torch.float32, causal)
    q, k, v, grad, mask = inputs(1.0, torch.float32, seed=4)
    q, k, v, grad, mask = (torch.cat([t] * 3) for t in (q, k, v, grad, mask))   # batch 6
    out_one, grads_one = run(fast, q, k, v, grad, mask)
    monkeypatch.setattr(_kernel, "CPU_GROUP_BYTES", 1)          # one row per group
    out_grouped, grads_grouped = run(fast, q, k, v, grad, mask)
    torch.testing.assert_close(out_grouped, out_one, rtol=1e-6, atol=1e-7)
    for a, b in zip(grads_grouped, grads_one):
        assert rel(a, b) < 1e-5


@pytest.mark.parametrize("case", ["linear", "performer", "rfa", "hedgehog_exp", "taylor"])
def test_torch_func_transforms_run_the_reference_path(case):
    """Under ``torch.func`` (the smoothness measures' jvp / vjp) the fast paths' custom autograd
    functions have no forward-mode rule: the reference path runs, and the products are the fast
    path's plain-autograd Jacobian products."""
    ref, fast = (m.eval() for m in pair(case, torch.float64))      # eval: no redraw counters
    q, k, v, grad, mask = inputs(1.0, torch.float64, seed=5)
    f = lambda x: fast(x, k, v, key_padding_mask=mask)  # noqa: E731
    out, jv = torch.func.jvp(f, (q,), (grad,))
    assert fast.last_backend == "reference"
    out_r, vjp = torch.func.vjp(lambda x: ref(x, k, v, key_padding_mask=mask), q)
    torch.testing.assert_close(out, out_r)
    ins = q.clone().requires_grad_()
    torch.testing.assert_close(vjp(grad)[0], torch.autograd.grad(f(ins), ins, grad)[0])
    assert fast.last_backend == "fast"


@pytest.mark.parametrize("masked", [False, True])
def test_linear_hand_written_backward_passes_gradcheck(masked):
    """linear's non-causal fast path differentiates by hand (``_LinearAttentionFunction``): float64
    gradcheck on strided q/k/v (views of one projection, as the encoder passes them), with no mask and
    with a mask that pads one sequence's tail and the whole of another (its output and gradients 0)."""
    from attention_variants.linear import _LinearAttentionFunction
    g = torch.Generator().manual_seed(5)
    qkv = torch.randn(3, 6, 3, 2, 4, generator=g, dtype=torch.float64).mul(2.0).requires_grad_()
    q, k, v = qkv.permute(2, 0, 3, 1, 4)                                   # (B 3, H 2, N 6, D 4), strided
    mask = None
    if masked:
        mask = torch.ones(3, 6, dtype=torch.bool)
        mask[0, 4:] = False
        mask[2] = False
    assert torch.autograd.gradcheck(lambda a, b, c: _LinearAttentionFunction.apply(a, b, c, mask), (q, k, v))
    if masked:
        out = _LinearAttentionFunction.apply(q, k, v, mask)
        out.sum().backward()
        assert torch.equal(out[2], torch.zeros_like(out[2]))
        assert (qkv.grad[2] == 0).all() and (qkv.grad[0, 4:, 1:] == 0).all()   # padded keys: no k/v gradient
