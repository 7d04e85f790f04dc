"""Hydra callbacks: share the CPU cores among a sweep's parallel jobs; build a sweep's report when it ends."""
from __future__ import annotations

import os
import traceback
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from .devices import CONCURRENT_JOBS_ENV


def sweep_jobs(config: DictConfig) -> int | None:
    """Largest number of jobs the sweep hands its launcher at once (Hydra's basic sweeper:
    the product of the sweep values, in batches of ``max_batch_size``); None for other sweepers."""
    sweeper = config.hydra.sweeper
    if not str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper  # noqa: PLC0415
    from hydra.core.override_parser.overrides_parser import OverridesParser  # noqa: PLC0415

    params = sweeper.get("params")
    params = OmegaConf.to_container(params, resolve=False) if OmegaConf.is_config(params) else dict(params or {})
    arguments = [f"{k}={v}" for k, v in params.items()] + [str(o) for o in config.hydra.overrides.task]
    overrides = OverridesParser.create().parse_overrides(arguments)
    batches = BasicSweeper.split_arguments(overrides, sweeper.get("max_batch_size"))
    return max((len(b) for b in batches), default=1)


def concurrent_jobs_of(config: DictConfig) -> int | None:
    """How many of the sweep's jobs run at once on this machine, by launcher: the basic launcher
    runs them one after another (1); ``submitit_local`` starts a whole batch at once; joblib
    runs ``n_jobs`` at a time. None where each job has its own allocation (SLURM) or the count
    is unknown."""
    launcher = str(config.hydra.launcher.get("_target_", ""))
    if launcher.endswith("BasicLauncher"):
        return 1
    jobs = sweep_jobs(config)
    if launcher.endswith("submitit_launcher.LocalLauncher"):
        return jobs
    if "joblib" in launcher:
        n_jobs = int(config.hydra.launcher.get("n_jobs") or 1)
        if n_jobs <= 0:  # joblib: -1 = every CPU, -2 = all but one, ...
            n_jobs = max(1, (os.cpu_count() or 1) + 1 + n_jobs)
        return n_jobs if jobs is None else max(1, min(n_jobs, jobs))
    return None


class ShareCpus(Callback):
    """Before a multirun launches, tell its jobs how many of them share this machine's cores.

    Sets ``LRA_CONCURRENT_JOBS`` (:func:`concurrent_jobs_of`) in this process's environment,
    which the launcher's job processes inherit; each job then runs
    ``cores available / LRA_CONCURRENT_JOBS`` intra-op threads (:func:`lra.devices.job_threads`).
    Where the count does not apply (SLURM: each job's allocation is its own, and ``sbatch``
    would carry the variable to the nodes) the variable is removed.
    """

    def __init__(self) -> None:
        self._before: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._before = os.environ.get(CONCURRENT_JOBS_ENV)
        try:
            jobs = concurrent_jobs_of(config)
        except Exception:  # noqa: BLE001 - never stop a sweep over a thread count
            print(f"[lra] could not count the sweep's parallel jobs:\n{traceback.format_exc(limit=2)}")
            jobs = None
        if jobs is None:
            os.environ.pop(CONCURRENT_JOBS_ENV, None)
        else:
            os.environ[CONCURRENT_JOBS_ENV] = str(jobs)
            if jobs > 1:
                print(f"[lra] {jobs} jobs run at once on this machine: each gets 1/{jobs} of its cores "
                      f"({CONCURRENT_JOBS_ENV}={jobs})")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self._before is None:
            os.environ.pop(CONCURRENT_JOBS_ENV, None)
        else:
            os.environ[CONCURRENT_JOBS_ENV] = self._before


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
