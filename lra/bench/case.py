"""One case of the grid and what measuring it returns.

A :class:`Case` is one point of the grid -- mode, variant, length N and the mode's other axes
(batch, dtype, input pattern, radius, causal) -- and names its record file. A mode's
``measure(case, settings, device)`` returns a :class:`Measurement`, or raises :class:`SkipCase`
for a case it will not run (a variant that refuses ``causal=True``, one without a cached decoding
path); the runner (:mod:`lra.bench.runner`) turns either into a result record.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Case:
    """One measurement to make: ``mode`` on ``variant`` at length ``seq_len`` and the mode's other axes."""

    mode: str
    variant: str                    # "" for a case of the run, not of a variant (calibration)
    seq_len: int
    batch_size: int | None = None
    dtype: str | None = None
    pattern: str | None = None
    radius: float | None = None     # smoothness: the ball's radius of a synthetic pattern
    causal: bool = False            # op_*, model_step: built with causal=True; smoothness: with its causal knobs

    def _parts(self, eq: str) -> list[str]:
        """mode, variant, N, B, dtype, pattern, R, causal (those set); ``eq`` joins a letter to its value."""
        parts = [p for p in (self.mode, self.variant) if p] + [f"N{eq}{self.seq_len}"]
        if self.batch_size is not None:
            parts.append(f"B{eq}{self.batch_size}")
        parts += [p for p in (self.dtype, self.pattern) if p]
        if self.radius is not None:
            parts.append(f"R{eq}{self.radius:g}")
        return parts + (["causal"] if self.causal else [])

    def label(self) -> str:
        """``op_fwd full N=256 B=2 float32``: the progress line's description."""
        return " ".join(self._parts("="))

    def group(self) -> tuple:
        """Cases that differ only in N: an OOM at one N skips the larger ones."""
        return (self.mode, self.variant, self.batch_size, self.dtype, self.pattern, self.radius, self.causal)

    def filename(self) -> str:
        """``op_fwd-full-N256-B2-float32.json``: the case's record file."""
        return "-".join(self._parts("")) + ".json"


@dataclass
class Measurement:
    """What a mode measured for one case; ``status`` ``ok`` unless the mode found a non-finite result."""

    metrics: dict[str, Any]
    facts: dict[str, Any]          # goes into the record's ``case``
    variant_config: dict[str, Any]
    status: str = "ok"
    message: str | None = None
    timings_ms: list[float] | None = None   # raw per-call times behind metrics["ms"] (record's ``timings_ms``)
    timings_ms_by_part: dict[str, list[float]] | None = None  # train_overhead: each timed function's times


class SkipCase(Exception):
    """Raised by a mode's ``measure`` for a case it does not run; the record's status is
    ``skipped`` and its message this exception's text (the reason)."""
