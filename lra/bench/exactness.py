"""Mode ``exactness``: how far a variant's output is from exact softmax attention.

Case: the variant with ``exactness.heads`` x ``exactness.head_dim`` on float64 inputs of an
input pattern (:func:`exactness_inputs`), for every ``exactness.patterns`` x
``exactness.lengths``, batch ``exactness.batch_size``, run at ``exactness.dtype`` (the variant's
precision; the inputs are cast to it):

* ``random``: q, k, v ~ N(0, 1) (times ``random_scale``);
* ``concentrated``: each query built from a few keys, q and k scaled up: peaked attention.

``approx_error = ||out - exact||_F / ||exact||_F`` against :func:`reference_attention` (float64
end to end, ``case.reference``) on the same inputs, averaged over ``exactness.seeds`` draws of
inputs and variant seeds (``approx_error_max``: the worst; ``case.input_seeds``,
``case.variant_seeds``). A learned feature map (hedgehog, taylor, random_feature's sigma) is
first fitted to softmax weights for ``exactness.fit_steps`` steps on fresh draws of the pattern,
never the measured one (``approx_error_init``: before). Beside it, Hedgehog's measures of the
attention weights, for every variant (:mod:`lra.attention_measures`): ``entropy`` (spikiness),
``softmax_entropy``, ``monotonicity`` (Spearman of the weights with q.k) and ``weight_kl`` (KL
from softmax). ``exactness.knobs`` overrides a variant's knobs in this mode only.
"""
from __future__ import annotations

import math

import torch

import attention_variants as av

from ..attention_measures import fitted_exactness
from ..results import variant_config
from ..schema import ConfigError, Float, Int, Ints
from .case import Case, Measurement
from .measuring import autocast
from .registry import Mode, register
from .settings import DTYPES, as_list, check_dtype, variant_knobs

PATTERNS = ("random", "concentrated")
REFERENCE = "float64 end to end (lra.bench.reference_attention)"
#: seeds of the fitting draws start here (the measured inputs use seed + 1000 i)
FIT_SEED = 10**7
#: exactness metrics averaged over the input draws besides approx_error (lra.attention_measures.fitted_exactness)
WEIGHT_METRICS = ("approx_error_init", "fit_steps", "fit_loss_first", "fit_loss_last", "entropy", "softmax_entropy",
                  "monotonicity", "weight_kl")
RULES = (Ints("lengths", example="[256]"), Int("batch_size", example=1), Int("heads", example=4),
         Int("head_dim", example=64), Int("seeds", example=1),
         Float("random_scale", low=0, open_low=True, example=1.0),
         Float("concentrated_scale", low=0, open_low=True, example=3.0),
         Int("concentrated_keys", example=4), Int("fit_steps", low=0, example=200),
         Float("fit_lr", low=0, open_low=True, example=3e-3), Int("fit_batch_size", example=2),
         Int("weight_queries", example=128))


def axes(variant: str, s: dict) -> list[dict]:
    """Every pattern, at the section's batch size and dtype."""
    ex = s["exactness"]
    return [{"batch_size": int(ex["batch_size"]), "dtype": ex["dtype"], "pattern": p} for p in ex["patterns"]]


def finish(s: dict, running: bool) -> None:
    """The section's dtype and patterns (always); its knob overrides when the mode runs."""
    ex = s["exactness"]
    check_dtype(ex["dtype"])
    patterns = as_list(ex.get("patterns") or list(PATTERNS))
    bad = [p for p in patterns if p not in PATTERNS]
    if bad:
        raise ConfigError(f"unknown exactness pattern(s) {bad}; patterns are {list(PATTERNS)}")
    ex["patterns"] = patterns
    if running:
        for name, knobs in (ex.get("knobs") or {}).items():
            if name in s["variants"]:
                variant_knobs(name, {**s["knobs"][name], **(knobs or {})})


def exactness_inputs(pattern: str, b: int, h: int, n: int, d: int, *, seed: int, scale: float = 3.0,
                     keys_per_query: int = 4, random_scale: float = 1.0, device: torch.device | str = "cpu"):
    """float64 ``q, k, v (B, H, N, D)`` for an exactness pattern.

    ``random``: q, k, v ~ N(0, 1), q and k then multiplied by ``random_scale`` (1: logits
    ``q.k/sqrt(d) ~ N(0, 1)``). ``concentrated``: k, v ~ N(0, 1); each query is the sum of
    ``keys_per_query`` random keys plus N(0, 1) noise, normalized by ``sqrt(keys_per_query + 1)``;
    then q and k are multiplied by ``scale`` -- each query's attention concentrates on a few keys.
    """
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=gen, dtype=torch.float64) for _ in range(3))
    if pattern == "concentrated":
        c = max(1, min(int(keys_per_query), n))
        idx = torch.randint(0, n, (b, h, n, c), generator=gen)
        bi = torch.arange(b)[:, None, None, None]
        hi = torch.arange(h)[None, :, None, None]
        picked = k[bi, hi, idx]                                # (B, H, N, c, D)
        q = (q + picked.sum(dim=3)) / math.sqrt(c + 1)
        q, k = q * scale, k * scale
    elif pattern == "random":
        q, k = q * random_scale, k * random_scale
    else:
        raise ValueError(f"unknown exactness pattern {pattern!r}; patterns are {list(PATTERNS)}")
    return q.to(device), k.to(device), v.to(device)


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Exact softmax attention in float64 end to end: ``softmax(q kᵀ / sqrt(D)) v``.

    ``q, k, v: (B, H, N, D)`` (any dtype; cast to float64) -> ``(B, H, N, D)`` float64; scores,
    softmax and both products all in float64. Time O(B·H·N²·D), memory O(B·H·N²). The ground
    truth of the ``exactness`` mode (``case.reference``)."""
    q, k, v = (t.to(torch.float64) for t in (q, k, v))
    scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def measure(case: Case, s: dict, device: torch.device) -> Measurement:
    """``exactness``: relative Frobenius error against float64 softmax attention; for a learned
    feature map after fitting it to softmax (``approx_error_init``: before), and the attention
    weights' entropy, monotonicity and KL from softmax (:func:`lra.attention_measures.fitted_exactness`)."""
    ex = s["exactness"]
    dtype = DTYPES[case.dtype]
    b, h, n, d = case.batch_size, int(ex["heads"]), case.seq_len, int(ex["head_dim"])
    # exactness-only knob overrides (e.g. nystrom without its conv on V: the approximation itself)
    knobs = {**s["knobs"][case.variant], **((ex.get("knobs") or {}).get(case.variant) or {})}
    input_seeds, variant_seeds, per_seed = [], [], []
    base_seed = int(s.get("seed") or 0)
    pattern_kw = dict(scale=float(ex.get("concentrated_scale", 3.0)), keys_per_query=int(ex.get("concentrated_keys", 4)),
                      random_scale=float(ex.get("random_scale", 1.0)), device=device)
    fit = {"steps": int(ex.get("fit_steps", 0)), "lr": float(ex.get("fit_lr", 3e-3)),
           "batch_size": int(ex.get("fit_batch_size", 2)), "queries": int(ex.get("weight_queries", 128))}
    for i in range(max(1, int(ex.get("seeds", 1)))):
        input_seeds.append(base_seed + 1000 * i)
        variant_seeds.append(base_seed + i)
        q, k, v = exactness_inputs(case.pattern, b, h, n, d, seed=input_seeds[-1], **pattern_kw)
        ref = reference_attention(q, k, v)
        attn = av.build(case.variant, **{"heads": h, "head_dim": d, "max_length": n, "seed": variant_seeds[-1],
                                         **knobs}).to(device).eval()

        def error() -> float:
            with torch.no_grad(), autocast(device, dtype):
                out = attn(q.to(dtype), k.to(dtype), v.to(dtype))
            return float((out.double() - ref).norm() / ref.norm())

        def draw(t: int, seed: int = FIT_SEED + 10_000 * input_seeds[-1]):  # fresh draws, never the measured one
            fq, fk, _ = exactness_inputs(case.pattern, fit["batch_size"], h, n, d, seed=seed + t, **pattern_kw)
            return fq.float(), fk.float(), None

        per_seed.append(fitted_exactness(attn, q.float(), k.float(), error, draw, fit_steps=fit["steps"],
                                         lr=fit["lr"], num_queries=fit["queries"], seed=variant_seeds[-1]))
        del q, k, v, ref, attn
    errors = [m["approx_error"] for m in per_seed]
    err = sum(errors) / len(errors)
    metrics = {"approx_error": err, "approx_error_max": max(errors), "approx_seeds": len(errors),
               **{key: sum(m[key] for m in per_seed) / len(per_seed) for key in WEIGHT_METRICS if key in per_seed[0]}}
    facts = {"heads": h, "head_dim": d, "pattern": case.pattern, "reference": REFERENCE,
             "input_seeds": input_seeds, "variant_seeds": variant_seeds, "fit": fit,
             "pattern_scale": float(ex.get("concentrated_scale", 3.0) if case.pattern == "concentrated"
                                    else ex.get("random_scale", 1.0))}
    m = Measurement(metrics, facts, variant_config(case.variant, heads=h, head_dim=d, max_length=n,
                                                   **{**knobs, "seed": base_seed}))
    if not all(math.isfinite(e) for e in errors):
        m.status, m.message = "nan", "non-finite output"
    return m


register(Mode("exactness", order=40, axes=axes, measure=measure, metric="approx_error", title="rel. error",
              section="exactness", rules=RULES, finish=finish))
