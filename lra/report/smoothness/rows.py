"""The smoothness bench rows of the report's frame, their order, the exponent fitted to them, and
how the section writes their values.

Only ``kind == "bench"``, ``mode == "smoothness"`` rows are read (:func:`smoothness_rows`); the
other modules of :mod:`lra.report.smoothness` work on what it returns: :func:`ok_rows` (measured,
positive finite L), :func:`main_rows` (each pattern's main setting, the radius sweep left out),
:func:`median_curve` (median per N) and :func:`slope` (alpha of ``L ~ N^alpha``).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from ..fits import fit_exponent
from ..frame import as_flag
from ..labels import TASK_NAMES, sig, variant_order

CITATION = "Castin, Ablin & Peyré, *How Smooth Is Attention?*, ICML 2024 (arXiv 2312.14820)"
#: the order of the patterns in tables and figures: worst case first, real data last
PATTERNS = ("adversarial", "search", "random", "data", "data_trained")
PATTERN_NAMES = {
    "adversarial": "the paper's worst-case construction for the map's own projections, tokens of norm ≤ R",
    "search": "projected gradient ascent of L over the ball of radius R, from the adversarial point and "
              "from the best random draw; the best value found",
    "random": "tokens uniform on the sphere of radius R (mean over draws)",
    "data": "hidden states of real sequences at an untrained encoder layer's attention input",
    "data_trained": "the same through a trained encoder (checkpoint)",
}
#: the variant whose inputs the softmax bound curve is drawn at, and the reference of "on top of"
BOUND_VARIANT = "full"
#: relative tolerance under which two variants' values count as the same (their lines coincide)
COINCIDE_RTOL = 0.02


def smoothness_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The ``smoothness`` bench rows of ``df`` (any status) with ``pattern`` (default ``random``),
    ``radius`` (NaN for data patterns and older records), ``causal``/``sweep`` (bool) and ``label``."""
    if "mode" not in df:
        df = pd.DataFrame(columns=["kind", "mode", "variant", "seq_len", "status"])
    rows = df[(df["mode"] == "smoothness") & (df.get("kind", "bench") == "bench")].copy()
    for col in ("pattern", "radius", "causal", "sweep", "lipschitz", "softmax_bound", "bound_ratio",
                "lipschitz_max", "score_gap", "score_std", "input_radius", "search_best_start"):
        if col not in rows:
            rows[col] = np.nan
    if "status" not in rows:
        rows["status"] = "ok"
    rows["pattern"] = rows["pattern"].astype(object).where(rows["pattern"].notna(), "random")
    for col in ("seq_len", "radius", "lipschitz", "softmax_bound", "bound_ratio", "lipschitz_max", "score_gap",
                "score_std", "input_radius"):
        rows[col] = pd.to_numeric(rows[col], errors="coerce").astype(float)
    for col in ("causal", "sweep"):
        rows[col] = pd.Series([bool(as_flag(v)) for v in rows[col]], index=rows.index, dtype=bool)
    rows["label"] = [f"{v} (causal)" if c else v for v, c in zip(rows["variant"], rows["causal"])]
    return rows


def ok_rows(rows: pd.DataFrame) -> pd.DataFrame:
    ok = (rows["status"] == "ok") & (rows["lipschitz"] > 0) & np.isfinite(rows["lipschitz"]) & rows["seq_len"].notna()
    return rows[ok]


def main_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The ok rows at each pattern's main setting (not the radius sweep)."""
    ok = ok_rows(rows)
    return ok.loc[~ok["sweep"].astype(bool)]


def label_order(labels: Iterable[str]) -> list[str]:
    """Variants in the report's order, each causal label right after its variant."""
    labels = set(labels)
    base = variant_order({lab.split(" (")[0] for lab in labels})
    return [lab for v in base for lab in sorted(lab for lab in labels if lab.split(" (")[0] == v)]


def pattern_order(patterns: Iterable[str]) -> list[str]:
    ps = set(patterns)
    return [p for p in PATTERNS if p in ps] + sorted(ps - set(PATTERNS), key=str)


def median_curve(rows: pd.DataFrame, value: str = "lipschitz") -> pd.Series:
    """Median ``value`` per N (index: N, ascending), positive finite values only."""
    v = rows[np.isfinite(rows[value]) & (rows[value] > 0)]
    return v.groupby("seq_len")[value].median().sort_index()


def slope(curve: pd.Series) -> float:
    """alpha of ``value ~ N^alpha``: least squares in log-log over every N (as ``lra-bench``'s summary
    fits it, :func:`lra.smoothness.growth_exponent`); NaN below two lengths."""
    return fit_exponent(curve.index, curve.to_numpy(float), upper_half=False)


def one_device(rows: pd.DataFrame, device: str | None) -> pd.DataFrame:
    if device is not None:
        return rows[rows["device_name"] == device]
    if "device_name" in rows and rows["device_name"].nunique() > 1:
        raise ValueError(f"smoothness records of several devices {sorted(rows['device_name'].unique())}: "
                         f"pass device= one of them")
    return rows


# ------------------------------------------------------------------------------ how values read

def alpha_text(x: float) -> str:
    """A fitted exponent as "0.52" ("0.00" below 0.005 in size, "—" when not finite)."""
    return "—" if not np.isfinite(x) else f"{0.0 if abs(x) < 0.005 else x:.2f}"


def num_text(x: float) -> str:
    """3 significant digits (:func:`~lra.report.labels.sig`), powers of ten as "3.7e9" from 10,000 up."""
    if not np.isfinite(x):
        return "—"
    if abs(x) >= 1e4:
        m, e = f"{x:.1e}".split("e")
        return f"{m}e{int(e)}"
    return sig(x)


def radius_text(rows: pd.DataFrame) -> str:
    """The radii of ``rows`` as "2" or "0.5/2" (data patterns have none: "")."""
    r = sorted(rows["radius"].dropna().unique())
    return "/".join(f"{x:g}" for x in r)


def data_setting(data: pd.DataFrame) -> str:
    """"ListOps test sequences, layer 0, 4 heads × 16" from the data records' facts."""
    def values(col):
        return sorted(data[col].dropna().astype(str).unique()) if col in data else []
    task = "/".join(TASK_NAMES.get(t, t) for t in values("data_task"))
    split = "/".join(values("data_split"))
    layer = "/".join(str(int(float(x))) for x in values("layer"))
    heads = ""
    if {"heads", "head_dim"} <= set(data) and data[["heads", "head_dim"]].notna().all(axis=None):
        heads = f"{int(data['heads'].iloc[0])} heads × {int(data['head_dim'].iloc[0])}"
    first = " ".join(x for x in (task, split, "sequences" if task or split else "") if x)
    return ", ".join(x for x in (first, f"layer {layer}" if layer else "", heads) if x)
