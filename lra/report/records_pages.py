"""The record side pages: training runs, provenance and failed cases, the peers comparisons and the
comparison with a baseline. Each opens with one paragraph on what it shows; each function writes one
page into a :class:`Document`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..io import write_text
from .accuracy import TOKEN_TASKS, blocks
from .causal import bpb_table
from .compare import compare_display, compare_frames
from .document import Document
from .figures import Drawer
from .frame import load_frame
from .labels import TASK_NAMES, anchor, devices, int_or_dash, length_label, variant_order
from .paper import PAPER_CITATION, PAPER_LENGTHS, SPT_CITATION, paper_table, spt_paper_table
from .peers import Peers, peers_table
from .provenance import counts_text, device_table, host_table, time_span
from .side_pages import place
from .tables import accuracy_table, failures_table, gain_table, gap_table, protocol_settings


def verdict_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per train run: variant, task, N, seed, test accuracy, majority rate, p-value, learned."""
    out = []
    for r in rows.itertuples():
        acc = getattr(r, "accuracy", np.nan)
        learned = r.learned if r.learned is not pd.NA else None
        out.append({"variant": r.variant, "task": TASK_NAMES.get(r.task, r.task),
                    "N": length_label(r.seq_len) if pd.notna(r.seq_len) else "not recorded",
                    "seed": int_or_dash(r.seed),
                    "test acc. (%)": f"{100 * acc:.2f}" if pd.notna(acc) else r.status,
                    "majority (%)": f"{100 * r.majority_rate:.1f}" if pd.notna(r.majority_rate) else "not recorded",
                    "p-value": f"{r.learned_p:.2g}" if pd.notna(r.learned_p) else "not recorded",
                    "learned": "not recorded" if learned is None else ("yes" if learned else "no ✗")})
    t = pd.DataFrame(out)
    if t.empty:
        return t
    order = {v: i for i, v in enumerate(variant_order(t["variant"].unique()))}
    return t.sort_values(["task", "variant", "seed"], key=lambda s: s.map(order) if s.name == "variant" else s)


def training_page(doc: Document, df: pd.DataFrame, draw: Drawer) -> None:
    doc.p("The training runs behind the accuracy tables: validation curves per task, each run's learned verdict (its "
          "test accuracy against the majority class by a one-sided binomial test), the byte-level language model's "
          "bits per byte (decoders), and the LRA paper's published numbers with our gap to them where a run used "
          "the paper's protocol.")
    tr = df[df["kind"] == "train"]
    if tr.empty:
        doc.p("No training runs in these records.")
    for dev in devices(tr):
        d = tr[tr["device_name"] == dev]
        doc.h(2, dev, anchor=anchor("training", dev))
        place(doc, draw, "curves", dev)
        lm = bpb_table(df, dev)
        if len(lm):
            doc.h(3, "Byte-level language model (IMDb, causal)", anchor=anchor("lm", dev))
            doc.p("Held-out bits per byte (lower is better; mean ± std over seeds); the unigram entropy of the "
                  "training bytes is the baseline every model must beat:")
            doc.table(lm)
        cls = d[~d["task"].isin(TOKEN_TASKS)]
        if len(cls):
            doc.h(3, "Every run and its verdict", anchor=anchor("verdicts", dev))
            doc.table(verdict_table(cls), index=False, left=("variant", "task"))
        for block in blocks(df, dev):
            if block.reduced:
                continue
            cells, means = accuracy_table(block.rows, dev)
            gap = gap_table(means) if block.protocol == "scratch" else pd.DataFrame()
            if len(gap):
                doc.p(f"{block.title()}: gap to the paper (ours − published, points; `flash` computes the same "
                      f"function as `full` and is compared with the paper's Transformer):")
                doc.table(gap)
        _spt(doc, df, dev)
    doc.h(2, "Published numbers", anchor="published")
    doc.p(f"From {PAPER_CITATION}. FAIL = the paper reports no better-than-chance result.")
    doc.table(paper_table())
    doc.p(f"Self-pretrained, from {SPT_CITATION}: Transformers with rotary positions, masked self-pretraining and "
          "models larger than the LRA paper's, next to S4 trained from scratch. Only numbers checked against the "
          "paper's text are shown; the per-task cells are unverified and not transcribed here.")
    doc.table(spt_paper_table())


def _spt(doc: Document, df: pd.DataFrame, dev: str) -> None:
    """Self-pretraining: its settings and its gain over training from scratch (same device and recipe)."""
    tr = df[(df["kind"] == "train") & (df["device_name"] == dev)]
    if not (tr["protocol"] == "spt").any():
        return
    doc.h(3, "Self-pretraining (spt)", anchor=anchor("spt", dev))
    doc.p(f"`spt` first self-pretrains the same encoder on the task's training inputs (`pretrain=mlm|causal`, "
          f"{SPT_CITATION}) and fine-tunes it on the labels:")
    doc.bullets(protocol_settings(tr[tr["protocol"] == "spt"]))
    for recipe, g in tr.groupby(tr["recipe"].fillna("lra")):
        _, scratch = accuracy_table(g[g["protocol"] == "scratch"], dev)
        _, spt = accuracy_table(g[g["protocol"] == "spt"], dev)
        gain = gain_table(scratch, spt)
        doc.p(f"Gain from self-pretraining, recipe {recipe} (spt − scratch mean test accuracy, points; same variant "
              f"and task" + ("" if len(gain) else ": no variant and task has both") + "):")
        if len(gain):
            doc.table(gain)
    other = sorted({(t, int(n)) for t, n in zip(tr["task"], tr["seq_len"])
                    if t in PAPER_LENGTHS and pd.notna(n) and int(n) != PAPER_LENGTHS[t]})
    if other:
        doc.p("Caution: " + ", ".join(f"{TASK_NAMES[t]} ran at N = {length_label(n)} (the paper: "
                                      f"{length_label(PAPER_LENGTHS[t])})" for t, n in other)
              + "; such runs solve a different problem, so their gaps say little.")


def provenance_page(doc: Document, df: pd.DataFrame, inputs: Sequence[Path], other: Sequence[Path],
                    peers: Sequence[Peers]) -> None:
    doc.p("Where every number comes from: every record counted per device and mode, the host it ran on (threads, "
          "load; records made before the `host` field are counted as *unknown host*), records from a modified "
          "(`-dirty`) tree, software versions, commits and dates, the files that are not records, and every "
          "record whose status is not ok.")
    doc.p("Inputs: " + ", ".join(f"`{p}`" for p in inputs) + f" ({len(df):,} record{'s' if len(df) != 1 else ''}).")
    what = df["mode"].astype(object).where(df["kind"] == "bench", "train: " + df["task"].astype(str))
    counts = df.assign(what=what).groupby(["device_name", "what"]).agg(
        records=("kind", "size"), host=("host_known", "sum"), loaded=("host_loaded", lambda s: int(s.fillna(False).sum())),
        dirty=("dirty", "sum"), bad=("status", lambda s: int((s != "ok").sum())))
    counts["unknown host"] = counts["records"] - counts["host"]
    counts = counts.rename(columns={"host": "with host facts", "loaded": "loaded host", "dirty": "dirty tree",
                                    "bad": "not ok"})[["records", "with host facts", "unknown host", "loaded host",
                                                       "dirty tree", "not ok"]]
    total = counts.sum()
    counts.loc[("all", "all"), :] = total
    counts = counts.astype(int).map(lambda x: f"{x:,}")
    counts.index = [f"{d} · {w}" if d != "all" else "**all records**" for d, w in counts.index]
    counts.index.name = "device · kind or mode"
    doc.table(counts)
    doc.note(f"*Loaded host*: measured while the 1-minute load average exceeded the CPUs available (timings not "
             f"trustworthy); {int(total['with host facts']):,} of {len(df):,} records carry host facts, "
             f"{int(total['unknown host']):,} do not (unknown host: their load cannot be checked).")
    doc.table(device_table(df), left=("type",))
    hosts = host_table(df)
    if len(hosts):
        doc.p("Threads and load of the records with host facts (distinct values with their record counts):")
        doc.table(hosts, left=tuple(hosts.columns))
    dirty = df[df["dirty"]]
    doc.anchor("dirty")
    if len(dirty):
        doc.p(f"**{len(dirty)} record(s) from a modified (`-dirty`) tree** (their code is not exactly any commit): "
              + "; ".join(f"`{c}`: {', '.join(f'{m} ×{n}' for m, n in g['what'].value_counts().items())}"
                          for c, g in dirty.assign(what=what[dirty.index]).groupby("git_commit")) + ".")
    else:
        doc.p("No record comes from a modified (`-dirty`) tree.")
    doc.p(f"torch: {counts_text(df['versions_torch'], code=True)}. CUDA: {counts_text(df['versions_cuda'], code=True)}.")
    doc.p(f"git commits: {counts_text(df['git_commit'], code=True)}.")
    doc.p(f"Records span {time_span(df)}.")
    doc.anchor("skipped")
    if peers or other:
        doc.p("JSON files that are not result records: "
              + "; ".join([f"`{p.path}` (a peers comparison: on the peers page)" for p in peers]
                          + [f"`{p}` (no `schema` and `kind` keys, or not valid JSON)" for p in other[:30]])
              + (f"; and {len(other) - 30} more" if len(other) > 30 else "") + ".")
    doc.h(2, "Failed cases", anchor="failures")
    bad = failures_table(df)
    if bad.empty:
        doc.p("None: every record has status ok.")
    else:
        doc.p(f"{len(bad)} record(s) not ok, with the first line of their message:")
        doc.table(bad, index=False, left=("kind", "device", "variant", "task / mode", "status", "message"))


def peers_page(doc: Document, peers: Sequence[Peers]) -> None:
    doc.p("Our implementation of a variant against a public one (the peers' own code), timed side by side in "
          "interleaved rounds by `scripts/peers.py`: ms per forward+backward call, ours ÷ peer (below 1: ours is "
          "faster) and peak memory where measured. These files are not result records; each is listed here whole.")
    doc.anchor("peers")
    if not peers:
        doc.p("No peers comparison among the inputs.")
    for p in peers:
        doc.h(2, f"{p.device}: `{p.path.name}`")
        doc.p(f"`{p.path}`: {p.setting}.")
        doc.table(peers_table(p), index=False, left=("variant",))


def compare_page(doc: Document, df: pd.DataFrame, baseline: Path | None, tolerance: float,
                 out_dir: Path) -> pd.DataFrame | None:
    """Writes ``compare.csv`` beside the report and returns the comparison (None: no baseline)."""
    doc.p("Every (case, metric) pair measured both here and in a baseline (an earlier report or records folder), with "
          "its relative change; a regression is time or memory up, or accuracy or throughput down, beyond the "
          "tolerance, or a case that was ok and now fails.")
    doc.anchor("compare")
    if baseline is None:
        doc.p("No baseline given (`compare=DIR_OR_CSV`).")
        return None
    base = load_frame([baseline])
    cmp = compare_frames(df, base, tolerance)
    write_text(out_dir / "compare.csv", cmp.to_csv(index=False))
    nreg = int(cmp["regression"].sum()) if len(cmp) else 0
    doc.p(f"Baseline: `{baseline}` ({len(base)} records). Tolerance {tolerance:.0%}. **{nreg} regression(s)** in "
          f"{len(cmp)} compared (case, metric) pairs; all pairs in `compare.csv`.")
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
