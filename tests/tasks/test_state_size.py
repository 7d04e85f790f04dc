"""The decoding state every token-task record states (lra.training.token_task.state_size): each
layer's decode_state_bytes summed, matched against a hand count for two variants, and None with the
reason for a variant without a fixed-size decoding state."""
from __future__ import annotations

import pytest

from lra.model import Encoder, EncoderConfig
from lra.training import token_task

N, LAYERS, HEADS, HEAD_DIM = 48, 3, 2, 8


def encoder(attention: str, **knobs) -> Encoder:
    return Encoder(EncoderConfig(vocab_size=40, num_classes=40, max_length=N, d_model=HEADS * HEAD_DIM, heads=HEADS,
                                 mlp_dim=16, layers=LAYERS, pooling="mean", attention=attention,
                                 attention_cfg={"causal": True, **knobs}))


@pytest.mark.parametrize("element_bytes", [4, 2])
def test_full_attention_keeps_a_kv_cache_per_layer(element_bytes):
    state = token_task.state_size(encoder("full"), N, element_bytes)
    # keys and values: 2 x N tokens x heads x head_dim numbers per layer
    assert state["bytes"] == LAYERS * 2 * N * HEADS * HEAD_DIM * element_bytes == LAYERS * 1536 * element_bytes
    assert state["per_layer"] == [2 * N * HEADS * HEAD_DIM * element_bytes] * LAYERS
    assert "KV cache" in state["what"] and f"summed over {LAYERS} layers" in state["what"]
    assert (state["length"], state["element_bytes"]) == (N, element_bytes)


def test_linear_attention_keeps_a_fixed_state_whatever_the_length():
    short, long = (token_task.state_size(encoder("linear"), n, 4) for n in (N, 8 * N))
    # per head: the head_dim x head_dim sum phi(k) v^T and the head_dim normaliser sum phi(k)
    assert short["bytes"] == long["bytes"] == LAYERS * HEADS * (HEAD_DIM * HEAD_DIM + HEAD_DIM) * 4 == 1728


def test_a_variant_without_a_decoding_state_says_why():
    state = token_task.state_size(encoder("linformer", causal=False, k=8), N, 4)
    assert state["bytes"] is None and "linformer is not causal" in state["what"]
