"""Scaling exponents and crossovers: how time and memory grow with N, and where a variant overtakes exact attention."""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .labels import length_label, variant_order
from .tables import median_by


def fit_exponent(seq_lens: Sequence[float], values: Sequence[float], upper_half: bool = True) -> float:
    """Log-log least-squares slope of ``values`` against ``seq_lens`` over the upper half of the lengths
    (``upper_half=False``: over every length).

    Duplicate lengths are reduced to their median; non-finite or non-positive values are ignored.
    The upper half is the largest ``ceil(k/2)`` of the ``k`` usable lengths (at least 2).
    NaN when fewer than two usable lengths. O(k log k).
    """
    s = pd.DataFrame({"n": np.asarray(seq_lens, float), "y": np.asarray(values, float)})
    s = s[np.isfinite(s["n"]) & np.isfinite(s["y"]) & (s["n"] > 0) & (s["y"] > 0)]
    s = s.groupby("n")["y"].median().sort_index()
    if len(s) < 2:
        return float("nan")
    if upper_half:
        s = s.iloc[-max(2, math.ceil(len(s) / 2)):]
    return float(np.polyfit(np.log(s.index.to_numpy(float)), np.log(s.to_numpy(float)), 1)[0])


def crossover_length(times: Mapping[float, float], ref_times: Mapping[float, float]) -> int | None:
    """Smallest measured N from which a variant is faster than the reference at every larger N.

    ``times``/``ref_times`` map sequence length to time; a failed case (OOM, ...) is NaN or inf
    (it counts as infinitely slow). Only lengths measured for both are compared; a length where both
    failed says nothing. Returns None when the variant is not faster at the largest compared length.
    """
    def t(x):
        return float("inf") if x is None or not np.isfinite(x) else float(x)

    verdicts = []
    for n in sorted(set(times) & set(ref_times)):
        a, b = t(times[n]), t(ref_times[n])
        if not (math.isinf(a) and math.isinf(b)):
            verdicts.append((n, a < b))
    cross = None
    for n, below in reversed(verdicts):
        if not below:
            break
        cross = n
    return int(cross) if cross is not None else None


def _series(rows: pd.DataFrame, value: str) -> dict[float, float]:
    med = median_by(rows, ["seq_len"], value)
    return {float(r.seq_len): r.value for r in med.itertuples() if np.isfinite(r.seq_len)}


def derived_numbers(df: pd.DataFrame, device: str | None = None, mode: str = "op_fwd_bwd",
                    reference: str = "flash") -> pd.DataFrame:
    """Per variant on one device: time and memory exponents, crossover N vs ``reference``, largest N that fit.

    Uses bench records of ``mode`` (time: ``time_ms``). If ``reference`` has no records, ``full``
    is used instead. Columns: variant, time_exponent, memory_exponent, crossover, reference,
    n_max (largest measured N), largest_ok (largest N with status ok), first_failed (smallest N
    that failed, e.g. OOM); the last four are nullable integers (``pd.NA`` = none).
    """
    d = df[(df["kind"] == "bench") & (df["mode"] == mode)]
    if device is not None:
        d = d[d["device_name"] == device]
    cols = ["variant", "time_exponent", "memory_exponent", "crossover", "reference", "n_max", "largest_ok",
            "first_failed"]
    if d.empty:
        return pd.DataFrame(columns=cols)
    variants = variant_order(d["variant"].unique())
    ref = reference if reference in variants else ("full" if "full" in variants else None)
    ref_times = _series(d[d["variant"] == ref], "time_ms") if ref else {}
    out = []
    for v in variants:
        g = d[d["variant"] == v]
        ok, bad = g[g["status"] == "ok"], g[g["status"] != "ok"]
        out.append(dict(
            variant=v,
            time_exponent=fit_exponent(ok["seq_len"], ok["time_ms"]),
            memory_exponent=fit_exponent(ok["seq_len"], ok["peak_mem_mb"]),
            crossover=None if (ref is None or v == ref) else crossover_length(_series(g, "time_ms"), ref_times),
            reference=ref,
            n_max=g["seq_len"].max() if g["seq_len"].notna().any() else None,
            largest_ok=ok["seq_len"].max() if ok["seq_len"].notna().any() else None,
            first_failed=bad["seq_len"].min() if bad["seq_len"].notna().any() else None))
    out = pd.DataFrame(out, columns=cols)
    for col in ("crossover", "n_max", "largest_ok", "first_failed"):
        out[col] = pd.array([None if x is None or pd.isna(x) else int(x) for x in out[col]], dtype="Int64")
    return out


def derived_display(der: pd.DataFrame) -> pd.DataFrame:
    """:func:`derived_numbers` as display strings, one row per variant."""
    ref = der["reference"].dropna().iloc[0] if der["reference"].notna().any() else None

    def cross(r):
        if ref is None:
            return "no reference"
        if r.variant == ref:
            return "(reference)"
        if pd.isna(r.crossover):
            return f"none up to {length_label(r.n_max)}" if pd.notna(r.n_max) else "—"
        return length_label(r.crossover)

    out = pd.DataFrame({
        "time ~ N^k": der["time_exponent"].map(lambda x: f"{x:.2f}" if np.isfinite(x) else "—"),
        "memory ~ N^k": der["memory_exponent"].map(lambda x: f"{x:.2f}" if np.isfinite(x) else "—"),
        f"faster than {ref} from N =": [cross(r) for r in der.itertuples()],
        "largest N that fit": der["largest_ok"].map(lambda x: "none" if pd.isna(x) else length_label(x)),
    })
    out.index = pd.Index(der["variant"], name="variant")
    return out
