"""Scaling exponents, crossovers and ties: how time and memory grow with N, where a variant overtakes exact
attention, and when two timings cannot be told apart.

Rules (issue 31 item 4):

- an exponent is fitted from at least :data:`MIN_LENGTHS` distinct lengths with status ok, over the largest
  ``max(3, ceil(k/2))`` of the ``k`` usable ones (the upper part of the range, where the leading term
  dominates), and comes with its spread: one standard error of the least-squares slope;
- a crossover needs at least :data:`MIN_LENGTHS` lengths measured for both variants;
- fewer lengths give "too few lengths" instead of a number;
- two timings tie when their p10-p90 ranges over the timed calls overlap (:func:`tied`).
"""
from __future__ import annotations

import math
from typing import Mapping, NamedTuple, Sequence

import numpy as np
import pandas as pd

from .labels import length_label, variant_order
from .tables import median_by

#: the fewest distinct lengths an exponent or a crossover is fitted from
MIN_LENGTHS = 3
TOO_FEW = "too few lengths"


class Fit(NamedTuple):
    """A power law ``y ∝ N^k``: ``k``, its standard error ``se`` and the ``lengths`` it was fitted over
    (``k``/``se`` NaN when fewer than :data:`MIN_LENGTHS` usable lengths; ``lengths`` then holds those)."""
    k: float
    se: float
    lengths: tuple[float, ...]

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.k))

    def text(self) -> str:
        """"2.01 ± 0.03", or "too few lengths (2)"."""
        if not self.ok:
            return f"{TOO_FEW} ({len(self.lengths)})"
        k = 0.0 if abs(self.k) < 0.005 else self.k
        return f"{k:.2f} ± {self.se:.2f}"


def fit_power(seq_lens: Sequence[float], values: Sequence[float], upper_half: bool = True) -> Fit:
    """Log-log least-squares slope of ``values`` against ``seq_lens`` with its standard error.

    Duplicate lengths are reduced to their median; non-finite or non-positive values are ignored.
    ``upper_half``: over the largest ``max(3, ceil(k/2))`` of the ``k`` usable lengths; else over all.
    With exactly 3 lengths the standard error has one degree of freedom. O(k log k).
    """
    s = pd.DataFrame({"n": np.asarray(seq_lens, float), "y": np.asarray(values, float)})
    s = s[np.isfinite(s["n"]) & np.isfinite(s["y"]) & (s["n"] > 0) & (s["y"] > 0)]
    s = s.groupby("n")["y"].median().sort_index()
    if len(s) < MIN_LENGTHS:
        return Fit(float("nan"), float("nan"), tuple(float(n) for n in s.index))
    if upper_half:
        s = s.iloc[-max(MIN_LENGTHS, math.ceil(len(s) / 2)):]
    x, y = np.log(s.index.to_numpy(float)), np.log(s.to_numpy(float))
    k, c = np.polyfit(x, y, 1)
    resid = y - (k * x + c)
    sxx = float(((x - x.mean()) ** 2).sum())
    se = math.sqrt(float((resid ** 2).sum()) / (len(x) - 2) / sxx) if len(x) > 2 and sxx > 0 else float("nan")
    return Fit(float(k), se, tuple(float(n) for n in s.index))


def fit_exponent(seq_lens: Sequence[float], values: Sequence[float], upper_half: bool = True) -> float:
    """The exponent of :func:`fit_power` alone (NaN from fewer than :data:`MIN_LENGTHS` lengths)."""
    return fit_power(seq_lens, values, upper_half).k


def crossover_length(times: Mapping[float, float], ref_times: Mapping[float, float]) -> int | None:
    """Smallest measured N from which a variant is faster than the reference at every larger N.

    ``times``/``ref_times`` map sequence length to time; a failed case (OOM, ...) is NaN or inf
    (it counts as infinitely slow). Only lengths measured for both are compared; a length where both
    failed says nothing. Returns None when the variant is not faster at the largest compared length
    (callers check :func:`compared_lengths` first: fewer than :data:`MIN_LENGTHS` say nothing).
    """
    cross = None
    for n, below in reversed(_verdicts(times, ref_times)):
        if not below:
            break
        cross = n
    return int(cross) if cross is not None else None


def _verdicts(times: Mapping[float, float], ref_times: Mapping[float, float]) -> list[tuple[float, bool]]:
    def t(x):
        return float("inf") if x is None or not np.isfinite(x) else float(x)

    out = []
    for n in sorted(set(times) & set(ref_times)):
        a, b = t(times[n]), t(ref_times[n])
        if not (math.isinf(a) and math.isinf(b)):
            out.append((n, a < b))
    return out


def compared_lengths(times: Mapping[float, float], ref_times: Mapping[float, float]) -> int:
    """How many lengths a crossover of ``times`` against ``ref_times`` is read from."""
    return len(_verdicts(times, ref_times))


def tied(best: tuple[float, float], other: tuple[float, float]) -> bool:
    """Whether two timings' p10-p90 ranges ``(lo, hi)`` overlap (False when either range is unknown)."""
    (a0, a1), (b0, b1) = best, other
    if not all(np.isfinite(x) for x in (a0, a1, b0, b1)):
        return False
    return a0 <= b1 and b0 <= a1


def _series(rows: pd.DataFrame, value: str) -> dict[float, float]:
    med = median_by(rows, ["seq_len"], value)
    return {float(r.seq_len): r.value for r in med.itertuples() if np.isfinite(r.seq_len)}


def derived_numbers(df: pd.DataFrame, device: str | None = None, mode: str = "op_fwd_bwd",
                    reference: str = "flash", causal: bool | None = None) -> pd.DataFrame:
    """Per variant on one device: time and memory exponents with their spread, crossover N vs
    ``reference``, largest N that fit.

    Uses bench records of ``mode`` (time: ``time_ms``; ``causal`` given: only those rows). If
    ``reference`` has no records, ``full`` is used instead. Columns: variant, time_exponent, time_se,
    time_lengths, memory_exponent, memory_se, crossover, compared (lengths the crossover was read from),
    reference, n_max (largest measured N), largest_ok (largest N with status ok), first_failed (smallest
    N that failed, e.g. OOM), first_failed_status, mem_at_largest (peak MiB at largest_ok); the N columns
    are nullable integers (``pd.NA`` = none).
    """
    d = df[(df["kind"] == "bench") & (df["mode"] == mode)]
    if device is not None:
        d = d[d["device_name"] == device]
    if causal is not None and "causal" in d:
        d = d[d["causal"].fillna(False).astype(bool) == causal]
    cols = ["variant", "time_exponent", "time_se", "time_lengths", "memory_exponent", "memory_se", "memory_lengths", "crossover",
            "compared", "reference", "n_max", "largest_ok", "first_failed", "first_failed_status", "mem_at_largest"]
    if d.empty:
        return pd.DataFrame(columns=cols)
    variants = variant_order(d["variant"].unique())
    ref = reference if reference in variants else ("full" if "full" in variants else None)
    ref_times = _series(d[d["variant"] == ref], "time_ms") if ref else {}
    out = []
    for v in variants:
        g = d[d["variant"] == v]
        ok, bad = g[g["status"] == "ok"], g[g["status"] != "ok"]
        t, m = fit_power(ok["seq_len"], ok["time_ms"]), fit_power(ok["seq_len"], ok["peak_mem_mb"])
        times = _series(g, "time_ms")
        largest = ok["seq_len"].max() if ok["seq_len"].notna().any() else None
        mem = ok[ok["seq_len"] == largest]["peak_mem_mb"].median() if largest is not None else np.nan
        first = bad["seq_len"].min() if bad["seq_len"].notna().any() else None
        out.append(dict(
            variant=v, time_exponent=t.k, time_se=t.se, time_lengths=len(t.lengths), memory_exponent=m.k,
            memory_se=m.se, memory_lengths=len(m.lengths),
            crossover=None if (ref is None or v == ref) else crossover_length(times, ref_times),
            compared=0 if (ref is None or v == ref) else compared_lengths(times, ref_times),
            reference=ref, n_max=g["seq_len"].max() if g["seq_len"].notna().any() else None,
            largest_ok=largest, first_failed=first,
            first_failed_status="/".join(sorted(set(bad[bad["seq_len"] == first]["status"]))) if first else None,
            mem_at_largest=mem))
    out = pd.DataFrame(out, columns=cols)
    for col in ("crossover", "n_max", "largest_ok", "first_failed"):
        out[col] = pd.array([None if x is None or pd.isna(x) else int(x) for x in out[col]], dtype="Int64")
    return out


def crossover_text(r, ref: str | None) -> str:
    """One :func:`derived_numbers` row's crossover as the report writes it."""
    if ref is None:
        return "no reference"
    if r.variant == ref:
        return "(reference)"
    if r.compared < MIN_LENGTHS:
        return f"{TOO_FEW} ({r.compared})"
    if pd.isna(r.crossover):
        return f"none up to {length_label(r.n_max)}" if pd.notna(r.n_max) else "not run"
    return length_label(r.crossover)


def derived_display(der: pd.DataFrame) -> pd.DataFrame:
    """:func:`derived_numbers` as display strings, one row per variant."""
    ref = der["reference"].dropna().iloc[0] if der["reference"].notna().any() else None

    def exp(k, se, n):
        return Fit(k, se, tuple(range(int(n)))).text() if np.isfinite(k) else f"{TOO_FEW} ({int(n)})"

    def fit_text(r):
        if pd.isna(r.largest_ok):
            return f"none ({r.first_failed_status} from {length_label(r.first_failed)})" \
                if pd.notna(r.first_failed) else "none"
        text = length_label(r.largest_ok)
        if pd.notna(r.first_failed):
            text += f" ({r.first_failed_status} at {length_label(r.first_failed)})"
        return text

    out = pd.DataFrame({
        "time ∝ N^k (k ± s.e.)": [exp(k, se, n) for k, se, n in zip(der["time_exponent"], der["time_se"],
                                                                     der["time_lengths"])],
        "memory ∝ N^k (k ± s.e.)": [exp(k, se, n) if n else "not measured"
                                    for k, se, n in zip(der["memory_exponent"], der["memory_se"],
                                                        der["memory_lengths"])],
        f"faster than {ref} from N =": [crossover_text(r, ref) for r in der.itertuples()],
        "largest N that fit": [fit_text(r) for r in der.itertuples()],
    })
    out.index = pd.Index(der["variant"], name="variant")
    return out
