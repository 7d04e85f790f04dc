"""Assemble the report: records -> tidy frame -> sections in order (answer, evidence, provenance) -> files."""
from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Sequence

from ..io import write_text
from . import appendix, sections
from .document import Document
from .figures import make_figures
from .frame import NoRecordsError, load_frame, tidy
from .labels import devices, link
from .plotting import FigureDir


def rebuild_command(inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, name: str = "report.md",
                    compare: str | os.PathLike | None = None, tolerance: float = 0.05,
                    figures: bool = True) -> str:
    """The ``lra-report`` command line that builds this report again (paths as they were given)."""
    words = ["lra-report", *(str(p) for p in inputs), f"out={out_dir}"]
    if name != "report.md":
        words.append(f"name={name}")
    if compare is not None:
        words += [f"compare={compare}", f"tolerance={tolerance:g}"]
    if not figures:
        words.append("--no-figures")
    return " ".join(shlex.quote(w) for w in words)


def _no_records(inputs: Sequence[Path], skipped: Sequence[Path]) -> NoRecordsError:
    where = ", ".join(str(p) for p in inputs) or "(no inputs)"
    extra = f"; {len(skipped)} JSON file(s) there are not records, e.g. {skipped[0]}" if skipped else ""
    return NoRecordsError(f"no result records in {where} (record files are *.json with `schema` and `kind` keys, "
                          f"searched recursively, or a tidy.csv){extra}")


def build_report(inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                 compare: str | os.PathLike | None = None, tolerance: float = 0.05, *,
                 figure_formats: Sequence[str] = ("png", "svg"), name: str = "report.md",
                 command: str | None = None) -> Path:
    """Build ``name`` (default ``report.md``; + the same name as ``.html``, ``tidy.csv``, ``figures/``) in
    ``out_dir``; return the markdown file's path.

    ``inputs``: record files/directories (searched recursively for ``*.json``) or tidy CSVs. ``out_dir`` may
    lie inside an input folder (``lra-report results out=results name=REPORT.md``): only ``*.json``
    files are read as records there, so the report's own CSV is never read back.
    Raises :class:`~lra.report.frame.NoRecordsError` (a ``ValueError``) before writing anything when the
    inputs hold no record.
    ``compare``: a baseline (records dir, a previous report dir, or its ``tidy.csv``); regressions beyond
    ``tolerance`` (fraction) are flagged in section 8 and listed in ``compare.csv``.
    ``figure_formats``: file types for each figure (PNG is linked from the report; ``()`` = no figures).
    Figures are linked by paths relative to ``out_dir`` (they render on GitHub); figure files left in
    ``out_dir/figures`` by an earlier build and not drawn again are removed.
    ``command``: the rebuild command printed at the top (default: :func:`rebuild_command`).
    """
    if Path(name).name != name or not name:
        raise ValueError(f"name must be a file name without folders, got {name!r}")
    out_dir = Path(out_dir)
    inputs = [Path(p) for p in ([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs)]
    skipped: list[Path] = []
    df = load_frame(inputs, skipped)
    if df.empty:
        raise _no_records(inputs, skipped)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "tidy.csv", tidy(df).to_csv(index=False))
    if command is None:
        command = rebuild_command(inputs, out_dir, name, compare, tolerance, bool(figure_formats))

    doc = Document("lra-bench report")
    doc.p(f"Rebuild this file, its figures and `tidy.csv` with `{command}`.")
    kinds = df["kind"].value_counts()
    doc.p(f"{len(df)} record{'s' if len(df) != 1 else ''} ({kinds.get('train', 0)} train, {kinds.get('bench', 0)} "
          f"bench) from {df['device_name'].nunique()} device(s): {', '.join(devices(df))}. "
          f"{int((df['status'] != 'ok').sum())} not ok (section 6). Tidy data: [`tidy.csv`](tidy.csv).")
    doc.p("Sections: " + " · ".join(link(title, a) for a, title in sections.SECTIONS))
    fig_out = FigureDir(out_dir / "figures", tuple(figure_formats)) if figure_formats else None
    drawn: list[Path] = []
    sections.answer(doc, df, fig_out, drawn)
    sections.accuracy(doc, df)
    sections.speed(doc, df)
    sections.ops(doc, df)
    sections.derived(doc, df)
    figs = make_figures(df, out_dir, figure_formats) if figure_formats else {}
    sections.figures(doc, figs, out_dir, drawn, "No figures (turned off)." if not figure_formats else "No figures.")
    _remove_stale_figures(out_dir / "figures", drawn, figure_formats)
    appendix.failures(doc, df)
    appendix.provenance(doc, df, inputs, skipped)
    cmp = appendix.compare(doc, df, Path(compare) if compare is not None else None, tolerance, out_dir)
    if cmp is not None and len(cmp) and cmp["regression"].any():
        doc.insert(2, f"**⚠ {int(cmp['regression'].sum())} regression(s) against the baseline "
                      f"({link('section 8', 'compare')}).**")
    md_path = out_dir / name
    write_text(md_path, doc.markdown())
    write_text(md_path.with_suffix(".html"), doc.html())
    return md_path


def _remove_stale_figures(fig_dir: Path, drawn: list[Path], formats: Sequence[str]) -> None:
    """Figures of an earlier build that this one did not draw would mislead: remove them."""
    if not formats or not fig_dir.is_dir():
        return
    keep = {p.with_suffix(f".{ext}") for p in drawn for ext in formats}
    for stale in fig_dir.iterdir():
        if stale.suffix in (".png", ".svg") and stale not in keep:
            stale.unlink()
