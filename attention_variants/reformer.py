"""LSH attention, the attention of the Reformer (Kitaev, Kaiser & Levskaya 2020, ICLR,
"Reformer: The Efficient Transformer", arXiv:2001.04451).

Shapes: ``q, k, v: (B, H, N, D)`` -> ``(B, H, N, D)``; ``key_padding_mask: (B, N)`` bool,
True = real token.

Algorithm, per head and per hash round ``r = 1..n_hashes``:

1. **Shared QK.** The paper ties keys to queries: ``k_j = q_j / ||q_j||``. The encoder hands
   every variant separate ``q`` and ``k``; this variant uses ``q`` for both and **ignores
   ``k``** (the query projection plays the role of the paper's shared QK projection).
2. **Angular LSH.** ``h(x) = argmax([x R; -x R])`` with ``R`` a ``(D, n_buckets/2)`` Gaussian
   matrix, one per round (Andoni et al. 2015, as in the paper, Sec. 2).
3. **Sort** positions by ``(bucket, position)``, cut the sorted sequence into chunks of
   ``bucket_size`` queries; each chunk attends to itself and to the previous chunk
   (look-one-back, wrapping around within the round).
4. A query does not attend to itself (score ``-1e5``, as in the paper and Trax) unless no other
   key is in its window; padded keys are excluded (score ``finfo.min``).
5. **Rounds** are combined with weights ``softmax_r(logsumexp of round r's scores)``
   (the paper's multi-round formula), after undoing the sort.

Design choices (documented for the report):

* Rotations are a registered buffer drawn once from ``torch.Generator(seed)`` with shape
  ``(D, n_hashes, max_buckets/2)``, shared by batch and heads; a forward with fewer buckets
  uses the first ``n_buckets/2`` columns (a subset of i.i.d. Gaussian columns is still a valid
  random-rotation hash). The paper redraws rotations every forward pass; we keep them fixed so
  that eval, benchmarks and tests are deterministic (the DESIGN rule: no silent redraws).
* ``n_buckets`` defaults to ``N_pad / bucket_size`` rounded up to even (the paper's
  ``n_buckets ~ N / chunk``, HF/lucidrains convention), or 1 when a single chunk holds the
  whole sequence; an explicit ``n_buckets`` (1 or even) overrides it.
* Keys of other buckets inside a query's window are attended to (``attend_across_buckets``
  True, as Trax, lucidrains and the LRA reference code do); set it False to restrict attention
  to the query's own bucket. Duplicate (query, key) pairs across rounds are not de-duplicated.
* Padding: padded tokens are hashed into an extra bucket after all real ones, so the sort
  order (and chunk membership) of real tokens never depends on padded values, and they are
  masked out as keys. Lengths not a multiple of ``bucket_size`` are padded internally.

Time O(N log N) (the sort) + O(N * bucket_size * n_hashes * D) (chunked attention);
memory O(N * bucket_size * n_hashes) per head. Scores and softmax in fp32.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from .base import Attention, AttentionConfig
from .masking import normalize_key_padding_mask, pad_mask_to_multiple, pad_to_multiple
from .registry import register

# Trax's value: below any real score (keys are unit vectors, so |score| <= |q| / sqrt(d), and the
# scores are the true logits, not rescaled) unless |q| > 1e5 sqrt(d); above padded keys (finfo.min).
SELF_ATTN_SCORE = -1e5


def _buckets_for(length: int, bucket_size: int) -> int:
    """Default bucket count for a (padded) length: length/bucket_size rounded up to even, or 1."""
    n = length // bucket_size
    if n <= 1:
        return 1
    return n + (n % 2)


@dataclass
class ReformerConfig(AttentionConfig):
    #: queries per chunk (and target mean bucket size); HF Reformer default chunk length 64
    bucket_size: int = 64
    #: hash rounds; 2 = the "reformer-2" setting of the Nystromformer LRA runs
    n_hashes: int = 2
    #: explicit number of buckets (1 or even); None = derived from the length
    n_buckets: int | None = None
    #: attend to keys of other buckets that share the query's chunk window
    attend_across_buckets: bool = True


@register("reformer", ReformerConfig)
class ReformerAttention(Attention):
    """LSH self-attention with shared QK (Kitaev et al. 2020); ``k`` is ignored.

    ``forward(q, k, v, key_padding_mask=None)``: ``(B, H, N, D)`` -> ``(B, H, N, D)``.
    """

    exact = False
    complexity = "O(N log N)"
    #: keys are derived from q; the k argument is ignored (so k gets no gradient)
    shared_qk: ClassVar[bool] = True

    def __init__(self, config: ReformerConfig):
        super().__init__(config)
        if config.bucket_size < 1 or config.n_hashes < 1:
            raise ValueError("reformer: bucket_size and n_hashes must be >= 1, got "
                             f"bucket_size={config.bucket_size}, n_hashes={config.n_hashes}")
        if config.n_buckets is not None and config.n_buckets != 1 and (
                config.n_buckets < 2 or config.n_buckets % 2):
            raise ValueError(f"reformer: n_buckets must be 1 or a positive even number, got {config.n_buckets}")
        if config.n_buckets is not None:
            max_buckets = config.n_buckets
        else:
            padded = math.ceil(config.max_length / config.bucket_size) * config.bucket_size
            max_buckets = _buckets_for(padded, config.bucket_size)
        self.max_buckets = max_buckets
        gen = torch.Generator().manual_seed(config.seed)
        rotations = torch.randn(config.head_dim, config.n_hashes, max(max_buckets // 2, 1), generator=gen)
        self.register_buffer("rotations", rotations)

    def n_buckets_for(self, padded_length: int) -> int:
        if self.config.n_buckets is not None:
            return self.config.n_buckets
        n = _buckets_for(padded_length, self.config.bucket_size)
        if n > self.max_buckets:
            raise ValueError(f"reformer: length {padded_length} needs {n} buckets but rotations were drawn "
                             f"for max_length={self.config.max_length} ({self.max_buckets} buckets); "
                             "raise max_length")
        return n

    def hash(self, q: torch.Tensor, n_buckets: int) -> torch.Tensor:
        """``(B, H, N, D)`` -> bucket ids ``(B, H, n_hashes, N)`` in ``[0, n_buckets)``."""
        b, h, n, d = q.shape
        if n_buckets == 1:
            return torch.zeros(b, h, self.config.n_hashes, n, dtype=torch.long, device=q.device)
        rot = self.rotations[..., : n_buckets // 2].to(torch.float32)
        rotated = torch.einsum("bhnd,drk->bhrnk", q.float(), rot)
        return torch.cat([rotated, -rotated], dim=-1).argmax(dim=-1)

    def forward(self, q, k, v, key_padding_mask=None):
        cfg = self.config
        b, h, n, d = q.shape
        mask = normalize_key_padding_mask(key_padding_mask, b, n, q.device)
        mask = pad_mask_to_multiple(mask, b, n, cfg.bucket_size, q.device)
        qp, _ = pad_to_multiple(q, cfg.bucket_size)
        vp, _ = pad_to_multiple(v, cfg.bucket_size)
        n_pad = qp.shape[-2]
        if mask is None:
            mask = torch.ones(b, n_pad, dtype=torch.bool, device=q.device)
        n_buckets = self.n_buckets_for(n_pad)
        rounds, chunk = cfg.n_hashes, cfg.bucket_size
        n_chunks = n_pad // chunk

        with torch.no_grad():
            buckets = self.hash(qp.detach(), n_buckets)  # (B, H, R, Np)
            # padded tokens go to an extra bucket after the real ones
            buckets = buckets.masked_fill(~mask[:, None, None, :], n_buckets)
            pos = torch.arange(n_pad, device=q.device)
            sort_key = buckets * n_pad + pos
            order = sort_key.argsort(dim=-1)  # (B, H, R, Np): sorted slot -> position
            undo = order.argsort(dim=-1)  # position -> sorted slot
            s_buckets = buckets.gather(-1, order)
            s_mask = mask[:, None, None, :].expand(b, h, rounds, n_pad).gather(-1, order)

        def sort(x):  # (B, H, Np, D) -> (B, H, R, C, L, D)
            x = x.unsqueeze(2).expand(b, h, rounds, n_pad, x.shape[-1])
            x = x.gather(3, order[..., None].expand(b, h, rounds, n_pad, x.shape[-1]))
            return x.reshape(b, h, rounds, n_chunks, chunk, x.shape[-1])

        def chunked(x):  # (B, H, R, Np) -> (B, H, R, C, L)
            return x.reshape(b, h, rounds, n_chunks, chunk)

        def look_one_back(x):  # chunk c sees chunks c and c-1 (wrapping); dim 3 = chunks
            if n_chunks == 1:
                return x
            return torch.cat([x, x.roll(1, dims=3)], dim=4)

        sq = sort(qp)
        sk = F.normalize(sq.float(), dim=-1).to(sq.dtype)  # shared QK: unit-norm keys
        sv = sort(vp)
        q_pos, q_bkt = chunked(order), chunked(s_buckets)
        k_pos, k_bkt, k_mask = (look_one_back(chunked(x)) for x in (order, s_buckets, s_mask))
        sk, sv = look_one_back(sk), look_one_back(sv)

        scores = torch.matmul(sq, sk.transpose(-2, -1)).float() * (1.0 / math.sqrt(d))  # (B,H,R,C,L,W)
        scores = scores.masked_fill(q_pos[..., :, None] == k_pos[..., None, :], SELF_ATTN_SCORE)
        if not cfg.attend_across_buckets:
            scores = scores.masked_fill(q_bkt[..., :, None] != k_bkt[..., None, :], SELF_ATTN_SCORE * 2)
        scores = scores.masked_fill(~k_mask[..., None, :], torch.finfo(scores.dtype).min)

        lse = torch.logsumexp(scores, dim=-1, keepdim=True)
        probs = torch.exp(scores - lse).to(sv.dtype)
        out = torch.matmul(probs, sv)  # (B, H, R, C, L, D)

        # undo the sort, then combine the rounds weighted by softmax over their logsumexps
        dv = v.shape[-1]
        out = out.reshape(b, h, rounds, n_pad, dv)
        out = out.gather(3, undo[..., None].expand(b, h, rounds, n_pad, dv))
        lse = lse.reshape(b, h, rounds, n_pad).gather(-1, undo)
        weights = torch.softmax(lse, dim=2).unsqueeze(-1)
        out = (out.float() * weights).sum(dim=2).to(out.dtype)
        return out[..., :n, :]
