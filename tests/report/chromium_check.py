"""Open a report page in headless Chromium and read back what a reader's browser sees: the page height at
a given width, every image (loaded or not) and every link. No Playwright: ``chromium --headless
--dump-dom`` on a copy of the page with a few lines of script that write their findings into the DOM.

Used by the rendering test and, by hand, to measure a built report::

    python tests/report/chromium_check.py results/REPORT.html
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

#: the flags the issue asks for: no sandbox (containers), no GPU, nothing fetched from the network
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--hide-scrollbars")

_PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images].map(i => ({src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0}));
  const links = [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href'));
  const ids = [...document.querySelectorAll('[id]')].map(e => e.id);
  const out = {height: document.documentElement.scrollHeight, width: window.innerWidth, images: imgs,
               links: links, ids: ids, tables: document.querySelectorAll('table').length,
               figures: document.querySelectorAll('figure').length};
  const pre = document.createElement('pre'); pre.id = 'chromium-check'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def chromium() -> str | None:
    """The Chromium binary on this machine, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def inspect(page: Path, width: int = 1400, timeout: float = 120.0) -> dict:
    """``{height, width, images: [{src, ok}], links: [href], ids: [id], tables, figures}`` of ``page``
    rendered at ``width`` px. The probe is put into a sibling copy of the page so relative paths resolve."""
    binary = chromium()
    if binary is None:
        raise RuntimeError("no chromium on PATH")
    page = Path(page).resolve()
    html = page.read_text()
    probe = page.with_name(f".probe-{page.name}")
    probe.write_text(html.replace("</body>", _PROBE + "</body>") if "</body>" in html else html + _PROBE)
    try:
        with tempfile.TemporaryDirectory() as profile:
            out = subprocess.run([binary, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},1000",
                                  "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
                                 capture_output=True, text=True, timeout=timeout)
    finally:
        probe.unlink()
    m = re.search(r'<pre id="chromium-check">(.*?)</pre>', out.stdout, re.S)
    if not m:
        raise RuntimeError(f"chromium printed no result (rc {out.returncode}): {out.stderr[-2000:]}")
    import html as _html
    return json.loads(_html.unescape(m.group(1)))


def broken_links(page: Path, seen: dict) -> list[str]:
    """The links of ``page`` (as :func:`inspect` saw them) that do not resolve: a missing file, or an
    anchor that the target page does not hold. External links (``scheme:``) are not followed."""
    bad = []
    for href in seen["links"]:
        if re.match(r"^[a-z]+:", href):
            continue
        target, _, frag = href.partition("#")
        if not target:
            if frag not in seen["ids"]:
                bad.append(href)
            continue
        path = (Path(page).parent / target)
        if not path.is_file():
            bad.append(href)
        elif frag and path.suffix in (".html", ".htm") and f'id="{frag}"' not in path.read_text():
            bad.append(href)
    return bad


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        seen = inspect(Path(arg))
        print(f"{arg}: {seen['height']} px tall at {seen['width']} px ({seen['height'] / 900:.1f} screens of 900 px); "
              f"{seen['tables']} tables, {seen['figures']} figures, "
              f"{sum(not i['ok'] for i in seen['images'])} of {len(seen['images'])} images not loaded, "
              f"broken links: {broken_links(Path(arg), seen)}")
