"""The common LRA encoder: embeddings, pre-LayerNorm blocks, pooling, classifier.

The attention variant is passed in by name and config; nothing here knows which it holds,
except the small attention-dropout hook below (:data:`DROPOUT_BACKENDS`).
Shapes: tokens ``(B, N)`` int64 -> logits ``(B, num_classes)``; for dual-input tasks
(Retrieval) tokens ``(B, 2, N)``: a shared-weight encoder embeds each document to ``u, v``
and the classifier sees ``[u, v]`` (``dual_head="concat"``, the LRA reference's) or
``[u, v, u*v, u-v]`` (``"nli"``, the Nystromformer code's).
Cost per block: the attention's (O(N^2) for exact softmax) plus O(N d^2) for the projections/MLP.
On the image tasks ``patch`` = p > 1 embeds square p x p patches of pixels as tokens
(:meth:`Encoder.patch_tokens`): the blocks see N / p^2 positions.

Position information: ``pos_emb`` ``learned`` or ``sinusoidal`` adds a table to the embeddings;
``rotary`` (Su et al. 2021, RoFormer; the position encoding of Amos et al. 2024's SPT Transformers)
adds nothing to the embeddings and instead rotates q and k by their positions inside
:class:`MultiHeadAttention`, *before* the attention variant sees them (:func:`rotate`), so every
variant that consumes q and k gets it. What each variant then makes of it (``q_i . k_j`` depends on
``j - i`` only where the variant scores q against k directly):

* ``full``, ``flash``, ``local``, ``bigbird``: exact softmax over the keys they attend to -- every
  score they use is relative. ``reformer`` scores ``q_i . q_j / |q_j|`` (shared QK, it ignores k):
  still relative, since rotations keep norms; only the LSH buckets (computed on the rotated q) move
  with absolute position.
* ``performer`` (softmax kernel) and ``random_feature``: the feature map is applied after the
  rotation; their kernels ``exp(q.k)`` and ``exp(-|q-k|^2/2s^2)`` are relative, so the estimate is
  relative in expectation but not draw by draw.
* ``linear`` (elu+1 features), ``performer`` with ``kernel=relu``: ``phi(R_i q) . phi(R_j k)`` is not
  a function of ``j - i``: rotary gives them position information but no relative structure.
* ``linformer``: keys and values are projected along the length (``E K``), which mixes the rotated
  keys of all positions; scores are against mixtures, not against one offset -- rotary cannot help it.
* ``nystrom``: landmarks are segment means of the rotated q and k; the Nystrom approximation of a
  relative score matrix is only approximately relative.

The self-pretraining head (:class:`TokenPredictor`) reads the per-position states of the same
encoder (:meth:`Encoder.hidden_states`); ``mask_token`` adds one embedding row (id ``vocab_size``)
for the masked input positions of masked pretraining (:mod:`lra.training.pretrain`).

Every behaviour in which the two reference codes differ is a field of :class:`EncoderConfig`;
the defaults are this suite's own choices, and ``conf/recipe/<name>.yaml`` sets the fields to a
reference's (``recipe=lra``: google-research/long-range-arena; ``recipe=small``: the Nystromformer
PyTorch LRA code). Padding, masking and pooling:

* ``key_padding_mask`` (True = real) reaches every variant through the registry interface; with
  ``mask_zero_tokens`` every token id 0 counts as padding -- for pixel tasks a black pixel, as both
  references do (``inputs > 0`` / ``input_ids != 0``).
* ``masked_queries``: ``"variant"`` keeps whatever the variant computes for a masked query;
  ``"uniform"`` replaces it, for every variant alike, by the mean of all values -- what the LRA
  reference computes, since its -1e10 bias on the whole row of a masked query swamps every logit
  in fp32 and the softmax row becomes uniform over all N keys. Only pooling that reads masked
  positions (``pool_masked="include"``, or a masked CLS token) can see the difference.
* ``cls_mask``: ``"real"`` (the CLS token is always real) or ``"first_token"`` (the LRA reference:
  the CLS token inherits the mask of token 0, so a black first pixel masks it).
* ``pool_masked`` (mean pooling): ``"exclude"`` averages real positions only; ``"include"``
  averages every position (LRA: ``jnp.mean(encoded, axis=1)``); ``"zero"`` zeroes masked positions
  and divides by ``max_length``, the length every input is padded to (Nystromformer: ``norm(X) * mask``
  then ``mean(dim=1)``), also when length bucketing (:mod:`lra.bucketing`) cut the batch shorter.

Attention dropout drops attention weights, so it can only exist where a variant has them. Its
natural home is inside each variant (a ``dropout`` field of the variant config, applied to its
softmax weights in training: full, flash via SDPA's ``dropout_p``, local, bigbird, linformer,
nystrom, reformer; kernel variants have no weight matrix and would document a no-op). Until
attention_variants has that, the model applies it for the exact variants only, by running them
through SDPA with ``dropout_p`` in training (:data:`DROPOUT_BACKENDS`): the same function as the
variant's own forward, with the variant's backend choice replaced by torch's (``full`` keeps the
materialising math kernel). Other variants train without it (:attr:`Encoder.attention_dropout_applies`).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import attention_variants as av

POOLINGS = ("cls", "mean")
POS_EMBEDDINGS = ("learned", "sinusoidal", "rotary")
INITS = ("torch", "reference")
GELUS = ("erf", "tanh")
HEAD_ACTIVATIONS = ("gelu", "relu")
DUAL_HEADS = ("nli", "concat")
MASKED_QUERIES = ("variant", "uniform")
CLS_MASKS = ("real", "first_token")
POOL_MASKED = ("exclude", "include", "zero")

#: Attention dropout (dropout on the attention weights) for the variants that hold a softmax weight
#: matrix the model can reach: during training these run through SDPA with ``dropout_p`` instead of
#: their own forward (same function otherwise). ``full`` keeps its materialised O(N^2) form (the
#: math backend); ``flash`` lets torch pick a fused kernel that supports dropout. Other variants
#: get no attention dropout (see :attr:`Encoder.attention_dropout_applies`).
DROPOUT_BACKENDS: dict[str, SDPBackend | None] = {"full": SDPBackend.MATH, "flash": None}

#: std of a standard normal truncated to (-2, 2): jax's lecun_normal divides by it so that the
#: truncated draws have std exactly sqrt(1 / fan_in)
TRUNCATED_NORMAL_STD = 0.87962566103423978


def _one_of(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"model.{name}={value!r} is not one of {choices}")


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
    #: total width of q/k/v (head_dim = qkv_dim / heads); None = d_model (LRA: qkv_dim)
    qkv_dim: int | None = None
    #: biases on the q/k/v/out projections (LRA: none; Nystromformer: nn.Linear's)
    qkv_bias: bool = True
    #: dropout on the attention weights (see DROPOUT_BACKENDS for which variants apply it)
    attention_dropout: float = 0.0
    #: "torch" (nn.Linear defaults) | "reference" (LRA: xavier-uniform attention/MLP kernels,
    #: biases N(0, 1e-6), lecun-normal classifier with zero bias)
    init: str = "torch"
    #: std of the N(0, std) token embedding init (LRA and torch: 1.0; Nystromformer: 0.02)
    token_init_std: float = 1.0
    #: LayerNorm epsilon (torch: 1e-5; flax: 1e-6)
    norm_eps: float = 1e-5
    #: GELU of the MLP blocks: "erf" (exact, torch's default) | "tanh" (jax.nn.gelu's approximation)
    gelu: str = "erf"
    #: activation between the classifier's dense layers
    head_activation: str = "gelu"
    #: dual encoder head: "nli" ([u, v, u*v, u-v] -> dense, act, dense) | "concat" ([u, v] -> dense,
    #: act, dense(mlp_dim // 2), act, dense: the LRA reference's)
    dual_head: str = "nli"
    #: token id 0 is padding (every task's pad id is 0; for pixel tasks it masks black pixels)
    mask_zero_tokens: bool = False
    masked_queries: str = "variant"
    cls_mask: str = "real"
    pool_masked: str = "exclude"
    #: one more embedding row, id ``vocab_size``: the [MASK] input of masked self-pretraining
    mask_token: bool = False
    #: base of the rotary frequencies (``pos_emb="rotary"``): theta_i = base^(-2i/head_dim)
    rotary_base: float = 10000.0
    #: image tasks: square patches of ``patch x patch`` pixels as tokens (:meth:`Encoder.patch_tokens`);
    #: 1 = one token per pixel. ``max_length`` stays the pixel count; the blocks see ``max_length / patch^2``
    patch: int = 1

    def __post_init__(self):
        width = self.qkv_dim or self.d_model
        if width % self.heads:
            what = f"model.qkv_dim={self.qkv_dim}" if self.qkv_dim else f"model.d_model={self.d_model}"
            raise ValueError(f"{what} is not divisible by model.heads={self.heads}: "
                             f"each head gets {'qkv_dim' if self.qkv_dim else 'd_model'}/heads dimensions. "
                             f"Pick heads among {[h for h in range(1, 17) if width % h == 0]} or change it.")
        for name, choices in (("pooling", POOLINGS), ("pos_emb", POS_EMBEDDINGS), ("init", INITS),
                              ("gelu", GELUS), ("head_activation", HEAD_ACTIVATIONS), ("dual_head", DUAL_HEADS),
                              ("masked_queries", MASKED_QUERIES), ("cls_mask", CLS_MASKS),
                              ("pool_masked", POOL_MASKED)):
            _one_of(name, getattr(self, name), choices)
        if not 0.0 <= self.attention_dropout < 1.0:
            raise ValueError(f"model.attention_dropout={self.attention_dropout} must be in [0, 1)")
        if self.pos_emb == "rotary" and (width // self.heads) % 2:
            raise ValueError(f"model.pos_emb=rotary rotates pairs of q/k dimensions, but each head has "
                             f"{width // self.heads} (odd); pick heads so that qkv_dim/heads is even")
        if self.patch < 1:
            raise ValueError(f"model.patch={self.patch} must be an integer >= 1 (1 = one token per pixel)")
        if self.patch > 1:
            side = math.isqrt(self.max_length)
            why = ("not for two-document inputs (dual)" if self.dual else
                   "not with masked self-pretraining, which predicts single pixels" if self.mask_token else
                   f"max_length={self.max_length} is not a square" if side * side != self.max_length else
                   f"the image side {side} is not divisible by {self.patch}; valid patch sizes: "
                   f"{patch_sizes(side)}" if side % self.patch else None)
            if why:
                raise ValueError(f"model.patch={self.patch} cuts a square image of max_length pixels into "
                                 f"patch x patch tokens: {why}")

    @property
    def tokens(self) -> int:
        """Positions the blocks see for a full-length input (before a CLS token): the pixels, or the patches."""
        return self.max_length // (self.patch * self.patch)


def patch_sizes(side: int) -> list[int]:
    """The values of ``patch`` that cut a ``side x side`` image into whole patches: the divisors of ``side``."""
    return [p for p in range(1, side + 1) if side % p == 0]


def sinusoidal_table(length: int, dim: int) -> torch.Tensor:
    """``(length, dim)`` fixed sin/cos position table (Vaswani et al. 2017)."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    inv = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(pos * inv)
    table[:, 1::2] = torch.cos(pos * inv)[:, : dim // 2]
    return table


def rotary_tables(length: int, dim: int, base: float = 10000.0,
                  dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)``, each ``(length, dim // 2)``: the angle of pair ``i`` at position ``p`` is
    ``p * base^(-2i/dim)`` (RoFormer, Su et al. 2021; pairs are adjacent dimensions, as the SPT
    code's ``RotaryEmbedding``). Computed in float64, returned in ``dtype``."""
    pos = torch.arange(length, dtype=torch.float64)[:, None]
    freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angle = pos * freq
    return angle.cos().to(dtype), angle.sin().to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair ``(x[..., 2i], x[..., 2i+1])`` of ``x: (B, H, N, D)`` by the angle of its
    position: ``cos, sin: (N, D/2)`` (:func:`rotary_tables`, rows = positions 0..N-1). Then
    ``rotate(q)_i . rotate(k)_j`` depends on ``q, k`` and ``j - i`` only. Computed in at least fp32,
    returned in ``x``'s dtype. O(B H N D)."""
    work = torch.promote_types(x.dtype, torch.float32)
    pairs = x.to(work).unflatten(-1, (-1, 2))
    cos, sin = cos.to(work), sin.to(work)
    a, b = pairs[..., 0], pairs[..., 1]
    out = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1)
    return out.flatten(-2).to(x.dtype)


class MultiHeadAttention(nn.Module):
    """Projections around a registry attention: ``(B, N, d) -> (B, N, d)``; q/k/v of width ``qkv_dim``."""

    def __init__(self, cfg: EncoderConfig, layer: int = 0):
        super().__init__()
        self.heads = cfg.heads
        self.width = cfg.qkv_dim or cfg.d_model
        self.qkv = nn.Linear(cfg.d_model, 3 * self.width, bias=cfg.qkv_bias)
        self.out = nn.Linear(self.width, cfg.d_model, bias=cfg.qkv_bias)
        attn_cfg = {"heads": cfg.heads, "head_dim": self.width // cfg.heads,
                    "max_length": cfg.tokens + (cfg.pooling == "cls"), **cfg.attention_cfg}
        # each layer draws its own random projections: seed + layer
        attn_cfg["seed"] = int(attn_cfg.get("seed", 0)) * 1009 + layer
        self.attention = av.build(cfg.attention, **attn_cfg)
        self.attention_dropout = cfg.attention_dropout
        self.uniform_masked_queries = cfg.masked_queries == "uniform"
        self.rotary = cfg.pos_emb == "rotary"
        if self.rotary:
            cos, sin = rotary_tables(attn_cfg["max_length"], self.width // cfg.heads, cfg.rotary_base)
            self.register_buffer("rot_cos", cos, persistent=False)
            self.register_buffer("rot_sin", sin, persistent=False)

    @property
    def dropout_applies(self) -> bool:
        return self.attention.name in DROPOUT_BACKENDS

    def _dropout_attention(self, q, k, v, mask):
        """Softmax attention with dropout on its weights (training only; see DROPOUT_BACKENDS)."""
        backend = DROPOUT_BACKENDS[self.attention.name]
        attn_mask = None if mask is None else mask[:, None, None, :]
        with sdpa_kernel([backend]) if backend is not None else contextlib.nullcontext():
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=self.attention_dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None,
                query_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask``: ``(B, N)`` key padding (True = real); ``query_mask``: the queries whose output
        the variant gives (the others get the mean of all values) -- None: every query's."""
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, self.width // self.heads).permute(2, 0, 3, 1, 4)
        if self.rotary:  # positions 0..n-1 (the CLS token included), before the variant sees q and k
            q, k = rotate(q, self.rot_cos[:n], self.rot_sin[:n]), rotate(k, self.rot_cos[:n], self.rot_sin[:n])
        if self.training and self.attention_dropout > 0 and self.dropout_applies:
            y = self._dropout_attention(q, k, v, mask)
        else:
            y = self.attention(q, k, v, key_padding_mask=mask)  # (B, H, N, Dh)
        if query_mask is not None and self.uniform_masked_queries:
            y = torch.where(query_mask[:, None, :, None], y, v.mean(dim=2, keepdim=True).to(y.dtype))
        return self.out(y.transpose(1, 2).reshape(b, n, self.width))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + Attn(LN(x)), then x + MLP(LN(x)) with GELU."""

    def __init__(self, cfg: EncoderConfig, layer: int = 0):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = MultiHeadAttention(cfg, layer)
        self.norm2 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, cfg.mlp_dim), _gelu(cfg.gelu), nn.Dropout(cfg.dropout),
                                 nn.Linear(cfg.mlp_dim, cfg.d_model))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, mask, query_mask=None):
        x = x + self.drop(self.attn(self.norm1(x), mask, query_mask))
        return x + self.drop(self.mlp(self.norm2(x)))


def _gelu(kind: str) -> nn.Module:
    return nn.GELU(approximate="tanh" if kind == "tanh" else "none")


def _head(cfg: EncoderConfig) -> nn.Sequential:
    """Classifier: dense, act, dense (dual "concat": dense, act, dense(mlp_dim // 2), act, dense)."""
    act = (lambda: nn.ReLU()) if cfg.head_activation == "relu" else (lambda: _gelu(cfg.gelu))
    if cfg.dual and cfg.dual_head == "concat":
        half = max(1, cfg.mlp_dim // 2)
        return nn.Sequential(nn.Linear(2 * cfg.d_model, cfg.mlp_dim), act(), nn.Linear(cfg.mlp_dim, half), act(),
                             nn.Linear(half, cfg.num_classes))
    feat = cfg.d_model * (4 if cfg.dual else 1)
    return nn.Sequential(nn.Linear(feat, cfg.mlp_dim), act(), nn.Linear(cfg.mlp_dim, cfg.num_classes))


@torch.no_grad()
def lecun_normal_(weight: torch.Tensor) -> torch.Tensor:
    """jax's lecun_normal on a ``(out, in)`` weight: N(0, 1/fan_in) truncated at 2 std, rescaled so
    the draws' std is exactly sqrt(1 / fan_in)."""
    std = math.sqrt(1.0 / weight.shape[1]) / TRUNCATED_NORMAL_STD
    return nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


@torch.no_grad()
def reference_init_(model: "Encoder") -> None:
    """The LRA reference's initialisation (flax, paper-era lra_benchmarks/models/transformer):
    q, k, v, out and both MLP layers xavier-uniform over their own (fan_in, fan_out) -- q, k and v
    each on its own (d_model, qkv_dim) kernel -- with biases N(0, 1e-6); classifier layers
    lecun-normal with zero biases. Embeddings, position embeddings and CLS are left as built."""
    def bias_(linear: nn.Linear):
        if linear.bias is not None:
            nn.init.normal_(linear.bias, std=1e-6)

    for block in {id(b): b for b in model.blocks}.values():  # a tied block once
        attn = block.attn
        for part in attn.qkv.weight.split(attn.width, dim=0):  # views of the q, k and v rows
            nn.init.xavier_uniform_(part)
        for linear in (attn.out, block.mlp[0], block.mlp[3]):
            nn.init.xavier_uniform_(linear.weight)
        for linear in (attn.qkv, attn.out, block.mlp[0], block.mlp[3]):
            bias_(linear)
    for layer in model.head:
        if isinstance(layer, nn.Linear):
            lecun_normal_(layer.weight)
            nn.init.zeros_(layer.bias)


class Encoder(nn.Module):
    """Token + position embeddings, ``layers`` pre-LN blocks, final LayerNorm, pooling, classifier.

    ``forward(tokens, mask=None)``: tokens ``(B, N)`` (or ``(B, 2, N)`` when ``dual``) int64,
    mask the same shape bool (True = real token; None = all real) -> logits ``(B, num_classes)``.
    """

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        extra = 1 if cfg.pooling == "cls" else 0
        self.embed = nn.Embedding(cfg.vocab_size + int(cfg.mask_token), cfg.d_model)
        nn.init.normal_(self.embed.weight, std=cfg.token_init_std)
        #: model.patch > 1: a patch's pixel embeddings, concatenated, map to one token (patch_tokens)
        self.patch_proj = nn.Linear(cfg.patch * cfg.patch * cfg.d_model, cfg.d_model) if cfg.patch > 1 else None
        if cfg.pos_emb == "learned":
            self.pos = nn.Parameter(torch.randn(cfg.tokens + extra, cfg.d_model) * 0.02)
        elif cfg.pos_emb == "sinusoidal":
            self.register_buffer("pos", sinusoidal_table(cfg.tokens + extra, cfg.d_model), persistent=False)
        else:  # rotary: positions enter through q and k (MultiHeadAttention)
            self.pos = None
        if extra:
            self.cls = nn.Parameter(torch.zeros(1, 1, cfg.d_model))
        self.drop = nn.Dropout(cfg.dropout)
        if cfg.tied_weights:  # the same module (same parameters) applied `layers` times
            self.blocks = nn.ModuleList([Block(cfg, 0)] * cfg.layers)
        else:
            self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        #: whether any layer's attention is causal (the CLS token then goes last)
        self.causal = any(getattr(block.attn.attention, "causal", False) for block in self.blocks)
        self.head = _head(cfg)
        if cfg.init == "reference":
            reference_init_(self)

    @property
    def attention_dropout_applies(self) -> bool:
        """False when ``attention_dropout`` > 0 but this variant has no hook for it (it then trains
        without attention dropout: kernel variants have no weight matrix; local, bigbird, linformer,
        nystrom and reformer hold theirs inside the variant)."""
        return self.cfg.attention_dropout == 0 or self.blocks[0].attn.dropout_applies

    @property
    def mask_id(self) -> int | None:
        """Token id of the [MASK] input (``cfg.mask_token``), else None."""
        return self.cfg.vocab_size if self.cfg.mask_token else None

    def token_positions(self, n: int) -> slice:
        """Where the ``n`` input tokens sit among :meth:`hidden_states`' positions (the CLS token
        is first, or last for causal attention)."""
        if self.cfg.pooling != "cls":
            return slice(0, n)
        return slice(0, n) if self.causal else slice(1, n + 1)

    def encode(self, tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``(B, N)`` tokens -> ``(B, d_model)`` pooled features."""
        x, mask = self.hidden_states(tokens, mask)
        return self.pool(x, mask)

    def hidden_states(self, tokens: torch.Tensor, mask: torch.Tensor | None
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(B, N)`` tokens -> the final (normed) states ``(B, N', d_model)`` of every position
        (``N' = N + 1`` with a CLS token; see :meth:`token_positions`) and the real-position mask
        ``(B, N')`` they were computed with (None = all real)."""
        cfg = self.cfg
        b, n = tokens.shape
        if n > cfg.max_length:
            raise ValueError(f"input length {n} exceeds the model's max_length {cfg.max_length}")
        if cfg.mask_zero_tokens:
            real = tokens != 0
            mask = real if mask is None else mask & real
        if self.patch_proj is None:
            x = self.embed(tokens)
        else:
            x, mask = self.patch_tokens(tokens, mask)
        if cfg.pooling == "cls":  # first; last for causal attention, where it then sees every token
            last = self.causal
            x = torch.cat([x, self.cls.expand(b, 1, -1)] if last else [self.cls.expand(b, 1, -1), x], dim=1)
            if mask is not None:
                cls = mask[:, :1] if cfg.cls_mask == "first_token" else torch.ones_like(mask[:, :1])
                mask = torch.cat([mask, cls] if last else [cls, mask], dim=1)
        x = self.drop(x if self.pos is None else x + self.pos[: x.shape[1]])
        # a sequence with no real token at all attends everywhere (its queries are all masked anyway)
        keys = None if mask is None else mask | ~mask.any(dim=-1, keepdim=True)
        for block in self.blocks:
            x = block(x, keys, mask)
        return self.norm(x), mask

    def patch_tokens(self, tokens: torch.Tensor, mask: torch.Tensor | None
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(B, N)`` pixel tokens of a row-major ``S x S`` image (``N = S^2``) -> ``(B, N / p^2, d_model)``
        patch embeddings (``p = cfg.patch``; patches row-major too) and their mask ``(B, N / p^2)``: a
        patch is real when any of its pixels is. Each patch's ``p^2`` pixel embeddings are concatenated
        (row-major inside the patch) and mapped to ``d_model`` by one linear layer, ViT's patch embedding
        over embedded pixels. O(B N d + B (N / p^2) p^2 d^2)."""
        b, n = tokens.shape
        p, side = self.cfg.patch, math.isqrt(n)
        if side * side != n or side % p:
            raise ValueError(f"model.patch={p} needs a square image whose side divides by {p}; "
                             f"got {n} tokens (length bucketing cannot cut patched images: trainer.bucketing=false)")

        def patches(t: torch.Tensor) -> torch.Tensor:  # (B, N, ...) -> (B, N / p^2, p^2, ...)
            g = side // p
            return t.reshape(b, g, p, g, p, *t.shape[2:]).transpose(2, 3).reshape(b, g * g, p * p, *t.shape[2:])

        x = self.patch_proj(patches(self.embed(tokens)).flatten(2))
        return x, None if mask is None else patches(mask).any(dim=-1)

    def pool(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``(B, N', d)`` states -> ``(B, d)`` features (CLS token, or mean per ``pool_masked``)."""
        cfg = self.cfg
        if cfg.pooling == "cls":
            return x[:, -1] if self.causal else x[:, 0]
        if mask is None or cfg.pool_masked == "include":
            return x.mean(dim=1)
        m = mask.unsqueeze(-1).to(x.dtype)
        if cfg.pool_masked == "zero":  # over the length the reference pads every input to (also when
            return (x * m).sum(1) / cfg.tokens  # length bucketing cut this batch shorter)
        return (x * m).sum(1) / m.sum(1).clamp_min(1.0)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.cfg.dual:
            if tokens.dim() != 3 or tokens.shape[1] != 2:
                raise ValueError(f"dual encoder expects tokens of shape (B, 2, N), got {tuple(tokens.shape)}")
            b = tokens.shape[0]
            both = self.encode(tokens.flatten(0, 1), None if mask is None else mask.flatten(0, 1))
            u, v = both.view(b, 2, -1).unbind(1)
            feats = torch.cat([u, v] if self.cfg.dual_head == "concat" else [u, v, u * v, u - v], dim=-1)
        else:
            feats = self.encode(tokens, mask)
        return self.head(feats)


class TokenPredictor(nn.Module):
    """An :class:`Encoder` and a token head on its per-position states: the self-pretraining model
    and the model of the token-level tasks (MQAR, text_lm; :mod:`lra.training.token_task`).

    ``forward(tokens, mask, where=None)``: tokens ``(B, N)`` int64 (may hold the [MASK] id), mask
    ``(B, N)`` bool (True = real) or None -> logits ``(B, N, vocab_size)`` over the task's tokens
    (pixel tasks: the 256 intensities), one row per input position (the CLS state is dropped); with
    ``where`` ``(B, N)`` bool, the states at the K positions it marks are gathered first and the
    logits are ``(K, vocab_size)``, in row-major order (``logits[where]`` of the full output): the head
    then costs O(K d V) instead of O(N d V), which is what a vocabulary of 8,192 at every position
    would need. Masked modelling reads row i as the prediction of token i, next-token modelling
    (causal attention) as that of token i + 1. The head is one linear layer (as the SPT code's sequence
    decoder); the encoder's classifier is not used, so its weights stay as initialised.
    """

    def __init__(self, encoder: Encoder):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.cfg.d_model, encoder.cfg.vocab_size)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None,
                where: torch.Tensor | None = None) -> torch.Tensor:
        x, _ = self.encoder.hidden_states(tokens, mask)
        x = x[:, self.encoder.token_positions(tokens.shape[1])]
        return self.head(x if where is None else x[where])
