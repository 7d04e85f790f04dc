"""Smoothness tables: the fitted exponent per variant and input pattern, its growth class, the largest
L / softmax bound, and the exponent against the input radius R.

:func:`exponent_table` (floats) and :func:`exponent_display` (display strings, with the growth class
and the bound ratio) at each pattern's main setting; :func:`radius_table` over the radius sweep.
O(rows) per table.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..labels import is_exact
from .rows import (alpha_text, label_order, main_rows, median_curve, num_text, ok_rows, one_device, pattern_order,
                   slope, smoothness_rows)

#: growth classes of a fitted exponent: (lower edge, name); the first edge that alpha reaches names it
GROWTH = ((0.6, "faster than √N"), (0.4, "√N"), (0.15, "slower than √N"), (-0.15, "flat"),
          (-math.inf, "decreasing"))


def exponent_table(df: pd.DataFrame, device: str | None = None) -> pd.DataFrame:
    """Variant label (rows) x pattern (columns): alpha at each pattern's main setting (float; NaN where
    a variant has fewer than two lengths of a pattern). ``device`` is required when ``df`` holds
    smoothness records of several devices. Empty frame without records."""
    rows = main_rows(one_device(smoothness_rows(df), device))
    if rows.empty:
        return pd.DataFrame()
    table = rows.groupby(["label", "pattern"]).apply(lambda g: slope(median_curve(g)), include_groups=False).unstack()
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
    out = table.map(alpha_text)
    out.columns = [f"{p} α" for p in table.columns]
    if "adversarial" in table:
        out["worst-case growth (adversarial)"] = table["adversarial"].map(growth_class)
    rows = ok_rows(one_device(smoothness_rows(df), device))
    exact = dict(zip(rows["label"], is_exact(rows)))
    worst = rows.groupby("label")["bound_ratio"].max()

    def ratio(label: str) -> str:
        r = worst.get(label, math.nan)
        if not np.isfinite(r):
            return "—"
        return num_text(r) if exact.get(label) else f"({num_text(r)})"

    if worst.notna().any():
        out[RATIO_COLUMN] = [ratio(lab) for lab in out.index]
    return out


def radius_table(df: pd.DataFrame, device: str | None = None) -> pd.DataFrame:
    """Long table ``(variant, pattern, radius, alpha, score_gap, n_min, n_max)`` for every pattern measured
    at more than one radius (the sweep and the main radius); ``score_gap`` is the adversarial input's
    (NaN for other patterns)."""
    cols = ["variant", "pattern", "radius", "alpha", "score_gap", "n_min", "n_max"]
    rows = ok_rows(one_device(smoothness_rows(df), device))
    rows = rows[rows["radius"].notna()]
    rows = rows[rows.groupby(["label", "pattern"])["radius"].transform("nunique") > 1]
    out = [{"variant": lab, "pattern": p, "radius": float(r), "alpha": slope(median_curve(g)),
            "score_gap": g["score_gap"].median(), "n_min": int(g["seq_len"].min()), "n_max": int(g["seq_len"].max())}
           for (lab, p, r), g in rows.groupby(["label", "pattern", "radius"])]
    return pd.DataFrame(out, columns=cols)
