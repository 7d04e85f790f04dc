"""Properties every registered variant must have (CPU, tiny shapes)."""
import pytest
import torch

import attention_variants as av
from conftest import small_variant

VARIANTS = av.available()


def qkv(b=2, h=2, n=64, d=16, dtype=torch.float32):
    return (torch.randn(b, h, n, d, dtype=dtype) for _ in range(3))


@pytest.mark.parametrize("name", VARIANTS)
def test_shape_and_finite(name):
    attn = small_variant(name).eval()
    q, k, v = qkv()
    out = attn(q, k, v)
    assert out.shape == q.shape
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", VARIANTS)
def test_padded_keys_change_no_real_query(name):
    """Changing the values of padded keys/values leaves every real query's output unchanged."""
    attn = small_variant(name).eval()
    q, k, v = qkv(n=64)
    mask = torch.ones(2, 64, dtype=torch.bool)
    mask[0, 40:] = False
    mask[1, 10:] = False
    out1 = attn(q, k, v, key_padding_mask=mask)
    k2, v2 = k.clone(), v.clone()
    pad = ~mask[:, None, :, None].expand_as(k)
    k2[pad] = torch.randn(int(pad.sum())) * 5
    v2[pad] = torch.randn(int(pad.sum())) * 5
    q2 = q.clone()
    q2[pad] = torch.randn(int(pad.sum()))  # padded queries are free to change too
    out2 = attn(q2, k2, v2, key_padding_mask=mask)
    real = mask[:, None, :, None].expand_as(out1)
    assert torch.isfinite(out1).all() and torch.isfinite(out2).all()
    torch.testing.assert_close(out1[real], out2[real], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", VARIANTS)
def test_length_not_multiple_of_blocks(name):
    attn = small_variant(name).eval()
    q, k, v = qkv(n=100)
    out = attn(q, k, v)
    assert out.shape == q.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("name", VARIANTS)
def test_seeded_and_deterministic_in_eval(name):
    q, k, v = qkv()
    a = small_variant(name, seed=3).eval()
    b = small_variant(name, seed=3).eval()
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a(q, k, v), a(q, k, v))
    torch.testing.assert_close(a(q, k, v), b(q, k, v))


@pytest.mark.parametrize("name", VARIANTS)
def test_bf16_autocast_long_input_finite(name):
    """bf16 autocast at N=4096 gives finite outputs and gradients."""
    attn = small_variant(name, max_length=4096).train()
    q, k, v = (t.requires_grad_() for t in qkv(b=1, h=2, n=4096, d=16))
    mask = torch.ones(1, 4096, dtype=torch.bool)
    mask[0, 3000:] = False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(q * 3, k * 3, v, key_padding_mask=mask)
    assert torch.isfinite(out.float()).all()
    out.float().square().mean().backward()
    inputs = (q, v) if getattr(attn, "shared_qk", False) else (q, k, v)  # shared-QK ignores k
    for t in inputs:
        assert t.grad is not None and torch.isfinite(t.grad).all()
