"""Causal attention, checked on every variant that declares it (``supports_causal``), plugins included.

* Nothing leaks from the future: changing q, k, v after position t changes no output at positions
  <= t (bit for bit), and the gradient of those outputs into q, k, v after t is exactly zero;
  with no padding, right padding and left padding.
* Padding keeps its meaning: a padded key changes no real query's output.
* Variants that cannot be causal refuse ``causal=True`` at build time, naming ``causal``, the
  reason and the variants that can.
"""
from __future__ import annotations

import pytest
import torch

import attention_variants as av

H, D, N = 2, 8, 37  # N not a multiple of any chunk or block size
LENGTHS = {"none": None, "right": [N, N - 9], "left": [N, N - 9]}


def causal_variants() -> list[str]:
    return av.available(causal=True)


def build(name: str, **knobs):
    return av.build(name, heads=H, head_dim=D, max_length=64, causal=True, seed=1, **knobs).eval()


def padding(kind: str, batch: int = 2) -> torch.Tensor | None:
    if kind == "none":
        return None
    mask = torch.ones(batch, N, dtype=torch.bool)
    if kind == "right":
        mask[1, N - 9:] = False
    else:  # left: the first 9 positions of row 1 are padding
        mask[1, :9] = False
    return mask


def inputs(seed: int = 0, batch: int = 2, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, H, N, D, generator=g, dtype=dtype) for _ in range(3)]


@pytest.mark.parametrize("kind", ["none", "right", "left"])
@pytest.mark.parametrize("name", causal_variants())
def test_no_value_leaks_from_the_future(name, kind):
    attn = build(name)
    assert attn.causal
    mask = padding(kind)
    q, k, v = inputs()
    out = attn(q, k, v, key_padding_mask=mask)
    for t in (0, 5, 16, N - 2):
        q2, k2, v2 = (x.clone() for x in (q, k, v))
        g = torch.Generator().manual_seed(t)
        for x in (q2, k2, v2):
            x[..., t + 1:, :] = torch.randn(x[..., t + 1:, :].shape, generator=g) * 3
        out2 = attn(q2, k2, v2, key_padding_mask=mask)
        assert torch.equal(out[..., : t + 1, :], out2[..., : t + 1, :]), f"{name}: output at <= {t} changed"


@pytest.mark.parametrize("kind", ["none", "right", "left"])
@pytest.mark.parametrize("name", causal_variants())
def test_no_gradient_flows_from_the_future(name, kind):
    attn = build(name)
    mask = padding(kind)
    q, k, v = (x.requires_grad_() for x in inputs(1))
    out = attn(q, k, v, key_padding_mask=mask)
    t = 16
    weights = torch.randn(out[..., : t + 1, :].shape, generator=torch.Generator().manual_seed(2))
    (out[..., : t + 1, :] * weights).sum().backward()
    for tensor, label in ((q, "q"), (k, "k"), (v, "v")):
        if label == "k" and getattr(attn, "shared_qk", False):  # keys derived from q (reformer): k is ignored
            assert tensor.grad is None or (tensor.grad == 0).all()
            continue
        assert tensor.grad is not None
        assert (tensor.grad[..., t + 1:, :] == 0).all(), f"{name}: gradient into {label} after position {t}"
        assert tensor.grad[..., : t + 1, :].abs().sum() > 0


#: knobs that make a variant's causal pattern sparse at N = 37 (the defaults cover the whole sequence)
SPARSE = {"local": {"window": 5}, "bigbird": {"block_size": 4}, "reformer": {"bucket_size": 4, "n_hashes": 2}}


@pytest.mark.parametrize("kind", ["none", "right", "left"])
@pytest.mark.parametrize("name", sorted(set(SPARSE) & set(causal_variants())))
def test_sparse_patterns_leak_nothing_from_the_future(name, kind):
    """The leak and gradient checks above with a window / block layout / bucket chunks smaller than N,
    on every backend that runs on the CPU."""
    backends = {"local": ["reference", "sdpa"], "bigbird": ["reference", "sdpa"], "reformer": ["reference", "fast"]}
    mask = padding(kind)
    for backend in backends[name]:
        attn = build(name, backend=backend, **SPARSE[name])
        q, k, v = inputs(6)
        out = attn(q, k, v, key_padding_mask=mask)
        for t in (0, 4, 13, 22, N - 2):
            q2, k2, v2 = (x.clone() for x in (q, k, v))
            g = torch.Generator().manual_seed(t)
            for x in (q2, k2, v2):
                x[..., t + 1:, :] = torch.randn(x[..., t + 1:, :].shape, generator=g) * 3
            out2 = attn(q2, k2, v2, key_padding_mask=mask)
            assert torch.equal(out[..., : t + 1, :], out2[..., : t + 1, :]), f"{name}/{backend}: output at <= {t}"
        q, k, v = (x.requires_grad_() for x in inputs(7))
        t = 19
        out = attn(q, k, v, key_padding_mask=mask)
        out[..., : t + 1, :].square().sum().backward()
        for tensor in (q, k, v):
            assert tensor.grad is None or (tensor.grad[..., t + 1:, :] == 0).all(), f"{name}/{backend}"


@pytest.mark.parametrize("kind", ["right", "left"])
@pytest.mark.parametrize("name", causal_variants())
def test_padded_keys_change_no_real_query(name, kind):
    attn = build(name)
    mask = padding(kind)
    q, k, v = inputs(3)
    out = attn(q, k, v, key_padding_mask=mask)
    k2, v2 = k.clone(), v.clone()
    pad = ~mask[:, None, :, None].expand_as(k)
    k2[pad], v2[pad] = 7.0, -5.0
    out2 = attn(q, k2, v2, key_padding_mask=mask)
    real = mask[:, None, :, None].expand_as(out)
    torch.testing.assert_close(out2[real], out[real], rtol=1e-5, atol=1e-6)


def causal_softmax64(q, k, v, mask):
    q, k, v = (x.double() for x in (q, k, v))
    allowed = torch.ones(N, N, dtype=torch.bool).tril()
    if mask is not None:
        allowed = allowed & mask[:, None, None, :]
    scores = (q @ k.transpose(-1, -2) / D ** 0.5).masked_fill(~allowed, -torch.inf)
    return torch.softmax(scores, -1).nan_to_num(0.0) @ v


@pytest.mark.parametrize("kind", ["none", "right", "left"])
@pytest.mark.parametrize("name,knobs", [("full", {}), ("flash", {}), ("local", {"window": N})])
def test_exact_causal_variants_are_masked_softmax_in_float64(name, knobs, kind):
    if name not in causal_variants():
        pytest.skip(f"{name} is not causal yet")
    mask = padding(kind)
    q, k, v = inputs(4, dtype=torch.float64)
    out = build(name, **knobs)(q, k, v, key_padding_mask=mask)
    ref = causal_softmax64(q, k, v, mask)
    real = torch.ones_like(out, dtype=torch.bool) if mask is None else mask[:, None, :, None].expand_as(out)
    assert float((out[real] - ref[real]).norm() / ref[real].norm()) < 1e-12


@pytest.mark.parametrize("name", av.available(causal=False))
def test_non_causal_variants_refuse_causal_at_build_time(name):
    with pytest.raises(ValueError, match="causal") as err:
        av.build(name, heads=H, head_dim=D, max_length=64, causal=True)
    for causal_name in causal_variants():
        assert causal_name in str(err.value)


@pytest.mark.parametrize("name", causal_variants())
def test_decode_steps_equal_the_causal_forward(name):
    """Variants with a cached decoding path: generating token by token gives the causal forward's
    outputs; the stated state size is positive where there is one."""
    attn = build(name)
    q, k, v = inputs(5, batch=1)
    try:
        state = attn.decode_init(1, q.device, q.dtype)
    except NotImplementedError:
        pytest.skip(f"{name} has no cached decoding path")
    outs = []
    for t in range(N):
        out_t, state = attn.decode_step(q[..., t: t + 1, :], k[..., t: t + 1, :], v[..., t: t + 1, :], state)
        outs.append(out_t)
    torch.testing.assert_close(torch.cat(outs, dim=-2), attn(q, k, v), rtol=1e-5, atol=1e-5)
    size, what = attn.decode_state_bytes(N)
    assert size is None or size > 0, what
