"""The one-figure summary (the LRA paper's Figure 3 from our records): per device, test accuracy against
time per training step, bubble area proportional to peak memory, one panel per task and length trained."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from .labels import TASK_NAMES, length_label, memory_note, slug, task_order, variant_order
from .paper import PAPER_LENGTHS
from .palette import styles
from .plotting import FigureDir, FigureResult, legend_below, log_axis, plain_axis, plt_sns


def summary_points(df: pd.DataFrame, device: str) -> tuple[pd.DataFrame, str]:
    """The points of the summary figure of ``device`` and, when there are none worth drawing, why.

    One row per (task, seq_len, recipe, variant) from the device's ok train runs (self-pretrained runs
    under recipe "<recipe> + spt", so protocols get separate panels) with both an accuracy
    and a training speed: ``accuracy`` (%, mean over seeds), ``ms_per_step`` (from the median steps/s),
    ``peak_mem_mb`` (median, NaN on CPU). Only panels with two or more variants are kept: one point
    compares nothing. The reason is "" when points are returned.
    """
    cols = ["task", "seq_len", "recipe", "variant", "accuracy", "ms_per_step", "peak_mem_mb"]
    tr = df[(df["device_name"] == device) & (df["kind"] == "train")]
    if tr.empty:
        return pd.DataFrame(columns=cols), "no training runs on this device, so no accuracy"
    ok = tr[(tr["status"] == "ok") & tr["accuracy"].notna() & tr["steps_per_s"].notna() & tr["seq_len"].notna()]
    if ok.empty:
        return pd.DataFrame(columns=cols), "no training run on this device finished ok with an accuracy and a speed"
    recipe = ok["recipe"].fillna("lra")   # normalize() gives every train row its protocol
    ok = ok.assign(recipe=recipe.where(ok["protocol"] == "scratch", recipe + " + spt"))
    pts = ok.groupby(["task", "seq_len", "recipe", "variant"], as_index=False).agg(
        accuracy=("accuracy", "mean"), steps_per_s=("steps_per_s", "median"), peak_mem_mb=("peak_mem_mb", "median"))
    pts["accuracy"] *= 100
    pts["ms_per_step"] = 1e3 / pts["steps_per_s"]
    size = pts.groupby(["task", "seq_len", "recipe"])["variant"].transform("nunique")
    if (size < 2).all():
        only = ", ".join(f"{r.variant} on {TASK_NAMES.get(r.task, r.task)}" for r in pts.itertuples())
        return pd.DataFrame(columns=cols), f"only one variant per task has an accuracy and a speed ({only}): " \
                                           f"one point compares nothing"
    return pts[size >= 2][cols].reset_index(drop=True), ""


def _panel_title(task: str, n: float, recipe: str, recipes: int) -> str:
    name = TASK_NAMES.get(task, task)
    paper = PAPER_LENGTHS.get(task)
    title = f"{name}, N = {length_label(n)}"
    if paper is not None and int(n) != paper:
        title += f" (not LRA's {length_label(paper)})"
    return title + (f", recipe {recipe}" if recipes > 1 or recipe != "lra" else "")


def summary_figure(df: pd.DataFrame, device: str, colors: Any, out: FigureDir) -> FigureResult:
    """Draw the summary of ``device`` (see :func:`summary_points`); ``(None, why)`` when not drawn.
    Each variant in its colour and marker; a hollow marker where its runs did not learn the task."""
    pts, why = summary_points(df, device)
    if pts.empty:
        return None, why
    plt, _ = plt_sns()
    style = styles(pts["variant"].unique())
    learned = _learned(df, device)
    panels = sorted(pts.groupby(["task", "seq_len", "recipe"]).groups,
                    key=lambda k: (task_order(pts["task"]).index(k[0]), k[1], str(k[2])))
    ncol = min(3, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.9 * ncol + 0.6, 3.3 * nrow), squeeze=False)
    has_mem = pts["peak_mem_mb"].notna().any()
    mem_max = pts["peak_mem_mb"].max() if has_mem else 1.0
    recipes = pts["recipe"].nunique()
    for ax, key in zip(axes.flat, panels):
        g = pts[(pts["task"] == key[0]) & (pts["seq_len"] == key[1]) & (pts["recipe"] == key[2])]
        g = g.set_index("variant").loc[variant_order(g["variant"])].reset_index()
        mem = g["peak_mem_mb"].fillna(g["peak_mem_mb"].median() if has_mem else mem_max)
        area = (1400.0 * mem / mem_max).clip(lower=25) if has_mem else pd.Series(250.0, index=g.index)
        for r, a in zip(g.itertuples(), area):
            s = style[r.variant]
            hollow = learned.get((key[0], key[1], r.variant)) is False
            ax.scatter([r.ms_per_step], [r.accuracy], s=a, marker=s.marker, alpha=0.75, linewidths=1.2,
                       facecolors="none" if hollow else s.color, edgecolors=s.color if hollow else "white")
        for r, a in zip(g.itertuples(), area):
            label = r.variant
            if np.isfinite(r.peak_mem_mb):
                label += f"\n{r.peak_mem_mb / 1024:.1f} GiB" if r.peak_mem_mb >= 1024 else f"\n{r.peak_mem_mb:,.0f} MiB"
            elif has_mem:
                label += "\nmemory not recorded"
            ax.annotate(label, (r.ms_per_step, r.accuracy), xytext=(0, math.sqrt(a) / 2 + 3),
                        textcoords="offset points", ha="center", va="bottom", fontsize="x-small")
        x = g["ms_per_step"]
        if x.max() / x.min() > 10:
            ax.set_xlim(x.min() / 1.5, x.max() * 1.5)
            log_axis(ax, "x")
            ax.set_xlabel("time per training step (ms, log scale)")
        else:  # from zero: a 1% difference must not fill the panel
            ax.set_xlim(0, x.max() * 1.3)
            plain_axis(ax, "x")
            ax.set_xlabel("time per training step (ms)")
        plain_axis(ax, "y")
        ax.margins(y=0.3)
        lo, hi = ax.get_ylim()
        if hi - lo < 5:  # at least 5 accuracy points tall, for the same reason
            mid = (hi + lo) / 2
            ax.set_ylim(mid - 2.5, mid + 2.5)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(_panel_title(*key, recipes), fontsize="medium")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    from matplotlib.lines import Line2D

    extra = [(Line2D([], [], marker="o", ls="", mfc="none", mec="0.3", ms=7), "did not learn")] \
        if any(v is False for v in learned.values()) else []
    legend_below(fig, variant_order(pts["variant"]), style, extra=extra)  # labels can overlap; colours cannot
    size = "marker area proportional to peak memory" if has_mem else \
        f"equal markers: {memory_note(df[df['device_name'] == device]) or 'peak memory not recorded'}"
    fig.suptitle(f"{device}: test accuracy vs time per training step (LRA Figure 3 layout); {size}",
                 fontsize="medium")
    fig.tight_layout()
    return out.save(fig, f"summary_{slug(device)}"), ""


def _learned(df: pd.DataFrame, device: str) -> dict[tuple, bool]:
    """(task, seq_len, variant) -> False where every run with a verdict did not learn, True where one did."""
    tr = df[(df["device_name"] == device) & (df["kind"] == "train") & df["learned"].notna()]
    return {k: bool(g["learned"].astype(bool).any()) for k, g in tr.groupby(["task", "seq_len", "variant"])}
