"""The main page's question tables: time vs N and memory vs N per device, in the unit their figure uses.

One row per variant, one column per length ("N = 1,024"), the median over repeated records; variants
sorted by the table's own measure at its sort length (the largest N at which the most variants ran),
the best cell of each column in bold, relative speed as one column (not a second table), and the
largest N that fit. A cell without a number says why (:func:`gap_text`): the failure status
(``oom``, ``error``, ``nan``, ``skipped``) or "not run" where the variant has no record at that
length; :func:`gap_notes` writes the legend under the table (each skipped reason, counted).
Pure: frames in, frames of display strings out. O(rows).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from .labels import NOT_RUN, first_line, length_label, sig, variant_order
from .tables import median_by
#: what each non-ok status means, for the legend under a table
STATUS_MEANING = {"oom": "ran out of memory", "error": "failed with an error", "nan": "produced a non-finite result",
                  "skipped": "not run, for the reason recorded"}


def n_col(n: float) -> str:
    """A length column header: "N = 1,024"."""
    return f"N = {length_label(n)}"


def gap_text(status: str) -> str:
    """A cell without a number: the failure status, or "not run" (no record at that length)."""
    return status if status and status != "ok" else NOT_RUN


def sort_length(med: pd.DataFrame) -> float | None:
    """The length a table is sorted at: the largest N at which the most variants have an ok value."""
    ok = med[(med["status"] == "ok") & med["value"].notna()]
    if ok.empty:
        return None
    counts = ok.groupby("seq_len")["variant"].nunique()
    return float(max(counts.index, key=lambda n: (counts[n], n)))


def question_table(rows: pd.DataFrame, value: str, fmt: Callable[[float], str] = sig, *,
                   higher_is_better: bool = False, relative_to: tuple[str, ...] = ("flash", "full"),
                   relative_name: str = "time", fits: bool = True) -> tuple[pd.DataFrame, float | None]:
    """Variant rows x "N = ..." columns of the median ``value``; returns ``(table, sort length)``.

    Adds "``relative_name`` ÷ X at N = n" (the first of ``relative_to`` with an ok value at the sort
    length; omitted when none) and, when ``fits``, "largest N that fit" (with the status of the first
    failed length). Rows are sorted by the value at the sort length (best first; variants without a
    value there after them, by their own largest value); the best cell of each length is bold.
    """
    rows = rows[rows["seq_len"].notna()]
    if rows.empty:
        return pd.DataFrame(), None
    med = median_by(rows, ["variant", "seq_len"], value)
    lengths = sorted(med["seq_len"].unique())
    at = sort_length(med)
    variants = variant_order(med["variant"].unique())
    sign = -1.0 if higher_is_better else 1.0

    def key(v):
        here = med[(med["variant"] == v) & (med["seq_len"] == at) & (med["status"] == "ok")]["value"]
        if len(here):
            return (0, sign * float(here.iloc[0]), v)
        ok = med[(med["variant"] == v) & (med["status"] == "ok")]
        return (1, -float(ok["seq_len"].max()) if len(ok) else 0.0, v)

    variants = sorted(variants, key=key)
    table = pd.DataFrame(index=pd.Index(variants, name="variant"), columns=[n_col(n) for n in lengths], dtype=object)
    for n in lengths:
        col = med[med["seq_len"] == n].set_index("variant")
        ok = col[(col["status"] == "ok") & col["value"].notna()]
        best = (ok["value"].idxmax() if higher_is_better else ok["value"].idxmin()) if len(ok) else None
        for v in variants:
            if v not in col.index:
                table.loc[v, n_col(n)] = NOT_RUN
            elif v in ok.index:
                text = fmt(float(ok.loc[v, "value"]))
                table.loc[v, n_col(n)] = f"**{text}**" if v == best else text
            else:
                table.loc[v, n_col(n)] = gap_text(col.loc[v, "status"])
    ref = next((r for r in relative_to if at is not None and
                ((med["variant"] == r) & (med["seq_len"] == at) & (med["status"] == "ok")).any()), None)
    if ref is not None:
        base = float(med[(med["variant"] == ref) & (med["seq_len"] == at)]["value"].iloc[0])
        here = med[med["seq_len"] == at].set_index("variant")
        table[f"{relative_name} ÷ {ref} at {n_col(at)}"] = [
            f"{here.loc[v, 'value'] / base:.2f}×" if v in here.index and here.loc[v, "status"] == "ok" and base > 0
            else gap_text(here.loc[v, "status"]) if v in here.index else NOT_RUN for v in variants]
    if fits:
        table["largest N that fit"] = [largest_fit(rows[rows["variant"] == v]) for v in variants]
    return table, at


def largest_fit(rows: pd.DataFrame) -> str:
    """"8,192 (oom at 16,384)", "16,384" (nothing failed) or "none (oom from 256)" for one variant."""
    ok = rows[rows["status"] == "ok"]["seq_len"].dropna()
    bad = rows[rows["status"] != "ok"]
    first = bad["seq_len"].min() if len(bad) else np.nan
    status = "/".join(sorted(set(bad[bad["seq_len"] == first]["status"]))) if np.isfinite(first) else ""
    if ok.empty:
        return f"none ({status} from {length_label(first)})" if status else "none"
    text = length_label(ok.max())
    return text + (f" ({status} at {length_label(first)})" if status and first > ok.max() else "")


def gap_notes(rows: pd.DataFrame, table: pd.DataFrame) -> str:
    """The legend for the cells of ``table`` without a number: what "not run" and each status shown
    means, and the recorded reasons of ``skipped`` cases (first line of their message, counted)."""
    cells = {str(c).strip("*") for c in table.to_numpy().ravel()}
    parts = []
    if NOT_RUN in cells:
        parts.append(f"*{NOT_RUN}*: no record at that length")
    for status, meaning in STATUS_MEANING.items():
        if status not in cells and not any(str(c).startswith(status) for c in cells):
            continue
        text = f"*{status}*: {meaning}"
        if status == "skipped":
            why = rows[rows["status"] == "skipped"]["message"].map(first_line).replace("", "no reason recorded")
            counts = why.value_counts()
            text += " (" + "; ".join(f"{w} ×{c}" for w, c in counts.head(4).items()) \
                + (f"; {len(counts) - 4} more reasons" if len(counts) > 4 else "") + ")" if len(counts) else ""
        parts.append(text)
    return ("Cells without a number: " + "; ".join(parts) + ".") if parts else ""
