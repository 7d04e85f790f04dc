"""Every figure of the report, drawn on demand by key and device, so that a page draws only what it shows.

:class:`Drawer` holds the output folder and formats; :meth:`Drawer.draw` returns ``(path or None, note)``
(:data:`lra.report.plotting.FigureResult`): None with the reason when there is nothing to draw or
figures are off. Figure keys (:func:`fig_key`) are ``"<kind>:<device slug>"``; the kinds:

    summary      accuracy vs time per training step, memory as size (LRA Figure 3)   summary_figure.py
    time         attention forward+backward time vs N (non-causal)                   lines.py
    memory       its peak memory vs N
    op_fwd       forward-only time vs N;  model_step: training-step time vs N
    causal_time  causal forward+backward time vs N;  decode: time per generated token vs N
    approx       approximation error vs N, one panel per input pattern
    curves       training curves (validation accuracy and loss vs step)               curves.py
    recall       MQAR query accuracy vs state size, one panel per length (all devices) recall.py
    smoothness   (several, :func:`lra.report.smoothness.smoothness_figures`)
    cross        the same variant and length on each device
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from .answer import non_causal
from .curves import curves_figure
from .labels import MODE_NAMES, fig_key, length_label, memory_note, setting, settings, slug, variant_order
from .lines import exactness_figure, scaling_figure, values_figure
from .palette import styles
from .plotting import FigureDir, FigureResult, log_y, plt_sns, ylabel
from .recall import recall_cells, recall_figure
from .smoothness import smoothness_figures, smoothness_rows
from .summary_figure import summary_figure

#: what each key's figure shows, for captions
CAPTIONS = {
    "summary": "test accuracy vs time per training step (LRA Figure 3 layout)",
    "time": "attention forward+backward time per call vs N",
    "memory": "attention forward+backward peak memory vs N",
    "op_fwd": "attention forward time per call vs N",
    "model_step": "time per training step of the encoder vs N",
    "causal_time": "causal attention forward+backward time per call vs N",
    "decode": "time per generated token vs context N",
    "approx": "approximation error vs N",
    "curves": "training curves",
    "recall": "MQAR query accuracy vs decoding state size",
    "cross": "the same variant and length on each device",
}


class Drawer:
    """Draws figures into ``out_dir/figures`` in ``formats`` (``()``: figures off)."""

    def __init__(self, df: pd.DataFrame, out_dir: Path, formats: Sequence[str] = ("png", "svg")):
        self.df = df
        self.out = FigureDir(Path(out_dir) / "figures", tuple(formats)) if formats else None
        self.drawn: list[Path] = []

    def draw(self, kind: str, device: str | None = None) -> FigureResult:
        if self.out is None:
            return None, "figures turned off"
        path, note = getattr(self, f"_{kind}")(device)
        if path is not None:
            self.drawn.append(path)
        return path, note

    def _bench(self, device: str, mode: str, causal: bool | None = False) -> pd.DataFrame:
        d = self.df[(self.df["device_name"] == device) & (self.df["kind"] == "bench") & (self.df["mode"] == mode)]
        if causal is None:
            return d
        return non_causal(d) if not causal else d[d["causal"].astype(bool)]

    def _one_setting(self, rows: pd.DataFrame) -> tuple[pd.DataFrame, str]:
        """The rows of the setting with the most records (a figure must not mix dtypes or batches)."""
        groups = settings(rows)
        if len(groups) == 1:
            return rows, setting(rows)
        suffix, best = max(groups, key=lambda g: len(g[1]))
        return best, setting(best) + f" (of {len(groups)} settings; the others on the op-level page)"

    def _scaling(self, device, mode, value, label, what, stem, causal=False) -> FigureResult:
        rows = self._bench(device, mode, causal)
        if rows.empty:
            return None, f"no `{mode}`{' causal' if causal else ''} records on this device"
        rows, shape = self._one_setting(rows)
        if value == "peak_mem_mb":
            why = memory_note(rows)
            if why:
                return None, why
        return scaling_figure(rows, value, label, f"{device}: {what}" + (f"\n{shape}" if shape else ""), None,
                              self.out, f"{stem}_{slug(device)}")

    def _time(self, device):
        return self._scaling(device, "op_fwd_bwd", "time_ms", "time per call (ms)",
                             "attention forward+backward", "time_op_fwd_bwd")

    def _memory(self, device):
        return self._scaling(device, "op_fwd_bwd", "peak_mem_mb", "peak memory (MiB)",
                             "attention forward+backward, peak memory", "memory_op_fwd_bwd")

    def _op_fwd(self, device):
        return self._scaling(device, "op_fwd", "time_ms", "time per call (ms)", "attention forward", "time_op_fwd")

    def _causal_time(self, device):
        return self._scaling(device, "op_fwd_bwd", "time_ms", "time per call (ms)",
                             "causal attention forward+backward", "time_causal_op_fwd_bwd", causal=True)

    def _model_step(self, device):
        rows = self._bench(device, "model_step")
        rows = rows[rows["steps_per_s"].notna() | (rows["status"] != "ok")]
        if rows.empty:
            return None, "no `model_step` records on this device"
        rows, shape = self._one_setting(rows.assign(ms_per_step=1000.0 / rows["steps_per_s"]))
        return scaling_figure(rows, "ms_per_step", "time per training step (ms)",
                              f"{device}: one training step of the encoder" + (f"\n{shape}" if shape else ""), None,
                              self.out, f"time_model_step_{slug(device)}")

    def _decode(self, device):
        rows = self._bench(device, "decode", None)
        if rows.empty:
            return None, "no `decode` records on this device"
        return values_figure(rows, "ms_per_token", "time per generated token (ms)",
                             f"{device}: decode step at context N", self.out, f"decode_{slug(device)}")

    def _summary(self, device):
        return summary_figure(self.df, device, None, self.out)

    def _approx(self, device):
        rows = self._bench(device, "exactness", None)
        if rows.empty:
            return None, "no `exactness` records on this device"
        rows, _ = self._one_setting(rows)
        return exactness_figure(rows, device, None, self.out, f"approx_error_{slug(device)}")

    def _curves(self, device):
        return curves_figure(self.df, device, self.out)

    def _recall(self, device):
        return recall_figure(recall_cells(self.df), self.out)

    def _cross(self, device):
        return cross_device_figure(self.df, self.out)

    def smoothness(self, device: str) -> list[tuple[str, FigureResult]]:
        """The smoothness figures of ``device``: ``[(caption, (path, note)), ...]``."""
        if self.out is None:
            return []
        d = self.df[(self.df["device_name"] == device) & (self.df["kind"] == "bench")]
        figs = smoothness_figures(smoothness_rows(d), device, {v: s.color for v, s in
                                                               styles(d["variant"].unique()).items()}, self.out)
        self.drawn += [r[0] for _, r in figs if r[0] is not None]
        return figs


def cross_device_figure(df: pd.DataFrame, out: FigureDir) -> FigureResult:
    """Bars per device for the same variant and length: op time (or model steps/s) and peak memory."""
    plt, sns = plt_sns()
    b = non_causal(df[(df["kind"] == "bench") & (df["status"] == "ok")])
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
        fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.6), squeeze=False)
        for ax, (col, lab) in zip(axes[0], panels):
            sns.barplot(data=med, x="variant", y=col, hue="device", order=order, ax=ax, errorbar=None,
                        palette="Greys")
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
