"""Smoothness of attention as N grows (Castin et al. 2023): tables and figures from ``smoothness`` bench records.

Today: the Lipschitz estimate (spectral norm of the attention map's Jacobian) per variant and length, as
a table (section 3) and a log-log figure with fitted exponents (section 5). This is the one place for
smoothness output: worst-case / realistic / random-input figures and an exponent table belong here, as
DataFrame -> DataFrame table functions and figure functions with the signatures below, called from
:mod:`lra.report.sections` and :func:`lra.report.figures.make_figures`.
"""
from __future__ import annotations

from typing import Any

import pandas as pd

from .labels import setting
from .lines import scaling_figure
from .plotting import FigureDir, FigureResult
from .tables import case_table

CAPTION = "smoothness: Lipschitz constant estimate (spectral norm of the attention map's Jacobian)"


def smoothness_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The ``smoothness`` bench records of ``df``."""
    return df[(df["kind"] == "bench") & (df["mode"] == "smoothness")]


def lipschitz_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Median Lipschitz estimate per variant (rows) x length (columns)."""
    return case_table(rows, "lipschitz", lambda x: f"{x:.3g}")


def lipschitz_figure(rows: pd.DataFrame, device: str, colors: dict[str, Any], out: FigureDir, stem: str
                     ) -> FigureResult:
    """Lipschitz estimate vs N per variant, log-log, with fitted exponents."""
    shape = setting(rows)
    return scaling_figure(rows, "lipschitz", "Lipschitz estimate",
                          f"{device}: smoothness, Lipschitz estimate (Jacobian spectral norm)"
                          + (f"\n{shape}" if shape else ""), colors, out, stem)
