"""The smoothness section's findings: markdown sentences for one device, every number read from the records.

:func:`findings` returns them in order: the setting, variants that coincide with the reference
(:func:`coinciding_labels`), the main radius and the radius sweep, the worst case (adversarial
inputs), the search, random tokens, real data, and the softmax bound.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from ..labels import is_exact, length_label
from .rows import (BOUND_VARIANT, COINCIDE_RTOL, alpha_text, data_setting, label_order, main_rows, median_curve,
                   num_text, ok_rows, one_device, radius_text, slope, smoothness_rows)
from .tables import GROWTH, exponent_table, growth_class, radius_table


def _names(labels: Iterable[str], alphas: pd.Series | None = None) -> str:
    labels = label_order(labels)
    if not labels:
        return "none"
    return ", ".join(f"{lab} ({alpha_text(alphas[lab])})" if alphas is not None else lab for lab in labels)


def _by_class(alphas: pd.Series) -> str:
    """"√N: full (0.52), ...; flat: linear, ..." over the finite exponents, fastest class first; the
    exponents are given except in the flat class (the table has them)."""
    alphas = alphas[np.isfinite(alphas)]
    parts = []
    for _, name in GROWTH:
        members = [lab for lab in alphas.index if growth_class(alphas[lab]) == name]
        if members:
            parts.append(f"{name}: {_names(members, None if name == 'flat' else alphas)}")
    return "; ".join(parts) if parts else "no exponent"


def _span(values: Iterable[float]) -> str:
    v = [x for x in values if np.isfinite(x)]
    if not v:
        return "—"
    lo, hi = min(v), max(v)
    return num_text(lo) if num_text(lo) == num_text(hi) else f"{num_text(lo)}–{num_text(hi)}"


def _ns(ns: Sequence[float], measured: Sequence[float]) -> str:
    """Lengths as "N = 8–128" when they are a run of the measured lengths, else "N = 8, 32"."""
    ns, measured = sorted(ns), sorted(measured)
    if len(ns) > 2 and measured[measured.index(ns[0]):measured.index(ns[-1]) + 1] == ns:
        return f"N = {length_label(ns[0])}–{length_label(ns[-1])}"
    return "N = " + ", ".join(length_label(n) for n in ns)


def _lengths(rows: pd.DataFrame) -> str:
    ns = sorted(rows["seq_len"].dropna().unique())
    return _ns(ns, ns)


def coinciding_labels(rows: pd.DataFrame, reference: str = BOUND_VARIANT) -> list[str]:
    """Labels whose L equals ``reference``'s within :data:`COINCIDE_RTOL` at every (pattern, N) of the
    main setting that both measured (their lines lie on top of ``reference``'s in every figure)."""
    med = main_rows(rows).groupby(["label", "pattern", "seq_len"])["lipschitz"].median().unstack(["pattern", "seq_len"])
    if reference not in med.index:
        return []
    ref = med.loc[reference]
    out = []
    for lab in med.index.drop(reference):
        both = med.loc[lab].notna() & ref.notna()
        if both.sum() and np.allclose(med.loc[lab][both], ref[both], rtol=COINCIDE_RTOL, atol=0.0):
            out.append(lab)
    return label_order(out)


def _setup(rows: pd.DataFrame) -> str:
    syn = rows[rows["pattern"].isin(("adversarial", "search", "random")) & ~rows["sweep"]]
    parts = []
    if len(syn):
        dim, std = syn.get("dim", pd.Series(dtype=float)).dropna(), syn.get("weight_std", pd.Series(dtype=float)).dropna()
        head = f"one head, d = {int(dim.iloc[0])}" if len(dim) else "one head"
        if len(std):
            head += f", W_Q, W_K, W_V ~ N(0, {std.iloc[0]:g}²)"
        radius = f"main radius R = {radius_text(syn)}, " if syn["radius"].notna().any() else ""
        parts.append(f"synthetic patterns: {head}, {radius}{_lengths(syn)}")
    data = rows[rows["pattern"].isin(("data", "data_trained"))]
    if len(data):
        parts.append(f"data patterns: {data_setting(data)}, {_lengths(data)} (+1 CLS row where the encoder "
                     f"adds one)")
    return "; ".join(parts)


def _radius_finding(rows: pd.DataFrame, ref: str) -> str | None:
    main = main_rows(rows)
    adv = main[(main["label"] == ref) & (main["pattern"] == "adversarial")]
    rnd = main[(main["label"] == ref) & (main["pattern"] == "random")]
    if adv.empty or adv["radius"].isna().all():
        return None
    r, n_max = adv["radius"].median(), adv["seq_len"].max()
    text = f"**Radius R = {r:g}** (the main setting)."
    if rnd["score_std"].notna().any():
        text += (f" The logits xᵢᵀAxⱼ of random tokens then have std {num_text(rnd['score_std'].median())}, the scale "
                 f"trained models reach (about 4).")
    if adv["score_gap"].notna().any():
        text += (f" The adversarial input's score gap is {num_text(adv['score_gap'].median())}, far above "
                 f"log N = {math.log(n_max):.1f} at the largest N: softmax concentrates instead of averaging, the "
                 f"regime in which the paper's √N is tight.")
    sweep = radius_table(rows)
    sweep = sweep[sweep["variant"] == ref].sort_values("radius")
    for pattern, g in sweep.groupby("pattern", sort=False):
        steps = ", ".join(f"{alpha_text(t.alpha)} at R = {t.radius:g}" + (f" (score gap {num_text(t.score_gap)})"
                                                                      if np.isfinite(t.score_gap) else "")
                          for t in g.itertuples())
        text += f" {ref}'s exponent against R, {pattern} inputs: {steps}."
        if pattern == "adversarial":
            flat = g[g["alpha"].map(growth_class).isin(("flat", "decreasing"))]
            band = g[g["alpha"].map(growth_class) == "√N"]
            if len(flat):
                text += f" Up to R = {flat['radius'].max():g} softmax averages and no growth shows"
                text += (f"; √N from R = {band['radius'].min():g}." if len(band) else ".")
    return text


def _worst_finding(rows: pd.DataFrame, table: pd.DataFrame) -> str | None:
    if "adversarial" not in table:
        return None
    return ("**Worst case (adversarial).** Growth of L with N by fitted exponent: "
            + _by_class(table["adversarial"]) + ". The construction is the softmax worst case; for other "
            "variants it is one input among many, so the search below also matters for them.")


def _search_finding(rows: pd.DataFrame, table: pd.DataFrame, ref: str) -> str | None:
    main = main_rows(rows)
    cur = {p: main[main["pattern"] == p].groupby(["label", "seq_len"])["lipschitz"].median()
           for p in ("search", "adversarial")}
    if cur["search"].empty:
        return None
    text = "**Search.**"
    both = pd.concat([cur["search"], cur["adversarial"]], axis=1, keys=["s", "a"]).dropna()
    if len(both):
        below = both[both["s"] < both["a"] * (1 - 1e-6)]
        text += (f" It keeps the best value of its starts, so it is at least the adversarial value: true at "
                 f"{len(both) - len(below)} of {len(both)} (variant, N).")
        if len(below):
            text += " Below it at: " + ", ".join(f"{lab} N = {length_label(n)}" for lab, n in below.index) + "."
    rnd = main[(main["pattern"] == "random") & (main["label"] == ref)]
    if ref in both.index.get_level_values(0) and len(rnd):
        adv = both.loc[ref]["a"]
        best = rnd.assign(v=rnd["lipschitz_max"].fillna(rnd["lipschitz"])).groupby("seq_len")["v"].max()
        ns = sorted(set(adv.index) & set(best.index))
        above = [n for n in ns if best[n] > adv[n]]
        if above:
            overtakes = next((n for n in ns if all(adv[m] >= best[m] for m in ns if m >= n)), None)
            text += (f" For {ref}, the best random draw at R = {radius_text(rnd)} already gives L = {_span(best[above])} "
                     f"at {_ns(above, ns)}, above the adversarial point's {_span(adv[above])}; the adversarial "
                     f"value " + (f"passes it from N = {length_label(overtakes)}." if overtakes is not None
                                  else "stays below it up to the largest N."))
            if "search" in table and np.isfinite(table.loc[ref, "search"]):
                text += (f" So the best value found grows only as N^{alpha_text(table.loc[ref, 'search'])}: at these "
                         f"lengths the search exponent follows the random starts, not the worst-case rate.")
    ratio = (both["s"] / both["a"]).groupby(level=0).max() if len(both) else pd.Series(dtype=float)
    far = ratio[ratio > 10]
    if len(far):
        def where(lab):
            g = both.loc[lab]
            n = (g["s"] / g["a"]).idxmax()
            return f"{lab} (L = {num_text(g.loc[n, 's'])} at N = {length_label(n)}, {num_text(ratio[lab])}× the adversarial value)"
        text += (" More than 10× the adversarial value: " + "; ".join(where(lab) for lab in label_order(far.index))
                 + ". These maps have inputs at which they are far less smooth than softmax attention; their search "
                   "exponents say at which N the ascent found such inputs, not how L grows.")
    return text


def _random_finding(table: pd.DataFrame) -> str | None:
    if "random" not in table:
        return None
    return "**Random tokens.** " + _by_class(table["random"]) + "."


def _data_finding(rows: pd.DataFrame, table: pd.DataFrame, ref: str) -> str | None:
    pats = [p for p in ("data", "data_trained") if p in table]
    if not pats:
        return None
    main = main_rows(rows)
    text = ("**Real data.** The paper measures L growing about as N^¼ on hidden states of real text in pretrained "
            "and randomly initialised BERT and GPT-2.")
    data = main[main["pattern"].isin(pats)]
    norm = f", tokens of norm {_span(data['input_radius'])}" if data["input_radius"].notna().any() else ""
    text += f" Here ({data_setting(data)}{norm}):"
    parts = []
    for p in pats:
        g = main[main["pattern"] == p]
        desc = "untrained encoder" if p == "data" else "trained encoder"
        if p == "data_trained" and "checkpoint_step" in g and g["checkpoint_step"].notna().any():
            step = int(pd.to_numeric(g["checkpoint_step"], errors="coerce").max())
            variant = "/".join(sorted(g["checkpoint_variant"].dropna().astype(str).unique())) \
                if "checkpoint_variant" in g else ""
            desc += f" ({variant + ', ' if variant else ''}{step} training steps)"
        if ref in table.index and np.isfinite(table.loc[ref, p]):
            parts.append(f"{ref} N^{alpha_text(table.loc[ref, p])} ({growth_class(table.loc[ref, p])}) with the {desc}")
    text += " " + (" and ".join(parts) + "." if parts else f"no {ref} records.")
    grow = [f"`{p}`: " + ", ".join(f"{lab} ({alpha_text(table.loc[lab, p])}, {growth_class(table.loc[lab, p])})"
                                   for lab in label_order(table.index) if growth_class(table.loc[lab, p]) not in ("flat", "—"))
            for p in pats]
    grow = [g for g in grow if not g.endswith(": ")]
    text += (" Not flat: " + "; ".join(grow) + "; every other variant flat." if grow else " Every variant flat.")
    quarter = {lab for p in pats for lab in table.index if growth_class(table.loc[lab, p]) == "slower than √N"}
    text += (f" Between flat and √N (where N^¼ lies): {_names(quarter)}." if quarter else
             " No variant grows between flat and √N (where N^¼ lies) on these hidden states.")
    return text


def _bound_finding(rows: pd.DataFrame, ref: str) -> str | None:
    ok = ok_rows(rows)
    ok = ok[ok["bound_ratio"].notna()]
    if ok.empty:
        return None
    exact = is_exact(ok)
    ex, other = ok[exact], ok[~exact]
    text = ("**Softmax bound.** The closed form ‖V‖₂·√(R_A² r² (N+1) + N) (R_A = maxᵢ ‖Axᵢ‖, r = maxᵢⱼ ‖xᵢ − xⱼ‖), "
            "computed at each measured input, bounds the local Lipschitz constant of softmax attention only.")
    if len(ex):
        worst = ex.loc[ex["bound_ratio"].idxmax()]
        verdict = "no measurement above the bound" if worst["bound_ratio"] <= 1 else \
            "**a measurement above the bound: a bug**"
        text += (f" Exact softmax ({_names(set(ex['label']))}), over all {len(ex)} records: largest L / bound "
                 f"{num_text(worst['bound_ratio'])} ({worst['label']}, {worst['pattern']}, N = {length_label(worst['seq_len'])}): "
                 f"{verdict}.")
        main = main_rows(ex)
        adv = main[(main["label"] == ref) & (main["pattern"] == "adversarial")]
        if len(adv) > 1:
            b, lv = median_curve(adv, "softmax_bound"), median_curve(adv)
            close = abs(slope(b) - slope(lv)) < 0.1
            text += (f" At the adversarial inputs the bound grows as N^{alpha_text(slope(b))} and {ref}'s L as "
                     f"N^{alpha_text(slope(lv))} ({'the rates agree within 0.1' if close else 'the rates differ'}); "
                     f"the bound is {_span(b / lv)}× L there.")
    if len(other):
        above = other[other["bound_ratio"] > 1].groupby("label")["bound_ratio"].max()
        text += " For the other variants L / bound is not a check: their maps are not exact softmax attention."
        if len(above):
            text += (" It exceeds 1 for " + ", ".join(f"{lab} (up to {num_text(above[lab])})" for lab in label_order(above.index))
                     + ": no violation, only a map less smooth than the softmax bound allows.")
    return text


def findings(df: pd.DataFrame, device: str | None = None, reference: str = BOUND_VARIANT) -> list[str]:
    """The smoothness section's findings for one device, as markdown sentences; every number comes
    from the records (exponents, radius, score gap, bound ratios). Empty without ok records."""
    rows = one_device(smoothness_rows(df), device)
    if ok_rows(rows).empty:
        return []
    table = exponent_table(rows)
    out = [f"Setting: {_setup(ok_rows(rows))}."]
    same = coinciding_labels(rows, reference)
    if same:
        out.append(f"{_names(same)}: the same L as {reference} at every pattern and N (within {COINCIDE_RTOL:.0%}), "
                   f"so their lines coincide with {reference}'s in the figures.")
    for f in (_radius_finding(rows, reference), _worst_finding(rows, table),
              _search_finding(rows, table, reference), _random_finding(table),
              _data_finding(rows, table, reference), _bound_finding(rows, reference)):
        if f:
            out.append(f)
    failed = rows[rows["status"] != "ok"]
    if len(failed):
        out.append(f"{len(failed)} smoothness case(s) failed ({', '.join(sorted(failed['status'].unique()))}); "
                   f"see section 6.")
    return out
