"""Matplotlib/seaborn plumbing shared by the figures: theme, palette, axes, legends, atomic saving."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..io import atomic_write
from .labels import length_label, variant_order

#: what a figure function returns: the first-format path (None when not drawn) and a note for the report
FigureResult = tuple[Path | None, str]


def plt_sns():
    """pyplot (headless backend) and seaborn with the report's theme."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    matplotlib.rcParams["svg.hashsalt"] = "lra-bench"
    return plt, sns


def palette(variants: Sequence[str]) -> dict[str, Any]:
    """One colour per variant, the same in every figure of a report."""
    import seaborn as sns

    colors = sns.color_palette("tab10" if len(variants) <= 10 else "tab20", len(variants))
    return dict(zip(variants, colors))


@dataclass
class FigureDir:
    """Where figures go and in which formats; :meth:`save` writes each format atomically."""
    path: Path
    formats: tuple[str, ...] = ("png", "svg")

    def save(self, fig, stem: str) -> Path:
        """Save ``fig`` as ``stem.<format>`` for each format, close it, return the first format's path."""
        import matplotlib.pyplot as plt

        self.path.mkdir(parents=True, exist_ok=True)
        paths = []
        for ext in self.formats:
            path = self.path / f"{stem}.{ext}"
            # no date and fixed ids in SVGs, so a rebuild from the same records changes no file
            metadata = {"Date": None} if ext in ("svg", "pdf") else None
            atomic_write(path, lambda tmp: fig.savefig(tmp, format=ext, dpi=130, bbox_inches="tight",
                                                       metadata=metadata))
            paths.append(path)
        plt.close(fig)
        return paths[0]


def length_axis(ax, lengths: Iterable[float]) -> None:
    """A log2 x axis labelled with the measured lengths ("256", "1K", ...), at most ~8 labels."""
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

    lengths = sorted({float(n) for n in lengths if np.isfinite(n)})
    if not lengths:
        return
    ax.set_xscale("log", base=2)
    if len(lengths) > 8:
        lengths = lengths[::math.ceil(len(lengths) / 8)]
    ax.xaxis.set_major_locator(FixedLocator(lengths))
    ax.xaxis.set_major_formatter(FixedFormatter([length_label(n) for n in lengths]))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("sequence length N (tokens, log scale)")


def log_y(ax) -> None:
    """Log y axis with plain-number tick labels (0.5, 2, 100 rather than 5x10^-1); minor labels on short ranges."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    ax.relim()
    ax.autoscale_view()
    lo, hi = ax.get_ylim()
    plain = FuncFormatter(lambda y, _: f"{y:g}")
    ax.yaxis.set_major_locator(LogLocator(base=10))
    ax.yaxis.set_major_formatter(plain)
    if lo > 0 and hi / lo < 300:  # up to ~2.5 decades: label the 2x and 5x minor ticks too
        ax.yaxis.set_minor_locator(LogLocator(base=10, subs=(2.0, 5.0)))
        ax.yaxis.set_minor_formatter(plain)
        ax.grid(True, which="minor", axis="y", linewidth=0.5, alpha=0.5)
    else:
        ax.yaxis.set_minor_formatter(NullFormatter())


def ylabel(ax, text: str) -> None:
    """Set the y label, saying "log scale" inside its unit parentheses when the axis is logarithmic."""
    if ax.get_yscale() == "log":
        text = text[:-1] + ", log scale)" if text.endswith(")") else text + " (log scale)"
    ax.set_ylabel(text)


def legend_outside(ax, title: str | None = None, handles=None, labels=None) -> None:
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    if ax.get_legend() is not None:
        ax.get_legend().remove()
    if handles:
        ax.legend(handles, labels, title=title, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                  borderaxespad=0.0, frameon=False, fontsize="small", title_fontsize="small")


def exponent_label(k: float) -> str:
    """Mathtext "∝ N^k" for a legend ("-0.00" printed as "0.00")."""
    k = 0.0 if abs(k) < 0.005 else k
    return rf"$\propto N^{{{k:.2f}}}$"


def coinciding(med: pd.DataFrame, value: str, keys: Sequence[str] = ("seq_len",), rtol: float = 0.02
               ) -> dict[str, str]:
    """Variants whose curve lies on an earlier variant's: ``{later: earlier}``.

    ``med`` has one row per variant and ``keys``; two curves coincide when they have the same points
    and agree within ``rtol`` at each. Lines drawn later cover earlier ones, so a reader needs to be told.
    """
    curves = {v: g.set_index(list(keys))[value].sort_index() for v, g in med.groupby("variant")}
    order = variant_order(curves)
    same: dict[str, str] = {}
    for i, b in enumerate(order):
        for a in order[:i]:
            if a in same:
                continue
            ca, cb = curves[a], curves[b]
            if len(ca) == len(cb) and ca.index.equals(cb.index) and \
                    np.allclose(cb.to_numpy(float), ca.to_numpy(float), rtol=rtol, atol=0.0):
                same[b] = a
                break
    return same


def overlap_note(same: Mapping[str, str]) -> str:
    """The sentence under a figure that names the lines drawn on top of each other."""
    if not same:
        return ""
    groups: dict[str, list[str]] = {}
    for b, a in same.items():
        groups.setdefault(a, [a]).append(b)
    return ("Lines drawn on top of each other (equal within 2% at every length): "
            + "; ".join(" = ".join(g) for g in groups.values()) + ".")
