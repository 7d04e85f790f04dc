"""The fast paths of the softmax-type and low-rank variants (issue 38) against their definitions.

* Every fast path ``auto`` runs on the CPU (full ``fast``, flash's CPU flash kernel with a mask, local /
  bigbird ``sdpa``, reformer / linformer / nystrom ``fast``) is, on float64 inputs, its method's
  definition to float64 rounding, in values and in gradients, at score std 1 and 4, with padding
  (non-causal and causal).
* ``auto`` on the CPU runs that fast path (``last_backend``), and it equals the reference path in fp32.
* flash on the CPU with a padding mask keeps the fused kernel, equals ``math`` to fp32 tolerance on padded
  rows and on a sequence whose keys are all padding, and never returns NaN.
* bf16 inputs: each fast path agrees with the reference path within bf16 tolerance.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import attention_variants as av
from attention_variants.full import causal_softmax_attention, materialized_attention, softmax_attention
from attention_variants.local import local_attention_fused, local_attention_reference

B, H, D = 2, 2, 8
TOL = 1e-12


def inputs(n: int, score_std: float = 1.0, seed: int = 0, dtype=torch.float64, kind: str = "right"):
    """q, k, v ``(B, H, n, D)`` with scores of std ~``score_std`` and a padding mask of ``kind``:
    ``none``, ``right`` (row 1 padded from 2/3 of its length), ``left`` (row 1's first 5 positions)."""
    g = torch.Generator().manual_seed(seed)
    s = math.sqrt(score_std)
    q, k = (torch.randn(B, H, n, D, generator=g, dtype=torch.float64) * s for _ in range(2))
    v = torch.randn(B, H, n, D, generator=g, dtype=torch.float64)
    mask = torch.ones(B, n, dtype=torch.bool)
    if kind == "right":
        mask[1, 2 * n // 3:] = False
    elif kind == "left":
        mask[1, :5] = False
    q, k, v = (t.to(dtype) for t in (q, k, v))
    return q, k, v, (None if kind == "none" else mask)


def masked_softmax(q, k, v, allowed):
    """The definition: softmax(q k^T / sqrt(d)) v over ``allowed``; a row with nothing allowed gives 0."""
    scores = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).masked_fill(~allowed, -math.inf)
    return torch.softmax(scores, dim=-1).nan_to_num(0.0) @ v


def with_grads(fn, q, k, v, grad_seed=9):
    """``fn(q, k, v)`` and its gradients w.r.t. q, k, v for a fixed random output gradient."""
    ins = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = fn(*ins)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=out.dtype)
    grads = torch.autograd.grad(out, ins, g, allow_unused=True)
    return out.detach(), grads


def rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def assert_same_function(fn, ref, q, k, v, rows=None, tol=TOL):
    """Values (on ``rows``: a bool mask of the output, None = all) and gradients of ``fn`` and ``ref``."""
    out, grads = with_grads(fn, q, k, v)
    ref_out, ref_grads = with_grads(ref, q, k, v)
    rows = torch.ones_like(out, dtype=torch.bool) if rows is None else rows.expand_as(out)
    assert torch.isfinite(out).all()
    assert rel(out[rows], ref_out[rows]) < tol
    for g, rg, name in zip(grads, ref_grads, "qkv"):
        if rg is None:
            assert g is None or (g == 0).all()
            continue
        err = float((g - rg).norm() / max(float(rg.norm()), 1.0))   # floor 1: a gradient that is exactly 0
        assert err < tol, f"gradient into {name}: {err:.2e}"


def real_rows(mask, n):
    return torch.ones(1, 1, n, 1, dtype=torch.bool) if mask is None else mask[:, None, :, None]


def causal_allowed(n, mask):
    allowed = torch.ones(n, n, dtype=torch.bool).tril()[None, None]
    return allowed if mask is None else allowed & mask[:, None, None, :]


# ----------------------------------------------------------------------------- full and flash

@pytest.mark.parametrize("kind", ["none", "right", "left"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("score_std", [1.0, 4.0])
def test_full_fast_is_masked_softmax_in_float64(score_std, causal, kind, monkeypatch):
    """Blocked (a block smaller than one head's scores, so both block shapes run) and unblocked."""
    import attention_variants.full as full

    n = 23
    q, k, v, mask = inputs(n, score_std, kind=kind)
    allowed = causal_allowed(n, mask) if causal else (torch.ones(1, 1, n, n, dtype=torch.bool) if mask is None
                                                      else mask[:, None, None, :].expand(B, 1, n, n))
    ref = lambda a, b, c: masked_softmax(a, b, c, allowed)  # noqa: E731
    for block in (full.BLOCK_ELEMENTS, 3 * n, 5 * n * n):
        monkeypatch.setattr(full, "BLOCK_ELEMENTS", block)
        assert_same_function(lambda a, b, c: materialized_attention(a, b, c, mask, causal), ref, q, k, v)


def test_full_auto_is_fast_on_cpu_and_equals_reference_including_an_all_padded_sequence():
    """The reference gives a sequence whose keys are all padding the mean of its values (uniform
    probabilities) and no gradient into its scores; the fast path the same."""
    q, k, v, mask = inputs(19, 4.0, kind="right")
    mask[0] = False
    attn = av.build("full", heads=H, head_dim=D)
    ref = av.build("full", heads=H, head_dim=D, backend="reference")
    assert_same_function(lambda a, b, c: attn(a, b, c, mask), lambda a, b, c: ref(a, b, c, mask), q, k, v)
    assert attn.last_path == "fast" and ref.last_path == "reference"
    assert getattr(attn, "last_backend", None) is None          # materialized either way (lra.timing reads None)
    out = attn(q.float(), k.float(), v.float(), mask)
    torch.testing.assert_close(out, ref(q.float(), k.float(), v.float(), mask), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[0], v[0].float().mean(dim=-2, keepdim=True).expand_as(out[0]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["auto", "flash"])
def test_flash_keeps_the_cpu_flash_kernel_under_a_padding_mask(backend):
    """Issue 38 item 1: on the CPU, ``auto`` and ``backend=flash`` run the fused flash kernel with the
    mask; it equals ``math`` to fp32 tolerance on every row, padded ones included, and a sequence whose
    keys are all padding gets 0 (no NaN), in values and gradients."""
    q, k, v, mask = inputs(40, 4.0, dtype=torch.float32, kind="right")
    mask[0] = False                                                     # every key of sequence 0 is padding
    flash = av.build("flash", heads=H, head_dim=D, backend=backend)
    math_ = av.build("flash", heads=H, head_dim=D, backend="math")
    out, grads = with_grads(lambda a, b, c: flash(a, b, c, mask), q, k, v)
    assert flash.last_backend == "flash"
    ref, ref_grads = with_grads(lambda a, b, c: math_(a, b, c, mask), q, k, v)
    assert math_.last_backend == "math"
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)
    assert (out[0] == 0).all()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)          # padded rows included
    for g, rg in zip(grads, ref_grads):
        torch.testing.assert_close(g, rg, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["none", "right", "left"])
@pytest.mark.parametrize("backend", ["auto", "flash", "math"])
def test_flash_causal_is_masked_softmax_in_float64_with_gradients(backend, kind):
    n = 29
    q, k, v, mask = inputs(n, 4.0, kind=kind)
    attn = av.build("flash", heads=H, head_dim=D, causal=True, backend=backend)
    assert_same_function(lambda a, b, c: attn(a, b, c, mask),
                         lambda a, b, c: masked_softmax(a, b, c, causal_allowed(n, mask)), q, k, v)
    assert attn.last_backend == ("flash" if backend == "auto" else backend)


def test_flash_decode_equals_causal_forward_and_state_is_the_kv_cache():
    attn = av.build("flash", heads=H, head_dim=D, causal=True).eval()
    q, k, v, _ = inputs(21, dtype=torch.float32, kind="none")
    q, k, v = q[:1], k[:1], v[:1]
    state = attn.decode_init(1, q.device, q.dtype)
    outs = []
    for t in range(q.shape[-2]):
        out_t, state = attn.decode_step(q[..., t:t + 1, :], k[..., t:t + 1, :], v[..., t:t + 1, :], state)
        outs.append(out_t)
    torch.testing.assert_close(torch.cat(outs, dim=-2), attn(q, k, v), rtol=1e-5, atol=1e-6)
    assert state.length == 21
    assert attn.decode_state_bytes(21, 2) == (2 * 21 * H * D * 2, attn.decode_state_bytes(21, 2)[1])


# ----------------------------------------------------------------------------- local

LOCAL = [(37, 0), (37, 3), (50, 5), (64, 16), (37, 40), (100, 7)]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n,window", LOCAL)
def test_local_sdpa_is_the_band_definition_in_float64(n, window, causal):
    """Dense and blocked (several block sizes, one not dividing N and one below the window)."""
    i = torch.arange(n)
    dist = i[:, None] - i[None, :]
    band = ((dist >= 0) & (dist <= window)) if causal else dist.abs() <= window
    for kind, score_std in (("right", 4.0), ("left", 1.0), ("none", 4.0)):
        q, k, v, mask = inputs(n, score_std, kind=kind)
        allowed = band[None, None] if mask is None else band[None, None] & mask[:, None, None, :]
        ref = lambda a, b, c: masked_softmax(a, b, c, allowed)  # noqa: E731
        for block in (-1, None, 4, 7, 16):
            assert_same_function(lambda a, b, c: local_attention_fused(a, b, c, window, mask, causal, block=block),
                                 ref, q, k, v)
        assert_same_function(lambda a, b, c: local_attention_reference(a, b, c, window, mask, causal), ref, q, k, v)


@pytest.mark.parametrize("causal", [False, True])
def test_local_auto_runs_sdpa_on_cpu_and_equals_reference_in_fp32(causal):
    q, k, v, mask = inputs(70, 4.0, dtype=torch.float32, kind="left")
    for window in (3, 20, 80):
        attn = av.build("local", heads=H, head_dim=D, window=window, causal=causal)
        ref = av.build("local", heads=H, head_dim=D, window=window, causal=causal, backend="reference")
        out = attn(q, k, v, mask)
        assert attn.last_backend == "sdpa"
        torch.testing.assert_close(out, ref(q, k, v, mask), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("window", [0, 1, 5])
def test_local_decode_keeps_only_the_window_and_equals_the_causal_forward(window):
    attn = av.build("local", heads=H, head_dim=D, window=window, causal=True).eval()
    q, k, v, _ = inputs(23, dtype=torch.float32, kind="none")
    q, k, v = q[:1], k[:1], v[:1]
    state = attn.decode_init(1, q.device, q.dtype)
    outs = []
    for t in range(q.shape[-2]):
        out_t, state = attn.decode_step(q[..., t:t + 1, :], k[..., t:t + 1, :], v[..., t:t + 1, :], state)
        outs.append(out_t)
        assert state.keys.shape[-2] <= max(16, 2 * (window + 1))                # bounded buffers
    torch.testing.assert_close(torch.cat(outs, dim=-2), attn(q, k, v), rtol=1e-5, atol=1e-6)
    with pytest.raises(NotImplementedError, match="causal"):
        av.build("local", heads=H, head_dim=D, window=window).decode_init(1, q.device, q.dtype)


# ----------------------------------------------------------------------------- bigbird

BIGBIRD = [
    (32, {}),                                                          # every block selected
    (50, {}),                                                          # 13 blocks, the last one partial
    (61, {"block_size": 3, "window_blocks": 2, "global_blocks": 3, "random_blocks": 2}),
    (45, {"global_blocks": 0, "random_blocks": 0, "window_blocks": 1}),  # block-diagonal, no global rows
    (57, {"global_blocks": 1, "random_blocks": 1, "window_blocks": 5}),
]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n,knobs", BIGBIRD)
def test_bigbird_sdpa_is_the_block_layout_definition_in_float64(n, knobs, causal):
    cfg = {"heads": H, "head_dim": D, "max_length": 128, "block_size": 4, "seed": 3, "causal": causal, **knobs}
    fused = av.build("bigbird", backend="sdpa", **cfg)
    ref = av.build("bigbird", backend="reference", **cfg)
    layout = fused.token_mask(n)[None]                                   # (1, H, N, N), the module's own
    if causal:
        assert not (layout & ~torch.ones(n, n, dtype=torch.bool).tril()).any()
    for kind, score_std in (("right", 4.0), ("left", 1.0), ("none", 4.0)):
        q, k, v, mask = inputs(n, score_std, kind=kind)
        allowed = layout if mask is None else layout & mask[:, None, None, :]
        definition = lambda a, b, c: masked_softmax(a, b, c, allowed)  # noqa: E731
        assert_same_function(lambda a, b, c: fused(a, b, c, mask), definition, q, k, v)
        assert_same_function(lambda a, b, c: ref(a, b, c, mask), definition, q, k, v)


def test_bigbird_causal_layout_is_the_decoder_pattern():
    """Sliding blocks look back only, the global blocks are the first ones, random blocks come from
    the past, and the rows before any random candidate exists pick none."""
    attn = av.build("bigbird", heads=H, head_dim=D, max_length=128, block_size=4, causal=True, seed=2)
    nb, wb, g = 32, 3, 2
    layout = attn.block_layout(nb)
    i = torch.arange(nb)
    assert not (layout & ~torch.ones(nb, nb, dtype=torch.bool).tril()).any()            # the past only
    assert layout[:, :, :g][:, g:].all()                                                 # first g blocks global
    assert layout[:, i[g:], i[g:]].all() and layout[:, i[g:], i[g:] - 1].all() and layout[:, i[g:], i[g:] - 2].all()
    counts = layout[:, g + wb + 3:].sum(-1)                    # rows with >= 3 candidates: window + global + random
    assert (counts == wb + g + 3).all()
    assert not layout[0].equal(layout[1])
    index, valid = attn.block_slots(nb)
    rows = torch.arange(g, nb)[:, None]
    assert (index[valid] <= rows.expand_as(index[0])[None].expand_as(index)[valid]).all()


@pytest.mark.parametrize("causal", [False, True])
def test_bigbird_auto_runs_sdpa_on_cpu_and_equals_reference_in_fp32(causal):
    for n, knobs in BIGBIRD:
        cfg = {"heads": H, "head_dim": D, "max_length": 128, "block_size": 4, "causal": causal, **knobs}
        attn, ref = av.build("bigbird", **cfg), av.build("bigbird", backend="reference", **cfg)
        q, k, v, mask = inputs(n, 4.0, dtype=torch.float32, kind="left")
        out = attn(q, k, v, mask)
        assert attn.last_backend == "sdpa"
        torch.testing.assert_close(out, ref(q, k, v, mask), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- reformer

REFORMER = [
    (64, {"bucket_size": 16, "n_hashes": 2}),
    (100, {"bucket_size": 16, "n_hashes": 3, "attend_across_buckets": False}),
    (48, {"bucket_size": 64, "n_hashes": 2}),                           # one chunk
    (37, {"bucket_size": 8, "n_hashes": 1, "n_buckets": 2}),
]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n,knobs", REFORMER)
def test_reformer_fast_is_the_reference_in_float64(n, knobs, causal, monkeypatch):
    """The CPU's blocked window attention (several block sizes) and the CUDA path's (run eagerly here)
    are the reference path's function in float64, values of real queries (causal: every query) and
    gradients; the reference is the method's definition (tests/variants/test_float64_definitions.py)."""
    import attention_variants.reformer as reformer

    cfg = {"heads": H, "head_dim": D, "max_length": 128, "causal": causal, **knobs}
    ref = av.build("reformer", backend="reference", **cfg)
    fast = av.build("reformer", backend="fast", **cfg)
    for kind, score_std in (("right", 4.0), ("left", 1.0), ("none", 4.0)):
        q, k, v, mask = inputs(n, score_std, kind=kind)
        rows = None if causal else real_rows(mask, n)
        for impl, block in ((reformer._BlockedLookBack, 1 << 20), (reformer._BlockedLookBack, 300),
                            (reformer._LookBackAttention, None)):
            monkeypatch.setattr(reformer, "_BlockedLookBack", impl)
            if block:
                monkeypatch.setattr(reformer, "BLOCK_ELEMENTS", block)
            grad_mask = 1.0 if mask is None or causal else mask[:, None, :, None]
            assert_same_function(lambda a, b, c: fast(a, b, c, mask) * grad_mask,
                                 lambda a, b, c: ref(a, b, c, mask) * grad_mask, q, k, v, rows=rows)


def causal_lsh_definition(attn, q, v, mask):
    """Causal LSH written densely from the module's buckets: in each round a query attends the keys of
    its own bucket whose rank in the bucket (position order) lies in its chunk or the previous one
    (chunks of ``bucket_size`` per bucket), at or before its position; itself only when it has no
    other such key; a padded key never; rounds combined by softmax over their log-sum-exps."""
    b, h, n, d = q.shape
    chunk = attn.config.bucket_size
    n_pad = -(-n // chunk) * chunk
    qp, vp = F.pad(q, (0, 0, 0, n_pad - n)), F.pad(v, (0, 0, 0, n_pad - n))
    real = F.pad(torch.ones(b, n, dtype=torch.bool) if mask is None else mask, (0, n_pad - n), value=False)
    n_buckets = attn.n_buckets_for(n_pad)
    buckets = attn.hash(qp, n_buckets).masked_fill(~real[:, None, None, :], n_buckets)   # (B, H, R, Np)
    same = buckets[..., :, None] == buckets[..., None, :]
    earlier = torch.ones(n_pad, n_pad, dtype=torch.bool).tril(-1)
    rank = (same & earlier).sum(-1)                                    # same-bucket tokens before it
    chunk_of = rank // chunk
    i = torch.arange(n_pad)
    allowed = (same & (chunk_of[..., None, :] >= chunk_of[..., :, None] - 1) & (i[None, :] <= i[:, None])
               & real[:, None, None, None, :])
    keys = F.normalize(qp, dim=-1)
    scores = (qp @ keys.transpose(-1, -2))[:, :, None] / math.sqrt(d)             # (B, H, 1, Np, Np)
    scores = scores.masked_fill(torch.eye(n_pad, dtype=torch.bool), -1e5).masked_fill(~allowed, -math.inf)
    lse = torch.logsumexp(scores, dim=-1)                                          # (B, H, R, Np)
    out = torch.softmax(scores, dim=-1).nan_to_num(0.0) @ vp[:, :, None]
    weights = torch.softmax(lse.nan_to_num(neginf=-1e300), dim=2)
    out = (out * weights[..., None]).sum(2) * allowed.any(-1).any(2)[..., None]
    return out[..., :n, :]


@pytest.mark.parametrize("n,knobs", REFORMER)
def test_reformer_causal_is_per_bucket_chunked_lsh_in_float64(n, knobs):
    cfg = {"heads": H, "head_dim": D, "max_length": 128, "causal": True, **knobs}
    for backend in ("reference", "fast"):
        attn = av.build("reformer", backend=backend, **cfg)
        for kind in ("right", "left", "none"):
            q, k, v, mask = inputs(n, 4.0, kind=kind)
            out = attn(q, k, v, mask)
            assert rel(out, causal_lsh_definition(attn, q, v, mask)) < TOL


def test_reformer_causal_outputs_do_not_depend_on_future_buckets():
    """The paper's global chunks would let a future token's bucket move a past query's chunk; here a
    change of every token after t (their buckets included) changes no output at <= t, for many t."""
    attn = av.build("reformer", heads=H, head_dim=D, max_length=128, bucket_size=4, n_hashes=2, causal=True)
    q, k, v, mask = inputs(64, 4.0, dtype=torch.float32, kind="left")
    out = attn(q, k, v, mask)
    g = torch.Generator().manual_seed(3)
    for t in range(0, 64, 5):
        q2, v2 = q.clone(), v.clone()
        q2[..., t + 1:, :] = torch.randn(q2[..., t + 1:, :].shape, generator=g) * 3
        v2[..., t + 1:, :] = torch.randn(v2[..., t + 1:, :].shape, generator=g)
        assert torch.equal(attn(q2, k, v2, mask)[..., : t + 1, :], out[..., : t + 1, :])


def test_reformer_auto_is_fast_and_equals_reference_in_fp32():
    for n, knobs in REFORMER:
        cfg = {"heads": H, "head_dim": D, "max_length": 128, **knobs}
        attn, ref = av.build("reformer", **cfg).eval(), av.build("reformer", backend="reference", **cfg).eval()
        q, k, v, mask = inputs(n, 4.0, dtype=torch.float32, kind="right")
        out = attn(q, k, v, mask)
        assert attn.last_backend == "fast"
        rows = real_rows(mask, n).expand_as(out)
        torch.testing.assert_close(out[rows], ref(q, k, v, mask)[rows], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- linformer and nystrom

@pytest.mark.parametrize("score_std", [1.0, 4.0])
@pytest.mark.parametrize("share_kv", [False, True])
def test_linformer_fast_is_its_definition_in_float64(share_kv, score_std):
    n = 24
    q, k, v, mask = inputs(n, score_std)
    attn = av.build("linformer", heads=H, head_dim=D, max_length=32, k=8, share_kv=share_kv)
    e = attn.E[:, :n].detach().double()
    f = e if attn.F is None else attn.F[:, :n].detach().double()

    def definition(a, b, c):
        keep = mask[:, None, :, None].double()
        return masked_softmax(a, e @ (b * keep), f @ (c * keep), torch.ones(1, 1, n, 8, dtype=torch.bool))

    assert_same_function(lambda a, b, c: attn(a, b, c, mask), definition, q, k, v, rows=real_rows(mask, n))
    assert attn.last_backend == "fast"


@pytest.mark.parametrize("score_std", [1.0, 4.0])
@pytest.mark.parametrize("conv_kernel", [0, 5])
def test_nystrom_fast_is_the_reference_in_float64(conv_kernel, score_std):
    """The reference path is the Nyström definition (tests/variants/test_float64_definitions.py)."""
    n = 24
    q, k, v, mask = inputs(n, score_std)
    cfg = {"heads": H, "head_dim": D, "max_length": 32, "landmarks": 6, "conv_kernel": conv_kernel}
    ref = av.build("nystrom", backend="reference", **cfg)
    attn = av.build("nystrom", **cfg)
    attn.load_state_dict(ref.state_dict())
    attn.double(), ref.double()
    grad_mask = mask[:, None, :, None]
    assert_same_function(lambda a, b, c: attn(a, b, c, mask) * grad_mask, lambda a, b, c: ref(a, b, c, mask) * grad_mask,
                         q, k, v, tol=1e-10)
    assert attn.last_backend == "fast"


def test_linformer_and_nystrom_refuse_causal_with_their_reason():
    for name, why in (("linformer", "mixes all positions"), ("nystrom", "landmarks")):
        with pytest.raises(ValueError, match="causal") as err:
            av.build(name, heads=H, head_dim=D, causal=True)
        assert why in str(err.value)
        size, what = av.build(name, heads=H, head_dim=D).decode_state_bytes(100)
        assert size is None and "not causal" in what


# ----------------------------------------------------------------------------- bf16

BF16_CASES = [("full", {}), ("flash", {}), ("local", {"window": 5}), ("local", {"window": 40}),
              ("bigbird", {"block_size": 4}), ("reformer", {"bucket_size": 8})]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("name,knobs", BF16_CASES)
def test_bf16_fast_paths_agree_with_the_reference(name, knobs, causal):
    """bf16 inputs on the CPU: the fast path ``auto`` runs is within bf16 tolerance of the reference path
    on the same bf16 inputs (real queries), values and gradients."""
    n = 48
    cfg = {"heads": H, "head_dim": D, "max_length": 64, "causal": causal, **knobs}
    attn = av.build(name, **cfg)
    ref_backend = "math" if name == "flash" else "reference"
    ref = av.build(name, backend=ref_backend, **cfg)
    q, k, v, mask = inputs(n, 1.0, dtype=torch.bfloat16, kind="right")
    keep = mask[:, None, :, None]
    out, grads = with_grads(lambda a, b, c: attn(a, b, c, mask) * keep, q, k, v)
    expect, ref_grads = with_grads(lambda a, b, c: ref(a, b, c, mask) * keep, q, k, v)
    used = lambda m: getattr(m, "last_backend", None) or m.last_path  # noqa: E731
    assert used(attn) != used(ref) or name == "flash"
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    torch.testing.assert_close(out.float(), expect.float(), rtol=1.6e-2, atol=2e-2)
    for g, rg in zip(grads, ref_grads):
        if rg is None:
            continue
        assert rel(g.float(), rg.float()) < 3e-2


# ----------------------------------------------------------------------------- decoding state sizes

def test_state_bytes_match_a_hand_count():
    """Issue 37 item 4: full keeps every past key and value; local its window; BigBird (causal) the
    global blocks, the window and the past blocks a later row picks at random, per head."""
    full = av.build("full", heads=4, head_dim=16)
    assert full.decode_state_bytes(100)[0] == 2 * 100 * 4 * 16 * 4                 # K and V, fp32
    local = av.build("local", heads=4, head_dim=16, window=32, causal=True)
    assert local.decode_state_bytes(10, 2)[0] == 2 * 10 * 4 * 16 * 2                # shorter than the window
    assert local.decode_state_bytes(1000, 2)[0] == 2 * 32 * 4 * 16 * 2              # the window only

    bb = av.build("bigbird", heads=2, head_dim=8, max_length=64, block_size=4, window_blocks=3, global_blocks=2,
                  random_blocks=3, causal=True, seed=1)
    # by hand from the layout: after 41 tokens the next one is in block 10; a decoder keeps blocks 0, 1
    # (global), 8, 9 (the window's past), and per head every block < 10 that rows 10..15 pick at random
    length, block = 41, 10
    rand = bb.rand_blocks                                                          # (heads, 16 rows, 3)
    for h in range(2):
        later = {int(j) for row in range(block, 16) for j in rand[h, row] if j < block and j <= row - 3}
        kept = {0, 1, 8, 9} | later
        assert set(torch.nonzero(bb.decode_blocks(length)[h]).flatten().tolist()) == kept
    tokens = sum(int(bb.decode_blocks(length)[h].sum()) for h in range(2)) * 4 + 2 * (length % 4)
    assert bb.decode_state_bytes(length)[0] == 2 * tokens * 8 * 4
    assert bb.decode_state_bytes(length)[0] < full.decode_state_bytes(length)[0]
    assert av.build("bigbird", heads=2, head_dim=8, max_length=64).decode_state_bytes(10)[0] is None
    # a full layout (length = max_length, a whole number of blocks): the last block is cached whole; one
    # block of 64 is full attention, so its state is full's KV cache (the MQAR length-64 records)
    one_block = av.build("bigbird", heads=4, head_dim=16, max_length=64, block_size=64, causal=True)
    assert one_block.decode_state_bytes(64)[0] == av.build("full", heads=4, head_dim=16).decode_state_bytes(64)[0]
    assert bb.decode_state_bytes(64)[0] >= bb.decode_state_bytes(63)[0] > 0

    reformer = av.build("reformer", heads=4, head_dim=16, n_hashes=2, causal=True)
    assert reformer.decode_state_bytes(100)[0] == 100 * 4 * (2 * 16 * 4 + 2 * 4)   # q and v, 2 int32 buckets
    with pytest.raises(NotImplementedError):
        reformer.decode_init(1, torch.device("cpu"), torch.float32)


# ----------------------------------------------------------------------------- CUDA (skipped without a GPU)

@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["none", "right", "left"])
@pytest.mark.parametrize("backend", ["auto", "cudnn", "flash", "efficient", "math", "xformers"])
def test_flash_causal_on_every_cuda_backend(backend, kind):
    """Causal on each SDPA backend and xformers: is_causal without padding; with padding a materialized
    tril & padding bias (finfo.min, rows without a key set to 0), or, for the CUDA flash kernel, is_causal
    alone under right padding (exact for real queries) and ``efficient`` otherwise."""
    from attention_variants.flash import BackendUnavailableError

    n = 300
    q, k, v, mask = inputs(n, 4.0, dtype=torch.float32, kind=kind)
    q, k, v = (t.cuda().half() for t in (q, k, v))
    mask = None if mask is None else mask.cuda()
    attn = av.build("flash", heads=H, head_dim=D, causal=True, backend=backend)
    try:
        out = attn(q, k, v, mask)
    except BackendUnavailableError as err:
        pytest.skip(str(err))
    ref = masked_softmax(q.double(), k.double(), v.double(), causal_allowed(n, mask).cuda() if mask is not None
                         else torch.ones(n, n, dtype=torch.bool, device="cuda").tril())
    rows = real_rows(mask, n).cuda().expand_as(out) if mask is not None else torch.ones_like(out, dtype=torch.bool)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double()[rows], ref[rows], atol=3e-3, rtol=3e-3)
    if backend == "flash" and kind == "left":
        assert attn.last_backend == "efficient"


@pytest.mark.gpu
@pytest.mark.parametrize("name,knobs", [("local", {"window": 16}), ("bigbird", {"block_size": 16})])
def test_flex_causal_matches_reference_on_cuda(name, knobs):
    cfg = {"heads": H, "head_dim": 16, "max_length": 512, "causal": True, **knobs}
    ref = av.build(name, backend="reference", **cfg).cuda()
    fast = av.build(name, backend="auto", **cfg).cuda()
    fast.load_state_dict(ref.state_dict())
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, H, 300, 16, generator=g).cuda() for _ in range(3))
    mask = torch.ones(2, 300, dtype=torch.bool, device="cuda")
    mask[1, :20] = False
    for m in (None, mask):
        out = fast(q, k, v, m)
        assert fast.last_backend == "flex", fast._flex_failed
        torch.testing.assert_close(out, ref(q, k, v, m), atol=1e-4, rtol=1e-4)
