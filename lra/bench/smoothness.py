"""Mode ``smoothness``: the local Lipschitz constant of attention as N grows.

Case: one variant at one input pattern (``case.pattern``), length N, radius and causal setting,
planned by :func:`lra.smoothness.measure.plan_axes` from the ``smoothness:`` section and measured
by :func:`lra.smoothness.measure.measure` at ``smoothness.dtype``, batch 1. ``lipschitz``: the
Jacobian spectral norm (by power iteration) of ``X -> Attention(X Wq, X Wk, X Wv)`` at inputs of
the pattern (Castin, Ablin & Peyre 2024): ``random``, ``adversarial`` and ``search`` tokens in
the ball of radius ``case.radius`` (one head, fixed random projections), ``data`` /
``data_trained`` hidden states of real task sequences at an (un)trained encoder layer's attention
input. Also ``softmax_bound`` (the closed-form softmax bound at that input) and ``bound_ratio``.
Extra radii (``smoothness.radius_sweep``) and causal settings (``case.causal``) are cases of
their own. A fused backend without the needed derivatives is replaced by the variant's
``reference``/``math`` backend (``case.backend_fallback``). The summary fits ``L ~ N^alpha``
(:func:`lra.smoothness.growth_exponent`).
"""
from __future__ import annotations

import dataclasses
import math

import pandas as pd
import torch

import attention_variants as av

from ..results import variant_config
from ..schema import ConfigError, Float, Int, Ints
from ..smoothness import growth_exponent
from ..smoothness import measure as lipschitz
from ..timing import is_oom
from .case import Case, Measurement
from .measuring import first_line
from .registry import Mode, register
from .settings import DTYPES, check_dtype

RULES = (Ints("lengths", example="[64,128]"), Int("dim", example=64),
         Float("radius", low=0, open_low=True, example=1.0),
         Float("weight_std", low=0, open_low=True, example=1.0), Int("iters", example=20))
ALPHA_COLUMN = "alpha (L~N^a)"


def axes(variant: str, s: dict) -> list[dict]:
    """Every (pattern, radius, causal) of the variant (:func:`lra.smoothness.measure.plan_axes`), batch 1."""
    sm = s["smoothness"]
    return [{"batch_size": 1, "dtype": sm["dtype"], "pattern": pattern, "radius": radius, "causal": causal}
            for pattern, radius, causal in lipschitz.plan_axes(variant, sm)]


def finish(s: dict, running: bool) -> None:
    """The section's dtype, patterns, radii and search starts (always)."""
    check_dtype(s["smoothness"]["dtype"])
    try:
        lipschitz.check_settings(s["smoothness"])
    except ValueError as err:
        raise ConfigError(str(err)) from None


def backend_attempts(name: str, knobs: dict) -> list[dict]:
    """``knobs``, then (for variants with a ``backend`` knob) the plain differentiable paths:
    ``reference`` / ``math`` compute the same function without fused kernels, which have no
    forward-mode or double-backward derivatives."""
    attempts = [dict(knobs)]
    _, config_cls = av.get(name)
    if "backend" in {f.name for f in dataclasses.fields(config_cls)}:
        attempts += [{**knobs, "backend": alt} for alt in ("reference", "math") if knobs.get("backend") != alt]
    return attempts


def measure(case: Case, s: dict, device: torch.device) -> Measurement:
    """``smoothness``: the local Lipschitz constant at ``case.pattern`` inputs
    (:func:`lra.smoothness.measure.measure`).

    A fused backend without the needed derivatives (e.g. SDPA flash, compiled flex_attention)
    is replaced by the variant's ``reference``/``math`` backend (same function); the record
    says so in ``case.backend_fallback``."""
    sm = s["smoothness"]
    knobs = dict(s["knobs"][case.variant])
    if case.causal:
        knobs.update(lipschitz.causal_knobs(case.variant, sm))
    first_error: BaseException | None = None
    fallback = None
    out = None
    for attempt in backend_attempts(case.variant, knobs):
        try:
            out = lipschitz.measure(case.variant, attempt, case.pattern or "random", case.seq_len, sm,
                                    radius=case.radius, causal=case.causal, seed=int(s.get("seed") or 0),
                                    dtype=DTYPES[case.dtype], device=device)
        except lipschitz.AttentionBuildError:
            continue  # this variant has no such backend
        except Exception as err:  # noqa: BLE001 - e.g. no forward-mode / double-backward derivative
            if is_oom(err):
                raise
            if first_error is None:
                first_error = err
            fallback = first_line(err)
            continue
        break
    if out is None:
        raise first_error or RuntimeError("no backend of this variant could be differentiated")
    cfg = {"heads": out.facts.get("heads", 1), "max_length": case.seq_len, **out.variant_config}
    if "head_dim" in out.facts:
        cfg.setdefault("head_dim", out.facts["head_dim"])
    try:
        full_cfg = variant_config(case.variant, **cfg)   # every knob with its default
    except (KeyError, TypeError, ValueError):
        full_cfg = out.variant_config
    m = Measurement(out.metrics, {**out.facts, "backend_fallback": fallback if first_error else None}, full_cfg)
    if not math.isfinite(out.metrics["lipschitz"]):
        m.status, m.message = "nan", "non-finite Lipschitz estimate"
    return m


def alpha_column(table: pd.DataFrame, rows: pd.DataFrame, index: list, metric: str) -> pd.DataFrame:
    """The summary table with the growth exponent alpha of ``L ~ N^alpha`` per row (from its ok cases)."""
    ok = rows[rows["status"] == "ok"]
    alphas = []
    for key in table.index:
        key = key if isinstance(key, tuple) else (key,)
        g = ok[(ok[index] == pd.Series(key, index=index)).all(axis=1)]
        alpha = growth_exponent(list(g["seq_len"]), list(g[metric]))
        alphas.append("-" if alpha is None else f"{alpha:.2f}")
    table[ALPHA_COLUMN] = alphas
    return table


register(Mode("smoothness", order=50, axes=axes, measure=measure, metric="lipschitz", title="Lipschitz estimate",
              section="smoothness", rules=RULES, finish=finish, columns=alpha_column))
