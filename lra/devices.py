"""Device choice for a job: an exclusive GPU lock for one-job-per-GPU sweeps, and the CPU
threads a job may use.

CPU threads (:func:`set_job_threads`): a job gets the cores available to it
(:func:`cpus_available`: its CPU affinity, which SLURM's allocation sets, or
``SLURM_CPUS_PER_TASK`` if smaller) divided by the jobs running at once on this machine
(:func:`concurrent_jobs`: ``LRA_CONCURRENT_JOBS``, which :class:`lra.callbacks.ShareCpus`
sets for local parallel sweeps such as ``hydra/launcher=submitit_local``; 1 otherwise), and
never more than ``OMP_NUM_THREADS`` when that is set. Two jobs on two cores thus run one
thread each instead of four threads fighting over two cores.
"""
from __future__ import annotations

import atexit
import fcntl
import os
import tempfile
import time
from pathlib import Path

import torch

_held = []  # open lock files, kept for the life of the process
CONCURRENT_JOBS_ENV = "LRA_CONCURRENT_JOBS"


def cpus_available() -> int:
    """CPUs this process may run on: its affinity mask (a SLURM/cgroup allocation shows here),
    or ``SLURM_CPUS_PER_TASK`` when that is smaller; ``os.cpu_count()`` where affinity is unknown."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        n = min(n, int(slurm))
    return max(1, n)


def concurrent_jobs() -> int:
    """Jobs of this sweep running at once on this machine (``LRA_CONCURRENT_JOBS``, default 1)."""
    value = os.environ.get(CONCURRENT_JOBS_ENV, "")
    return int(value) if value.isdigit() and int(value) > 0 else 1


def job_threads(setting: int | str = "auto") -> int:
    """Intra-op threads for this job: ``setting`` if an int, else (``auto``) the cores available
    divided by the concurrent jobs, at most ``OMP_NUM_THREADS`` if set; at least 1."""
    if setting != "auto":
        return int(setting)
    n = max(1, cpus_available() // concurrent_jobs())
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        n = min(n, int(omp))
    return n


def set_job_threads(setting: int | str = "auto") -> int:
    """Set torch's intra-op threads (and inter-op threads, where still possible) for this job;
    returns the intra-op count. See the module docstring for ``auto``."""
    n = job_threads(setting)
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:  # only possible before the first parallel work of the process
        pass
    return n


def acquire_free_gpu(lock_dir: str | os.PathLike | None = None, poll_s: float = 2.0) -> torch.device:
    """Lock the first GPU no other job of this machine holds (blocks until one is free).

    Jobs of a sweep launched in parallel (joblib) call this with ``trainer.device=exclusive``;
    the lock (an ``flock`` on ``<lock_dir>/lra-gpu-<index>.lock``) lasts until the process exits,
    so two jobs never share a GPU, which would distort each other's timings.
    """
    count = torch.cuda.device_count()
    if count == 0:
        raise RuntimeError("trainer.device=exclusive needs a CUDA GPU, and none is visible")
    lock_dir = Path(lock_dir or os.environ.get("LRA_GPU_LOCK_DIR", tempfile.gettempdir()))
    while True:
        for index in range(count):
            f = open(lock_dir / f"lra-gpu-{index}.lock", "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            _held.append(f)
            atexit.register(f.close)
            return torch.device("cuda", index)
        time.sleep(poll_s)
