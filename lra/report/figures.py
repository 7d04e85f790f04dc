"""Which figures the evidence section draws, per device, plus the across-devices comparison.

:func:`make_figures` returns ``{section: [(caption, path or None, note), ...]}``; a None path means the
figure was not drawn and the note says why (e.g. memory not measured on CPU). The one-figure summary
at the top of the report is :mod:`lra.report.summary_figure`; smoothness figures are
:mod:`lra.report.smoothness`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from .labels import MODE_NAMES, OP_MODES, devices, length_label, memory_note, setting, settings, slug, variant_order
from .lines import exactness_figure, scaling_figure
from .plotting import FigureDir, FigureResult, log_y, palette, plt_sns, ylabel
from .smoothness import smoothness_figures, smoothness_rows

Figures = dict[str, list[tuple[str, Path | None, str]]]


def cross_device_figure(df: pd.DataFrame, out: FigureDir) -> FigureResult:
    """Bars per device for the same variant and length: op time and peak memory (or model steps/s)."""
    plt, sns = plt_sns()
    b = df[(df["kind"] == "bench") & (df["status"] == "ok")]
    for mode, value, label in (("op_fwd_bwd", "time_ms", "time per call (ms)"),
                               ("op_fwd", "time_ms", "time per call (ms)"),
                               ("model_step", "steps_per_s", "training speed (steps/s)")):
        d = b[(b["mode"] == mode) & b[value].notna() & b["seq_len"].notna()]
        if d["device_name"].nunique() < 2:
            continue
        d = d[d.groupby(["variant", "seq_len"])["device_name"].transform("nunique") >= 2]
        if d.empty:
            continue
        counts = d.groupby("seq_len")["variant"].nunique()  # the largest length with the most shared variants
        n = max(counts.index, key=lambda x: (counts[x], x))
        s = d[d["seq_len"] == n].copy()
        shapes = {dev: setting(g) for dev, g in s.groupby("device_name")}
        s["device"] = s["device_name"].map(lambda x: f"{x} ({shapes[x]})" if shapes[x] else x)
        med = s.groupby(["variant", "device"], as_index=False)[[value, "peak_mem_mb"]].median()
        order = variant_order(med["variant"].unique())
        panels = [(value, label)] + ([("peak_mem_mb", "peak memory (MiB)")] if med["peak_mem_mb"].notna().any() else [])
        fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), squeeze=False)
        for ax, (col, lab) in zip(axes[0], panels):
            sns.barplot(data=med, x="variant", y=col, hue="device", order=order, ax=ax, errorbar=None)
            vals = med[col].dropna()
            if len(vals) and (vals > 0).all() and vals.max() / vals.min() > 20:
                log_y(ax)
            ylabel(ax, lab)
            ax.set_xlabel("variant")
            ax.tick_params(axis="x", labelrotation=30)
            for t in ax.get_xticklabels():
                t.set_ha("right")
            if ax.get_legend() is not None:
                ax.get_legend().remove()
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.suptitle(f"Across devices: {MODE_NAMES.get(mode, mode)} at N = {length_label(n)}", fontsize="medium")
        fig.tight_layout()
        fig.legend(handles, labels, title="device (setting)", loc="upper center", bbox_to_anchor=(0.5, 0.0),
                   frameon=False, fontsize="small", title_fontsize="small", ncol=1)
        note = "" if len(panels) > 1 else "No memory panel: " + (memory_note(s) or "no peak memory recorded") + "."
        return out.save(fig, f"cross_device_{mode}"), note
    return None, ("records come from several devices, but no benchmark case (mode, variant, length) was "
                  "measured on more than one of them")


def _device_figures(df: pd.DataFrame, dev: str, colors: dict[str, Any], out: FigureDir, add) -> None:
    d = df[(df["device_name"] == dev) & (df["kind"] == "bench")]
    sec, s = f"Device: {dev}", slug(dev)
    if d.empty:
        add(sec, "time and memory vs length, approximation error, smoothness",
            (None, "no `lra-bench` records from this device; `lra-bench` measures them"))
    for mode in OP_MODES:
        for suffix, rows in settings(d[d["mode"] == mode]):
            if rows.empty:
                continue
            shape = setting(rows)
            what = MODE_NAMES[mode] + (f" ({shape})" if suffix else "")
            sub = f"\n{shape}" if shape else ""
            add(sec, f"time vs length, attention {what}",
                scaling_figure(rows, "time_ms", "time per call (ms)", f"{dev}: attention {MODE_NAMES[mode]} time "
                               f"per call{sub}", colors, out, f"time_{mode}_{s}{suffix}"))
            note = memory_note(rows)
            add(sec, f"peak memory vs length, attention {what}", (None, note) if note else
                scaling_figure(rows, "peak_mem_mb", "peak memory (MiB)", f"{dev}: attention {MODE_NAMES[mode]} "
                               f"peak memory{sub}", colors, out, f"memory_{mode}_{s}{suffix}"))
    ms = d[(d["mode"] == "model_step") & d["steps_per_s"].notna()]
    for suffix, rows in settings(ms):
        if rows.empty:
            continue
        rows = rows.assign(ms_per_step=1000.0 / rows["steps_per_s"])
        shape = setting(rows, with_task=True)
        add(sec, "model training step time vs length" + (f" ({shape})" if suffix else ""),
            scaling_figure(rows, "ms_per_step", "time per training step (ms)",
                           f"{dev}: one training step of the encoder" + (f"\n{shape}" if shape else ""),
                           colors, out, f"time_model_step_{s}{suffix}"))
    for suffix, rows in settings(d[d["mode"] == "exactness"]):
        if len(rows):
            add(sec, "approximation error vs length", exactness_figure(rows, dev, colors, out,
                                                                       f"approx_error_{s}{suffix}"))
    for caption, result in smoothness_figures(smoothness_rows(d), dev, colors, out):
        add(sec, caption, result)


def make_figures(df: pd.DataFrame, out_dir: Path, formats: Sequence[str] = ("png", "svg")) -> Figures:
    """All evidence figures (into ``out_dir/figures``), grouped by section title."""
    out = FigureDir(Path(out_dir) / "figures", tuple(formats))
    colors = colors_for(df)
    figs: Figures = {}

    def add(section: str, caption: str, result: FigureResult) -> None:
        figs.setdefault(section, []).append((caption, result[0], result[1]))

    for dev in devices(df):
        _device_figures(df, dev, colors, out, add)
    if df["device_name"].nunique() > 1:
        add("Across devices", "same variant and length on each device", cross_device_figure(df, out))
    return figs


def colors_for(df: pd.DataFrame) -> dict[str, Any]:
    """The report's variant -> colour map (the same variant has the same colour in every figure)."""
    return palette(variant_order(df["variant"].unique()))
