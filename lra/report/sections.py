"""The answer and the evidence: each function writes one section of the report from the tidy frame.

Order in the report: "Which attention?" (with the one-figure summary), then the evidence sections
1-5 (accuracy, speed and memory, op-level tables, derived numbers, figures). The tables themselves are
built by :mod:`lra.report.tables`, :mod:`lra.report.fits` and :mod:`lra.report.answer`; the anchors set
here are the targets of the answer's links.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .answer import DID_NOT_LEARN_POINTS, MARGINS, answer_table, records_summary
from .document import Document
from .figures import Figures, colors_for
from .fits import derived_display, derived_numbers
from .labels import MODE_NAMES, OP_MODES, TASK_NAMES, TASKS, anchor, devices, link, memory_note, setting, sig
from .frame import PROTOCOLS
from .paper import PAPER_CITATION, PAPER_LENGTHS, SPT_CITATION, paper_table, spt_paper_table
from .plotting import FigureDir
from .smoothness import CITATION as SMOOTHNESS_CITATION, PATTERN_NAMES, RATIO_COLUMN as SMOOTHNESS_RATIO
from .smoothness import (RATIO_NOTE as SMOOTHNESS_RATIO_NOTE, exponent_display, findings, growth_legend, pattern_order,
                         smoothness_rows)
from .summary_figure import summary_figure
from .tables import (accuracy_table, case_table, gain_table, gap_table, overhead_table, protocol_settings,
                     speed_source, speed_table, weights_table, with_conventions)

SECTIONS = (("answer", "Which attention?"), ("accuracy", "1. Accuracy"), ("speed", "2. Speed and memory"),
            ("ops", "3. Op-level benchmarks"), ("derived", "4. Derived numbers"), ("figures", "5. Figures"),
            ("failures", "6. Failed cases"), ("provenance", "7. Provenance"), ("compare", "8. Comparison with baseline"))


def answer(doc: Document, df: pd.DataFrame, out: FigureDir | None, drawn: list[Path]) -> None:
    """"Which attention?": per device, the answer table and the one-figure summary."""
    doc.h(2, "Which attention?", anchor="answer")
    doc.p("Per device and sequence length, from the records below only: the fastest exact kernel; the fastest "
          f"variant within {' and '.join(f'{m:g}' for m in MARGINS)} accuracy points of exact attention on the "
          "tasks trained on that device; how far each ran before failing; and which approximations overtake "
          "exact attention at that length. Each cell links to the table it was read from; where the records "
          "cannot answer, the cell says why. An exact baseline more than "
          f"{DID_NOT_LEARN_POINTS:g} points below the LRA paper's Transformer did not learn the task, so being "
          "close to it says nothing.")
    doc.p("What the records hold:")
    doc.bullets(records_summary(df))
    for dev in devices(df):
        doc.h(3, f"Device: {dev}", anchor=anchor("answer", dev))
        table, notes = answer_table(df, dev)
        doc.table(table, left=table.columns)
        doc.bullets(notes)
    doc.h(3, "At a glance: accuracy vs time per training step vs memory (LRA Figure 3 layout)", anchor="summary")
    for dev in devices(df):
        if out is None:
            doc.p(f"*{dev}: figure not drawn (figures turned off).*")
            continue
        path, why = summary_figure(df, dev, colors_for(df), out)
        if path is None:
            doc.p(f"*{dev}: not drawn: {why}. Nothing here says which variant is accurate enough.*")
        else:
            drawn.append(path)
            doc.image(f"{dev}: accuracy vs time per training step, memory as bubble size", path, out.path.parent)


def accuracy(doc: Document, df: pd.DataFrame) -> None:
    doc.h(2, "1. Accuracy (LRA Table 1 layout)", anchor="accuracy")
    tr = df[df["kind"] == "train"]
    doc.p("Test accuracy in %, mean ± sample std over seeds where several. A failed run shows its status "
          "(oom, nan, error); \"—\" = not run. Avg is over tasks with a result (count shown when not all).")
    if tr.empty:
        doc.p("No records (no `train` records).")
    recipes = sorted(tr["recipe"].dropna().unique(), key=lambda r: (r != "lra", r))
    if len(recipes) > 1:
        doc.p("Runs of different recipes (`recipe=`: model size and optimizer settings; `lra` = the paper's) "
              "are tabulated separately.")
    if (tr["protocol"] == "spt").any():
        doc.p("Two protocols, one table each: `scratch` trains from a random initialisation (the LRA protocol); "
              "`spt` first self-pretrains the same encoder on the task's training inputs (`pretrain=mlm|causal`, "
              f"{SPT_CITATION}) and fine-tunes it on the labels. The gain table is spt − scratch.")
    seen: set[str] = set()
    for dev, recipe in ((d, r) for d in devices(tr) for r in recipes):
        here = tr[(tr["device_name"] == dev) & (tr["recipe"] == recipe)]
        if here.empty:
            continue
        doc.h(3, f"Device: {dev}" + (f", recipe: {recipe}" if len(recipes) > 1 or recipe != "lra" else ""),
              anchor=None if dev in seen else anchor("accuracy", dev))
        seen.add(dev)
        protocols = [p for p in PROTOCOLS if (here["protocol"] == p).any()]
        means = {}
        for protocol in protocols:
            rows = here[here["protocol"] == protocol]
            if protocols != ["scratch"]:
                doc.h(4, f"protocol: {protocol}")
                if protocol == "spt":
                    doc.bullets(protocol_settings(rows))
            cells, means[protocol] = accuracy_table(rows, dev)
            doc.table(cells)
            gap = gap_table(means[protocol]) if protocol == "scratch" else pd.DataFrame()
            if not gap.empty:
                doc.p("Gap vs paper (ours − published, accuracy points; `flash` computes the same function as "
                      "`full` and is compared with the paper's Transformer):")
                doc.table(gap)
        if len(means) == 2:
            gain = gain_table(means["scratch"], means["spt"])
            doc.p("Gain from self-pretraining (spt − scratch mean test accuracy, points; same device, recipe, "
                  "variant and task" + ("" if not gain.empty else ": no variant and task has both") + "):")
            if not gain.empty:
                doc.table(gain)
        d = here[here["seq_len"].notna()]
        other = sorted({(t, int(n)) for t, n in zip(d["task"], d["seq_len"])
                        if t in PAPER_LENGTHS and int(n) != PAPER_LENGTHS[t]}, key=lambda x: TASKS.index(x[0]))
        if other:
            doc.p("Caution: " + ", ".join(f"{TASK_NAMES[t]} ran at N = {n:,} (the paper: {PAPER_LENGTHS[t]:,})"
                                          for t, n in other)
                  + "; such runs (e.g. `trainer=quick`) solve a different problem, so their gaps say little.")
    doc.h(3, "Published numbers")
    doc.p(f"From {PAPER_CITATION}. FAIL = the paper reports no better-than-chance result.")
    doc.table(paper_table())
    doc.p(f"Self-pretrained, from {SPT_CITATION}: Transformers with rotary positions, masked self-pretraining "
          "and models larger than the LRA paper's, next to S4 trained from scratch. Only numbers checked against "
          "the paper's text are shown; \"—\" = not transcribed here (per-task cells unverified).")
    doc.table(spt_paper_table())


def speed(doc: Document, df: pd.DataFrame) -> None:
    doc.h(2, "2. Speed and memory (LRA Table 2 layout)", anchor="speed")
    devs = [d for d in devices(df) if not speed_source(df, d)[0].empty]
    if not devs:
        doc.p("No records (no `model_step` bench records and no train records with `steps_per_s`).")
    for dev in devs:
        rows, source = speed_source(df, dev)
        doc.h(3, f"Device: {dev}", anchor=anchor("speed", dev))
        doc.p(f"Source: {source}. Steps per second (higher is better; in brackets the range over the "
              f"timed steps, p10–p90, where recorded) and peak memory (lower is better).")
        unplaced = rows["seq_len"].isna()
        if unplaced.any():  # e.g. a job that failed before its shape was known: no column to put it in
            doc.p(f"{int(unplaced.sum())} record(s) without a sequence length are left out here "
                  f"(failed: see section 6).")
            rows = rows[~unplaced]
        groups = rows.groupby([rows["task"].astype(object).fillna("—"), rows["dtype"].astype(object).fillna("—"),
                               rows["batch_size"].fillna(-1)], sort=True)
        for (task, dtype, bs), g in groups:
            shape = ", ".join(x for x in (f"task {task}" if task != "—" else "", f"dtype {dtype}" if dtype != "—"
                                          else "", f"batch {int(bs)}" if bs != -1 else "") if x)
            prefix = f"{shape}: " if shape else ""
            variants, note = set(g["variant"]), memory_note(g)
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
    overhead(doc, df)


def overhead(doc: Document, df: pd.DataFrame) -> None:
    d = df[(df["kind"] == "bench") & (df["mode"] == "train_overhead")]
    if d.empty:
        return
    doc.h(3, "Training-loop overhead")
    doc.p("`lra-bench modes=[train_overhead]`: milliseconds per step of the model's forward+backward alone "
          "on one fixed on-device batch, of forward+backward+gradient clipping+AdamW, and of the real "
          "`lra-train` step (`lra.training.step.TrainStep`: batch fetch, autocast, loss, backward, clip, AdamW, "
          "schedule, on-device NaN bookkeeping, one host sync per `log_every` steps). Overhead = "
          "train step / forward+backward − 1, split into the optimizer's share and the rest of the loop.")
    for dev in devices(d):
        doc.p(f"Device: {dev}")
        doc.table(overhead_table(d[d["device_name"] == dev]), index=False, left=("variant", "task", "dtype", "status"))


def _calls(rows: pd.DataFrame) -> str:
    """"median of 5 timed calls" from the records' ``repeats`` (or their raw ``timings_ms``)."""
    n = rows["n_timings"].where(rows["n_timings"].notna(), rows["repeats"]).dropna()
    if n.empty:
        return "median"
    lo, hi = int(n.min()), int(n.max())
    return f"median of {lo if lo == hi else f'{lo}–{hi}'} timed calls"


def ops(doc: Document, df: pd.DataFrame) -> None:
    doc.h(2, "3. Op-level benchmarks", anchor="ops")
    b = df[df["kind"] == "bench"]
    written = False
    for dev in devices(b):
        d = b[b["device_name"] == dev]
        if not (d["mode"].isin(OP_MODES + ("exactness", "smoothness"))).any():
            continue
        written = True
        doc.h(3, f"Device: {dev}")
        for mode in OP_MODES:
            rows = d[d["mode"] == mode]
            if rows.empty:
                continue
            shape = setting(rows)
            doc.anchor(anchor("ops", dev, mode))
            doc.p(f"{MODE_NAMES[mode]} (`{mode}`{', ' + shape if shape else ''}): time per call in ms, "
                  f"{_calls(rows)} (p10–p90 of the calls in brackets where recorded):")
            doc.table(case_table(rows, "time_ms", spread=True))
            note = memory_note(rows)
            if note is None:
                doc.p(f"{MODE_NAMES[mode]} (`{mode}`): peak memory (MiB):")
                doc.table(case_table(rows, "peak_mem_mb", lambda x: f"{x:,.0f}"))
            else:
                doc.p(f"{MODE_NAMES[mode]} (`{mode}`): {note}.")
            for col, what, fmt in (("tflops", "TFLOP/s", sig), ("tflops_fraction", "fraction of the device's peak "
                                                                          "FLOP/s", lambda x: f"{100 * x:.1f}%")):
                if rows[col].notna().any():
                    t = case_table(rows, col, fmt)
                    t, conv = with_conventions(t[(t != "—").any(axis=1)], rows)
                    doc.p(f"{MODE_NAMES[mode]} (`{mode}`): {what}" + (f". {conv}" if conv else
                          " (the last column says how each variant's FLOPs were counted)") + ":")
                    doc.table(t, left=("FLOPs counted as",))
        ex = d[d["mode"] == "exactness"]
        for pat, g in ex.groupby(ex["pattern"].astype(object).fillna("—")):
            doc.p(f"approximation error vs exact softmax attention (‖out − exact‖_F / ‖exact‖_F), inputs `{pat}`:")
            doc.table(case_table(g, "approx_error", lambda x: f"{x:.3g}"))
            weights, n = weights_table(g)
            if n is not None:
                doc.p(f"attention weights at N = {n}, inputs `{pat}` (Hedgehog's measures): entropy of each query's "
                      f"weights (lower = spikier), monotonicity (Spearman rank correlation of the weights with q·k; "
                      f"1 = monotone), KL from softmax's weights, and the output error before and after fitting a "
                      f"learned feature map to softmax (the same value where there is nothing to fit):")
                doc.table(weights)
        smoothness(doc, d, dev)
    if not written:
        doc.p("No records (no op-level, exactness or smoothness bench records).")


def smoothness(doc: Document, d: pd.DataFrame, dev: str) -> None:
    """Smoothness of one device's records: what is measured, the findings, the exponent table."""
    sm = smoothness_rows(d)
    if sm.empty:
        return
    doc.h(4, f"Smoothness ({dev})", anchor=anchor("smoothness", dev))
    doc.p(f"After {SMOOTHNESS_CITATION}: L is the local Lipschitz constant of one attention map "
          "X ↦ Attention(XW_Q, XW_K, XW_V) at an input X of N tokens (the spectral norm of its Jacobian, by power "
          "iteration), and α the least-squares slope of log L against log N over every measured N (L ∝ N^α). "
          "The paper proves L ≤ C·√N for softmax attention on tokens in a ball of radius R, tight for moderate N, "
          "and measures about N^¼ on real text. Input patterns:")
    doc.bullets(f"`{p}`: {PATTERN_NAMES.get(p, p)}" for p in pattern_order(sm["pattern"].unique()))
    doc.p("What the records show:")
    doc.bullets(findings(sm))
    doc.p(f"Fitted exponent α per variant and input pattern (main setting; figures in "
          f"{link('section 5', 'figures')}, the radius sweep there too); growth classes: {growth_legend()}:")
    table = exponent_display(sm)
    doc.table(table, left=("worst-case growth (adversarial)",))
    if SMOOTHNESS_RATIO in table:
        doc.p(f"*{SMOOTHNESS_RATIO_NOTE}*")


def derived(doc: Document, df: pd.DataFrame, mode: str = "op_fwd_bwd") -> None:
    doc.h(2, "4. Derived numbers", anchor="derived")
    b = df[df["kind"] == "bench"]
    if not (b["mode"] == mode).any() and (b["mode"] == "op_fwd").any():
        mode = "op_fwd"
    doc.p(f"From `{mode}` bench records. Exponent k: log-log least-squares slope of time (or peak memory) "
          f"against N over the upper half of the lengths with status ok. Crossover: the smallest N from which "
          f"the variant's time per call is below the reference's at every larger measured N (a failed reference "
          f"counts as slower).")
    devs = [d for d in devices(b) if ((b["device_name"] == d) & (b["mode"] == mode)).any()]
    if not devs:
        doc.p("No records.")
    for dev in devs:
        doc.h(3, f"Device: {dev}", anchor=anchor("derived", dev))
        table = derived_display(derived_numbers(df, dev, mode))
        note = memory_note(b[(b["device_name"] == dev) & (b["mode"] == mode)])
        if note:
            table = table.drop(columns=["memory ~ N^k"])
            doc.p(f"No memory exponent: {note}.")
        doc.table(table)


def figures(doc: Document, figs: Figures, out_dir: Path, drawn: list[Path], reason: str) -> None:
    doc.h(2, "5. Figures", anchor="figures")
    if not figs:
        doc.p(reason)
    for section, items in figs.items():
        doc.h(3, section)
        for caption, path, note in items:
            if path is None:
                doc.p(f"*{caption[0].upper() + caption[1:]}: not drawn ({note}).*")
                continue
            drawn.append(path)
            doc.image(caption, path, out_dir)
            if note:
                doc.p(f"*{note}*")

