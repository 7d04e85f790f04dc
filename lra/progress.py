"""Progress that suits its output: a live bar on a terminal, plain lines in a log.

:func:`progress` returns a :class:`tqdm.tqdm` bar when standard error is a terminal (as before),
and otherwise a :class:`PlainProgress`, which prints one line -- count, percentage, rate and
ETA -- at most every ``interval_s`` seconds (default 30) or every ``fraction`` of the work
(default 10 %), whichever comes later, plus a final line. A SLURM log, ``lra-train ... > log``
or CI output then reads as a few dozen lines instead of one line of carriage-return updates.
``LRA_PROGRESS=bar|plain|off`` overrides the choice.

Both kinds offer the subset of tqdm's API the suite uses: iteration, ``update(n)``,
``set_postfix(**kw)``, ``write(msg)``, ``close()`` and use as a context manager. As with tqdm,
``write(msg)`` prints a message line to standard output even when the progress itself is
disabled (a run's evaluation lines do not depend on ``trainer.progress``).
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Iterable, Iterator

from tqdm.auto import tqdm

#: seconds between plain lines (at least)
INTERVAL_S = 30.0
#: share of the work between plain lines (at least)
FRACTION = 0.10


def _fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class PlainProgress:
    """Plain-line progress (see the module docstring): ``desc: 120/500 (24%) 3.1 step/s, ETA 02:03``."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "it", initial: int = 0, disable: bool = False, interval_s: float = INTERVAL_S,
                 fraction: float = FRACTION, stream=None, **_ignored: Any):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.disable, self.interval_s, self.fraction = disable, interval_s, fraction
        self.stream = stream or sys.stderr
        self.postfix = ""
        self._start_n, self._t0 = initial, time.monotonic()
        self._last_t, self._last_n, self._closed = self._t0, initial, False

    def __iter__(self) -> Iterator:
        for item in self.iterable or ():
            yield item
            self.update()
        self.close()

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kw: Any) -> None:
        items = {**(ordered_dict or {}), **kw}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def write(self, msg: str) -> None:
        """Print a message line to standard output, as :meth:`tqdm.tqdm.write` does (also when disabled)."""
        print(msg, file=sys.stdout, flush=True)

    def _emit(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def line(self) -> str:
        """The current progress line."""
        elapsed = time.monotonic() - self._t0
        done = self.n - self._start_n
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc}: " if self.desc else "", f"{self.n}"]
        if self.total:
            parts.append(f"/{self.total} ({100 * self.n / self.total:.0f}%)")
        parts.append(f" {rate:.3g} {self.unit}/s" if rate >= 0.1 or rate == 0 else f" {1 / rate:.3g} s/{self.unit}")
        parts.append(f", elapsed {_fmt_duration(elapsed)}")
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f", ETA {_fmt_duration((self.total - self.n) / rate)}")
        if self.postfix:
            parts.append(f" [{self.postfix}]")
        return "".join(parts)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.disable:
            return
        now = time.monotonic()
        step = max(1, int(self.fraction * self.total)) if self.total else None
        due_time = now - self._last_t >= self.interval_s
        due_work = step is None or self.n - self._last_n >= step
        if due_time and due_work:
            self._emit(self.line())
            self._last_t, self._last_n = now, self.n

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.disable and self.n != self._last_n:
            self._emit(self.line())


def use_bar(stream=None) -> bool:
    """Whether progress should draw a live bar: ``LRA_PROGRESS`` if set, else whether ``stream``
    (standard error by default) is a terminal."""
    mode = os.environ.get("LRA_PROGRESS", "").strip().lower()
    if mode in ("bar", "plain", "off"):
        return mode == "bar"
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             initial: int = 0, disable: bool = False, **kw: Any):
    """A tqdm bar on a terminal, else :class:`PlainProgress` (same arguments; see the module docstring).
    ``LRA_PROGRESS=off`` disables both."""
    disable = disable or os.environ.get("LRA_PROGRESS", "").strip().lower() == "off"
    if use_bar():
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=disable,
                    dynamic_ncols=True, **kw)
    return PlainProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=disable)
