"""The common LRA encoder: embeddings, pre-LayerNorm blocks, pooling, classifier.

The attention variant is passed in by name and config; nothing here knows which it holds.
Shapes: tokens ``(B, N)`` int64 -> logits ``(B, num_classes)``; for dual-input tasks
(Retrieval) tokens ``(B, 2, N)``: a shared-weight encoder embeds each document to ``u, v``
and the classifier sees ``[u, v, u*v, u-v]`` (as the LRA reference does).
Cost per block: the attention's (O(N^2) for exact softmax) plus O(N d^2) for the projections/MLP.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
import torch.nn.functional as F

import attention_variants as av

POOLINGS = ("cls", "mean")
POS_EMBEDDINGS = ("learned", "sinusoidal")


@dataclass
class EncoderConfig:
    vocab_size: int
    num_classes: int
    max_length: int
    d_model: int = 512
    heads: int = 8
    mlp_dim: int = 1024
    layers: int = 4
    dropout: float = 0.1
    pooling: str = "cls"
    pos_emb: str = "learned"
    dual: bool = False
    #: one block's weights shared by every layer (ALBERT-style; the LRA ListOps config's tied_weights)
    tied_weights: bool = False
    attention: str = "flash"
    attention_cfg: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.d_model % self.heads:
            raise ValueError(f"model.d_model={self.d_model} is not divisible by model.heads={self.heads}: "
                             f"each head gets d_model/heads dimensions. Pick heads among "
                             f"{[h for h in range(1, 17) if self.d_model % h == 0]} or change d_model.")
        if self.pooling not in POOLINGS:
            raise ValueError(f"model.pooling={self.pooling!r} is not one of {POOLINGS}")
        if self.pos_emb not in POS_EMBEDDINGS:
            raise ValueError(f"model.pos_emb={self.pos_emb!r} is not one of {POS_EMBEDDINGS}")


def sinusoidal_table(length: int, dim: int) -> torch.Tensor:
    """``(length, dim)`` fixed sin/cos position table (Vaswani et al. 2017)."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    inv = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(pos * inv)
    table[:, 1::2] = torch.cos(pos * inv)[:, : dim // 2]
    return table


class MultiHeadAttention(nn.Module):
    """Projections around a registry attention: ``(B, N, d) -> (B, N, d)``."""

    def __init__(self, cfg: EncoderConfig, layer: int = 0):
        super().__init__()
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)
        attn_cfg = {"heads": cfg.heads, "head_dim": cfg.d_model // cfg.heads,
                    "max_length": cfg.max_length + (cfg.pooling == "cls"), **cfg.attention_cfg}
        # each layer draws its own random projections: seed + layer
        attn_cfg["seed"] = int(attn_cfg.get("seed", 0)) * 1009 + layer
        self.attention = av.build(cfg.attention, **attn_cfg)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = self.attention(q, k, v, key_padding_mask=mask)  # (B, H, N, Dh)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + Attn(LN(x)), then x + MLP(LN(x)) with GELU."""

    def __init__(self, cfg: EncoderConfig, layer: int = 0):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.attn = MultiHeadAttention(cfg, layer)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, cfg.mlp_dim), nn.GELU(), nn.Dropout(cfg.dropout),
                                 nn.Linear(cfg.mlp_dim, cfg.d_model))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, mask):
        x = x + self.drop(self.attn(self.norm1(x), mask))
        return x + self.drop(self.mlp(self.norm2(x)))


class Encoder(nn.Module):
    """Token + position embeddings, ``layers`` pre-LN blocks, final LayerNorm, pooling, classifier.

    ``forward(tokens, mask=None)``: tokens ``(B, N)`` (or ``(B, 2, N)`` when ``dual``) int64,
    mask the same shape bool (True = real token; None = all real) -> logits ``(B, num_classes)``.
    """

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        extra = 1 if cfg.pooling == "cls" else 0
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        if cfg.pos_emb == "learned":
            self.pos = nn.Parameter(torch.randn(cfg.max_length + extra, cfg.d_model) * 0.02)
        else:
            self.register_buffer("pos", sinusoidal_table(cfg.max_length + extra, cfg.d_model), persistent=False)
        if extra:
            self.cls = nn.Parameter(torch.zeros(1, 1, cfg.d_model))
        self.drop = nn.Dropout(cfg.dropout)
        if cfg.tied_weights:  # the same module (same parameters) applied `layers` times
            self.blocks = nn.ModuleList([Block(cfg, 0)] * cfg.layers)
        else:
            self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        #: whether any layer's attention is causal (the CLS token then goes last)
        self.causal = any(getattr(block.attn.attention, "causal", False) for block in self.blocks)
        feat = cfg.d_model * (4 if cfg.dual else 1)
        self.head = nn.Sequential(nn.Linear(feat, cfg.mlp_dim), nn.GELU(), nn.Linear(cfg.mlp_dim, cfg.num_classes))

    def encode(self, tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``(B, N)`` tokens -> ``(B, d_model)`` pooled features."""
        b, n = tokens.shape
        if n > self.cfg.max_length:
            raise ValueError(f"input length {n} exceeds the model's max_length {self.cfg.max_length}")
        x = self.embed(tokens)
        if self.cfg.pooling == "cls":  # first; last for causal attention, where it then sees every token
            last = self.causal
            x = torch.cat([x, self.cls.expand(b, 1, -1)] if last else [self.cls.expand(b, 1, -1), x], dim=1)
            if mask is not None:
                mask = F.pad(mask, (0, 1) if last else (1, 0), value=True)
        x = self.drop(x + self.pos[: x.shape[1]])
        for block in self.blocks:
            x = block(x, mask)
        x = self.norm(x)
        if self.cfg.pooling == "cls":
            return x[:, -1] if self.causal else x[:, 0]
        if mask is None:
            return x.mean(dim=1)
        m = mask.unsqueeze(-1).to(x.dtype)
        return (x * m).sum(1) / m.sum(1).clamp_min(1.0)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.cfg.dual:
            if tokens.dim() != 3 or tokens.shape[1] != 2:
                raise ValueError(f"dual encoder expects tokens of shape (B, 2, N), got {tuple(tokens.shape)}")
            b = tokens.shape[0]
            both = self.encode(tokens.flatten(0, 1), None if mask is None else mask.flatten(0, 1))
            u, v = both.view(b, 2, -1).unbind(1)
            feats = torch.cat([u, v, u * v, u - v], dim=-1)
        else:
            feats = self.encode(tokens, mask)
        return self.head(feats)
