"""Report pieces for the ``smoothness`` bench records: pure functions of the records' DataFrame.

Input: the DataFrame :func:`lra.results.load` returns (one row per record; the case facts
``mode``, ``pattern``, ``radius``, ``sweep``, ``causal`` and the metrics ``lipschitz``,
``softmax_bound`` are columns). Rows of other modes, failed cases and other kinds are ignored.

* :func:`exponent_table` -- fitted exponent ``alpha`` of ``L ~ n^alpha`` per variant x pattern
  (each pattern at its main setting; the radius sweep is left out).
* :func:`radius_table` -- the same per variant x pattern x radius, over the radius sweep.
* :func:`pattern_figure` -- L vs n (log-log) for one pattern, one line per variant with its
  exponent in the legend, and the softmax bound beside the exact softmax variant's line.
* :func:`radius_figure` -- exponent vs radius R, one panel per swept pattern.

Variants measured in their causal setting are labelled ``"<variant> (causal)"``. With records of
several devices, pass ``device=`` (a ``device_name``) to choose one; without it the table rows
are ``(device, variant)``.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .estimate import growth_exponent
from .measure import PATTERNS

SQRT_N, QUARTER = 0.5, 0.25


def _flag(col: pd.Series) -> pd.Series:
    return col.map(lambda v: bool(v) if isinstance(v, (bool, np.bool_)) or v in (0, 1) else False)


def smoothness_rows(df: pd.DataFrame, device: str | None = None) -> pd.DataFrame:
    """The ok smoothness records with a ``label`` column (variant, ``" (causal)"`` when causal)."""
    if df.empty or "mode" not in df:
        df = pd.DataFrame(columns=["mode", "variant", "seq_len", "lipschitz"])
    rows = df[(df["mode"] == "smoothness") & (df.get("status", "ok") == "ok")].copy()
    if "kind" in rows:
        rows = rows[rows["kind"] == "bench"]
    if device is not None and "device_name" in rows:
        rows = rows[rows["device_name"] == device]
    rows = rows[rows["lipschitz"].notna() & (rows["lipschitz"] > 0)] if "lipschitz" in rows else rows.iloc[0:0]
    for col, default in (("pattern", "random"), ("causal", False), ("sweep", False), ("radius", math.nan)):
        if col not in rows:
            rows[col] = default
    rows["pattern"] = rows["pattern"].fillna("random")
    rows["causal"] = _flag(rows["causal"])
    rows["sweep"] = _flag(rows["sweep"])
    rows["label"] = rows["variant"] + np.where(rows["causal"], " (causal)", "")
    return rows


def _keys(rows: pd.DataFrame, device: str | None) -> list[str]:
    multi = device is None and "device_name" in rows and rows["device_name"].nunique() > 1
    return (["device_name"] if multi else []) + ["label"]


def _fit(group: pd.DataFrame) -> float:
    per_n = group.groupby("seq_len")["lipschitz"].mean()
    alpha = growth_exponent(list(per_n.index), list(per_n.values))
    return math.nan if alpha is None else alpha


def _pattern_order(patterns) -> list[str]:
    known = [p for p in PATTERNS if p in set(patterns)]
    return known + sorted(set(patterns) - set(known))


def exponent_table(df: pd.DataFrame, device: str | None = None) -> pd.DataFrame:
    """Variant (rows) x pattern (columns): the least-squares slope of log L against log n over
    every measured length, at each pattern's main setting (sweep records left out). NaN where a
    variant has fewer than two lengths of a pattern."""
    rows = smoothness_rows(df, device)
    rows = rows[~rows["sweep"]]
    if rows.empty:
        return pd.DataFrame()
    keys = _keys(rows, device)
    table = rows.groupby(keys + ["pattern"]).apply(_fit, include_groups=False).unstack("pattern")
    table = table[_pattern_order(table.columns)]
    table.columns.name = "pattern"
    table.index.names = [("variant" if k == "label" else k) for k in keys]
    return table


def radius_table(df: pd.DataFrame, device: str | None = None) -> pd.DataFrame:
    """Long table ``(variant, pattern, radius, alpha, n_min, n_max)`` over every synthetic
    pattern measured at more than one radius (the radius sweep, main radius included)."""
    rows = smoothness_rows(df, device)
    rows = rows[rows["radius"].notna()] if "radius" in rows else rows.iloc[0:0]
    if rows.empty:
        return pd.DataFrame(columns=["variant", "pattern", "radius", "alpha", "n_min", "n_max"])
    keys = _keys(rows, device)
    swept = rows.groupby(keys + ["pattern"])["radius"].transform("nunique") > 1
    rows = rows[swept]
    out = []
    for key, g in rows.groupby(keys + ["pattern", "radius"]):
        *head, pattern, radius = key
        out.append({**dict(zip(["variant" if k == "label" else k for k in keys], head)), "pattern": pattern,
                    "radius": float(radius), "alpha": _fit(g), "n_min": int(g["seq_len"].min()),
                    "n_max": int(g["seq_len"].max())})
    return pd.DataFrame(out)


def _plt():
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt  # noqa: PLC0415
    import seaborn as sns  # noqa: PLC0415

    sns.set_theme(style="whitegrid", context="notebook")
    return plt, sns


def _palette(labels: Sequence[str], palette: Mapping[str, Any] | None):
    import seaborn as sns  # noqa: PLC0415

    palette = dict(palette or {})
    missing = [lab for lab in labels if lab not in palette and lab.split(" (")[0] not in palette]
    colors = iter(sns.color_palette("tab10" if len(missing) <= 10 else "tab20", max(1, len(missing))))
    return {lab: palette.get(lab, palette.get(lab.split(" (")[0])) if lab not in missing else next(colors)
            for lab in labels}


def _coinciding(curves: pd.DataFrame, rtol: float = 0.01, atol: float = 0.0, first: str = "full") -> dict[str, str]:
    """``{label: earlier label}`` for columns of ``curves`` (index: x) equal to an earlier column
    within ``rtol``/``atol`` at every x both have (their lines lie on top of each other);
    ``first`` is compared first (the line the others are said to lie on)."""
    same: dict[str, str] = {}
    cols = sorted(curves.columns, key=lambda c: c != first)
    for i, a in enumerate(cols):
        for b in cols[:i]:
            if b in same:
                continue
            both = curves[[a, b]].dropna()
            if len(both) and np.allclose(both[a], both[b], rtol=rtol, atol=atol):
                same[a] = b
                break
    return same


def _fmt_alpha(alpha: float) -> str:
    return "alpha n/a" if not np.isfinite(alpha) else f"\N{GREEK SMALL LETTER ALPHA}={alpha:.2f}"


def pattern_figure(df: pd.DataFrame, pattern: str, *, device: str | None = None,
                   palette: Mapping[str, Any] | None = None, bound_variant: str = "full", title: str | None = None):
    """L vs n (log-log) at ``pattern``'s main setting: one line per variant (legend: its fitted
    exponent), reference slopes n^(1/2) and n^(1/4), and the softmax bound at the inputs of
    ``bound_variant`` (dashed). Returns the matplotlib Figure (None if there is nothing to draw)."""
    rows = smoothness_rows(df, device)
    rows = rows[(rows["pattern"] == pattern) & ~rows["sweep"]]
    if rows.empty:
        return None
    plt, sns = _plt()
    med = rows.groupby(["label", "seq_len"], as_index=False)[["lipschitz"]].mean()
    labels = sorted(med["label"].unique(), key=lambda s: (s.split(" (")[0], s))
    legend = {lab: f"{lab} ({_fmt_alpha(_fit(rows[rows['label'] == lab]))})" for lab in labels}
    curves = med.pivot(index="seq_len", columns="label", values="lipschitz")
    for lab, other in _coinciding(curves, first=bound_variant).items():
        legend[lab] = legend[lab][:-1] + f", on top of {other})"
    med["legend"] = med["label"].map(legend)
    colors = _palette(labels, palette)
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    sns.lineplot(data=med, x="seq_len", y="lipschitz", hue="legend", hue_order=[legend[lab] for lab in labels],
                 palette={legend[lab]: colors[lab] for lab in labels}, marker="o", ax=ax, errorbar=None)
    ns = np.array(sorted(med["seq_len"].unique()), dtype=float)
    bound = rows[(rows["label"] == bound_variant)]
    if "softmax_bound" in bound and bound["softmax_bound"].notna().any():
        b = bound.groupby("seq_len")["softmax_bound"].mean()
        ax.plot(b.index, b.values, "k--", lw=1.2,
                label=f"softmax bound at {bound_variant}'s inputs ({_fmt_alpha(growth_exponent(list(b.index), list(b.values)) or math.nan)})")
    if len(ns) > 1:   # reference slopes through the geometric middle of the data
        y0 = float(np.exp(np.log(med["lipschitz"]).median()))
        n0 = float(np.exp(np.log(ns).mean()))
        for k, style in ((SQRT_N, ":"), (QUARTER, "-.")):
            ax.plot(ns, y0 * (ns / n0) ** k, color="0.45", ls=style, lw=1, label=f"slope n^{k:g}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length n")
    ax.set_ylabel("local Lipschitz constant L")
    setting = _setting(rows)
    ax.set_title(title or f"smoothness, pattern {pattern}{setting}", fontsize="medium")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", title="variant (L ~ n^alpha)")
    fig.tight_layout()
    return fig


def _setting(rows: pd.DataFrame) -> str:
    parts = []
    if "radius" in rows and rows["radius"].notna().any():
        parts.append("R=" + "/".join(f"{r:g}" for r in sorted(rows["radius"].dropna().unique())))
    if "data_task" in rows and rows["data_task"].notna().any():
        parts.append("task " + "/".join(sorted(rows["data_task"].dropna().unique())))
    if "layer" in rows and rows["layer"].notna().any():
        parts.append("layer " + "/".join(str(int(v)) for v in sorted(rows["layer"].dropna().unique())))
    return f" ({', '.join(parts)})" if parts else ""


def radius_figure(df: pd.DataFrame, *, device: str | None = None, palette: Mapping[str, Any] | None = None):
    """Fitted exponent vs radius R (log x), one panel per swept pattern, one line per variant;
    reference lines at 1/2 (sqrt n), 1/4 and 0. Returns the Figure (None without a sweep)."""
    table = radius_table(df, device)
    if table.empty:
        return None
    plt, sns = _plt()
    patterns = _pattern_order(table["pattern"].unique())
    labels = sorted(table["variant"].unique(), key=lambda s: (s.split(" (")[0], s))
    colors = _palette(labels, palette)
    fig, axes = plt.subplots(1, len(patterns), figsize=(5.0 * len(patterns), 6.0), sharey=True, squeeze=False)
    for ax, pattern in zip(axes[0], patterns):
        g = table[table["pattern"] == pattern].copy()
        same = _coinciding(g.pivot(index="radius", columns="variant", values="alpha"), rtol=0.0, atol=0.01)
        g["variant"] = [f"{v} (= {same[v]})" if v in same else v for v in g["variant"]]
        order = [f"{v} (= {same[v]})" if v in same else v for v in labels if v in set(table["variant"])]
        shown = [v for v in order if v in set(g["variant"])]
        sns.lineplot(data=g, x="radius", y="alpha", hue="variant", hue_order=shown,
                     palette={v: colors[v.split(" (= ")[0]] for v in shown}, marker="o", ax=ax, errorbar=None)
        ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.18), fontsize="x-small", ncol=2, title=None)
        for k, style in ((SQRT_N, ":"), (QUARTER, "-."), (0.0, "-")):
            ax.axhline(k, color="0.45", ls=style, lw=1)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("radius R")
        ax.set_title(f"pattern {pattern} (n={int(g['n_min'].min())}..{int(g['n_max'].max())})", fontsize="medium")
    axes[0][0].set_ylabel("fitted exponent alpha (L ~ n^alpha)")
    fig.tight_layout()
    return fig
