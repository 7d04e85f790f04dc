"""Device choice for a job, including an exclusive GPU lock for one-job-per-GPU sweeps."""
from __future__ import annotations

import atexit
import fcntl
import os
import tempfile
import time
from pathlib import Path

import torch

_held = []  # open lock files, kept for the life of the process


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
