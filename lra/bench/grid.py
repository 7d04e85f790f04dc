"""The grid: every case of a run, in the order they run.

For each mode of ``modes`` (in the order given), each variant, each of the mode's other axes
(:attr:`lra.bench.registry.Mode.axes`) and each length N ascending -- N innermost, so that the
runner sees a variant's small N first and skips the larger ones after an out-of-memory case.
Size: modes x variants x axes x lengths cases.
"""
from __future__ import annotations

from typing import Any

from .case import Case
from .registry import MODES


def plan(s: dict[str, Any]) -> list[Case]:
    """Every case of the grid of settings ``s`` (:func:`lra.bench.settings.resolve_settings`),
    N ascending innermost (so OOM skipping sees small N first)."""
    cases: list[Case] = []
    for name in s["modes"]:
        mode = MODES[name]
        lengths = sorted(mode.lengths(s))
        for variant in s["variants"]:
            for axes in mode.axes(variant, s):
                cases += [Case(name, variant, n, **axes) for n in lengths]
    return cases
