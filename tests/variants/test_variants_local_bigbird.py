"""Exactness tests for the `local` and `bigbird` variants against naive dense references."""
import warnings

import pytest
import torch

import attention_variants as av
from attention_variants.full import softmax_attention


def qkv(b=2, h=2, n=50, d=8, dtype=torch.float32, device="cpu"):
    return [torch.randn(b, h, n, d, dtype=dtype, device=device) for _ in range(3)]


def padding(b, n, device="cpu"):
    mask = torch.ones(b, n, dtype=torch.bool, device=device)
    mask[0, n - 7:] = False
    mask[-1, n // 3:] = False
    return mask


def assert_matches_dense(out, q, k, v, token_mask, key_padding_mask, atol=1e-5):
    """``out`` equals dense masked softmax attention on every query with an allowed real key;
    queries with none (padded queries only) are exactly zero."""
    allowed = token_mask.expand(q.shape[0], q.shape[1], -1, -1)
    if key_padding_mask is not None:
        allowed = allowed & key_padding_mask[:, None, None, :]
    ref = softmax_attention(q, k, v, key_padding_mask, attn_mask=token_mask)
    has_key = allowed.any(-1)[..., None].expand_as(out)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[has_key], ref[has_key], atol=atol, rtol=1e-5)
    assert (out[~has_key] == 0).all()


def band(n, window):
    i = torch.arange(n)
    return (i[:, None] - i[None, :]).abs() <= window


def local(**kw):
    return av.build("local", heads=2, head_dim=8, max_length=128, **kw)


def bigbird(**kw):
    cfg = {"heads": 2, "head_dim": 8, "max_length": 128, "block_size": 4, **kw}
    return av.build("bigbird", **cfg)


# ----------------------------------------------------------------------------- local
@pytest.mark.parametrize("n,window", [(40, 40), (40, 39), (33, 500)])
@pytest.mark.parametrize("padded", [False, True])
def test_local_wide_window_equals_full(n, window, padded):
    q, k, v = qkv(n=n)
    mask = padding(2, n) if padded else None
    out = local(window=window, backend="reference")(q, k, v, key_padding_mask=mask)
    torch.testing.assert_close(out, softmax_attention(q, k, v, mask), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n,window", [(50, 0), (50, 1), (50, 5), (100, 16), (37, 12), (20, 18)])
@pytest.mark.parametrize("padded", [False, True])
def test_local_matches_naive_band(n, window, padded):
    q, k, v = qkv(n=n)
    mask = padding(2, n) if padded else None
    out = local(window=window, backend="reference")(q, k, v, key_padding_mask=mask)
    assert out.shape == q.shape
    assert_matches_dense(out, q, k, v, band(n, window), mask)


@pytest.mark.parametrize("window", [0, 3, 16])
def test_local_flex_eager_matches_reference(window):
    """The flex mask_mod (run eagerly, unfused, on CPU) computes the reference's function."""
    q, k, v = qkv(n=45)
    mask = padding(2, 45)
    ref = local(window=window, backend="reference")
    flex = local(window=window, backend="flex")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for m in (None, mask):
            torch.testing.assert_close(flex(q, k, v, key_padding_mask=m), ref(q, k, v, key_padding_mask=m),
                                       atol=1e-5, rtol=1e-5)


def test_local_auto_is_the_fused_kernel_on_cpu_and_knobs_checked():
    """On the CPU ``auto`` runs torch's fused flash kernel with the band mask (issue 38: the fastest
    path that computes the method's function), and it is the reference's function."""
    attn = local(window=4)
    q, k, v = qkv(n=20)
    out = attn(q, k, v)
    assert attn.last_backend == "sdpa"
    torch.testing.assert_close(out, local(window=4, backend="reference")(q, k, v), atol=1e-5, rtol=1e-5)
    assert attn.exact is False and attn.complexity == "O(N w)" and attn.fast_devices == ("cuda", "cpu")
    with pytest.raises(ValueError, match="window"):
        local(window=-1)
    with pytest.raises(ValueError, match="backend"):
        local(backend="triton")


# ----------------------------------------------------------------------------- bigbird
@pytest.mark.parametrize("n,kw", [
    (32, {}),                                  # 8 blocks <= 3 + 2 + 3 slots: all selected
    (31, {}),                                  # same, length not a multiple of block_size
    (60, {"window_blocks": 31}),               # a window as wide as the sequence
    (64, {"block_size": 16}),                  # the SMALL_KNOBS shape of test_variants_common
])
@pytest.mark.parametrize("padded", [False, True])
def test_bigbird_every_block_selected_equals_full(n, kw, padded):
    attn = bigbird(backend="reference", **kw)
    assert attn.selects_all(-(-n // attn.config.block_size))
    q, k, v = qkv(n=n)
    mask = padding(2, n) if padded else None
    torch.testing.assert_close(attn(q, k, v, key_padding_mask=mask), softmax_attention(q, k, v, mask),
                               atol=1e-5, rtol=1e-5)


BIGBIRD_SPARSE = [
    (50, {}),                                                          # 13 blocks, last one partial
    (64, {}),
    (61, {"block_size": 3, "window_blocks": 2, "global_blocks": 3, "random_blocks": 2}),
    (45, {"global_blocks": 0, "random_blocks": 0, "window_blocks": 1}),  # block-diagonal
    (57, {"global_blocks": 1, "random_blocks": 1, "window_blocks": 5}),
]


@pytest.mark.parametrize("n,kw", BIGBIRD_SPARSE)
@pytest.mark.parametrize("padded", [False, True])
def test_bigbird_reference_matches_dense_layout(n, kw, padded):
    attn = bigbird(backend="reference", **kw)
    nb = -(-n // attn.config.block_size)
    assert not attn.selects_all(nb)
    q, k, v = qkv(n=n)
    mask = padding(2, n) if padded else None
    out = attn(q, k, v, key_padding_mask=mask)
    assert out.shape == q.shape
    assert_matches_dense(out, q, k, v, attn.token_mask(n)[None], mask)


def test_bigbird_layout_structure():
    attn = bigbird()  # block_size 4, max_length 128: 32 blocks
    nb = 32
    layout = attn.block_layout(nb)
    assert layout.shape == (2, nb, nb)
    assert layout[:, [0, -1]].all() and layout[:, :, [0, -1]].all()      # global rows and columns
    i = torch.arange(nb)
    assert layout[:, i, i].all() and layout[:, i[1:], i[:-1]].all() and layout[:, i[:-1], i[1:]].all()
    # at max_length each middle row has exactly window + global + random distinct blocks, except
    # the rows whose window touches a global block (it is counted once)
    counts = layout[:, 2:-2].sum(-1)
    assert (counts == 3 + 2 + 3).all()
    assert (layout[:, [1, -2]].sum(-1) == 3 + 2 + 3 - 1).all()
    assert not layout[0].equal(layout[1])                                 # random blocks differ per head


def test_bigbird_duplicate_blocks_counted_once():
    """Shorter than max_length, folded random blocks can repeat window/global blocks; those
    slots are masked, so the gathered softmax still matches the dense layout."""
    attn = bigbird(backend="reference", max_length=512)  # random blocks drawn for 128 blocks
    n = 40
    index, valid = attn.block_slots(10)
    assert (~valid[..., 5:]).any(), "expected some repeated random slots for this seed/shape"
    assert valid[..., 1].all()                                             # the diagonal block
    q, k, v = qkv(n=n)
    mask = padding(2, n)
    assert_matches_dense(attn(q, k, v, key_padding_mask=mask), q, k, v, attn.token_mask(n)[None], mask)


@pytest.mark.parametrize("n,kw", BIGBIRD_SPARSE[:3])
def test_bigbird_flex_eager_matches_reference(n, kw):
    """The BlockMask mask_mod (eager, unfused, on CPU) computes the reference's function."""
    ref = bigbird(backend="reference", **kw)
    flex = bigbird(backend="flex", **kw)
    flex.load_state_dict(ref.state_dict())
    q, k, v = qkv(n=n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for m in (None, padding(2, n)):
            torch.testing.assert_close(flex(q, k, v, key_padding_mask=m), ref(q, k, v, key_padding_mask=m),
                                       atol=1e-5, rtol=1e-5)


def test_bigbird_random_blocks_buffer_seeded():
    a, b, c = bigbird(seed=5), bigbird(seed=5), bigbird(seed=6)
    assert "rand_blocks" in dict(a.named_buffers()) and "rand_blocks" in a.state_dict()
    assert a.rand_blocks.shape == (2, 32, 3)
    assert a.rand_blocks.equal(b.rand_blocks) and not a.rand_blocks.equal(c.rand_blocks)
    before = a.rand_blocks.clone()
    q, k, v = qkv(n=60)
    out_train = a.train()(q, k, v)
    out_eval = a.eval()(q, k, v)
    assert a.rand_blocks.equal(before)                                     # never redrawn
    torch.testing.assert_close(out_train, out_eval)
    torch.testing.assert_close(out_eval, b.eval()(q, k, v))


def test_bigbird_no_nan_when_everything_padded_and_grads_finite():
    attn = bigbird(backend="reference")
    q, k, v = (t.requires_grad_() for t in qkv(n=50))
    mask = padding(2, 50)
    mask[1] = False                                                        # a fully padded sequence
    out = attn(q, k, v, key_padding_mask=mask)
    assert torch.isfinite(out).all() and (out[1] == 0).all()
    out.square().sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_bigbird_errors_are_clear():
    with pytest.raises(ValueError, match="block_size"):
        bigbird(block_size=0)
    with pytest.raises(ValueError, match="window_blocks"):
        bigbird(window_blocks=0)
    with pytest.raises(ValueError, match="backend"):
        bigbird(backend="cuda")
    attn = bigbird()
    q, k, v = qkv(n=129)
    with pytest.raises(ValueError, match="max_length"):
        attn(q, k, v)
    q, k, v = qkv(h=3, n=20)
    with pytest.raises(ValueError, match="heads"):
        attn(q, k, v)
    assert attn.exact is False and attn.complexity == "O(N)" and attn.fast_devices == ("cuda", "cpu")


# ----------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("name,kw,n", [
    ("local", {"window": 64}, 1000),
    ("local", {"window": 5}, 257),
    ("bigbird", {"block_size": 64}, 1000),
    ("bigbird", {"block_size": 32, "global_blocks": 1, "window_blocks": 5}, 777),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_flex_matches_reference_on_cuda(name, kw, n, dtype):
    cfg = {"heads": 4, "head_dim": 64, "max_length": 1024, **kw}
    ref = av.build(name, backend="reference", **cfg).cuda()
    fast = av.build(name, backend="auto", **cfg).cuda()
    fast.load_state_dict(ref.state_dict())
    q, k, v = qkv(b=2, h=4, n=n, d=64, dtype=dtype, device="cuda")
    mask = padding(2, n, device="cuda")
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    for m in (None, mask):
        out = fast(q, k, v, key_padding_mask=m)
        assert fast.last_backend == "flex", fast._flex_failed
        torch.testing.assert_close(out.float(), ref(q, k, v, key_padding_mask=m).float(), atol=tol, rtol=tol)
