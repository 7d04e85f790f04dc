"""The report's pages: markdown built up piece by piece (tables through ``DataFrame.to_markdown``), and
the same text as standalone HTML (Python-Markdown) with SVG figures, sortable tables (a few lines of
inline script, nothing fetched) and a print stylesheet.

Figures are numbered in the order they are placed, across the pages of one report (the main page
first), by a shared :class:`FigureIndex`; any text may refer to a figure by key with :func:`fig_ref`
(``[[fig:KEY]]``), resolved when a page is written: a link to the figure on its page, or nothing when
it was not drawn. Links between the report's pages are written to the ``.md`` files and rewritten to
the ``.html`` files in the HTML copy.
"""
from __future__ import annotations

import html as _html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import pandas as pd

from .labels import LOADED_MARK, LOADED_NOTE

HTML_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1320px;margin:auto;padding:0 18px 40px;
line-height:1.35;font-size:15px;color:#111}
h1{font-size:1.55em;margin:.5em 0 .3em}h2{font-size:1.3em;margin:1.1em 0 .35em;border-bottom:1px solid #ddd}
h3{font-size:1.08em;margin:.8em 0 .3em}h4{font-size:1em;margin:.6em 0 .2em}p,ul{margin:.3em 0}li{margin:.1em 0}
table{border-collapse:collapse;margin:6px 0;font-size:13px}td,th{padding:2px 7px;border-bottom:1px solid #e2e2e2;
vertical-align:top}th{background:#f3f3f3;text-align:left}table.sortable th{cursor:pointer}
table.sortable th[data-dir=asc]::after{content:" ▲"}table.sortable th[data-dir=desc]::after{content:" ▼"}
code{background:#f3f3f3;padding:0 3px;font-size:.92em}a{color:#0b57a8}
figure{margin:8px 0}figure img{max-width:100%;height:auto;display:block}
figcaption{font-size:13px;color:#333;max-width:1000px}
.row{display:flex;flex-wrap:wrap;gap:10px 24px;align-items:flex-start}.row>div{flex:1 1 540px;min-width:0}
.lead{font-size:15.5px}.note{font-size:13px;color:#333}
@media print{body{max-width:none;font-size:10pt;padding:0}a{color:inherit;text-decoration:none}
table.sortable th{cursor:auto}table.sortable th::after{content:""!important}
figure,table,.row>div{break-inside:avoid}h2,h3{break-after:avoid}.row{display:block}}
"""
#: click a header to sort by its column (numbers by value, "1,024" and "16K" read as numbers, "—" last)
SORT_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function(t){var h=t.tHead;if(!h)return;
[].forEach.call(h.rows[0].cells,function(th,i){th.title="sort";th.onclick=function(){
var b=t.tBodies[0],d=th.dataset.dir==="asc"?"desc":"asc";[].forEach.call(h.rows[0].cells,function(c){delete c.dataset.dir});
th.dataset.dir=d;var key=function(r){var s=(r.cells[i]||{}).textContent||"";var m=s.replace(/,/g,"")
.match(/-?\\d+(\\.\\d+)?(e[-+]?\\d+)?(K)?/i);return m?parseFloat(m[0])*(m[3]?1024:1):null};
var rows=[].slice.call(b.rows);rows.sort(function(x,y){var a=key(x),c=key(y),s=d==="asc"?1:-1;
if(a===null&&c===null)return s*x.cells[i].textContent.localeCompare(y.cells[i].textContent);
if(a===null)return 1;if(c===null)return -1;return s*(a-c)});rows.forEach(function(r){b.appendChild(r)})}})});
"""
_FIG_TOKEN = re.compile(r"( · |; |, )?\[\[fig:([^\]]+)\]\]")
_PAGE_TOKEN = re.compile(r"\[\[page:([^\]]+)\]\]")


def fig_ref(key: str) -> str:
    """A reference to figure ``key``, resolved when the page is written ("[Fig. 3](#fig-3)", or "")."""
    return f"[[fig:{key}]]"


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


@dataclass
class Figure:
    """One drawn figure: its number, caption, files (the first format linked from markdown, the SVG
    from HTML) and a note printed under it."""
    key: str
    number: int
    caption: str
    path: Path
    out_dir: Path
    note: str = ""

    @property
    def anchor(self) -> str:
        return f"fig-{self.number}"

    def _src(self, ext: str | None = None) -> str:
        p = self.path if ext is None or not self.path.with_suffix(f".{ext}").is_file() else self.path.with_suffix(f".{ext}")
        return p.relative_to(self.out_dir).as_posix()

    def markdown(self) -> str:
        note = f" {self.note}" if self.note else ""
        return (f'<a id="{self.anchor}"></a>\n\n![Figure {self.number}: {self.caption}]({self._src()})\n\n'
                f"*Figure {self.number}: {self.caption}.{note}*\n")

    def html(self) -> str:
        note = f" {_inline(self.note)}" if self.note else ""
        return (f'<figure id="{self.anchor}"><img src="{_html.escape(self._src("svg"))}" alt="Figure '
                f'{self.number}: {_html.escape(self.caption)}" loading="eager"><figcaption><b>Figure {self.number}:'
                f"</b> {_inline(self.caption)}.{note}</figcaption></figure>")


def _inline(text: str) -> str:
    """Inline markdown (links, code, emphasis) of a caption as HTML."""
    import markdown

    out = markdown.markdown(text, output_format="html")
    return out.removeprefix("<p>").removesuffix("</p>")


@dataclass
class FigureIndex:
    """Figure numbers across the pages of one report, in the order the figures are placed, and the
    report's page files by key (``{"main": "REPORT.md", "ops": "REPORT-ops.md", ...}``), which links
    written with :func:`lra.report.labels.page_link` resolve to."""
    figures: dict[str, tuple[Figure, str]] = field(default_factory=dict)
    pages: dict[str, str] = field(default_factory=dict)

    def place(self, key: str, page: str, caption: str, path: Path, out_dir: Path, note: str = "") -> Figure:
        if key in self.figures:
            return self.figures[key][0]
        fig = Figure(key, len(self.figures) + 1, caption, path, out_dir, note)
        self.figures[key] = (fig, page)
        return fig

    def ref(self, key: str, page: str) -> str:
        if key not in self.figures:
            return ""
        fig, where = self.figures[key]
        target = f"#{fig.anchor}" if where == page else f"{where}#{fig.anchor}"
        return f"[Fig. {fig.number}]({target})"


class Document:
    """One page of the report, built in order; :meth:`markdown` and :meth:`html` write it.

    ``name``: its markdown file name (e.g. ``REPORT-ops.md``); ``index``: the report's figure numbering.
    """

    def __init__(self, title: str, name: str = "report.md", index: FigureIndex | None = None):
        self.title = title
        self.name = name
        self.index = index if index is not None else FigureIndex()
        self.parts: list[str | Figure] = [f"# {title}\n"]

    def anchor(self, name: str) -> None:
        """A link target (``#name``) that works on GitHub and in the HTML copy."""
        self.parts.append(f'<a id="{name}"></a>\n')

    def h(self, level: int, text: str, anchor: str | None = None) -> None:
        if anchor:
            self.anchor(anchor)
        self.parts.append("#" * level + " " + text + "\n")

    def p(self, text: str) -> None:
        self.parts.append(text + "\n")

    def note(self, text: str) -> None:
        """A small-print paragraph (footnotes, how to read a table); nothing when ``text`` is empty."""
        if text:
            self.parts.append(f'<p class="note" markdown="1">{text}</p>\n')

    def bullets(self, items: Iterable[str]) -> None:
        items = list(items)
        if items:
            self.parts.append("\n".join(f"- {i}" for i in items) + "\n")

    def table(self, df: pd.DataFrame | None, index: bool = True, left: Iterable[str] = (),
              anchor: str | None = None, empty: str = "No records.") -> None:
        """A table (or ``empty`` when there is none); a footnote when a cell carries the loaded-host mark."""
        if anchor:
            self.anchor(anchor)
        if df is None or df.empty:
            self.p(empty)
            return
        self.parts.append(markdown_table(df, index=index, left=left) + "\n")
        if df.map(lambda c: isinstance(c, str) and LOADED_MARK in c).to_numpy().any():
            self.note(f"*{LOADED_NOTE}*")

    def figure(self, key: str, caption: str, path: Path, out_dir: Path, note: str = "") -> Figure:
        """Place a drawn figure (numbered now) with its caption; see :class:`Figure`."""
        fig = self.index.place(key, self.name, caption, path, out_dir, note)
        self.parts.append(fig)
        return fig

    def image(self, caption: str, path: Path, out_dir: Path) -> None:
        """An unnumbered image linked by its path relative to the report (so it renders on GitHub)."""
        self.parts.append(f"![{caption}]({path.relative_to(out_dir).as_posix()})\n")

    def row_start(self) -> None:
        """Start a row of side-by-side blocks (HTML; one after the other in plain markdown)."""
        self.parts.append('<div class="row" markdown="1">\n<div markdown="1">\n')

    def row_next(self) -> None:
        self.parts.append('</div>\n<div markdown="1">\n')

    def row_end(self) -> None:
        self.parts.append("</div>\n</div>\n")

    def insert(self, position: int, text: str) -> None:
        self.parts.insert(position, text + "\n")

    def _resolve(self, text: str) -> str:
        def fig(m):
            ref = self.index.ref(m.group(2), self.name)
            return (m.group(1) or "") + ref if ref else ""  # a figure not drawn: no reference, no separator

        text = _FIG_TOKEN.sub(fig, text)

        def page(m):
            name = self.index.pages.get(m.group(1), self.name)
            return "" if name == self.name and m.end() < len(text) and text[m.end()] == "#" else name

        return _PAGE_TOKEN.sub(page, text)

    def markdown(self) -> str:
        return "\n".join(self._resolve(p if isinstance(p, str) else p.markdown()) for p in self.parts)

    def html(self, pages: Iterable[str] = ()) -> str:
        """The page as standalone HTML; links to the markdown files of ``pages`` go to their HTML copies."""
        import markdown

        figures = {}
        chunks = []
        for p in self.parts:
            if isinstance(p, Figure):
                token = f"FIGURE{len(figures)}PLACEHOLDER"
                figures[token] = p.html()
                chunks.append(f"\n{token}\n")
            else:
                chunks.append(self._resolve(p))
        body = markdown.markdown("\n".join(chunks), extensions=["tables", "md_in_html"], output_format="html")
        for token, fig in figures.items():
            body = body.replace(f"<p>{token}</p>", fig).replace(token, fig)
        body = body.replace("<table>", '<table class="sortable">')
        for page in {self.name, *pages}:
            stem = re.escape(Path(page).stem)
            body = re.sub(rf'href="({stem})\.md(#[^"]*)?"', r'href="\1.html\2"', body)
        return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
                f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
                f"<title>{_html.escape(self.title)}</title><style>{HTML_STYLE}</style></head><body>\n{body}\n"
                f"<script>{SORT_SCRIPT}</script>\n</body></html>\n")
