"""Evidence tables: DataFrame of records in, DataFrame of display strings out. No I/O.

Each function takes the frame of :func:`lra.report.frame.load_frame` (or a slice of it) and returns
a small frame whose cells are the strings the report prints, so each can be tested on a frame
built in the test. Failed cases show their status (oom, nan, error), never a blank or a zero.
Times carry their spread over the timed calls where the records have it, and a
:data:`~lra.report.labels.LOADED_MARK` where the host was loaded.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from .labels import (LOADED_MARK, NOT_RUN, TASK_NAMES, fail_label, first_line, int_or_dash, length_label,
                     memory_note, ratio, sig, task_order, variant_order)
from .paper import PAPER_NAMES, PAPER_TABLE1


#: record values a loaded host cannot change (memory, errors, attention-weight measures): never load-marked
LOAD_FREE = ("peak_mem_mb", "approx_error", "approx_error_init", "entropy", "softmax_entropy", "monotonicity",
             "weight_kl")


def median_by(df: pd.DataFrame, keys: list[str], value: str, lo: str | None = None,
              hi: str | None = None) -> pd.DataFrame:
    """Per key: the median of the ok values of ``value``, a status ("ok" if any ok, else the failures),
    ``lo``/``hi`` (the lowest ``lo`` and highest ``hi`` of the ok rows: the widest spread recorded) and
    ``loaded`` (any ok row measured on a loaded host, for values the load can change: not
    :data:`LOAD_FREE`). Columns: keys..., value, status, lo, hi, loaded."""
    rows = []
    for k, g in df.groupby(keys, dropna=False):
        ok = g[(g["status"] == "ok") & g[value].notna()]
        rows.append(dict(zip(keys, k if isinstance(k, tuple) else (k,)),
                         value=float(ok[value].median()) if len(ok) else np.nan,
                         status="ok" if len(ok) else fail_label(g["status"]),
                         lo=float(ok[lo].min()) if lo and ok[lo].notna().any() else np.nan,
                         hi=float(ok[hi].max()) if hi and ok[hi].notna().any() else np.nan,
                         loaded=value not in LOAD_FREE and was_loaded(ok)))
    return pd.DataFrame(rows, columns=keys + ["value", "status", "lo", "hi", "loaded"])


def was_loaded(rows: pd.DataFrame) -> bool:
    """Whether any of ``rows`` was measured on a loaded host (``host_loaded`` True; unknown counts as no)."""
    return bool(rows["host_loaded"].fillna(False).astype(bool).any()) if "host_loaded" in rows else False


def cell(r, fmt: Callable[[float], str] = sig, spread: bool = False) -> str:
    """One table cell from a :func:`median_by` row: value (lo–hi), a loaded mark, or the failure status."""
    if r.status != "ok" or not np.isfinite(r.value):
        return r.status if r.status != "ok" else "not measured"
    text = fmt(r.value)
    if spread and np.isfinite(r.lo) and np.isfinite(r.hi):
        text += f" ({fmt(r.lo)}–{fmt(r.hi)})"
    return text + (LOADED_MARK if r.loaded else "")


# ---------------------------------------------------------------------------------------------- accuracy

def _acc_cell(group: pd.DataFrame) -> tuple[str, float]:
    ok = group[(group["status"] == "ok") & group["accuracy"].notna()]
    failed = group[group["status"] != "ok"]
    if ok.empty:
        return (fail_label(failed["status"]) if len(failed) else NOT_RUN), np.nan
    vals = ok["accuracy"].to_numpy(float) * 100
    mean = float(vals.mean())
    text = f"{mean:.2f}" + (f" ± {vals.std(ddof=1):.2f}" if len(vals) > 1 else "")
    if len(failed):
        text += f" (+{len(failed)} {fail_label(failed['status'])})"
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
        cells.loc[v, "Avg"] = "no result" if len(got) == 0 else \
            f"{got.mean():.2f}" + ("" if len(got) == len(tasks) else f" ({len(got)}/{len(tasks)})")
    return cells.fillna(NOT_RUN), means


def gap_table(means: pd.DataFrame) -> pd.DataFrame:
    """Ours minus paper, in accuracy points, per task where both exist, plus their mean."""
    rows = {}
    for v in means.index:
        paper = PAPER_TABLE1.get(PAPER_NAMES.get(v, ""))
        if paper is None:
            continue
        gaps = {}
        for t in means.columns:
            p, ours = paper.get(t), means.loc[v, t]
            gaps[TASK_NAMES.get(t, t)] = (ours - p) if (p is not None and np.isfinite(ours)) else np.nan
        rows[f"{v} vs {PAPER_NAMES[v]}"] = gaps
    return _differences(rows, "mean gap", "variant vs paper")


def _differences(rows: dict[str, dict[str, float]], mean_label: str, index_name: str) -> pd.DataFrame:
    """Signed differences in points as display strings ("+1.23", "not compared" where missing), one row per key
    of ``rows`` that has any, plus their mean over the columns that have one."""
    out = {}
    for name, diffs in rows.items():
        vals = [d for d in diffs.values() if np.isfinite(d)]
        if vals:
            out[name] = {**diffs, mean_label: float(np.mean(vals))}
    table = pd.DataFrame.from_dict(out, orient="index")
    if table.empty:
        return table
    table = table.map(lambda g: f"{g:+.2f}" if np.isfinite(g) else "not compared")
    table.index.name = index_name
    return table


def gain_table(scratch: pd.DataFrame, spt: pd.DataFrame) -> pd.DataFrame:
    """Self-pretraining's gain: ``spt - scratch`` mean test accuracy in points per variant (rows) and
    task (columns), where both protocols have an ok run (the ``means`` of :func:`accuracy_table`),
    plus their mean over those tasks. Empty when no variant has both."""
    tasks = [t for t in spt.columns if t in scratch.columns]
    rows = {v: {TASK_NAMES.get(t, t): spt.loc[v, t] - scratch.loc[v, t] for t in tasks}
            for v in spt.index if v in scratch.index}
    return _differences(rows, "mean gain", "variant")


def protocol_settings(rows: pd.DataFrame) -> list[str]:
    """How the ``spt`` rows were pretrained, one line per distinct setting (from each record's
    ``config.pretrain``): objective, mask rate, pretraining and fine-tuning steps, budget, tasks."""
    seen: dict[str, set[str]] = {}
    for config, task in zip(rows.get("config", pd.Series(dtype=object)), rows["task"]):
        pre = (config or {}).get("pretrain") if isinstance(config, dict) else None
        if not pre or pre.get("objective", "none") == "none":
            continue
        what = "masked modelling" if pre["objective"] == "mlm" else "next-token prediction"
        rate = f", {100 * pre['mask_rate']:g}% of positions masked" if pre.get("mask_rate") is not None else ""
        budget = ("within one budget" if pre.get("budget") == "shared" else "on top of fine-tuning")
        line = (f"{what}{rate}, {pre.get('steps')} pretraining steps {budget} (then {pre.get('finetune_steps')} "
                f"fine-tuning steps), lr {pre.get('lr'):g} {pre.get('schedule')}, checkpoint by validation "
                f"{pre.get('select')}")
        seen.setdefault(line, set()).add(TASK_NAMES.get(task, task))
    return [f"{line} ({', '.join(sorted(t))})" for line, t in seen.items()]


# ---------------------------------------------------------------------------------------------- speed

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
    ``reference=None``: absolute values (steps/s with the p10–p90 range of the timed steps where
    recorded, and MiB). The memory columns are left out when no row has a peak memory (CPU runs).
    """
    if rows.empty:
        return pd.DataFrame()
    rows = rows.assign(_lo=1e3 / rows["ms_p90"].where(rows["mode"] == "model_step"),
                       _hi=1e3 / rows["ms_p10"].where(rows["mode"] == "model_step"))
    lengths = sorted(rows["seq_len"].dropna().unique())
    variants = variant_order(rows["variant"].unique())
    speed = median_by(rows, ["variant", "seq_len"], "steps_per_s", "_lo", "_hi").set_index(["variant", "seq_len"])
    mem = median_by(rows, ["variant", "seq_len"], "peak_mem_mb").set_index(["variant", "seq_len"])
    has_mem = memory_note(rows) is None
    cols = [f"steps/s {length_label(n)}" for n in lengths]
    cols += [f"memory {length_label(n)}" for n in lengths] if has_mem else []
    out = pd.DataFrame(index=pd.Index(variants, name="variant"), columns=cols, dtype=object)
    tables = [(speed, "steps/s", sig)] + ([(mem, "memory", lambda x: f"{x:,.0f} MiB")] if has_mem else [])
    for table, name, fmt in tables:
        for v in variants:
            for n in lengths:
                col = f"{name} {length_label(n)}"
                if (v, n) not in table.index:
                    continue
                r = table.loc[(v, n)]
                if reference is None or r.status != "ok":
                    out.loc[v, col] = cell(r, fmt, spread=True)
                elif (reference, n) in table.index:
                    ref = table.loc[(reference, n)]
                    out.loc[v, col] = ratio(r.value / ref.value) if (ref.status == "ok" and ref.value > 0) \
                        else f"ref {ref.status}"
    return out.fillna(NOT_RUN)


# ---------------------------------------------------------------------------------------------- op level

def case_table(rows: pd.DataFrame, value: str, fmt: Callable[[float], str] = sig, spread: bool = False
               ) -> pd.DataFrame:
    """Median ``value`` per variant (rows) x sequence length (columns); failed cases show their status.

    ``spread``: for ``value="time_ms"``, each cell also shows the p10–p90 range of the timed calls.
    """
    if rows.empty:
        return pd.DataFrame()
    lo, hi = ("time_p10", "time_p90") if spread and value == "time_ms" else (None, None)
    med = median_by(rows, ["variant", "seq_len"], value, lo, hi)
    lengths = sorted(med["seq_len"].dropna().unique())
    out = pd.DataFrame(index=pd.Index(variant_order(med["variant"].unique()), name="variant"),
                       columns=[length_label(n) for n in lengths], dtype=object)
    for r in med.itertuples():
        if np.isfinite(r.seq_len):
            out.loc[r.variant, length_label(r.seq_len)] = cell(r, fmt, spread=lo is not None)
    out.columns = [f"N = {c}" for c in out.columns]
    return out.fillna(NOT_RUN)


#: the attention-weight columns of exactness records (Hedgehog's spikiness and monotonicity, and mimicry)
WEIGHT_COLUMNS = (("entropy", "entropy (nats)", lambda x: f"{x:.2f}"),
                  ("monotonicity", "monotonicity", lambda x: f"{x:.3f}"),
                  ("weight_kl", "KL(softmax ‖ variant)", lambda x: f"{x:.3g}" if abs(x) >= 1e-6 else "0"),
                  ("approx_error_init", "error at init", lambda x: f"{x:.3g}"),
                  ("approx_error", "error (fitted)", lambda x: f"{x:.3g}"))


def weights_table(rows: pd.DataFrame) -> tuple[pd.DataFrame, int | None]:
    """Exactness records of one input pattern -> (variant rows x :data:`WEIGHT_COLUMNS`, N): medians at
    the longest N that has weight measures, and a last row ``softmax`` with softmax's own entropy on the
    same inputs (monotonicity 1, KL 0 by definition). Error columns: the output error before and after
    fitting a learned map (equal for variants with nothing to fit)."""
    has = rows[rows["entropy"].notna()]
    if has.empty:
        return pd.DataFrame(), None
    n = has["seq_len"].max()
    at = rows[rows["seq_len"] == n]
    out = pd.DataFrame(index=pd.Index(variant_order(at["variant"].unique()), name="variant"),
                       columns=[title for _, title, _ in WEIGHT_COLUMNS], dtype=object)
    for col, title, fmt in WEIGHT_COLUMNS:
        for r in median_by(at, ["variant"], col).itertuples():
            out.loc[r.variant, title] = cell(r, fmt)
    ref = float(has[has["seq_len"] == n]["softmax_entropy"].median())
    out.loc["softmax"] = [f"{ref:.2f}" if np.isfinite(ref) else "not measured", "1", "0", "0", "0"]
    return out.fillna(NOT_RUN), int(n)


#: how records made before ``case.flops_convention`` counted FLOPs, by their ``flops_source`` and mode
#: (``lra/timing.py`` and ``lra/bench.py`` of that time: analytic = 4·B·H·N²·D forward, 3.5x for fwd+bwd)
LEGACY_CONVENTIONS = {("analytic", "op_fwd"): "analytic 4·B·H·N²·D",
                      ("analytic", "op_fwd_bwd"): "analytic, fwd+bwd = 3.5 x fwd",
                      ("flop_counter", "op_fwd"): "counted (FlopCounterMode)",
                      ("flop_counter", "op_fwd_bwd"): "counted (FlopCounterMode)"}


def flops_conventions(rows: pd.DataFrame) -> pd.Series:
    """Per variant: how its FLOPs were counted (``case.flops_convention``, e.g. "fwd+bwd = 3.0 x fwd
    (materialized math)"). Older records without that field get the convention their ``flops_source``
    stood for then, marked "(from flops_source)"."""
    def one(g: pd.DataFrame) -> str:
        conv = set()
        for given, src, mode in zip(g["flops_convention"], g["flops_source"], g["mode"]):
            if isinstance(given, str) and given:
                conv.add(given)
            elif isinstance(src, str):
                legacy = LEGACY_CONVENTIONS.get((src, mode))
                conv.add(f"{legacy} (from flops_source)" if legacy else f"not recorded (flops_source: {src})")
            else:
                conv.add("not recorded")
        return "; ".join(sorted(conv))

    rows = rows[rows["tflops"].notna()]
    return pd.Series({v: one(g) for v, g in rows.groupby("variant")}, name="FLOPs counted as", dtype=object)


def with_conventions(table: pd.DataFrame, rows: pd.DataFrame) -> tuple[pd.DataFrame, str | None]:
    """A TFLOP/s table (variants as index) and how its FLOPs were counted: one sentence when every
    variant used the same convention, else ``(table + a "FLOPs counted as" column, None)``."""
    conv = flops_conventions(rows).reindex(table.index).fillna("no FLOPs recorded")
    if conv.nunique() == 1:
        return table, f"FLOPs counted as: {conv.iloc[0]}."
    return table.assign(**{"FLOPs counted as": conv}), None


OVERHEAD_COLUMNS = (("ms_model_fwd_bwd", "fwd+bwd (ms)"), ("ms_model_fwd_bwd_opt", "+ clip + AdamW (ms)"),
                    ("ms_train_step", "lra-train step (ms)"), ("overhead_pct", "overhead (%)"),
                    ("optimizer_pct", "of which optimizer (%)"), ("loop_pct", "of which loop (%)"))


def overhead_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per ``train_overhead`` bench record: the three per-step times and the overhead."""
    out = []
    for _, r in rows.sort_values(["variant", "seq_len"]).iterrows():
        row = {"variant": r["variant"], "task": r.get("task"), "N": int_or_dash(r.get("seq_len")),
               "batch": int_or_dash(r.get("batch_size")), "dtype": r.get("dtype")}
        for col, label in OVERHEAD_COLUMNS:
            value = r.get(col)
            row[label] = (r["status"] if r["status"] != "ok" else "not measured") \
                if r["status"] != "ok" or value is None or pd.isna(value) else (
                f"{value:+.1f}" if col.endswith("_pct") else sig(value))
        row["status"] = r["status"] + (LOADED_MARK if r.get("host_loaded") is True else "")
        out.append(row)
    return pd.DataFrame(out)


def failures_table(df: pd.DataFrame) -> pd.DataFrame:
    """Every record whose status is not ok, with the first line of its message."""
    bad = df[df["status"] != "ok"]
    what = bad["task"].astype(object).where(bad["kind"] == "train", bad["mode"])
    out = pd.DataFrame({
        "kind": bad["kind"], "device": bad["device_name"], "variant": bad["variant"],
        "task / mode": what.fillna("not recorded"), "N": bad["seq_len"].map(int_or_dash),
        "seed": bad["seed"].map(int_or_dash), "batch": bad["batch_size"].map(int_or_dash),
        "status": bad["status"], "message": bad["message"].map(first_line),
    })
    return out.sort_values(["kind", "device", "variant", "task / mode", "N"], kind="stable")
