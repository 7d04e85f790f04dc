"""Matplotlib/seaborn plumbing shared by every figure: theme, the variants' colours and markers, one tick
style, axes bounded by the data (outliers drawn off the scale with a note), direct labels, atomic saving.

Rules every figure follows (issue 32):

- colours and markers come from :mod:`lra.report.palette` (:func:`styles`), the same for a variant everywhere;
- no legend inside a plot: lines are labelled directly at their right end (:func:`direct_labels`), and
  multi-panel figures share one legend below the panels (:func:`legend_below`);
- one tick style (:func:`tick_text`): plain numbers from 0.001 to 999,999, powers of ten outside;
- axes bounded by the data (:func:`robust_limits`): a point far outside the rest (beyond 3 interquartile
  ranges, in decades on a log axis) is left off the scale and named in a note on the edge
  (:func:`mark_off_scale`), so that it cannot squash the other lines into one band.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..io import atomic_write
from .labels import length_label, variant_order
from .palette import Style, styles

#: what a figure function returns: the first-format path (None when not drawn) and a note for the report
FigureResult = tuple[Path | None, str]
#: how far (in interquartile ranges, decades on a log axis) a point may lie outside the middle half
OUTLIER_IQR = 3.0


def plt_sns():
    """pyplot (headless backend) and seaborn with the report's theme."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.9)
    matplotlib.rcParams.update({"svg.hashsalt": "lra-bench", "svg.fonttype": "none", "axes.titlesize": "medium",
                                "axes.titleweight": "normal", "legend.frameon": False})
    return plt, sns


def palette(variants: Sequence[str]) -> dict[str, Any]:
    """``{variant: colour}`` from :func:`lra.report.palette.styles` (the same colour in every figure)."""
    return {v: s.color for v, s in styles(variants).items()}


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
            atomic_write(path, lambda tmp: fig.savefig(tmp, format=ext, dpi=110, bbox_inches="tight",
                                                       metadata=metadata))
            paths.append(path)
        plt.close(fig)
        return paths[0]


# ---------------------------------------------------------------------------------------------- ticks

_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def tick_text(y: float) -> str:
    """The report's one tick style: 0.001 ... 999,999 as plain numbers (at most 3 significant digits,
    thousands separated), anything smaller or larger as a power of ten ("10⁻⁵", "2×10⁶")."""
    if y == 0 or not np.isfinite(y):
        return "0" if y == 0 else ""
    a = abs(y)
    if 1e-3 <= a < 1e6:
        decimals = max(0, 2 - math.floor(math.log10(a) + 1e-9))
        text = f"{y:,.{decimals}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    e = math.floor(math.log10(a) + 1e-9)
    m = a / 10 ** e
    power = "10" + str(e).translate(_SUPERSCRIPT)
    return ("−" if y < 0 else "") + (power if abs(m - 1) < 1e-6 else f"{m:.2g}×{power}")


def log_axis(ax, axis: str = "y") -> None:
    """A log10 axis in :func:`tick_text` style; 2× and 5× ticks labelled too when it spans < 2.5 decades."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    target = ax.yaxis if axis == "y" else ax.xaxis
    lo, hi = ax.get_ylim() if axis == "y" else ax.get_xlim()
    fmt = FuncFormatter(lambda v, _: tick_text(v))
    target.set_major_locator(LogLocator(base=10))
    target.set_major_formatter(fmt)
    if lo > 0 and hi / lo < 300:
        target.set_minor_locator(LogLocator(base=10, subs=(2.0, 5.0)))
        target.set_minor_formatter(fmt)
        ax.grid(True, which="minor", axis=axis, linewidth=0.5, alpha=0.5)
    else:
        target.set_minor_formatter(NullFormatter())


def log_y(ax) -> None:
    """Log y axis in the report's tick style (autoscaled to what is drawn)."""
    ax.relim()
    ax.autoscale_view()
    log_axis(ax, "y")


def plain_axis(ax, axis: str = "y") -> None:
    """A linear axis in :func:`tick_text` style."""
    from matplotlib.ticker import FuncFormatter

    (ax.yaxis if axis == "y" else ax.xaxis).set_major_formatter(FuncFormatter(lambda v, _: tick_text(v)))


def length_axis(ax, lengths: Iterable[float]) -> None:
    """A log2 x axis labelled with the measured lengths ("256", "1,024", ...), at most ~8 labels."""
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


def ylabel(ax, text: str) -> None:
    """Set the y label, saying "log scale" inside its unit parentheses when the axis is logarithmic."""
    if ax.get_yscale() == "log":
        text = text[:-1] + ", log scale)" if text.endswith(")") else text + " (log scale)"
    ax.set_ylabel(text)


# ---------------------------------------------------------------------------------------------- bounded axes

def robust_limits(values: Iterable[float], log: bool = True, k: float = OUTLIER_IQR,
                  gap: float = 2.0, minority: float = 0.4) -> tuple[float, float]:
    """Axis limits that hold every value except outliers, padded by 5% of the span. O(n log n).

    On a log axis values are compared in decades. Two rules, in order: a group of values separated
    from the rest by an empty stretch of at least ``gap`` decades (``gap`` x the median spread on a
    linear axis) and holding under ``minority`` of the points is left out (e.g. exact variants at
    rounding level, 10⁻⁶, below approximations near 1); then any value more than ``k`` interquartile
    ranges (at least half a decade wide) beyond the middle half of the rest."""
    v = np.asarray([x for x in values if np.isfinite(x) and (x > 0 or not log)], float)
    if v.size == 0:
        return (1.0, 10.0) if log else (0.0, 1.0)
    t = np.sort(np.log10(v) if log else v)
    step = gap if log else gap * max(float(np.median(np.abs(t - np.median(t)))), 1e-12)
    while t.size > 2:
        d = np.diff(t)
        i = int(np.argmax(d))
        if d[i] < step:
            break
        low, high = t[: i + 1], t[i + 1:]
        if low.size < minority * t.size:
            t = high
        elif high.size < minority * t.size:
            t = low
        else:
            break
    q1, q3 = np.percentile(t, [25, 75])
    iqr = max(q3 - q1, 0.5 if log else 0.1 * abs(float(np.median(t))) or 1.0)
    lo, hi = max(t.min(), q1 - k * iqr), min(t.max(), q3 + k * iqr)
    pad = 0.05 * (hi - lo) if hi > lo else (0.15 if log else 0.05 * abs(hi) or 0.5)
    lo, hi = lo - pad, hi + pad
    return (10 ** lo, 10 ** hi) if log else (lo, hi)


def mark_off_scale(ax, points: pd.DataFrame, limits: tuple[float, float], style: Mapping[str, Style],
                   unit: str = "") -> list[str]:
    """Draw the points outside ``limits`` as triangles (in their variant's colour and on the edge they
    leave by) and write one note per edge inside the axes ("↓ off scale: full, flash (down to 3.5×10⁻⁷)");
    return the notes (for the caption).

    ``points``: columns ``variant``, ``x``, ``y``. The caller has set ``limits`` as the y limits."""
    notes = []
    lo, hi = limits
    for up in (True, False):
        side = points[points["y"] > hi] if up else points[points["y"] < lo]
        if side.empty:
            continue
        edge = hi if up else lo
        for v, g in side.groupby("variant", sort=False):
            s = style.get(v, Style("#444444", "o"))
            ax.scatter(g["x"], [edge] * len(g), marker="^" if up else "v", s=40, color=s.color, clip_on=False,
                       zorder=6, edgecolors="white", linewidths=0.5)
        names = ", ".join(variant_order(side["variant"].unique()))
        worst = side["y"].max() if up else side["y"].min()
        text = f"{'↑' if up else '↓'} off scale: {names} ({'up' if up else 'down'} to {tick_text(worst)}{unit})"
        ax.text(0.02, 0.97 if up else 0.03, text, transform=ax.transAxes, ha="left", va="top" if up else "bottom",
                fontsize="x-small", color="0.2", bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="0.8", alpha=0.9),
                zorder=7)
        notes.append(text)
    return notes


def direct_labels(ax, ends: Sequence[tuple[str, float, float, str]], style: Mapping[str, Style],
                  fontsize: float = 8.5) -> None:
    """Label lines at the right of the axes, one row per ``(variant, x, y, text)`` (``(x, y)`` the line's
    last point), rows pushed apart so that no two overlap; a marker in the variant's style before each
    text and a thin leader line to the point. Call after the limits are final."""
    if not ends:
        return
    fig = ax.figure
    to_axes = ax.transData + ax.transAxes.inverted()
    rows = []
    for variant, x, y, text in ends:
        ya = float(np.clip(to_axes.transform((x, y))[1], 0.0, 1.0)) if np.isfinite(y) else 1.0
        rows.append((ya, variant, x, y, text))
    rows.sort(key=lambda r: r[0])
    height_pt = ax.get_window_extent().height * 72 / fig.dpi
    gap = fontsize * 1.3 / max(height_pt, 1.0)
    ys = [r[0] for r in rows]
    for i in range(1, len(ys)):
        ys[i] = max(ys[i], ys[i - 1] + gap)
    if ys[-1] > 1.0:  # pushed past the top: pack downwards from it
        ys[-1] = 1.0
        for i in range(len(ys) - 2, -1, -1):
            ys[i] = min(ys[i], ys[i + 1] - gap)
    for (_, variant, x, y, text), yl in zip(rows, ys):
        s = style.get(variant, Style("#444444", "o"))
        ax.plot([1.025], [yl], transform=ax.transAxes, marker=s.marker, color=s.color, ms=5, clip_on=False,
                linestyle="none")
        ax.annotate(text, xy=(x, y) if np.isfinite(y) else (1.0, 1.0), xycoords="data" if np.isfinite(y) else
                    "axes fraction", xytext=(1.05, yl), textcoords="axes fraction", va="center", ha="left",
                    fontsize=fontsize, color="0.1", annotation_clip=False,
                    arrowprops=dict(arrowstyle="-", color=s.color, lw=0.6, alpha=0.7, shrinkA=0, shrinkB=2))


def legend_below(fig, variants: Sequence[str], style: Mapping[str, Style], extra: Sequence[tuple[Any, str]] = (),
                 ncol: int = 6) -> None:
    """One legend for all panels, below them: a marker and line per variant (and ``extra`` handles)."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=style[v].color, marker=style[v].marker, ms=5, lw=1.4,
                      ls="--" if style[v].dashed else "-", label=v) for v in variants]
    handles += [h for h, _ in extra]
    labels = list(variants) + [t for _, t in extra]
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(ncol, len(labels)),
               frameon=False, fontsize="small", handlelength=2.2, columnspacing=1.2)


def line(ax, g: pd.DataFrame, x: str, y: str, s: Style, **kw) -> None:
    """One variant's line with its colour, marker and dash."""
    ax.plot(g[x], g[y], color=s.color, marker=s.marker, ms=4.5, lw=1.5, ls="--" if s.dashed else "-",
            markeredgecolor="white", markeredgewidth=0.4, **kw)


def exponent_text(k: float, se: float | None = None) -> str:
    """"k = 2.01 ± 0.03" ("-0.00" printed as "0.00"); "" when not fitted."""
    if k is None or not np.isfinite(k):
        return ""
    k = 0.0 if abs(k) < 0.005 else k
    return f"k = {k:.2f}" + (f" ± {se:.2f}" if se is not None and np.isfinite(se) else "")


def exponent_label(k: float) -> str:
    """Mathtext "∝ N^k" ("-0.00" printed as "0.00")."""
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


def legend_outside(ax, title: str | None = None, handles=None, labels=None) -> None:
    """A legend to the right of the axes (for the few figures whose entries are not variants)."""
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    if ax.get_legend() is not None:
        ax.get_legend().remove()
    if handles:
        ax.legend(handles, labels, title=title, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                  borderaxespad=0.0, frameon=False, fontsize="small", title_fontsize="small")
