"""Smoothness of attention as N grows (Castin, Ablin & Peyré, ICML 2024): tables, findings and figures
from the ``smoothness`` bench records.

Input: the report's frame (:mod:`lra.report.frame`); only ``kind == "bench"``, ``mode == "smoothness"``
rows are read. A record is one (variant, input pattern, radius R, causal, N) case with the local
Lipschitz constant ``lipschitz`` (L, the spectral norm of the attention map's Jacobian at the input)
and the closed-form softmax bound at the same input (``softmax_bound``, ``bound_ratio = L / bound``).
Records without a ``pattern`` (older ones) count as ``random``.

* :func:`smoothness_rows` -- those rows with ``label`` (variant, ``" (causal)"`` when causal),
  ``pattern``, ``radius``, ``causal``, ``sweep`` normalised.
* :func:`exponent_table` -- fitted exponent alpha of ``L ~ N^alpha`` per variant x pattern at each
  pattern's main setting (the radius sweep left out); :func:`exponent_display` adds the worst-case
  growth class and the largest L / softmax bound, as display strings.
* :func:`radius_table` -- alpha per variant x pattern x radius over the radius sweep.
* :func:`findings` -- the section's sentences, every number read from the records.
* :func:`pattern_figure`, :func:`radius_figure`, :func:`smoothness_figures` -- L vs N per pattern
  (log-log, alpha per variant, the softmax bound), alpha vs R.

alpha is the least-squares slope of log L against log N over every measured N (the median L per N);
O(rows) per table.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from .fits import fit_exponent
from .frame import _flag
from .labels import TASK_NAMES, is_exact, length_label, sig, slug, variant_order
from .plotting import (FigureDir, FigureResult, coinciding, exponent_label, legend_outside, length_axis, log_y,
                       overlap_note, plt_sns, ylabel)

CITATION = "Castin, Ablin & Peyré, *How Smooth Is Attention?*, ICML 2024 (arXiv 2312.14820)"
#: the order of the patterns in tables and figures: worst case first, real data last
PATTERNS = ("adversarial", "search", "random", "data", "data_trained")
PATTERN_NAMES = {
    "adversarial": "the paper's worst-case construction for the map's own projections, tokens of norm ≤ R",
    "search": "projected gradient ascent of L over the ball of radius R, from the adversarial point and "
              "from the best random draw; the best value found",
    "random": "tokens uniform on the sphere of radius R (mean over draws)",
    "data": "hidden states of real sequences at an untrained encoder layer's attention input",
    "data_trained": "the same through a trained encoder (checkpoint)",
}
#: the variant whose inputs the softmax bound curve is drawn at, and the reference of "on top of"
BOUND_VARIANT = "full"
#: growth classes of a fitted exponent: (lower edge, name); the first edge that alpha reaches names it
GROWTH = ((0.6, "faster than √N"), (0.4, "√N"), (0.15, "slower than √N"), (-0.15, "flat"),
          (-math.inf, "decreasing"))
COINCIDE_RTOL = 0.02


# ------------------------------------------------------------------------------------------------ rows

def smoothness_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The ``smoothness`` bench rows of ``df`` (any status) with ``pattern`` (default ``random``),
    ``radius`` (NaN for data patterns and older records), ``causal``/``sweep`` (bool) and ``label``."""
    if "mode" not in df:
        df = pd.DataFrame(columns=["kind", "mode", "variant", "seq_len", "status"])
    rows = df[(df["mode"] == "smoothness") & (df.get("kind", "bench") == "bench")].copy()
    for col in ("pattern", "radius", "causal", "sweep", "lipschitz", "softmax_bound", "bound_ratio",
                "lipschitz_max", "score_gap", "score_std", "input_radius", "search_best_start"):
        if col not in rows:
            rows[col] = np.nan
    if "status" not in rows:
        rows["status"] = "ok"
    rows["pattern"] = rows["pattern"].astype(object).where(rows["pattern"].notna(), "random")
    for col in ("seq_len", "radius", "lipschitz", "softmax_bound", "bound_ratio", "lipschitz_max", "score_gap",
                "score_std", "input_radius"):
        rows[col] = pd.to_numeric(rows[col], errors="coerce").astype(float)
    for col in ("causal", "sweep"):
        rows[col] = pd.Series([bool(_flag(v)) for v in rows[col]], index=rows.index, dtype=bool)
    rows["label"] = [f"{v} (causal)" if c else v for v, c in zip(rows["variant"], rows["causal"])]
    return rows


def _ok(rows: pd.DataFrame) -> pd.DataFrame:
    ok = (rows["status"] == "ok") & (rows["lipschitz"] > 0) & np.isfinite(rows["lipschitz"]) & rows["seq_len"].notna()
    return rows[ok]


def _main(rows: pd.DataFrame) -> pd.DataFrame:
    """The ok rows at each pattern's main setting (not the radius sweep)."""
    ok = _ok(rows)
    return ok.loc[~ok["sweep"].astype(bool)]


def label_order(labels: Iterable[str]) -> list[str]:
    """Variants in the report's order, each causal label right after its variant."""
    labels = set(labels)
    base = variant_order({lab.split(" (")[0] for lab in labels})
    return [lab for v in base for lab in sorted(lab for lab in labels if lab.split(" (")[0] == v)]


def pattern_order(patterns: Iterable[str]) -> list[str]:
    ps = set(patterns)
    return [p for p in PATTERNS if p in ps] + sorted(ps - set(PATTERNS), key=str)


def _curve(rows: pd.DataFrame, value: str = "lipschitz") -> pd.Series:
    """Median ``value`` per N (index: N, ascending), positive finite values only."""
    v = rows[np.isfinite(rows[value]) & (rows[value] > 0)]
    return v.groupby("seq_len")[value].median().sort_index()


def slope(curve: pd.Series) -> float:
    """alpha of ``value ~ N^alpha``: least squares in log-log over every N (as ``lra-bench``'s summary
    fits it, :func:`lra.smoothness.growth_exponent`); NaN below two lengths."""
    return fit_exponent(curve.index, curve.to_numpy(float), upper_half=False)


def _one_device(rows: pd.DataFrame, device: str | None) -> pd.DataFrame:
    if device is not None:
        return rows[rows["device_name"] == device]
    if "device_name" in rows and rows["device_name"].nunique() > 1:
        raise ValueError(f"smoothness records of several devices {sorted(rows['device_name'].unique())}: "
                         f"pass device= one of them")
    return rows


# ---------------------------------------------------------------------------------------------- tables

def exponent_table(df: pd.DataFrame, device: str | None = None) -> pd.DataFrame:
    """Variant label (rows) x pattern (columns): alpha at each pattern's main setting (float; NaN where
    a variant has fewer than two lengths of a pattern). ``device`` is required when ``df`` holds
    smoothness records of several devices. Empty frame without records."""
    rows = _main(_one_device(smoothness_rows(df), device))
    if rows.empty:
        return pd.DataFrame()
    table = rows.groupby(["label", "pattern"]).apply(lambda g: slope(_curve(g)), include_groups=False).unstack()
    table = table.reindex(index=label_order(table.index), columns=pattern_order(table.columns))
    table.index.name, table.columns.name = "variant", "pattern"
    return table


def growth_class(alpha: float) -> str:
    """The :data:`GROWTH` class of an exponent ("√N", "flat", ...); "—" when not finite."""
    if not np.isfinite(alpha):
        return "—"
    return next(name for edge, name in GROWTH if alpha >= edge)


def growth_legend() -> str:
    """The :data:`GROWTH` classes in words: "α ≥ 0.6 faster than √N, 0.4–0.6 √N, ..., below -0.15 decreasing"."""
    edges = [e for e, _ in GROWTH]
    parts = []
    for i, (edge, name) in enumerate(GROWTH):
        if i == 0:
            parts.append(f"α ≥ {edge:g} {name}")
        elif name == "flat" and edge == -edges[i - 1]:
            parts.append(f"|α| < {edges[i - 1]:g} {name}")
        elif math.isinf(edge):
            parts.append(f"below {edges[i - 1]:g} {name}")
        else:
            parts.append(f"{edge:g}–{edges[i - 1]:g} {name}")
    return ", ".join(parts)


def _alpha(x: float) -> str:
    return "—" if not np.isfinite(x) else f"{0.0 if abs(x) < 0.005 else x:.2f}"


RATIO_COLUMN = "largest L / softmax bound"
#: the note under :func:`exponent_display`'s table
RATIO_NOTE = ("Largest L / softmax bound: over every ok record of the variant (all patterns and radii). The bound "
              "is proven for softmax attention; it is a check for the exact softmax variants only. In brackets: "
              "a variant that is not exact softmax, for which the ratio checks nothing (above 1 is no violation).")


def exponent_display(df: pd.DataFrame, device: str | None = None) -> pd.DataFrame:
    """:func:`exponent_table` as display strings, the growth class of the adversarial exponent, and
    the largest L / softmax bound over all the variant's ok records (:data:`RATIO_NOTE`: in brackets
    for variants that are not exact softmax attention)."""
    table = exponent_table(df, device)
    if table.empty:
        return table
    out = table.map(_alpha)
    out.columns = [f"{p} α" for p in table.columns]
    if "adversarial" in table:
        out["worst-case growth (adversarial)"] = table["adversarial"].map(growth_class)
    rows = _ok(_one_device(smoothness_rows(df), device))
    exact = dict(zip(rows["label"], is_exact(rows)))
    worst = rows.groupby("label")["bound_ratio"].max()

    def ratio(label: str) -> str:
        r = worst.get(label, math.nan)
        if not np.isfinite(r):
            return "—"
        return _num(r) if exact.get(label) else f"({_num(r)})"

    if worst.notna().any():
        out[RATIO_COLUMN] = [ratio(lab) for lab in out.index]
    return out


def radius_table(df: pd.DataFrame, device: str | None = None) -> pd.DataFrame:
    """Long table ``(variant, pattern, radius, alpha, score_gap, n_min, n_max)`` for every pattern measured
    at more than one radius (the sweep and the main radius); ``score_gap`` is the adversarial input's
    (NaN for other patterns)."""
    cols = ["variant", "pattern", "radius", "alpha", "score_gap", "n_min", "n_max"]
    rows = _ok(_one_device(smoothness_rows(df), device))
    rows = rows[rows["radius"].notna()]
    rows = rows[rows.groupby(["label", "pattern"])["radius"].transform("nunique") > 1]
    out = [{"variant": lab, "pattern": p, "radius": float(r), "alpha": slope(_curve(g)),
            "score_gap": g["score_gap"].median(), "n_min": int(g["seq_len"].min()), "n_max": int(g["seq_len"].max())}
           for (lab, p, r), g in rows.groupby(["label", "pattern", "radius"])]
    return pd.DataFrame(out, columns=cols)


# ---------------------------------------------------------------------------------------------- findings

def _names(labels: Iterable[str], alphas: pd.Series | None = None) -> str:
    labels = label_order(labels)
    if not labels:
        return "none"
    return ", ".join(f"{lab} ({_alpha(alphas[lab])})" if alphas is not None else lab for lab in labels)


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


def _num(x: float) -> str:
    """3 significant digits (:func:`~lra.report.labels.sig`), powers of ten as "3.7e9" from 10,000 up."""
    if not np.isfinite(x):
        return "—"
    if abs(x) >= 1e4:
        m, e = f"{x:.1e}".split("e")
        return f"{m}e{int(e)}"
    return sig(x)


def _span(values: Iterable[float]) -> str:
    v = [x for x in values if np.isfinite(x)]
    if not v:
        return "—"
    lo, hi = min(v), max(v)
    return _num(lo) if _num(lo) == _num(hi) else f"{_num(lo)}–{_num(hi)}"


def _ns(ns: Sequence[float], measured: Sequence[float]) -> str:
    """Lengths as "N = 8–128" when they are a run of the measured lengths, else "N = 8, 32"."""
    ns, measured = sorted(ns), sorted(measured)
    if len(ns) > 2 and measured[measured.index(ns[0]):measured.index(ns[-1]) + 1] == ns:
        return f"N = {length_label(ns[0])}–{length_label(ns[-1])}"
    return "N = " + ", ".join(length_label(n) for n in ns)


def _lengths(rows: pd.DataFrame) -> str:
    ns = sorted(rows["seq_len"].dropna().unique())
    return _ns(ns, ns)


def _radius(rows: pd.DataFrame) -> str:
    r = sorted(rows["radius"].dropna().unique())
    return "/".join(f"{x:g}" for x in r)


def coinciding_labels(rows: pd.DataFrame, reference: str = BOUND_VARIANT) -> list[str]:
    """Labels whose L equals ``reference``'s within :data:`COINCIDE_RTOL` at every (pattern, N) of the
    main setting that both measured (their lines lie on top of ``reference``'s in every figure)."""
    med = _main(rows).groupby(["label", "pattern", "seq_len"])["lipschitz"].median().unstack(["pattern", "seq_len"])
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
        parts.append(f"synthetic patterns: {head}, main radius R = {_radius(syn)}, {_lengths(syn)}")
    data = rows[rows["pattern"].isin(("data", "data_trained"))]
    if len(data):
        parts.append(f"data patterns: {_data_setting(data)}, {_lengths(data)} (+1 CLS row where the encoder "
                     f"adds one)")
    return "; ".join(parts)


def _data_setting(data: pd.DataFrame) -> str:
    """"ListOps test sequences, layer 0, 4 heads × 16" from the data records' facts."""
    def values(col):
        return sorted(data[col].dropna().astype(str).unique()) if col in data else []
    task = "/".join(TASK_NAMES.get(t, t) for t in values("data_task"))
    split = "/".join(values("data_split"))
    layer = "/".join(str(int(float(x))) for x in values("layer"))
    heads = ""
    if {"heads", "head_dim"} <= set(data) and data[["heads", "head_dim"]].notna().all(axis=None):
        heads = f"{int(data['heads'].iloc[0])} heads × {int(data['head_dim'].iloc[0])}"
    first = " ".join(x for x in (task, split, "sequences" if task or split else "") if x)
    return ", ".join(x for x in (first, f"layer {layer}" if layer else "", heads) if x)


def _radius_finding(rows: pd.DataFrame, ref: str) -> str | None:
    main = _main(rows)
    adv = main[(main["label"] == ref) & (main["pattern"] == "adversarial")]
    rnd = main[(main["label"] == ref) & (main["pattern"] == "random")]
    if adv.empty or adv["radius"].isna().all():
        return None
    r, n_max = adv["radius"].median(), adv["seq_len"].max()
    text = f"**Radius R = {r:g}** (the main setting)."
    if rnd["score_std"].notna().any():
        text += (f" The logits xᵢᵀAxⱼ of random tokens then have std {_num(rnd['score_std'].median())}, the scale "
                 f"trained models reach (about 4).")
    if adv["score_gap"].notna().any():
        text += (f" The adversarial input's score gap is {_num(adv['score_gap'].median())}, far above "
                 f"log N = {math.log(n_max):.1f} at the largest N: softmax concentrates instead of averaging, the "
                 f"regime in which the paper's √N is tight.")
    sweep = radius_table(rows)
    sweep = sweep[sweep["variant"] == ref].sort_values("radius")
    for pattern, g in sweep.groupby("pattern", sort=False):
        steps = ", ".join(f"{_alpha(t.alpha)} at R = {t.radius:g}" + (f" (score gap {_num(t.score_gap)})"
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
    main = _main(rows)
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
            text += (f" For {ref}, the best random draw at R = {_radius(rnd)} already gives L = {_span(best[above])} "
                     f"at {_ns(above, ns)}, above the adversarial point's {_span(adv[above])}; the adversarial "
                     f"value " + (f"passes it from N = {length_label(overtakes)}." if overtakes is not None
                                  else "stays below it up to the largest N."))
            if "search" in table and np.isfinite(table.loc[ref, "search"]):
                text += (f" So the best value found grows only as N^{_alpha(table.loc[ref, 'search'])}: at these "
                         f"lengths the search exponent follows the random starts, not the worst-case rate.")
    ratio = (both["s"] / both["a"]).groupby(level=0).max() if len(both) else pd.Series(dtype=float)
    far = ratio[ratio > 10]
    if len(far):
        def where(lab):
            g = both.loc[lab]
            n = (g["s"] / g["a"]).idxmax()
            return f"{lab} (L = {_num(g.loc[n, 's'])} at N = {length_label(n)}, {_num(ratio[lab])}× the adversarial value)"
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
    main = _main(rows)
    text = ("**Real data.** The paper measures L growing about as N^¼ on hidden states of real text in pretrained "
            "and randomly initialised BERT and GPT-2.")
    data = main[main["pattern"].isin(pats)]
    norm = f", tokens of norm {_span(data['input_radius'])}" if data["input_radius"].notna().any() else ""
    text += f" Here ({_data_setting(data)}{norm}):"
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
            parts.append(f"{ref} N^{_alpha(table.loc[ref, p])} ({growth_class(table.loc[ref, p])}) with the {desc}")
    text += " " + (" and ".join(parts) + "." if parts else f"no {ref} records.")
    grow = [f"`{p}`: " + ", ".join(f"{lab} ({_alpha(table.loc[lab, p])}, {growth_class(table.loc[lab, p])})"
                                   for lab in label_order(table.index) if growth_class(table.loc[lab, p]) not in ("flat", "—"))
            for p in pats]
    grow = [g for g in grow if not g.endswith(": ")]
    text += (" Not flat: " + "; ".join(grow) + "; every other variant flat." if grow else " Every variant flat.")
    quarter = {lab for p in pats for lab in table.index if growth_class(table.loc[lab, p]) == "slower than √N"}
    text += (f" Between flat and √N (where N^¼ lies): {_names(quarter)}." if quarter else
             " No variant grows between flat and √N (where N^¼ lies) on these hidden states.")
    return text


def _bound_finding(rows: pd.DataFrame, ref: str) -> str | None:
    ok = _ok(rows)
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
                 f"{_num(worst['bound_ratio'])} ({worst['label']}, {worst['pattern']}, N = {length_label(worst['seq_len'])}): "
                 f"{verdict}.")
        main = _main(ex)
        adv = main[(main["label"] == ref) & (main["pattern"] == "adversarial")]
        if len(adv) > 1:
            b, lv = _curve(adv, "softmax_bound"), _curve(adv)
            close = abs(slope(b) - slope(lv)) < 0.1
            text += (f" At the adversarial inputs the bound grows as N^{_alpha(slope(b))} and {ref}'s L as "
                     f"N^{_alpha(slope(lv))} ({'the rates agree within 0.1' if close else 'the rates differ'}); "
                     f"the bound is {_span(b / lv)}× L there.")
    if len(other):
        above = other[other["bound_ratio"] > 1].groupby("label")["bound_ratio"].max()
        text += " For the other variants L / bound is not a check: their maps are not exact softmax attention."
        if len(above):
            text += (" It exceeds 1 for " + ", ".join(f"{lab} (up to {_num(above[lab])})" for lab in label_order(above.index))
                     + ": no violation, only a map less smooth than the softmax bound allows.")
    return text


def findings(df: pd.DataFrame, device: str | None = None, reference: str = BOUND_VARIANT) -> list[str]:
    """The smoothness section's findings for one device, as markdown sentences; every number comes
    from the records (exponents, radius, score gap, bound ratios). Empty without ok records."""
    rows = _one_device(smoothness_rows(df), device)
    if _ok(rows).empty:
        return []
    table = exponent_table(rows)
    out = [f"Setting: {_setup(_ok(rows))}."]
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


# ---------------------------------------------------------------------------------------------- figures

def _draw_lines(ax, med: pd.DataFrame, x: str, y: str, colors: dict[str, Any], labels: dict[str, str],
                reference: str = BOUND_VARIANT) -> list[tuple[Any, str]]:
    """One line per label (colour of its variant; causal dashed), markers at the points; ``reference``
    drawn last, so that its colour shows where other lines coincide with it. Returns the legend's
    ``(handle, text)`` in label order."""
    order = label_order(med["label"].unique())
    for lab in sorted(order, key=lambda lab: lab == reference):
        g = med[med["label"] == lab].sort_values(x)
        ax.plot(g[x], g[y], marker="o", ms=4, lw=1.6, color=colors.get(lab.split(" (")[0], "0.3"),
                ls="--" if lab.endswith("(causal)") else "-", label=labels[lab], zorder=3 + (lab == reference))
    by_text = dict(zip(*reversed(ax.get_legend_handles_labels())))
    return [(by_text[labels[lab]], labels[lab]) for lab in order]


def _wrap(text: str, width: int = 95) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def _figure_setting(main: pd.DataFrame, pattern: str) -> str:
    """The fixed facts of one pattern's figure: "R = 2, one head, d = 64" or "ListOps, layer 0, ..."."""
    if main["radius"].notna().any():
        dim = main["dim"].dropna() if "dim" in main else pd.Series(dtype=float)
        return f"R = {_radius(main)}, one head" + (f", d = {int(dim.iloc[0])}" if len(dim) else "")
    return _data_setting(main)


def pattern_figure(rows: pd.DataFrame, pattern: str, device: str, colors: dict[str, Any], out: FigureDir,
                   stem: str, reference: str = BOUND_VARIANT) -> FigureResult:
    """L vs N (log-log) at ``pattern``'s main setting: one line per variant (legend: alpha), the
    softmax bound at ``reference``'s inputs (black dashed) and the slopes N^½, N^¼ through
    ``reference``'s first point (grey)."""
    rows = smoothness_rows(rows)
    main = _main(rows)
    main = main[main["pattern"] == pattern]
    if main.empty:
        return None, f"no ok smoothness record of pattern {pattern}"
    plt, _ = plt_sns()
    med = main.groupby(["label", "seq_len"], as_index=False)["lipschitz"].median()
    same = coinciding(med.rename(columns={"label": "variant"}), "lipschitz", rtol=COINCIDE_RTOL)
    labels = {}
    for lab, g in main.groupby("label"):
        a = slope(_curve(g))
        labels[lab] = f"{lab} ({exponent_label(a)})" if np.isfinite(a) else lab
        if lab in same:
            labels[lab] += f", same as {same[lab]}"
    fig, ax = plt.subplots(figsize=(8.0, 4.8))
    handles = _draw_lines(ax, med, "seq_len", "lipschitz", colors, labels, reference)
    ref = main[main["label"] == reference]
    bound = _curve(ref, "softmax_bound") if len(ref) else pd.Series(dtype=float)
    if len(bound) > 1:
        (h,) = ax.plot(bound.index, bound.values, color="k", ls="--", lw=1.2, zorder=2)
        handles.append((h, f"softmax bound at {reference}'s inputs ({exponent_label(slope(bound))})"))
    ref_l = _curve(ref)
    if len(ref_l) > 1:
        ns = ref_l.index.to_numpy(float)
        for k, style, name in ((0.5, ":", "1/2"), (0.25, "-.", "1/4")):
            (h,) = ax.plot(ns, ref_l.iloc[0] * (ns / ns[0]) ** k, color="0.4", ls=style, lw=1.1, zorder=2)
            handles.append((h, rf"slope $N^{{{name}}}$ from {reference}'s first point"))
    log_y(ax)
    length_axis(ax, main["seq_len"])
    ylabel(ax, "local Lipschitz constant L")
    ax.set_title(f"{device}: smoothness, {pattern} inputs ({_figure_setting(main, pattern)})\n"
                 + _wrap(PATTERN_NAMES.get(pattern, "")), fontsize="small")
    legend_outside(ax, r"variant ($L \propto N^{\alpha}$, least squares over all N)",
                   [h for h, _ in handles], [n for _, n in handles])
    return out.save(fig, stem), overlap_note(same)


def radius_figure(rows: pd.DataFrame, device: str, colors: dict[str, Any], out: FigureDir, stem: str
                  ) -> FigureResult:
    """alpha vs radius R (log x), one panel per swept pattern, one line per variant; reference lines at
    ½ (√N), ¼ and 0, the main radius marked."""
    rows = smoothness_rows(rows)
    table = radius_table(rows)
    if table.empty:
        return None, "no pattern measured at more than one radius"
    plt, _ = plt_sns()
    patterns = pattern_order(table["pattern"].unique())
    fig, axes = plt.subplots(1, len(patterns), figsize=(4.6 * len(patterns) + 2.6, 4.6), sharey=True, squeeze=False)
    main_r = _main(rows)["radius"].dropna().unique()
    notes, handles = [], {}
    for ax, pattern in zip(axes[0], patterns):
        g = table[table["pattern"] == pattern].rename(columns={"variant": "label"})
        same = coinciding(g.rename(columns={"label": "variant"}), "alpha", keys=("radius",), rtol=COINCIDE_RTOL)
        labels = {lab: lab + (f", same as {same[lab]}" if lab in same else "") for lab in g["label"].unique()}
        for h, lab in _draw_lines(ax, g, "radius", "alpha", colors, labels):
            handles.setdefault(lab, h)
        for k, style, name in ((0.5, ":", r"$\alpha = 1/2$ ($\sqrt{N}$)"), (0.25, "-.", r"$\alpha = 1/4$"),
                               (0.0, "-", r"$\alpha = 0$ (flat)")):
            handles.setdefault(name, ax.axhline(k, color="0.35", ls=style, lw=1.1, zorder=2))
        for r in main_r:
            handles.setdefault("main radius", ax.axvspan(r / 1.06, r * 1.06, color="0.5", alpha=0.25, lw=0, zorder=1))
        ax.set_xscale("log", base=2)
        radii = sorted(g["radius"].unique())
        ax.set_xticks(radii, [f"{r:g}" for r in radii])
        ax.minorticks_off()
        ax.set_xlabel("radius R (log scale)")
        ax.set_title(f"{pattern} inputs, N = {length_label(g['n_min'].min())}–{length_label(g['n_max'].max())}",
                     fontsize="small")
        if same:
            notes.append(f"{pattern} inputs: " + overlap_note(same).split(": ", 1)[1].rstrip("."))
    axes[0][0].set_ylabel(r"fitted exponent $\alpha$ ($L \propto N^{\alpha}$)")
    legend_outside(axes[0][-1], "variant", list(handles.values()), list(handles))
    fig.suptitle(f"{device}: smoothness exponent against the input radius R", fontsize="medium")
    fig.tight_layout()
    note = f"Lines drawn on top of each other (equal within {COINCIDE_RTOL:.0%} at every radius), " \
        + "; ".join(notes) + "." if notes else ""
    return out.save(fig, stem), note


def smoothness_figures(rows: pd.DataFrame, device: str, colors: dict[str, Any], out: FigureDir
                       ) -> list[tuple[str, FigureResult]]:
    """``[(caption, (path or None, note)), ...]``: one L-vs-N figure per pattern, then exponent vs R."""
    rows = smoothness_rows(rows)
    s = slug(device)
    figs = []
    main = _main(rows)
    for p in pattern_order(main["pattern"].unique()):
        g = main[main["pattern"] == p]
        r = f", R = {_radius(g)}" if g["radius"].notna().any() else ""
        figs.append((f"smoothness: L vs N, {p} inputs{r}", pattern_figure(rows, p, device, colors, out,
                                                                          f"smoothness_{slug(p)}_{s}")))
    if not radius_table(rows).empty:
        figs.append(("smoothness: fitted exponent vs radius R", radius_figure(rows, device, colors, out,
                                                                              f"smoothness_radius_{s}")))
    return figs


__all__: Sequence[str] = ("PATTERNS", "PATTERN_NAMES", "GROWTH", "smoothness_rows", "exponent_table", "exponent_display",
                          "radius_table", "growth_class", "findings", "pattern_figure", "radius_figure",
                          "smoothness_figures", "coinciding_labels", "slope", "label_order", "pattern_order")
