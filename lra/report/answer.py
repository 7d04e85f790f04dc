""""Which attention?": per device and length, the answer the records support, and why not where they don't.

For each device and sequence length (the bench grid's lengths, the trained lengths and the LRA task
lengths) :func:`answer_table` gives

- the fastest exact kernel, or a tie when the p10-p90 ranges of the fastest candidates overlap
  (:func:`lra.report.fits.tied`: "tie (full, flash)");
- the fastest variant whose accuracy is within 1 (and 3) points of exact attention on every task both
  were trained on (on this device, same protocol, recipe and length); a task on which exact attention
  did not learn (its own binomial verdict, ``learned``; for older records: more than
  :data:`DID_NOT_LEARN_POINTS` below the LRA paper's Transformer) compares nothing, and a variant that
  did not learn a task that exact attention learned never qualifies;
- how far each of those runs before it fails (the largest N that fits);
- the variants that overtake exact attention at that length (the crossover of :mod:`lra.report.fits`,
  from at least 3 lengths),

each cell linking to the table it was read from and to the figure that shows it. Non-causal records
only (the decoder answer is :mod:`lra.report.causal`). Where the records cannot answer (no accuracy
on this device, an exact baseline that did not learn, a length that was not timed) the cell says so.
Pure: a frame of records in, a frame of display strings out.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .accuracy import TOKEN_TASKS
from .document import fig_ref
from .fits import MIN_LENGTHS, TOO_FEW, derived_numbers, tied
from .labels import (LOADED_MARK, LOADED_NOTE, TASK_NAMES, anchor, fail_label, fig_key, is_exact, length_label,
                     link, sig, variant_order)
from .paper import PAPER_LENGTHS, PAPER_TABLE1, lra_length_tasks
from .tables import median_by

#: accuracy margins (points below exact attention) the answer is given for
MARGINS = (1.0, 3.0)
#: an exact baseline this many points below the LRA paper's Transformer on a task did not learn it,
#: so closeness to it says nothing (e.g. a run stuck at the majority class); for records without
#: their own ``learned`` verdict
DID_NOT_LEARN_POINTS = 10.0
#: where step times come from, in order of preference: (source, unit shown, anchor prefix of its table)
TIME_SOURCES = (("op_fwd_bwd", "ms/call", "time"), ("model_step", "ms/step", "ops"), ("train", "ms/step", "accuracy"))
SOURCE_NAMES = {"op_fwd_bwd": "ms/call = one attention forward+backward call (`op_fwd_bwd` bench; time vs N below)",
                "model_step": "ms/step = one training step of the encoder (`model_step` bench, op-level page)",
                "train": "ms/step = one training step of an `lra-train` run (its `steps_per_s`; accuracy below)"}
#: the figure each source's times are drawn in (keys of :mod:`lra.report.figures`)
SOURCE_FIGURE = {"op_fwd_bwd": "time", "model_step": "model_step", "train": "summary"}


def non_causal(df: pd.DataFrame) -> pd.DataFrame:
    """The rows measured without a causal mask (all rows of records older than the causal axis)."""
    return df[~df["causal"].astype(bool)] if "causal" in df else df


def exact_variants(df: pd.DataFrame) -> set[str]:
    """Variants that compute exact softmax attention, from the records (see :func:`labels.is_exact`)."""
    return set(df.loc[is_exact(df), "variant"]) if len(df) else set()


@dataclass
class AccuracyEvidence:
    """What the train records of one device say about approximations against exact attention.

    ``gaps``: approximate variant -> its worst gap to exact attention in points over the tasks compared
    (empty when nothing could be compared); ``tasks``: the tasks compared; ``at_chance``: approximate
    variants that did not learn a task exact attention learned (never "close to exact"); ``skipped``:
    tasks left out because exact attention did not learn them; ``reason``: why nothing could be
    compared (None when something could), ``short``: the same in a few words for a table cell.
    """
    gaps: dict[str, float] = field(default_factory=dict)
    worst_task: dict[str, str] = field(default_factory=dict)
    tasks: list[str] = field(default_factory=list)
    at_chance: set[str] = field(default_factory=set)
    skipped: list[str] = field(default_factory=list)
    reason: str | None = None
    short: str | None = None
    runs: int = 0

    def qualified(self, margin: float, exact: set[str]) -> set[str]:
        return set(exact) | {v for v, g in self.gaps.items() if g >= -margin and v not in self.at_chance}


def _did_not_learn(rows: pd.DataFrame) -> bool | None:
    """True when none of ``rows`` (one variant's runs on one task) learned by its own verdict; None
    when they carry no verdict."""
    flags = rows["learned"].dropna() if "learned" in rows else pd.Series(dtype=bool)
    return None if flags.empty else not bool(flags.astype(bool).any())


def accuracy_evidence(df: pd.DataFrame, device: str) -> AccuracyEvidence:
    """Compare each approximate variant with exact attention on the tasks both were trained on."""
    tr = df[(df["kind"] == "train") & (df["device_name"] == device) & ~df["task"].isin(TOKEN_TASKS)]
    if tr.empty:
        return AccuracyEvidence(reason="no training runs on this device, so no accuracy", short="no accuracy on this device")
    ok = tr[(tr["status"] == "ok") & tr["accuracy"].notna()]
    if ok.empty:
        return AccuracyEvidence(reason="no training run on this device finished ok", short="no run finished ok")
    exact = exact_variants(df)
    exp = ok["experiment"] if "experiment" in ok else pd.Series(None, index=ok.index, dtype=object)
    ok = ok.assign(acc=ok["accuracy"] * 100, n=ok["seq_len"].fillna(-1), rec=ok["recipe"].fillna("lra"),
                   proto=ok["protocol"].fillna("scratch"), exp=exp.astype(object).where(exp.notna(), ""))
    no_ref, no_learn, only_exact, gaps, compared, runs, chance = [], [], [], [], [], [], set()
    for (task, recipe, protocol, experiment, n), g in ok.groupby(["task", "rec", "proto", "exp", "n"]):
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
        verdicts = {v: _did_not_learn(g[g["variant"] == v]) for v in per_variant.index}
        exact_verdicts = [verdicts[v] for v in ex.index if verdicts[v] is not None]
        if exact_verdicts:
            if all(exact_verdicts):  # every exact variant sat at chance: closeness to it says nothing
                no_learn.append(f"{name} {ref:.1f}% (at chance by its binomial test)")
                continue
        elif paper is not None and ref < paper - DID_NOT_LEARN_POINTS:
            no_learn.append(f"{name} {ref:.1f}% vs the paper's {paper:.1f}%")
            continue
        if approx.empty:
            continue
        chance |= {v for v in approx.index if verdicts[v]}
        gaps.extend((v, a - ref, name) for v, a in approx.items())
        seeds = int(g.groupby("variant").size().min())
        runs.append(seeds)
        where = f"N = {length_label(n)}" + (f", not LRA's {length_label(PAPER_LENGTHS[task])}" if task in PAPER_LENGTHS
                                            and int(n) != PAPER_LENGTHS[task] else "")
        label = experiment or f"recipe {recipe}"
        compared.append(f"{name} ({where}; {label}" + ("" if protocol == "scratch" else f", {protocol}") + "; "
                        + ("1 run" if seeds == 1 else f"≥ {seeds} runs") + " per variant)")
    if gaps:
        worst = pd.DataFrame(gaps, columns=["variant", "gap", "task"]).sort_values("gap").groupby("variant").first()
        return AccuracyEvidence(gaps=worst["gap"].to_dict(), worst_task=worst["task"].to_dict(), tasks=compared,
                                runs=min(runs), at_chance=chance, skipped=no_learn)
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

    Sources as in :data:`TIME_SOURCES` (non-causal records only); ``setting`` is the task for
    training-step sources ("" for ops).
    """
    d = non_causal(df[df["device_name"] == device])
    parts = []
    op = d[(d["kind"] == "bench") & (d["mode"] == "op_fwd_bwd")]
    parts.append(op.assign(source="op_fwd_bwd", setting="", t=op["time_ms"], lo=op["time_p10"], hi=op["time_p90"]))
    ms = d[(d["kind"] == "bench") & (d["mode"] == "model_step")]
    parts.append(ms.assign(source="model_step", setting=ms["task"].fillna(""),
                           t=ms["time_ms"].fillna(1e3 / ms["steps_per_s"]), lo=ms["time_p10"], hi=ms["time_p90"]))
    tr = d[(d["kind"] == "train") & ~d["task"].isin(TOKEN_TASKS)]
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


def runs_to(op: pd.DataFrame, variant: str) -> str:
    """How far ``variant`` ran in the op grid: "runs to 1,024 (largest tried)" or "runs to 8,192, oom at 16,384"."""
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


def fastest_cell(at: pd.DataFrame, allowed: set[str], op: pd.DataFrame, target: str, unit: str,
                 exact: set[str], evidence: AccuracyEvidence | None = None, figure: str = "") -> str:
    """The fastest of ``allowed`` at one length, as a linked cell (a tie when the p10-p90 ranges of the
    fastest overlap); what failed or was missing otherwise. ``figure``: the figure key it is drawn in."""
    cand = at[at["variant"].isin(allowed)]
    ok = cand[(cand["status"] == "ok") & cand["value"].notna()]
    if ok.empty:
        failed = cand[cand["status"] != "ok"]
        failed = failed.set_index("variant").loc[variant_order(failed["variant"])].reset_index()
        if len(failed):
            return link("none ran: " + ", ".join(f"{r.variant} {r.status}" for r in failed.itertuples()), target)
        return "none of them timed at this N"
    ok = ok.sort_values("value", kind="stable")
    best = ok.iloc[0]
    ties = [r for r in ok.iloc[1:].itertuples() if tied((best["lo"], best["hi"]), (r.lo, r.hi))]
    mark = LOADED_MARK if best["loaded"] else ""
    if ties:
        names = [best["variant"]] + [r.variant for r in ties]
        values = " / ".join(sig(x) for x in [best["value"]] + [r.value for r in ties])
        text = f"{link('tie (' + ', '.join(names) + ')', target)}: {values} {unit}{mark}"
    else:
        name = best["variant"] + (" (exact)" if evidence is not None and best["variant"] in exact else "")
        text = f"{link(name, target)}: {sig(best['value'])} {unit}{mark}"
    failed = cand[cand["status"] != "ok"]
    if len(failed):
        text += " (" + ", ".join(f"{r.variant} {r.status}" for r in failed.itertuples()) + ")"
    elif len(ok) == 1 and evidence is None:
        text += " (the only one timed)"
    if evidence is not None and best["variant"] in evidence.gaps:
        text += f", {evidence.gaps[best['variant']]:+.1f} pts on {evidence.worst_task[best['variant']]}"
    reach = runs_to(op, best["variant"])
    text += f"; {reach}" if reach else ""
    return text + (f" · {fig_ref(figure)}" if figure else "")


def answer_lengths(df: pd.DataFrame, device: str) -> list[float]:
    """The lengths the answer is given at: the device's bench and train lengths and the LRA task lengths."""
    d = non_causal(df[(df["device_name"] == device) & df["seq_len"].notna()])
    timed = d[((d["kind"] == "train") & ~d["task"].isin(TOKEN_TASKS)) |
              d["mode"].isin(["op_fwd_bwd", "model_step"])]["seq_len"]
    return sorted({float(n) for n in timed} | {float(n) for n in PAPER_LENGTHS.values()})


def answer_table(df: pd.DataFrame, device: str) -> tuple[pd.DataFrame, list[str]]:
    """The "Which attention?" table of one device (a row per length) and the notes that go under it."""
    exact = exact_variants(df)
    times = step_times(df, device)
    evidence = accuracy_evidence(df, device)
    d = non_causal(df[(df["device_name"] == device) & (df["kind"] == "bench")])
    op = d[(d["mode"] == "op_fwd_bwd") & d["seq_len"].notna()]
    der = derived_numbers(df, device, "op_fwd_bwd", causal=False)
    ref = der["reference"].dropna().iloc[0] if der["reference"].notna().any() else None
    grid_max = op["seq_len"].max() if len(op) else np.nan
    # a Table 1 block (main_page.accuracy) exists only for the LRA tasks, not the token-level ones
    has_train = ((df["device_name"] == device) & (df["kind"] == "train") & ~df["task"].isin(TOKEN_TASKS)).any()
    acc_target = anchor("accuracy", device) if has_train else "accuracy"
    acc_link = link if has_train else (lambda text, _: text)
    tasks_at = lra_length_tasks()
    units = {s: u for s, u, _ in TIME_SOURCES}
    targets = {s: anchor(a, device, s if s == "model_step" else None) for s, _, a in TIME_SOURCES}
    targets["model_step"] = f"[[page:ops]]#{targets['model_step']}"
    cross_col = f"overtakes exact ({ref}) from" if ref else "overtakes exact attention"
    cols = ["fastest exact kernel"] + [f"fastest within {m:g} pt{'s' if m != 1 else ''} of exact" for m in MARGINS] \
        + [cross_col]
    rows, used = {}, set()
    for n in answer_lengths(df, device):
        label = length_label(n) + (f" ({', '.join(TASK_NAMES[t] for t in tasks_at[int(n)])})"
                                   if int(n) in tasks_at else "")
        at = _pick_source(times, n)
        row = {}
        src = at["source"].iloc[0] if len(at) else None
        if src is None:
            row[cols[0]] = "not timed at this N on this device"
        else:
            used.add(src)
            row[cols[0]] = fastest_cell(at, exact, op, targets[src], units[src], exact,
                                        figure=fig_key(SOURCE_FIGURE[src], device))
        for m, col in zip(MARGINS, cols[1:-1]):
            if evidence.reason is not None:
                row[col] = acc_link(evidence.short, acc_target)
            elif src is None:
                row[col] = "not timed at this N on this device"
            else:
                row[col] = fastest_cell(at, evidence.qualified(m, exact), op, targets[src], units[src], exact,
                                        evidence, figure=fig_key("summary", device))
        row[cross_col] = _overtakes(der, exact, ref, op, n, grid_max, device)
        rows[label] = row
    table = pd.DataFrame.from_dict(rows, orient="index", columns=cols)
    table.index.name = "N"
    return table, _notes(df, device, evidence, used, ref)


def _overtakes(der: pd.DataFrame, exact: set[str], ref: str | None, op: pd.DataFrame, n: float, grid_max: float,
               device: str) -> str:
    if ref is None:
        return "no op benchmark on this device" if op.empty else "no exact reference timed"
    if n > grid_max:
        return f"beyond the op grid (up to {length_label(grid_max)})"
    approx = der[~der["variant"].isin(exact)]
    if len(approx) and (approx["compared"] < MIN_LENGTHS).all():
        return f"{TOO_FEW} ({int(approx['compared'].max())} in the op grid)"
    won = approx[approx["crossover"].notna() & (approx["compared"] >= MIN_LENGTHS)]
    won = won[won["crossover"] <= n].sort_values("crossover", kind="stable")
    if not len(won):
        return f"none up to {length_label(n)}"
    return link(", ".join(f"{r.variant} from {length_label(r.crossover)}" for r in won.itertuples()),
                f"[[page:ops]]#{anchor('derived', device)}") + f" · {fig_ref(fig_key('time', device))}"


def fits_line(df: pd.DataFrame, device: str) -> str | None:
    """"Largest N that fits" of the device's op grid, variants grouped by it, with peak memory there:
    "16,384 (largest tried): flash 210 MiB, linear 64 MiB; 8,192 (oom at 16,384): full 6,100 MiB"."""
    der = derived_numbers(df, device, "op_fwd_bwd", causal=False)
    if der.empty:
        return None
    groups: dict[str, list[str]] = {}
    top = der["n_max"].max()
    for r in der.itertuples():
        if pd.isna(r.largest_ok):
            key = f"none ({r.first_failed_status} from {length_label(r.first_failed)})" \
                if pd.notna(r.first_failed) else "none"
        elif pd.notna(r.first_failed):
            key = f"{length_label(r.largest_ok)} ({r.first_failed_status} at {length_label(r.first_failed)})"
        else:
            key = length_label(r.largest_ok) + (" (largest tried)" if r.largest_ok == top else " (not run longer)")
        mem = f" {sig(r.mem_at_largest)} MiB" if np.isfinite(r.mem_at_largest) else ""
        groups.setdefault(key, []).append(f"{r.variant}{mem}")
    order = sorted(groups, key=lambda k: -max(der[der["variant"].isin([x.split()[0] for x in groups[k]])]
                                               ["largest_ok"].fillna(0)))
    return "; ".join(f"**{k}**: {', '.join(groups[k])}" for k in order)


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
                     "have at that N: ") + "; ".join(used) + "; a tie = the p10–p90 ranges of the fastest overlap.")
    if evidence.reason is not None:
        notes.append(f"Accuracy columns: no answer on this device: {evidence.reason}.")
    else:
        text = (f"Accuracy compared on {', '.join(evidence.tasks)}: an approximation qualifies when it is within "
                f"the margin of the best exact run on every task both were trained on; exact kernels qualify by "
                f"definition; 'pts' is the approximation's worst gap.")
        if evidence.skipped:
            text += f" Left out, exact attention at chance: {'; '.join(evidence.skipped)}."
        if evidence.at_chance:
            text += f" Never close to exact (at chance where exact learned): {', '.join(sorted(evidence.at_chance))}."
        if evidence.runs == 1:
            text += " With one run per variant, a gap of a point or two can be seed noise."
        notes.append(text)
    if ref:
        notes.append(f"Overtakes: faster than `{ref}` per attention fwd+bwd call from that N on, at every larger "
                     f"length of the grid (fitted from ≥ {MIN_LENGTHS} lengths).")
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
        tasks = ", ".join(TASK_NAMES.get(x, x) for x in sorted(ok["task"].dropna().unique()))
        bench = f"{len(b)} bench record(s) ({modes})" if len(b) else "no bench records"
        train = "no training runs" if t.empty else \
            f"{len(t)} training run(s) of {ok['variant'].nunique()} variant(s)" + (f" on {tasks}" if tasks else
                                                                                  ", none with an accuracy")
        lines.append(f"**{dev}**: {bench}; {train}.")
    return lines
