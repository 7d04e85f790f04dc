"""Attention distillation (Hedgehog, Zhang et al. 2024, arXiv 2402.04347, Sec. 4): train a kernel
variant's feature map so that its normalised linear-attention weights mimic the softmax weights
of the same queries and keys.

For one attention layer with ``q, k (B, H, N, d)`` and a variant exposing
``feature_map(x, is_query, mask)`` (hedgehog, taylor, performer, linear, random_feature), on a
random subset S of ``s`` query positions:

    teacher  T_ij = softmax_j(q_i . k_j / sqrt(d))                     (no gradient: q, k detached)
    student  A_ij = phi(q_i) . phi(k_j) / sum_j' phi(q_i) . phi(k_j')  (the variant's own weights)
    loss_h   = mean over the real queries i in S of  sum_j T_ij (log T_ij - log A_ij)   (per head h)

that is the paper's soft-label cross-entropy ``-sum_j T_ij log A_ij`` minus the teacher's entropy
``-sum_j T_ij log T_ij``: KL(T || A) >= 0, exactly 0 when the weights match. The teacher sends no
gradient, so the entropy is a constant of the optimisation and the gradient is the cross-entropy's;
the value, unlike the cross-entropy's, does not drift with how spiky the teacher is while q and k
train, which makes the logged per-layer loss comparable across a run.

over the real keys j (``mask``). Cost O(s N (d + F) + N F d_in): linear in N for a fixed ``s``;
the ``(N, N)`` matrix is never formed. The student's gradient reaches the feature map's
parameters and q, k; the teacher sends none.

Student weights are floored at the smallest normal float of their dtype before the log: a
weight that underflowed to 0 (a positive kernel far below the row's mass) or, with the signed
random Fourier features of ``random_feature``, a negative weight, would otherwise give an
infinite loss. The weights are already normalised (they sum to 1), so this floor is not an
absolute threshold after an arbitrary rescaling; the normalizer itself has the variant's own
scale-free guard (:func:`attention_variants._kernel.safe_denominator`, with its relative floor
``normalizer_floor`` where the variant has one).
"""
from __future__ import annotations

import torch

from attention_variants._kernel import fp32, mask_keys, normalizer_floor, safe_denominator


def has_feature_map(attn: torch.nn.Module) -> bool:
    """Whether distillation applies: the variant exposes ``feature_map`` and is not causal (a
    gated / causal variant's weights are not its features' normalised products)."""
    return callable(getattr(attn, "feature_map", None)) and not getattr(attn, "causal", False)


def sample_queries(n: int, num_queries: int, generator: torch.Generator | None = None,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """``min(num_queries, n)`` distinct positions of ``range(n)``, sorted, as a long tensor.

    Drawn on the CPU from ``generator`` (the global generator when None), so the draw does not
    depend on the device."""
    if num_queries < 1:
        raise ValueError(f"num_queries must be >= 1, got {num_queries}")
    if num_queries >= n:
        return torch.arange(n, device=device)
    return torch.randperm(n, generator=generator)[:num_queries].sort().values.to(device)


def softmax_weights(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d))`` over the real keys: ``q (B, H, S, d)``, ``k (B, H, M, d)``,
    ``mask (B, M)`` (True = real) -> ``(B, H, S, M)`` in fp32 (float64 stays float64); padded keys
    get weight 0, and a row with no real key is all 0. O(S M d)."""
    with fp32(q.device):
        work = torch.promote_types(q.dtype, torch.float32)
        scores = torch.einsum("bhsd,bhmd->bhsm", q.to(work), k.to(work)) * q.shape[-1] ** -0.5
        if mask is not None:
            scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        w = torch.softmax(scores, dim=-1)
        return torch.nan_to_num(w, nan=0.0)                     # rows with every key padded


def kernel_weights(phi_q: torch.Tensor, phi_k: torch.Tensor, mask: torch.Tensor | None, *,
                   rel_floor: float = 0.0) -> torch.Tensor:
    """The normalised linear-attention weights ``A_ij = phi_q_i . phi_k_j / den_i`` that
    :func:`attention_variants._kernel.kernel_attention` applies to the values (the same guard:
    ``den_i`` through :func:`safe_denominator`, with ``rel_floor`` as the variant's).

    ``phi_q (B, H, S, F)``, ``phi_k (B, H, M, F)``, ``mask (B, M)`` -> ``(B, H, S, M)``, padded keys 0.
    fp32 with autocast disabled (float64 stays float64). O(S M F).
    """
    with fp32(phi_q.device):
        work = torch.promote_types(phi_q.dtype, torch.float32)
        phi_q, phi_k = phi_q.to(work), mask_keys(phi_k.to(work), mask)
        a = torch.einsum("bhsf,bhmf->bhsm", phi_q, phi_k)
        floor = None
        if rel_floor:
            floor = normalizer_floor(phi_q, phi_k.norm(dim=-1).sum(dim=-1, keepdim=True), rel_floor)
        return a / safe_denominator(a.sum(dim=-1), floor).unsqueeze(-1)


def variant_weights(attn: torch.nn.Module, q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None,
                    idx: torch.Tensor | None = None) -> torch.Tensor:
    """A kernel variant's normalised attention weights of the queries ``idx`` (all when None):
    ``(B, H, S, M)``, differentiable w.r.t. its feature map's parameters, q and k. O(S M F + M F d)."""
    if not has_feature_map(attn):
        raise TypeError(f"attention variant {getattr(attn, 'name', type(attn).__name__)!r} exposes no "
                        f"feature_map (or is causal): its weights are not a kernel's; distillation and the "
                        f"feature-map measures apply to non-causal kernel variants only")
    q_sel = q if idx is None else q[:, :, idx]
    phi_q = attn.feature_map(q_sel, is_query=True)
    phi_k = attn.feature_map(k, is_query=False, mask=mask)
    rel_floor = float(getattr(attn.config, "normalizer_floor", 0.0) or 0.0)
    return kernel_weights(phi_q, phi_k, mask, rel_floor=rel_floor)


def row_kl(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """``sum_j T_ij (log T_ij - log max(A_ij, tiny))`` per row: ``(B, H, S, M)`` twice -> ``(B, H, S)``
    (``0 log 0 = 0``; ``tiny`` = the smallest normal float of the student's dtype)."""
    tiny = torch.finfo(student.dtype).tiny
    return (torch.xlogy(teacher, teacher) - teacher * student.clamp_min(tiny).log()).sum(dim=-1)


def soft_kl(teacher: torch.Tensor, student: torch.Tensor, query_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Per-head mean over queries of :func:`row_kl`: ``(B, H, S, M)`` twice (and an optional
    ``(B, S)`` weight per query, e.g. 1 = real, 0 = padded) -> ``(H,)``."""
    kl = row_kl(teacher, student)                                            # (B, H, S)
    if query_weight is None:
        return kl.mean(dim=(0, 2))
    w = query_weight.to(kl.dtype)[:, None, :]                                # (B, 1, S)
    return (kl * w).sum(dim=(0, 2)) / w.sum(dim=(0, 2)).clamp_min(1.0)


def distillation_loss(attn: torch.nn.Module, q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None,
                      num_queries: int = 64, generator: torch.Generator | None = None) -> torch.Tensor:
    """Hedgehog's attention-distillation loss of one layer, per head: ``(H,)`` (see the module docstring).

    ``q, k (B, H, N, d)`` as the layer's attention received them, ``mask (B, N)`` (True = real,
    or None), ``num_queries`` = s queries drawn by :func:`sample_queries` from ``generator``.
    Padded query positions among them count 0. O(s N (d + F) + N F d).
    """
    idx = sample_queries(q.shape[-2], num_queries, generator, q.device)
    with torch.no_grad():
        teacher = softmax_weights(q[:, :, idx].detach(), k.detach(), mask)
    student = variant_weights(attn, q, k, mask, idx)
    query_weight = None if mask is None else mask[:, idx]
    return soft_kl(teacher, student, query_weight)


class LayerDistiller:
    """The ``attention.distill`` training option: each attention layer's distillation loss, from
    the q, k (and key padding mask) its attention module received in the last forward.

    ``LayerDistiller(model, weight, num_queries)`` registers a forward hook on every attention
    module of ``model`` (each ``nn.Module`` attribute named ``attention``; a module applied several
    times, e.g. tied layers, counts once per application; each forward of ``model`` starts afresh).
    Captures happen only in training mode
    with gradients enabled (evaluation keeps nothing). After a training forward,
    ``distiller.loss()`` returns ``weight`` times the mean over layers and heads of
    :func:`distillation_loss` (queries drawn from the global CPU generator, which checkpoints
    save), clears the captures, and adds each layer's loss to on-device running sums that
    :meth:`window` reads (one host sync) and resets. Every layer's variant must expose its
    features (:func:`has_feature_map`); otherwise the constructor raises ``TypeError``.
    """

    def __init__(self, model: torch.nn.Module, weight: float, num_queries: int = 64):
        if weight <= 0:
            raise ValueError(f"distillation weight must be > 0, got {weight}")
        self.weight, self.num_queries = float(weight), int(num_queries)
        modules = {id(m): m for name, m in model.named_modules(remove_duplicate=False)
                   if name.rsplit(".", 1)[-1] == "attention"}
        if not modules:
            raise TypeError("attention distillation: the model has no attention modules")
        for m in modules.values():
            if not has_feature_map(m):
                raise TypeError(f"attention.distill needs a non-causal kernel variant exposing feature_map "
                                f"(hedgehog, taylor, performer, linear, random_feature); "
                                f"{getattr(m, 'name', type(m).__name__)!r} has none")
        self._captured: list[tuple[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
        self._handles = [m.register_forward_hook(self._capture, with_kwargs=True) for m in modules.values()]
        # a new forward of the model starts a new capture (nothing stale from a forward that failed)
        self._handles.append(model.register_forward_pre_hook(lambda _module, _args: self._captured.clear()))
        self._sums: torch.Tensor | None = None
        self._count = 0

    def _capture(self, module, args, kwargs, _output) -> None:
        if module.training and torch.is_grad_enabled():
            q, k = args[0], args[1]
            mask = kwargs.get("key_padding_mask", args[3] if len(args) > 3 else None)
            self._captured.append((module, q, k, mask))

    def loss(self) -> torch.Tensor:
        """``weight * mean_layers(mean_heads(loss))`` of the captured layers (a scalar tensor)."""
        if not self._captured:
            raise RuntimeError("attention distillation: no attention forward was captured since the last loss()")
        per_layer = torch.stack([distillation_loss(m, q, k, mask, self.num_queries).mean()
                                 for m, q, k, mask in self._captured])
        self._captured.clear()
        detached = per_layer.detach()
        self._sums = detached if self._sums is None else self._sums + detached
        self._count += 1
        return self.weight * per_layer.mean()

    def window(self) -> list[float] | None:
        """Mean per-layer loss since the last call (one host sync), or None if none; resets."""
        if self._sums is None:
            return None
        out = (self._sums / self._count).tolist()
        self._sums, self._count = None, 0
        return [round(x, 6) for x in out]

    def remove(self) -> None:
        """Remove the hooks."""
        for h in self._handles:
            h.remove()
        self._captured.clear()
