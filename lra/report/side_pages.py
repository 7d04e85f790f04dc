"""The evidence side pages: exactness and approximation error, smoothness, op-level detail. Each opens
with one paragraph on what it shows; each function writes one page into a :class:`Document`.
"""
from __future__ import annotations

import pandas as pd

from .causal import causal_rows
from .document import Document
from .figures import CAPTIONS, Drawer
from .fits import derived_display, derived_numbers
from .labels import MODE_NAMES, OP_MODES, anchor, devices, fig_key, memory_note, setting, sig
from .questions import gap_notes, question_table
from .smoothness import CITATION as SMOOTHNESS_CITATION, PATTERN_NAMES, RATIO_COLUMN as SMOOTHNESS_RATIO
from .smoothness import RATIO_NOTE as SMOOTHNESS_RATIO_NOTE, exponent_display, findings, growth_legend, pattern_order
from .smoothness import smoothness_rows
from .tables import case_table, overhead_table, weights_table, with_conventions


def place(doc: Document, draw: Drawer, kind: str, dev: str | None, empty: str = "") -> None:
    """Draw figure ``kind`` of ``dev`` and place it, or say in one line why it is not drawn (then
    ``empty``, a sentence that follows, if given)."""
    path, note = draw.draw(kind, dev)
    caption = (f"{dev}: " if dev else "") + CAPTIONS[kind]
    if path is None:
        doc.note(f"*{caption[0].upper() + caption[1:]}: not drawn ({note}).{' ' + empty if empty else ''}*")
    else:
        doc.figure(fig_key(kind, dev), caption, path, draw.out.path.parent, note)


def exactness_page(doc: Document, df: pd.DataFrame, draw: Drawer) -> None:
    doc.p("How far each variant's output is from exact softmax attention on the same inputs: the relative error "
          "‖out − exact‖_F / ‖exact‖_F against float64 exact attention, per input pattern and length (`exactness` "
          "bench; learned feature maps fitted to softmax first), and Hedgehog's measures of the attention weights "
          "(spikiness, monotonicity). Exact variants sit at rounding level and are drawn off the scale, so that the "
          "approximations can be told apart.")
    b = df[(df["kind"] == "bench") & (df["mode"] == "exactness")]
    if b.empty:
        doc.p("No `exactness` records.")
    for dev in devices(b):
        d = b[b["device_name"] == dev]
        doc.h(2, dev, anchor=anchor("exactness", dev))
        place(doc, draw, "approx", dev)
        for pat, g in d.groupby(d["pattern"].astype(object).fillna("unnamed")):
            shape = setting(g)
            doc.p(f"Relative error, inputs `{pat}`{f' ({shape})' if shape else ''}:")
            table = case_table(g, "approx_error", lambda x: f"{x:.3g}")
            doc.table(table)
            doc.note(gap_notes(g, table))
            weights, n = weights_table(g)
            if n is not None:
                doc.p(f"Attention weights at N = {n:,}, inputs `{pat}`: entropy of each query's weights (lower = "
                      f"spikier), monotonicity (Spearman correlation of the weights with q·k; 1 = monotone), KL from "
                      f"softmax's weights, and the output error before and after fitting a learned feature map (the "
                      f"same value where there is nothing to fit):")
                doc.table(weights)


def smoothness_page(doc: Document, df: pd.DataFrame, draw: Drawer) -> None:
    doc.p(f"How smooth each attention map is as N grows, after {SMOOTHNESS_CITATION}: L is the local Lipschitz "
          "constant of one attention map X ↦ Attention(XW_Q, XW_K, XW_V) at an input X of N tokens (the spectral "
          "norm of its Jacobian, by power iteration), and α the least-squares slope of log L against log N over "
          "every measured N (L ∝ N^α). The paper proves L ≤ C·√N for softmax attention on tokens in a ball of "
          "radius R and measures about N^¼ on real text. This does not decide which attention to use; it tells "
          "which ones can become unstable at length.")
    b = df[df["kind"] == "bench"]
    shown = False
    for dev in devices(b):
        sm = smoothness_rows(b[b["device_name"] == dev])
        if sm.empty:
            continue
        shown = True
        doc.h(2, dev, anchor=anchor("smoothness", dev))
        doc.p("Input patterns: " + "; ".join(f"`{p}` = {PATTERN_NAMES.get(p, p)}"
                                               for p in pattern_order(sm["pattern"].unique())) + ".")
        doc.p("What the records show:")
        doc.bullets(findings(sm))
        doc.p(f"Fitted exponent α per variant and input pattern (main setting; growth classes: {growth_legend()}):")
        table, why = _explain_smoothness_gaps(exponent_display(sm), sm)
        doc.table(table, left=("worst-case growth (adversarial)",))
        if SMOOTHNESS_RATIO in table:
            doc.note(f"*{SMOOTHNESS_RATIO_NOTE}*")
        doc.note(why)
        for caption, (path, note) in draw.smoothness(dev):
            key = fig_key("smoothness_" + caption.split(":")[-1].strip().replace(" ", "_"), dev)
            if path is None:
                doc.note(f"*{caption[0].upper() + caption[1:]}: not drawn ({note}).*")
            else:
                doc.figure(key, f"{dev}: {caption}", path, draw.out.path.parent, note)
    if not shown:
        doc.p("No `smoothness` records.")


def _explain_smoothness_gaps(table: pd.DataFrame, rows: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The smoothness exponent table with each "—" replaced by its reason, and the note that says what the
    reasons mean: *not run* (no record of that variant and pattern), the failed status, or *too few
    lengths* (an exponent needs two lengths with status ok); "not measured" for a bound ratio without one."""
    if table.empty:
        return table, ""
    out = table.copy()
    used = set()
    for col in out.columns:
        pattern = (col.removesuffix(" α") if col.endswith(" α")
                   else "adversarial" if col.startswith("worst-case growth") else None)
        for label in out.index:
            if out.loc[label, col] != "—":
                continue
            if pattern is None:
                out.loc[label, col] = "not measured"
                continue
            g = rows[(rows["label"] == label) & (rows["pattern"] == pattern)]
            bad = g[g["status"] != "ok"]["status"]
            reason = ("not run" if g.empty else "too few lengths" if bad.empty
                      else "/".join(sorted(bad.astype(str).unique())))
            out.loc[label, col] = reason
            used.add(reason)
    words = {"not run": "*not run*: no record of that variant with that input pattern (the `COMMANDS.md` beside "
                        "the records says why, e.g. a checkpoint that was not kept)",
             "too few lengths": "*too few lengths*: fewer than two lengths with status ok"}
    notes = [words.get(r, f"*{r}*: every record of that cell failed with this status") for r in sorted(used)]
    return out, ("Cells without a number: " + "; ".join(notes) + ".") if notes else ""


def _calls(rows: pd.DataFrame) -> str:
    """"median of 5 timed calls" from the records' ``repeats`` (or their raw ``timings_ms``)."""
    n = rows["n_timings"].where(rows["n_timings"].notna(), rows["repeats"]).dropna()
    if n.empty:
        return "median"
    lo, hi = int(n.min()), int(n.max())
    return f"median of {lo if lo == hi else f'{lo}–{hi}'} timed calls"


def _op_tables(doc: Document, rows: pd.DataFrame, name: str, target: str) -> None:
    """Time with spread, peak memory, TFLOP/s and fraction of peak of one mode's rows."""
    shape = setting(rows)
    doc.anchor(target)
    doc.p(f"**{name}** ({shape}): time per call in ms, {_calls(rows)} (p10–p90 of the calls in brackets where "
          f"recorded):")
    table = case_table(rows, "time_ms", spread=True)
    doc.table(table)
    doc.note(gap_notes(rows, table))
    note = memory_note(rows)
    if note is None:
        doc.p(f"**{name}**: peak memory (MiB):")
        doc.table(case_table(rows, "peak_mem_mb", lambda x: f"{x:,.0f}"))
    else:
        doc.p(f"**{name}**: {note}.")
    for col, what, fmt in (("tflops", "TFLOP/s", sig),
                           ("tflops_fraction", "fraction of the device's peak FLOP/s", lambda x: f"{100 * x:.1f}%")):
        if rows[col].notna().any():
            t = case_table(rows, col, fmt)
            t, conv = with_conventions(t[(t != "not run").any(axis=1)], rows)
            doc.p(f"**{name}**: {what}" + (f". {conv}" if conv else " (the last column says how each variant's "
                                                                    "FLOPs were counted)") + ":")
            doc.table(t, left=("FLOPs counted as",))


def ops_page(doc: Document, df: pd.DataFrame, draw: Drawer) -> None:
    doc.p("Every benchmark number behind the main page, with its spread: attention forward and forward+backward per "
          "call (non-causal and causal), the encoder's training step at the task lengths (`model_step`, LRA Table 2 "
          "in ms per step), the decode step, FLOP rates, the length exponents with their standard errors, the "
          "crossovers and the training-loop overhead. Times are medians over timed calls; how they are taken is in "
          "`docs/numerics.md`.")
    b = df[df["kind"] == "bench"]
    if b.empty:
        doc.p("No benchmark records.")
    for dev in devices(b):
        d = b[b["device_name"] == dev]
        modes = set(d["mode"].dropna())
        if not modes & {"op_fwd", "op_fwd_bwd", "model_step", "decode", "train_overhead"}:
            continue
        doc.h(2, dev, anchor=anchor("ops", dev))
        plain = d[~d["causal"].astype(bool)]
        for mode in OP_MODES:
            rows = plain[plain["mode"] == mode]
            if len(rows):
                _op_tables(doc, rows, f"{MODE_NAMES[mode]} (`{mode}`)", anchor("ops", dev, mode))
        if "op_fwd" in modes:
            place(doc, draw, "op_fwd", dev)
        _derived(doc, df, dev)
        _model_step(doc, plain[plain["mode"] == "model_step"], dev, draw)
        causal = causal_rows(df, dev)
        cops = causal[causal["mode"] == "op_fwd_bwd"]
        if len(cops):
            doc.h(3, "Causal attention", anchor=anchor("causal", dev))
            _op_tables(doc, cops, "causal forward + backward (`op_fwd_bwd`, causal)", anchor("causal", dev, "ops"))
            doc.table(derived_display(derived_numbers(df, dev, "op_fwd_bwd", causal=True)))
            place(doc, draw, "causal_time", dev)
        dec = causal[causal["mode"] == "decode"]
        if len(dec):
            doc.h(3, "Decode step", anchor=anchor("decode", dev))
            doc.p("Time to generate one token at context N (KV cache or running state), ms per token, and the "
                  "state a decoder keeps per sequence:")
            table = case_table(dec.assign(time_ms=dec["ms_per_token"]), "time_ms")
            doc.table(table)
            doc.note(gap_notes(dec, table))
            place(doc, draw, "decode", dev)
        overhead(doc, d)
    if df["device_name"].nunique() > 1:
        doc.h(2, "Across devices", anchor="cross")
        place(doc, draw, "cross", None)


def _derived(doc: Document, df: pd.DataFrame, dev: str) -> None:
    b = df[(df["kind"] == "bench") & (df["device_name"] == dev)]
    mode = "op_fwd_bwd" if (b["mode"] == "op_fwd_bwd").any() else "op_fwd"
    der = derived_numbers(df, dev, mode, causal=False)
    if der.empty:
        return
    doc.h(3, "Exponents, crossovers and the largest N that fits", anchor=anchor("derived", dev))
    doc.p(f"From `{mode}`: time (and peak memory) ∝ N^k, k by least squares in log-log over the largest "
          f"max(3, half) of the lengths with status ok, ± one standard error of the slope; fewer than 3 lengths "
          f"give no k. Crossover: the smallest N from which the variant's time per call is below the reference's at "
          f"every larger measured N (a failed reference counts as slower), read from ≥ 3 lengths.")
    doc.table(derived_display(der))


def _model_step(doc: Document, rows: pd.DataFrame, dev: str, draw: Drawer) -> None:
    if rows.empty:
        return
    doc.h(3, "Training step of the encoder (LRA Table 2 layout)", anchor=anchor("ops", dev, "model_step"))
    groups = rows.groupby([rows["task"].astype(object).fillna("—"), rows["dtype"].astype(object).fillna("—"),
                           rows["batch_size"].fillna(-1)], sort=True)
    for (task, dtype, bs), g in groups:
        shape = ", ".join(x for x in (f"task {task}" if task != "—" else "", dtype if dtype != "—" else "",
                                      f"batch {int(bs)}" if bs != -1 else "") if x)
        g = g.assign(time_ms=g["time_ms"].fillna(1e3 / g["steps_per_s"]))
        table, _ = question_table(g, "time_ms", relative_to=("full", "flash"), fits=False)
        doc.p(f"ms per training step ({shape}; lower is better; best in bold; relative column: time ÷ exact):")
        doc.table(table)
        doc.note(gap_notes(g, table))
        note = memory_note(g)
        if note is None:
            mem, _ = question_table(g, "peak_mem_mb", lambda x: f"{x:,.0f}", relative_to=("full", "flash"),
                                    relative_name="memory", fits=False)
            doc.p(f"Peak memory of the same steps, MiB ({shape}):")
            doc.table(mem)
    place(doc, draw, "model_step", dev)


def overhead(doc: Document, d: pd.DataFrame) -> None:
    rows = d[d["mode"] == "train_overhead"]
    if rows.empty:
        return
    doc.h(3, "Training-loop overhead", anchor=anchor("overhead", rows["device_name"].iloc[0]))
    doc.p("`lra-bench modes=[train_overhead]`: milliseconds per step of the model's forward+backward alone on one "
          "fixed batch, of forward+backward+clipping+AdamW, and of the real `lra-train` step; overhead = train step "
          "/ forward+backward − 1, split into the optimizer's share and the rest of the loop.")
    doc.table(overhead_table(rows), index=False, left=("variant", "task", "dtype", "status"))
