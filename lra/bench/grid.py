"""The grid: every case of a run, in the order they run.

For each mode of ``modes`` (in the order given, modes that join a run on their own first), each
variant, each of the mode's other axes (:attr:`lra.bench.registry.Mode.axes`: batch, dtype,
causal, ...) and each length N ascending -- N innermost, so that the runner sees a variant's small
N first and skips the larger ones after a case that ran out of memory or past a cap. A mode with
its own ``cases`` (the run's calibration) gives those instead. Size: modes x variants x axes x
lengths cases.
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
        if mode.cases is not None:
            cases += mode.cases(s)
            continue
        lengths = sorted(mode.lengths(s))
        for variant in s["variants"]:
            for axes in mode.axes(variant, s):
                cases += [Case(name, variant, n, **axes) for n in lengths]
    return cases
