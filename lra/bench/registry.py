"""The bench modes, registered as data.

A mode is a :class:`Mode`: its name (``case.mode`` in the records), the settings section it
reads and how that section's defaults resolve, the cases it makes for a variant, the function
that measures one case, its main metric and the summary's tables. Each mode's module declares
its :class:`Mode` and calls :func:`register`; :func:`discover` imports every module of the
package, so a new module is all a new mode needs. :data:`MODES` maps name -> mode, in
``order`` (the order of listings and of the summary's tables).
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable, Iterable

import pandas as pd
import torch

from ..schema import Rule
from .case import Case, Measurement

#: extra columns of a mode's main summary table: ``(table, mode_rows, index, metric) -> table``
TableColumns = Callable[[pd.DataFrame, pd.DataFrame, list, str], pd.DataFrame]


@dataclass(frozen=True)
class Mode:
    """One bench mode.

    ``name`` is ``case.mode`` and the ``modes=[...]`` entry; ``order`` places it among the
    modes (listings, the summary; the built-in ones are 10, 20, ... 60).
    ``axes(variant, settings)``: the mode's case axes besides N for one variant, each a dict of
    :class:`~lra.bench.case.Case` fields (``batch_size``, ``dtype``, ``pattern``, ``radius``,
    ``causal``); the grid takes every one at every length, N ascending innermost
    (:func:`lra.bench.grid.plan`). ``measure(case, settings, device)`` measures one case.

    Settings: a mode with a ``section`` reads ``settings[section]`` (``conf/bench.yaml``), whose
    null values come from ``device_defaults.<device>.<section>`` and whose ``lengths`` default to
    the grid's; without one it reads the top-level grid keys (``lengths``, ``batch_size``,
    ``dtype``, ``heads``, ...). Every section is filled (the records' ``config`` holds them all),
    and checked only when the mode runs. Hooks, each optional:

    * ``defaults(settings)``: fill the section's remaining nulls from other settings (always);
    * ``problems(settings) -> list[str]``: what is wrong beyond ``rules`` (when the mode runs;
      reported together with every other bad value);
    * ``finish(settings, running)``: check and complete what needs the resolved variants and
      knobs (``running``: whether the mode is in ``modes``); raises :class:`lra.schema.ConfigError`.

    How its cases run, each optional:

    * ``skip(case, settings) -> str | None``: the reason not to run a case (e.g. a variant that
      refuses ``causal=True``), checked before it would run: the record is ``skipped`` with it;
    * ``isolate``: measure each case in a fresh process of its own when isolation is on
      (``isolate``, default on CPU: :mod:`lra.bench.isolation`), for a peak memory that no earlier
      case's heap can hide and caps that stop it; modes that measure peak memory set it;
    * ``uses_peak``: its records carry ``tflops``, whose ``tflops_fraction`` on a device without a
      tabulated peak (CPU) is of the run's calibrated GEMM rate (:mod:`lra.bench.calibration`);
    * ``cases(settings) -> list[Case]``: the mode's cases when they are not one per variant x axes x
      length (the run's calibration); ``joins(settings, device_type) -> bool``: whether the mode
      runs although ``modes`` does not name it (it then runs first).

    Records and summary: a case is ``ok`` only if its ``metric`` was measured and is finite;
    ``title`` heads its summary table (variants x N), ``tables`` adds one table per
    ``(metric, heading)`` that has values, ``columns`` adds columns to the main table;
    ``task_shaped``: the section's ``task`` is the LRA task whose shape the case runs at (the
    records' ``task``).
    """

    name: str
    order: int
    axes: Callable[[str, dict], list[dict]]
    measure: Callable[[Case, dict, torch.device], Measurement]
    metric: str
    title: str
    section: str | None = None
    rules: tuple[Rule, ...] = ()
    defaults: Callable[[dict], None] | None = None
    problems: Callable[[dict], list[str]] | None = None
    finish: Callable[[dict, bool], None] | None = None
    task_shaped: bool = False
    tables: tuple[tuple[str, str], ...] = ()
    columns: TableColumns | None = None
    skip: Callable[[Case, dict], str | None] | None = None
    isolate: bool = False
    uses_peak: bool = False
    cases: Callable[[dict], list[Case]] | None = None
    joins: Callable[[dict, str], bool] | None = None

    def lengths(self, settings: dict) -> list[int]:
        """The lengths N this mode runs at: its section's, else the grid's."""
        return (settings[self.section] if self.section else settings)["lengths"]

    def task(self, settings: dict) -> str | None:
        """The records' ``task``: the section's ``task`` for a task-shaped mode, else None."""
        return settings[self.section].get("task") if self.task_shaped else None


#: every registered mode by name, in ``order``
MODES: dict[str, Mode] = {}


def register(mode: Mode) -> Mode:
    """Add ``mode`` to :data:`MODES` (kept in ``order``); a name registered twice is an error."""
    if mode.name in MODES:
        raise ValueError(f"bench mode {mode.name!r} is registered twice")
    MODES[mode.name] = mode
    ordered = sorted(MODES.values(), key=lambda m: m.order)
    MODES.clear()
    MODES.update((m.name, m) for m in ordered)
    return mode


def sectioned() -> list[Mode]:
    """The registered modes that read a settings section, in order."""
    return [m for m in MODES.values() if m.section]


def discover(package: str, path: Iterable[str]) -> None:
    """Import every module of ``package`` (found on ``path``) but private ones (``_name``): the mode
    modules register themselves."""
    for module in pkgutil.iter_modules(path):
        if not module.name.startswith("_"):
            importlib.import_module(f"{package}.{module.name}")
