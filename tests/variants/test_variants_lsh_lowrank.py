"""Reformer (LSH), Linformer and Nyströmformer against their own definitions (CPU, tiny shapes)."""
import pytest
import torch
import torch.nn.functional as F

import attention_variants as av
from attention_variants.full import softmax_attention
from attention_variants.nystrom import NystromAttention, iterative_pinv


def qkv(b=2, h=2, n=64, d=16):
    return (torch.randn(b, h, n, d) for _ in range(3))


def ragged_mask(n, lengths):
    return torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]


def assert_real_close(out1, out2, mask, **tol):
    real = mask[:, None, :, None].expand_as(out1)
    assert torch.isfinite(out1).all() and torch.isfinite(out2).all()
    torch.testing.assert_close(out1[real], out2[real], **tol)


def perturb_padded(mask, *tensors):
    """Copies of (B, H, N, D) tensors with every padded position redrawn (large values)."""
    out = []
    for t in tensors:
        t = t.clone()
        pad = ~mask[:, None, :, None].expand_as(t)
        t[pad] = torch.randn(int(pad.sum())) * 5
        out.append(t)
    return out


# ---------------------------------------------------------------- reformer

def shared_qk_reference(q, v, mask):
    """Full softmax attention with keys = q / ||q|| and self masked unless it is the only real key."""
    n = q.shape[-2]
    eye = torch.eye(n, dtype=torch.bool)
    others = (mask[:, None, :] & ~eye).any(-1)  # (B, N): a real key other than itself exists
    allowed = ~eye[None] | ~others[:, :, None]  # (B, N, N)
    return softmax_attention(q, F.normalize(q, dim=-1), v, mask, attn_mask=allowed[:, None])


@pytest.mark.parametrize("n, knobs", [
    (48, {"bucket_size": 64}),                 # bucket_size >= N: one chunk, padded internally
    (32, {"bucket_size": 32, "n_buckets": 1}),  # explicit single bucket
])
def test_reformer_single_bucket_equals_shared_qk_full(n, knobs):
    attn = av.build("reformer", heads=2, head_dim=16, max_length=64, n_hashes=3, **knobs).eval()
    q, k, v = qkv(b=3, n=n)
    mask = ragged_mask(n, [n, n - 11, 1])  # full row, padded row, a row whose only real key is itself
    out = attn(q, k, v, key_padding_mask=mask)
    assert_real_close(out, shared_qk_reference(q, v, mask), mask, atol=1e-5, rtol=1e-5)
    # k is ignored (shared QK)
    torch.testing.assert_close(attn(q, torch.randn_like(k), v, key_padding_mask=mask), out)
    # unmasked: every row has other keys, so self is never attended
    full_mask = torch.ones(3, n, dtype=torch.bool)
    torch.testing.assert_close(attn(q, k, v), shared_qk_reference(q, v, full_mask), atol=1e-5, rtol=1e-5)


def test_reformer_deterministic_per_seed():
    q, k, v = qkv(n=128)
    a = av.build("reformer", heads=2, head_dim=16, max_length=128, bucket_size=16, n_hashes=2, seed=5)
    b = av.build("reformer", heads=2, head_dim=16, max_length=128, bucket_size=16, n_hashes=2, seed=5)
    c = av.build("reformer", heads=2, head_dim=16, max_length=128, bucket_size=16, n_hashes=2, seed=6)
    assert a.rotations.shape == (16, 2, 4)  # (head_dim, n_hashes, max_buckets / 2), max_buckets = 128/16
    assert "rotations" in a.state_dict()
    torch.testing.assert_close(a.rotations, b.rotations)
    assert not torch.equal(a.rotations, c.rotations)
    for mode in (a.train, a.eval):
        mode()
        torch.testing.assert_close(a(q, k, v), a(q, k, v), rtol=0, atol=0)  # no redraw per call
    torch.testing.assert_close(a(q, k, v), b(q, k, v), rtol=0, atol=0)
    assert not torch.allclose(a(q, k, v), c(q, k, v))


@pytest.mark.parametrize("across", [True, False])
def test_reformer_padding_never_leaks(across):
    """Padded tokens (non-contiguous, plus internal padding of N=100 to 112) change no real output."""
    attn = av.build("reformer", heads=2, head_dim=16, max_length=128, bucket_size=16, n_hashes=2,
                    attend_across_buckets=across).eval()
    q, k, v = qkv(n=100)
    mask = torch.rand(2, 100) < 0.6
    mask[:, 0] = True
    out1 = attn(q, k, v, key_padding_mask=mask)
    out2 = attn(*perturb_padded(mask, q, k, v), key_padding_mask=mask)
    assert out1.shape == q.shape
    assert_real_close(out1, out2, mask, atol=1e-5, rtol=1e-5)


def test_reformer_gradients_flow_to_q_and_v():
    attn = av.build("reformer", heads=2, head_dim=16, max_length=64, bucket_size=16, n_hashes=2)
    q, k, v = (t.requires_grad_() for t in qkv(n=64))
    attn(q, k, v).square().sum().backward()
    assert torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0
    assert torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0


# ---------------------------------------------------------------- linformer

def linformer_reference(attn, q, k, v, mask):
    n = k.shape[-2]
    e = attn.E[:, :n]
    f = e if attn.F is None else attn.F[:, :n]
    keep = mask[:, None, :, None].to(k.dtype)
    k_proj = torch.einsum("kn,bhnd->bhkd", e, k * keep)
    v_proj = torch.einsum("kn,bhnd->bhkd", f, v * keep)
    probs = torch.softmax(torch.einsum("bhnd,bhkd->bhnk", q, k_proj) / q.shape[-1] ** 0.5, dim=-1)
    return torch.einsum("bhnk,bhkd->bhnd", probs, v_proj)


@pytest.mark.parametrize("share_kv", [False, True])
def test_linformer_matches_definition(share_kv):
    attn = av.build("linformer", heads=2, head_dim=16, max_length=128, k=32, share_kv=share_kv).eval()
    assert attn.E.shape == (32, 128) and (attn.F is None) == share_kv
    q, k, v = qkv(n=100)  # N < max_length: first 100 columns of E, F
    mask = ragged_mask(100, [100, 70])
    out = attn(q, k, v, key_padding_mask=mask)
    torch.testing.assert_close(out, linformer_reference(attn, q, k, v, mask), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attn(q, k, v), linformer_reference(attn, q, k, v, torch.ones_like(mask)),
                               atol=1e-5, rtol=1e-5)


def test_linformer_padded_keys_change_nothing():
    attn = av.build("linformer", heads=2, head_dim=16, max_length=128, k=32).eval()
    q, k, v = qkv(n=96)
    mask = torch.rand(2, 96) < 0.5
    out1 = attn(q, k, v, key_padding_mask=mask)
    out2 = attn(*perturb_padded(mask, q, k, v), key_padding_mask=mask)
    assert_real_close(out1, out2, mask, atol=1e-5, rtol=1e-5)
    # right padding == the real prefix alone (zero rows add nothing to E K, F V)
    rmask = ragged_mask(96, [60, 60])
    torch.testing.assert_close(attn(q, k, v, key_padding_mask=rmask)[..., :60, :],
                               attn(q[..., :60, :], k[..., :60, :], v[..., :60, :]), atol=1e-5, rtol=1e-5)


def test_linformer_seeded_init_and_too_long_input():
    a = av.build("linformer", heads=2, head_dim=16, max_length=64, k=8, seed=1)
    b = av.build("linformer", heads=2, head_dim=16, max_length=64, k=8, seed=1)
    torch.testing.assert_close(a.E, b.E)
    torch.testing.assert_close(a.F, b.F)
    assert not torch.equal(a.E, a.F)
    q, k, v = qkv(n=65)
    with pytest.raises(ValueError, match="max_length"):
        a(q, k, v)


# ---------------------------------------------------------------- nystrom

@pytest.mark.parametrize("n", [64, 50])  # landmarks == N, and landmarks > N (m = min(landmarks, N))
def test_nystrom_one_token_per_landmark_is_close_to_full(n):
    """With one token per landmark all three kernels equal the full softmax matrix A, so the output
    is A pinv(A) A V = A V up to the iterative pinv's error. That error shrinks with the iteration
    count (7th order once converging) but is amplified by cond(A) in fp32: with 20 iterations it is
    ~1e-5..3e-4 over 30 random draws of this shape, hence atol 2e-3 (6 iterations leave ~3e-2)."""
    attn = av.build("nystrom", heads=2, head_dim=16, max_length=128, landmarks=64,
                    pinv_iterations=20, conv_kernel=0).eval()
    q, k, v = qkv(n=n)
    mask = ragged_mask(n, [n, n - 20])
    out = attn(q, k, v, key_padding_mask=mask)
    assert_real_close(out, softmax_attention(q, k, v, mask), mask, atol=2e-3, rtol=0)


def test_nystrom_landmarks_ignore_padded_tokens():
    n, m = 96, 8  # segments of 12
    x = torch.randn(2, 2, n, 16)
    mask = torch.rand(2, n) < 0.5
    mask[1, 12:24] = False  # an empty segment
    land, empty = NystromAttention.landmarks_of(x, mask, m)
    for b in range(2):
        for s in range(m):
            seg = slice(12 * s, 12 * (s + 1))
            real = mask[b, seg]
            if real.any():
                torch.testing.assert_close(land[b, :, s], x[b, :, seg][:, real].mean(dim=1))
            else:
                assert empty[b, s] and (land[b, :, s] == 0).all()
    assert empty[1, 1]
    (x2,) = perturb_padded(mask, x)
    torch.testing.assert_close(NystromAttention.landmarks_of(x2, mask, m)[0], land)


def test_nystrom_padding_and_empty_landmarks_end_to_end():
    """N=100 (padded internally to 104), non-contiguous mask with an all-padded segment, conv on."""
    attn = av.build("nystrom", heads=2, head_dim=16, max_length=128, landmarks=8, conv_kernel=5).eval()
    q, k, v = qkv(n=100)
    mask = torch.rand(2, 100) < 0.7
    mask[0, 26:39] = False
    out1 = attn(q, k, v, key_padding_mask=mask)
    out2 = attn(*perturb_padded(mask, q, k, v), key_padding_mask=mask)
    assert_real_close(out1, out2, mask, atol=1e-5, rtol=1e-5)


def test_iterative_pinv_converges():
    a = torch.softmax(torch.randn(3, 8, 8) * 2, dim=-1)
    torch.testing.assert_close(iterative_pinv(a, 25), torch.linalg.pinv(a), atol=1e-3, rtol=1e-3)
