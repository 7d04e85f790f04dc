"""Assemble the report: records -> tidy frame -> the main page and its side pages -> files.

Files written into ``out_dir`` for ``name=REPORT.md``: ``REPORT.md`` and ``REPORT.html`` (the main page),
``REPORT-<page>.md``/``.html`` for each side page (:data:`lra.report.main_page.PAGES`), ``tidy.csv`` and
its data dictionary ``tidy.md``, ``figures/*.png`` and ``*.svg`` (markdown links the PNG, HTML the SVG),
and ``compare.csv`` when a baseline was given.
"""
from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Sequence

from ..io import write_text
from . import main_page, records_pages, side_pages
from .dictionary import dictionary
from .document import Document, FigureIndex, markdown_table
from .figures import Drawer
from .frame import NoRecordsError, load_frame, tidy
from .labels import page_link
from .peers import read_peers


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


def page_names(name: str) -> dict[str, str]:
    """``{"main": name, "ops": "<stem>-ops.md", ...}``: the report's page files."""
    stem = Path(name).stem
    return {"main": name, **{key: f"{stem}-{key}.md" for key in main_page.PAGES}}


def build_report(inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                 compare: str | os.PathLike | None = None, tolerance: float = 0.05, *,
                 figure_formats: Sequence[str] = ("png", "svg"), name: str = "report.md",
                 command: str | None = None) -> Path:
    """Build the report (``name``, default ``report.md``, its side pages, the HTML copies, ``tidy.csv``,
    ``tidy.md`` and ``figures/``) in ``out_dir``; return the main markdown page's path.

    ``inputs``: record files/directories (searched recursively for ``*.json``) or tidy CSVs. ``out_dir`` may
    lie inside an input folder (``lra-report results out=results name=REPORT.md``): only ``*.json``
    files are read as records there, so the report's own CSV is never read back. JSON files that are not
    records are not dropped silently: peers comparisons get a page, others are listed (provenance).
    Raises :class:`~lra.report.frame.NoRecordsError` (a ``ValueError``) before writing anything when the
    inputs hold no record.
    ``compare``: a baseline (records dir, a previous report dir, or its ``tidy.csv``); regressions beyond
    ``tolerance`` (fraction) are flagged at the top and listed on the comparison page and in ``compare.csv``.
    ``figure_formats``: file types for each figure (markdown links the first, HTML the SVG when drawn;
    ``()`` = no figures). Figure files left in ``out_dir/figures`` by an earlier build and not drawn
    again are removed. ``command``: the rebuild command printed at the top (default: :func:`rebuild_command`).
    """
    if Path(name).name != name or not name or not name.endswith(".md"):
        raise ValueError(f"name must be a markdown file name without folders (e.g. REPORT.md), got {name!r}")
    out_dir = Path(out_dir)
    inputs = [Path(p) for p in ([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs)]
    skipped: list[Path] = []
    df = load_frame(inputs, skipped)
    if df.empty:
        raise _no_records(inputs, skipped)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = tidy(df)
    write_text(out_dir / "tidy.csv", table.to_csv(index=False))
    write_text(out_dir / "tidy.md", "# tidy.csv: columns\n\nOne row per record; only columns some record fills. "
               "Written by `lra-report` with the CSV (`lra/report/dictionary.py`).\n\n"
               + markdown_table(dictionary(table), index=False, left=("column", "meaning")) + "\n")
    if command is None:
        command = rebuild_command(inputs, out_dir, name, compare, tolerance, bool(figure_formats))
    peers, other = read_peers(skipped)
    names = page_names(name)
    index = FigureIndex(pages=names)
    draw = Drawer(df, out_dir, figure_formats)

    main = Document("lra-bench report", name, index)
    main_page.intro(main, df, command, peers, other)
    main_page.answer(main, df, draw)
    main_page.questions(main, df, draw)
    main_page.recall(main, df, draw)
    main.p("More: " + " · ".join(page_link(title, key) for key, (title, _) in main_page.PAGES.items()) + ".")

    docs = {"main": main}
    for key, (title, _) in main_page.PAGES.items():
        docs[key] = Document(f"{title}", names[key], index)
        docs[key].p(f"Part of the [lra-bench report]({name}) (built with `{command}`).")
    side_pages.exactness_page(docs["exactness"], df, draw)
    side_pages.smoothness_page(docs["smoothness"], df, draw)
    side_pages.ops_page(docs["ops"], df, draw)
    records_pages.training_page(docs["training"], df, draw)
    records_pages.provenance_page(docs["provenance"], df, inputs, other, peers)
    records_pages.peers_page(docs["peers"], peers)
    cmp = records_pages.compare_page(docs["compare"], df, Path(compare) if compare is not None else None,
                                     tolerance, out_dir)
    if cmp is not None and len(cmp) and cmp["regression"].any():
        main.insert(1, f"**⚠ {int(cmp['regression'].sum())} regression(s) against the baseline "
                       f"({page_link('comparison', 'compare', 'compare')}).**")
    for key, doc in docs.items():
        md_path = out_dir / names[key]
        write_text(md_path, doc.markdown())
        write_text(md_path.with_suffix(".html"), doc.html(names.values()))
    _remove_stale_figures(out_dir / "figures", draw.drawn, figure_formats)
    return out_dir / name


def _remove_stale_figures(fig_dir: Path, drawn: list[Path], formats: Sequence[str]) -> None:
    """Figures of an earlier build that this one did not draw would mislead: remove them."""
    if not formats or not fig_dir.is_dir():
        return
    keep = {p.with_suffix(f".{ext}") for p in drawn for ext in formats}
    for stale in fig_dir.iterdir():
        if stale.suffix in (".png", ".svg") and stale not in keep:
            stale.unlink()
