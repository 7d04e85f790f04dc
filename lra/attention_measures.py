"""What an attention variant's weights look like next to softmax: spikiness (entropy),
monotonicity in q . k, and softmax mimicry after fitting a learned feature map.

The Hedgehog paper (Zhang et al. 2024, arXiv 2402.04347, Sec. 3) ties the quality of a linear
attention to two properties of softmax attention's weights ``a_ij = softmax_j(q_i . k_j / sqrt(d))``:

* **spikiness**: low entropy ``H_i = -sum_j a_ij log a_ij`` (nats) of each query's weights; the
  paper compares the mean attention entropy of softmax and of linear attentions. Here
  :func:`attention_entropy` (of ``|a_ij| / sum_j |a_ij|``, the same thing for positive weights; the
  signed weights of random Fourier features are first made a distribution that way).
* **monotonicity**: ``a_ij`` increases with ``q_i . k_j``. The paper shows it as plots of weight
  against dot product; the number here is their Spearman rank correlation over each query's real
  keys (:func:`monotonicity`, with tied values given their average rank): 1 for softmax (up to
  ties), lower when larger dot products can get smaller weights (e.g. elu+1, cosFormer,
  Performer's noise).

Both are averaged over a random subset of ``s`` real queries, O(s N) weights per head.

Where the weights come from (:func:`attention_weights`): a kernel variant exposing
``feature_map`` gives them directly (:func:`lra.distill.variant_weights`, O(s N F)); any other
variant whose output is linear in the values (every variant here; nystrom's conv on V adds a
non-attention term unless ``conv_kernel=0``) is probed: ``out = A v`` with one-hot values gives A
a block of ``head_dim`` columns per call, O(N / head_dim) forward calls (:func:`probe_weights`).

Mimicry after fitting (:func:`fit_to_softmax`): a learned map (hedgehog, taylor, random_feature's
sigma) is fitted for a fixed number of Adam steps to the softmax weights of fresh input draws, by
the distillation loss of :mod:`lra.distill`; the bench then measures it on its own inputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .distill import distillation_loss, has_feature_map, row_kl, sample_queries, softmax_weights, variant_weights


def probe_weights(attn: torch.nn.Module, q: torch.Tensor, k: torch.Tensor,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """The ``(B, H, N, M)`` matrix A with ``attn(q, k, v) = A v`` for every v, read off with one-hot
    values ``head_dim`` columns at a time: ``ceil(M / head_dim)`` forward calls, O(N M) memory.

    Only meaningful for a variant that is linear in ``v`` (call it in eval mode, so nothing
    redraws); runs under ``torch.no_grad``; the dtype of ``q``."""
    b, h, m, d = k.shape
    cols = []
    with torch.no_grad():
        for start in range(0, m, d):
            width = min(d, m - start)
            v = torch.zeros(b, h, m, d, dtype=q.dtype, device=q.device)
            v[:, :, start:start + width, :width] = torch.eye(width, dtype=q.dtype, device=q.device)
            out = attn(q, k, v, key_padding_mask=mask)
            cols.append(out[..., :width].to(q.dtype))
    return torch.cat(cols, dim=-1)


def attention_weights(attn: torch.nn.Module, q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None,
                      idx: torch.Tensor) -> torch.Tensor:
    """Weights of queries ``idx`` over all keys, ``(B, H, S, M)``: from the feature map when the
    variant has one (differentiable), else by :func:`probe_weights` (not differentiable)."""
    if has_feature_map(attn):
        return variant_weights(attn, q, k, mask, idx)
    return probe_weights(attn, q, k, mask)[:, :, idx]


def attention_entropy(weights: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Entropy in nats of each row of ``weights (B, H, S, M)`` (made a distribution as
    ``|w| / sum |w|``; padded keys per ``mask (B, M)`` excluded; ``0 log 0 = 0``) -> ``(B, H, S)``."""
    p = weights.abs()
    if mask is not None:
        p = p.masked_fill(~mask[:, None, None, :], 0.0)
    p = p / p.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(p.dtype).tiny)
    return -torch.xlogy(p, p).sum(dim=-1)


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks ``0 .. n-1`` along the last dimension, tied values sharing their average rank."""
    n = x.shape[-1]
    values, order = x.sort(dim=-1)
    pos = torch.arange(n, device=x.device).expand_as(values)
    new = torch.ones_like(values, dtype=torch.long)
    new[..., 1:] = (values[..., 1:] != values[..., :-1]).long()
    group = new.cumsum(dim=-1) - 1                                   # tie-group id, ascending
    first = torch.full_like(pos, n).scatter_reduce(-1, group, pos, "amin")
    last = torch.zeros_like(pos).scatter_reduce(-1, group, pos, "amax")
    avg = (first + last).to(torch.float64).gather(-1, group) / 2
    return torch.empty_like(avg).scatter_(-1, order, avg)


def monotonicity(weights: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Spearman rank correlation of each row of ``weights`` with ``scores`` (both ``(B, H, S, M)``)
    over the real keys (``mask (B, M)``) -> ``(B, H, S)`` float64; NaN for a row with fewer than
    two real keys or constant weights or scores. O(S M log M)."""
    w, s = weights.double(), scores.double()
    if mask is not None:  # padded keys rank last (above every real value) and are left out below
        real = mask[:, None, None, :].expand_as(w)
        w, s = w.masked_fill(~real, float("inf")), s.masked_fill(~real, float("inf"))
    else:
        real = torch.ones_like(w, dtype=torch.bool)
    rw, rs = average_ranks(w), average_ranks(s)
    count = real.sum(dim=-1, keepdim=True).double()
    rw = torch.where(real, rw - rw.masked_fill(~real, 0).sum(-1, keepdim=True) / count, 0.0)
    rs = torch.where(real, rs - rs.masked_fill(~real, 0).sum(-1, keepdim=True) / count, 0.0)
    cov = (rw * rs).sum(dim=-1)
    return cov / (rw.square().sum(dim=-1) * rs.square().sum(dim=-1)).sqrt()


@dataclass
class WeightMeasures:
    """Means over the sampled real queries of every (batch, head)."""

    entropy: float            #: the variant's attention entropy (nats)
    softmax_entropy: float    #: softmax's on the same q, k (nats)
    monotonicity: float       #: Spearman(weights, q . k); 1 = monotone
    weight_kl: float          #: KL(softmax || variant) (nats): the weight-level mimicry gap


def weight_measures(attn: torch.nn.Module, q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None = None,
                    num_queries: int = 64, generator: torch.Generator | None = None) -> WeightMeasures:
    """Entropy, softmax entropy, monotonicity and KL(softmax || variant) of ``attn`` on
    ``q, k (B, H, N, d)`` (``mask (B, N)``), on ``num_queries`` random query positions."""
    idx = sample_queries(q.shape[-2], num_queries, generator, q.device)
    with torch.no_grad():
        w = attention_weights(attn, q, k, mask, idx).double()
        teacher = softmax_weights(q[:, :, idx].double(), k.double(), mask)
        scores = torch.einsum("bhsd,bhmd->bhsm", q[:, :, idx].double(), k.double())
    rows = torch.ones(q.shape[0], idx.numel(), dtype=torch.bool, device=q.device) if mask is None else mask[:, idx]
    rows = rows[:, None, :].expand(-1, q.shape[1], -1)                       # (B, H, S) real queries

    def mean(x: torch.Tensor) -> float:
        x = x[rows]
        return float(x[torch.isfinite(x)].mean()) if x.numel() else float("nan")

    return WeightMeasures(entropy=mean(attention_entropy(w, mask)),
                          softmax_entropy=mean(attention_entropy(teacher, mask)),
                          monotonicity=mean(monotonicity(w, scores, mask)), weight_kl=mean(row_kl(teacher, w)))


def trainable_parameters(attn: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters a fit can move (those requiring gradients)."""
    return [p for p in attn.parameters() if p.requires_grad]


def fit_to_softmax(attn: torch.nn.Module, draw: Callable[[int], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
                   steps: int, lr: float = 1e-2, num_queries: int = 64, seed: int = 0) -> list[float]:
    """Fit ``attn``'s learnable feature map to softmax weights: ``steps`` Adam steps on the mean
    over heads of :func:`lra.distill.distillation_loss`, step ``t`` on the inputs ``draw(t) ->
    (q, k, mask)`` (q, k are not trained). Returns the loss before each step (empty when the
    variant has nothing to fit: no feature map, or no trainable parameter). Only the feature map
    runs (not ``forward``), so train/eval mode and redraw counters are untouched.
    Cost per step O(s N F + N F d)."""
    params = trainable_parameters(attn)
    if steps <= 0 or not params or not has_feature_map(attn):
        return []
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for t in range(steps):
        q, k, mask = draw(t)
        loss = distillation_loss(attn, q.detach(), k.detach(), mask, num_queries, gen).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def fitted_exactness(attn: torch.nn.Module, q: torch.Tensor, k: torch.Tensor, error: Callable[[], float],
                     draw: Callable[[int], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]], *,
                     fit_steps: int = 200, lr: float = 3e-3, num_queries: int = 128, seed: int = 0) -> dict[str, float]:
    """The bench's exactness extras for one input draw: ``error()`` (the caller's output error
    against softmax) at initialisation (``approx_error_init``) and after :func:`fit_to_softmax` on
    ``draw`` (``approx_error``; the same value when there is nothing to fit, ``fit_steps`` 0),
    the first/last fitting loss, and :func:`weight_measures` of the (fitted) variant on ``q, k``."""
    init = error()
    losses = fit_to_softmax(attn, draw, fit_steps, lr, num_queries, seed)
    out = {"approx_error_init": init, "approx_error": error() if losses else init, "fit_steps": len(losses)}
    if losses:
        out.update(fit_loss_first=losses[0], fit_loss_last=losses[-1])
    measures = weight_measures(attn, q, k, None, num_queries, torch.Generator().manual_seed(seed))
    return {**out, **vars(measures)}
