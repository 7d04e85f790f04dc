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

Backends (``backend``), computing the same function (the same buckets, windows and masks):

* ``reference`` -- the steps above as written: per round an argsort and its inverse argsort,
  a gather per tensor, windows materialised by concatenation, scores and softmax in fp32;
* ``fast`` -- the precision and memory policy of :mod:`attention_variants._fast`: one sort per
  round (its inverse by a scatter), one gather of ``[q | q/|q| | v]`` (all rounds at once) into
  a layout where each chunk's look-back window is a contiguous run of rows, so the windows are
  overlapping strided views (no copies); scores, probabilities and the products in the compute
  dtype with fp32 accumulation, the masked softmax and its log-sum-exp in fp32 (one compiled
  pointwise kernel on CUDA), a hand-written backward that saves only the gathered rows and the
  probabilities (:class:`_LookBackAttention`); the rounds combined in fp32 weights. On the CPU the
  window attention is :class:`_BlockedLookBack` (the same function): blocks of windows with every
  pass in place, the self entries set through the diagonal view, the padding as an additive
  ``finfo.min`` bias, one in-place softmax whose log-sum-exp comes from two row maxima;
* ``auto`` -- ``fast`` on every device and dtype (fp32 on the CPU: 4.4x faster than ``reference``
  for forward and backward at the Text size, measured, the same function to fp32 rounding).

``last_backend`` records which one ran.

Causal (``causal=True``; Kitaev et al. 2020, Sec. 3: keys after the query are masked inside the
chunk and in the look-back; a position attends to itself only when nothing else is allowed; a
padded query with no real key at or before it outputs 0). The paper's chunks are cut from the
whole sorted sequence, so a *future* token hashed into an earlier bucket shifts every later slot and
moves a past query's chunk boundary: what the query attends (its output) would depend on future
tokens. Here every bucket starts a new chunk (a bucket's tokens in position order, cut every
``bucket_size``; its last chunk filled up with empty slots) and a query attends the keys of **its own
bucket** in its chunk and the previous one, at or before its position: a token's chunk then depends
only on earlier tokens of its bucket (the causal tests: no output at <= t changes with the tokens
after t). ``attend_across_buckets`` has no effect when causal (a chunk holds one bucket). The layout
has at most ``N / L + n_buckets + 1`` chunks per round (empty slots included), up to about twice the
non-causal work.

Decoding: no cached path (``decode_step`` raises). :meth:`ReformerAttention.decode_state_bytes`
states what a decoder keeps: every past token's key source and value (a later query can land in any
bucket, and the last ``2 bucket_size - 1`` tokens of every bucket are in reach; with the default
``n_buckets ~ max_length / bucket_size`` that is every token) plus its bucket in each round.

Same function as reformer-pytorch's ``LSHAttention`` (tested with the same rotations,
``tests/variants/test_peers_equivalence.py``) except for two choices, where ours is the one documented above:

* look-back wrap: reformer-pytorch (like Trax) sorts all rounds as one sequence, so the first
  chunk of round r looks back to the *last chunk of round r - 1* (of round ``n_hashes - 1`` for
  r = 0); here each round wraps to its own last chunk. Right: rounds are independent hashes and
  the paper's estimator combines independent rounds; the cross-round look-back is an artefact of
  concatenating them. With ``n_hashes=1`` the two agree exactly.
* padding: reformer-pytorch hashes and sorts padded tokens with the real ones, so which real
  tokens share a chunk depends on the padded tokens' contents; here they go to an extra bucket
  after the real ones and change nothing (the interface's rule). Its self-attention value
  ``-5e4`` (ours ``-1e5``, as Trax) changes no output: both are ``exp``-negligible beside any
  other real key, and a query with no other key outputs its own value either way.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ._fast import CudaCompiled, auto_or_reference, check_backend, compute_dtype, no_autocast
from ._precision import lowest, upcast, working_dtype
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
    #: "auto" (= fast, on every device) | "reference" | "fast"
    backend: str = "auto"


@register("reformer", ReformerConfig)
class ReformerAttention(Attention):
    """LSH self-attention with shared QK (Kitaev et al. 2020); ``k`` is ignored.

    ``forward(q, k, v, key_padding_mask=None)``: ``(B, H, N, D)`` -> ``(B, H, N, D)``.
    """

    exact = False
    complexity = "O(N log N)"
    supports_causal = True
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
        check_backend("reformer", config.backend)
        self.last_backend: str | None = None
        if config.n_buckets is not None:
            max_buckets = config.n_buckets
        else:
            padded = math.ceil(config.max_length / config.bucket_size) * config.bucket_size
            max_buckets = _buckets_for(padded, config.bucket_size)
        self.max_buckets = max_buckets
        gen = torch.Generator().manual_seed(config.seed)
        rotations = torch.randn(config.head_dim, config.n_hashes, max(max_buckets // 2, 1), generator=gen)
        self.register_buffer("rotations", rotations)

    def decode_state_bytes(self, length: int, element_bytes: int = 4) -> tuple[int | None, str]:
        """``2 N H D`` numbers (each past token's key source ``q`` and value) plus ``N H n_hashes``
        int32 bucket ids (module docstring)."""
        c = self.config
        return (length * c.heads * (2 * c.head_dim * element_bytes + 4 * c.n_hashes),
                "every past token's key (q) and value and its bucket per round (int32): a new query can land "
                "in any bucket, whose last 2 bucket_size - 1 tokens it may attend; no cached decoding path")

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
        """``(B, H, N, D)`` -> bucket ids ``(B, H, n_hashes, N)`` in ``[0, n_buckets)``, computed in at least fp32."""
        b, h, n, d = q.shape
        if n_buckets == 1:
            return torch.zeros(b, h, self.config.n_hashes, n, dtype=torch.long, device=q.device)
        work = working_dtype(q.dtype, self.rotations.dtype)
        rot = self.rotations[..., : n_buckets // 2].to(work)
        with no_autocast(q.device):  # at least fp32 under any autocast: buckets must not depend on it
            rotated = torch.einsum("bhnd,drk->bhrnk", q.to(work), rot)
        # argmax([r; -r]) without concatenating: first index of max(r), or of min(r) + n/2
        top, i_top = rotated.max(dim=-1)
        low, i_low = rotated.min(dim=-1)
        return torch.where(top >= -low, i_top, i_low + n_buckets // 2)

    def layout(self, buckets: torch.Tensor, n_pad: int, as_written: bool = False) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Where each token sits in the chunked sequence of its round (no gradient).

        ``buckets (B, H, R, Np)`` (padded tokens already in the extra bucket ``n_buckets``) ->
        ``(slots, undo, T)``: ``slots (B, H, R, T L)`` the position at each slot (``Np``: an empty slot,
        causal only), ``undo (B, H, R, Np)`` the slot of each position, ``T`` the number of chunks.

        Not causal: the positions sorted by ``(bucket, position)``, ``T = Np / L`` (the paper).
        Causal: the same order, but every bucket starts a new chunk (its tokens, in position order,
        are cut every ``L``; the last chunk of a bucket is filled up with empty slots): a token's
        chunk then depends only on the earlier tokens of its bucket, so no future token can move a
        past query into another chunk. ``T`` is the largest number of chunks over ``(B, H, R)``.

        ``as_written`` (the reference path, not causal): the sort and its inverse as two argsorts.
        Time O(B H R Np log Np) (the sort; causal adds O(B H R (Np + n_buckets)) counts and scatters),
        memory O(B H R T L) longs. Causal reads one ``T`` back to the host (a sync on CUDA).
        """
        chunk = self.config.bucket_size
        pos = torch.arange(n_pad, device=buckets.device)
        if as_written and not self.causal:
            order = (buckets * n_pad + pos).argsort(dim=-1)
            return order, order.argsort(dim=-1), n_pad // chunk
        s_key, order = (buckets * n_pad + pos).sort(dim=-1)
        if not self.causal:
            undo = torch.empty_like(order).scatter_(-1, order, pos.expand_as(order))
            return order, undo, n_pad // chunk
        s_bucket = s_key // n_pad
        n_b = int(buckets.max()) + 1
        counts = torch.zeros(*buckets.shape[:-1], n_b, dtype=torch.long, device=buckets.device)
        counts.scatter_add_(-1, buckets, torch.ones_like(buckets))
        chunks = (counts + chunk - 1) // chunk
        chunk_start = chunks.cumsum(-1) - chunks                          # first chunk of each bucket
        count_start = counts.cumsum(-1) - counts                          # first sorted slot of each bucket
        rank = pos - count_start.gather(-1, s_bucket)                      # rank inside the bucket
        new_slot = chunk * chunk_start.gather(-1, s_bucket) + rank         # (B, H, R, Np)
        n_chunks = max(int(chunks.sum(-1).max()), 1)
        slots = torch.full((*buckets.shape[:-1], n_chunks * chunk), n_pad, dtype=torch.long, device=buckets.device)
        slots.scatter_(-1, new_slot, order)
        undo = torch.empty_like(order).scatter_(-1, order, new_slot)
        return slots, undo, n_chunks

    def forward(self, q, k, v, key_padding_mask=None):
        cfg = self.config
        b, h, n, d = q.shape
        mask = normalize_key_padding_mask(key_padding_mask, b, n, q.device)
        mask = pad_mask_to_multiple(mask, b, n, cfg.bucket_size, q.device)
        self.last_backend = auto_or_reference("fast") if cfg.backend == "auto" else cfg.backend
        if self.last_backend == "fast":
            cd = compute_dtype(q)
            with no_autocast(q.device):
                return self._fast(q.to(cd), v.to(cd), mask)[..., :n, :]
        qp, _ = pad_to_multiple(q, cfg.bucket_size)
        vp, _ = pad_to_multiple(v, cfg.bucket_size)
        n_pad = qp.shape[-2]
        if mask is None:
            mask = torch.ones(b, n_pad, dtype=torch.bool, device=q.device)
        n_buckets = self.n_buckets_for(n_pad)
        rounds, chunk = cfg.n_hashes, cfg.bucket_size
        causal = self.causal

        with torch.no_grad():
            buckets = self.hash(qp.detach(), n_buckets)  # (B, H, R, Np)
            # padded tokens go to an extra bucket after the real ones
            buckets = buckets.masked_fill(~mask[:, None, None, :], n_buckets)
            order, undo, n_chunks = self.layout(buckets, n_pad, as_written=True)  # slot -> position (Np: empty), position -> slot
            slots = order.shape[-1]
            # per slot: bucket (-1: empty) and real (False: empty or padded)
            s_buckets = F.pad(buckets, (0, 1), value=-1).gather(-1, order)
            s_mask = F.pad(mask, (0, 1), value=False)[:, None, None, :].expand(b, h, rounds, n_pad + 1).gather(-1, order)

        def sort(x):  # (B, H, Np, D) -> (B, H, R, C, L, D); an empty slot reads a zero row
            x = F.pad(x, (0, 0, 0, 1)).unsqueeze(2).expand(b, h, rounds, n_pad + 1, x.shape[-1])
            x = x.gather(3, order[..., None].expand(b, h, rounds, slots, x.shape[-1]))
            return x.reshape(b, h, rounds, n_chunks, chunk, x.shape[-1])

        def chunked(x):  # (B, H, R, T L) -> (B, H, R, C, L)
            return x.reshape(b, h, rounds, n_chunks, chunk)

        def look_one_back(x):  # chunk c sees chunks c and c-1 (wrapping); dim 3 = chunks
            if n_chunks == 1:
                return x
            return torch.cat([x, x.roll(1, dims=3)], dim=4)

        sq = sort(qp)
        sk = F.normalize(upcast(sq), dim=-1).to(sq.dtype)  # shared QK: unit-norm keys
        sv = sort(vp)
        q_pos, q_bkt = chunked(order), chunked(s_buckets)
        k_pos, k_bkt, k_mask = (look_one_back(chunked(x)) for x in (order, s_buckets, s_mask))
        sk, sv = look_one_back(sk), look_one_back(sv)

        scores = upcast(torch.matmul(sq, sk.transpose(-2, -1))) * (1.0 / math.sqrt(d))  # (B,H,R,C,L,W)
        scores = scores.masked_fill(q_pos[..., :, None] == k_pos[..., None, :], SELF_ATTN_SCORE)
        allowed = k_mask[..., None, :]
        if causal:  # the query's bucket only (its chunk's keys of other buckets could move), at or before it
            allowed = allowed & (q_bkt[..., :, None] == k_bkt[..., None, :]) & (k_pos[..., None, :] <= q_pos[..., :, None])
        elif not cfg.attend_across_buckets:
            scores = scores.masked_fill(q_bkt[..., :, None] != k_bkt[..., None, :], SELF_ATTN_SCORE * 2)
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)

        lse = torch.logsumexp(scores, dim=-1, keepdim=True)
        probs = torch.exp(scores - lse).to(sv.dtype)
        if causal:  # a padded query with no real key at or before it outputs 0
            probs = probs * allowed.any(dim=-1, keepdim=True).to(probs.dtype)
        out = torch.matmul(probs, sv)  # (B, H, R, C, L, D)

        # undo the sort, then combine the rounds weighted by softmax over their logsumexps
        dv = v.shape[-1]
        out = out.reshape(b, h, rounds, slots, dv)
        out = out.gather(3, undo[..., None].expand(b, h, rounds, n_pad, dv))
        lse = lse.reshape(b, h, rounds, slots).gather(-1, undo)
        weights = torch.softmax(lse, dim=2).unsqueeze(-1)
        out = (upcast(out, weights.dtype) * weights).sum(dim=2).to(out.dtype)
        return out[..., :n, :]

    def _fast(self, q: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The ``fast`` backend on ``q, v (B, H, N, D)`` in the compute dtype, ``mask`` already
        padded to the chunk multiple (or None); returns ``(B, H, N_pad, D)``.

        Layout: per (batch, head, round) ``g`` the chunked sequence's ``T`` chunks of ``L`` rows
        (:meth:`layout`) are stored after a copy of its last chunk, ``[c_{T-1}, c_0, ..., c_{T-1}]``, and
        all ``g`` one after another (plus ``L`` spare rows at the end). Window ``w = g (T + 1) + c`` --
        the keys of chunk ``c`` (its look-back chunk, then itself) -- is then rows ``[w L, w L + 2 L)``
        and its queries rows ``[(w + 1) L, (w + 2) L)``: uniform strides over ``w``. Window ``c = T`` of
        each ``g`` is a spare whose outputs are dropped. An empty slot (causal) reads a zero row.
        """
        cfg = self.config
        chunk, rounds = cfg.bucket_size, cfg.n_hashes
        qp, _ = pad_to_multiple(q, chunk)
        vp, _ = pad_to_multiple(v, chunk)
        b, h, n_pad, d = qp.shape
        n_buckets = self.n_buckets_for(n_pad)
        groups = b * h * rounds
        with torch.no_grad():
            buckets = self.hash(qp, n_buckets)                                   # (B, H, R, Np)
            if mask is not None:  # padded tokens go to an extra bucket after the real ones
                buckets = buckets.masked_fill(~mask[:, None, None, :], n_buckets)
            slots, undo, n_chunks = self.layout(buckets, n_pad)
            s_bucket = F.pad(buckets, (0, 1), value=-1).gather(-1, slots)        # -1: an empty slot
            # the look-back layout (see the docstring): row r of group g holds slot ext[r]
            lead = slots.reshape(groups, n_chunks, chunk)
            ext = torch.cat([lead[:, -1:], lead], dim=1)                        # (G, T + 1, L)
            bh = torch.arange(b * h, device=q.device).repeat_interleave(rounds)
            rows = torch.where(ext < n_pad, bh[:, None, None] * n_pad + ext, b * h * n_pad).reshape(-1)
            rows = torch.cat([rows, rows[:chunk]])                              # L spare rows
            lead_b = s_bucket.reshape(groups, n_chunks, chunk)
            ext_bucket = torch.cat([lead_b[:, -1:], lead_b], dim=1).reshape(-1)
            ext_bucket = torch.cat([ext_bucket, ext_bucket[:chunk]])
            ext_real = (ext_bucket < n_buckets) & (ext_bucket >= 0)
            if n_chunks == 1:  # a single chunk has no look-back: its copy attends nowhere
                ext_real = ext_real.view(-1, chunk).clone()
                ext_real[0::2] = False
                ext_real = ext_real.reshape(-1)
            ext_pos = torch.cat([ext.reshape(-1), ext.reshape(-1)[:chunk]])
        acc = working_dtype(q.dtype)
        inv_norm = 1.0 / torch.linalg.vector_norm(qp, dim=-1, keepdim=True, dtype=acc).clamp_min(1e-12)
        kn = (qp * inv_norm).to(qp.dtype)                                        # shared QK: unit keys
        table = torch.cat([qp, kn, vp], dim=-1).reshape(b * h * n_pad, 3 * d)
        table = F.pad(table, (0, 0, 0, 1))                                       # the empty slots' zero row
        gathered = table[rows]                                                   # the one gather
        attend = _BlockedLookBack if q.device.type == "cpu" else _LookBackAttention
        out, lse = attend.apply(gathered, ext_pos, ext_bucket, ext_real, chunk, 1.0 / math.sqrt(d),
                                cfg.attend_across_buckets, self.causal)
        # undo the sort (spare windows dropped: each position's row in the output, per round), then
        # combine the rounds with fp32 weights
        with torch.no_grad():
            g = torch.arange(groups, device=q.device).view(b, h, rounds, 1)
            back = (g * (n_chunks + 1) * chunk + undo).reshape(-1)
        out = out.reshape(-1, d)[back].view(b, h, rounds, n_pad, d)
        weights = torch.softmax(lse.reshape(-1)[back].view(b, h, rounds, n_pad), dim=2)   # fp32
        return (out * weights.unsqueeze(-1).to(out.dtype)).sum(dim=2)


@CudaCompiled
def _window_softmax(scores, q_pos, k_pos, k_real, q_bucket, k_bucket, scale: float, across: bool, causal: bool):
    """The masked softmax of a window in fp32: ``scores (W, L, 2L)`` (raw ``q . k``), positions /
    buckets of the queries ``(W, L)`` and keys ``(W, 2L)``, ``k_real (W, 2L)``. Same masking as the
    reference path (self ``SELF_ATTN_SCORE``, other buckets twice that, padded keys ``finfo.min``;
    causal: keys of other buckets or after the query ``finfo.min`` too, and a row with no allowed key 0).
    Returns probabilities in ``scores``' dtype and the fp32 log-sum-exp ``(W, L)``."""
    s = upcast(scores) * scale
    s = torch.where(q_pos[:, :, None] == k_pos[:, None, :], SELF_ATTN_SCORE, s)
    allowed = k_real[:, None, :]
    if causal:
        allowed = allowed & (q_bucket[:, :, None] == k_bucket[:, None, :]) & (k_pos[:, None, :] <= q_pos[:, :, None])
    elif not across:
        s = torch.where(q_bucket[:, :, None] != k_bucket[:, None, :], SELF_ATTN_SCORE * 2, s)
    s = torch.where(allowed, s, lowest(s.dtype))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse[..., None])
    if causal:
        p = p * allowed.any(dim=-1, keepdim=True)
    return p.to(scores.dtype), lse


@CudaCompiled
def _window_softmax_backward(p, dp, d_lse, q_pos, k_pos, k_real, q_bucket, k_bucket, scale: float,
                             across: bool, causal: bool):
    """Gradient w.r.t. the raw scores of :func:`_window_softmax` (``p`` the probabilities, ``dp``
    and ``d_lse`` the incoming gradients): ``scale p (dp - sum_j p dp + d_lse)``, 0 at every
    replaced entry (self, other buckets, padded keys; causal: later keys), as ``masked_fill`` gives the
    reference."""
    pf, dpf = upcast(p, d_lse.dtype), upcast(dp, d_lse.dtype)
    ds = pf * (dpf - (pf * dpf).sum(dim=-1, keepdim=True) + d_lse[..., None])
    replaced = (q_pos[:, :, None] == k_pos[:, None, :]) | ~k_real[:, None, :]
    if causal:
        replaced = replaced | (q_bucket[:, :, None] != k_bucket[:, None, :]) | (k_pos[:, None, :] > q_pos[:, :, None])
    elif not across:
        replaced = replaced | (q_bucket[:, :, None] != k_bucket[:, None, :])
    return (ds.masked_fill(replaced, 0.0) * scale).to(p.dtype)


def _windows(t: torch.Tensor, chunk: int, width: int, offset_rows: int, column: int, length: int):
    """Overlapping view ``(W, length, width)`` of the rows ``t (rows, E)``: window ``w`` starts at row
    ``(w + offset_rows) * chunk``, columns ``[column, column + width)``; ``W = rows / chunk - 1``."""
    rows, e = t.shape
    n_windows = rows // chunk - 1
    return t.as_strided((n_windows, length, width), (chunk * e, e, 1),
                        t.storage_offset() + offset_rows * chunk * e + column)


class _LookBackAttention(torch.autograd.Function):
    """Chunked attention over the look-back layout of :meth:`ReformerAttention._fast` (CUDA: the
    masked softmax is one compiled pointwise kernel; :class:`_BlockedLookBack` on the CPU).

    Input ``rows (R, 3D)``: ``[q | k | v]`` per row; window ``w`` has queries rows
    ``[(w + 1) L, (w + 2) L)`` and keys/values rows ``[w L, w L + 2 L)`` (overlapping strided
    views, never copied); ``pos``, ``bucket``, ``real`` per row. Output ``(W, L, D)`` and the fp32
    log-sum-exp ``(W, L)``. Forward: ``softmax(q k^T / sqrt(D)) v`` per window with the
    reference's masks; backward by hand (saves the rows and the probabilities only)."""

    @staticmethod
    def forward(ctx, rows, pos, bucket, real, chunk, scale, across, causal):
        d = rows.shape[1] // 3
        q = _windows(rows, chunk, d, 1, 0, chunk)
        k = _windows(rows, chunk, d, 0, d, 2 * chunk)
        v = _windows(rows, chunk, d, 0, 2 * d, 2 * chunk)
        meta = _window_meta(pos, bucket, real, chunk)
        scores = torch.bmm(q, k.transpose(1, 2))                                 # (W, L, 2L)
        p, lse = _window_softmax(scores, *meta, scale, across, causal)
        out = torch.bmm(p, v)
        ctx.save_for_backward(rows, pos, bucket, real, p)
        ctx.chunk, ctx.scale, ctx.across, ctx.causal = chunk, scale, across, causal
        return out, lse

    @staticmethod
    def backward(ctx, d_out, d_lse):
        rows, pos, bucket, real, p = ctx.saved_tensors
        chunk = ctx.chunk
        d = rows.shape[1] // 3
        q = _windows(rows, chunk, d, 1, 0, chunk)
        k = _windows(rows, chunk, d, 0, d, 2 * chunk)
        v = _windows(rows, chunk, d, 0, 2 * d, 2 * chunk)
        d_out = d_out.to(rows.dtype)
        dp = torch.bmm(d_out, v.transpose(1, 2))
        ds = _window_softmax_backward(p, dp, d_lse, *_window_meta(pos, bucket, real, chunk), ctx.scale,
                                      ctx.across, ctx.causal)
        d_rows = torch.zeros_like(rows)
        _windows(d_rows, chunk, d, 1, 0, chunk).copy_(torch.bmm(ds, k))           # queries: disjoint
        d_k = torch.bmm(ds.transpose(1, 2), q)                                   # (W, 2L, D)
        d_v = torch.bmm(p.transpose(1, 2), d_out)
        for col, grad in ((d, d_k), (2 * d, d_v)):  # each window's two halves, one strided add each
            _windows(d_rows, chunk, d, 0, col, chunk).add_(grad[:, :chunk])
            _windows(d_rows, chunk, d, 1, col, chunk).add_(grad[:, chunk:])
        return d_rows, None, None, None, None, None, None, None


def _window_meta(pos, bucket, real, chunk):
    """Per-window query positions/buckets ``(W, L)`` and key positions/real/buckets ``(W, 2L)``."""
    def win(t, offset_rows, length):
        n_windows = t.shape[0] // chunk - 1
        return t.as_strided((n_windows, length), (chunk, 1), t.storage_offset() + offset_rows * chunk).contiguous()

    return (win(pos, 1, chunk), win(pos, 0, 2 * chunk), win(real, 0, 2 * chunk), win(bucket, 1, chunk),
            win(bucket, 0, 2 * chunk))


#: scores per block of :class:`_BlockedLookBack` (4 MiB of fp32): small allocations the C allocator
#: reuses (a full-size ``(W, L, 2L)`` temporary is fresh ``mmap`` pages every call on the CPU)
BLOCK_ELEMENTS = 1 << 20


class _BlockedLookBack(torch.autograd.Function):
    """:class:`_LookBackAttention`'s function (same inputs, outputs and gradients) for the CPU: the
    windows in blocks of at most :data:`BLOCK_ELEMENTS` scores, every pass in place on the block.

    Per block: ``s = (q / sqrt(D)) k^T`` (one ``bmm``); the self entries -- the diagonal of the
    second half, where window ``w``'s queries sit among its keys -- set to ``SELF_ATTN_SCORE``
    (a strided view, no comparison of positions); other buckets (``attend_across_buckets=False``)
    ``2 SELF_ATTN_SCORE``; the padded keys' ``finfo.min`` added as a ``(W, 1, 2L)`` bias (``s + finfo.min
    == finfo.min``: the reference's replacement); causal: keys of other buckets or after the query set
    to ``finfo.min``; the softmax in place, its log-sum-exp from two row maxima
    (``lse = max s - log max p``, no second ``exp`` pass); rows with no allowed key (causal) 0;
    ``p v``. The probabilities are stored per block (``W L 2L`` numbers, as the reference).
    Backward per block: ``ds = p (dp - rowsum(dO O) + d_lse)`` in place, 0 on the self diagonal
    and (other buckets, causal masks, windows without a real key) where the reference's
    ``masked_fill`` stops the gradient. Time O(W L^2 D), memory O(W L^2) + one block."""

    @staticmethod
    def forward(ctx, rows, pos, bucket, real, chunk, scale, across, causal):
        d = rows.shape[1] // 3
        q = _windows(rows, chunk, d, 1, 0, chunk)
        k = _windows(rows, chunk, d, 0, d, 2 * chunk)
        v = _windows(rows, chunk, d, 0, 2 * d, 2 * chunk)
        q_pos, k_pos, k_real, q_bucket, k_bucket = _window_meta(pos, bucket, real, chunk)
        n_windows = q.shape[0]
        acc = working_dtype(rows.dtype)
        neg = lowest(acc)
        pad_bias = torch.zeros(k_real.shape, dtype=acc, device=rows.device).masked_fill_(~k_real, neg)[:, None, :]
        empty = ~k_real.any(dim=-1)                                   # windows without a real key
        out = rows.new_empty(n_windows, chunk, d)
        lse = torch.empty(n_windows, chunk, dtype=acc, device=rows.device)
        step = max(1, BLOCK_ELEMENTS // (2 * chunk * chunk))
        probs = []
        for w0 in range(0, n_windows, step):
            ws = slice(w0, min(w0 + step, n_windows))
            s = torch.bmm(q[ws] * scale, k[ws].transpose(1, 2))
            if s.dtype != acc:
                s = s.to(acc)
            s[:, :, chunk:].diagonal(dim1=1, dim2=2).fill_(SELF_ATTN_SCORE)
            has_key = None
            if causal:
                allowed = ((q_bucket[ws, :, None] == k_bucket[ws, None, :])
                           & (k_pos[ws, None, :] <= q_pos[ws, :, None]) & k_real[ws, None, :])
                s.masked_fill_(~allowed, neg)
                has_key = allowed.any(dim=-1)
            else:
                if not across:
                    s.masked_fill_(q_bucket[ws, :, None] != k_bucket[ws, None, :], SELF_ATTN_SCORE * 2)
                s.add_(pad_bias[ws])
            top = s.amax(dim=-1)
            torch.softmax(s, dim=-1, out=s)
            lse[ws] = top - torch.log(s.amax(dim=-1))
            if has_key is not None and not bool(has_key.all()):
                s.mul_(has_key[..., None])
            p = s.to(rows.dtype)
            torch.bmm(p, v[ws], out=out[ws])
            probs.append(p)
        ctx.probs = probs
        ctx.save_for_backward(rows, pos, bucket, real, out, empty)
        ctx.chunk, ctx.scale, ctx.across, ctx.causal, ctx.step = chunk, scale, across, causal, step
        return out, lse

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, d_lse):
        rows, pos, bucket, real, out, empty = ctx.saved_tensors
        chunk, scale, step = ctx.chunk, ctx.scale, ctx.step
        d = rows.shape[1] // 3
        q = _windows(rows, chunk, d, 1, 0, chunk)
        k = _windows(rows, chunk, d, 0, d, 2 * chunk)
        v = _windows(rows, chunk, d, 0, 2 * d, 2 * chunk)
        q_pos, k_pos, _, q_bucket, k_bucket = _window_meta(pos, bucket, real, chunk)
        acc = d_lse.dtype
        d_out = d_out.to(rows.dtype).contiguous()
        shift = upcast(d_out * out, acc).sum(dim=-1) - d_lse                     # rowsum(p dp) - d_lse
        any_empty = bool(empty.any())
        d_rows = torch.zeros_like(rows)
        dq_view = _windows(d_rows, chunk, d, 1, 0, chunk)
        halves = [(_windows(d_rows, chunk, d, 0, col, chunk), _windows(d_rows, chunk, d, 1, col, chunk))
                  for col in (d, 2 * d)]
        for w0, p in zip(range(0, q.shape[0], step), ctx.probs):
            ws = slice(w0, w0 + p.shape[0])
            ds = torch.bmm(d_out[ws], v[ws].transpose(1, 2))
            if ds.dtype != acc:
                ds = ds.to(acc)
            ds.sub_(shift[ws, :, None]).mul_(p)
            ds[:, :, chunk:].diagonal(dim1=1, dim2=2).zero_()                    # self: replaced, no gradient
            if ctx.causal:
                ds.masked_fill_((q_bucket[ws, :, None] != k_bucket[ws, None, :])
                                | (k_pos[ws, None, :] > q_pos[ws, :, None]), 0.0)
            elif not ctx.across:
                ds.masked_fill_(q_bucket[ws, :, None] != k_bucket[ws, None, :], 0.0)
            if any_empty:                                                        # only those windows
                ds[empty[ws]] = 0.0
            ds = ds.to(rows.dtype)
            dq_view[ws].copy_(torch.bmm(ds, k[ws]).mul_(scale))              # (a strided out= loops per window)
            d_k = torch.bmm(ds.transpose(1, 2), q[ws] * scale)                  # (w, 2L, D)
            d_v = torch.bmm(p.transpose(1, 2), d_out[ws])
            for (first, second), grad in zip(halves, (d_k, d_v)):
                first[ws].add_(grad[:, :chunk])
                second[ws].add_(grad[:, chunk:])
        return d_rows, None, None, None, None, None, None, None
