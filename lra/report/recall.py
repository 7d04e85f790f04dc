""""Which attention recalls?": multi-query associative recall (MQAR, Arora et al. 2023) against the size of
the decoding state (the Based paper's figure), from ``task: mqar`` train records (issue 37).

A *cell* is one (length N, key-value pairs, variant, width ``d_model``); its value is the best held-out
query accuracy over the learning rates tried (Zoology keeps the best rate; the mean over seeds at each
rate first). The state is ``metrics.state_bytes``: what a decoder keeps per sequence at length N (the
KV cache for softmax variants, the window for ``local``, the feature x head-dimension state for kernel
variants); a variant without a fixed-size state has none and is listed, not drawn.

:func:`recall_cells` (numbers), :func:`recall_table` (per length, the smallest width and state that
reach :data:`TARGET`, or the best accuracy), :func:`recall_figure` (accuracy vs state, log scale, one
panel per length). O(rows).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .labels import length_label, slug, variant_order
from .palette import styles
from .plotting import FigureDir, FigureResult, legend_below, line, log_axis, plain_axis, plt_sns

#: the query accuracy that counts as "recalls" (Zoology's early-stopping bar)
TARGET = 0.99


def bytes_text(b: float) -> str:
    """1536 -> "1.5 KiB"; NaN -> "no fixed state"."""
    if not np.isfinite(b):
        return "no fixed state"
    for unit, size in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if b >= size:
            v = b / size
            return f"{v:.3g} {unit}"
    return f"{int(b)} B"


def recall_cells(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (seq_len, pairs, variant, d_model): ``accuracy`` (best lr), ``lr``, ``state_bytes``,
    ``runs``, ``status`` ("ok" or the failures), ``device_type``."""
    cols = ["seq_len", "pairs", "variant", "d_model", "accuracy", "lr", "state_bytes", "runs", "status", "device_type"]
    m = df[(df["kind"] == "train") & (df["task"] == "mqar")]
    if m.empty:
        return pd.DataFrame(columns=cols)
    acc = m["query_accuracy"].where(m["query_accuracy"].notna(), m["accuracy"])
    m = m.assign(qa=acc, pairs=m["num_kv_pairs"].fillna(-1), d=m["d_model"].fillna(-1), rate=m["lr"].fillna(-1))
    out = []
    for (n, p, v, d), g in m.groupby(["seq_len", "pairs", "variant", "d"]):
        ok = g[(g["status"] == "ok") & g["qa"].notna()]
        per_lr = ok.groupby("rate")["qa"].mean()
        best_lr = per_lr.idxmax() if len(per_lr) else np.nan
        out.append(dict(seq_len=n, pairs=p, variant=v, d_model=d, accuracy=per_lr.max() if len(per_lr) else np.nan,
                        lr=best_lr, state_bytes=g["state_bytes"].median(), runs=len(g),
                        status="ok" if len(ok) else "/".join(sorted(set(g["status"]))),
                        device_type="/".join(sorted(g["device_type"].dropna().astype(str).unique()))))
    return pd.DataFrame(out, columns=cols)


def setting_label(n: float, pairs: float) -> str:
    return f"N = {length_label(n)}" + (f", {int(pairs)} pairs" if pairs >= 0 else "")


def recall_table(cells: pd.DataFrame) -> pd.DataFrame:
    """Variant rows x one column per (N, pairs): the smallest width reaching :data:`TARGET` and its state
    ("d = 64 · 12 KiB"), else the best accuracy and where ("best 0.53 at d = 128"); the smallest state
    reaching the target in each column in bold. Sorted by the columns reached (most first), then by the
    summed state where reached."""
    if cells.empty:
        return pd.DataFrame()
    settings = sorted({(n, p) for n, p in zip(cells["seq_len"], cells["pairs"])})
    variants = variant_order(cells["variant"].unique())
    table, reached = {}, {}
    for n, p in settings:
        col = setting_label(n, p)
        here = cells[(cells["seq_len"] == n) & (cells["pairs"] == p)]
        hit = here[here["accuracy"] >= TARGET].sort_values(["d_model", "state_bytes"])
        first = hit.groupby("variant").first()
        smallest = first["state_bytes"].idxmin() if first["state_bytes"].notna().any() else None
        for v in variants:
            g = here[here["variant"] == v]
            if g.empty:
                text = "not run"
            elif v in first.index:
                r = first.loc[v]
                text = f"d = {int(r.d_model)} · {bytes_text(r.state_bytes)}"
                text = f"**{text}**" if v == smallest else text
                reached.setdefault(v, []).append(r.state_bytes if np.isfinite(r.state_bytes) else math.inf)
            elif g["accuracy"].notna().any():
                b = g.loc[g["accuracy"].idxmax()]
                text = f"best {b.accuracy:.2f} at d = {int(b.d_model)}"
            else:
                text = "/".join(sorted(set(g["status"]))) or "no result"
            table.setdefault(v, {})[col] = text
    order = sorted(variants, key=lambda v: (-len(reached.get(v, [])), sum(reached.get(v, [math.inf])), v))
    out = pd.DataFrame.from_dict({v: table[v] for v in order}, orient="index")
    out.index.name = "variant"
    return out


def recall_figure(cells: pd.DataFrame, out: FigureDir, stem: str = "recall") -> FigureResult:
    """Query accuracy against state size (log x), one panel per (N, pairs), a line per variant through its
    widths; variants without a fixed-size state are named in the note (not drawn)."""
    ok = cells[(cells["status"] == "ok") & cells["accuracy"].notna()]
    drawn = ok[np.isfinite(ok["state_bytes"]) & (ok["state_bytes"] > 0)]
    if drawn.empty:
        return None, "no ok MQAR run with a state size"
    plt, _ = plt_sns()
    settings = sorted({(n, p) for n, p in zip(drawn["seq_len"], drawn["pairs"])})
    ncol = min(4, len(settings))
    nrow = math.ceil(len(settings) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.3 * ncol + 0.6, 2.9 * nrow), squeeze=False, sharey=True)
    order = variant_order(drawn["variant"].unique())
    style = styles(order)
    for ax, (n, p) in zip(axes.flat, settings):
        here = drawn[(drawn["seq_len"] == n) & (drawn["pairs"] == p)]
        for v in order:
            g = here[here["variant"] == v].sort_values("state_bytes")
            if len(g):
                line(ax, g, "state_bytes", "accuracy", style[v])
        ax.axhline(TARGET, color="0.4", lw=0.8, ls=":")
        ax.set_xlim(here["state_bytes"].min() / 1.6, here["state_bytes"].max() * 1.6)
        log_axis(ax, "x")
        plain_axis(ax, "y")
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(setting_label(n, p), fontsize="small")
        ax.set_xlabel("state (bytes, log scale)", fontsize="small")
    for ax in list(axes.flat)[len(settings):]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel("query accuracy")
    from matplotlib.lines import Line2D

    legend_below(fig, order, style, extra=[(Line2D([], [], color="0.4", lw=0.8, ls=":"), f"{TARGET:g}")])
    cpu = "CPU result: " if set(cells["device_type"]) == {"cpu"} else ""
    fig.suptitle(f"{cpu}MQAR query accuracy vs decoding state size (best learning rate per point)", fontsize="medium")
    fig.tight_layout()
    missing = sorted(set(ok["variant"]) - set(drawn["variant"]))
    note = f"Not drawn, no fixed-size decoding state: {', '.join(missing)}." if missing else ""
    return out.save(fig, f"{stem}_{slug('mqar')}"), note
