"""Every variant's reference path, on float64 inputs, is its method's definition to float64 rounding.

The definitions are written here, in float64, from the module's own parameters and layouts (a
projection, a block layout, a bucket count): quadratic normalised kernel attention for the
feature-map variants, masked softmax for the exact and sparse ones, the Nyström formula with the
same iterative pseudo-inverse, Linformer's projected softmax, the gated recurrence of gated RFA.
A reference path that upcasts with ``x.float()`` (a downcast for float64) lands at ~1e-7 to 1e-8
and fails; an at-least-fp32 upcast keeps float64 and agrees to ~1e-15.

Inputs span the scales trained models reach (score std up to 4), with padded keys, and, for the
``elu + 1`` map, q and k shifted far negative (-14 +- 0.5), where ``F.elu(x) + 1`` cancels.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import attention_variants as av

B, H, N, D = 2, 2, 24, 8
TOL = 1e-12


def rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert out.dtype == torch.float64, f"reference path returned {out.dtype} on float64 inputs"
    return float((out.detach() - ref).norm() / ref.norm())


def inputs(score_std: float = 1.0, shift: float = 0.0, seed: int = 0, n: int = N):
    """float64 q, k, v ``(B, H, n, D)`` whose scores q.k/sqrt(D) have std ~``score_std``, and a
    padding mask (row 1 padded from 2/3 of its length)."""
    g = torch.Generator().manual_seed(seed)
    s = math.sqrt(score_std)
    q, k = (torch.randn(B, H, n, D, generator=g, dtype=torch.float64) * s + shift for _ in range(2))
    v = torch.randn(B, H, n, D, generator=g, dtype=torch.float64)
    mask = torch.ones(B, n, dtype=torch.bool)
    mask[1, 2 * n // 3:] = False
    return q, k, v, mask


def masked_softmax(q, k, v, allowed):
    """softmax(q k^T / sqrt(d)) v over ``allowed (.., N, M)``; a row with nothing allowed gives 0."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~allowed, -math.inf)
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return probs @ v


def normalised(phi_q, phi_k, v, mask):
    """``sum_j phi(q_i).phi(k_j) v_j / sum_j phi(q_i).phi(k_j)`` over the real keys."""
    a = (phi_q @ phi_k.transpose(-1, -2)).masked_fill(~mask[:, None, None, :], 0.0)
    return (a @ v) / a.sum(-1, keepdim=True)


def causal_normalised(phi_q, phi_k, v, mask, rel_floor=0.0):
    """Causal: ``sum_{j <= i} phi(q_i).phi(k_j) v_j / sum_{j <= i} phi(q_i).phi(k_j)`` over the real keys,
    with RFA's relative floor ``rel_floor |phi(q_i)| sum_{j <= i} |phi(k_j)|`` when given; a row with
    no real key at or before it gives 0."""
    n = phi_q.shape[-2]
    allowed = torch.ones(n, n, dtype=torch.bool).tril() & mask[:, None, None, :]
    a = (phi_q @ phi_k.transpose(-1, -2)).masked_fill(~allowed, 0.0)
    den = a.sum(-1)
    if rel_floor:
        mass = (phi_k.norm(dim=-1)[..., None, :] * allowed).sum(-1) * phi_q.norm(dim=-1)
        den = torch.where(den >= 0, torch.maximum(den, rel_floor * mass), torch.minimum(den, -rel_floor * mass))
    den = torch.where(den == 0, torch.ones_like(den), den)
    return (a @ v) / den.unsqueeze(-1)


def floored(phi_q, phi_k, v, mask, rel_floor):
    """:func:`normalised` with RFA's relative floor (sign kept)."""
    a = (phi_q @ phi_k.transpose(-1, -2)).masked_fill(~mask[:, None, None, :], 0.0)
    den = a.sum(-1)
    mass = phi_q.norm(dim=-1) * (phi_k.norm(dim=-1) * mask[:, None, :]).sum(-1, keepdim=True)
    den = torch.where(den >= 0, torch.maximum(den, rel_floor * mass), torch.minimum(den, -rel_floor * mass))
    return (a @ v) / den.unsqueeze(-1)


def definition(phi_q, phi_k, v, mask, causal, rel_floor=0.0):
    if causal:
        return causal_normalised(phi_q, phi_k, v, mask, rel_floor)
    return floored(phi_q, phi_k, v, mask, rel_floor) if rel_floor else normalised(phi_q, phi_k, v, mask)


def real_queries(out, mask):
    """The outputs of real queries only (padded queries' outputs are the encoder's business)."""
    return out[mask[:, None, :, None].expand_as(out)]


def check(out, ref, mask):
    assert rel(real_queries(out, mask), real_queries(ref, mask)) < TOL


# ----------------------------------------------------------------------------- exact and sparse softmax

@pytest.mark.parametrize("score_std", [1.0, 4.0])
@pytest.mark.parametrize("name,knobs", [("full", {}), ("flash", {"backend": "auto"}), ("flash", {"backend": "math"}),
                                        ("local", {"window": N, "backend": "reference"})])
def test_exact_softmax(name, knobs, score_std):
    q, k, v, mask = inputs(score_std)
    out = av.build(name, heads=H, head_dim=D, max_length=N, **knobs)(q, k, v, key_padding_mask=mask)
    check(out, masked_softmax(q, k, v, mask[:, None, None, :]), mask)


@pytest.mark.parametrize("window", [0, 3, 7])
def test_local_band(window):
    q, k, v, mask = inputs(4.0)
    out = av.build("local", heads=H, head_dim=D, max_length=N, window=window, backend="reference")(
        q, k, v, key_padding_mask=mask)
    i = torch.arange(N)
    band = (i[:, None] - i[None, :]).abs() <= window
    check(out, masked_softmax(q, k, v, band & mask[:, None, None, :]), mask)


def test_bigbird_block_layout():
    n = 48
    q, k, v, mask = inputs(4.0, n=n)
    attn = av.build("bigbird", heads=H, head_dim=D, max_length=64, block_size=4, random_blocks=1,
                    backend="reference", seed=3)
    out = attn(q, k, v, key_padding_mask=mask)
    layout = attn.token_mask(n)[None]                                      # (1, H, N, N) the module's own
    check(out, masked_softmax(q, k, v, layout & mask[:, None, None, :]), mask)


def test_reformer_single_bucket_is_shared_qk_softmax():
    """One bucket, one chunk: shared-QK attention (keys = q / |q|) with self masked unless it is
    the only real key (Kitaev et al. 2020)."""
    q, _, v, mask = inputs(4.0)
    attn = av.build("reformer", heads=H, head_dim=D, max_length=32, bucket_size=32, n_buckets=1, n_hashes=2,
                    backend="reference").eval()
    out = attn(q, torch.zeros_like(q), v, key_padding_mask=mask)
    eye = torch.eye(N, dtype=torch.bool)
    others = (mask[:, None, :] & ~eye).any(-1)
    allowed = (~eye[None] | ~others[:, :, None])[:, None] & mask[:, None, None, :]
    check(out, masked_softmax(q, F.normalize(q, dim=-1), v, allowed), mask)


# ----------------------------------------------------------------------------- low rank

@pytest.mark.parametrize("share_kv", [False, True])
def test_linformer(share_kv):
    q, k, v, mask = inputs(4.0)
    attn = av.build("linformer", heads=H, head_dim=D, max_length=32, k=8, share_kv=share_kv, backend="reference")
    out = attn(q, k, v, key_padding_mask=mask)
    e = attn.E[:, :N].double()
    f = e if attn.F is None else attn.F[:, :N].double()
    keep = mask[:, None, :, None].double()
    k_proj, v_proj = e @ (k * keep), f @ (v * keep)
    check(out, masked_softmax(q, k_proj, v_proj, torch.ones(1, 1, N, 8, dtype=torch.bool)), mask)


def test_nystrom():
    """out = softmax(Q K~^T) pinv(softmax(Q~ K~^T)) softmax(Q~ K^T) V with segment-mean landmarks
    over the real tokens and the method's iterative pseudo-inverse (Xiong et al. 2021, Eq. 13). A
    segment with no real token gives no landmark: its column is left out of both softmaxes over
    landmarks, and its row of the landmark kernel is the identity's."""
    m, iterations = 6, 6
    q, k, v, mask = inputs(4.0)
    attn = av.build("nystrom", heads=H, head_dim=D, max_length=32, landmarks=m, pinv_iterations=iterations,
                    conv_kernel=0, backend="reference")
    out = attn(q, k, v, key_padding_mask=mask)
    keep = mask[:, None, :, None].double()
    counts = mask.double().reshape(B, m, N // m).sum(-1)

    empty = counts == 0                                                    # (B, m)

    def landmarks(x):
        return (x * keep).reshape(B, H, m, N // m, D).sum(-2) / counts.clamp(min=1)[:, None, :, None]

    q_l, k_l = landmarks(q), landmarks(k)

    def softmax(a, b):  # over the landmarks that exist
        return torch.softmax((a @ b.transpose(-1, -2) / math.sqrt(D)).masked_fill(empty[:, None, None, :], -math.inf), -1)

    k1, k2 = softmax(q, k_l), softmax(q_l, k_l)
    k2 = torch.where(empty[:, None, :, None], torch.eye(m, dtype=torch.float64), k2)
    k3 = torch.softmax((q_l @ k.transpose(-1, -2) / math.sqrt(D)).masked_fill(~mask[:, None, None, :], -math.inf), -1)
    eye = torch.eye(m, dtype=torch.float64)
    z = k2.transpose(-1, -2) / (k2.abs().sum(-2).amax(-1) * k2.abs().sum(-1).amax(-1))[..., None, None]
    for _ in range(iterations):
        kz = k2 @ z
        z = 0.25 * z @ (13 * eye - kz @ (15 * eye - kz @ (7 * eye - kz)))
    check(out, k1 @ (z @ (k3 @ (v * keep))), mask)


# ----------------------------------------------------------------------------- kernel (feature map) variants

def elu_plus_one(x):
    return torch.where(x > 0, x + 1, torch.exp(x))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("backend", ["reference", "fast", "auto"])
@pytest.mark.parametrize("shift", [0.0, -14.0])
def test_linear_elu(shift, backend, causal):
    """At a shift of -14 every feature is ~e^-14: ``F.elu(x) + 1`` in fp32 returned them with
    relative errors of ~1e-3 (and exact zeros below -16.6)."""
    q, k, v, mask = inputs(0.25 if shift else 4.0, shift=shift)
    out = av.build("linear", heads=H, head_dim=D, backend=backend, causal=causal, chunk_size=5)(
        q, k, v, key_padding_mask=mask)
    check(out, definition(elu_plus_one(q), elu_plus_one(k), v, mask, causal), mask)


def test_linear_elu_fp32_keeps_its_features_at_large_negative_inputs():
    """fp32, shift -17: the definition's features are e^-17 = 4e-8; the cancelling form gave exact 0
    (and 0/0 rows). Now fp32 rounding only."""
    q, k, v, mask = inputs(0.25, shift=-17.0)
    ref = normalised(elu_plus_one(q), elu_plus_one(k), v, mask)
    for backend in ("reference", "fast"):
        out = av.build("linear", heads=H, head_dim=D, backend=backend)(q.float(), k.float(), v.float(),
                                                                       key_padding_mask=mask)
        assert torch.isfinite(out).all()
        assert rel(real_queries(out.double(), mask), real_queries(ref, mask)) < 1e-5


def test_linear_elu_backward_is_the_derivative():
    from attention_variants.linear import elu_feature_map

    x = torch.tensor([-40.0, -17.0, -1.0, 0.0, 0.5, 3.0], dtype=torch.float64, requires_grad=True)
    elu_feature_map(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.where(x > 0, 1.0, torch.exp(x.detach())).double(), rtol=1e-15, atol=0)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("backend", ["reference", "fast"])
@pytest.mark.parametrize("kernel", ["softmax", "relu"])
@pytest.mark.parametrize("score_std", [1.0, 4.0])
def test_performer(kernel, score_std, backend, causal):
    q, k, v, mask = inputs(score_std)
    attn = av.build("performer", heads=H, head_dim=D, num_features=16, kernel=kernel, backend=backend,
                    causal=causal, chunk_size=5).eval()
    out = attn(q, k, v, key_padding_mask=mask)
    w = attn.projection.double()

    def features(x):
        x = x * D ** -0.25
        if kernel == "relu":
            return torch.relu(x @ w.T) + attn.config.kernel_eps
        return torch.exp(x @ w.T - x.square().sum(-1, keepdim=True) / 2)

    check(out, definition(features(q), features(k), v, mask, causal), mask)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("backend", ["reference", "fast"])
@pytest.mark.parametrize("normalize,score_std", [(True, 1.0), (True, 4.0), (False, 1.0), (False, 4.0)])
def test_random_feature(normalize, score_std, backend, causal):
    """With the relative normalizer floor in the definition (it is part of the estimator); with
    ``normalize`` the score scale is sigma^2 (the cosine is in [-1, 1]), else the inputs'."""
    q, k, v, mask = inputs(1.0 if normalize else score_std)
    attn = av.build("random_feature", heads=H, head_dim=D, num_features=16, normalize=normalize, backend=backend,
                    causal=causal, gate_chunk=5, sigma_init=math.sqrt(score_std) if normalize else 1.0).eval()
    out = attn(q, k, v, key_padding_mask=mask)
    w, sigma = attn.projection.double(), attn.sigma.double()[None, :, None, None]

    def features(x, is_query):
        x = F.normalize(x, dim=-1) if normalize else x * D ** -0.25
        proj = (x @ w.T) * sigma
        phi = torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)
        return phi if normalize or is_query else phi * torch.exp(sigma.square() * x.square().sum(-1, keepdim=True) / 2)

    check(out, definition(features(q, True), features(k, False), v, mask, causal, attn.config.normalizer_floor), mask)


def test_gated_random_feature_is_its_recurrence():
    """Gated RFA (Peng et al. 2021, Eq. 7): S_t = g_t S_{t-1} + (1 - g_t) phi(k_t) v_t^T,
    z_t = g_t z_{t-1} + (1 - g_t) phi(k_t), out_t = phi(q_t) S_t / phi(q_t) z_t; padded steps skipped."""
    q, k, v, mask = inputs(1.0)
    attn = av.build("random_feature", heads=H, head_dim=D, num_features=16, gate=True).eval()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        attn.gate_weight.copy_(torch.randn(attn.gate_weight.shape, generator=g) * 0.5)
        attn.gate_bias.copy_(torch.rand(attn.gate_bias.shape, generator=g) * 4 - 1)
    out = attn(q, k, v, key_padding_mask=mask)
    w, sigma = attn.projection.double(), attn.sigma.double()[None, :, None, None]
    phi = lambda x: torch.cat([torch.sin((F.normalize(x, dim=-1) @ w.T) * sigma),  # noqa: E731
                               torch.cos((F.normalize(x, dim=-1) @ w.T) * sigma)], dim=-1)
    gate = torch.sigmoid(torch.einsum("bhnd,hd->bhn", k, attn.gate_weight.double())
                         + attn.gate_bias.double()[None, :, None])
    pq, pk = phi(q), phi(k)
    s = torch.zeros(B, H, pk.shape[-1], D, dtype=torch.float64)
    z = torch.zeros(B, H, pk.shape[-1], dtype=torch.float64)
    ref = torch.zeros_like(v)
    for t in range(N):
        real = mask[:, t][:, None, None]
        gt = torch.where(real, gate[:, :, t, None], torch.ones(()))
        s = gt[..., None] * s + (1 - gt[..., None]) * pk[:, :, t, :, None] * v[:, :, t, None, :]
        z = gt * z + (1 - gt) * pk[:, :, t]
        ref[:, :, t] = (pq[:, :, t, :, None] * s).sum(-2) / (pq[:, :, t] * z).sum(-1, keepdim=True)
    check(out, ref, mask)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("backend", ["reference", "fast"])
@pytest.mark.parametrize("score_std", [1.0, 4.0])
@pytest.mark.parametrize("activation", ["softmax", "exp"])
def test_hedgehog(activation, score_std, backend, causal):
    q, k, v, mask = inputs(score_std)
    attn = av.build("hedgehog", heads=H, head_dim=D, activation=activation, backend=backend, causal=causal,
                    chunk_size=5).eval()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # off the identity, so the q and k maps differ
        for p in attn.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    out = attn(q, k, v, key_padding_mask=mask)

    def features(x, weight, bias):
        u = torch.einsum("bhnd,hdf->bhnf", x, weight.double()) + bias.double()[None, :, None]
        f = (lambda t: torch.softmax(t, -1)) if activation == "softmax" else torch.exp
        return torch.cat([f(u), f(-u)], dim=-1)

    check(out, definition(features(q, attn.q_weight, attn.q_bias), features(k, attn.k_weight, attn.k_bias), v, mask,
                          causal), mask)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("backend", ["reference", "fast"])
@pytest.mark.parametrize("score_std", [1.0, 4.0])
def test_taylor(score_std, backend, causal):
    """Based's 2nd-order Taylor kernel 1 + s + s^2 / 2 of the projected score s = qP.kP / sqrt(f)."""
    q, k, v, mask = inputs(score_std)
    attn = av.build("taylor", heads=H, head_dim=D, feature_dim=4, backend=backend, causal=causal, chunk_size=5).eval()
    out = attn(q, k, v, key_padding_mask=mask)
    p = attn.projection.double()
    pq, pk = (torch.einsum("bhnd,hdf->bhnf", x, p) for x in (q, k))
    s = pq @ pk.transpose(-1, -2) / math.sqrt(4)
    allowed = mask[:, None, None, :] & (torch.ones(N, N, dtype=torch.bool).tril() if causal else True)
    kernel = (1 + s + s * s / 2).masked_fill(~allowed, 0.0)
    check(out, kernel @ v / kernel.sum(-1, keepdim=True), mask)


def test_every_in_tree_variant_is_covered_here():
    covered = {"full", "flash", "local", "bigbird", "reformer", "linformer", "nystrom", "linear", "performer",
               "random_feature", "hedgehog", "taylor"}
    in_tree = {n for n in av.available() if av.get(n)[0].__module__.startswith("attention_variants.")}
    assert in_tree == covered
