"""The back matter: failed cases, provenance (devices, threads and load, versions, commits) and the
comparison with a baseline. Each function writes one section from the tidy frame."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from ..io import write_text
from .compare import compare_display, compare_frames
from .document import Document
from .frame import load_frame
from .provenance import counts_text, device_table, host_table, time_span
from .tables import failures_table


def failures(doc: Document, df: pd.DataFrame) -> None:
    doc.h(2, "6. Failed cases", anchor="failures")
    bad = failures_table(df)
    if bad.empty:
        doc.p("None: every record has status ok.")
        return
    doc.p(f"{len(bad)} record(s) not ok.")
    doc.table(bad, index=False, left=("kind", "device", "variant", "task / mode", "status", "message"))


def provenance(doc: Document, df: pd.DataFrame, inputs: Sequence[Path], skipped: Sequence[Path] = ()) -> None:
    doc.h(2, "7. Provenance", anchor="provenance")
    doc.p("Inputs: " + ", ".join(f"`{p}`" for p in inputs) + f" ({len(df)} record{'s' if len(df) != 1 else ''}).")
    if skipped:
        shown = ", ".join(f"`{p}`" for p in skipped[:20])
        shown += f" and {len(skipped) - 20} more" if len(skipped) > 20 else ""
        doc.p(f"Skipped {len(skipped)} JSON file(s) that are not result records (no `schema` and `kind` keys, "
              f"or not valid JSON): {shown}.")
    if df.empty:
        return
    doc.table(device_table(df), left=("type",))
    hosts = host_table(df)
    if hosts.empty:
        doc.p("Threads and load: not recorded (these records predate the `host` field: torch threads, "
              "OMP/MKL settings, CPUs available, affinity, load average).")
    else:
        doc.p("Threads and load the records were measured under (distinct values with their record counts; "
              "a record is *loaded* when the 1-minute load average exceeded the CPUs available to it):")
        doc.table(hosts, left=tuple(hosts.columns))
    doc.p(f"torch: {counts_text(df['versions_torch'], code=True)}. "
          f"CUDA: {counts_text(df['versions_cuda'], code=True)}.")
    doc.p(f"git commits: {counts_text(df['git_commit'], code=True)}.")
    doc.p(f"Records span {time_span(df)}.")


def compare(doc: Document, df: pd.DataFrame, baseline: Path | None, tolerance: float,
            out_dir: Path) -> pd.DataFrame | None:
    """Section 8; writes ``compare.csv`` beside the report and returns the comparison (None: no baseline)."""
    doc.h(2, "8. Comparison with baseline", anchor="compare")
    if baseline is None:
        doc.p("No baseline given (`--compare DIR_OR_CSV`).")
        return None
    base = load_frame([baseline])
    cmp = compare_frames(df, base, tolerance)
    write_text(out_dir / "compare.csv", cmp.to_csv(index=False))
    nreg = int(cmp["regression"].sum()) if len(cmp) else 0
    doc.p(f"Baseline: `{baseline}` ({len(base)} records). Tolerance {tolerance:.0%}: a regression is time or "
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
    doc.table(compare_display(show), index=False,
              left=("kind", "device", "variant", "task / mode", "dtype", "metric", "flag"))
    return cmp
