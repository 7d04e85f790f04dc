"""The text summary ``lra-bench`` prints at the end of a run.

One table per mode that has records, in the registry's order: variants (and whichever of
pattern, radius, causal, dtype and batch size vary) as rows, N as columns, the mode's main
metric in the cells (``OOM``/``NaN``/``ERR`` for failed cases, ``SKIP`` for skipped ones, ``-``
where nothing was measured), plus the mode's extra tables and columns
(:class:`lra.bench.registry.Mode`). A mode of the run rather than of the variants (the
calibration) is one line of its metrics.
"""
from __future__ import annotations

import math
from typing import Any

import pandas as pd

from ..results import flatten
from .registry import MODES

#: columns that become row labels when their value varies within a mode
ROW_AXES = ("pattern", "radius", "causal", "dtype", "batch_size")


def _cell(row, metric: str) -> str:
    if row["status"] != "ok":
        return {"oom": "OOM", "nan": "NaN", "error": "ERR", "skipped": "SKIP"}.get(row["status"], row["status"])
    value = row.get(metric)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _pivot(rows: pd.DataFrame, index: list[str], metric: str) -> pd.DataFrame:
    """``metric`` as cells, ``index`` as rows, N as columns."""
    rows["cell"] = [_cell(r, metric) for _, r in rows.iterrows()]
    return rows.pivot_table(index=index, columns="seq_len", values="cell", aggfunc="first")


def summary(records: list[dict[str, Any]]) -> str:
    """Compact text tables: one per mode, variants as rows and N as columns."""
    if not records:
        return "[lra-bench] no records"
    df = pd.DataFrame([flatten(r) for r in records])
    out = []
    for name, mode in MODES.items():
        rows = df[df["mode"] == name]
        if rows.empty:
            continue
        rows = rows.copy()
        if mode.cases is not None:   # one case per run: its metrics on one line
            for _, r in rows.iterrows():
                values = [f"{m}={r[m]:g}" for m in [mode.metric] + [t[0] for t in mode.tables]
                          if m in r and isinstance(r[m], (int, float)) and math.isfinite(r[m])]
                message = r.get("message") if isinstance(r.get("message"), str) else ""
                out.append(f"\n== {name}: {r['status']} {', '.join(values)} {message}".rstrip())
            continue
        if mode.metric not in rows:
            rows[mode.metric] = None
        if "radius" in rows:   # cases without a radius (data patterns) keep their rows: "-"
            rows["radius"] = [f"{r:g}" if isinstance(r, (int, float)) and math.isfinite(r) else "-"
                              for r in rows["radius"]]
        index = ["variant"] + [col for col in ROW_AXES if col in rows and rows[col].nunique(dropna=True) > 1]
        table = _pivot(rows, index, mode.metric)
        if mode.columns is not None:
            table = mode.columns(table, rows, index, mode.metric)
        out.append(f"\n== {name}: {mode.title} ==\n{table.to_string()}")
        for metric, heading in mode.tables:
            if metric in rows and rows[metric].notna().any():
                out.append(f"\n== {name}: {heading} ==\n{_pivot(rows, index, metric).to_string()}")
    return "\n".join(out)
