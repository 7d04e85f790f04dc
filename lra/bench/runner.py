"""Run a grid: measure every case, write one record each, never stop on a failure.

:func:`run` resolves the settings (:mod:`lra.bench.settings`), plans the cases
(:func:`lra.bench.grid.plan`), measures each with its mode (:func:`run_grid`), writes each
record as it is made into ``<job dir>/records/<case file name>`` (and ``results_dir``), and
prints the summary (:mod:`lra.bench.summary`).

Failures never stop the grid: an out-of-memory case is a record with status ``oom`` (and the
same variant's larger N in that mode/batch/dtype/pattern are recorded as ``oom`` with message
:data:`SKIPPED_OOM`, without running); a non-finite result ``nan``; a case whose mode's main
metric is missing ``error``; any other exception ``error`` with its message and traceback.
:func:`exit_code` gives ``lra-bench``'s exit status from the records.
"""
from __future__ import annotations

import math
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from omegaconf import DictConfig

from ..compiled import raise_compile_limits
from ..devices import set_job_threads
from ..progress import progress as progress_bar
from ..results import git_commit, host_info, loaded_warning, make_record, now, write_record
from ..schema import ConfigError
from ..timing import free_memory, is_oom
from .case import Case, Measurement
from .grid import plan
from .measuring import device_name, first_line
from .registry import MODES
from .settings import as_list, plain, resolve_device, resolve_settings
from .summary import summary

SKIPPED_OOM = "skipped: smaller N already out of memory"
RECORDS_DIR = "records"

Measure = Callable[[Case, dict, torch.device], Measurement]


def measure_case(case: Case, s: dict, device: torch.device) -> Measurement:
    """Measure ``case`` with its mode's ``measure``."""
    return MODES[case.mode].measure(case, s, device)


def run_grid(cases: Iterable[Case], s: dict, device: torch.device, *, measure: Measure = measure_case,
             emit: Callable[[Case, dict], None] | None = None, config: dict | None = None,
             progress: bool = True) -> list[dict[str, Any]]:
    """Measure every case; one record each (also passed to ``emit`` as it is made). Failures
    become records; the grid goes on. ``config``: the records' ``config`` (default ``s``)."""
    cases = list(cases)
    oom_at: dict[tuple, int] = {}
    records = []
    bar = progress_bar(cases, disable=not progress, unit="case")
    for case in bar:
        bar.set_description(case.label())
        started = now()
        host = host_info()
        status, message = "ok", None
        m: Measurement | None = None
        group = case.group()
        if group in oom_at and case.seq_len > oom_at[group]:
            status, message = "oom", SKIPPED_OOM
        else:
            try:
                m = measure(case, s, device)
                status, message = m.status, m.message
            except Exception as err:  # noqa: BLE001 - every failure is a record
                if is_oom(err):
                    status, message = "oom", first_line(err)
                    oom_at[group] = min(case.seq_len, oom_at.get(group, case.seq_len))
                else:
                    status = "error"
                    message = f"{first_line(err)}\n{traceback.format_exc(limit=6)}"
            finally:
                free_memory(device)
        if status == "ok" and m is not None:
            status, message = _measured_something(case, m)
        record = _record(case, m, s, device, status, message, started, host, config)
        records.append(record)
        if emit is not None:
            emit(case, record)
    bar.close()
    return records


def _record(case: Case, m: Measurement | None, s: dict, device: torch.device, status: str, message: str | None,
            started: str, host: dict, config: dict | None) -> dict[str, Any]:
    """The result record of one case (:func:`lra.results.make_record`, ``kind="bench"``)."""
    facts = {"mode": case.mode, "heads": None, "head_dim": None, "timer": None,
             "pattern": case.pattern, "backend": None}
    if m is not None:
        facts.update(m.facts)
    extra = {}
    if m is not None and m.timings_ms is not None:
        extra["timings_ms"] = [round(t, 6) for t in m.timings_ms]
    if m is not None and m.timings_ms_by_part is not None:
        extra["timings_ms_by_part"] = {k: [round(t, 6) for t in v] for k, v in m.timings_ms_by_part.items()}
    return make_record(
        "bench", variant=case.variant, task=MODES[case.mode].task(s),
        seq_len=case.seq_len, batch_size=case.batch_size, dtype=case.dtype, status=status, message=message,
        metrics=m.metrics if m is not None else {}, case=facts,
        variant_config=m.variant_config if m is not None else dict(s["knobs"].get(case.variant, {})),
        config=config if config is not None else s, device=device, seed=int(s.get("seed") or 0),
        started_at=started, host=host, **extra)


def _measured_something(case: Case, m: Measurement) -> tuple[str, str | None]:
    """``ok`` only if the mode's main metric was measured and is finite; else ``error``."""
    metric = MODES[case.mode].metric
    value = m.metrics.get(metric)
    if value is None:
        return "error", f"measured nothing: no {metric}"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan", f"{metric} is {value}"
    return m.status, m.message


def run(cfg: DictConfig, job_dir: Path, *, raise_config_errors: bool = True,
        measure: Measure = measure_case) -> list[dict[str, Any]]:
    """Run the grid of ``cfg``; records go to ``job_dir/records/`` (and ``cfg.results_dir``).

    A config error raises :class:`lra.schema.ConfigError`, or with ``raise_config_errors=False``
    (a job of a ``-m`` sweep) becomes one ``error`` record, ``records/config-error.json``."""
    job_dir = Path(job_dir)
    records_dir = job_dir / RECORDS_DIR
    records_dir.mkdir(parents=True, exist_ok=True)
    results_dir = Path(cfg.results_dir) if cfg.get("results_dir") else None
    if results_dir is not None:
        results_dir.mkdir(parents=True, exist_ok=True)
    set_commit = "LRA_GIT_COMMIT" not in os.environ
    if set_commit:  # one `git` lookup per run instead of one per record
        commit = git_commit()
        if commit:
            os.environ["LRA_GIT_COMMIT"] = commit
        else:
            set_commit = False
    try:
        try:
            device = resolve_device(cfg.get("device", "auto"))
            s = resolve_settings(cfg, device)
        except ConfigError as err:
            if raise_config_errors:
                raise
            variants = as_list(cfg.get("variants"))
            record = make_record("bench", variant=",".join(map(str, variants)), status="error",
                                 message=f"ConfigError: {err}", config=plain(cfg), case={"mode": None})
            write_record(record, records_dir / "config-error.json")
            if results_dir is not None:
                write_record(record, results_dir)
            print(f"[lra-bench] config error: {err}", file=sys.stderr)
            return [record]
        raise_compile_limits()
        threads = set_job_threads(s.get("threads", "auto"))
        cases = plan(s)
        print(f"[lra-bench] {len(cases)} cases on {device} ({device_name(device) or 'cpu'}, {threads} CPU "
              f"threads): variants {', '.join(s['variants'])}; modes {', '.join(s['modes'])}; records in {records_dir}")
        warning = loaded_warning(host_info())
        if warning:
            print(f"[lra-bench] {warning}", file=sys.stderr)

        def emit(case: Case, record: dict) -> None:
            write_record(record, records_dir / case.filename())
            if results_dir is not None:
                write_record(record, results_dir)

        records = run_grid(cases, s, device, measure=measure, emit=emit, config=s,
                           progress=bool(s.get("progress", True)))
    finally:
        if set_commit:
            os.environ.pop("LRA_GIT_COMMIT", None)
    if s.get("summary", True):
        print(summary(records))
    loaded = sum(bool((r.get("host") or {}).get("loaded")) for r in records)
    if loaded:
        print(f"[lra-bench] WARNING: {loaded} of {len(records)} cases started on a loaded machine (load average "
              "above the CPUs available; host.loaded=true in their records): their timings are not trustworthy.",
              file=sys.stderr)
    return records


def exit_code(records: list[dict[str, Any]]) -> int:
    """``lra-bench``'s exit status: 1 if any case failed (status ``error`` or ``nan``: nothing
    valid was measured), else 0. ``oom`` is a measured outcome (the case does not fit), not a
    failure."""
    return 1 if any(r["status"] in ("error", "nan") for r in records) else 0
