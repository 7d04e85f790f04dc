"""Where the numbers come from: devices, threads and load, software versions, commits, dates. Pure, no I/O."""
from __future__ import annotations

from typing import Any

import pandas as pd

#: the host facts shown per device: (column, header)
HOST_COLUMNS = (("host_torch_threads", "torch threads"), ("host_interop_threads", "interop threads"),
                ("host_omp_num_threads", "OMP_NUM_THREADS"), ("host_mkl_num_threads", "MKL_NUM_THREADS"),
                ("host_cpus_available", "CPUs available"), ("host_cpu_count", "CPUs in machine"),
                ("host_affinity", "affinity"))


def counts_text(values: pd.Series, code: bool = False) -> str:
    """Distinct values with their counts, most frequent first: "`2.13.0` (172), `2.11.0` (1)"; "—" if none."""
    s = values.dropna().map(_text)
    s = s[s != ""]
    if s.empty:
        return "—"
    q = "`" if code else ""
    return ", ".join(f"{q}{k}{q} ({v})" for k, v in s.value_counts().items())


def _text(value: Any) -> str:
    """A cell as short text: whole floats without ".0", CPU lists as ranges ("0-3,6")."""
    if isinstance(value, list):
        return _ranges(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _ranges(ids: list) -> str:
    try:
        ids = sorted({int(i) for i in ids})
    except (TypeError, ValueError):
        return ",".join(str(i) for i in ids)
    out, start = [], None
    for i, n in enumerate(ids):
        if start is None:
            start = n
        if i + 1 == len(ids) or ids[i + 1] != n + 1:
            out.append(str(start) if start == n else f"{start}-{n}")
            start = None
    return ",".join(out)


def device_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per device: type, device (GPU) or core (CPU) count, memory and the number of records."""
    def joined(fmt):
        return lambda s: ", ".join(sorted({fmt(x) for x in s.dropna()})) or "—"

    out = df.groupby("device_name", dropna=False).agg(
        type=("device_type", joined(str)), count=("device_count", joined(lambda x: str(int(x)))),
        memory=("device_memory_mb", joined(lambda x: f"{int(x):,}")), records=("kind", "size"))
    out.index.name = "device"
    out.columns = ["type", "devices (GPUs) / cores (CPU)", "memory (MiB)", "records"]
    return out


def host_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per device: thread settings, CPUs and load the records were measured under (``host`` fields).

    Each cell lists the distinct values with their record counts; "not recorded" where no record
    of the device has the field (records older than the ``host`` field). Empty when no record has any.
    """
    cols = [c for c, _ in HOST_COLUMNS] + ["host_load_avg_1m"]
    if df.empty or not df[cols].notna().any().any():
        return pd.DataFrame()
    rows = {}
    for dev, g in df.groupby("device_name"):
        row = {label: counts_text(g[col]) for col, label in HOST_COLUMNS}
        load = g["host_load_avg_1m"].dropna()
        row["load avg 1 min"] = "—" if load.empty else f"{load.min():.2f}–{load.max():.2f}"
        known = g["host_loaded"].dropna()
        row["loaded records"] = f"{int(known.sum())} of {len(known)}" if len(known) else "—"
        rows[dev] = {k: ("not recorded" if v == "—" else v) for k, v in row.items()}
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "device"
    return out


def time_span(df: pd.DataFrame) -> str:
    """"2026-11-23 09:25 UTC to 2026-11-23 13:04 UTC" from the records' timestamps."""
    t0 = df["started_at"].min() if df["started_at"].notna().any() else df["finished_at"].min()
    t1 = df["finished_at"].max()

    def fmt(t):
        return t.strftime("%Y-%m-%d %H:%M UTC") if pd.notna(t) else "—"

    return f"{fmt(t0)} to {fmt(t1)}"
