"""Ours against the public implementations we compare speed with (scripts/peers.py): same algorithm,
same parameters -> the same function, to fp32 tolerance. Where the two make different choices, the
test pins the difference down and the variant's docstring says which choice is right and why.

Peers (test-only dependencies, pure Python, in pyproject's ``test`` extra): performer-pytorch
(FastAttention / softmax_kernel), reformer-pytorch (LSHAttention), linformer
(LinformerSelfAttention), nystrom-attention (NystromAttention). Each test skips with the reason when
its peer cannot be imported (performer-pytorch imports ``distutils``, which Python 3.12 dropped:
it needs setuptools installed). Both of our backends are checked (fp32 inputs, so ``auto`` would
pick ``reference`` on CPU; ``fast`` is forced).

Pinned differences (measured here, CPU fp32):
* performer-pytorch adds ``eps = 1e-4`` to the *stabilized* features: an absolute floor after an
  arbitrary rescaling, so its estimator is biased, by 23% (score std 1) to 98% (std 4) at head_dim 16
  and 64 features; with ``eps = 0`` it equals ours to 4e-7. Its padding zeroes the padded values but
  not the padded keys' features, so padded keys still count in the normalizer.
* reformer-pytorch sorts all hash rounds as one sequence: the first chunk of each round looks back
  into the previous round's last chunk; with one round it equals ours exactly. It hashes padded
  tokens with the real ones, so padded contents move real tokens' buckets and outputs.
* nystrom-attention scales its pseudo-inverse's initial guess by maxima over the whole batch and
  all heads (``torch.max`` without a dim), so one sequence's output depends on the others in the
  batch; with one sequence and one head it equals ours.
* linformer (lucidrains) has no padding mask at all.
"""
import math
import warnings

import pytest
import torch

import attention_variants as av
from conftest import rel

BACKENDS = ["reference", "fast"]
FP32_TOL = 1e-5


def peer_module(name: str):
    with warnings.catch_warnings():  # deprecation warnings of the peers' own imports
        warnings.simplefilter("ignore")
        return pytest.importorskip(name, reason=f"peer package {name!r} not importable")


# ------------------------------------------------------------------------------ performer

def favor_definition(q, k, v, w):
    """FAVOR+ in float64 without stabilizers: exp(x W^T - |x|^2/2) / sqrt(m), x = q d^-1/4."""
    d = q.shape[-1]

    def phi(x):
        x = x.double() * d ** -0.25
        return torch.exp(x @ w.double().T - x.square().sum(-1, keepdim=True) / 2) / math.sqrt(w.shape[0])

    a = phi(q) @ phi(k).transpose(-1, -2)
    return (a @ v.double()) / a.sum(-1, keepdim=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("score_std", [1.0, 4.0])
def test_performer_equals_performer_pytorch_without_its_eps(backend, score_std):
    pp = peer_module("performer_pytorch.performer_pytorch")
    attn = av.build("performer", heads=2, head_dim=16, num_features=64, max_length=128, backend=backend).eval()
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 128, 16, generator=g) * math.sqrt(score_std) for _ in range(3))
    w = attn.projection                                              # the same projection
    theirs = pp.linear_attention(pp.softmax_kernel(q, projection_matrix=w, is_query=True, eps=0.0),
                                 pp.softmax_kernel(k, projection_matrix=w, is_query=False, eps=0.0), v)
    ours = attn(q, k, v)
    assert rel(ours, theirs) < FP32_TOL
    # pinned: their default eps = 1e-4 after the stabilizer biases the estimate (ours: the definition)
    fast_attention = pp.FastAttention(16, 64)
    fast_attention.projection_matrix.copy_(w)
    definition = favor_definition(q, k, v, w)
    assert rel(ours, definition) < FP32_TOL
    assert rel(fast_attention(q, k, v), definition) > 0.1            # measured 0.23 (std 1), 0.98 (std 4)


def test_performer_pytorch_padded_keys_still_count():
    """Pinned: performer-pytorch's SelfAttention zeroes padded values but keeps padded keys in the
    normalizer, so a padded token's contents change real outputs; ours does not."""
    pp = peer_module("performer_pytorch.performer_pytorch")
    torch.manual_seed(0)
    peer = pp.SelfAttention(dim=32, heads=2, dim_head=16, nb_features=64).eval()
    ours = av.build("performer", heads=2, head_dim=16, num_features=64, max_length=40, backend="fast").eval()
    peer.fast_attention.projection_matrix.copy_(ours.projection)
    x = torch.randn(1, 40, 32)
    mask = torch.ones(1, 40, dtype=torch.bool)
    mask[0, 30:] = False
    x2 = x.clone()
    x2[0, 30:] = torch.randn(10, 32) * 3

    def ours_out(x):
        q, k, v = (t(x).view(1, 40, 2, 16).transpose(1, 2) for t in (peer.to_q, peer.to_k, peer.to_v))
        return ours(q, k, v, key_padding_mask=mask)[0, :, :30]

    assert rel(peer(x2, mask=mask)[0, :30], peer(x, mask=mask)[0, :30]) > 1e-3
    torch.testing.assert_close(ours_out(x2), ours_out(x))


# ------------------------------------------------------------------------------ reformer

def lsh_pair(n_hashes, n=128, d=16, bucket=16, backend="reference", seed=7):
    """reformer-pytorch's LSHAttention and ours with the same rotations: the peer draws them with
    ``torch.randn((1, d, n_hashes, n_buckets // 2))`` on each call; ours take that draw."""
    rp = peer_module("reformer_pytorch")
    peer = rp.LSHAttention(bucket_size=bucket, n_hashes=n_hashes, causal=False).eval()
    ours = av.build("reformer", heads=2, head_dim=d, max_length=n, bucket_size=bucket, n_hashes=n_hashes,
                    backend=backend).eval()
    torch.manual_seed(seed)
    rotations = torch.randn(1, d, n_hashes, n // bucket // 2)
    with torch.no_grad():
        ours.rotations.copy_(rotations[0])

    def run_peer(q, v, input_mask=None):
        b, h, n_, d_ = q.shape
        torch.manual_seed(seed)                                    # the same draw inside the peer
        kwargs = {} if input_mask is None else {"input_mask": input_mask.repeat_interleave(h, 0)}
        out, _, _ = peer(q.reshape(b * h, n_, d_), v.reshape(b * h, n_, d_), **kwargs)
        return out.view(b, h, n_, d_)

    return ours, run_peer


@pytest.mark.parametrize("backend", BACKENDS)
def test_reformer_equals_reformer_pytorch_with_one_round(backend):
    ours, run_peer = lsh_pair(1, backend=backend)
    g = torch.Generator().manual_seed(1)
    q, v = (torch.randn(2, 2, 128, 16, generator=g) for _ in range(2))
    assert rel(ours(q, q, v), run_peer(q, v)) < FP32_TOL


@pytest.mark.parametrize("backend", BACKENDS)
def test_reformer_pytorch_rounds_look_back_across_rounds(backend):
    """Pinned, two rounds: equal wherever no round puts the query in its round's first chunk; where
    one does, reformer-pytorch's look-back reaches the previous round's last chunk (ours: this
    round's last chunk, see attention_variants/reformer.py)."""
    ours, run_peer = lsh_pair(2, backend=backend)
    g = torch.Generator().manual_seed(2)
    q, v = (torch.randn(1, 2, 128, 16, generator=g) for _ in range(2))
    out, theirs = ours(q, q, v), run_peer(q, v)
    buckets = ours.hash(q, ours.n_buckets_for(128))                 # (B, H, R, N): the same buckets
    order = (buckets * 128 + torch.arange(128)).argsort(dim=-1)
    first_chunk = torch.zeros(1, 2, 128, dtype=torch.bool)
    for r in range(2):
        first_chunk.scatter_(-1, order[:, :, r, :16], True)
    same = ~first_chunk
    assert same.sum() > 64
    torch.testing.assert_close(out[same], theirs[same], atol=1e-5, rtol=1e-5)
    assert (out[first_chunk] - theirs[first_chunk]).abs().amax() > 1e-3


def test_reformer_pytorch_hashes_padded_tokens():
    """Pinned: with a padding mask, reformer-pytorch's real outputs depend on the padded tokens'
    contents (they are hashed and sorted with the real ones); ours do not."""
    ours, run_peer = lsh_pair(1)
    g = torch.Generator().manual_seed(3)
    q, v = (torch.randn(1, 2, 128, 16, generator=g) for _ in range(2))
    mask = torch.ones(1, 128, dtype=torch.bool)
    mask[0, 96:] = False
    q2 = q.clone()
    q2[..., 96:, :] = torch.randn(1, 2, 32, 16, generator=g) * 3
    real = mask[:, None, :, None].expand_as(q)
    assert rel(run_peer(q2, v, mask)[real], run_peer(q, v, mask)[real]) > 1e-3
    torch.testing.assert_close(ours(q2, q2, v, key_padding_mask=mask)[real], ours(q, q, v, key_padding_mask=mask)[real])


# ------------------------------------------------------------------------------ linformer

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("share_kv", [False, True])
@pytest.mark.parametrize("n", [64, 50])                               # N = max_length and N < max_length
def test_linformer_equals_lucidrains_linformer(backend, share_kv, n):
    lf = peer_module("linformer")
    torch.manual_seed(0)
    peer = lf.LinformerSelfAttention(dim=32, seq_len=64, k=16, heads=2, share_kv=share_kv).eval()
    ours = av.build("linformer", heads=2, head_dim=16, max_length=64, k=16, share_kv=share_kv, backend=backend)
    with torch.no_grad():                                             # E = proj_k^T, F = proj_v^T
        ours.E.copy_(peer.proj_k.T)
        if not share_kv:
            ours.F.copy_(peer.proj_v.T)
    x = torch.randn(2, n, 32)
    heads = lambda t: t.view(2, n, 2, 16).transpose(1, 2)             # noqa: E731
    q, k = heads(peer.to_q(x)), heads(peer.to_k(x))
    v = k if share_kv else heads(peer.to_v(x))
    out = ours(q, k, v).transpose(1, 2).reshape(2, n, 32)
    assert rel(peer.to_out(out), peer(x)) < FP32_TOL


# ------------------------------------------------------------------------------ nystrom

def nystrom_pair(heads, backend, landmarks=8, iters=6, conv=5):
    na = peer_module("nystrom_attention")
    torch.manual_seed(0)
    peer = na.NystromAttention(dim=16 * heads, dim_head=16, heads=heads, num_landmarks=landmarks,
                               pinv_iterations=iters, residual=True, residual_conv_kernel=conv).eval()
    ours = av.build("nystrom", heads=heads, head_dim=16, max_length=128, landmarks=landmarks,
                    pinv_iterations=iters, conv_kernel=conv, backend=backend).eval()
    with torch.no_grad():
        ours.conv.weight.copy_(peer.res_conv.weight)

    def run_ours(x, mask=None):
        b, n, _ = x.shape
        q, k, v = (t.view(b, n, heads, 16).transpose(1, 2) for t in peer.to_qkv(x).chunk(3, dim=-1))
        out = ours(q, k, v, key_padding_mask=mask)
        return peer.to_out(out.transpose(1, 2).reshape(b, n, 16 * heads))

    return peer, run_ours


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("padded", [False, True])
def test_nystrom_equals_nystrom_attention_one_head(backend, padded):
    """One sequence and one head (where the peer's batch-wide pseudo-inverse scaling is per matrix);
    N a multiple of the landmarks (the peer pads at the front, ours at the end); with padding that
    leaves no segment empty."""
    peer, run_ours = nystrom_pair(1, backend)
    x = torch.randn(1, 96, 16)
    mask = None
    if padded:
        mask = torch.ones(1, 96, dtype=torch.bool)
        mask[0, 5:9] = mask[0, 80:84] = False
    theirs, ours = peer(x, mask=mask), run_ours(x, mask)
    real = slice(None) if mask is None else mask[0]
    assert rel(ours[:, real], theirs[:, real]) < FP32_TOL


def test_nystrom_attention_batch_dependence():
    """Pinned: the peer's initial pseudo-inverse scale is a maximum over the whole batch and all
    heads, so changing sequence 1 changes sequence 0's output; ours scales each matrix by its own
    norms (the per-matrix convergence condition of the iteration) and sequence 0 stays put."""
    peer, run_ours = nystrom_pair(2, "reference")
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 64, 32, generator=g)
    x2 = x.clone()
    x2[1] = torch.randn(64, 32, generator=g) * 4
    assert rel(peer(x2)[0], peer(x)[0]) > 1e-4
    torch.testing.assert_close(run_ours(x2)[0], run_ours(x)[0])
