"""The report document: markdown built up piece by piece, tables through ``DataFrame.to_markdown``
(tabulate), HTML rendered from the same markdown (Python-Markdown), both written atomically."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pandas as pd

from .labels import LOADED_MARK, LOADED_NOTE

HTML_STYLE = ("body{font-family:system-ui,sans-serif;max-width:1280px;margin:auto;padding:0 16px;line-height:1.4}"
              "table{border-collapse:collapse;margin:8px 0;font-size:14px}"
              "td,th{padding:3px 8px;border-bottom:1px solid #ddd;vertical-align:top}"
              "th{background:#f4f4f4}img{max-width:100%}code{background:#f4f4f4;padding:0 3px}")


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NA:
        return "—"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(df: pd.DataFrame, index: bool = True, left: Iterable[str] = ()) -> str:
    """A GitHub pipe table of ``df``'s cells as they are (no number parsing); the index and the columns in
    ``left`` left-aligned, the others right-aligned."""
    left = set(left)
    t = df.reset_index() if index else df
    t = t.rename(columns={"index": ""}) if index and df.index.name is None else t
    t = t.map(_cell)
    align = ["left" if (index and i == 0) or c in left else "right" for i, c in enumerate(t.columns)]
    return t.to_markdown(index=False, tablefmt="pipe", colalign=align, disable_numparse=True)


class Document:
    """A markdown report built in order; :meth:`html` renders the same text as a standalone page."""

    def __init__(self, title: str):
        self.title = title
        self.parts: list[str] = [f"# {title}\n"]

    def anchor(self, name: str) -> None:
        """A link target (``#name``) that works on GitHub and in the HTML copy."""
        self.parts.append(f'<a id="{name}"></a>\n')

    def h(self, level: int, text: str, anchor: str | None = None) -> None:
        if anchor:
            self.anchor(anchor)
        self.parts.append("#" * level + " " + text + "\n")

    def p(self, text: str) -> None:
        self.parts.append(text + "\n")

    def bullets(self, items: Iterable[str]) -> None:
        items = list(items)
        if items:
            self.parts.append("\n".join(f"- {i}" for i in items) + "\n")

    def table(self, df: pd.DataFrame | None, index: bool = True, left: Iterable[str] = (),
              anchor: str | None = None) -> None:
        """A table (or "No records." when empty); a footnote when a cell carries the loaded-host mark."""
        if anchor:
            self.anchor(anchor)
        if df is None or df.empty:
            self.p("No records.")
            return
        self.parts.append(markdown_table(df, index=index, left=left) + "\n")
        if df.map(lambda c: isinstance(c, str) and LOADED_MARK in c).to_numpy().any():
            self.p(f"*{LOADED_NOTE}*")

    def image(self, caption: str, path: Path, out_dir: Path) -> None:
        """A figure linked by its path relative to the report (so it renders on GitHub)."""
        self.parts.append(f"![{caption}]({path.relative_to(out_dir).as_posix()})\n")

    def insert(self, position: int, text: str) -> None:
        self.parts.insert(position, text + "\n")

    def markdown(self) -> str:
        return "\n".join(self.parts)

    def html(self) -> str:
        import html

        import markdown

        body = markdown.markdown(self.markdown(), extensions=["tables"], output_format="html")
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{HTML_STYLE}</style></head><body>\n{body}\n</body></html>\n")
