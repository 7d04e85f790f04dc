"""An out-of-tree attention variant, shipped by a separate distribution (used by test_plugins.py)."""
from dataclasses import dataclass

from attention_variants import Attention, AttentionConfig


@dataclass
class TopKConfig(AttentionConfig):
    top_k: int = 4


class TopKAttention(Attention):
    """Softmax over each query's top-k real keys: (B, H, N, D) -> (B, H, N, D)."""

    exact = False
    complexity = "O(N^2)"
    Config = TopKConfig

    def forward(self, q, k, v, key_padding_mask=None):
        scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
        if key_padding_mask is not None:
            scores = scores.masked_fill(~key_padding_mask[:, None, None, :], float("-inf"))
        kth = scores.topk(min(self.config.top_k, scores.shape[-1]), dim=-1).values[..., -1:]
        return scores.masked_fill(scores < kth, float("-inf")).softmax(-1) @ v
