"""The one atomic writer: a file appears whole under its final name, or not at all.

Every writer of a result, checkpoint, cache entry, report page or figure goes through
:func:`atomic_write`: the content is written to a unique temporary file in the target's own
folder (same file system, so the final :func:`os.replace` is atomic), flushed and synced,
then renamed over the target. A reader never sees a partial file, two writers never share a
temporary file, and a crash leaves at most a hidden ``.<name>.*.part`` file behind. Files are
created ``0644`` (``mkstemp`` alone would make them owner-only).

No dependency beyond the standard library: torch objects are written by passing
``lambda p: torch.save(obj, p)`` as the writer.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], *, sync: bool = True) -> Path:
    """Create or replace ``path`` atomically: ``write(tmp)`` fills a temporary file beside it,
    which is then synced (``sync``) and renamed to ``path``. Parent folders are created.
    Returns ``path``. On any error the temporary file is removed and the error re-raised;
    ``path`` keeps its previous content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, 0o644)
        os.close(fd)
        write(tmp)
        if sync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """``text`` (UTF-8) to ``path``, atomically."""
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 1) -> Path:
    """``obj`` as JSON to ``path``, atomically (values JSON does not know are written as ``str``)."""
    return write_text(path, json.dumps(obj, indent=indent, default=str))
