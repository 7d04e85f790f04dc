"""BigBird block-sparse attention (Zaheer et al. 2020, "Big Bird: Transformers for Longer
Sequences", NeurIPS), the ITC variant used by the LRA paper (Tay et al. 2021).

The sequence is cut into ``nb = ceil(N / block_size)`` blocks (padded internally; padded
keys are masked out and padded rows dropped on return). The attention pattern is a fixed
block layout ``(heads, nb, nb)``:

* **global** -- the first ``ceil(global_blocks / 2)`` and the last ``floor(global_blocks / 2)``
  blocks (default 2: the first and the last block). Global query blocks attend to every
  key; every query attends to the global key blocks.
* **window** -- query block ``i`` attends key blocks ``i - (window_blocks - 1) // 2 ..
  i + window_blocks // 2`` (default 3: itself and one neighbour on each side), clipped at
  the sequence ends (no wrap-around).
* **random** -- ``random_blocks`` (default 3) further key blocks per query block and head,
  drawn once at construction from ``torch.Generator().manual_seed(config.seed)`` for
  ``max_length`` (each row picks distinct blocks outside its window and the global
  blocks, as in the paper's code) and kept in the buffer ``rand_blocks: (heads,
  ceil(max_length / block_size), random_blocks)``; never redrawn. A shorter sequence uses
  the first ``nb`` rows, with block indices folded into range (``index % nb``).

Within a row a key block picked twice (e.g. a folded random block landing in the window)
counts once. When the sequence has no more blocks than one row may select
(``nb <= window_blocks + global_blocks + random_blocks``) every block is selected and the
result equals ``full`` attention.

Shapes: ``q, k, v: (B, H, N, D)`` -> ``(B, H, N, D)`` with ``H == heads`` (the random
layout is per head); ``key_padding_mask: (B, N)`` bool, True = real; ``N <= max_length``.

Complexity: time and memory O(N * (window + global + random) * block_size) per head, i.e.
"O(N)" for fixed knobs, plus O(global * block_size * N) for the global query rows.

Backends (knob ``backend``):

* ``reference`` -- any device: for each non-global query block gather its selected key
  blocks into ``(B, H, nb, K * block_size, D)`` and take a masked softmax over them
  (duplicates and padded keys masked); global query blocks attend densely. Vectorized, no
  Python loops over heads or blocks.
* ``flex`` -- :func:`torch.nn.attention.flex_attention.flex_attention` with a BlockMask
  built from the same block layout and the key padding mask (compiled on CUDA, eager and
  unfused elsewhere, for testing), so both compute the same function.
* ``sdpa`` -- torch's fused flash kernel with a mask (:func:`attention_variants.local.fused_masked_attention`;
  CPU, or SDPA with a bias elsewhere): when every block is selected one call over the sequence with
  the padding bias (``is_causal`` when causal); otherwise the same gathered key blocks as
  ``reference`` as a batch of ``B H nm`` query blocks ``(B H nm, 1, bs, D)`` against their
  ``(B H nm, 1, K bs, D)`` keys with a ``(B H nm, 1, 1, K bs)`` bias (causal:
  ``(B H nm, 1, bs, K bs)``), and the global rows as one call. Time O(B H N K bs D) as ``reference``;
  no scores are stored (the kernel recomputes them in the backward pass): memory O(B H N K D) for the
  gathered keys and values, O(B H N K) for the bias (causal: O(B H N K bs)).
* ``auto`` -- ``flex`` on CUDA tensors (falling back to ``reference`` if the kernel fails),
  ``sdpa`` on the CPU, ``reference`` elsewhere; ``last_backend`` records which one ran.

A query with no real key in its allowed set gets a zero output, never NaN.

Causal (``causal=True``), the BigBird decoder's pattern: the sliding blocks look back only
(query block ``i`` sees ``i - window_blocks + 1 .. i``), the global blocks are the first
``global_blocks`` blocks (they attend causally to each other; every later block sees them), and the
``random_blocks`` are drawn per row from the past blocks outside its window and the global ones
(``rand_blocks`` is drawn for that causal layout); inside its own block a token attends causally
(keys at or before it). Every selected block lies at or before the query's; ``selects_all`` then
means causal full attention.

Decoding: no cached path. :meth:`BigBirdAttention.decode_state_bytes` counts what a decoder would
keep: the keys and values of the global blocks, of the window (the last ``window_blocks - 1``
full blocks and the current one) and of every past block that a later row picks as a random block,
per head (the layout is fixed for ``max_length``, so a decoder knows which past blocks it still needs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import Attention, AttentionConfig
from .local import (BlockMaskCache, dispatch_backend, flex_with_block_mask, fused_masked_attention, make_block_mask,
                    masked_softmax_av, scores_qk)
from .masking import normalize_key_padding_mask
from .registry import register

BACKENDS = ("auto", "reference", "flex", "sdpa")


@dataclass
class BigBirdConfig(AttentionConfig):
    #: tokens per block (LRA / paper: 64)
    block_size: int = 64
    #: sliding key blocks per query block, itself included (paper ITC: 3)
    window_blocks: int = 3
    #: global blocks: first ceil(g/2) and last floor(g/2) blocks (paper ITC: 2)
    global_blocks: int = 2
    #: random key blocks per query block and head (LRA: 3)
    random_blocks: int = 3
    #: "auto" (flex on CUDA, sdpa on the CPU, reference elsewhere) | "reference" | "flex" | "sdpa"
    backend: str = "auto"


def _check_int(name: str, value, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"bigbird: {name} must be an int >= {minimum}, got {value!r}")


@register("bigbird", BigBirdConfig)
class BigBirdAttention(Attention):
    """BigBird ITC block-sparse attention (Zaheer et al. 2020): window + global + random
    blocks. ``(B, H, N, D)`` in and out; time and memory O(N) for fixed knobs."""

    exact = False  # exact only when every block is selected
    complexity = "O(N)"
    fast_devices = ("cuda", "cpu")
    supports_causal = True

    rand_blocks: torch.Tensor

    def __init__(self, config: BigBirdConfig):
        super().__init__(config)
        _check_int("block_size", config.block_size, 1)
        _check_int("window_blocks", config.window_blocks, 1)
        _check_int("global_blocks", config.global_blocks, 0)
        _check_int("random_blocks", config.random_blocks, 0)
        _check_int("heads", config.heads, 1)
        _check_int("max_length", config.max_length, 1)
        if config.backend not in BACKENDS:
            raise ValueError(f"unknown bigbird backend {config.backend!r}; "
                             f"choose one of {', '.join(BACKENDS)}")
        if self.causal:  # the decoder's layout: window looks back, the global blocks are the first ones
            self.left, self.right = config.window_blocks - 1, 0
            self.global_first, self.global_last = config.global_blocks, 0
        else:
            self.left = (config.window_blocks - 1) // 2
            self.right = config.window_blocks // 2
            self.global_first = (config.global_blocks + 1) // 2
            self.global_last = config.global_blocks // 2
        self.max_blocks = -(-config.max_length // config.block_size)
        self.register_buffer("rand_blocks", self._draw_random_blocks(), persistent=True)
        self.last_backend: str | None = None
        self._block_masks = BlockMaskCache()
        self._flex_failed: dict[tuple, str] = {}  # input kinds flex could not run (auto backend)

    # ------------------------------------------------------------------ layout
    def _draw_random_blocks(self) -> torch.Tensor:
        """``(heads, max_blocks, r)`` long: per head and query block, ``r`` distinct key blocks
        outside the row's window and the global blocks, and (causal) before the row (fewer
        candidates than ``r``: the rest repeat excluded blocks and are masked as duplicates or,
        causal, as future blocks)."""
        cfg, nb = self.config, self.max_blocks
        r = min(cfg.random_blocks, nb)
        gen = torch.Generator().manual_seed(cfg.seed)
        i = torch.arange(nb)[:, None]
        j = torch.arange(nb)[None, :]
        excluded = ((j >= i - self.left) & (j <= i + self.right)
                    | (j < self.global_first) | (j >= nb - self.global_last))
        if self.causal:
            excluded = excluded | (j > i)
        # one head at a time (construction only) to keep the (nb, nb) priorities small
        heads = [torch.rand(nb, nb, generator=gen).masked_fill(excluded, -1.0).topk(r, dim=-1).indices
                 for _ in range(cfg.heads)]
        return torch.stack(heads)  # (heads, nb, r): the r highest random priorities per row

    def slots_per_row(self) -> int:
        """How many key blocks one query block may select: window + global + random."""
        return self.config.window_blocks + self.config.global_blocks + self.rand_blocks.shape[-1]

    def selects_all(self, nb: int) -> bool:
        """True when a sequence of ``nb`` blocks is too short for sparsity: all blocks chosen."""
        return nb <= self.slots_per_row()

    def block_slots(self, nb: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Key blocks of the non-global query blocks ``global_first .. nb - global_last - 1``.

        Returns ``(index, valid)``, both ``(heads, nm, K)`` with ``K = slots_per_row()``:
        ``index`` in ``[0, nb)`` and ``valid`` False for slots outside the sequence,
        repeating an earlier slot of the same row, or (causal) after the row. Only meaningful
        when not :meth:`selects_all`.
        """
        cfg = self.config
        h = cfg.heads
        rows = torch.arange(self.global_first, nb - self.global_last, device=device)
        nm = rows.numel()
        window = rows[:, None] + torch.arange(-self.left, self.right + 1, device=device)
        glob = torch.cat([torch.arange(self.global_first, device=device),
                          torch.arange(nb - self.global_last, nb, device=device)])
        rand = self.rand_blocks.to(device)[:, rows] % nb
        index = torch.cat([window.expand(h, nm, -1), glob.expand(h, nm, -1), rand], dim=-1)
        index = index.masked_fill((index < 0) | (index >= nb), -1)
        earlier = torch.ones(index.shape[-1], index.shape[-1], dtype=torch.bool, device=device).tril(-1)
        duplicate = ((index[..., :, None] == index[..., None, :]) & earlier).any(-1)
        valid = (index >= 0) & ~duplicate
        if self.causal:
            valid = valid & (index <= rows[:, None])
        return index.clamp(min=0), valid

    def block_layout(self, nb: int, device=None) -> torch.Tensor:
        """``(heads, nb, nb)`` bool: query block ``i`` of head ``h`` attends key block ``j`` (causal:
        some of its tokens; inside block ``i`` itself a token sees the ones at or before it)."""
        h = self.config.heads
        if self.selects_all(nb):
            layout = torch.ones(h, nb, nb, dtype=torch.bool, device=device)
            return layout.tril() if self.causal else layout
        index, valid = self.block_slots(nb, device)
        middle = torch.zeros(h, index.shape[1], nb, dtype=torch.long, device=device)
        middle = middle.scatter_add_(-1, index, valid.long()) > 0
        full_rows = torch.ones(h, 1, nb, dtype=torch.bool, device=device)
        first = full_rows.expand(h, self.global_first, nb)
        if self.causal:
            first = torch.ones(self.global_first, nb, dtype=torch.bool, device=device).tril().expand(h, -1, -1)
        return torch.cat([first, middle, full_rows.expand(h, self.global_last, nb)], dim=1)

    def token_mask(self, n: int, device=None) -> torch.Tensor:
        """``(heads, n, n)`` bool: the layout expanded to tokens (causal: and ``j <= i``; for tests; O(N^2))."""
        bs = self.config.block_size
        pos = torch.arange(n, device=device) // bs
        layout = self.block_layout(-(-n // bs), device)
        tokens = layout[:, pos[:, None], pos[None, :]]
        if self.causal:
            tokens = tokens & torch.ones(n, n, dtype=torch.bool, device=device).tril()
        return tokens

    # ------------------------------------------------------------------ decoding
    def decode_blocks(self, length: int) -> torch.Tensor:
        """``(heads, nb)`` bool: the past blocks (``j < i``, ``i = length // block_size`` the block of the
        next token) a causal decoder keeps after ``length`` tokens, to generate up to ``max_length``:
        the global blocks, the window of the next token's block, and every block that a row ``>= i``
        of the layout picks as a random block (the layout is fixed, so these are known in advance)."""
        cfg = self.config
        nb, bs = self.max_blocks, cfg.block_size
        i = min(length // bs, nb - 1)
        j = torch.arange(nb)
        keep = ((j < self.global_first) | (j >= i - self.left))[None].expand(cfg.heads, nb).clone()
        if not self.selects_all(nb) and i >= self.global_first:
            index, valid = self.block_slots(nb)                       # rows global_first .. nb - 1
            later = index[:, i - self.global_first:][valid[:, i - self.global_first:]]
            heads = torch.arange(cfg.heads)[:, None, None].expand_as(index)[:, i - self.global_first:][
                valid[:, i - self.global_first:]]
            keep[heads, later] = True
        elif self.selects_all(nb):
            keep[:] = True
        return keep & (j < i)

    def decode_state_bytes(self, length: int, element_bytes: int = 4) -> tuple[int | None, str]:
        """Causal layout only: per head, the keys and values of the kept past blocks
        (:meth:`decode_blocks`, ``block_size`` tokens each) and of the tokens so far of the current
        block: ``2 D sum_h (bs |kept_h| + length mod bs)`` numbers."""
        cfg = self.config
        if not self.causal:
            return None, "bigbird decodes only with causal=True (the bidirectional layout reads future blocks)"
        if length > cfg.max_length:
            return None, f"bigbird: length {length} exceeds max_length={cfg.max_length} (the layout's extent)"
        bs = cfg.block_size
        current = length % bs
        if length // bs >= self.max_blocks:  # every block of the layout is complete: the last one is cached whole
            current = bs
        tokens = int(self.decode_blocks(length).sum()) * bs + cfg.heads * current
        return (2 * tokens * cfg.head_dim * element_bytes,
                "keys and values of the global blocks, the window and every past block a later row picks as "
                "random (per head), and of the current block so far; no cached decoding path")

    # ------------------------------------------------------------------ forward
    def forward(self, q, k, v, key_padding_mask=None):
        b, h, n, d = q.shape
        cfg = self.config
        if k.shape[-2] != n:
            raise ValueError(f"bigbird needs queries and keys of one length, got {n} and {k.shape[-2]}")
        if h != cfg.heads:
            raise ValueError(f"bigbird: input has {h} heads but the config has heads={cfg.heads} "
                             "(the random block layout is drawn per head)")
        nb = -(-n // cfg.block_size)
        if nb > self.max_blocks:
            raise ValueError(f"bigbird: sequence length {n} exceeds max_length={cfg.max_length} "
                             "(the random blocks are drawn once for max_length); raise max_length")
        mask = normalize_key_padding_mask(key_padding_mask, b, n, q.device)
        return dispatch_backend(self, q, k, v, mask, lambda: self._reference(q, k, v, mask),
                                lambda: self._fused(q, k, v, mask))

    def _gathered(self, q, k, v, mask):
        """The pieces both block-sparse paths share, for a sequence of ``nb`` blocks that does not
        select every block: ``(qb, kb, vb)`` ``(B, H, nb, bs, D)`` (zero-padded), ``real (B|1, Np)``,
        and for the ``nm`` non-global query blocks ``q_mid (B, H, nm, bs, D)``, their gathered key and
        value blocks ``(B, H, nm, K bs, D)`` and ``allowed``: ``(B|1, H, nm, 1, K bs)``, or causal
        ``(B|1, H, nm, bs, K bs)`` (the own block's keys after a query are not allowed)."""
        b, h, n, d = q.shape
        bs = self.config.block_size
        nb = -(-n // bs)
        pad = nb * bs - n
        real = torch.ones(1, n, dtype=torch.bool, device=q.device) if mask is None else mask
        real = F.pad(real, (0, pad), value=False)                          # (B|1, Np)
        qb, kb, vb = (F.pad(t, (0, 0, 0, pad)).reshape(b, h, nb, bs, d) for t in (q, k, v))
        index, valid = self.block_slots(nb, q.device)                      # (H, nm, K)
        nm, slots = index.shape[1], index.shape[2]
        heads = torch.arange(h, device=q.device)[:, None, None]
        k_sel = kb[:, heads, index].reshape(b, h, nm, slots * bs, d)       # (B, H, nm, K*bs, D)
        v_sel = vb[:, heads, index].reshape(b, h, nm, slots * bs, d)
        real_sel = real.view(-1, nb, bs)[:, index] & valid[None, ..., None]  # (B|1, H, nm, K, bs)
        allowed = real_sel.reshape(real_sel.shape[0], h, nm, 1, slots * bs)
        if self.causal:  # key position <= query position (only the own block is affected)
            rows = torch.arange(self.global_first, nb - self.global_last, device=q.device)
            tok = torch.arange(bs, device=q.device)
            k_pos = (index[..., None] * bs + tok).reshape(h, nm, 1, slots * bs)
            q_pos = (rows[:, None] * bs + tok)[None, :, :, None]               # (1, nm, bs, 1)
            allowed = allowed & (k_pos <= q_pos)
        q_mid = qb[:, :, self.global_first:nb - self.global_last]
        return qb, kb, vb, real, q_mid, k_sel, v_sel, allowed

    def _reference(self, q, k, v, mask):
        b, h, n, d = q.shape
        bs = self.config.block_size
        nb = -(-n // bs)
        scale = 1.0 / math.sqrt(d)
        if self.selects_all(nb):
            allowed = (torch.ones(1, 1, 1, n, dtype=torch.bool, device=q.device)
                       if mask is None else mask[:, None, None, :])
            if self.causal:
                allowed = allowed & torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
            return masked_softmax_av(scores_qk(q, k.transpose(-2, -1), scale), allowed, v)

        # non-global query blocks: their selected key blocks, gathered
        qb, kb, vb, real, q_mid, k_sel, v_sel, allowed = self._gathered(q, k, v, mask)
        scores = scores_qk(q_mid, k_sel.transpose(-2, -1), scale)          # (B, H, nm, bs, K*bs)
        out_mid = masked_softmax_av(scores, allowed, v_sel)                # (B, H, nm, bs, D)

        # global query blocks attend to every (real) key (causal: every real key at or before them)
        gf, gl = self.global_first, self.global_last
        q_glob = torch.cat([qb[:, :, :gf], qb[:, :, nb - gl:]], dim=2).reshape(b, h, (gf + gl) * bs, d)
        k_all, v_all = kb.reshape(b, h, nb * bs, d), vb.reshape(b, h, nb * bs, d)
        scores = scores_qk(q_glob, k_all.transpose(-2, -1), scale)
        allowed_glob = real[:, None, None, :]
        if self.causal:  # the global rows are the first gf blocks: positions 0 .. gf bs - 1
            i = torch.arange(gf * bs, device=q.device)
            allowed_glob = allowed_glob & (torch.arange(nb * bs, device=q.device)[None, :] <= i[:, None])
        out_glob = masked_softmax_av(scores, allowed_glob, v_all).view(b, h, gf + gl, bs, d)

        out = torch.cat([out_glob[:, :, :gf], out_mid.to(out_glob.dtype), out_glob[:, :, gf:]], dim=2)
        return out.reshape(b, h, nb * bs, d)[:, :, :n]

    def _fused(self, q, k, v, mask):
        """The ``sdpa`` backend (module docstring): the reference's function through
        :func:`fused_masked_attention`."""
        b, h, n, d = q.shape
        bs = self.config.block_size
        nb = -(-n // bs)
        if self.selects_all(nb):
            allowed = None if mask is None else mask[:, None, None, :]
            return fused_masked_attention(q, k, v, allowed, is_causal=self.causal)

        qb, kb, vb, real, q_mid, k_sel, v_sel, allowed = self._gathered(q, k, v, mask)
        nm, width = q_mid.shape[2], k_sel.shape[-2]
        groups = b * h * nm
        allowed = allowed.expand(b, *allowed.shape[1:]).reshape(groups, 1, allowed.shape[-2], width)
        out_mid = fused_masked_attention(q_mid.reshape(groups, 1, bs, d), k_sel.view(groups, 1, width, d),
                                         v_sel.view(groups, 1, width, d), allowed).view(b, h, nm, bs, d)

        gf, gl = self.global_first, self.global_last
        if self.causal:  # the first gf blocks, causally among themselves
            q_glob, k_glob, v_glob = (t[:, :, :gf].reshape(b, h, gf * bs, d) for t in (qb, kb, vb))
            out_glob = fused_masked_attention(q_glob, k_glob, v_glob, real[:, None, None, :gf * bs], is_causal=True)
        else:
            q_glob = torch.cat([qb[:, :, :gf], qb[:, :, nb - gl:]], dim=2).reshape(b, h, (gf + gl) * bs, d)
            out_glob = fused_masked_attention(q_glob, kb.reshape(b, h, nb * bs, d), vb.reshape(b, h, nb * bs, d),
                                              real[:, None, None, :])
        out_glob = out_glob.view(b, h, gf + gl, bs, d)
        out = torch.cat([out_glob[:, :, :gf], out_mid.to(out_glob.dtype), out_glob[:, :, gf:]], dim=2)
        return out.reshape(b, h, nb * bs, d)[:, :, :n]

    def flex_block_mask(self, n: int, mask: torch.Tensor | None, device):
        """Flex ``BlockMask`` of the block layout (per head), the real keys and (causal) ``kv_idx <= q_idx``."""
        bs, heads, causal = self.config.block_size, self.config.heads, self.causal
        layout = self.block_layout(-(-n // bs), device)
        if mask is None:
            def mask_mod(b, h, q_idx, kv_idx):
                allowed = layout[h, q_idx // bs, kv_idx // bs]
                return allowed & (kv_idx <= q_idx) if causal else allowed
            return make_block_mask(mask_mod, None, heads, n, device)

        def mask_mod(b, h, q_idx, kv_idx):
            allowed = layout[h, q_idx // bs, kv_idx // bs] & mask[b, kv_idx]
            return allowed & (kv_idx <= q_idx) if causal else allowed
        return make_block_mask(mask_mod, mask.shape[0], heads, n, device)

    def _flex(self, q, k, v, mask):
        n = q.shape[-2]
        block_mask = self._block_masks.get(n, q.device, mask, lambda: self.flex_block_mask(n, mask, q.device),
                                           extra=(self.rand_blocks.data_ptr(), self.rand_blocks._version))
        return flex_with_block_mask(q, k, v, block_mask)
