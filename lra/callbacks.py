"""Hydra callbacks: build a sweep's report when the sweep ends."""
from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class ReportOnMultirunEnd(Callback):
    """After ``-m``, build ``<sweep dir>/report/report.md`` from the records the jobs wrote.

    Never raises: a report that cannot be built must not turn a finished sweep into a failure.
    """

    def __init__(self, figures: bool = True) -> None:
        self.figures = figures

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from .report import build_report

        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            path = build_report([sweep_dir], sweep_dir / "report",
                                figure_formats=("png", "svg") if self.figures else ())
            print(f"[lra] sweep report: {path}")
        except Exception:  # noqa: BLE001 - report problems are printed, not raised
            print(f"[lra] could not build the sweep report for {sweep_dir}:\n{traceback.format_exc(limit=3)}")
