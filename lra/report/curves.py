"""Training curves (issue 33): validation accuracy and loss against step, one panel column per task, a line
per run in its variant's colour; runs that did not learn (their own binomial verdict) dashed, and the
majority-class rate as a dotted line where the runs recorded it.

The points come from each train record's ``case.history`` (``{step, val_accuracy, val_loss, ...}`` per
evaluation), or from the ``curves.csv`` beside the record (``case.curves``) when the history is missing.
The history holds the validations during training; the run's last one (of the final weights, after its
last step: ``metrics.val_accuracy``/``val_loss`` at ``metrics.steps``) ends each line.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .labels import TASK_NAMES, length_label, slug, task_order, variant_order
from .palette import styles
from .plotting import FigureDir, FigureResult, legend_below, plain_axis, plt_sns


def _history(row) -> list[dict]:
    hist = row.get("history")
    if isinstance(hist, str) and hist.startswith("["):
        try:
            hist = json.loads(hist)
        except json.JSONDecodeError:
            hist = None
    if isinstance(hist, list) and hist:
        return [h for h in hist if isinstance(h, dict)]
    curves, path = row.get("curves"), row.get("_path")
    if isinstance(curves, str) and isinstance(path, str):
        csv = Path(path).parent / curves
        if csv.is_file():
            return pd.read_csv(csv).to_dict("records")
    return []


def _number(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def _with_final(hist: list[dict], row) -> list[dict]:
    """``hist`` ending with the run's final validation (after ``metrics.steps``) when it is not there yet."""
    steps, acc, loss = _number(row.get("steps")), _number(row.get("val_accuracy")), _number(row.get("val_loss"))
    last = max((_number(h.get("step")) or 0.0 for h in hist), default=0.0)
    if steps is None or steps <= last or (acc is None and loss is None):
        return hist
    return [*hist, {"step": steps, "val_accuracy": acc, "val_loss": loss}]


def curve_points(df: pd.DataFrame, device: str) -> pd.DataFrame:
    """Long frame of the device's training curves: run, task, seq_len, variant, learned, majority_rate,
    step, val_accuracy, val_loss (one row per evaluation that has either)."""
    cols = ["run", "task", "seq_len", "variant", "learned", "majority_rate", "step", "val_accuracy", "val_loss"]
    tr = df[(df["kind"] == "train") & (df["device_name"] == device)]
    out = []
    for i, (_, r) in enumerate(tr.iterrows()):
        lv = r.get("learned")
        learned = None if lv is None or lv is pd.NA or (isinstance(lv, float) and np.isnan(lv)) else bool(lv)
        for h in _with_final(_history(r), r):
            acc, loss = h.get("val_accuracy"), h.get("val_loss")
            if h.get("step") is None or (acc is None and loss is None):
                continue
            out.append(dict(run=i, task=r["task"], seq_len=r["seq_len"], variant=r["variant"],
                            learned=learned, majority_rate=r.get("majority_rate"), step=float(h["step"]),
                            val_accuracy=np.nan if acc is None else float(acc),
                            val_loss=np.nan if loss is None else float(loss)))
    return pd.DataFrame(out, columns=cols)


def curves_figure(df: pd.DataFrame, device: str, out: FigureDir) -> FigureResult:
    """Validation accuracy (top row) and loss (bottom row) vs step, a column per (task, N)."""
    pts = curve_points(df, device)
    if pts.empty:
        return None, "no training run on this device recorded its history"
    plt, _ = plt_sns()
    panels = sorted({(t, n) for t, n in zip(pts["task"], pts["seq_len"])},
                    key=lambda k: (task_order(pts["task"].dropna()).index(k[0]) if k[0] in set(pts["task"]) else 99,
                                   k[1] if np.isfinite(k[1]) else 0))
    ncol = len(panels)
    fig, axes = plt.subplots(2, ncol, figsize=(3.2 * ncol + 0.6, 4.6), squeeze=False, sharex="col")
    order = variant_order(pts["variant"].unique())
    style = styles(order)
    for j, (task, n) in enumerate(panels):
        here = pts[(pts["task"] == task) & (pts["seq_len"] == n)]
        for _, g in here.groupby("run"):
            g = g.sort_values("step")
            s = style[g["variant"].iloc[0]]
            dashed = g["learned"].iloc[0] is False
            for i, col in enumerate(("val_accuracy", "val_loss")):
                v = g[g[col].notna()]
                axes[i][j].plot(v["step"], v[col] * (100 if col == "val_accuracy" else 1), color=s.color,
                                marker=s.marker, ms=3, lw=1.1, alpha=0.85, ls="--" if dashed else "-",
                                markevery=max(1, len(v) // 6))
        maj = here["majority_rate"].dropna()
        if len(maj):
            axes[0][j].axhline(100 * float(maj.median()), color="0.4", lw=0.8, ls=":")
        name = TASK_NAMES.get(task, task) + (f", N = {length_label(n)}" if np.isfinite(n) else "")
        axes[0][j].set_title(name, fontsize="small")
        axes[1][j].set_xlabel("step")
        for i in (0, 1):
            plain_axis(axes[i][j], "y")
            plain_axis(axes[i][j], "x")
    axes[0][0].set_ylabel("val. accuracy (%)")
    axes[1][0].set_ylabel("val. loss")
    from matplotlib.lines import Line2D

    extra = [(Line2D([], [], color="0.3", lw=1.1, ls="--"), "did not learn"),
             (Line2D([], [], color="0.4", lw=0.8, ls=":"), "majority class")]
    legend_below(fig, order, style, extra=extra)
    fig.suptitle(f"{device}: training curves (validation, one line per run)", fontsize="medium")
    fig.tight_layout()
    return out.save(fig, f"curves_{slug(device)}"), ""
