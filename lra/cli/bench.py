"""``lra-bench``: speed, memory, approximation error and smoothness of attention variants.

Exit status: 0; 1 when a case failed (status ``error`` or ``nan``; ``oom`` is a measured
outcome); 2 on a config error. A ``-m`` sweep exits 0: each job's records say what failed.
The grid itself: :func:`lra.bench.run`.
"""
from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig

from ..bench import exit_code, run
from ..schema import ConfigError
from .app import EXIT_OK, hydra_app


def job(cfg: DictConfig, job_dir: Path, multirun: bool, overrides: list[str]) -> int:
    records = run(cfg, job_dir, raise_config_errors=not multirun)
    code = exit_code(records)
    if code and not multirun:  # a sweep goes on; each job's records say what failed
        failed = sum(r["status"] in ("error", "nan") for r in records)
        print(f"error: {failed} of {len(records)} cases failed (status error or nan); see their records",
              file=sys.stderr)
        return code
    return EXIT_OK


def main() -> int:
    return hydra_app("bench", job, config_errors=(ConfigError,))


if __name__ == "__main__":
    sys.exit(main())
