"""One smoothness measurement: a variant, an input pattern, a length -> metrics and facts.

``lra-bench``'s ``smoothness`` mode (:mod:`lra.bench.smoothness`) plans its cases with
:func:`plan_axes` and measures each with :func:`measure`. Settings are the ``smoothness:`` section
of ``conf/bench.yaml`` (a plain dict here).

Patterns (the ``pattern`` axis):

``random``        tokens uniform on the sphere of radius ``radius``; ``samples`` draws, averaged.
``adversarial``   the paper's construction for the map's own projections (:func:`..inputs.adversarial_rows`).
``search``        projected gradient ascent over the ball of radius ``radius``, from the adversarial
                  point and from the best of the random draws (:func:`..inputs.search_rows`); the best
                  value found, so at least the adversarial value and every random draw's.
``data``          hidden states of real sequences at an untrained encoder's attention input
                  (:mod:`..hidden`); ``samples`` sequences, averaged.
``data_trained``  the same through a trained ``lra-train`` checkpoint (``data.checkpoint``).

The synthetic patterns measure one head ``X (n, dim) -> Attention(X W_Q, X W_K, X W_V)`` with
fixed ``N(0, weight_std^2)`` projections ``(dim, dim)``; the data patterns measure all heads of
the encoder layer ``data.layer`` before its output projection. Every record carries the softmax
closed-form bound at the measured input (``softmax_bound``; it applies to softmax attention,
exact or restricted to a fixed key subset) and ``bound_ratio`` (the largest measured / bound).
"""
from __future__ import annotations

import dataclasses
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

import attention_variants as av

from . import hidden
from .estimate import power_iteration
from .inputs import adversarial_rows, search_rows, sphere_rows
from .maps import Projections, projected_map, random_projections, softmax_bound

SYNTHETIC = ("random", "adversarial", "search")
DATA = ("data", "data_trained")
PATTERNS = SYNTHETIC + DATA


class AttentionBuildError(ValueError):
    """The variant cannot be built with these knobs (e.g. a backend it does not have)."""


@dataclass
class Outcome:
    metrics: dict[str, Any]
    facts: dict[str, Any]
    variant_config: dict[str, Any]


def check_settings(sm: dict) -> None:
    """Clear errors for bad ``smoothness:`` settings (pattern names, radii, search starts)."""
    bad = [p for p in sm.get("patterns") or () if p not in PATTERNS]
    if bad:
        raise ValueError(f"unknown smoothness pattern(s) {bad}; patterns are {list(PATTERNS)}")
    if "data_trained" in (sm.get("patterns") or ()) and not (sm.get("data") or {}).get("checkpoint"):
        raise ValueError("smoothness pattern data_trained needs smoothness.data.checkpoint=<lra-train job dir>")
    bad = [p for p in sm.get("sweep_patterns") or () if p not in SYNTHETIC]
    if bad:
        raise ValueError(f"smoothness.sweep_patterns {bad}: only {list(SYNTHETIC)} have a radius")
    for r in [sm.get("radius", 1.0), *(sm.get("radius_sweep") or ())]:
        if not (isinstance(r, (int, float)) and r > 0):
            raise ValueError(f"smoothness radius {r!r} must be a positive number")
    bad = [s for s in (sm.get("search") or {}).get("starts", ()) if s not in ("adversarial", "random")]
    if bad:
        raise ValueError(f"unknown smoothness.search.starts {bad}; starts are ['adversarial', 'random']")


def plan_axes(variant: str, sm: dict) -> list[tuple[str, float | None, bool]]:
    """``(pattern, radius, causal)`` of every case of ``variant`` (lengths aside).

    Synthetic patterns at ``radius``, and the ``sweep_patterns`` also at every ``radius_sweep``
    value; data patterns with radius None (the data sets it); ``data_trained`` only when
    ``data.checkpoint`` is set. Variants listed in ``causal`` get the main cases again with those
    knobs (causal attention), without the sweep.
    """
    check_settings(sm)
    patterns = list(sm.get("patterns") or PATTERNS[:4])
    if "data" in patterns and (sm.get("data") or {}).get("checkpoint") and "data_trained" not in patterns:
        patterns.insert(patterns.index("data") + 1, "data_trained")
    radius = float(sm.get("radius", 1.0))
    sweep = [float(r) for r in sm.get("radius_sweep") or () if float(r) != radius]
    axes: list[tuple[str, float | None, bool]] = []
    causal_variants = sm.get("causal") or {}
    for causal in (False, True) if variant in causal_variants else (False,):
        for pattern in patterns:
            if pattern in DATA:
                axes.append((pattern, None, causal))
                continue
            axes.append((pattern, radius, causal))
            if not causal and pattern in (sm.get("sweep_patterns") or ()):
                axes += [(pattern, r, False) for r in sorted(sweep)]
    return axes


def causal_knobs(variant: str, sm: dict) -> dict[str, Any]:
    """The knobs that make ``variant`` causal (``smoothness.causal.<variant>``)."""
    table = sm.get("causal") or {}
    if variant not in table:
        raise ValueError(f"variant {variant!r} has no causal setting; smoothness.causal lists {sorted(table)}")
    return dict(table[variant] or {})


def _build(variant: str, **cfg) -> torch.nn.Module:
    try:
        return av.build(variant, **cfg)
    except ValueError as err:
        raise AttentionBuildError(str(err)) from err


def _summary(values: list[float], bounds: list[float]) -> dict[str, Any]:
    """Mean (``lipschitz``), max, spread; the bound (mean) and the largest measured/bound ratio."""
    mean = sum(values) / len(values)
    out = {"lipschitz": mean, "lipschitz_max": max(values), "lipschitz_min": min(values),
           "lipschitz_std": statistics.pstdev(values) if len(values) > 1 else 0.0, "samples": len(values),
           "softmax_bound": sum(bounds) / len(bounds),
           "bound_ratio": max(v / b for v, b in zip(values, bounds)) if all(b > 0 for b in bounds) else None}
    return out


def measure(variant: str, knobs: dict, pattern: str, n: int, sm: dict, *, radius: float | None = None,
            causal: bool = False, seed: int = 0, dtype: torch.dtype = torch.float32,
            device: torch.device | str = "cpu") -> Outcome:
    """Measure ``variant`` (built with ``knobs``) on ``pattern`` at length ``n``.

    ``backend=auto`` runs the variants' reference paths here (:func:`attention_variants.reference_paths`):
    the search differentiates twice and the power iteration runs under ``torch.func``; the fast
    paths compute the same function but are differentiable once."""
    if pattern not in PATTERNS:
        raise ValueError(f"unknown smoothness pattern {pattern!r}; patterns are {list(PATTERNS)}")
    t0 = time.perf_counter()
    with av.reference_paths():
        if pattern in SYNTHETIC:
            out = _synthetic(variant, knobs, pattern, n, sm,
                             radius if radius is not None else float(sm.get("radius", 1.0)), seed, dtype, device)
        else:
            out = _data(variant, knobs, pattern, n, sm, seed, dtype, device)
    out.metrics["lipschitz_per_sqrt_n"] = out.metrics["lipschitz"] / math.sqrt(n)
    out.metrics["wall_s"] = round(time.perf_counter() - t0, 4)
    out.facts.update({"pattern": pattern, "iters": int(sm.get("iters", 20)), "sweep": False})
    if pattern in SYNTHETIC:
        out.facts["sweep"] = radius is not None and float(radius) != float(sm.get("radius", 1.0))
    if causal and not out.facts.get("causal"):
        raise ValueError(f"{variant} built with {knobs} is not causal; smoothness.causal.{variant} should make it so")
    return out


def _estimate(fn, x: torch.Tensor, iters: int, seed: int) -> tuple[float, float]:
    res = power_iteration(fn, x, iters, seed=seed)
    return res.sigma, res.rel_change


def _synthetic(variant, knobs, pattern, n, sm, radius, seed, dtype, device) -> Outcome:
    d = int(sm.get("dim", 64))
    iters = int(sm.get("iters", 20))
    std = float(sm.get("weight_std", 1.0))
    proj = random_projections(d, d, seed=seed, weight_std=std, dtype=dtype, device=device)
    build_cfg = {"heads": 1, "head_dim": d, "max_length": n, "seed": seed, **knobs}
    attn = _build(variant, **build_cfg).to(device).eval()
    fn = projected_map(attn, proj)
    a = proj.score_matrix().double()
    facts: dict[str, Any] = {"heads": 1, "head_dim": d, "dim": d, "radius": radius, "input_radius": radius,
                             "weight_std": std,
                             # std of the logits x_j^T A x_i at independent uniform tokens of norm R
                             "score_std": radius ** 2 * float(a.norm()) / d,
                             "causal": bool(getattr(attn, "causal", False)),
                             "backend": getattr(attn, "last_backend", None) or knobs.get("backend")}

    def random_draw(i: int) -> torch.Tensor:
        return sphere_rows(n, d, radius=radius, seed=seed + 100 + i, dtype=dtype, device=device)

    if pattern == "random":
        samples = max(1, int(sm.get("samples", 1)))
        vals, bounds, rels = [], [], []
        for i in range(samples):
            x = random_draw(i)
            sigma, rel = _estimate(fn, x, iters, seed)
            vals.append(sigma), rels.append(rel), bounds.append(softmax_bound(x, proj))
        metrics = _summary(vals, bounds)
        metrics["rel_change"] = max(rels)
    else:
        x_adv, adv = adversarial_rows(proj, n, radius=radius, dtype=dtype)
        facts.update({"adversarial_case": adv.case, "adversarial_eigenvalue": adv.eigenvalue,
                      "adversarial_source": adv.source, "score_gap": adv.score_gap})
        if pattern == "adversarial":
            sigma, rel = _estimate(fn, x_adv, iters, seed)
            metrics = _summary([sigma], [softmax_bound(x_adv, proj)])
            metrics["rel_change"] = rel
        else:   # the starts' power iterations are the search's first ones (search_rows does not redo them)
            se = dict(sm.get("search") or {})
            names = list(se.get("starts") or ("adversarial", "random"))
            starts, found = {}, {}
            if "adversarial" in names:
                starts["adversarial"], found["adversarial"] = x_adv, power_iteration(fn, x_adv, iters, seed=seed)
            if "random" in names:   # the best of the random pattern's draws
                draws = [random_draw(i) for i in range(max(1, int(sm.get("samples", 1))))]
                results = [power_iteration(fn, x, iters, seed=seed) for x in draws]
                best = max(range(len(draws)), key=lambda i: results[i].sigma)
                starts["random"], found["random"] = draws[best], results[best]
            res = search_rows(fn, starts, radius=radius, steps=int(se.get("steps", 12)),
                              step_size=float(se.get("step_size", 0.1)), iters=iters,
                              iters_per_step=int(se.get("iters_per_step", 3)), seed=seed, start_results=found)
            metrics = _summary([res.sigma], [softmax_bound(res.x, proj)])
            metrics.update({f"search_start_{k}": v for k, v in res.start_sigma.items()})
            metrics.update({f"search_best_{k}": v for k, v in res.best_sigma.items()})
            facts.update({"search_best_start": res.start, "search_steps": int(se.get("steps", 12)),
                          "search_step_size": float(se.get("step_size", 0.1)),
                          "search_iters_per_step": int(se.get("iters_per_step", 3))})
    return Outcome(metrics, facts, build_cfg)


def _data(variant, knobs, pattern, n, sm, seed, dtype, device) -> Outcome:
    dc = dict(sm.get("data") or {})
    iters = int(sm.get("iters", 20))
    layer = int(dc.get("layer", 0))
    if pattern == "data":
        if dc.get("checkpoint"):   # the checkpoint's task and architecture, freshly initialised
            task_cfg, model_kw = hidden.checkpoint_setup(dc["checkpoint"], dc.get("task_overrides"))
            facts = {"encoder": "untrained", "architecture": "checkpoint", "checkpoint": str(dc["checkpoint"])}
        else:
            task_cfg = hidden.task_config(str(dc.get("task", "listops")), dc.get("task_overrides"))
            recipe = str(dc.get("recipe") or "lra")
            model_kw = hidden.model_kwargs(task_cfg, recipe, dc.get("model"))
            facts = {"encoder": "untrained", "architecture": f"recipe={recipe}"}
        data = hidden.task_data(task_cfg)
        model = hidden.untrained_encoder(data, model_kw, variant, knobs, seed)
        attention, own = None, True
        variant_config = {**knobs, "seed": seed}
    else:
        path = dc.get("checkpoint")
        if not path:
            raise ValueError("pattern data_trained needs smoothness.data.checkpoint (an lra-train job dir)")
        model, task_cfg, ck_variant, ck_knobs, step = hidden.trained_encoder(path, dc.get("task_overrides"))
        data = hidden.task_data(task_cfg)
        own = variant == ck_variant
        trained = model.blocks[layer].attn.attention
        if own:  # the trained module, rebuilt only to honour a backend choice (same function, same state)
            cfg = {**dataclasses.asdict(trained.config), **{k: v for k, v in knobs.items() if k == "backend"}}
            attention = _build(variant, **cfg)
            attention.load_state_dict(trained.state_dict())
        else:    # another variant in place of the trained one, with the trained projections around it
            attention = _build(variant, **{"heads": trained.config.heads, "head_dim": trained.config.head_dim,
                                           "max_length": int(trained.config.max_length), "seed": seed, **knobs})
        attention = attention.eval()
        facts = {"encoder": "trained", "checkpoint": str(path), "checkpoint_variant": ck_variant,
                 "checkpoint_step": step}
        variant_config = dict(ck_knobs) if own else {**knobs, "seed": seed}
    model = model.to(device=device, dtype=dtype)
    if attention is not None:
        attention = attention.to(device=device, dtype=dtype)
    cls = model.cfg.pooling == "cls"
    tokens = hidden.sequences(data, n - int(cls), int(sm.get("samples", 1)), str(dc.get("split", "test")))
    fn = hidden.layer_map(model, layer, attention)
    proj: Projections = hidden.layer_projections(model, layer)
    vals, bounds, norms, rels = [], [], [], []
    for seq in tokens.to(device):
        x = hidden.attention_input(model, seq[None], layer)[0].to(dtype)
        sigma, rel = _estimate(fn, x, iters, seed)
        vals.append(sigma), rels.append(rel), bounds.append(softmax_bound(x, proj))
        norms.append(float(x.norm(dim=-1).max()))
    metrics = _summary(vals, bounds)
    metrics["rel_change"] = max(rels)
    used = model.blocks[layer].attn.attention if attention is None else attention
    facts.update({"data_task": data.name, "data_split": str(dc.get("split", "test")), "layer": layer,
                  "heads": proj.heads, "head_dim": proj.head_dim, "dim": proj.dim,
                  "input_radius": max(norms), "trained_attention": facts["encoder"] == "trained" and own,
                  "causal": bool(getattr(used, "causal", False)), "cls_token": cls,
                  "backend": getattr(used, "last_backend", None) or knobs.get("backend")})
    return Outcome(metrics, facts, variant_config)
