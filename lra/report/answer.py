""""Which attention?": per device and length, the answer the records support, and why not where they don't.

For each device and sequence length (the bench grid's lengths, the trained lengths and the LRA task
lengths) :func:`answer_table` gives

- the fastest exact kernel,
- the fastest variant whose accuracy is within 1 (and 3) points of exact attention on every task both
  were trained on (on this device, same recipe, protocol and length),
- how far each of those runs before it fails (the largest N that fits),
- the variants that overtake exact attention at that length (the crossover of :mod:`lra.report.fits`),

each cell linking to the table it was read from. Where the records cannot answer (no accuracy on this
device, an exact baseline that did not learn, a length that was not timed) the cell says so.
Pure: a frame of records in, a frame of display strings out.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .fits import derived_numbers
from .labels import (LOADED_MARK, LOADED_NOTE, TASK_NAMES, anchor, fail_label, is_exact, length_label, link,
                     sig, variant_order)
from .paper import PAPER_LENGTHS, PAPER_TABLE1, lra_length_tasks
from .tables import median_by

#: accuracy margins (points below exact attention) the answer is given for
MARGINS = (1.0, 3.0)
#: an exact baseline this many points below the LRA paper's Transformer on a task did not learn it,
#: so closeness to it says nothing (e.g. a run stuck at the majority class)
DID_NOT_LEARN_POINTS = 10.0
#: where step times come from, in order of preference: (source, unit shown, anchor prefix of its table)
TIME_SOURCES = (("op_fwd_bwd", "ms/call", "ops"), ("model_step", "ms/step", "speed"), ("train", "ms/step", "speed"))
SOURCE_NAMES = {"op_fwd_bwd": "ms/call = one attention forward+backward call (`op_fwd_bwd` bench, section 3)",
                "model_step": "ms/step = one training step of the encoder (`model_step` bench, section 2)",
                "train": "ms/step = one training step of an `lra-train` run (its `steps_per_s`, section 2)"}


def exact_variants(df: pd.DataFrame) -> set[str]:
    """Variants that compute exact softmax attention, from the records (see :func:`labels.is_exact`)."""
    return set(df.loc[is_exact(df), "variant"]) if len(df) else set()


@dataclass
class AccuracyEvidence:
    """What the train records of one device say about approximations against exact attention.

    ``gaps``: approximate variant -> its worst gap to exact attention in points over the tasks compared
    (empty when nothing could be compared); ``tasks``: the tasks compared; ``reason``: why nothing
    could be compared (None when something could), ``short``: the same in a few words for a table cell.
    """
    gaps: dict[str, float] = field(default_factory=dict)
    worst_task: dict[str, str] = field(default_factory=dict)
    tasks: list[str] = field(default_factory=list)
    reason: str | None = None
    short: str | None = None
    runs: int = 0

    def qualified(self, margin: float, exact: set[str]) -> set[str]:
        return set(exact) | {v for v, g in self.gaps.items() if g >= -margin}


def accuracy_evidence(df: pd.DataFrame, device: str) -> AccuracyEvidence:
    """Compare each approximate variant with exact attention on the tasks both were trained on."""
    tr = df[(df["kind"] == "train") & (df["device_name"] == device)]
    if tr.empty:
        return AccuracyEvidence(reason="no training runs on this device, so no accuracy", short="no accuracy on this device")
    ok = tr[(tr["status"] == "ok") & tr["accuracy"].notna()]
    if ok.empty:
        return AccuracyEvidence(reason="no training run on this device finished ok", short="no run finished ok")
    exact = exact_variants(df)
    ok = ok.assign(acc=ok["accuracy"] * 100, n=ok["seq_len"].fillna(-1), rec=ok["recipe"].fillna("lra"),
                   proto=ok["protocol"].fillna("scratch"))
    no_ref, no_learn, only_exact, gaps, compared, runs = [], [], [], [], [], []
    for (task, recipe, protocol, n), g in ok.groupby(["task", "rec", "proto", "n"]):  # like with like
        name = TASK_NAMES.get(task, task) + ("" if protocol == "scratch" else f" ({protocol})")
        per_variant = g.groupby("variant")["acc"].mean()
        ex = per_variant[per_variant.index.isin(exact)]
        approx = per_variant[~per_variant.index.isin(exact)]
        if ex.empty:
            no_ref.append(name)
            continue
        ref, paper = ex.max(), PAPER_TABLE1["Transformer"].get(task)
        if approx.empty:
            only_exact.append(name)
        if paper is not None and ref < paper - DID_NOT_LEARN_POINTS:
            no_learn.append(f"{name} {ref:.1f}% vs the paper's {paper:.1f}%")
            continue
        if approx.empty:
            continue
        gaps.extend((v, a - ref, name) for v, a in approx.items())
        seeds = int(g.groupby("variant").size().min())
        runs.append(seeds)
        where = f"N = {int(n)}" + (f", not LRA's {PAPER_LENGTHS[task]}" if task in PAPER_LENGTHS and
                                   int(n) != PAPER_LENGTHS[task] else "")
        compared.append(f"{name} ({where}; recipe {recipe}" + ("" if protocol == "scratch" else f", {protocol}") + "; "
                        + ("1 run" if seeds == 1 else f"≥ {seeds} runs")
                        + " per variant)")
    if gaps:
        worst = pd.DataFrame(gaps, columns=["variant", "gap", "task"]).sort_values("gap").groupby("variant").first()
        return AccuracyEvidence(gaps=worst["gap"].to_dict(), worst_task=worst["task"].to_dict(), tasks=compared,
                                runs=min(runs))
    why, short = [], []
    if no_learn:
        why.append("exact attention did not learn the task (" + "; ".join(no_learn) + ")")
        short.append("exact baseline did not learn")
    if only_exact:
        why.append(f"no approximate variant was trained next to it ({', '.join(only_exact)})")
        short.append("no approximation trained")
    if no_ref:
        why.append(f"no exact-attention run to compare with ({', '.join(no_ref)})")
        short.append("no exact baseline trained")
    return AccuracyEvidence(reason="; ".join(why) or "nothing to compare", short="; ".join(short) or "nothing to compare")


def step_times(df: pd.DataFrame, device: str) -> pd.DataFrame:
    """Per (source, setting, N, variant) on ``device``: median time in ms with spread, status, loaded flag.

    Sources as in :data:`TIME_SOURCES`; ``setting`` is the task for training-step sources ("" for ops).
    """
    d = df[df["device_name"] == device]
    parts = []
    op = d[(d["kind"] == "bench") & (d["mode"] == "op_fwd_bwd")]
    parts.append(op.assign(source="op_fwd_bwd", setting="", t=op["time_ms"], lo=op["time_p10"], hi=op["time_p90"]))
    ms = d[(d["kind"] == "bench") & (d["mode"] == "model_step")]
    parts.append(ms.assign(source="model_step", setting=ms["task"].fillna(""),
                           t=ms["time_ms"].fillna(1e3 / ms["steps_per_s"]), lo=ms["time_p10"], hi=ms["time_p90"]))
    tr = d[d["kind"] == "train"]
    parts.append(tr.assign(source="train", setting=tr["task"].fillna(""), t=1e3 / tr["steps_per_s"],
                           lo=np.nan, hi=np.nan))
    rows = pd.concat([p for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) else None
    if rows is None:
        return pd.DataFrame(columns=["source", "setting", "seq_len", "variant", "value", "status", "lo", "hi",
                                     "loaded"])
    rows = rows[rows["seq_len"].notna() & ((rows["status"] != "ok") | rows["t"].notna())]  # ok but untimed: nothing
    return median_by(rows, ["source", "setting", "seq_len", "variant"], "t", "lo", "hi")


def _pick_source(times: pd.DataFrame, n: float) -> pd.DataFrame:
    """The rows of one (source, setting) at length ``n``: the preferred source, the setting with most variants."""
    at = times[times["seq_len"] == n]
    if at.empty:
        return at
    rank = {s: i for i, (s, _, _) in enumerate(TIME_SOURCES)}
    groups = dict(list(at.groupby(["source", "setting"])))
    best = min(groups, key=lambda k: (rank[k[0]], -int((groups[k]["status"] == "ok").sum()), str(k[1])))
    return groups[best]


def _runs_to(op: pd.DataFrame, variant: str) -> str:
    """How far ``variant`` ran in the op grid: "runs to 1K (largest tried)" or "runs to 8K, oom at 16K"."""
    g = op[op["variant"] == variant]
    if g.empty:
        return ""
    bad = g[g["status"] != "ok"]
    if bad.empty:
        return f"runs to {length_label(g['seq_len'].max())} (largest tried)"
    n = bad["seq_len"].min()
    below = g[(g["status"] == "ok") & (g["seq_len"] < n)]["seq_len"]
    first = fail_label(bad[bad["seq_len"] == n]["status"])
    return (f"runs to {length_label(below.max())}, " if len(below) else "") + f"{first} at {length_label(n)}"


def _fastest(at: pd.DataFrame, allowed: set[str], op: pd.DataFrame, target: str, unit: str,
             exact: set[str], evidence: AccuracyEvidence | None = None) -> str:
    """The fastest of ``allowed`` at one length, as a linked cell; what failed or was missing otherwise."""
    cand = at[at["variant"].isin(allowed)]
    ok = cand[(cand["status"] == "ok") & cand["value"].notna()]
    if ok.empty:
        failed = cand[cand["status"] != "ok"]
        failed = failed.set_index("variant").loc[variant_order(failed["variant"])].reset_index()
        if len(failed):
            return link("none ran: " + ", ".join(f"{r.variant} {r.status}" for r in failed.itertuples()), target)
        return "none of them timed at this N"
    best = ok.loc[ok["value"].idxmin()]
    name = best["variant"] + (" (exact)" if evidence is not None and best["variant"] in exact else "")
    text = f"{link(name, target)}: {sig(best['value'])} {unit}" + (LOADED_MARK if best["loaded"] else "")
    failed = cand[cand["status"] != "ok"]
    if len(failed):
        text += " (" + ", ".join(f"{r.variant} {r.status}" for r in failed.itertuples()) + ")"
    elif len(ok) == 1 and evidence is None:
        text += " (the only one timed)"
    if evidence is not None and best["variant"] in evidence.gaps:
        text += f", {evidence.gaps[best['variant']]:+.1f} pts on {evidence.worst_task[best['variant']]}"
    runs = _runs_to(op, best["variant"])
    return text + (f"; {runs}" if runs else "")


def answer_lengths(df: pd.DataFrame, device: str) -> list[float]:
    """The lengths the answer is given at: the device's bench and train lengths and the LRA task lengths."""
    d = df[(df["device_name"] == device) & df["seq_len"].notna()]
    timed = d[(d["kind"] == "train") | d["mode"].isin(["op_fwd_bwd", "model_step"])]["seq_len"]
    return sorted({float(n) for n in timed} | {float(n) for n in PAPER_LENGTHS.values()})


def answer_table(df: pd.DataFrame, device: str) -> tuple[pd.DataFrame, list[str]]:
    """The "Which attention?" table of one device (a row per length) and the notes that go under it."""
    exact = exact_variants(df)
    times = step_times(df, device)
    evidence = accuracy_evidence(df, device)
    d = df[(df["device_name"] == device) & (df["kind"] == "bench")]
    op = d[(d["mode"] == "op_fwd_bwd") & d["seq_len"].notna()]
    der = derived_numbers(df, device, "op_fwd_bwd")
    ref = der["reference"].dropna().iloc[0] if der["reference"].notna().any() else None
    grid_max = op["seq_len"].max() if len(op) else np.nan
    has_train = ((df["device_name"] == device) & (df["kind"] == "train")).any()
    acc_target = anchor("accuracy", device) if has_train else anchor("accuracy")
    tasks_at = lra_length_tasks()
    units = {s: u for s, u, _ in TIME_SOURCES}
    targets = {s: anchor(a, device, s if a == "ops" else None) for s, _, a in TIME_SOURCES}
    cross_col = f"overtakes exact ({ref}) from" if ref else "overtakes exact attention"
    cols = ["fastest exact kernel"] + [f"fastest within {m:g} pt{'s' if m != 1 else ''} of exact" for m in MARGINS] \
        + [cross_col]
    rows, used = {}, set()
    for n in answer_lengths(df, device):
        label = length_label(n) + (f" ({', '.join(TASK_NAMES[t] for t in tasks_at[int(n)])})"
                                   if int(n) in tasks_at else "")
        at = _pick_source(times, n)
        row = {}
        if at.empty:
            row[cols[0]] = "not timed at this N on this device"
        else:
            src = at["source"].iloc[0]
            used.add(src)
            row[cols[0]] = _fastest(at, exact, op, targets[src], units[src], exact)
        for m, col in zip(MARGINS, cols[1:-1]):
            if evidence.reason is not None:
                row[col] = link(evidence.short, acc_target)
            elif at.empty:
                row[col] = "not timed at this N on this device"
            else:
                row[col] = _fastest(at, evidence.qualified(m, exact), op, targets[at["source"].iloc[0]],
                                    units[at["source"].iloc[0]], exact, evidence)
        if ref is None:
            row[cross_col] = "no op benchmark on this device" if op.empty else "no exact reference timed"
        elif n > grid_max:
            row[cross_col] = f"beyond the op grid (up to {length_label(grid_max)})"
        else:
            won = der[der["crossover"].notna() & ~der["variant"].isin(exact)]
            won = won[won["crossover"] <= n].sort_values("crossover", kind="stable")
            row[cross_col] = link(", ".join(f"{r.variant} from {length_label(r.crossover)}"
                                            for r in won.itertuples()), anchor("derived", device)) \
                if len(won) else f"none up to {length_label(n)}"
        rows[label] = row
    table = pd.DataFrame.from_dict(rows, orient="index", columns=cols)
    table.index.name = "N"
    return table, _notes(df, device, evidence, used, ref)


def _notes(df: pd.DataFrame, device: str, evidence: AccuracyEvidence, sources: set[str],
           ref: str | None) -> list[str]:
    d = df[df["device_name"] == device]
    notes = []
    if set(d["device_type"].dropna().astype(str)) == {"cpu"}:
        notes.append("CPU only: these times come from this CPU (`time.perf_counter`) and say nothing about "
                     "which kernel is fastest on a GPU.")
    used = [SOURCE_NAMES[s] for s, _, _ in TIME_SOURCES if s in sources]
    if used:
        notes.append("Times are medians" + (": " if len(used) == 1 else ", from the first of these the records "
                     "have at that N: ") + "; ".join(used) + ".")
    if evidence.reason is not None:
        notes.append(f"Accuracy columns: no answer on this device: {evidence.reason}.")
    else:
        notes.append(f"Accuracy compared on {', '.join(evidence.tasks)}: an approximation qualifies when it is "
                     f"within the margin of the best exact run on every task both were trained on (same recipe "
                     f"and length); exact kernels qualify by definition; 'pts' is the approximation's worst gap."
                     + (" With one run per variant, a gap of a point or two can be seed noise." if evidence.runs == 1
                        else ""))
    if ref:
        notes.append(f"Overtakes: faster than `{ref}` per attention fwd+bwd call from that N on, at every larger "
                     f"length of the grid (section 4).")
    if d["host_loaded"].fillna(False).astype(bool).any():
        notes.append(LOADED_NOTE)
    return notes


def records_summary(df: pd.DataFrame) -> list[str]:
    """One line per device: what its records can answer (speed from which benches, accuracy from which runs)."""
    lines = []
    for dev, d in df.groupby("device_name"):
        b, t = d[d["kind"] == "bench"], d[d["kind"] == "train"]
        modes = ", ".join(f"`{m}`" for m in sorted(b["mode"].dropna().unique()))
        ok = t[(t["status"] == "ok") & t["accuracy"].notna()]
        runs = "; ".join(f"{v} on {', '.join(TASK_NAMES.get(x, x) for x in sorted(g['task'].dropna().unique()))}"
                         for v, g in ok.groupby("variant")) if len(ok) else ""
        bench = f"{len(b)} bench record(s) ({modes})" if len(b) else "no bench records"
        train = "no training runs" if t.empty else \
            f"{len(t)} training run(s), " + (f"with an accuracy: {runs}" if runs else "none with an accuracy")
        lines.append(f"**{dev}**: {bench}; {train}.")
    return lines

