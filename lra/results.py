"""Result records: one JSON object per measurement, written atomically, loaded into pandas.

A record (``SCHEMA_VERSION`` 1) holds at least::

    kind            "train" | "bench"
    task            LRA task name (train; the model-step shape for bench) or null
    variant         attention variant name;  variant_config: every field of its config
                    dataclass with defaults filled in (:func:`variant_config`)
    seq_len, batch_size, dtype, seed
    device          {type, name, count, memory_mb}; count: CUDA GPUs visible (cuda), or the
                    CPUs available to the job (cpu: ``host.cpus_available``)
    host            where and how it ran on the host (:func:`host_info`): torch_threads,
                    interop_threads, cpu_count, cpus_available, concurrent_jobs, load_avg_1m,
                    loaded (load_avg_1m > cpus_available: other work competed for the cores,
                    so timings are not trustworthy), omp_num_threads, mkl_num_threads, affinity
    versions        {python, torch, cuda, cudnn, xformers, lra_bench}
    git_commit      commit of the code that produced it (with "-dirty" when modified)
    status          "ok" | "oom" | "nan" | "error" | "skipped";  message: why, when not ok
                    (skipped: not run, with the reason: a bench case past a cap or refused, a
                    learning rate of a cell another rate solved: lra.training.lr_sweep)
    metrics         {accuracy, loss, steps_per_s, tokens_per_s, ms_fwd, ms_fwd_bwd,
                     peak_mem_mb, tflops, approx_error, ...} (those that apply)
    case            free-form facts that identify a benchmark case (mode, heads, ...)
    timings_ms      (bench, timed modes) the raw per-call times behind ``metrics.ms`` (ms per
                    step for train_overhead, whose ``timings_ms_by_part`` has each timed function's)
    config          the effective configuration of the run: what it ran with after recipes,
                    presets and command-line overrides (train: task, model, trainer, attention
                    with every knob of the variant)
    started_at, finished_at   ISO-8601 UTC timestamps

:func:`load` is the only way reports read records. Reading records needs no torch: torch,
:mod:`lra.devices` and :mod:`attention_variants` (which load it) are imported inside the functions
that make a record, so that the report (:mod:`lra.report`) starts without loading torch.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import platform
import subprocess
import uuid
from importlib.metadata import PackageNotFoundError, version as _pkg_version
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from .io import write_json

SCHEMA_VERSION = 1
STATUSES = ("ok", "oom", "nan", "error", "skipped")
RECORD_FILENAME = "record.json"


def now() -> str:
    """Current UTC time, ISO-8601."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _maybe_version(dist: str) -> str | None:
    try:
        return _pkg_version(dist)
    except PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    """Versions of the software stack that affect results."""
    import torch  # noqa: PLC0415 - here, so that reading records (the report) does not load torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else None,
        "triton": _maybe_version("triton"),
        "xformers": _maybe_version("xformers"),
        "lra_bench": _maybe_version("lra-bench") or __import__("lra").__version__,
    }


def device_info(device: Any = None) -> dict[str, Any]:
    """Name, count and memory of the device a run used (CPU: processor and core count)."""
    import torch  # noqa: PLC0415 - here, so that reading records (the report) does not load torch

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {"type": "cuda", "name": props.name, "count": torch.cuda.device_count(),
                "memory_mb": round(props.total_memory / 2**20)}
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    except (ValueError, OSError, AttributeError):
        mem = None
    from .devices import cpus_available  # noqa: PLC0415 - lra.devices loads torch: see the module docstring

    return {"type": device.type, "name": f"CPU {cpu_model()}", "count": cpus_available(), "memory_mb": mem}


def host_info() -> dict[str, Any]:
    """The host side of a run: threads, cores, load, thread settings and CPU affinity.

    ``torch_threads``/``interop_threads``: torch's intra-/inter-op thread counts;
    ``cpu_count``: ``os.cpu_count()``; ``cpus_available``: the CPUs this job may use
    (affinity / SLURM allocation, :func:`lra.devices.cpus_available`); ``concurrent_jobs``:
    jobs of the sweep sharing them (:func:`lra.devices.concurrent_jobs`); ``load_avg_1m``: the
    1-minute load average; ``loaded``: ``load_avg_1m > cpus_available`` (more runnable work
    than cores: timings are slowed by others); ``omp_num_threads``/``mkl_num_threads``: the
    environment settings (None if unset); ``affinity``: the CPU ids, or None where unknown.
    """
    import torch  # noqa: PLC0415 - here, so that reading records (the report) does not load torch

    from .devices import concurrent_jobs, cpus_available  # noqa: PLC0415 - loads torch: see the module docstring

    try:
        affinity = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    try:
        load = round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        load = None
    cpus = cpus_available()
    return {"torch_threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
            "cpu_count": os.cpu_count(), "cpus_available": cpus, "concurrent_jobs": concurrent_jobs(),
            "load_avg_1m": load, "loaded": bool(load is not None and load > cpus),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "mkl_num_threads": os.environ.get("MKL_NUM_THREADS"), "affinity": affinity}


def loaded_warning(host: dict[str, Any]) -> str | None:
    """A loud warning when ``host`` says the machine was loaded (see :func:`host_info`), else None."""
    if not host.get("loaded"):
        return None
    return (f"WARNING: the 1-minute load average ({host['load_avg_1m']}) exceeds the {host['cpus_available']} "
            f"CPUs available to this job: other work is competing for the cores, so CPU timings are slowed and "
            f"noisy. These records say host.loaded=true. Measure on a quiet machine, or run fewer jobs at once.")


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux), else the architecture."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def git_commit() -> str | None:
    """Commit of the lra-bench source tree (``-dirty`` if it has uncommitted changes), or None."""
    src = Path(__file__).resolve().parent.parent
    if "LRA_GIT_COMMIT" in os.environ:  # set by launchers that copy the tree without .git
        return os.environ["LRA_GIT_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=src,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")


def variant_config(name: str, **cfg: Any) -> dict[str, Any]:
    """Every field of variant ``name``'s config dataclass (``heads``, ``head_dim``,
    ``max_length``, ``seed`` and each knob), defaults filled in: the record's ``variant_config``."""
    import attention_variants as av  # noqa: PLC0415 - loads torch: see the module docstring

    return dataclasses.asdict(av.make_config(name, **cfg))


def make_record(kind: str, *, variant: str, task: str | None = None, status: str = "ok",
                message: str | None = None, metrics: dict | None = None, device: Any = None,
                host: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """A record with provenance filled in; ``fields`` adds or overrides top-level keys.

    ``host``: :func:`host_info` taken when the measurement started (default: now)."""
    if kind not in ("train", "bench"):
        raise ValueError(f"record kind must be 'train' or 'bench', got {kind!r}")
    if status not in STATUSES:
        raise ValueError(f"record status must be one of {STATUSES}, got {status!r}")
    record = {
        "schema": SCHEMA_VERSION, "kind": kind, "task": task, "variant": variant,
        "variant_config": {}, "seq_len": None, "batch_size": None, "dtype": None, "seed": None,
        "device": device_info(device), "host": host if host is not None else host_info(),
        "versions": versions(), "git_commit": git_commit(),
        "status": status, "message": message, "metrics": dict(metrics or {}), "case": {},
        "config": {}, "started_at": None, "finished_at": now(),
    }
    record.update(fields)
    return record


def write_record(record: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``record`` as JSON (indent 1) to ``path`` atomically (:func:`lra.io.write_json`: a
    temporary file in the same folder, then a rename).

    If ``path`` is a directory, the file gets a unique name inside it. Readers never see a
    partial file: the temp file's name does not end in ``.json``.
    """
    as_dir = str(path).endswith(("/", os.sep))
    path = Path(path)
    if as_dir or path.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        path = path / f"{record.get('kind', 'record')}-{record.get('variant', 'x')}-{uuid.uuid4().hex[:12]}.json"
    return write_json(path, record, indent=1)


def read_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """One record file, or None if the file is not a record (other JSON, e.g. Hydra's)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if isinstance(data, dict) and "schema" in data and "kind" in data:
        data["_path"] = str(path)
        return data
    return None


def iter_records(paths: Iterable[str | os.PathLike] | str | os.PathLike,
                 skipped: list[Path] | None = None) -> Iterable[dict[str, Any]]:
    """Records from files and (recursively) directories; non-record JSON is skipped.

    ``skipped``: a list that collects the paths of the ``*.json`` files that are not records
    (other JSON such as benchmark side files, or unreadable JSON), so callers can say so.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files = sorted(p.rglob("*.json"))
        elif p.is_file():
            files = [p]
        else:
            raise FileNotFoundError(f"no record file or directory at {p}")
        for f in files:
            rec = read_record(f)
            if rec is not None:
                yield rec
            elif skipped is not None:
                skipped.append(f)


_FLAT_PREFIXED = ("device", "versions", "host")
_FLAT_PLAIN = ("metrics", "case")


def flatten(record: dict[str, Any]) -> dict[str, Any]:
    """One table row: metrics and case facts as plain columns, device/versions prefixed."""
    row: dict[str, Any] = {}
    for key, value in record.items():
        if key in _FLAT_PLAIN and isinstance(value, dict):
            for k, v in value.items():
                row.setdefault(k, v)
        elif key in _FLAT_PREFIXED and isinstance(value, dict):
            for k, v in value.items():
                row[f"{key}_{k}"] = v
        else:
            row[key] = value
    return row


def load(paths: Iterable[str | os.PathLike] | str | os.PathLike,
         skipped: list[Path] | None = None) -> pd.DataFrame:
    """Load records from any mix of files and directories into one DataFrame (a row each).

    Columns: the record's top-level keys, every metric and case fact as its own column,
    ``device_name``/``device_type``/..., ``versions_torch``/..., and ``_path``.
    JSON files that are not records are skipped (their paths appended to ``skipped`` if given).
    """
    rows = [flatten(r) for r in iter_records(paths, skipped)]
    df = pd.DataFrame(rows)
    if not df.empty:
        for col in ("finished_at", "started_at"):
            if col in df:
                df[col] = pd.to_datetime(df[col], utc=True, errors="coerce")
    return df
