"""The wrapper both Hydra apps (``lra-train``, ``lra-bench``) run in, and the exit statuses.

A job function ``job(cfg, job_dir, multirun, overrides) -> int`` does the work and returns the
exit status of a single run (:data:`EXIT_OK` or :data:`EXIT_FAILED`). The wrapper turns what
can go wrong around it into the documented statuses:

* a config or data error found before any work (:class:`lra.schema.ConfigError` and the other
  exception types in :data:`CONFIG_ERRORS`), or Hydra rejecting the command line itself (an
  unknown group option or key, bad override syntax): one ``error: ...`` line, status 2;
* :class:`Preempted` (a checkpoint was written): status 143, and how to resume;
* inside a ``-m`` sweep a job never fails the sweep: each job's records say how it ended, and
  the exit status is 0.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig

from .. import conf_dir, register_resolvers, tasks
from ..schema import ConfigError
from ..training.state import Preempted

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_PREEMPTED = 0, 1, 2, 143
#: errors that mean "bad config or data, found before any work": exit status 2
CONFIG_ERRORS = (ConfigError, tasks.DataNotFoundError, ValueError, KeyError, TypeError)

Job = Callable[[DictConfig, Path, bool, list], int]


def hydra_app(config_name: str, job: Job, config_errors: tuple[type[BaseException], ...] = CONFIG_ERRORS) -> int:
    """Run ``job`` as the Hydra app of ``conf/<config_name>.yaml``; exits with its status.
    ``config_errors``: the exception types that mean a config error (status 2)."""
    import hydra  # noqa: PLC0415 - the Hydra runtime only where an app starts
    from hydra.core.hydra_config import HydraConfig  # noqa: PLC0415
    from hydra.types import RunMode  # noqa: PLC0415

    register_resolvers()  # ${lra_visible_gpus:...} in conf/hydra/launcher/*.yaml
    started: list[bool] = []

    @hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name=config_name)
    def main(cfg: DictConfig) -> None:
        started.append(True)
        hc = HydraConfig.get()
        multirun = hc.mode == RunMode.MULTIRUN
        output_dir = Path(hc.runtime.output_dir)
        try:
            code = job(cfg, output_dir, multirun, list(hc.overrides.task))
        except Preempted as err:
            print(f"[lra] preempted: {err}. Run the same job directory again "
                  f"(hydra.run.dir={output_dir}) to resume.", file=sys.stderr)
            sys.exit(EXIT_PREEMPTED)
        except config_errors as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(EXIT_CONFIG)
        if code and not multirun:
            sys.exit(code)

    try:
        main()
    except SystemExit as stop:
        # Hydra prints its own composition errors and exits 1 before the app starts: that is a config error
        if stop.code == 1 and not started:
            raise SystemExit(EXIT_CONFIG) from None
        raise
    return EXIT_OK
