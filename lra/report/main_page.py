"""The report's main page: the answer first, then per device one table and one figure per question.

Order: what the records hold and where the rest is (the side pages, the files not loaded, the flags);
"Which attention?" per device (the answer table, the largest N that fits, the summary figure), the
decoder answer where there are causal records, a pointer to "Which attention recalls?"; then per
device "Time vs N", "Memory vs N" and "Accuracy vs time per step" (the Table 1 blocks), each table in
the unit of its figure; then "Which attention recalls?". Everything else is on the side pages
(:mod:`lra.report.side_pages`). Each function writes one part into a :class:`Document`.
"""
from __future__ import annotations

import pandas as pd

from .accuracy import accuracy_time_table, blocks, learned_rule
from .answer import MARGINS, DID_NOT_LEARN_POINTS, answer_table, fits_line, non_causal
from .causal import causal_fits_line, causal_table, has_causal
from .document import Document, fig_ref
from .figures import CAPTIONS, Drawer
from .labels import anchor, devices, fig_key, link, memory_note, page_link, setting
from .questions import gap_notes, question_table
from .recall import TARGET, recall_cells, recall_table
from .side_pages import place

#: the side pages: key -> (title, what it shows in a few words)
PAGES = {
    "exactness": ("Exactness", "approximation error against exact softmax attention"),
    "smoothness": ("Smoothness", "how the attention map's Lipschitz constant grows with N"),
    "ops": ("Op-level detail", "every timing with its spread, TFLOP/s, training-step and decode benchmarks, fits"),
    "training": ("Training runs", "curves, learned verdicts, bits per byte, the LRA paper's numbers"),
    "provenance": ("Provenance and failed cases", "every record counted: hosts, commits, failures"),
    "peers": ("Ours vs public implementations", "the peers comparisons"),
    "compare": ("Comparison with a baseline", "regressions against an earlier report"),
}


def intro(doc: Document, df: pd.DataFrame, command: str, peers: list, other: list) -> None:
    """What the records hold, where everything else is, and what is not loaded."""
    kinds = df["kind"].value_counts()
    devs = devices(df)
    doc.p(f"**{_count(len(df), 'record')}** ({_count(kinds.get('train', 0), 'training run')}, "
          f"{_count(kinds.get('bench', 0), 'benchmark case')}) from {len(devs)} device{'s' if len(devs) != 1 else ''}: {', '.join(devs)}. "
          f"Other pages: " + " · ".join(page_link(title, key) for key, (title, _) in PAGES.items())
          + ". Data: [`tidy.csv`](tidy.csv) ([columns](tidy.md)). Rebuild: `" + command + "`.")
    flags = []
    if peers:
        flags.append(f"{len(peers)} peers comparison{'s' if len(peers) != 1 else ''} (ours vs the public "
                     f"implementations; not result records) are on {page_link('their own page', 'peers', 'peers')}")
    if other:
        flags.append(f"{_count(len(other), 'other JSON file')} {'is' if len(other) == 1 else 'are'} not records "
                     f"({page_link('listed', 'provenance', 'skipped')})")
    bad = int((df["status"] != "ok").sum())
    if bad:
        flags.append(f"{bad} record{'s' if bad != 1 else ''} not ok ({page_link('failed cases', 'provenance', 'failures')})")
    dirty = int(df["dirty"].sum())
    if dirty:
        flags.append(f"{dirty} from a modified (`-dirty`) tree ({page_link('which', 'provenance', 'dirty')})")
    unknown = int((~df["host_known"]).sum())
    if unknown:
        flags.append(f"{unknown} without host facts, counted as unknown host")
    if flags:
        doc.p("**Not on this page / flags:** " + "; ".join(flags) + ".")


def _count(n: int, noun: str) -> str:
    """"1 record", "2,000 records"."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def answer(doc: Document, df: pd.DataFrame, draw: Drawer) -> None:
    """"Which attention?": per device the answer table, the largest N that fits and the summary figure."""
    doc.h(2, "Which attention?", anchor="answer")
    doc.p("Per device and sequence length, from the records only: the fastest exact kernel; the fastest variant "
          f"within {' and '.join(f'{m:g}' for m in MARGINS)} accuracy points of exact attention on the tasks trained "
          "on that device; and the length from which approximations overtake exact attention. Each cell links to "
          "its table and figure; where the records cannot answer, the cell says why. A task on which exact "
          "attention did not learn (its own binomial test, or for older runs more than "
          f"{DID_NOT_LEARN_POINTS:g} points below the LRA paper) compares nothing.")
    for dev in devices(df):
        doc.h(3, dev, anchor=anchor("answer", dev))
        table, notes = answer_table(df, dev)
        doc.table(table, left=table.columns)
        line = fits_line(df, dev)
        if line:
            doc.p(f"**Largest N that fits** (attention forward+backward, peak memory there; {fig_ref(fig_key('memory', dev))}"
                  f"): {line}.")
        doc.note(" ".join(notes))
        place(doc, draw, "summary", dev, empty="Nothing here says which variant is accurate enough.")
        if has_causal(df, dev):
            doc.h(3, f"{dev}: decoders (causal attention)", anchor=anchor("decoder", dev))
            table, notes = causal_table(df, dev)
            doc.table(table, left=table.columns, empty="No causal timing on this device.")
            line = causal_fits_line(df, dev)
            if line:
                doc.p(f"**Largest context that fits** (causal forward+backward): {line}.")
            doc.note(" ".join(notes))
    if (df["task"] == "mqar").any():
        cpu = " (a CPU result)" if set(df[df["task"] == "mqar"]["device_type"].dropna()) == {"cpu"} else ""
        doc.p(f"**Which attention recalls?** {link('Recall against state size', 'recall')}{cpu}: the smallest "
              f"width and decoding state at which each variant reaches {TARGET:g} query accuracy on MQAR.")


def questions(doc: Document, df: pd.DataFrame, draw: Drawer) -> None:
    """Per device: time vs N, memory vs N (tables, then both figures side by side), accuracy vs time."""
    for dev in devices(df):
        d = non_causal(df[(df["device_name"] == dev) & (df["kind"] == "bench") & (df["mode"] == "op_fwd_bwd")])
        tr = blocks(df, dev)
        if d.empty and not tr:
            continue
        doc.h(2, f"{dev}: time, memory and accuracy", anchor=anchor("evidence", dev))
        if len(d):
            shape = setting(d)
            doc.h(3, "Time vs N", anchor=anchor("time", dev))
            time, _ = question_table(d, "time_ms")
            doc.p(f"Attention forward+backward, ms per call (median; {shape}; lower is better; best in bold; spread "
                  f"of every timing on the {page_link('op-level page', 'ops', anchor('ops', dev, 'op_fwd_bwd'))}); "
                  f"{fig_ref(fig_key('time', dev))}.")
            doc.table(time, left=())
            doc.note(gap_notes(d, time))
            doc.h(3, "Memory vs N", anchor=anchor("memory", dev))
            why = memory_note(d)
            if why:
                doc.p(f"No memory table: {why}.")
            else:
                mem, _ = question_table(d, "peak_mem_mb", lambda x: f"{x:,.0f}", relative_name="memory", fits=False)
                doc.p(f"Peak memory of the same calls, MiB (lower is better; best in bold); "
                      f"{fig_ref(fig_key('memory', dev))}.")
                doc.table(mem)
                doc.note(gap_notes(d, mem))
            doc.row_start()
            place(doc, draw, "time", dev)
            doc.row_next()
            place(doc, draw, "memory", dev)
            doc.row_end()
        if tr:
            accuracy(doc, df, dev, tr)


def accuracy(doc: Document, df: pd.DataFrame, dev: str, tr: list) -> None:
    """The Table 1 blocks of one device: accuracy and time per step, one table per protocol."""
    doc.h(3, "Accuracy vs time per step", anchor=anchor("accuracy", dev))
    doc.p(f"Test accuracy (%, mean ± std over seeds) and median ms per training step per task"
          f"; {fig_ref(fig_key('summary', dev))}. Curves and per-run verdicts on the "
          f"{page_link('training page', 'training', anchor('training', dev))}.")
    for block in tr:
        doc.h(4, block.title())
        doc.note(block.settings() + ". " + learned_rule(block.rows))
        table = accuracy_time_table(block.rows)
        doc.table(table)


def recall(doc: Document, df: pd.DataFrame, draw: Drawer) -> None:
    """"Which attention recalls?": the table and the figure, side by side."""
    cells = recall_cells(df)
    if cells.empty:
        return
    cpu = set(cells["device_type"]) == {"cpu"}
    doc.h(2, "Which attention recalls?" + (" (CPU result)" if cpu else ""), anchor="recall")
    doc.p(f"Multi-query associative recall (MQAR, Arora et al. 2023), best learning rate per cell: per length, the "
          f"smallest width and decoding state (bytes per sequence) at which each variant reaches {TARGET:g} query "
          f"accuracy, or its best accuracy; the smallest state in bold; {fig_ref('recall')}"
          + (". Measured on a CPU at CPU size (2 layers, widths of a few dozen)" if cpu else "") + ".")
    doc.row_start()
    doc.table(recall_table(cells))
    doc.row_next()
    path, note = draw.draw("recall")
    if path is None:
        doc.note(f"*Recall figure not drawn ({note}).*")
    else:
        doc.figure("recall", CAPTIONS["recall"] + (" (CPU result)" if cpu else ""), path, draw.out.path.parent, note)
    doc.row_end()
