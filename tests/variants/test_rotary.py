"""Rotary position embeddings (model.pos_emb=rotary): the relative-position property, q and k rotated
before the variant sees them, and every registered variant training with them."""
import pytest
import torch

from lra.model import Encoder, EncoderConfig, rotary_tables, rotate
from conftest import IN_TREE, SMALL_KNOBS


def test_scores_depend_on_the_offset_only():
    """q_i . k_j after rotation is the same for positions (i, j) and (i + s, j + s): float64, any shift."""
    torch.manual_seed(0)
    n, d, shift = 24, 16, 37
    q, k = torch.randn(2, 3, n, d, dtype=torch.float64), torch.randn(2, 3, n, d, dtype=torch.float64) * 4
    cos, sin = rotary_tables(n + shift, d, dtype=torch.float64)
    at_0 = rotate(q, cos[:n], sin[:n]) @ rotate(k, cos[:n], sin[:n]).transpose(-1, -2)
    at_s = rotate(q, cos[shift:], sin[shift:]) @ rotate(k, cos[shift:], sin[shift:]).transpose(-1, -2)
    torch.testing.assert_close(at_s, at_0, rtol=1e-10, atol=1e-10)
    # ... and it is not the unrotated score: positions do enter
    assert not torch.allclose(at_0, q @ k.transpose(-1, -2))
    # rotations keep norms (Reformer's shared-QK normalisation is unaffected)
    torch.testing.assert_close(rotate(q, cos[:n], sin[:n]).norm(dim=-1), q.norm(dim=-1))


def test_score_is_a_function_of_the_offset_between_two_positions():
    """The same q at i and k at j give the same score for every (i, j) with j - i fixed."""
    d = 8
    cos, sin = rotary_tables(64, d, dtype=torch.float64)
    q, k = torch.randn(d, dtype=torch.float64), torch.randn(d, dtype=torch.float64)

    def score(i, j):
        qi = rotate(q.view(1, 1, 1, d), cos[i:i + 1], sin[i:i + 1])
        kj = rotate(k.view(1, 1, 1, d), cos[j:j + 1], sin[j:j + 1])
        return float((qi * kj).sum())

    for offset in (-5, 0, 3, 20):
        scores = [score(i, i + offset) for i in range(max(0, -offset), 64 - max(0, offset), 7)]
        assert max(scores) - min(scores) < 1e-12, offset
    assert abs(score(0, 3) - score(0, 4)) > 1e-6


def _encoder(attention, pos_emb="rotary", pooling="mean", **knobs):
    torch.manual_seed(0)
    return Encoder(EncoderConfig(vocab_size=20, num_classes=3, max_length=64, d_model=32, heads=2, mlp_dim=32,
                                 layers=2, dropout=0.0, pooling=pooling, pos_emb=pos_emb, attention=attention,
                                 attention_cfg={**SMALL_KNOBS.get(attention, {}), **knobs}))


@pytest.mark.parametrize("name", ["full", "flash"])
def test_exact_attention_with_rotary_is_shift_invariant(name):
    """No absolute positions left: moving the real tokens inside the padded window leaves their states
    unchanged (exact attention scores only relative positions)."""
    model = _encoder(name).eval()
    real = torch.randint(1, 20, (1, 10))
    left = torch.cat([real, torch.zeros(1, 6, dtype=torch.long)], dim=1)
    right = torch.cat([torch.zeros(1, 6, dtype=torch.long), real], dim=1)
    with torch.no_grad():
        a, _ = model.hidden_states(left, left != 0)
        b, _ = model.hidden_states(right, right != 0)
    torch.testing.assert_close(a[:, :10], b[:, 6:], rtol=1e-5, atol=1e-5)
    # with learned absolute positions the same shift changes them
    absolute = _encoder(name, pos_emb="learned").eval()
    with torch.no_grad():
        a, _ = absolute.hidden_states(left, left != 0)
        b, _ = absolute.hidden_states(right, right != 0)
    assert not torch.allclose(a[:, :10], b[:, 6:], atol=1e-3)


def test_variant_receives_rotated_q_and_k():
    model = _encoder("full").eval()
    attn = model.blocks[0].attn
    seen = {}
    inner = attn.attention.forward

    def spy(q, k, v, key_padding_mask=None):
        seen["q"], seen["k"], seen["v"] = q, k, v
        return inner(q, k, v, key_padding_mask=key_padding_mask)

    attn.attention.forward = spy
    x = torch.randn(2, 12, 32)
    with torch.no_grad():
        attn(x, None)
        q, k, v = attn.qkv(x).view(2, 12, 3, 2, 16).permute(2, 0, 3, 1, 4)
    torch.testing.assert_close(seen["q"], rotate(q, attn.rot_cos[:12], attn.rot_sin[:12]))
    torch.testing.assert_close(seen["k"], rotate(k, attn.rot_cos[:12], attn.rot_sin[:12]))
    torch.testing.assert_close(seen["v"], v)  # values are not rotated


@pytest.mark.parametrize("name", IN_TREE)
def test_every_variant_trains_with_rotary(name):
    for pooling in ("cls", "mean"):
        model = _encoder(name, pooling=pooling)
        tokens = torch.randint(1, 20, (2, 48))
        tokens[1, 40:] = 0
        logits = model(tokens, tokens != 0)
        assert logits.shape == (2, 3) and torch.isfinite(logits).all(), name
        logits.sum().backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), name
        assert model.pos is None  # no absolute position table


def test_rotary_needs_even_head_dim():
    with pytest.raises(ValueError, match="rotary rotates pairs"):
        EncoderConfig(vocab_size=4, num_classes=2, max_length=8, d_model=30, heads=2, pos_emb="rotary")
