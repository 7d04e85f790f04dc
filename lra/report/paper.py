"""The Long Range Arena paper's published numbers, which the accuracy tables compare against."""
from __future__ import annotations

import pandas as pd

from .labels import TASK_NAMES, TASKS

PAPER_CITATION = ("Tay et al. 2020, \"Long Range Arena: A Benchmark for Efficient Transformers\" "
                  "(arXiv:2011.04006, ICLR 2021), Table 1")
#: LRA paper Table 1 test accuracy (%); ``None`` = the paper's FAIL (Path-X for every model).
PAPER_TABLE1: dict[str, dict[str, float | None]] = {
    "Transformer": dict(listops=36.37, text=64.27, retrieval=57.46, image=42.44, pathfinder=71.40, pathx=None, avg=54.39),
    "Local Attention": dict(listops=15.82, text=52.98, retrieval=53.39, image=41.46, pathfinder=66.63, pathx=None, avg=46.06),
    "Sparse Trans.": dict(listops=17.07, text=63.58, retrieval=59.59, image=44.24, pathfinder=71.71, pathx=None, avg=51.24),
    "Longformer": dict(listops=35.63, text=62.85, retrieval=56.89, image=42.22, pathfinder=69.71, pathx=None, avg=53.46),
    "Linformer": dict(listops=35.70, text=53.94, retrieval=52.27, image=38.56, pathfinder=76.34, pathx=None, avg=51.36),
    "Reformer": dict(listops=37.27, text=56.10, retrieval=53.40, image=38.07, pathfinder=68.50, pathx=None, avg=50.67),
    "Sinkhorn Trans.": dict(listops=33.67, text=61.20, retrieval=53.83, image=41.23, pathfinder=67.45, pathx=None, avg=51.39),
    "Synthesizer": dict(listops=36.99, text=61.68, retrieval=54.67, image=41.61, pathfinder=69.45, pathx=None, avg=52.88),
    "BigBird": dict(listops=36.05, text=64.02, retrieval=59.29, image=40.83, pathfinder=74.87, pathx=None, avg=55.01),
    "Linear Trans.": dict(listops=16.13, text=65.90, retrieval=53.09, image=42.34, pathfinder=75.30, pathx=None, avg=50.55),
    "Performer": dict(listops=18.01, text=65.40, retrieval=53.82, image=42.77, pathfinder=77.05, pathx=None, avg=51.41),
}
#: the sequence lengths the LRA paper's Table 1 was measured at (Text: 4K bytes; Retrieval: 4K per document)
PAPER_LENGTHS = dict(listops=2000, text=4000, retrieval=4000, image=1024, pathfinder=1024, pathx=16384)
#: our variant name -> the paper's row (flash computes the same function as full).
PAPER_NAMES = {"full": "Transformer", "flash": "Transformer", "local": "Local Attention",
               "linformer": "Linformer", "reformer": "Reformer", "bigbird": "BigBird",
               "linear": "Linear Trans.", "performer": "Performer"}


SPT_CITATION = ("Amos, Berant & Gupta 2024, \"Never Train from Scratch: Fair Comparison of Long-Sequence Models "
                "Requires Data-Driven Priors\" (arXiv:2310.02980, ICLR 2024)")
#: Amos et al.'s published numbers (%), only those verified against the paper's text; a task missing
#: from a row was not verified here (the per-task cells of its Tables 1 and 2 were not legible in the
#: copy of the paper available to us), so it is left blank rather than guessed. Sources, Sec. 3.2:
#: "SPT ... even surpassing the average performance of a well-tuned S4 (86.2 vs 86.1)" -- the Avg of
#: its Table 2 (over the six LRA tasks, without PathX-256), rows "Transformers + Rotary + Masked SPT"
#: and "S4 (Gu et al., 2022a)".
SPT_TABLE: dict[str, dict[str, float]] = {
    "Transformers + Rotary + Masked SPT (Amos et al. Table 2)": dict(avg=86.2),
    "S4, from scratch (Gu et al. 2022, as quoted in Amos et al. Table 2)": dict(avg=86.1),
}


def paper_table() -> pd.DataFrame:
    """The paper's Table 1 as display strings (rows models, columns task names + "Avg")."""
    rows = {}
    for name, r in PAPER_TABLE1.items():
        rows[name] = [("FAIL" if r[t] is None else f"{r[t]:.2f}") for t in TASKS] + [f"{r['avg']:.2f}"]
    out = pd.DataFrame.from_dict(rows, orient="index", columns=[TASK_NAMES[t] for t in TASKS] + ["Avg"])
    out.index.name = "model (paper)"
    return out


def lra_length_tasks() -> dict[int, list[str]]:
    """The LRA lengths and the tasks run at each: ``{1024: ["image", "pathfinder"], 2000: ["listops"], ...}``."""
    out: dict[int, list[str]] = {}
    for task in TASKS:
        out.setdefault(PAPER_LENGTHS[task], []).append(task)
    return dict(sorted(out.items()))


def spt_paper_table() -> pd.DataFrame:
    """:data:`SPT_TABLE` as display strings, in the layout of :func:`paper_table` ("not transcribed" where a
    cell was not verified against the paper's text)."""
    rows = {name: [f"{r[t]:.2f}" if t in r else "not transcribed" for t in TASKS]
            + [f"{r['avg']:.1f}" if "avg" in r else "not transcribed"]
            for name, r in SPT_TABLE.items()}
    out = pd.DataFrame.from_dict(rows, orient="index", columns=[TASK_NAMES[t] for t in TASKS] + ["Avg"])
    out.index.name = "model (paper)"
    return out
