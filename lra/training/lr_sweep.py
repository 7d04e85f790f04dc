"""A learning-rate sweep that stops per cell: once one rate of a cell reached its target, the cell's
remaining rates are not run (``trainer.lr_sweep_skip=true``).

Zoology (Arora et al. 2023) trains each cell of its grid at a few learning rates and keeps the best;
``experiment=mqar`` does the same with 3 rates and stops each run once its validation accuracy
reaches ``trainer.stop_at_val_accuracy`` (0.99). A rate that reached it cannot be beaten by more than
the last percent, so once one has, the others of that cell are skipped: their job writes a record
with status ``skipped`` naming the run that reached the target, and trains nothing.

A cell is a set of jobs of one ``-m`` sweep directory (the parent of the job directories) whose
command-line overrides (Hydra's job overrides; ``config.command_line`` of their records) differ only
in ``trainer.lr``. Hydra's basic launcher runs the jobs one after another with the last swept key
varying fastest, so a sweep lists ``trainer.lr`` last, its likeliest rate first. Jobs that run at
the same time (a parallel launcher) skip only what finished before they started. Rerunning the
sweep directory checks again: a skipped job whose solved sibling is gone runs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from ..results import RECORD_FILENAME, read_record

LR_KEY = "trainer.lr"


def cell_of(overrides: Iterable[str]) -> tuple[str, ...]:
    """The overrides that name a job's cell: all but ``trainer.lr=...``, sorted."""
    return tuple(sorted(o for o in overrides if o.split("=", 1)[0].lstrip("+~") != LR_KEY))


def solved_by(job_dir: Path, overrides: list[str], threshold: float) -> dict[str, Any] | None:
    """The record of a finished (``ok``) job beside ``job_dir`` in the same cell whose best validation
    accuracy reached ``threshold``, or None. Reads the sibling directories' ``record.json``; O(jobs)."""
    cell = cell_of(overrides)
    for path in sorted(Path(job_dir).parent.glob(f"*/{RECORD_FILENAME}")):
        if path.parent.resolve() == Path(job_dir).resolve():
            continue
        record = read_record(path)
        if not record or record.get("status") != "ok":
            continue
        line = (record.get("config") or {}).get("command_line")
        best = (record.get("metrics") or {}).get("best_val_accuracy")
        if line is not None and cell_of(line) == cell and isinstance(best, (int, float)) and best >= threshold:
            return record
    return None


def skip_message(record: dict[str, Any], threshold: float) -> str:
    """Why a job is skipped, naming the run that solved its cell."""
    lr = ((record.get("config") or {}).get("trainer") or {}).get("lr")
    return (f"not run: the same cell at trainer.lr={lr} reached trainer.stop_at_val_accuracy={threshold} "
            f"(best validation accuracy {record['metrics']['best_val_accuracy']:.4f}; {record.get('_path')}); "
            "trainer.lr_sweep_skip=true skips the cell's other rates")
