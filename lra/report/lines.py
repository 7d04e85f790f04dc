"""Line figures against sequence length: time or memory per variant with fitted exponents, approximation error."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .fits import fit_exponent
from .labels import setting, variant_order
from .plotting import (FigureDir, FigureResult, coinciding, exponent_label, legend_outside, length_axis, log_y,
                       overlap_note, plt_sns, ylabel)


def scaling_figure(rows: pd.DataFrame, value: str, y_label: str, title: str, colors: dict[str, Any],
                   out: FigureDir, stem: str, fitted: str = "fit over the upper half of N") -> FigureResult:
    """Log-log lines of ``value`` against N per variant, the fitted exponent in the legend; failed
    lengths (OOM, ...) marked with an x at the top edge in the variant's colour."""
    plt, sns = plt_sns()
    ok = rows[(rows["status"] == "ok") & rows[value].notna() & rows["seq_len"].notna() & (rows[value] > 0)]
    if ok.empty:
        return None, "no measurement with status ok"
    med = ok.groupby(["variant", "seq_len"], as_index=False)[value].median()
    order = variant_order(med["variant"].unique())
    same = coinciding(med, value)
    labels = {}
    for v, g in ok.groupby("variant"):
        k = fit_exponent(g["seq_len"], g[value])
        labels[v] = f"{v} ({exponent_label(k)})" if np.isfinite(k) else f"{v}"
        if v in same:
            labels[v] += f", on top of {same[v]}"
    med["label"] = med["variant"].map(labels)
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    sns.lineplot(data=med, x="seq_len", y=value, hue="label", style="label", markers=True, dashes=False,
                 hue_order=[labels[v] for v in order], style_order=[labels[v] for v in order],
                 palette={labels[v]: colors[v] for v in order}, ax=ax, errorbar=None)
    log_y(ax)
    failed = rows[(rows["status"] != "ok") & rows["seq_len"].notna()]
    if len(failed):
        top = ax.get_ylim()
        for v, g in failed.groupby("variant"):
            ax.scatter(g["seq_len"], [top[1]] * len(g), marker="X", s=70, color=colors.get(v, "k"),
                       clip_on=False, zorder=5)
        ax.plot([], [], "kX", linestyle="none", label=f"failed ({'/'.join(sorted(failed['status'].unique()))}), "
                                                      f"marked at the top")
        ax.set_ylim(top)
    length_axis(ax, rows["seq_len"])
    ylabel(ax, y_label)
    ax.set_title(title, fontsize="medium")
    legend_outside(ax, f"variant ({fitted})")
    return out.save(fig, stem), overlap_note(same)


def exactness_figure(rows: pd.DataFrame, device: str, colors: dict[str, Any], out: FigureDir, stem: str
                     ) -> FigureResult:
    """Relative error against exact softmax attention vs length, one panel per input pattern."""
    plt, sns = plt_sns()
    ok = rows[(rows["status"] == "ok") & rows["approx_error"].notna() & rows["seq_len"].notna()].copy()
    if ok.empty:
        return None, "no exactness measurement with status ok"
    ok["pattern"] = ok["pattern"].astype(object).where(ok["pattern"].notna(), "—")
    med = ok.groupby(["variant", "pattern", "seq_len"], as_index=False)["approx_error"].median()
    order = variant_order(med["variant"].unique())
    same = coinciding(med, "approx_error", keys=("pattern", "seq_len"))
    labels = {v: v + (f", on top of {same[v]}" if v in same else "") for v in order}
    med["label"] = med["variant"].map(labels)
    patterns = sorted(med["pattern"].unique(), key=str)
    fig, axes = plt.subplots(1, len(patterns), figsize=(3.8 * len(patterns) + 1.5, 4.5), sharey=True,
                             squeeze=False)
    handles: dict[str, Any] = {}
    for ax, pat in zip(axes[0], patterns):
        g = med[med["pattern"] == pat]
        present = [labels[v] for v in order if v in set(g["variant"])]
        sns.lineplot(data=g, x="seq_len", y="approx_error", hue="label", style="label", markers=True, dashes=False,
                     hue_order=present, style_order=present, palette={labels[v]: colors[v] for v in order},
                     ax=ax, errorbar=None)
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
        if ax.get_legend() is not None:
            ax.get_legend().remove()
        if (med["approx_error"] > 0).all():
            log_y(ax)
        length_axis(ax, g["seq_len"])
        ax.set_title(f"inputs: {pat}", fontsize="medium")
        ax.set_ylabel("")
        ax.set_xlabel("")
    ylabel(axes[0][0], "relative error vs exact softmax")
    order_labels = [labels[v] for v in order if labels[v] in handles]
    legend_outside(axes[0][-1], "variant", [handles[lab] for lab in order_labels], order_labels)
    shape = setting(ok)
    fig.suptitle(f"{device}: approximation error vs length\n"
                 r"relative error $\|out - exact\|_F \,/\, \|exact\|_F$" + (f", {shape}" if shape else ""),
                 fontsize="medium")
    fig.supxlabel("sequence length N (tokens, log scale)", fontsize="medium")
    fig.tight_layout()
    return out.save(fig, stem), overlap_note(same)
