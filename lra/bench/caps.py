"""The caps in force: what ends a case early, and which cases then do not run.

``cap.time_s`` (seconds one case may run) and ``cap.mem_mb`` (MiB of resident set one case may
add on CPU) come from ``conf/bench.yaml`` (device defaults; 0 = no cap); a case that passes one is
stopped in its own process (:mod:`lra.bench.isolation`) and recorded: ``skipped`` past the time
cap, ``oom`` past the memory cap. :class:`CapTracker` then decides before each case, per group of
cases that differ only in N (:meth:`lra.bench.case.Case.group`, N ascending):

* after an ``oom`` at N, every larger N is ``oom`` without running (:data:`SKIPPED_OOM`);
* after a case stopped at the time cap or skipped by the estimate, every larger N is ``skipped``;
* with ``cap.estimate``, a case whose estimated time passes the time cap is ``skipped`` without
  running: the last finished N's case time scaled by (N / N_prev)^p, p the variant's time
  complexity in N (:func:`exponent`: 2 for O(N^2), 1 for O(N) and O(N log N), 2 where not stated).

Every record says which caps were in force (``case.cap``, :func:`cap_facts`).
"""
from __future__ import annotations

import math
import re

import attention_variants as av

from .case import Case

SKIPPED_OOM = "skipped: smaller N already out of memory"
#: how the messages of cases skipped for time begin (a resumed run stops their group again)
TIME_SKIPS = ("time cap:", "estimate:", "skipped: N=")


def cap_facts(s: dict) -> dict:
    """The record's ``case.cap``: ``time_s`` and ``mem_mb`` (None: no cap) and ``estimate``."""
    cap = s.get("cap") or {}
    return {"time_s": float(cap["time_s"]) if cap.get("time_s") else None,
            "mem_mb": float(cap["mem_mb"]) if cap.get("mem_mb") else None,
            "estimate": bool(cap.get("estimate", False))}


def exponent(complexity: str | None) -> float:
    """The power of N in a complexity string: ``O(N^2)`` -> 2, ``O(N)`` and ``O(N log N)`` -> 1,
    ``O(N^1.5)`` -> 1.5; 2 (quadratic, the cautious guess) where it is missing or unreadable."""
    if not complexity:
        return 2.0
    found = re.search(r"N\s*\^\s*\(?([0-9.]+)", complexity)
    if found:
        return float(found.group(1))
    return 1.0 if re.search(r"\bN\b", complexity) else 2.0


def variant_exponent(variant: str) -> tuple[float, str | None]:
    """``(p, complexity)`` of a registered variant (p = 2, complexity None where unknown)."""
    try:
        complexity = getattr(av.get(variant)[0], "complexity", None)
    except KeyError:
        complexity = None
    return exponent(complexity), complexity


class CapTracker:
    """Per group of cases (same mode, variant, batch, dtype, pattern, causal): what happened at
    smaller N, and whether the next case runs. ``time_s``: the time cap (0: none);
    ``estimate``: skip cases whose estimate passes it."""

    def __init__(self, time_s: float = 0, estimate: bool = False):
        self.time_s = float(time_s or 0)
        self.estimate = bool(estimate)
        self.oom_at: dict[tuple, int] = {}
        self.stopped: dict[tuple, str] = {}
        self.last: dict[tuple, tuple[int, float]] = {}

    def verdict(self, case: Case) -> tuple[str, str] | None:
        """``(status, message)`` for a case that is not to run, or None to run it."""
        group = case.group()
        if group in self.oom_at and case.seq_len > self.oom_at[group]:
            return "oom", SKIPPED_OOM
        if group in self.stopped:
            return "skipped", self.stopped[group]
        if self.estimate and self.time_s and group in self.last and case.variant:
            n0, wall0 = self.last[group]
            p, complexity = variant_exponent(case.variant)
            est = wall0 * (case.seq_len / n0) ** p
            if est > self.time_s:
                why = (f"estimate: {est:.0f} s > cap.time_s={self.time_s:g} s (N={n0} took {wall0:.1f} s, "
                       f"x ({case.seq_len}/{n0})^{p:g} for {complexity or 'an unstated complexity'})")
                self.stopped[group] = f"skipped: N={case.seq_len} was skipped by the time estimate"
                return "skipped", why
        return None

    def update(self, case: Case, status: str, wall_s: float | None, capped: str | None = None) -> None:
        """Note what a case that ran ended with (its ``status``, seconds, and a cap that stopped it)."""
        group = case.group()
        if status == "oom":
            self.oom_at[group] = min(case.seq_len, self.oom_at.get(group, case.seq_len))
        elif capped == "time":
            self.stopped[group] = f"skipped: N={case.seq_len} already passed the time cap ({self.time_s:g} s)"
        elif status == "ok" and wall_s is not None and math.isfinite(wall_s):
            self.last[group] = (case.seq_len, float(wall_s))

    def resume(self, case: Case, record: dict) -> None:
        """Note a case's record from an earlier, interrupted run of the same grid: as :meth:`update`,
        and a case that was skipped for time stops its group again."""
        message = record.get("message") or ""
        if record["status"] == "skipped" and message.startswith(TIME_SKIPS):
            self.stopped.setdefault(case.group(), f"skipped: N={case.seq_len} was skipped for time (an earlier run)")
            return
        self.update(case, record["status"], (record.get("case") or {}).get("wall_s"))
