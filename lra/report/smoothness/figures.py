"""Smoothness figures: L against N per input pattern (log-log, with the softmax bound and reference
slopes), and the fitted exponent against the input radius R.

Each figure function returns ``(path or None, note)`` (:data:`lra.report.plotting.FigureResult`);
:func:`smoothness_figures` lists them with their captions for :mod:`lra.report.figures`.
"""
from __future__ import annotations

import textwrap
from typing import Any

import numpy as np
import pandas as pd

from ..labels import length_label, slug
from ..palette import styles
from ..plotting import (FigureDir, FigureResult, coinciding, exponent_label, legend_outside, length_axis, log_axis,
                        mark_off_scale, overlap_note, plt_sns, robust_limits, ylabel)
from .rows import (BOUND_VARIANT, COINCIDE_RTOL, PATTERN_NAMES, data_setting, label_order, main_rows, median_curve,
                   pattern_order, radius_text, slope, smoothness_rows)
from .tables import radius_table


def _draw_lines(ax, med: pd.DataFrame, x: str, y: str, colors: dict[str, Any], labels: dict[str, str],
                reference: str = BOUND_VARIANT) -> list[tuple[Any, str]]:
    """One line per label (colour of its variant; causal dashed), markers at the points; ``reference``
    drawn last, so that its colour shows where other lines coincide with it. Returns the legend's
    ``(handle, text)`` in label order."""
    order = label_order(med["label"].unique())
    style = styles({lab.split(" (")[0] for lab in order})
    for lab in sorted(order, key=lambda lab: lab == reference):
        g = med[med["label"] == lab].sort_values(x)
        s = style[lab.split(" (")[0]]
        ax.plot(g[x], g[y], marker=s.marker, ms=4.5, lw=1.5, color=s.color, markeredgecolor="white",
                markeredgewidth=0.4, ls="--" if lab.endswith("(causal)") else "-", label=labels[lab],
                zorder=3 + (lab == reference))
    by_text = dict(zip(*reversed(ax.get_legend_handles_labels())))
    return [(by_text[labels[lab]], labels[lab]) for lab in order]


def _wrap(text: str, width: int = 95) -> str:
    return "\n".join(textwrap.wrap(text, width))


def _figure_setting(main: pd.DataFrame, pattern: str) -> str:
    """The fixed facts of one pattern's figure: "R = 2, one head, d = 64" or "ListOps, layer 0, ..."."""
    if main["radius"].notna().any():
        dim = main["dim"].dropna() if "dim" in main else pd.Series(dtype=float)
        return f"R = {radius_text(main)}, one head" + (f", d = {int(dim.iloc[0])}" if len(dim) else "")
    return data_setting(main)


def pattern_figure(rows: pd.DataFrame, pattern: str, device: str, colors: dict[str, Any], out: FigureDir,
                   stem: str, reference: str = BOUND_VARIANT) -> FigureResult:
    """L vs N (log-log) at ``pattern``'s main setting: one line per variant (legend: alpha), the
    softmax bound at ``reference``'s inputs (black dashed) and the slopes N^½, N^¼ through
    ``reference``'s first point (grey)."""
    rows = smoothness_rows(rows)
    main = main_rows(rows)
    main = main[main["pattern"] == pattern]
    if main.empty:
        return None, f"no ok smoothness record of pattern {pattern}"
    plt, _ = plt_sns()
    med = main.groupby(["label", "seq_len"], as_index=False)["lipschitz"].median()
    same = coinciding(med.rename(columns={"label": "variant"}), "lipschitz", rtol=COINCIDE_RTOL)
    labels = {}
    for lab, g in main.groupby("label"):
        a = slope(median_curve(g))
        labels[lab] = f"{lab} ({exponent_label(a)})" if np.isfinite(a) else lab
        if lab in same:
            labels[lab] += f", same as {same[lab]}"
    fig, ax = plt.subplots(figsize=(7.0, 3.8))
    handles = _draw_lines(ax, med, "seq_len", "lipschitz", colors, labels, reference)
    ref = main[main["label"] == reference]
    bound = median_curve(ref, "softmax_bound") if len(ref) else pd.Series(dtype=float)
    if len(bound) > 1:
        (h,) = ax.plot(bound.index, bound.values, color="k", ls="--", lw=1.2, zorder=2)
        handles.append((h, f"softmax bound at {reference}'s inputs ({exponent_label(slope(bound))})"))
    ref_l = median_curve(ref)
    if len(ref_l) > 1:
        ns = ref_l.index.to_numpy(float)
        for k, style, name in ((0.5, ":", "1/2"), (0.25, "-.", "1/4")):
            (h,) = ax.plot(ns, ref_l.iloc[0] * (ns / ns[0]) ** k, color="0.4", ls=style, lw=1.1, zorder=2)
            handles.append((h, rf"slope $N^{{{name}}}$ from {reference}'s first point"))
    values = pd.concat([med["lipschitz"], bound]) if len(bound) else med["lipschitz"]
    limits = robust_limits(values, log=True)
    ax.set_ylim(*limits)
    log_axis(ax, "y")
    off = mark_off_scale(ax, med.assign(variant=med["label"].str.split(" (", regex=False).str[0])
                         .rename(columns={"seq_len": "x", "lipschitz": "y"}),
                         limits, styles(med["label"].str.split(" (", regex=False).str[0].unique()))
    length_axis(ax, main["seq_len"])
    ylabel(ax, "local Lipschitz constant L")
    ax.set_title(f"{device}: smoothness, {pattern} inputs ({_figure_setting(main, pattern)})\n"
                 + _wrap(PATTERN_NAMES.get(pattern, "")), fontsize="small")
    fig.legend([h for h, _ in handles], [n for _, n in handles], loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=3, frameon=False, fontsize="x-small",
               title=r"variant ($L \propto N^{\alpha}$, least squares over all N)", title_fontsize="x-small")
    fig.tight_layout()
    return out.save(fig, stem), " ".join(x for x in [overlap_note(same)] + [n + "." for n in off] if x)


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
    main_r = main_rows(rows)["radius"].dropna().unique()
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
    main = main_rows(rows)
    for p in pattern_order(main["pattern"].unique()):
        g = main[main["pattern"] == p]
        r = f", R = {radius_text(g)}" if g["radius"].notna().any() else ""
        figs.append((f"smoothness: L vs N, {p} inputs{r}", pattern_figure(rows, p, device, colors, out,
                                                                          f"smoothness_{slug(p)}_{s}")))
    if not radius_table(rows).empty:
        figs.append(("smoothness: fitted exponent vs radius R", radius_figure(rows, device, colors, out,
                                                                              f"smoothness_radius_{s}")))
    return figs
