"""Names, orders and number formats shared by every table and figure of the report.

Nothing here reads files or draws; each helper takes plain values or a DataFrame of records
(the frame of :mod:`lra.report.frame`) and returns a string, a list or a smaller frame.
"""
from __future__ import annotations

import math
import re
from typing import Any, Iterable

import numpy as np
import pandas as pd

TASKS = ("listops", "text", "retrieval", "image", "pathfinder", "pathx")
TASK_NAMES = {"listops": "ListOps", "text": "Text", "retrieval": "Retrieval", "image": "Image",
              "pathfinder": "Pathfinder", "pathx": "Path-X"}
VARIANT_ORDER = ("full", "flash", "local", "sparse", "longformer", "linformer", "reformer", "sinkhorn",
                 "synthesizer", "bigbird", "linear", "performer", "random_feature", "nystrom", "hedgehog", "taylor")
#: variants that compute exact softmax attention, for records that predate the ``exact`` case field
EXACT_VARIANTS = ("full", "flash")
OP_MODES = ("op_fwd", "op_fwd_bwd")
MODE_NAMES = {"op_fwd": "forward", "op_fwd_bwd": "forward + backward", "model_step": "model training step",
              "exactness": "approximation error", "smoothness": "smoothness"}
UNKNOWN_DEVICE = "unknown device"
#: a table cell for a combination without any record (every other gap shows its status or its reason)
NOT_RUN = "not run"
#: the mark put on a time measured while its host was loaded (``host_loaded``), and its footnote
LOADED_MARK = "†"
LOADED_NOTE = (f"{LOADED_MARK} measured while the host was loaded (load average above the CPUs available "
               f"to the job, `host.loaded` in the record): the time may include other work's.")


def variant_order(variants: Iterable[str]) -> list[str]:
    """Known variants in the LRA paper's order, then the rest alphabetically; ``X+distill`` (trained
    with attention distillation) right after ``X``."""
    vs = set(variants)
    base = {str(v).removesuffix("+distill") for v in vs}
    known = [v for v in VARIANT_ORDER if v in base]
    order = known + sorted(base - set(known), key=str)
    return [x for b in order for x in (b, f"{b}+distill") if x in vs]


def task_order(tasks: Iterable[str]) -> list[str]:
    """LRA tasks in the paper's order, then the rest alphabetically."""
    ts = {t for t in tasks if isinstance(t, str)}
    return [t for t in TASKS if t in ts] + sorted(ts - set(TASKS))


def length_label(n: float) -> str:
    """A sequence length as the report writes it everywhere: the exact count, thousands separated
    (1024 -> "1,024", 2000 -> "2,000", 500 -> "500"), so that 1,024 and 2,000 never read alike."""
    return f"{int(n):,}"


def sig(x: float | None, digits: int = 3) -> str:
    """``x`` to ``digits`` significant figures (thousands separated); "—" when missing."""
    if x is None or not np.isfinite(x):
        return "—"
    if x == 0:
        return "0"
    mag = math.floor(math.log10(abs(x)))
    if mag >= digits - 1:
        return f"{x:,.0f}"
    return f"{x:.{max(digits - 1 - mag, 0)}f}"


def ratio(x: float) -> str:
    return f"{x:.2f}×" if np.isfinite(x) else "—"


def int_or_dash(x: Any) -> str:
    """An integer field of a record, or "not recorded"."""
    return "not recorded" if x is None or pd.isna(x) else f"{int(x)}"


def slug(s: Any) -> str:
    """A file-name and anchor-safe lower-case form: "CPU AMD EPYC" -> "cpu_amd_epyc"."""
    return re.sub(r"[^A-Za-z0-9]+", "_", str(s)).strip("_").lower() or "x"


def anchor(*parts: Any) -> str:
    """An HTML id for a report heading or table, e.g. ``anchor("ops", dev, "op_fwd")``."""
    return "-".join(slug(p).replace("_", "-") for p in parts if p is not None and p != "")


def fig_key(kind: str, device: str | None = None) -> str:
    """The key of one figure of the report: ``kind`` (e.g. "time") of one device ("time:cpu_amd_epyc")."""
    return kind if device is None else f"{kind}:{slug(device)}"


def link(text: str, target: str) -> str:
    """A markdown link to an anchor of the same page (``target`` starting with ``[[page:``: of the page
    it names, see :func:`page_link`)."""
    return f"[{text}]({target})" if target.startswith("[[page:") else f"[{text}](#{target})"


def page_link(text: str, page: str, target: str = "") -> str:
    """A markdown link to an anchor on one of the report's pages (``page``: "main", "ops", ...), resolved
    to the page's file when the page is written (:class:`lra.report.document.Document`)."""
    return f"[{text}]([[page:{page}]]{'#' + target if target else ''})" if target else f"[{text}]([[page:{page}]])"


def devices(df: pd.DataFrame) -> list[str]:
    return sorted(df["device_name"].dropna().unique(), key=str)


def fail_label(statuses: Iterable[str]) -> str:
    """The non-ok statuses among ``statuses``, most frequent first ("oom/error"); "—" when all ok."""
    counts = pd.Series([s for s in statuses if s != "ok"], dtype=object).value_counts()
    return "/".join(counts.index) if len(counts) else "—"


def first_line(msg: Any, limit: int = 140) -> str:
    if msg is None or (isinstance(msg, float) and np.isnan(msg)):
        return ""
    line = str(msg).strip().splitlines()[0] if str(msg).strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def memory_note(rows: pd.DataFrame) -> str | None:
    """None when ``rows`` hold peak memory; else why not ("not measured on CPU ...")."""
    if rows.empty or rows["peak_mem_mb"].notna().any():
        return None
    types = {str(t) for t in rows["device_type"].dropna().unique()}
    if types == {"cpu"}:
        return "peak memory not measured on CPU (the CPU records hold none)"
    return "peak memory not recorded in these records"


def _only(rows: pd.DataFrame, col: str) -> Any:
    """The single value of ``col`` in ``rows``, else None (missing column, none, or several)."""
    if col not in rows:
        return None
    vals = rows[col].dropna().unique()
    return vals[0] if len(vals) == 1 else None


def setting(rows: pd.DataFrame, with_task: bool = False) -> str:
    """The fixed shape of a set of bench rows, e.g. "float32, batch 2, 4 heads × 64 dims"."""
    parts = []
    if with_task and _only(rows, "task") is not None:
        parts.append(f"task {_only(rows, 'task')}")
    if _only(rows, "dtype") is not None:
        parts.append(str(_only(rows, "dtype")))
    if _only(rows, "batch_size") is not None:
        parts.append(f"batch {int(_only(rows, 'batch_size'))}")
    h, d = _only(rows, "heads"), _only(rows, "head_dim")
    if h is not None and d is not None:
        parts.append(f"{int(h)} head{'s' if int(h) != 1 else ''} × {int(d)} dims")
    if _only(rows, "timer") is not None:
        parts.append(f"timed with {_only(rows, 'timer')}")
    return ", ".join(parts)


def settings(rows: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
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
    return [("_" + slug("_".join(k if isinstance(k, tuple) else (k,))), g) for k, g in groups]


def is_exact(rows: pd.DataFrame) -> pd.Series:
    """Per row: does the variant compute exact softmax attention? From the record's ``exact`` case field,
    else (older records) from the variant's name (:data:`EXACT_VARIANTS`)."""
    by_name = rows["variant"].isin(EXACT_VARIANTS)
    if "exact" not in rows:
        return by_name
    flag = rows["exact"].map(lambda x: x if isinstance(x, (bool, np.bool_)) else
                             ({"true": True, "false": False}.get(str(x).lower()) if pd.notna(x) else None))
    return flag.where(flag.notna(), by_name).astype(bool)
