"""Causal kernel attention (issue 34): the chunked prefix-sum kernel against its cumulative-sum
definition, the causal stabilisers, the configurations test_causal.py does not build (gated RFA,
unnormalised RFA, Hedgehog's exp map, Performer's relu kernel), decoding and its state size.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import attention_variants as av
from attention_variants._kernel import (causal_kernel_attention, causal_kernel_attention_reference,
                                        kernel_state_bytes)

B, H, N, D = 2, 2, 37, 8
CHUNKS = (1, 3, 8, 16, 64)          # 37 is a multiple of none of them; 64 > N: one padded chunk
CONFIGS = {
    "linear": ("linear", {}),
    "performer": ("performer", {"num_features": 16}),
    "performer_relu": ("performer", {"num_features": 16, "kernel": "relu"}),
    "rfa": ("random_feature", {"num_features": 8}),
    "rfa_unnormalized": ("random_feature", {"num_features": 8, "normalize": False}),
    "rfa_gated": ("random_feature", {"num_features": 8, "gate": True}),
    "rfa_gated_unnormalized": ("random_feature", {"num_features": 8, "gate": True, "normalize": False}),
    "hedgehog": ("hedgehog", {}),
    "hedgehog_exp": ("hedgehog", {"activation": "exp"}),
    "taylor": ("taylor", {"feature_dim": 4}),
}
CHUNK_KNOB = {"random_feature": "gate_chunk"}


def build(config, chunk=8, backend="auto", dtype=torch.float32):
    name, knobs = CONFIGS[config]
    knobs = {**knobs, CHUNK_KNOB.get(name, "chunk_size"): chunk, "backend": backend}
    attn = av.build(name, heads=H, head_dim=D, max_length=64, seed=5, causal=True, **knobs).eval()
    if knobs.get("gate"):
        g = torch.Generator().manual_seed(9)
        with torch.no_grad():
            attn.gate_weight.copy_(torch.randn(attn.gate_weight.shape, generator=g) * 0.5)
            attn.gate_bias.copy_(torch.rand(attn.gate_bias.shape, generator=g) * 4 - 1)
    return attn.to(dtype)


def padding(kind):
    mask = torch.ones(B, N, dtype=torch.bool)
    if kind == "right":
        mask[1, N - 9:] = False
    elif kind == "left":
        mask[1, :9] = False
    return None if kind == "none" else mask


def inputs(seed=0, dtype=torch.float32, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, N, D, generator=g, dtype=dtype) * s for s in (scale, scale, 1.0)]


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("kind", ["none", "right", "left"])
@pytest.mark.parametrize("config", [c for c in CONFIGS if not CONFIGS[c][1].get("gate")])
def test_chunked_equals_cumulative_sum_definition_in_float64(config, kind):
    """The fast (chunked) path equals the reference path (the cumulative-sum definition, or its
    rescaled recurrence where keys carry log-weights) for every chunk size, ~1e-12 in float64."""
    q, k, v = inputs(1, torch.float64, scale=1.5)
    mask = padding(kind)
    ref = build(config, backend="reference", dtype=torch.float64)(q, k, v, key_padding_mask=mask)
    for chunk in CHUNKS:
        out = build(config, chunk=chunk, backend="fast", dtype=torch.float64)(q, k, v, key_padding_mask=mask)
        assert rel(out, ref) < 1e-12, (config, chunk)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_chunk_size_changes_nothing_but_speed_in_fp32(config):
    q, k, v = inputs(2)
    mask = padding("left")
    ref = build(config, chunk=1)(q, k, v, key_padding_mask=mask)
    for chunk in CHUNKS[1:]:
        out = build(config, chunk=chunk)(q, k, v, key_padding_mask=mask)
        assert rel(out, ref) < 2e-5, (config, chunk)
    exact = build(config, backend="reference", dtype=torch.float64)(*(t.double() for t in (q, k, v)),
                                                                   key_padding_mask=mask)
    tol = 2e-4 if CONFIGS[config][0] == "random_feature" else 2e-5
    assert rel(ref.double(), exact) < tol


@pytest.mark.parametrize("config", ["linear", "performer", "hedgehog", "taylor", "rfa"])
def test_bf16_autocast_agrees_with_the_fp32_reference(config):
    """bf16 inputs under autocast: the causal fast path computes in fp32 (features included) and
    agrees with the fp32 reference within bf16 tolerance."""
    q, k, v = (t.to(torch.bfloat16).float() for t in inputs(3))
    mask = padding("right")
    ref = build(config, backend="reference")(q, k, v, key_padding_mask=mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = build(config)(*(t.to(torch.bfloat16) for t in (q, k, v)), key_padding_mask=mask)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=1.6e-2, atol=1e-2)


@pytest.mark.parametrize("kind", ["none", "right", "left"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_no_leak_and_no_gradient_from_the_future(config, kind):
    """test_causal.py's checks on the configurations it does not build: outputs at <= t bit for bit
    unchanged when anything after t changes (keys 40x larger included: a stabiliser over future keys
    would move or underflow them), and zero gradient into q, k, v after t."""
    attn = build(config)
    assert attn.causal and type(attn).supports_causal
    mask = padding(kind)
    q, k, v = inputs(4)
    out = attn(q, k, v, key_padding_mask=mask)
    for t in (0, 5, 16, N - 2):
        for scale in (3.0, 40.0):
            q2, k2, v2 = (x.clone() for x in (q, k, v))
            g = torch.Generator().manual_seed(t)
            for x in (q2, k2, v2):
                x[..., t + 1:, :] = torch.randn(x[..., t + 1:, :].shape, generator=g) * scale
            out2 = attn(q2, k2, v2, key_padding_mask=mask)
            assert torch.equal(out[..., : t + 1, :], out2[..., : t + 1, :]), (config, t, scale)
    assert torch.isfinite(out).all()
    q, k, v = (x.requires_grad_() for x in inputs(5))
    out = attn(q, k, v, key_padding_mask=mask)
    t = 16
    (out[..., : t + 1, :] * torch.randn(out[..., : t + 1, :].shape)).sum().backward()
    for x in (q, k, v):
        assert (x.grad[..., t + 1:, :] == 0).all() and x.grad[..., : t + 1, :].abs().sum() > 0


@pytest.mark.parametrize("config", list(CONFIGS))
def test_query_without_a_real_key_outputs_zero(config):
    """Left padding: a query before the first real key has no key at or before it: output 0, no
    NaN, finite gradients; every key padded gives 0 everywhere."""
    attn = build(config)
    mask = padding("left")
    q, k, v = (x.requires_grad_() for x in inputs(6))
    out = attn(q, k, v, key_padding_mask=mask)
    assert torch.equal(out[1, :, :9], torch.zeros_like(out[1, :, :9]))
    out.square().sum().backward()
    assert all(torch.isfinite(x.grad).all() for x in (q, k, v))
    none = attn(q, k, v, key_padding_mask=torch.zeros(B, N, dtype=torch.bool))
    assert torch.equal(none, torch.zeros_like(none))


@pytest.mark.parametrize("config", list(CONFIGS))
def test_decoding_equals_the_causal_forward(config):
    attn = build(config, chunk=5)
    q, k, v = inputs(7)
    state = attn.decode_init(B, q.device, q.dtype)
    outs = []
    for t in range(N):
        out_t, state = attn.decode_step(q[..., t: t + 1, :], k[..., t: t + 1, :], v[..., t: t + 1, :], state)
        outs.append(out_t)
    tol = 2e-4 if CONFIGS[config][0] == "random_feature" else 1e-5
    torch.testing.assert_close(torch.cat(outs, dim=-2), attn(q, k, v), rtol=tol, atol=tol)
    assert state.s.shape[-2:] == (state.s.shape[-2], D + 1)


def test_decode_state_bytes_match_a_hand_count():
    """Per head: the F x D state and the F normaliser (plus one running shift for stabilised
    exponential features); all heads; independent of the length."""
    heads, d = 4, 16
    lin = av.build("linear", heads=heads, head_dim=d, causal=True)
    assert lin.decode_state_bytes(512)[0] == 4 * (16 * 16 + 16) * 4 == 4352
    tay = av.build("taylor", heads=heads, head_dim=d, feature_dim=16, causal=True)
    f = 1 + 16 + 16 * 17 // 2                                         # 153 features
    assert tay.decode_state_bytes(512)[0] == 4 * (153 * 16 + 153) * 4 == heads * (f * d + f) * 4 == 41616
    perf = av.build("performer", heads=heads, head_dim=d, num_features=256, causal=True)
    assert perf.decode_state_bytes(512)[0] == 4 * (256 * 16 + 256 + 1) * 4
    assert perf.decode_state_bytes(512, element_bytes=2)[0] == 4 * (256 * 16 + 256 + 1) * 2
    for attn in (lin, tay, perf):
        assert attn.decode_state_bytes(16)[0] == attn.decode_state_bytes(16384)[0]
    rfa = av.build("random_feature", heads=heads, head_dim=d, num_features=256, gate=True)
    assert rfa.decode_state_bytes(512)[0] == 4 * (512 * 16 + 512 + 1) * 4     # 2 D features, the floor's mass
    assert kernel_state_bytes(2, 3, 5, 8, shift=True, floor=True) == 2 * (3 * 6 + 2) * 8


def test_gated_random_feature_declares_and_reports_causal():
    assert "random_feature" in av.available(causal=True)
    gated = av.build("random_feature", heads=H, head_dim=D, gate=True)
    assert gated.causal and not gated.config.causal          # causal by construction
    assert av.build("random_feature", heads=H, head_dim=D, gate=True, causal=True).causal
    assert not av.build("random_feature", heads=H, head_dim=D).causal
    assert av.build("random_feature", heads=H, head_dim=D, causal=True).causal


class MaxNumel(TorchDispatchMode):
    """The largest tensor any aten op returns inside the block."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_chunked_kernel_memory_is_never_n_f_d():
    """The chunked kernel holds O(N (C + F + D) + (N / C) F D) numbers, never the O(N F D) prefix
    sums the cumulative-sum definition materialises (forward and backward)."""
    n, f, d, chunk = 512, 16, 16, 32
    g = torch.Generator().manual_seed(0)
    phi_q, phi_k = (torch.rand(1, 1, n, f, generator=g).requires_grad_() for _ in range(2))
    v = torch.randn(1, 1, n, d, generator=g).requires_grad_()
    log_w = torch.randn(1, 1, n, generator=g).requires_grad_()
    for lw in (None, log_w):
        with MaxNumel() as probe:
            out = causal_kernel_attention(phi_q, phi_k, v, None, chunk=chunk, log_w=lw)
            out.square().sum().backward()
        assert probe.largest <= n * max(chunk, f, d + 1) + (n // chunk) * f * (d + 1)
        assert probe.largest < n * f * (d + 1) / 4
        with MaxNumel() as probe:
            causal_kernel_attention_reference(phi_q, phi_k, v, None, log_w=None)
        assert probe.largest >= n * f * (d + 1)          # the definition does materialise them


def test_performer_causal_stabiliser_uses_past_keys_only():
    """A key far larger than every earlier one (its log-weight ~600 above theirs) would underflow
    the earlier keys' features under a stabiliser that saw it; causally it cannot reach them."""
    attn = build("performer")
    q, k, v = inputs(8)
    out = attn(q, k, v)
    k2 = k.clone()
    k2[:, :, 20] = k2[:, :, 20] * 0 + 25.0
    out2 = attn(q, k2, v)
    assert torch.equal(out[..., :20, :], out2[..., :20, :])
    assert torch.isfinite(out2).all()
    exact = build("performer", backend="reference", dtype=torch.float64)(q.double(), k2.double(), v.double())
    assert rel(out2.double(), exact) < 1e-5
    assert math.isfinite(float(out2.sum()))
