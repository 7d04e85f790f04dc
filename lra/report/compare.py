"""The comparison with a baseline: every (case, metric) pair, its relative change and a regression flag."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .frame import normalize
from .labels import fail_label, sig

#: the keys that identify one case across runs; :data:`OPTIONAL_KEYS` join when either side has them.
COMPARE_KEYS = ("kind", "task", "variant", "device_name", "mode", "seq_len", "batch_size", "dtype")
#: case facts that split one (variant, mode, N) into distinct measurements (smoothness input pattern,
#: radius and causal mask; the training recipe and protocol)
OPTIONAL_KEYS = ("pattern", "radius", "causal", "recipe", "protocol")
LOWER_IS_BETTER = ("ms", "ms_fwd", "ms_fwd_bwd", "peak_mem_mb")
HIGHER_IS_BETTER = ("accuracy", "val_accuracy", "steps_per_s", "tokens_per_s", "tflops")
COMPARE_METRICS = LOWER_IS_BETTER + HIGHER_IS_BETTER + ("loss", "tflops_fraction", "approx_error", "lipschitz")


def _keyed(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One row per case: mean of ok metrics, aggregated status."""
    d = df.copy()
    for k in keys:
        col = d[k] if k in d else pd.Series([None] * len(d), index=d.index, dtype=object)
        if k in ("seq_len", "batch_size"):
            col = pd.to_numeric(col, errors="coerce").map(lambda x: "" if not np.isfinite(x) else str(int(x)))
        else:
            col = col.astype(object).map(lambda x: "" if x is None or (isinstance(x, float) and np.isnan(x)) else str(x))
        d[k] = col
    metrics = [m for m in COMPARE_METRICS if m in d and d[m].notna().any()]
    rows = []
    for k, g in d.groupby(keys, sort=True):
        ok = g[g["status"] == "ok"]
        row = dict(zip(keys, k))
        row["status"] = "ok" if len(ok) else fail_label(g["status"])
        for m in metrics:
            row[m] = float(ok[m].mean()) if ok[m].notna().any() else np.nan
        rows.append(row)
    return pd.DataFrame(rows, columns=keys + ["status"] + metrics)


def compare_frames(current: pd.DataFrame, baseline: pd.DataFrame, tolerance: float = 0.05) -> pd.DataFrame:
    """Per matching case and metric: baseline, current, relative change and a regression flag.

    Cases match on :data:`COMPARE_KEYS` (plus :data:`OPTIONAL_KEYS`). A regression is time/memory up, or
    accuracy/throughput down, by more than ``tolerance`` (a fraction of the baseline value), or a
    case that was ok and now fails. Columns: keys..., metric, baseline, current, change, regression, note.
    """
    current, baseline = normalize(current), normalize(baseline)
    keys = list(COMPARE_KEYS) + [k for k in OPTIONAL_KEYS if k in current or k in baseline]
    a, b = _keyed(current, keys), _keyed(baseline, keys)
    cols = keys + ["metric", "baseline", "current", "change", "regression", "note"]
    if a.empty or b.empty:
        return pd.DataFrame(columns=cols)
    m = a.merge(b, on=keys, suffixes=("", "_base"), how="inner")
    rows = []
    for r in m.to_dict("records"):
        base_k = {k: r[k] for k in keys}
        st, st0 = r["status"], r["status_base"]
        if st != st0:
            rows.append(dict(base_k, metric="status", baseline=st0, current=st, change=np.nan,
                             regression=(st0 == "ok"), note=f"now {st}" if st0 == "ok" else f"was {st0}"))
        for metric in COMPARE_METRICS:
            if metric not in r or metric + "_base" not in r:
                continue
            cur, base = r[metric], r[metric + "_base"]
            if not (np.isfinite(cur) and np.isfinite(base)):
                continue
            change = (cur - base) / abs(base) if base != 0 else (0.0 if cur == base else float("inf"))
            reg = (metric in LOWER_IS_BETTER and change > tolerance) or \
                  (metric in HIGHER_IS_BETTER and change < -tolerance)
            better = (metric in LOWER_IS_BETTER and change < -tolerance) or \
                     (metric in HIGHER_IS_BETTER and change > tolerance)
            rows.append(dict(base_k, metric=metric, baseline=base, current=cur, change=change,
                             regression=bool(reg), note="REGRESSION" if reg else ("improved" if better else "")))
    out = pd.DataFrame(rows, columns=cols)
    if len(out):
        out = out.sort_values(["regression", "kind", "device_name", "variant", "mode", "task", "seq_len", "metric"],
                              ascending=[False, True, True, True, True, True, True, True], kind="stable")
    return out.reset_index(drop=True)


def compare_display(cmp: pd.DataFrame) -> pd.DataFrame:
    """The changed pairs of :func:`compare_frames` as display strings (regressions first)."""
    def val(x):
        return x if isinstance(x, str) else sig(x, 4)

    return pd.DataFrame({
        "kind": cmp["kind"], "device": cmp["device_name"], "variant": cmp["variant"],
        "task / mode": [t or m or "not recorded" for t, m in zip(cmp["task"], cmp["mode"])] if len(cmp) else [],
        "N": cmp["seq_len"], "batch": cmp["batch_size"], "dtype": cmp["dtype"], "metric": cmp["metric"],
        "baseline": cmp["baseline"].map(val), "current": cmp["current"].map(val),
        "change": cmp["change"].map(lambda c: f"{c:+.1%}" if isinstance(c, float) and np.isfinite(c) else "not compared"),
        "flag": [("⚠ " if r else "") + n for r, n in zip(cmp["regression"], cmp["note"])],
    })
