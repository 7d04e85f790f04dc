"""One ``lra-train`` job: train (or resume) in the job directory, write the record, never lose it.

:func:`run` is what the ``lra-train`` entry point (:mod:`lra.cli.train`) calls per job, in a single
run and in each job of a ``-m`` sweep. It applies the command-line rule
(:func:`lra.training.config.explicit_beats_presets`), runs :func:`lra.training.finetune.train`,
turns a config error (single runs raise it) or a bug into a record with status ``error`` (so a
sweep goes on and its report is built), and writes ``record.json`` into the job directory and,
with ``results_dir=...``, a copy there; it prints the summary, the learned verdict
(:func:`lra.training.verdict.verdict_line`) and the record's path. Only :class:`lra.training.state.Preempted` passes through.
With ``trainer.lr_sweep_skip=true`` a job of a learning-rate sweep whose cell another rate already
solved writes a ``skipped`` record instead of training (:mod:`lra.training.lr_sweep`).
"""
from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .. import tasks
from ..results import RECORD_FILENAME, make_record, read_record, write_record
from ..schema import ConfigError
from . import lr_sweep
from .config import effective_config, explicit_beats_presets, resolve
from .finetune import train
from .state import Preempted
from .verdict import verdict_line


def _recorded_config(cfg: DictConfig) -> dict[str, Any]:
    """The effective configuration where it can be resolved, else the composed one (a config
    error can make resolving impossible)."""
    try:
        return effective_config(cfg)
    except Exception:  # noqa: BLE001
        return {"composed": OmegaConf.to_container(cfg, resolve=False)}


def _solved_cell(cfg: DictConfig, job_dir: Path, overrides: list[str] | None) -> tuple[dict | None, float | None]:
    """(the record that solved this job's cell, the threshold) under ``trainer.lr_sweep_skip``, else
    (None, None). A config that does not resolve is left for :func:`train` to report."""
    try:
        trainer = resolve(cfg)[2]
    except Exception:  # noqa: BLE001 - train() raises it properly
        return None, None
    threshold = trainer.get("stop_at_val_accuracy")
    if not trainer.get("lr_sweep_skip") or threshold is None or overrides is None:
        return None, None
    return lr_sweep.solved_by(job_dir, overrides, float(threshold)), float(threshold)


def run(cfg: DictConfig, job_dir: Path, raise_config_errors: bool = True,
        cli_overrides: list[str] | None = None) -> dict[str, Any]:
    """Run one job in ``job_dir``: train (or resume), write the record, never lose it.

    ``cli_overrides``: the command line's overrides (``lra-train`` passes Hydra's); an explicit
    ``task.<key>`` among them beats a trainer preset's override (:func:`explicit_beats_presets`),
    and the record keeps them (``config.command_line``).
    A job whose record already says ``ok`` is not run again (a resubmitted finished job).
    Config and data errors raise when ``raise_config_errors`` (single runs) and are recorded
    as status ``error`` otherwise (sweeps go on).
    """
    job_dir.mkdir(parents=True, exist_ok=True)
    existing = read_record(job_dir / RECORD_FILENAME) if (job_dir / RECORD_FILENAME).is_file() else None
    if existing and existing.get("status") == "ok":
        print(f"[lra] {job_dir} already finished; record at {job_dir / RECORD_FILENAME}")
        return existing
    cfg = explicit_beats_presets(cfg, cli_overrides or [])

    def failed(message: str) -> dict[str, Any]:
        return make_record("train", variant=str(cfg.attention.get("name")), task=str(cfg.task.get("name")),
                           status="error", message=message, seed=cfg.get("seed"), config=_recorded_config(cfg))

    solved, threshold = _solved_cell(cfg, job_dir, cli_overrides)
    try:
        if solved is not None:
            record = make_record("train", variant=str(cfg.attention.get("name")), task=str(cfg.task.get("name")),
                                 status="skipped", message=lr_sweep.skip_message(solved, threshold),
                                 seed=cfg.get("seed"), config=_recorded_config(cfg))
        else:
            record = train(cfg, job_dir)
    except Preempted:
        raise
    except (ConfigError, tasks.DataNotFoundError, ValueError, KeyError, TypeError) as err:
        if raise_config_errors:
            raise
        record = failed(f"{type(err).__name__}: {err}")
    except Exception as err:  # a bug: record it so that the sweep goes on
        record = failed(f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=6)}")
    if cli_overrides is not None:
        record["config"]["command_line"] = list(cli_overrides)
    path = write_record(record, job_dir / RECORD_FILENAME)
    if cfg.get("results_dir"):
        write_record(record, f"{cfg.results_dir}/")  # a folder, created if missing
    m = record["metrics"]
    summary = ", ".join(f"{k} {m[k]:.4f}" if isinstance(m.get(k), float) else f"{k} {m[k]}"
                        for k in ("val_accuracy", "accuracy", "steps_per_s", "peak_mem_mb") if k in m)
    print(f"[lra] {record['task']}/{record['variant']}: status {record['status']}"
          f"{' (' + record['message'].splitlines()[0] + ')' if record['message'] else ''}; {summary}")
    if isinstance(m.get("learned_test"), dict):
        print(verdict_line(m["learned_test"]))
    print(f"[lra] result record: {path}")
    return record
