"""``lra-train``: train and evaluate the common encoder on one task with one attention variant.

Exit status of a single run: 0 = status ok; 1 = the run ended with status nan, oom or error;
2 = a config or data error, found before any work (also Hydra's own composition errors);
143 = preempted (checkpoint written; run it again to resume). A ``-m`` sweep exits 0 whatever
its jobs' statuses: each job's record says how it ended. The job itself: :func:`lra.training.job.run`.
"""
from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig

from ..training.job import run
from .app import EXIT_FAILED, EXIT_OK, hydra_app


def job(cfg: DictConfig, job_dir: Path, multirun: bool, overrides: list[str]) -> int:
    record = run(cfg, job_dir, raise_config_errors=not multirun, cli_overrides=overrides)
    if record["status"] != "ok" and not multirun:
        why = (record.get("message") or "").splitlines()[:1]
        print(f"error: the run ended with status {record['status']}{': ' + why[0] if why else ''}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def main() -> int:
    return hydra_app("train", job)


if __name__ == "__main__":
    sys.exit(main())
