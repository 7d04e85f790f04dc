"""Result records -> a markdown report, seaborn figures and a tidy CSV.

The report reads records only (through :func:`lra.results.load`, or a previous report's
``tidy.csv``) and writes into one output folder::

    report.md       tables in the Long Range Arena paper's layouts, derived numbers, failures,
                    provenance and (optionally) a comparison against a baseline; its first lines give
                    the command that rebuilds it (``name=REPORT.md`` for the committed results/REPORT.md)
    report.html     the same tables as plain HTML (pandas ``to_html``)
    tidy.csv        the flattened records the report used (one row per record)
    compare.csv     every compared (case, metric) pair, when a baseline was given
    figures/*.png   figures (each also as ``.svg``), linked by relative paths

The output folder may be the records folder itself (``lra-report results out=results name=REPORT.md``):
only ``*.json`` files are read as records, so the report's own files are never read back.

Library entry point: :func:`build_report`; command line: ``python -m lra.report``.
Every section is written from whatever columns exist; a section without data says so.
"""
from __future__ import annotations

import argparse
import html
import json
import math
import os
import re
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from lra.results import load

# ----------------------------------------------------------------------------------------------
# Constants

TASKS = ("listops", "text", "retrieval", "image", "pathfinder", "pathx")
TASK_NAMES = {"listops": "ListOps", "text": "Text", "retrieval": "Retrieval", "image": "Image",
              "pathfinder": "Pathfinder", "pathx": "Path-X"}

PAPER_CITATION = ("Tay et al. 2020, \"Long Range Arena: A Benchmark for Efficient Transformers\" "
                  "(arXiv:2011.04006, ICLR 2021), Table 1")
#: LRA paper Table 1 test accuracy (%); ``None`` = the paper's FAIL (Path-X for every model).
PAPER_TABLE1: dict[str, dict[str, float | None]] = {
    "Transformer": dict(listops=36.37, text=64.27, retrieval=57.46, image=42.44, pathfinder=71.40, pathx=None, avg=54.39),
    "Local Attention": dict(listops=15.82, text=52.98, retrieval=53.39, image=41.46, pathfinder=66.63, pathx=None, avg=46.06),
    "Sparse Trans.": dict(listops=17.07, text=63.58, retrieval=59.59, image=44.24, pathfinder=71.71, pathx=None, avg=51.24),
    "Longformer": dict(listops=35.63, text=62.85, retrieval=56.89, image=42.22, pathfinder=69.71, pathx=None, avg=53.46),
    "Linformer": dict(listops=35.70, text=53.94, retrieval=52.27, image=38.56, pathfinder=76.34, pathx=None, avg=51.36),
    "Reformer": dict(listops=37.27, text=56.10, retrieval=53.40, image=38.07, pathfinder=68.50, pathx=None, avg=50.67),
    "Sinkhorn Trans.": dict(listops=33.67, text=61.20, retrieval=53.83, image=41.23, pathfinder=67.45, pathx=None, avg=51.39),
    "Synthesizer": dict(listops=36.99, text=61.68, retrieval=54.67, image=41.61, pathfinder=69.45, pathx=None, avg=52.88),
    "BigBird": dict(listops=36.05, text=64.02, retrieval=59.29, image=40.83, pathfinder=74.87, pathx=None, avg=55.01),
    "Linear Trans.": dict(listops=16.13, text=65.90, retrieval=53.09, image=42.34, pathfinder=75.30, pathx=None, avg=50.55),
    "Performer": dict(listops=18.01, text=65.40, retrieval=53.82, image=42.77, pathfinder=77.05, pathx=None, avg=51.41),
}
#: the sequence lengths the LRA paper's Table 1 was measured at (Text: 4K bytes; Retrieval: 4K per document)
PAPER_LENGTHS = dict(listops=2000, text=4000, retrieval=4000, image=1024, pathfinder=1024, pathx=16384)
#: our variant name -> the paper's row (flash computes the same function as full).
PAPER_NAMES = {"full": "Transformer", "flash": "Transformer", "local": "Local Attention",
               "linformer": "Linformer", "reformer": "Reformer", "bigbird": "BigBird",
               "linear": "Linear Trans.", "performer": "Performer"}

VARIANT_ORDER = ("full", "flash", "local", "sparse", "longformer", "linformer", "reformer", "sinkhorn",
                 "synthesizer", "bigbird", "linear", "performer", "random_feature", "nystrom")
OP_MODES = ("op_fwd", "op_fwd_bwd")
MODE_NAMES = {"op_fwd": "forward", "op_fwd_bwd": "forward + backward", "model_step": "model training step",
              "exactness": "approximation error", "smoothness": "smoothness"}

#: the keys that identify one case across runs (for ``--compare``); ``pattern`` joins when present.
COMPARE_KEYS = ("kind", "task", "variant", "device_name", "mode", "seq_len", "batch_size", "dtype")
LOWER_IS_BETTER = ("ms", "ms_fwd", "ms_fwd_bwd", "peak_mem_mb")
HIGHER_IS_BETTER = ("accuracy", "val_accuracy", "steps_per_s", "tokens_per_s", "tflops")
COMPARE_METRICS = LOWER_IS_BETTER + HIGHER_IS_BETTER + ("loss", "tflops_fraction", "approx_error", "lipschitz")

_BASE_COLUMNS = ("kind", "task", "variant", "seq_len", "batch_size", "dtype", "seed", "device_name",
                 "device_type", "device_count", "device_memory_mb", "versions_torch", "versions_cuda",
                 "git_commit", "status", "message", "started_at", "finished_at", "mode", "pattern",
                 "accuracy", "val_accuracy", "loss", "steps_per_s", "tokens_per_s", "peak_mem_mb", "ms",
                 "ms_fwd", "ms_fwd_bwd", "tflops", "tflops_fraction", "approx_error", "lipschitz")
_NUMERIC = ("seq_len", "batch_size", "seed", "device_count", "device_memory_mb", "accuracy", "val_accuracy",
            "loss", "steps_per_s", "tokens_per_s", "peak_mem_mb", "ms", "ms_fwd", "ms_fwd_bwd", "tflops",
            "tflops_fraction", "approx_error", "lipschitz")
_UNKNOWN_DEVICE = "unknown device"


# ----------------------------------------------------------------------------------------------
# Loading and the tidy frame

def _read_any(path: Path, skipped: list[Path] | None = None) -> pd.DataFrame:
    """Records from a file/dir of JSON records, a tidy CSV, or a report dir holding ``tidy.csv``.

    A directory is read as a previous report (its ``tidy.csv``) only when it holds no JSON at all,
    so a records folder that also holds its own report (``results/``) is read from the records.
    """
    if path.is_file() and path.suffix == ".csv":
        return pd.read_csv(path)
    if path.is_dir() and (path / "tidy.csv").is_file() and not any(path.rglob("*.json")):
        return pd.read_csv(path / "tidy.csv")
    return load(path, skipped)


def load_frame(inputs: Iterable[str | os.PathLike] | str | os.PathLike,
               skipped: list[Path] | None = None) -> pd.DataFrame:
    """Load records (JSON files/dirs, tidy CSVs, report dirs) into one normalised frame.

    Every column the report uses exists afterwards (NaN where the records had none);
    numbers are numeric, missing device names read ``"unknown device"``, ``time_ms`` holds the
    per-call time of op benchmarks (``ms``, else ``ms_fwd_bwd``/``ms_fwd`` by mode).
    ``skipped`` collects the JSON files found that are not result records.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    frames = [_read_any(Path(p), skipped) for p in inputs]
    frames = [f for f in frames if not f.empty]
    df = pd.concat(frames, ignore_index=True, sort=False) if frames else pd.DataFrame()
    return normalize(df)


def normalize(df: pd.DataFrame) -> pd.DataFrame:
    """Add missing columns, coerce types, derive ``time_ms``."""
    df = df.copy()
    for col in _BASE_COLUMNS:
        if col not in df:
            df[col] = np.nan
    for col in _NUMERIC:
        df[col] = pd.to_numeric(df[col], errors="coerce")
    for col in ("started_at", "finished_at"):
        df[col] = pd.to_datetime(df[col], utc=True, errors="coerce")
    df["status"] = df["status"].astype(object).where(df["status"].notna(), "ok")
    df["device_name"] = df["device_name"].astype(object).where(df["device_name"].notna(), _UNKNOWN_DEVICE)
    df["variant"] = df["variant"].astype(object).where(df["variant"].notna(), "?")
    # lra-train's recipe (model size + optimizer settings): `lra` (the paper's) unless the config says otherwise
    config = df["config"] if "config" in df else pd.Series([None] * len(df), index=df.index)
    df["recipe"] = [c.get("recipe") or "lra" if isinstance(c, dict) and k == "train" else None
                    for c, k in zip(config, df["kind"])]
    time = df["ms"].copy()
    for mode, col in (("op_fwd_bwd", "ms_fwd_bwd"), ("op_fwd", "ms_fwd")):
        fill = (df["mode"] == mode) & time.isna()
        time = time.where(~fill, df[col])
    df["time_ms"] = time
    return df


def tidy(df: pd.DataFrame) -> pd.DataFrame:
    """The frame as written to ``tidy.csv``: dict/list cells JSON-encoded, the full Hydra config dropped."""
    out = df.drop(columns=[c for c in ("config", "_path") if c in df])
    for col in out.columns:
        if out[col].dtype == object and out[col].map(lambda v: isinstance(v, (dict, list))).any():
            out[col] = out[col].map(lambda v: json.dumps(v, sort_keys=True, default=str)
                                    if isinstance(v, (dict, list)) else v)
    return out


# ----------------------------------------------------------------------------------------------
# Formatting helpers

def variant_order(variants: Iterable[str]) -> list[str]:
    """Known variants in the paper's order, then the rest alphabetically."""
    vs = set(variants)
    known = [v for v in VARIANT_ORDER if v in vs]
    return known + sorted(vs - set(known), key=str)


def task_order(tasks: Iterable[str]) -> list[str]:
    ts = {t for t in tasks if isinstance(t, str)}
    return [t for t in TASKS if t in ts] + sorted(ts - set(TASKS))


def length_label(n: float) -> str:
    """1024 -> "1K", 3072 -> "3K", 500 -> "500"."""
    n = int(n)
    return f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else str(n)


def _sig(x: float, digits: int = 3) -> str:
    if x is None or not np.isfinite(x):
        return "—"
    if x == 0:
        return "0"
    mag = math.floor(math.log10(abs(x)))
    if mag >= digits - 1:
        return f"{x:,.0f}"
    return f"{x:.{max(digits - 1 - mag, 0)}f}"


def _ratio(x: float) -> str:
    return f"{x:.2f}×" if np.isfinite(x) else "—"


def _escape(cell: Any) -> str:
    s = "" if cell is None or (isinstance(cell, float) and np.isnan(cell)) else str(cell)
    return s.replace("|", "\\|").replace("\n", " ")


def markdown_table(df: pd.DataFrame, index: bool = True, left: Iterable[str] = ()) -> str:
    """A GitHub-flavoured markdown table (no third-party dependency).

    The index and the columns named in ``left`` are left-aligned, the other columns right-aligned.
    """
    left = set(left)
    cols = ([df.index.name or ""] if index else []) + [str(c) for c in df.columns]
    align = [":---"] * (1 if index else 0) + [":---" if c in left else "---:" for c in df.columns]
    lines = ["| " + " | ".join(_escape(c) for c in cols) + " |", "|" + "|".join(align) + "|"]
    for idx, row in df.iterrows():
        cells = ([idx] if index else []) + list(row)
        lines.append("| " + " | ".join(_escape(c) for c in cells) + " |")
    return "\n".join(lines)


def _fail_label(statuses: Iterable[str]) -> str:
    counts = pd.Series([s for s in statuses if s != "ok"], dtype=object).value_counts()
    return "/".join(counts.index) if len(counts) else "—"


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", str(s)).strip("_").lower() or "x"


def _devices(df: pd.DataFrame) -> list[str]:
    return sorted(df["device_name"].dropna().unique(), key=str)


def memory_note(rows: pd.DataFrame) -> str | None:
    """None when ``rows`` hold peak memory; else why not ("not measured on CPU ...")."""
    if rows.empty or rows["peak_mem_mb"].notna().any():
        return None
    types = {str(t) for t in rows["device_type"].dropna().unique()}
    if types == {"cpu"}:
        return "peak memory not measured on CPU (the CPU records hold none)"
    return "peak memory not recorded in these records"


def _setting(rows: pd.DataFrame, with_task: bool = False) -> str:
    """The fixed shape of a set of bench rows, e.g. "float32, batch 2, 4 heads x 64"."""
    def one(col):
        if col not in rows:
            return None
        vals = rows[col].dropna().unique()
        return vals[0] if len(vals) == 1 else None

    parts = []
    if with_task and one("task") is not None:
        parts.append(f"task {one('task')}")
    if one("dtype") is not None:
        parts.append(str(one("dtype")))
    if one("batch_size") is not None:
        parts.append(f"batch {int(one('batch_size'))}")
    h, d = one("heads"), one("head_dim")
    if h is not None and d is not None:
        parts.append(f"{int(h)} head{'s' if int(h) != 1 else ''} × {int(d)} dims")
    if one("timer") is not None:
        parts.append(f"timed with {one('timer')}")
    return ", ".join(parts)


def _settings(rows: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Split bench rows by the grid axes a figure must not mix (dtype, batch, heads, head_dim).

    Returns ``[(suffix, rows), ...]``; the suffix is "" when there is a single setting.
    """
    keys = [k for k in ("dtype", "batch_size", "heads", "head_dim") if k in rows]
    if not keys or rows.empty:
        return [("", rows)]
    key_frame = rows[keys].astype(object).where(rows[keys].notna(), "—").astype(str)
    groups = list(rows.groupby([key_frame[k] for k in keys], sort=True))
    if len(groups) == 1:
        return [("", rows)]
    return [("_" + _slug("_".join(k if isinstance(k, tuple) else (k,))), g) for k, g in groups]


# ----------------------------------------------------------------------------------------------
# 1. Accuracy (LRA Table 1)

def _acc_cell(group: pd.DataFrame) -> tuple[str, float]:
    ok = group[(group["status"] == "ok") & group["accuracy"].notna()]
    failed = group[group["status"] != "ok"]
    if ok.empty:
        return (_fail_label(failed["status"]) if len(failed) else "—"), np.nan
    vals = ok["accuracy"].to_numpy(float) * 100
    mean = float(vals.mean())
    text = f"{mean:.2f}" + (f" ± {vals.std(ddof=1):.2f}" if len(vals) > 1 else "")
    if len(failed):
        text += f" (+{len(failed)} {_fail_label(failed['status'])})"
    return text, mean


def accuracy_table(df: pd.DataFrame, device: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Test accuracy (%) in the LRA Table 1 layout for one device (or all rows).

    Returns ``(cells, means)``: display strings (rows variants, columns task names + "Avg"),
    and the numeric per-task means (NaN where no ok run). Failed runs show their status.
    """
    tr = df[df["kind"] == "train"]
    if device is not None:
        tr = tr[tr["device_name"] == device]
    tasks = task_order(tr["task"].dropna().unique())
    variants = variant_order(tr["variant"].unique())
    cells = pd.DataFrame(index=pd.Index(variants, name="variant"),
                         columns=[TASK_NAMES.get(t, t) for t in tasks] + ["Avg"], dtype=object)
    means = pd.DataFrame(index=variants, columns=tasks, dtype=float)
    for (v, t), g in tr.groupby(["variant", "task"]):
        text, mean = _acc_cell(g)
        cells.loc[v, TASK_NAMES.get(t, t)] = text
        means.loc[v, t] = mean
    for v in variants:
        got = means.loc[v].dropna()
        if len(got) == 0:
            cells.loc[v, "Avg"] = "—"
        else:
            cells.loc[v, "Avg"] = f"{got.mean():.2f}" + ("" if len(got) == len(tasks) else f" ({len(got)}/{len(tasks)})")
    cells = cells.fillna("—")
    return cells, means


def paper_table() -> pd.DataFrame:
    rows = {}
    for name, r in PAPER_TABLE1.items():
        rows[name] = [("FAIL" if r[t] is None else f"{r[t]:.2f}") for t in TASKS] + [f"{r['avg']:.2f}"]
    out = pd.DataFrame.from_dict(rows, orient="index", columns=[TASK_NAMES[t] for t in TASKS] + ["Avg"])
    out.index.name = "model (paper)"
    return out


def gap_table(means: pd.DataFrame) -> pd.DataFrame:
    """Ours minus paper, in accuracy points, per task where both exist, plus their mean."""
    rows = {}
    for v in means.index:
        paper = PAPER_TABLE1.get(PAPER_NAMES.get(v, ""))
        if paper is None:
            continue
        gaps = {}
        for t in means.columns:
            p = paper.get(t)
            ours = means.loc[v, t]
            gaps[TASK_NAMES.get(t, t)] = (ours - p) if (p is not None and np.isfinite(ours)) else np.nan
        vals = [g for g in gaps.values() if np.isfinite(g)]
        gaps["mean gap"] = float(np.mean(vals)) if vals else np.nan
        rows[f"{v} vs {PAPER_NAMES[v]}"] = gaps
    out = pd.DataFrame.from_dict(rows, orient="index")
    if out.empty:
        return out
    out = out.map(lambda g: f"{g:+.2f}" if np.isfinite(g) else "—")
    out.index.name = "variant vs paper"
    return out


# ----------------------------------------------------------------------------------------------
# 2. Speed / memory (LRA Table 2)

def _median_by(df: pd.DataFrame, keys: list[str], value: str) -> pd.DataFrame:
    """Per key: median of ok values of ``value`` and a status ("ok" if any ok, else the failures)."""
    rows = []
    for k, g in df.groupby(keys, dropna=False):
        ok = g[(g["status"] == "ok") & g[value].notna()]
        rows.append(dict(zip(keys, k if isinstance(k, tuple) else (k,)),
                         value=float(ok[value].median()) if len(ok) else np.nan,
                         status="ok" if len(ok) else _fail_label(g["status"])))
    return pd.DataFrame(rows, columns=keys + ["value", "status"])


def speed_source(df: pd.DataFrame, device: str) -> tuple[pd.DataFrame, str]:
    """Rows used for the Table 2 layout on ``device``, and a sentence saying where they come from."""
    d = df[df["device_name"] == device]
    ms = d[(d["kind"] == "bench") & (d["mode"] == "model_step")]
    if len(ms):
        return ms, "bench records, mode `model_step`"
    tr = d[(d["kind"] == "train") & (d["steps_per_s"].notna() | (d["status"] != "ok"))]
    if len(tr):
        return tr, "train records' `steps_per_s` (no `model_step` bench records on this device)"
    return d.iloc[0:0], "no records"


def speed_table(rows: pd.DataFrame, reference: str | None = "full") -> pd.DataFrame:
    """Steps/s and peak memory per variant x length (LRA Table 2 layout).

    ``reference`` given: values relative to that variant at the same length ("2.00×"); a failed
    case shows its status, a length where the reference failed shows "ref <status>".
    ``reference=None``: absolute values (steps/s, MiB).
    The memory columns are left out when no row has a peak memory (CPU runs).
    """
    if rows.empty:
        return pd.DataFrame()
    lengths = sorted(rows["seq_len"].dropna().unique())
    variants = variant_order(rows["variant"].unique())
    speed = _median_by(rows, ["variant", "seq_len"], "steps_per_s").set_index(["variant", "seq_len"])
    mem = _median_by(rows, ["variant", "seq_len"], "peak_mem_mb").set_index(["variant", "seq_len"])
    has_mem = memory_note(rows) is None
    cols = [f"steps/s {length_label(n)}" for n in lengths]
    cols += [f"memory {length_label(n)}" for n in lengths] if has_mem else []
    out = pd.DataFrame(index=pd.Index(variants, name="variant"), columns=cols, dtype=object)
    tables = [(speed, "steps/s", _sig)] + ([(mem, "memory", lambda x: f"{x:,.0f} MiB")] if has_mem else [])
    for table, name, fmt in tables:
        for v in variants:
            for n in lengths:
                col = f"{name} {length_label(n)}"
                if (v, n) not in table.index:
                    out.loc[v, col] = "—"
                    continue
                val, st = table.loc[(v, n), "value"], table.loc[(v, n), "status"]
                if st != "ok" or not np.isfinite(val):
                    out.loc[v, col] = st if st != "ok" else "—"
                elif reference is None:
                    out.loc[v, col] = fmt(val) if name == "memory" else f"{_sig(val)}"
                elif (reference, n) not in table.index:
                    out.loc[v, col] = "—"
                else:
                    ref, rst = table.loc[(reference, n), "value"], table.loc[(reference, n), "status"]
                    out.loc[v, col] = _ratio(val / ref) if (rst == "ok" and ref > 0) else f"ref {rst}"
    return out.fillna("—")


# ----------------------------------------------------------------------------------------------
# 3. Op-level tables

def case_table(rows: pd.DataFrame, value: str, fmt=_sig) -> pd.DataFrame:
    """Median ``value`` per variant (rows) x sequence length (columns); failed cases show status."""
    if rows.empty:
        return pd.DataFrame()
    med = _median_by(rows, ["variant", "seq_len"], value)
    lengths = sorted(med["seq_len"].dropna().unique())
    variants = variant_order(med["variant"].unique())
    out = pd.DataFrame(index=pd.Index(variants, name="variant"),
                       columns=[length_label(n) for n in lengths], dtype=object)
    for r in med.itertuples():
        if not np.isfinite(r.seq_len):
            continue
        out.loc[r.variant, length_label(r.seq_len)] = fmt(r.value) if r.status == "ok" and np.isfinite(r.value) \
            else (r.status if r.status != "ok" else "—")
    return out.fillna("—")


# ----------------------------------------------------------------------------------------------
# 4. Derived numbers

def fit_exponent(seq_lens: Sequence[float], values: Sequence[float]) -> float:
    """Log-log least-squares slope of ``values`` against ``seq_lens`` over the upper half of the lengths.

    Duplicate lengths are reduced to their median; non-finite or non-positive values are ignored.
    The upper half is the largest ``ceil(k/2)`` of the ``k`` usable lengths (at least 2).
    NaN when fewer than two usable lengths.
    """
    s = pd.DataFrame({"n": np.asarray(seq_lens, float), "y": np.asarray(values, float)})
    s = s[np.isfinite(s["n"]) & np.isfinite(s["y"]) & (s["n"] > 0) & (s["y"] > 0)]
    s = s.groupby("n")["y"].median().sort_index()
    if len(s) < 2:
        return float("nan")
    s = s.iloc[-max(2, math.ceil(len(s) / 2)):]
    slope = np.polyfit(np.log(s.index.to_numpy(float)), np.log(s.to_numpy(float)), 1)[0]
    return float(slope)


def crossover_length(times: Mapping[float, float], ref_times: Mapping[float, float]) -> int | None:
    """Smallest measured N from which a variant is faster than the reference at every larger N.

    ``times``/``ref_times`` map sequence length to time; a failed case (OOM, ...) is NaN or inf
    (it counts as infinitely slow). Only lengths measured for both are compared; a length where both
    failed says nothing. Returns None when the variant is not faster at the largest compared length.
    """
    def t(x):
        return float("inf") if x is None or not np.isfinite(x) else float(x)

    common = sorted(set(times) & set(ref_times))
    verdicts = []
    for n in common:
        a, b = t(times[n]), t(ref_times[n])
        if math.isinf(a) and math.isinf(b):
            continue
        verdicts.append((n, a < b))
    cross = None
    for n, below in reversed(verdicts):
        if not below:
            break
        cross = n
    return int(cross) if cross is not None else None


def _series(rows: pd.DataFrame, value: str) -> dict[float, float]:
    med = _median_by(rows, ["seq_len"], value)
    return {float(r.seq_len): r.value for r in med.itertuples() if np.isfinite(r.seq_len)}


def derived_numbers(df: pd.DataFrame, device: str | None = None, mode: str = "op_fwd_bwd",
                    reference: str = "flash") -> pd.DataFrame:
    """Per variant on one device: time and memory exponents, crossover N vs ``reference``, largest N that fit.

    Uses bench records of ``mode`` (time: ``time_ms``). If ``reference`` has no records, ``full``
    is used instead. Columns: variant, time_exponent, memory_exponent, crossover, reference,
    n_max (largest measured N), largest_ok (largest N with status ok); the last three are
    nullable integers (``pd.NA`` = no crossover / nothing measured / nothing fit).
    """
    d = df[(df["kind"] == "bench") & (df["mode"] == mode)]
    if device is not None:
        d = d[d["device_name"] == device]
    cols = ["variant", "time_exponent", "memory_exponent", "crossover", "reference", "n_max", "largest_ok"]
    if d.empty:
        return pd.DataFrame(columns=cols)
    variants = variant_order(d["variant"].unique())
    ref = reference if reference in variants else ("full" if "full" in variants else None)
    ref_times = _series(d[d["variant"] == ref], "time_ms") if ref else {}
    out = []
    for v in variants:
        g = d[d["variant"] == v]
        ok = g[g["status"] == "ok"]
        times = _series(g, "time_ms")
        out.append(dict(
            variant=v,
            time_exponent=fit_exponent(ok["seq_len"], ok["time_ms"]),
            memory_exponent=fit_exponent(ok["seq_len"], ok["peak_mem_mb"]),
            crossover=None if (ref is None or v == ref) else crossover_length(times, ref_times),
            reference=ref,
            n_max=int(g["seq_len"].max()) if g["seq_len"].notna().any() else None,
            largest_ok=int(ok["seq_len"].max()) if ok["seq_len"].notna().any() else None))
    out = pd.DataFrame(out, columns=cols)
    for col in ("crossover", "n_max", "largest_ok"):
        out[col] = out[col].astype("Int64")
    return out


def _derived_display(der: pd.DataFrame) -> pd.DataFrame:
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


# ----------------------------------------------------------------------------------------------
# 8. Compare

def _keyed(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One row per case: mean of ok metrics, aggregated status."""
    d = df.copy()
    for k in keys:
        col = d[k]
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
        row["status"] = "ok" if len(ok) else _fail_label(g["status"])
        for m in metrics:
            row[m] = float(ok[m].mean()) if ok[m].notna().any() else np.nan
        rows.append(row)
    return pd.DataFrame(rows, columns=keys + ["status"] + metrics)


def compare_frames(current: pd.DataFrame, baseline: pd.DataFrame, tolerance: float = 0.05) -> pd.DataFrame:
    """Per matching case and metric: baseline, current, relative change and a regression flag.

    Cases match on :data:`COMPARE_KEYS` (plus ``pattern``). A regression is time/memory up, or
    accuracy/throughput down, by more than ``tolerance`` (a fraction of the baseline value), or a
    case that was ok and now fails. Columns: keys..., metric, baseline, current, change, regression, note.
    """
    current, baseline = normalize(current), normalize(baseline)
    keys = list(COMPARE_KEYS) + ["pattern"]
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


# ----------------------------------------------------------------------------------------------
# 5. Figures

def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    return plt, sns


def _palette(variants: Sequence[str]) -> dict[str, Any]:
    import seaborn as sns

    colors = sns.color_palette("tab10" if len(variants) <= 10 else "tab20", len(variants))
    return dict(zip(variants, colors))


_FORMATS: tuple[str, ...] = ("png", "svg")


def _save(fig, fig_dir: Path, stem: str) -> list[Path]:
    """Save the figure in each of ``_FORMATS`` atomically; returns the paths, first format first."""
    fig_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in _FORMATS:
        path = fig_dir / f"{stem}.{ext}"
        fd, tmp = tempfile.mkstemp(dir=fig_dir, prefix=f".{path.name}.", suffix=".part")
        os.close(fd)
        try:
            fig.savefig(tmp, format=ext, dpi=130, bbox_inches="tight")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        paths.append(path)
    return paths


def _length_axis(ax, lengths: Iterable[float]) -> None:
    from matplotlib.ticker import FixedLocator, FixedFormatter, NullLocator

    lengths = sorted({float(n) for n in lengths if np.isfinite(n)})
    if not lengths:
        return
    ax.set_xscale("log", base=2)
    if len(lengths) > 8:  # thin out: keep every k-th so labels do not collide
        k = math.ceil(len(lengths) / 8)
        lengths = lengths[::k]
    ax.xaxis.set_major_locator(FixedLocator(lengths))
    ax.xaxis.set_major_formatter(FixedFormatter([length_label(n) for n in lengths]))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("sequence length N (tokens, log scale)")


def _log_y(ax) -> None:
    """Log y axis with plain-number tick labels (0.5, 2, 100 rather than 5x10^-1); minor labels on short ranges."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    ax.relim()
    ax.autoscale_view()
    lo, hi = ax.get_ylim()
    plain = FuncFormatter(lambda y, _: f"{y:g}")
    ax.yaxis.set_major_locator(LogLocator(base=10))
    ax.yaxis.set_major_formatter(plain)
    if lo > 0 and hi / lo < 300:  # up to ~2.5 decades: label the 2x and 5x minor ticks too
        ax.yaxis.set_minor_locator(LogLocator(base=10, subs=(2.0, 5.0)))
        ax.yaxis.set_minor_formatter(plain)
        ax.grid(True, which="minor", axis="y", linewidth=0.5, alpha=0.5)
    else:
        ax.yaxis.set_minor_formatter(NullFormatter())


def _ylabel(ax, text: str) -> None:
    """Set the y label, saying "log scale" inside its unit parentheses when the axis is logarithmic."""
    if ax.get_yscale() == "log":
        text = text[:-1] + ", log scale)" if text.endswith(")") else text + " (log scale)"
    ax.set_ylabel(text)


def _legend_outside(ax, title: str | None = None, handles=None, labels=None) -> None:
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    if ax.get_legend() is not None:
        ax.get_legend().remove()
    if handles:
        ax.legend(handles, labels, title=title, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                  borderaxespad=0.0, frameon=False, fontsize="small", title_fontsize="small")


def _exponent(k: float) -> str:
    """Mathtext "∝ N^k" for a legend ("-0.00" printed as "0.00")."""
    k = 0.0 if abs(k) < 0.005 else k
    return rf"$\propto N^{{{k:.2f}}}$"


def coinciding(med: pd.DataFrame, value: str, keys: Sequence[str] = ("seq_len",), rtol: float = 0.02
               ) -> dict[str, str]:
    """Variants whose curve lies on an earlier variant's: ``{later: earlier}``.

    ``med`` has one row per variant and ``keys``; two curves coincide when they have the same points
    and agree within ``rtol`` at each. Lines drawn later cover earlier ones, so a reader needs to be told.
    """
    curves = {v: g.set_index(list(keys))[value].sort_index() for v, g in med.groupby("variant")}
    order = variant_order(curves)
    same: dict[str, str] = {}
    for i, b in enumerate(order):
        for a in order[:i]:
            if a in same:
                continue
            ca, cb = curves[a], curves[b]
            if len(ca) == len(cb) and ca.index.equals(cb.index) and \
                    np.allclose(cb.to_numpy(float), ca.to_numpy(float), rtol=rtol, atol=0.0):
                same[b] = a
                break
    return same


def _overlap_note(same: Mapping[str, str]) -> str:
    if not same:
        return ""
    groups: dict[str, list[str]] = {}
    for b, a in same.items():
        groups.setdefault(a, [a]).append(b)
    return ("Lines drawn on top of each other (equal within 2% at every length): "
            + "; ".join(" = ".join(g) for g in groups.values()) + ".")


#: what a figure function returns: the first-format path (None when not drawn) and a note for the report
FigureResult = tuple[Path | None, str]


def _scaling_figure(rows: pd.DataFrame, value: str, ylabel: str, title: str, palette, fig_dir, stem,
                    fitted: str = "fit over the upper half of N") -> FigureResult:
    """Log-log lines per variant, legend with the fitted exponent; failed lengths marked with x."""
    plt, sns = _plt()
    ok = rows[(rows["status"] == "ok") & rows[value].notna() & rows["seq_len"].notna() & (rows[value] > 0)]
    if ok.empty:
        return None, "no measurement with status ok"
    med = ok.groupby(["variant", "seq_len"], as_index=False)[value].median()
    order = variant_order(med["variant"].unique())
    same = coinciding(med, value)
    labels = {}
    for v, g in ok.groupby("variant"):
        k = fit_exponent(g["seq_len"], g[value])
        labels[v] = f"{v} ({_exponent(k)})" if np.isfinite(k) else f"{v}"
        if v in same:
            labels[v] += f", on top of {same[v]}"
    med["label"] = med["variant"].map(labels)
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    sns.lineplot(data=med, x="seq_len", y=value, hue="label", style="label", markers=True, dashes=False,
                 hue_order=[labels[v] for v in order], style_order=[labels[v] for v in order],
                 palette={labels[v]: palette[v] for v in order}, ax=ax, errorbar=None)
    _log_y(ax)
    # failed cases: an "x" at the top edge of the plot at that length, in the variant's colour
    failed = rows[(rows["status"] != "ok") & rows["seq_len"].notna()]
    if len(failed):
        ylim = ax.get_ylim()
        for v, g in failed.groupby("variant"):
            ax.scatter(g["seq_len"], [ylim[1]] * len(g), marker="X", s=70, color=palette.get(v, "k"),
                       clip_on=False, zorder=5)
        kinds = "/".join(sorted(failed["status"].unique()))
        ax.plot([], [], "kX", linestyle="none", label=f"failed ({kinds}), marked at the top")
        ax.set_ylim(ylim)
    _length_axis(ax, rows["seq_len"])
    _ylabel(ax, ylabel)
    ax.set_title(title, fontsize="medium")
    _legend_outside(ax, f"variant ({fitted})")
    paths = _save(fig, fig_dir, stem)
    plt.close(fig)
    return paths[0], _overlap_note(same)


def _bubble_figure(df, device, palette, fig_dir) -> FigureResult:
    """LRA Figure 3: x training steps/s, y test accuracy, bubble area proportional to peak memory.

    Accuracy and speed come from the same device: speed from ``model_step`` bench records when they cover
    at least two variants with accuracy, else from the train records' ``steps_per_s`` on one task.
    """
    plt, sns = _plt()
    d = df[df["device_name"] == device]
    if not (d["kind"] == "train").any():
        return None, "no train records on this device, so no accuracy"
    _, means = accuracy_table(df, device)
    with_acc = set(means.dropna(how="all").index)
    pts, xlabel, where = None, "", ""
    ms = d[(d["kind"] == "bench") & (d["mode"] == "model_step") & (d["status"] == "ok")
           & d["steps_per_s"].notna() & d["variant"].isin(with_acc)]
    if ms["variant"].nunique() >= 2:
        counts = ms.groupby("seq_len")["variant"].nunique()
        n = max(counts.index, key=lambda x: (counts[x], x))
        at = ms[ms["seq_len"] == n]
        pts = at.groupby("variant")[["steps_per_s", "peak_mem_mb"]].median()
        xlabel = f"training speed (steps/s): bench model step at N = {length_label(n)}"
        where = _setting(at, with_task=True)
    else:
        tr = d[(d["kind"] == "train") & (d["status"] == "ok") & d["steps_per_s"].notna() & d["variant"].isin(with_acc)]
        if len(tr):
            counts = tr.groupby("task")["variant"].nunique()
            task = max(counts.index, key=lambda x: (counts[x], str(x)))
            if counts[task] >= 2:
                at = tr[tr["task"] == task]
                pts = at.groupby("variant")[["steps_per_s", "peak_mem_mb"]].median()
                xlabel = f"training speed (steps/s) on {TASK_NAMES.get(task, task)}, from the train records"
                lengths = at["seq_len"].dropna().unique()
                where = ", ".join(([f"N = {length_label(lengths[0])}"] if len(lengths) == 1 else [])
                                  + ([_setting(at)] if _setting(at) else []))
    if pts is None or len(pts) < 2:
        return None, "fewer than two variants with both an accuracy and a training speed on this device"
    m = means.loc[[v for v in pts.index if v in means.index]]
    common = [t for t in m.columns if m[t].notna().all()]
    if common:
        acc = m[common].mean(axis=1)
        names = [TASK_NAMES.get(t, t) for t in common]
        ylabel = (f"{names[0]} test accuracy (%)" if len(names) == 1
                  else f"test accuracy (%), mean over {', '.join(names)}")
    else:
        acc = m.mean(axis=1, skipna=True)
        ylabel = "test accuracy (%), mean over each variant's tasks"
    pts = pts.loc[acc.dropna().index].reset_index()
    pts["accuracy"] = pts["variant"].map(acc)
    mem_note = memory_note(d[d["variant"].isin(pts["variant"])])
    has_mem = pts["peak_mem_mb"].notna().any()
    mem = pts["peak_mem_mb"].fillna(pts["peak_mem_mb"].median() if has_mem else 1.0)
    area = 1500.0 * mem / mem.max() if has_mem else pd.Series(300.0, index=pts.index)
    fig, ax = plt.subplots(figsize=(7.5, 5))
    ax.scatter(pts["steps_per_s"], pts["accuracy"], s=area.clip(lower=20),
               c=[palette[v] for v in pts["variant"]], alpha=0.55, edgecolors="white", linewidths=1)
    for r, a in zip(pts.itertuples(), area):
        label = r.variant
        if np.isfinite(r.peak_mem_mb):
            label += f"\n{r.peak_mem_mb / 1024:.1f} GiB" if r.peak_mem_mb >= 1024 else f"\n{r.peak_mem_mb:,.0f} MiB"
        ax.annotate(label, (r.steps_per_s, r.accuracy), xytext=(0, math.sqrt(max(a, 20)) / 2 + 3),
                    textcoords="offset points", ha="center", va="bottom", fontsize="small")
    ax.margins(x=0.2, y=0.25)
    x = pts["steps_per_s"]
    if x.max() / x.min() > 10:
        ax.set_xscale("log")
        xlabel = xlabel.replace("(steps/s)", "(steps/s, log scale)")
    else:  # from zero: a 0.1% difference must not fill the plot
        ax.set_xlim(0, x.max() * 1.25)
    lo, hi = ax.get_ylim()
    if hi - lo < 5:  # at least 5 accuracy points tall, for the same reason
        mid = (hi + lo) / 2
        ax.set_ylim(mid - 2.5, mid + 2.5)
    ax.set_xlabel(xlabel + (f"\n({where})" if where else ""))
    ax.set_ylabel(ylabel)
    size = "bubble area proportional to peak memory" if has_mem else \
        f"equal bubbles: {mem_note or 'peak memory not recorded'}"
    ax.set_title(f"{device}: accuracy vs training speed (LRA Fig. 3 layout)\n{size}", fontsize="medium")
    paths = _save(fig, fig_dir, f"bubble_{_slug(device)}")
    plt.close(fig)
    return paths[0], ""


def _exactness_figure(rows, device, palette, fig_dir, stem) -> FigureResult:
    """Relative error vs length, one panel per input pattern."""
    plt, sns = _plt()
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
                     hue_order=present, style_order=present, palette={labels[v]: palette[v] for v in order},
                     ax=ax, errorbar=None)
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
        if ax.get_legend() is not None:
            ax.get_legend().remove()
        if (med["approx_error"] > 0).all():
            _log_y(ax)
        _length_axis(ax, g["seq_len"])
        ax.set_title(f"inputs: {pat}", fontsize="medium")
        ax.set_ylabel("")
        ax.set_xlabel("")
    _ylabel(axes[0][0], "relative error vs exact softmax")
    order_labels = [labels[v] for v in order if labels[v] in handles]
    _legend_outside(axes[0][-1], "variant", [handles[lab] for lab in order_labels], order_labels)
    setting = _setting(ok)
    fig.suptitle(f"{device}: approximation error vs length\n"
                 r"relative error $\|out - exact\|_F \,/\, \|exact\|_F$" + (f", {setting}" if setting else ""),
                 fontsize="medium")
    fig.supxlabel("sequence length N (tokens, log scale)", fontsize="medium")
    fig.tight_layout()
    paths = _save(fig, fig_dir, stem)
    plt.close(fig)
    return paths[0], _overlap_note(same)


def _cross_device_figure(df, palette, fig_dir) -> FigureResult:
    """Bars per device for the same variant and length: op time and peak memory (or model steps/s)."""
    plt, sns = _plt()
    b = df[(df["kind"] == "bench") & (df["status"] == "ok")]
    for mode, value, ylabel in (("op_fwd_bwd", "time_ms", "time per call (ms)"),
                                ("op_fwd", "time_ms", "time per call (ms)"),
                                ("model_step", "steps_per_s", "training speed (steps/s)")):
        d = b[(b["mode"] == mode) & b[value].notna() & b["seq_len"].notna()]
        if d["device_name"].nunique() < 2:
            continue
        # only (variant, length) cases measured on two or more devices
        ndev = d.groupby(["variant", "seq_len"])["device_name"].transform("nunique")
        d = d[ndev >= 2]
        if d.empty:
            continue
        # the largest length with the most variants measured on several devices
        counts = d.groupby("seq_len")["variant"].nunique()
        n = max(counts.index, key=lambda x: (counts[x], x))
        s = d[d["seq_len"] == n].copy()
        settings = {dev: _setting(g) for dev, g in s.groupby("device_name")}
        s["device"] = s["device_name"].map(lambda x: f"{x} ({settings[x]})" if settings[x] else x)
        med = s.groupby(["variant", "device"], as_index=False)[[value, "peak_mem_mb"]].median()
        order = variant_order(med["variant"].unique())
        panels = [(value, ylabel)] + ([("peak_mem_mb", "peak memory (MiB)")] if med["peak_mem_mb"].notna().any() else [])
        fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), squeeze=False)
        for ax, (col, lab) in zip(axes[0], panels):
            sns.barplot(data=med, x="variant", y=col, hue="device", order=order, ax=ax, errorbar=None)
            vals = med[col].dropna()
            if len(vals) and (vals > 0).all() and vals.max() / vals.min() > 20:
                _log_y(ax)
            _ylabel(ax, lab)
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
        paths = _save(fig, fig_dir, f"cross_device_{mode}")
        plt.close(fig)
        return paths[0], ("" if "peak_mem_mb" in dict(panels) else
                          "No memory panel: " + (memory_note(s) or "no peak memory recorded") + ".")
    return None, ("records come from several devices, but no benchmark case (mode, variant, length) was "
                  "measured on more than one of them")


def make_figures(df: pd.DataFrame, out_dir: Path, formats: Sequence[str] = ("png", "svg")
                 ) -> dict[str, list[tuple[str, Path | None, str]]]:
    """All figures, grouped by section title.

    Returns ``{section: [(caption, first-format path or None, note), ...]}``; a None path means the
    figure was not drawn and ``note`` says why (e.g. memory not measured on CPU).
    """
    global _FORMATS
    _FORMATS = tuple(formats)
    fig_dir = Path(out_dir) / "figures"
    palette = _palette(variant_order(df["variant"].unique()))
    figs: dict[str, list[tuple[str, Path | None, str]]] = {}

    def add(section, caption, result: FigureResult):
        path, note = result
        figs.setdefault(section, []).append((caption, path, note))

    for dev in _devices(df):
        d = df[(df["device_name"] == dev) & (df["kind"] == "bench")]
        sec = f"Device: {dev}"
        slug = _slug(dev)
        if d.empty:
            add(sec, "time and memory vs length, approximation error, smoothness",
                (None, "no `lra-bench` records from this device; `lra-bench` measures them"))
        for mode in OP_MODES:
            for suffix, rows in _settings(d[d["mode"] == mode]):
                if rows.empty:
                    continue
                setting = _setting(rows)
                what = f"{MODE_NAMES[mode]}" + (f" ({setting})" if suffix else "")
                sub = f"\n{setting}" if setting else ""
                add(sec, f"time vs length, attention {what}",
                    _scaling_figure(rows, "time_ms", "time per call (ms)",
                                    f"{dev}: attention {MODE_NAMES[mode]} time per call{sub}", palette, fig_dir,
                                    f"time_{mode}_{slug}{suffix}"))
                note = memory_note(rows)
                add(sec, f"peak memory vs length, attention {what}",
                    (None, note) if note else
                    _scaling_figure(rows, "peak_mem_mb", "peak memory (MiB)",
                                    f"{dev}: attention {MODE_NAMES[mode]} peak memory{sub}", palette, fig_dir,
                                    f"memory_{mode}_{slug}{suffix}"))
        ms = d[(d["mode"] == "model_step") & d["steps_per_s"].notna()].copy()
        for suffix, rows in _settings(ms):
            if rows.empty:
                continue
            rows = rows.assign(ms_per_step=1000.0 / rows["steps_per_s"])
            setting = _setting(rows, with_task=True)
            add(sec, "model training step time vs length" + (f" ({setting})" if suffix else ""),
                _scaling_figure(rows, "ms_per_step", "time per training step (ms)",
                                f"{dev}: one training step of the encoder" + (f"\n{setting}" if setting else ""),
                                palette, fig_dir, f"time_model_step_{slug}{suffix}"))
        if (df[df["device_name"] == dev]["kind"] == "train").any():
            add(sec, "accuracy vs speed vs memory (LRA Figure 3 layout)", _bubble_figure(df, dev, palette, fig_dir))
        for suffix, rows in _settings(d[d["mode"] == "exactness"]):
            if len(rows):
                add(sec, "approximation error vs length",
                    _exactness_figure(rows, dev, palette, fig_dir, f"approx_error_{slug}{suffix}"))
        for suffix, rows in _settings(d[d["mode"] == "smoothness"]):
            if len(rows):
                setting = _setting(rows)
                add(sec, "smoothness (Lipschitz estimate) vs length",
                    _scaling_figure(rows, "lipschitz", "Lipschitz estimate",
                                    f"{dev}: smoothness, Lipschitz estimate (Jacobian spectral norm)"
                                    + (f"\n{setting}" if setting else ""),
                                    palette, fig_dir, f"smoothness_{slug}{suffix}"))
    if df["device_name"].nunique() > 1:
        add("Across devices", "same variant and length on each device", _cross_device_figure(df, palette, fig_dir))
    return figs


# ----------------------------------------------------------------------------------------------
# The report

def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _Doc:
    """Collects markdown and HTML side by side."""

    def __init__(self):
        self.md: list[str] = []
        self.html: list[str] = []

    def h(self, level: int, text: str):
        self.md.append("#" * level + " " + text + "\n")
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def p(self, text: str):
        self.md.append(text + "\n")
        self.html.append(f"<p>{html.escape(text)}</p>")

    def table(self, df: pd.DataFrame, index: bool = True, left: Iterable[str] = ()):
        if df is None or df.empty:
            self.p("No records.")
            return
        self.md.append(markdown_table(df, index=index, left=left) + "\n")
        self.html.append(df.to_html(index=index, na_rep="—", border=0))

    def image(self, caption: str, path: Path, out_dir: Path):
        rel = path.relative_to(out_dir).as_posix()
        self.md.append(f"![{caption}]({rel})\n")
        self.html.append(f'<figure><img src="{html.escape(rel)}" alt="{html.escape(caption)}">'
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _first_line(msg: Any, limit: int = 140) -> str:
    if msg is None or (isinstance(msg, float) and np.isnan(msg)):
        return ""
    line = str(msg).strip().splitlines()[0] if str(msg).strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _section_accuracy(doc: _Doc, df: pd.DataFrame):
    doc.h(2, "1. Accuracy (LRA Table 1 layout)")
    tr = df[df["kind"] == "train"]
    doc.p("Test accuracy in %, mean ± sample std over seeds where several. A failed run shows its status "
          "(oom, nan, error); \"—\" = not run. Avg is over tasks with a result (count shown when not all).")
    if tr.empty:
        doc.p("No records (no `train` records).")
    recipes = sorted(tr["recipe"].dropna().unique(), key=lambda r: (r != "lra", r))
    if len(recipes) > 1:
        doc.p("Runs of different recipes (`recipe=`: model size and optimizer settings; `lra` = the paper's) "
              "are tabulated separately.")
    for dev, recipe in ((d, r) for d in _devices(tr) for r in recipes):
        rows = df[(df["kind"] != "train") | (df["recipe"] == recipe)]
        if tr[(tr["device_name"] == dev) & (tr["recipe"] == recipe)].empty:
            continue
        doc.h(3, f"Device: {dev}" + (f", recipe: {recipe}" if len(recipes) > 1 or recipe != "lra" else ""))
        cells, means = accuracy_table(rows, dev)
        doc.table(cells)
        gap = gap_table(means)
        if not gap.empty:
            doc.p(f"Gap vs paper (ours − published, accuracy points; `flash` computes the same function as "
                  f"`full` and is compared with the paper's Transformer):")
            doc.table(gap)
            d = tr[(tr["device_name"] == dev) & (tr["recipe"] == recipe) & tr["seq_len"].notna()]
            other = sorted({(t, int(n)) for t, n in zip(d["task"], d["seq_len"])
                            if t in PAPER_LENGTHS and int(n) != PAPER_LENGTHS[t]}, key=lambda x: TASKS.index(x[0]))
            if other:
                doc.p("Caution: " + ", ".join(f"{TASK_NAMES[t]} ran at N = {n:,} (the paper: {PAPER_LENGTHS[t]:,})"
                                              for t, n in other)
                      + "; such runs (e.g. `trainer=quick`) solve a different problem, so their gaps say little.")
    doc.h(3, "Published numbers")
    doc.p(f"From {PAPER_CITATION}. FAIL = the paper reports no better-than-chance result.")
    doc.table(paper_table())


def _section_speed(doc: _Doc, df: pd.DataFrame):
    doc.h(2, "2. Speed and memory (LRA Table 2 layout)")
    devs = [d for d in _devices(df) if not speed_source(df, d)[0].empty]
    if not devs:
        doc.p("No records (no `model_step` bench records and no train records with `steps_per_s`).")
    for dev in devs:
        rows, source = speed_source(df, dev)
        doc.h(3, f"Device: {dev}")
        doc.p(f"Source: {source}. Steps per second (higher is better) and peak memory (lower is better).")
        unplaced = rows["seq_len"].isna()
        if unplaced.any():  # e.g. a job that failed before its shape was known: no column to put it in
            doc.p(f"{int(unplaced.sum())} record(s) without a sequence length are left out here "
                  f"(failed: see section 6).")
            rows = rows[~unplaced]
        groups = rows.groupby([rows["task"].astype(object).fillna("—"), rows["dtype"].astype(object).fillna("—"),
                               rows["batch_size"].fillna(-1)], sort=True)
        for (task, dtype, bs), g in groups:
            setting = ", ".join(x for x in (f"task {task}" if task != "—" else "",
                                            f"dtype {dtype}" if dtype != "—" else "",
                                            f"batch {int(bs)}" if bs != -1 else "") if x)
            prefix = f"{setting}: " if setting else ""
            variants = set(g["variant"])
            note = memory_note(g)
            if note:
                doc.p(f"{prefix}{note}, so the tables show speed only.")
            for ref in ("full", "flash"):
                if ref in variants and len(variants) > 1:
                    doc.p(f"{prefix}relative to `{ref}` at the same length (ratio of steps/s"
                          + ("" if note else " and of peak memory") + "):")
                    doc.table(speed_table(g, ref))
                elif ref in variants:
                    doc.p(f"{prefix}only `{ref}` here, so no table relative to it.")
                else:
                    doc.p(f"{prefix}no `{ref}` records, so no table relative to it.")
            doc.p(f"{prefix}absolute values (" + ("steps/s" if note else "steps/s, peak memory in MiB") + "):")
            doc.table(speed_table(g, None))
    _subsection_overhead(doc, df)


OVERHEAD_COLUMNS = (("ms_model_fwd_bwd", "fwd+bwd (ms)"), ("ms_model_fwd_bwd_opt", "+ clip + AdamW (ms)"),
                    ("ms_train_step", "lra-train step (ms)"), ("overhead_pct", "overhead (%)"),
                    ("optimizer_pct", "of which optimizer (%)"), ("loop_pct", "of which loop (%)"))


def overhead_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per ``train_overhead`` bench record: the three per-step times and the overhead."""
    out = []
    for _, r in rows.sort_values(["variant", "seq_len"]).iterrows():
        row = {"variant": r["variant"], "task": r.get("task"), "N": _int_or_dash(r.get("seq_len")),
               "batch": _int_or_dash(r.get("batch_size")), "dtype": r.get("dtype")}
        for col, label in OVERHEAD_COLUMNS:
            value = r.get(col)
            row[label] = "—" if r["status"] != "ok" or value is None or pd.isna(value) else (
                f"{value:+.1f}" if col.endswith("_pct") else _sig(value))
        row["status"] = r["status"]
        out.append(row)
    return pd.DataFrame(out)


def _int_or_dash(x) -> str:
    return "—" if x is None or pd.isna(x) else f"{int(x)}"


def _subsection_overhead(doc: _Doc, df: pd.DataFrame):
    if "mode" not in df:
        return
    d = df[(df["kind"] == "bench") & (df["mode"] == "train_overhead")]
    if d.empty:
        return
    doc.h(3, "Training-loop overhead")
    doc.p("`lra-bench modes=[train_overhead]`: milliseconds per step of the model's forward+backward alone "
          "on one fixed on-device batch, of forward+backward+gradient clipping+AdamW, and of the real "
          "`lra-train` step (`lra.train.TrainStep`: batch fetch, autocast, loss, backward, clip, AdamW, "
          "schedule, on-device NaN bookkeeping, one host sync per `log_every` steps). Overhead = "
          "train step / forward+backward − 1, split into the optimizer's share and the rest of the loop.")
    for dev in _devices(d):
        doc.p(f"Device: {dev}")
        doc.table(overhead_table(d[d["device_name"] == dev]), index=False, left=("variant", "task", "dtype", "status"))


def _section_ops(doc: _Doc, df: pd.DataFrame):
    doc.h(2, "3. Op-level benchmarks")
    b = df[df["kind"] == "bench"]
    any_rows = False
    for dev in _devices(b):
        d = b[b["device_name"] == dev]
        parts = []
        for mode in OP_MODES:
            rows = d[d["mode"] == mode]
            if rows.empty:
                continue
            setting = _setting(rows)
            shape = f", {setting}" if setting else ""
            parts.append((f"{MODE_NAMES[mode]} (`{mode}`{shape}): time per call (ms, median)",
                          case_table(rows, "time_ms")))
            note = memory_note(rows)
            if note is None:
                parts.append((f"{MODE_NAMES[mode]} (`{mode}`): peak memory (MiB)",
                              case_table(rows, "peak_mem_mb", lambda x: f"{x:,.0f}")))
            else:
                parts.append((f"{MODE_NAMES[mode]} (`{mode}`): {note}", None))
            if rows["tflops"].notna().any():
                tf = case_table(rows, "tflops")
                tf = tf[(tf != "—").any(axis=1)]
                parts.append((f"{MODE_NAMES[mode]} (`{mode}`): TFLOP/s", tf))
            if rows["tflops_fraction"].notna().any():
                fr = case_table(rows, "tflops_fraction", lambda x: f"{100 * x:.1f}%")
                parts.append((f"{MODE_NAMES[mode]} (`{mode}`): fraction of the device's peak FLOP/s",
                              fr[(fr != "—").any(axis=1)]))
        ex = d[d["mode"] == "exactness"]
        if len(ex):
            for pat, g in ex.groupby(ex["pattern"].astype(object).fillna("—")):
                parts.append((f"approximation error vs exact softmax attention (‖out − exact‖_F / ‖exact‖_F), "
                              f"inputs `{pat}`",
                              case_table(g, "approx_error", lambda x: f"{x:.3g}")))
        sm = d[d["mode"] == "smoothness"]
        if len(sm):
            parts.append(("smoothness: Lipschitz constant estimate (spectral norm of the attention map's Jacobian)",
                          case_table(sm, "lipschitz", lambda x: f"{x:.3g}")))
        if parts:
            any_rows = True
            doc.h(3, f"Device: {dev}")
            for caption, table in parts:
                if table is None:
                    doc.p(caption + ".")
                    continue
                doc.p(caption + ":")
                doc.table(table)
    if not any_rows:
        doc.p("No records (no op-level, exactness or smoothness bench records).")


def _section_derived(doc: _Doc, df: pd.DataFrame, mode: str = "op_fwd_bwd"):
    doc.h(2, "4. Derived numbers")
    b = df[df["kind"] == "bench"]
    if not (b["mode"] == mode).any() and (b["mode"] == "op_fwd").any():
        mode = "op_fwd"
    doc.p(f"From `{mode}` bench records. Exponent k: log-log least-squares slope of time (or peak memory) "
          f"against N over the upper half of the lengths with status ok. Crossover: the smallest N from which "
          f"the variant's time per call is below the reference's at every larger measured N (a failed reference "
          f"counts as slower).")
    devs = [d for d in _devices(b) if ((b["device_name"] == d) & (b["mode"] == mode)).any()]
    if not devs:
        doc.p("No records.")
    for dev in devs:
        doc.h(3, f"Device: {dev}")
        table = _derived_display(derived_numbers(df, dev, mode))
        note = memory_note(b[(b["device_name"] == dev) & (b["mode"] == mode)])
        if note:
            table = table.drop(columns=["memory ~ N^k"])
            doc.p(f"No memory exponent: {note}.")
        doc.table(table)


def _section_failures(doc: _Doc, df: pd.DataFrame):
    doc.h(2, "6. Failed cases")
    bad = df[df["status"] != "ok"]
    if bad.empty:
        doc.p("None: every record has status ok.")
        return
    what = bad["task"].astype(object).where(bad["kind"] == "train", bad["mode"])
    out = pd.DataFrame({
        "kind": bad["kind"], "device": bad["device_name"], "variant": bad["variant"],
        "task / mode": what.fillna("—"),
        "N": bad["seq_len"].map(lambda x: str(int(x)) if np.isfinite(x) else "—"),
        "seed": bad["seed"].map(lambda x: str(int(x)) if np.isfinite(x) else "—"),
        "batch": bad["batch_size"].map(lambda x: str(int(x)) if np.isfinite(x) else "—"),
        "status": bad["status"], "message": bad["message"].map(_first_line),
    }).sort_values(["kind", "device", "variant", "task / mode", "N"], kind="stable")
    doc.p(f"{len(out)} record(s) not ok.")
    doc.table(out, index=False, left=("kind", "device", "variant", "task / mode", "status", "message"))


def _section_provenance(doc: _Doc, df: pd.DataFrame, inputs: Sequence[Path], skipped: Sequence[Path] = ()):
    doc.h(2, "7. Provenance")
    doc.p("Inputs: " + ", ".join(f"`{p}`" for p in inputs) + f" ({len(df)} record{'s' if len(df) != 1 else ''}).")
    if skipped:
        shown = ", ".join(f"`{p}`" for p in skipped[:20])
        shown += f" and {len(skipped) - 20} more" if len(skipped) > 20 else ""
        doc.p(f"Skipped {len(skipped)} JSON file(s) that are not result records (no `schema` and `kind` keys, "
              f"or not valid JSON): {shown}.")
    if df.empty:
        return
    devs = df.groupby("device_name", dropna=False).agg(
        type=("device_type", lambda s: ", ".join(sorted({str(x) for x in s.dropna()})) or "—"),
        count=("device_count", lambda s: ", ".join(sorted({str(int(x)) for x in s.dropna()})) or "—"),
        memory=("device_memory_mb", lambda s: ", ".join(sorted({f"{int(x):,}" for x in s.dropna()})) or "—"),
        records=("kind", "size"))
    devs.index.name = "device"
    devs.columns = ["type", "devices (GPUs) / cores (CPU)", "memory (MiB)", "records"]
    doc.table(devs, left=("type",))

    def uniq(col):
        s = df[col].dropna().astype(str)
        if s.empty:
            return "—"
        vc = s.value_counts()
        return ", ".join(f"`{k}` ({v})" for k, v in vc.items())

    t0 = df["started_at"].min() if df["started_at"].notna().any() else df["finished_at"].min()
    t1 = df["finished_at"].max()
    fmt = lambda t: t.strftime("%Y-%m-%d %H:%M UTC") if pd.notna(t) else "—"  # noqa: E731
    doc.p(f"torch: {uniq('versions_torch')}. CUDA: {uniq('versions_cuda')}.")
    doc.p(f"git commits: {uniq('git_commit')}.")
    doc.p(f"Records span {fmt(t0)} to {fmt(t1)}.")


def _section_compare(doc: _Doc, df: pd.DataFrame, compare: Path | None, tolerance: float,
                     out_dir: Path) -> pd.DataFrame | None:
    doc.h(2, "8. Comparison with baseline")
    if compare is None:
        doc.p("No baseline given (`--compare DIR_OR_CSV`).")
        return None
    base = load_frame([compare])
    cmp = compare_frames(df, base, tolerance)
    _atomic_write_text(out_dir / "compare.csv", cmp.to_csv(index=False))
    nreg = int(cmp["regression"].sum()) if len(cmp) else 0
    doc.p(f"Baseline: `{compare}` ({len(base)} records). Tolerance {tolerance:.0%}: a regression is time or "
          f"memory up, or accuracy/throughput down, by more than that fraction of the baseline, or a case that "
          f"was ok and now fails. **{nreg} regression(s)** in {len(cmp)} compared (case, metric) pairs; "
          f"all pairs in `compare.csv`.")
    if cmp.empty:
        doc.p("No matching cases.")
        return cmp
    show = cmp[(cmp["note"] != "") | cmp["regression"]]
    if show.empty:
        doc.p("No case changed by more than the tolerance.")
        return cmp
    if len(show) < len(cmp):
        doc.p(f"Showing the {len(show)} pair(s) that changed by more than the tolerance.")
    if len(show) > 300:
        show = show.head(300)
        doc.p("(first 300 shown)")

    def val(x):
        return x if isinstance(x, str) else _sig(x, 4)

    table = pd.DataFrame({
        "kind": show["kind"], "device": show["device_name"], "variant": show["variant"],
        "task / mode": [t or m or "—" for t, m in zip(show["task"], show["mode"])] if len(show) else [],
        "N": show["seq_len"], "batch": show["batch_size"], "dtype": show["dtype"], "metric": show["metric"],
        "baseline": show["baseline"].map(val), "current": show["current"].map(val),
        "change": show["change"].map(lambda c: f"{c:+.1%}" if isinstance(c, float) and np.isfinite(c) else "—"),
        "flag": [("⚠ " if r else "") + n for r, n in zip(show["regression"], show["note"])],
    })
    doc.table(table, index=False, left=("kind", "device", "variant", "task / mode", "dtype", "metric", "flag"))
    return cmp


def rebuild_command(inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, name: str = "report.md",
                    compare: str | os.PathLike | None = None, tolerance: float = 0.05,
                    figures: bool = True) -> str:
    """The ``lra-report`` command line that builds this report again (paths as they were given)."""
    words = ["lra-report", *(str(p) for p in inputs), f"out={out_dir}"]
    if name != "report.md":
        words.append(f"name={name}")
    if compare is not None:
        words += [f"compare={compare}", f"tolerance={tolerance:g}"]
    if not figures:
        words.append("--no-figures")
    return " ".join(shlex.quote(w) for w in words)


def build_report(inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                 compare: str | os.PathLike | None = None, tolerance: float = 0.05, *,
                 figure_formats: Sequence[str] = ("png", "svg"), name: str = "report.md",
                 command: str | None = None) -> Path:
    """Build ``name`` (default ``report.md``; + the same name as ``.html``, ``tidy.csv``, ``figures/``) in
    ``out_dir``; return the markdown file's path.

    ``inputs``: record files/directories (searched recursively for ``*.json``) or tidy CSVs. ``out_dir`` may
    lie inside an input folder (``lra-report results out=results name=REPORT.md``): only ``*.json``
    files are read as records there, so the report's own CSV is never read back.
    ``compare``: a baseline (records dir, a previous report dir, or its ``tidy.csv``); regressions beyond
    ``tolerance`` (fraction) are flagged in section 8 and listed in ``compare.csv``.
    ``figure_formats``: file types for each figure (PNG is linked from the report; ``()`` = no figures).
    Figures are linked by paths relative to ``out_dir`` (they render on GitHub); figure files left in
    ``out_dir/figures`` by an earlier build and not drawn again are removed.
    ``command``: the rebuild command printed at the top (default: :func:`rebuild_command`).
    """
    if Path(name).name != name or not name:
        raise ValueError(f"name must be a file name without folders, got {name!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    inputs = [Path(p) for p in ([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs)]
    skipped: list[Path] = []
    df = load_frame(inputs, skipped)
    _atomic_write_text(out_dir / "tidy.csv", tidy(df).to_csv(index=False))
    if command is None:
        command = rebuild_command(inputs, out_dir, name, compare, tolerance, bool(figure_formats))

    doc = _Doc()
    doc.h(1, "lra-bench report")
    doc.p(f"Rebuild this file, its figures and `tidy.csv` with `{command}`.")
    if df.empty:
        doc.p("No records found in the inputs.")
    else:
        kinds = df["kind"].value_counts()
        doc.p(f"{len(df)} record{'s' if len(df) != 1 else ''} "
              f"({kinds.get('train', 0)} train, {kinds.get('bench', 0)} bench) from "
              f"{df['device_name'].nunique()} device(s): {', '.join(_devices(df))}. "
              f"{int((df['status'] != 'ok').sum())} not ok (section 6). Tidy data: [`tidy.csv`](tidy.csv).")
    doc.p("Sections: 1. Accuracy · 2. Speed and memory · 3. Op-level benchmarks · 4. Derived numbers · "
          "5. Figures · 6. Failed cases · 7. Provenance · 8. Comparison with baseline")
    _section_accuracy(doc, df)
    _section_speed(doc, df)
    _section_ops(doc, df)
    _section_derived(doc, df)
    doc.h(2, "5. Figures")
    figs = make_figures(df, out_dir, figure_formats) if (not df.empty and figure_formats) else {}
    if not figs:
        doc.p("No figures (no records, or figures turned off)." if df.empty or not figure_formats
              else "No records to plot.")
    drawn: set[Path] = set()
    for section, items in figs.items():
        doc.h(3, section)
        for caption, path, note in items:
            if path is None:
                doc.p(f"*{caption[0].upper() + caption[1:]}: not drawn ({note}).*")
                continue
            drawn.update(path.with_suffix(f".{ext}") for ext in figure_formats)
            doc.image(caption, path, out_dir)
            if note:
                doc.p(f"*{note}*")
    fig_dir = out_dir / "figures"
    if figure_formats and fig_dir.is_dir():  # figures of an earlier build that this one did not draw would mislead
        for stale in fig_dir.iterdir():
            if stale.suffix in (".png", ".svg") and stale not in drawn:
                stale.unlink()
    _section_failures(doc, df)
    _section_provenance(doc, df, inputs, skipped)
    cmp = _section_compare(doc, df, Path(compare) if compare is not None else None, tolerance, out_dir)
    if cmp is not None and len(cmp) and cmp["regression"].any():
        # surface regressions at the top as well
        doc.md.insert(2, f"**⚠ {int(cmp['regression'].sum())} regression(s) against the baseline "
                         f"(section 8).**\n")
    md_path = out_dir / name
    _atomic_write_text(md_path, "\n".join(doc.md))
    _atomic_write_text(md_path.with_suffix(".html"),
                       "<!doctype html><html><head><meta charset='utf-8'><title>lra-bench report</title>"
                       "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}"
                       "table{border-collapse:collapse;margin:8px 0}td,th{padding:2px 8px;border-bottom:1px solid #ddd;"
                       "text-align:right}img{max-width:100%}</style></head><body>\n"
                       + "\n".join(doc.html) + "\n</body></html>\n")
    return md_path


def main(argv: Sequence[str] | None = None) -> int:
    """``lra-report [inputs...] out=DIR [name=report.md] [compare=BASELINE] [tolerance=0.05]``.

    ``--out DIR`` etc. work too. The committed report: ``lra-report results out=results name=REPORT.md``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    # Hydra-style key=value arguments, as the other lra-* commands take them
    argv = [a for arg in argv for a in (
        [f"--{arg.split('=', 1)[0].replace('_', '-')}", arg.split("=", 1)[1]]
        if "=" in arg and not arg.startswith("-") and arg.split("=", 1)[0] in ("out", "name", "compare", "tolerance")
        else [arg])]
    ap = argparse.ArgumentParser(prog="lra-report",
                                 description="Build a markdown report, figures and a tidy CSV from result records.")
    ap.add_argument("inputs", nargs="*", default=["results"],
                    help="record files or directories (searched recursively), or tidy CSVs (default: results)")
    ap.add_argument("--out", default="report", help="output directory (default: report)")
    ap.add_argument("--name", default="report.md",
                    help="file name of the markdown report in the output directory (default: report.md; "
                         "the committed one: REPORT.md); the HTML copy gets the same stem")
    ap.add_argument("--compare", default=None, help="baseline: records dir, previous report dir, or tidy.csv")
    ap.add_argument("--tolerance", type=float, default=0.05,
                    help="regression threshold as a fraction of the baseline value (default 0.05)")
    ap.add_argument("--no-figures", action="store_true", help="tables only (figures are the slow part)")
    ap.add_argument("--fail-on-regression", action="store_true",
                    help="exit with status 1 if the comparison flags a regression")
    args = ap.parse_args(argv)
    try:
        path = build_report(args.inputs, args.out, args.compare, args.tolerance,
                            figure_formats=() if args.no_figures else ("png", "svg"), name=args.name,
                            command=rebuild_command(args.inputs, args.out, args.name, args.compare,
                                                    args.tolerance, not args.no_figures))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    if args.fail_on_regression and args.compare is not None:
        cmp = pd.read_csv(Path(args.out) / "compare.csv")
        if len(cmp) and cmp["regression"].astype(bool).any():
            print(f"{int(cmp['regression'].astype(bool).sum())} regression(s); see {path}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
