"""Run a grid: measure every case, write one record each, never stop on a failure.

:func:`run` resolves the settings (:mod:`lra.bench.settings`), plans the cases
(:func:`lra.bench.grid.plan`), measures each with its mode (:func:`run_grid`), writes each
record as it is made into ``<job dir>/records/<case file name>`` (and ``results_dir``), and
prints the summary (:mod:`lra.bench.summary`). A run pointed at a job directory that already
holds some of its records (``hydra.run.dir=<that dir>``) keeps those and measures the rest.

Each case: the caps first (:class:`lra.bench.caps.CapTracker`: after an out-of-memory case the
same group's larger N are ``oom`` with message :data:`SKIPPED_OOM`, without running; after a case
stopped at the time cap or skipped by its estimate they are ``skipped``), then the mode's
``skip`` (e.g. a variant that refuses ``causal=True``: ``skipped`` with its reason), then the
measurement: in a fresh process of its own for the modes that isolate when ``isolate`` is on
(:mod:`lra.bench.isolation`: CPU by default), else in this process. Failures never stop the grid:
out of memory is ``oom``; a non-finite result ``nan``; a case whose mode's main metric is missing
``error``; any other exception ``error`` with its message and traceback. The run's calibration
record (:mod:`lra.bench.calibration`) fills the later records' ``tflops_fraction`` on CPU.
:func:`exit_code` gives ``lra-bench``'s exit status from the records.
"""
from __future__ import annotations

import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from omegaconf import DictConfig

from ..compiled import raise_compile_limits
from ..devices import set_job_threads
from ..progress import progress as progress_bar
from ..results import git_commit, host_info, loaded_warning, make_record, now, read_record, write_record
from ..schema import ConfigError
from ..timing import free_memory, is_oom
from . import calibration
from .caps import SKIPPED_OOM, CapTracker, cap_facts
from .case import Case, Measurement, SkipCase
from .grid import plan
from .isolation import Outcome, run_isolated, sendable
from .measuring import device_name, first_line
from .registry import MODES
from .settings import as_list, plain, resolve_device, resolve_settings
from .summary import summary

RECORDS_DIR = "records"
__all__ = ["RECORDS_DIR", "SKIPPED_OOM", "exit_code", "measure_case", "run", "run_grid"]

Measure = Callable[[Case, dict, torch.device], Measurement]


def measure_case(case: Case, s: dict, device: torch.device) -> Measurement:
    """Measure ``case`` with its mode's ``measure``."""
    return MODES[case.mode].measure(case, s, device)


def _in_process(measure: Measure, case: Case, s: dict, device: torch.device) -> Outcome:
    """Measure ``case`` in this process (every exception becomes the outcome's status)."""
    start = time.perf_counter()
    try:
        m = measure(case, s, device)
        outcome = Outcome(m, m.status, m.message, None)
    except SkipCase as err:
        outcome = Outcome(None, "skipped", str(err), None)
    except Exception as err:  # noqa: BLE001 - every failure is a record
        if is_oom(err):
            outcome = Outcome(None, "oom", first_line(err), None)
        else:
            outcome = Outcome(None, "error", f"{first_line(err)}\n{traceback.format_exc(limit=6)}", None)
    finally:
        free_memory(device)
    outcome.wall_s = round(time.perf_counter() - start, 3)
    return outcome


def _measure_one(case: Case, s: dict, device: torch.device, measure: Measure) -> Outcome:
    """The case measured where it should be: its own process (isolating modes, ``isolate`` on,
    the mode's registered ``measure`` reachable by reference), else this one."""
    mode = MODES[case.mode]
    fn = mode.measure if measure is measure_case else measure
    if s.get("isolate") and mode.isolate and sendable(fn):
        cap = s.get("cap") or {}
        return run_isolated(fn, case, s, device, time_s=float(cap.get("time_s") or 0),
                            mem_mb=float(cap.get("mem_mb") or 0) if device.type == "cpu" else 0)
    return _in_process(measure, case, s, device)


def run_grid(cases: Iterable[Case], s: dict, device: torch.device, *, measure: Measure = measure_case,
             emit: Callable[[Case, dict], None] | None = None, config: dict | None = None,
             progress: bool = True, done: dict[str, dict] | None = None) -> list[dict[str, Any]]:
    """Measure every case; one record each (also passed to ``emit`` as it is made). Failures
    become records; the grid goes on. ``config``: the records' ``config`` (default ``s``);
    ``done``: records already made, by case file name (a resumed run): kept, not measured again."""
    cases = list(cases)
    cap = s.get("cap") or {}
    caps = CapTracker(float(cap.get("time_s") or 0), bool(cap.get("estimate", False)))
    calibrated: dict | None = None
    records = []
    bar = progress_bar(cases, disable=not progress, unit="case")
    for case in bar:
        bar.set_description(case.label())
        previous = (done or {}).get(case.filename())
        if previous is not None:
            record = previous
            caps.resume(case, record)
        else:
            record = _run_case(case, s, device, measure, caps, config)
            calibration.apply(record, calibrated)
            if emit is not None:
                emit(case, record)
        if record["case"].get("mode") == "calibration" and record["status"] == "ok":
            calibrated = record
        records.append(record)
    bar.close()
    return records


def _run_case(case: Case, s: dict, device: torch.device, measure: Measure, caps: CapTracker,
              config: dict | None) -> dict[str, Any]:
    """The record of one case: not run (a cap, the mode's ``skip``) or measured."""
    started = now()
    host = host_info()
    mode = MODES[case.mode]
    outcome = None
    verdict = caps.verdict(case)
    if verdict is None and mode.skip is not None:
        reason = mode.skip(case, s)
        verdict = None if reason is None else ("skipped", reason)
    if verdict is None:
        outcome = _measure_one(case, s, device, measure)
        status, message = outcome.status, outcome.message
        if status == "ok" and outcome.measurement is not None:
            status, message = _measured_something(case, outcome.measurement)
        caps.update(case, status, outcome.wall_s, outcome.capped)
    else:
        status, message = verdict
    return _record(case, outcome, s, device, status, message, started, host, config)


def _record(case: Case, outcome: Outcome | None, s: dict, device: torch.device, status: str, message: str | None,
            started: str, host: dict, config: dict | None) -> dict[str, Any]:
    """The result record of one case (:func:`lra.results.make_record`, ``kind="bench"``)."""
    m = outcome.measurement if outcome is not None else None
    facts = {"mode": case.mode, "heads": None, "head_dim": None, "timer": None,
             "pattern": case.pattern, "backend": None, "memory_method": None,
             "causal": None if MODES[case.mode].cases is not None else case.causal,
             "cap": cap_facts(s), "wall_s": outcome.wall_s if outcome is not None else None}
    if m is not None:
        facts.update(m.facts)
    extra = {}
    if m is not None and m.timings_ms is not None:
        extra["timings_ms"] = [round(t, 6) for t in m.timings_ms]
    if m is not None and m.timings_ms_by_part is not None:
        extra["timings_ms_by_part"] = {k: [round(t, 6) for t in v] for k, v in m.timings_ms_by_part.items()}
    per_run = MODES[case.mode].cases is not None
    return make_record(
        "bench", variant=case.variant or None, task=MODES[case.mode].task(s),
        seq_len=None if per_run else case.seq_len, batch_size=case.batch_size, dtype=case.dtype, status=status,
        message=message, metrics=m.metrics if m is not None else {}, case=facts,
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


def _done_records(records_dir: Path, cases: list[Case]) -> dict[str, dict]:
    """The records of ``cases`` already in ``records_dir`` (a resumed run), by file name."""
    done = {}
    for case in cases:
        path = records_dir / case.filename()
        record = read_record(path) if path.is_file() else None
        if record is not None:
            record.pop("_path", None)
            done[case.filename()] = record
    return done


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

        done = _done_records(records_dir, cases)
        if done:
            print(f"[lra-bench] resuming: {len(done)} of {len(cases)} cases already have their records in "
                  f"{records_dir}; measuring the rest")
        records = run_grid(cases, s, device, measure=measure, emit=emit, config=s,
                           progress=bool(s.get("progress", True)), done=done)
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
    valid was measured), else 0. ``oom`` is a measured outcome (the case does not fit) and
    ``skipped`` a stated one (a cap, a refusal), not failures."""
    return 1 if any(r["status"] in ("error", "nan") for r in records) else 0
