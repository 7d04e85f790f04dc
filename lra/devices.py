"""Device choice for a job: an exclusive GPU lock for one-job-per-GPU sweeps, a slot among
``k`` jobs that share a GPU (packed accuracy sweeps), and the CPU threads a job may use.

GPU locks (``flock`` files in ``$LRA_GPU_LOCK_DIR``, default the temp dir), held for the life of
the process: :func:`acquire_free_gpu` (``trainer.device=exclusive``) takes GPU ``i``'s lock file
``lra-gpu-<i>.lock`` exclusively; :func:`acquire_gpu_slot` (``trainer.device=packed``) takes one
of ``k`` slot files ``lra-gpu-<i>-slot-<j>.lock`` exclusively *and* the GPU's lock file shared.
So at most ``k`` packed jobs share a GPU, and a timing job never shares one: it waits until no
packed job holds the GPU, and packed jobs wait while it does.

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
import contextlib
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
    with contextlib.suppress(RuntimeError):  # only possible before the first parallel work of the process
        torch.set_num_interop_threads(n)
    return n


def _lock_dir(lock_dir) -> Path:
    return Path(lock_dir or os.environ.get("LRA_GPU_LOCK_DIR", tempfile.gettempdir()))


def _try_lock(path: Path, mode: int):
    """The open file with ``flock(mode | LOCK_NB)`` held, or None if another process holds it."""
    f = open(path, "a+")
    try:
        fcntl.flock(f, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def _hold(*files) -> None:
    for f in files:
        _held.append(f)
        atexit.register(f.close)


def _gpu_count(count: int | None, what: str) -> int:
    count = torch.cuda.device_count() if count is None else count
    if count == 0:
        raise RuntimeError(f"trainer.device={what} needs a CUDA GPU, and none is visible")
    return count


def acquire_free_gpu(lock_dir: str | os.PathLike | None = None, poll_s: float = 2.0,
                     count: int | None = None) -> torch.device:
    """Lock the first GPU no other job of this machine holds (blocks until one is free).

    Jobs of a sweep launched in parallel (joblib) call this with ``trainer.device=exclusive``;
    the lock (an exclusive ``flock`` on ``<lock_dir>/lra-gpu-<index>.lock``) lasts until the
    process exits, so two jobs never share a GPU, which would distort each other's timings; nor
    does a packed job (:func:`acquire_gpu_slot`) run beside it. ``count``: GPUs to consider
    (default: the visible ones).
    """
    count = _gpu_count(count, "exclusive")
    lock_dir = _lock_dir(lock_dir)
    while True:
        for index in range(count):
            f = _try_lock(lock_dir / f"lra-gpu-{index}.lock", fcntl.LOCK_EX)
            if f is not None:
                _hold(f)
                return torch.device("cuda", index)
        time.sleep(poll_s)


def acquire_gpu_slot(jobs_per_gpu: int, lock_dir: str | os.PathLike | None = None, poll_s: float = 2.0,
                     count: int | None = None) -> torch.device:
    """Take one of ``jobs_per_gpu`` slots on a GPU (blocks until one is free); ``trainer.device=packed``.

    Slots are tried slot-major (slot 0 of every GPU, then slot 1, ...), which spreads jobs over
    the GPUs. A slot counts only with the GPU's lock file held shared, so no packed job starts on
    a GPU an exclusive (timing) job holds, and an exclusive job waits for every packed one to end.
    Held until the process exits.
    """
    if jobs_per_gpu < 1:
        raise ValueError(f"trainer.jobs_per_gpu={jobs_per_gpu} must be >= 1")
    count = _gpu_count(count, "packed")
    lock_dir = _lock_dir(lock_dir)
    while True:
        for slot in range(jobs_per_gpu):
            for index in range(count):
                s = _try_lock(lock_dir / f"lra-gpu-{index}-slot-{slot}.lock", fcntl.LOCK_EX)
                if s is None:
                    continue
                g = _try_lock(lock_dir / f"lra-gpu-{index}.lock", fcntl.LOCK_SH)
                if g is None:  # an exclusive job holds this GPU
                    s.close()
                    continue
                _hold(s, g)
                return torch.device("cuda", index)
        time.sleep(poll_s)


def share_gpu(jobs_per_gpu: int, gpus: int) -> int:
    """A packed job's count of jobs running at once on this machine: at most ``jobs_per_gpu`` per
    GPU, however many the launcher started (the others wait for a slot). Sets
    ``LRA_CONCURRENT_JOBS`` for this process (thread share and the record's ``host``)."""
    jobs = min(concurrent_jobs(), jobs_per_gpu * gpus) if CONCURRENT_JOBS_ENV in os.environ \
        else jobs_per_gpu * gpus
    os.environ[CONCURRENT_JOBS_ENV] = str(max(1, jobs))
    return jobs
