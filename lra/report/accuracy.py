"""Table 1 blocks: accuracy against time per training step, one table per device and protocol.

A *block* is the train runs of one device under one protocol: the named experiment (``experiment``,
e.g. ``cpu_table``), the recipe and the training protocol (``scratch`` | ``spt``). A block whose runs
are not the LRA paper's setting (a CPU device, a task at another length, or a recipe other than
``lra``) is titled as a reduced protocol that is *not comparable to the LRA paper*. Each block states
its "learned" rule: a run learned its task when its test accuracy is above the majority-class rate by
a one-sided binomial test (``metrics.learned`` and ``metrics.learned_test``, recorded by the run);
runs that predate that verdict get none, and the table says so. Cells where runs did not learn carry
:data:`NOT_LEARNED`. Pure: frames in, strings and frames of display strings out.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .frame import as_flag
from .labels import NOT_RUN, TASK_NAMES, fail_label, length_label, sig, task_order, variant_order
from .paper import PAPER_LENGTHS

#: the mark of a cell whose runs did not learn (at chance by the run's own binomial test)
NOT_LEARNED = "✗"


@dataclass
class Block:
    """The train runs of one Table 1 block and how to title it."""
    device: str
    experiment: str | None
    recipe: str
    protocol: str
    rows: pd.DataFrame

    @property
    def reduced(self) -> bool:
        """Not the LRA paper's setting: CPU, another length, or another recipe."""
        r = self.rows
        other_length = any(t in PAPER_LENGTHS and int(n) != PAPER_LENGTHS[t]
                           for t, n in zip(r["task"], r["seq_len"]) if pd.notna(n))
        cpu = set(r["device_type"].dropna().astype(str)) == {"cpu"}
        return cpu or other_length or self.recipe != "lra" or self.protocol != "scratch"

    @property
    def cpu(self) -> bool:
        return set(self.rows["device_type"].dropna().astype(str)) == {"cpu"}

    def title(self) -> str:
        name = f"`{self.experiment}`" if self.experiment else f"recipe `{self.recipe}`"
        spt = ", self-pretrained first (spt)" if self.protocol == "spt" else ""
        if not self.reduced:
            return f"Table 1, LRA protocol ({name}{spt})"
        kind = "CPU protocol" if self.cpu else "reduced protocol"
        return f"Table 1, {kind} ({name}{spt}): not comparable to the LRA paper"

    def settings(self) -> str:
        """"N = ListOps 512, Text 1,024; d_model 64, 2 layers; 2,000 steps of 32; seeds 1-3" from the runs,
        and how many of them ended on a loaded host (``host.loaded``), whose times per step are rough."""
        r = self.rows
        lengths = ", ".join(f"{TASK_NAMES.get(t, t)} {length_label(n)}"
                            for t in task_order(r["task"].dropna().unique())
                            for n in sorted(r[r["task"] == t]["seq_len"].dropna().unique()))
        parts = [f"N = {lengths}"] if lengths else []
        cfg = [c for c in r.get("config", pd.Series(dtype=object)) if isinstance(c, dict)]

        def one(*path):
            vals = set()
            for c in cfg:
                for k in path:
                    c = c.get(k) if isinstance(c, dict) else None
                if c is not None:
                    vals.add(c)
            return "/".join(f"{v:,}" if isinstance(v, int) else str(v) for v in sorted(vals, key=str))

        model = ", ".join(x for x in (f"d_model {one('model', 'd_model')}" if one("model", "d_model") else "",
                                      f"{one('model', 'layers')} layers" if one("model", "layers") else "") if x)
        steps = f"{one('trainer', 'steps')} steps" if one("trainer", "steps") else ""
        if steps and one("trainer", "batch_size"):
            steps += f" of {one('trainer', 'batch_size')}"
        seeds = r.groupby(["variant", "task"])["seed"].nunique()
        lo, hi = (int(seeds.min()), int(seeds.max())) if len(seeds) else (1, 1)
        seed_text = "1 seed per cell" if hi <= 1 else f"{hi} seeds per cell" if lo == hi else f"{lo}–{hi} seeds per cell"
        loaded = r["host_loaded"].map(as_flag).eq(True) if "host_loaded" in r else pd.Series(dtype=bool)
        load_text = (f"ms/step as trained, {int(loaded.sum())} of {len(r)} runs on a loaded host "
                     f"(1-minute load above its cores when the run started): compare times with care"
                     if loaded.any() else "")
        return "; ".join(x for x in (*parts, model, steps, seed_text, load_text) if x)


def blocks(df: pd.DataFrame, device: str) -> list[Block]:
    """The Table 1 blocks of ``device``: named experiments first, then by recipe (``lra`` first) and protocol."""
    tr = df[(df["kind"] == "train") & (df["device_name"] == device) & ~df["task"].isin(TOKEN_TASKS)]
    if tr.empty:
        return []
    exp = tr["experiment"].astype(object).where(tr["experiment"].notna(), "")
    rec = tr["recipe"].astype(object).where(tr["recipe"].notna(), "lra")
    pro = tr["protocol"].astype(object).where(tr["protocol"].notna(), "scratch")
    out = [Block(device, e or None, r, p, g) for (e, r, p), g in tr.groupby([exp, rec, pro], sort=False)]
    return sorted(out, key=lambda b: (b.experiment is None, b.experiment or "", b.recipe != "lra", b.recipe,
                                      b.protocol != "scratch"))


#: token-level tasks have tables of their own (recall, bits per byte), not a Table 1 column
TOKEN_TASKS = ("mqar", "text_lm")


def learned_rule(rows: pd.DataFrame) -> str:
    """How these runs decided "learned", from their ``learned_test`` facts (or that they carry none)."""
    has = rows[rows["learned"].notna()] if "learned" in rows else rows.iloc[0:0]
    if has.empty:
        return ("No learned verdict in these records (runs made before `metrics.learned`); the answer uses "
                "the LRA paper's Transformer as the bar for exact attention on LRA-protocol runs only.")
    tests = rows["learned_test"].dropna() if "learned_test" in rows else pd.Series(dtype=object)
    alphas = sorted({t.get("alpha") for t in tests if isinstance(t, dict) and t.get("alpha") is not None})
    kinds = sorted({t.get("test") for t in tests if isinstance(t, dict) and t.get("test")})
    splits = sorted({t.get("split") for t in tests if isinstance(t, dict) and t.get("split")})
    majority = has.groupby("task")["majority_rate"].median().dropna()
    maj = ", ".join(f"{TASK_NAMES.get(t, t)} {100 * m:.1f}%" for t, m in majority.items())
    return (f"*Learned* = {' or '.join(splits) or 'test'} accuracy above the majority-class rate of the training labels "
            f"({maj or 'rate recorded per run'}) by a {' / '.join(kinds) or 'one-sided binomial'} test"
            + (f" at α = {', '.join(f'{a:g}' for a in alphas)}" if alphas else "")
            + f"; {NOT_LEARNED} marks runs that did not learn (at chance).")


def _acc_cell(g: pd.DataFrame) -> tuple[str, float]:
    ok = g[(g["status"] == "ok") & g["accuracy"].notna()]
    failed = g[g["status"] != "ok"]
    if ok.empty:
        return (fail_label(failed["status"]) if len(failed) else NOT_RUN), np.nan
    vals = ok["accuracy"].to_numpy(float) * 100
    text = f"{vals.mean():.2f}" + (f" ± {vals.std(ddof=1):.2f}" if len(vals) > 1 else "")
    flags = ok["learned"].dropna() if "learned" in ok else pd.Series(dtype=bool)
    missed = int((~flags.astype(bool)).sum())
    if missed:
        text += f" {NOT_LEARNED}" if missed == len(ok) else f" {NOT_LEARNED}{missed}/{len(ok)}"
    if len(failed):
        text += f" (+{len(failed)} {fail_label(failed['status'])})"
    return text, float(vals.mean())


def accuracy_time_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Variant rows; per task its test accuracy (%, mean ± std over seeds, :data:`NOT_LEARNED` where runs
    did not learn) and its median time per training step (ms); the mean accuracy over the tasks run.
    Sorted by that mean (best first), the variants run on every task before those run on some; the best
    accuracy and the fastest step of each task in bold."""
    tasks = task_order(rows["task"].dropna().unique())
    variants = variant_order(rows["variant"].unique())
    cells: dict[str, dict[str, str]] = {v: {} for v in variants}
    means = pd.DataFrame(index=variants, columns=tasks, dtype=float)
    times = pd.DataFrame(index=variants, columns=tasks, dtype=float)
    for (v, t), g in rows.groupby(["variant", "task"]):
        text, mean = _acc_cell(g)
        cells[v][t] = text
        means.loc[v, t] = mean
        sps = g[(g["status"] == "ok")]["steps_per_s"].dropna()
        times.loc[v, t] = 1e3 / float(sps.median()) if len(sps) else np.nan
    avg = means.mean(axis=1, skipna=True)
    counts = means.notna().sum(axis=1)
    # variants run on every task first (a mean over fewer tasks is not comparable), each group by its mean
    order = sorted(variants, key=lambda v: (not np.isfinite(avg[v]), counts[v] < len(tasks),
                                            -avg[v] if np.isfinite(avg[v]) else 0, v))
    out = pd.DataFrame(index=pd.Index(order, name="variant"), dtype=object)
    for t in tasks:
        name = TASK_NAMES.get(t, t)
        best_acc = means[t].idxmax() if means[t].notna().any() else None
        best_t = times[t].idxmin() if times[t].notna().any() else None
        out[f"{name} (%)"] = [(f"**{cells[v][t]}**" if v == best_acc else cells[v][t]) if t in cells[v] else NOT_RUN
                              for v in order]
        out[f"{name} ms/step"] = [(f"**{sig(times.loc[v, t])}**" if v == best_t else sig(times.loc[v, t]))
                                  if np.isfinite(times.loc[v, t]) else ("no time recorded" if t in cells[v] else NOT_RUN)
                                  for v in order]
    out["mean (%)"] = [f"{avg[v]:.2f}" + ("" if counts[v] == len(tasks) else f" ({counts[v]}/{len(tasks)} tasks)")
                       if np.isfinite(avg[v]) else NOT_RUN for v in order]
    return out
