"""Line figures against sequence length: time or memory per variant with fitted exponents, approximation error.

Every line is labelled directly at its right end (variant, fitted exponent ± its standard error, or
"too few lengths"); lengths where a variant failed are crosses on the top edge; the y axis is bounded
by the data (:func:`lra.report.plotting.robust_limits`), so one outlying variant is drawn off the
scale with a note instead of squashing the rest.
"""
from __future__ import annotations

import pandas as pd

from .fits import fit_power
from .labels import setting, variant_order
from .palette import Style, styles
from .plotting import (FigureDir, FigureResult, coinciding, direct_labels, legend_below, length_axis, line, log_axis,
                       mark_off_scale, overlap_note, plt_sns, robust_limits, ylabel)


def _bounded_log_y(ax, values: pd.Series, points: pd.DataFrame, style: dict[str, Style], unit: str = ""
                   ) -> list[str]:
    """Log y limits from the data without outliers; the outliers marked on the edge. Returns their notes."""
    lo, hi = robust_limits(values, log=True)
    ax.set_ylim(lo, hi)
    log_axis(ax, "y")
    return mark_off_scale(ax, points, (lo, hi), style, unit)


def ok_medians(rows: pd.DataFrame, value: str) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The records with status ok and a positive ``value``, and the median ``value`` per (variant, N)
    over them (None: there are none)."""
    ok = rows[(rows["status"] == "ok") & rows[value].notna() & rows["seq_len"].notna() & (rows[value] > 0)]
    return ok, None if ok.empty else ok.groupby(["variant", "seq_len"], as_index=False)[value].median()


def scaling_figure(rows: pd.DataFrame, value: str, y_label: str, title: str, colors: dict[str, Style] | None,
                   out: FigureDir, stem: str, fitted: str = "fitted over the upper lengths, ≥ 3") -> FigureResult:
    """Log-log lines of ``value`` against N per variant, each labelled with its fitted exponent; failed
    lengths (OOM, skipped, ...) marked with a cross at the top edge in the variant's colour."""
    plt, _ = plt_sns()
    ok, med = ok_medians(rows, value)
    if med is None:
        return None, "no measurement with status ok"
    order = variant_order(med["variant"].unique())
    style = styles(set(order) | set(rows["variant"]))
    same = coinciding(med, value)
    fig, ax = plt.subplots(figsize=(6.2, 3.7))
    ends = []
    for v in order:
        g = med[med["variant"] == v].sort_values("seq_len")
        line(ax, g, "seq_len", value, style[v], zorder=3)
        fit = fit_power(ok[ok["variant"] == v]["seq_len"], ok[ok["variant"] == v][value])
        label = f"{v}  {fit.text() if fit.ok else 'k: ' + fit.text()}"
        if v in same:
            label += f" (= {same[v]})"
        ends.append((v, float(g["seq_len"].iloc[-1]), float(g[value].iloc[-1]), label))
    notes = _bounded_log_y(ax, med[value], med.rename(columns={"seq_len": "x", value: "y"}), style)
    failed = rows[(rows["status"] != "ok") & rows["seq_len"].notna()]
    top = ax.get_ylim()[1]
    for v, g in failed.groupby("variant"):
        ax.scatter(g["seq_len"], [top] * len(g), marker="x", s=40, color=style[v].color, clip_on=False, zorder=5,
                   linewidths=1.6)
    length_axis(ax, rows["seq_len"])
    ylabel(ax, y_label)
    ax.set_title(title, fontsize="small")
    fig.tight_layout()
    direct_labels(ax, ends, style)
    parts = [f"Labels: variant and k of {y_label.split(' (')[0]} ∝ N^k ± 1 s.e. ({fitted})."]
    if len(failed):
        parts.append(f"× on the top edge: failed ({'/'.join(sorted(failed['status'].unique()))}).")
    parts += [n + "." for n in notes]
    parts.append(overlap_note(same))
    return out.save(fig, stem), " ".join(p for p in parts if p)


def exactness_figure(rows: pd.DataFrame, device: str, colors: dict[str, Style] | None, out: FigureDir, stem: str
                     ) -> FigureResult:
    """Relative error against exact softmax attention vs length, one panel per input pattern; exact
    variants (error at rounding level) are drawn off the scale with a note, so that the approximations
    are told apart."""
    plt, _ = plt_sns()
    ok = rows[(rows["status"] == "ok") & rows["approx_error"].notna() & rows["seq_len"].notna()].copy()
    if ok.empty:
        return None, "no exactness measurement with status ok"
    ok["pattern"] = ok["pattern"].astype(object).where(ok["pattern"].notna(), "—")
    med = ok.groupby(["variant", "pattern", "seq_len"], as_index=False)["approx_error"].median()
    order = variant_order(med["variant"].unique())
    style = styles(order)
    same = coinciding(med, "approx_error", keys=("pattern", "seq_len"))
    patterns = sorted(med["pattern"].unique(), key=str)
    fig, axes = plt.subplots(1, len(patterns), figsize=(3.6 * len(patterns) + 0.6, 3.4), sharey=True, squeeze=False)
    positive = med[med["approx_error"] > 0]
    lo, hi = robust_limits(positive["approx_error"], log=True)
    notes: list[str] = []
    for ax, pat in zip(axes[0], patterns):
        g = med[med["pattern"] == pat]
        for v in order:
            line(ax, g[g["variant"] == v].sort_values("seq_len"), "seq_len", "approx_error", style[v], zorder=3)
        ax.set_ylim(lo, hi)
        log_axis(ax, "y")
        pts = g[g["approx_error"] > 0].rename(columns={"seq_len": "x", "approx_error": "y"})
        notes += [f"{pat}: {n}" for n in mark_off_scale(ax, pts, (lo, hi), style)]
        length_axis(ax, g["seq_len"])
        ax.set_title(f"inputs: {pat}", fontsize="small")
        ax.set_xlabel("N (tokens, log scale)", fontsize="small")
    ylabel(axes[0][0], "relative error vs exact softmax")
    legend_below(fig, order, style)
    shape = setting(ok)
    fig.suptitle(f"{device}: approximation error vs length" + (f" ({shape})" if shape else ""), fontsize="medium")
    fig.tight_layout()
    note = " ".join(x for x in ["; ".join(notes) + "." if notes else "", overlap_note(same)] if x)
    return out.save(fig, stem), note


def values_figure(rows: pd.DataFrame, value: str, y_label: str, title: str, out: FigureDir, stem: str) -> FigureResult:
    """Plain log-log lines of ``value`` against N per variant (decode time per token, ...), labelled directly."""
    plt, _ = plt_sns()
    _, med = ok_medians(rows, value)
    if med is None:
        return None, "no measurement with status ok"
    order = variant_order(med["variant"].unique())
    style = styles(order)
    fig, ax = plt.subplots(figsize=(6.2, 3.7))
    ends = []
    for v in order:
        g = med[med["variant"] == v].sort_values("seq_len")
        line(ax, g, "seq_len", value, style[v], zorder=3)
        ends.append((v, float(g["seq_len"].iloc[-1]), float(g[value].iloc[-1]), v))
    notes = _bounded_log_y(ax, med[value], med.rename(columns={"seq_len": "x", value: "y"}), style)
    length_axis(ax, med["seq_len"])
    ylabel(ax, y_label)
    ax.set_title(title, fontsize="small")
    fig.tight_layout()
    direct_labels(ax, ends, style)
    return out.save(fig, stem), " ".join(n + "." for n in notes)
