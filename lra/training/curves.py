"""Training curves: a CSV beside the record, always, and TensorBoard or W&B scalars when asked.

:class:`Curves` collects one row per log boundary (every ``trainer.log_every`` optimizer steps and
the last step) and per validation, merged when both fall on one step, with the columns
:data:`COLUMNS` (empty where a value does not exist at that step)::

    step            optimizer steps done
    train_loss      mean training loss over the window since the last log boundary (examples weighted)
    train_accuracy  training accuracy over that window
    val_loss        validation loss (rows of a validation; trainer.eval_batches caps it during training)
    val_accuracy    validation accuracy (same rows)
    lr              learning rate of the next optimizer step (the schedule's value, first param group)
    tokens_per_s    positions computed per second over the window (padding included, as metrics.tokens_per_s)
    distill_loss    attention distillation loss, mean over layers and the steps since the last validation
                    (attention.distill > 0 only)

The rows live in memory and in the run's checkpoint; :meth:`Curves.write` rewrites
``curves.csv`` in the job directory atomically (:func:`lra.io.write_text`) at each validation,
each checkpoint and the end, so a killed run's CSV matches its checkpoint and a resumed run
continues it without gaps or repeated steps. The record names the file (``case.curves``).

Loggers (``logger=none|tensorboard|wandb``, :func:`make_logger`): ``tensorboard`` writes event
files to ``<job dir>/tensorboard/`` with :class:`torch.utils.tensorboard.SummaryWriter` (tags
``train/loss``, ``val/accuracy``, ...; a resumed run purges the events after its checkpoint's
step); ``wandb`` logs the same scalars to a W&B run in the job directory (``WANDB_MODE=offline``
works without a network). Both are optional extras; :func:`logger_problems` says which extra a
missing package needs, before any work. Cost: one CSV write per validation or checkpoint
(O(rows)), one scalar per column per row for the loggers.
"""
from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import math
from pathlib import Path
from typing import Any

from ..io import write_text

#: the CSV's file name in the job directory (the record's ``case.curves``)
CURVES_FILE = "curves.csv"
#: the CSV's columns, in order
COLUMNS = ("step", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "tokens_per_s", "distill_loss")
#: ``logger=`` choices
LOGGERS = ("none", "tensorboard", "wandb")
#: the Python package each logger needs and the extra that installs it
LOGGER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}
#: the TensorBoard tag of each column
TAGS = {"train_loss": "train/loss", "train_accuracy": "train/accuracy", "val_loss": "val/loss",
        "val_accuracy": "val/accuracy", "lr": "train/lr", "tokens_per_s": "train/tokens_per_s",
        "distill_loss": "train/distill_loss"}


def logger_problems(logger: Any) -> list[str]:
    """Bad ``logger`` settings, as :func:`lra.schema.problems` words them: an unknown name (with
    the choices), or a logger whose package is not installed (with the extra that installs it)."""
    if logger not in LOGGERS:
        return [f"logger={logger!r} is invalid: it must be one of {', '.join(LOGGERS)}; fix: logger=tensorboard"]
    if logger == "none":
        return []
    package, extra = LOGGER_PACKAGES[logger]
    if importlib.util.find_spec(package) is None:
        return [f"logger={logger} needs the {package} package, which is not installed; fix: "
                f"pip install \"lra-bench[{extra}]\" (or logger=none: the curves still go to {CURVES_FILE})"]
    return []


class NoLogger:
    """``logger=none``: the CSV only."""

    def log(self, row: dict[str, Any]) -> None:
        """Nothing beyond the CSV, which :class:`Curves` writes."""

    def close(self) -> None:
        """Nothing to close."""


class TensorBoardLogger:
    """Scalars to ``<job_dir>/tensorboard`` (:class:`torch.utils.tensorboard.SummaryWriter`); events at
    steps after ``resume_step`` (the checkpoint's) left by an interrupted run are purged (TensorBoard's ``purge_step``)."""

    def __init__(self, job_dir: Path, resume_step: int = 0):
        # optional dependency (extra "tensorboard"): imported only when logger=tensorboard
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415

        self.dir = Path(job_dir) / "tensorboard"
        # a resumed run re-logs the steps after its checkpoint's: hide what the interrupted run wrote there
        self.writer = SummaryWriter(log_dir=str(self.dir), purge_step=resume_step + 1 if resume_step else None)

    def log(self, row: dict[str, Any]) -> None:
        for key, tag in TAGS.items():
            if row.get(key) is not None:
                self.writer.add_scalar(tag, row[key], global_step=row["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    """Scalars to a W&B run whose files live in the job directory (``config``: the record's config)."""

    def __init__(self, job_dir: Path, name: str, config: dict[str, Any]):
        # optional dependency (extra "wandb"): imported only when logger=wandb
        import wandb  # noqa: PLC0415

        run_id = hashlib.sha1(str(Path(job_dir).resolve()).encode()).hexdigest()[:16]  # one W&B run per job dir
        self.run = wandb.init(dir=str(job_dir), name=name, config=config, resume="allow", id=run_id)

    def log(self, row: dict[str, Any]) -> None:
        self.run.log({TAGS[k]: v for k, v in row.items() if k in TAGS and v is not None}, step=row["step"])

    def close(self) -> None:
        self.run.finish()


def make_logger(logger: str, job_dir: Path, resume_step: int = 0, name: str = "", config: dict | None = None):
    """The logger of ``logger=...`` (checked before any work by :func:`logger_problems`)."""
    if logger == "tensorboard":
        return TensorBoardLogger(job_dir, resume_step)
    if logger == "wandb":
        return WandbLogger(job_dir, name, config or {})
    return NoLogger()


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "" if value is None else str(value)
    return repr(value) if isinstance(value, float) else str(value)


class Curves:
    """The run's curve rows (see the module docstring), written to ``job_dir/curves.csv`` and handed
    to ``logger`` as they complete. ``rows``: those restored from a checkpoint."""

    def __init__(self, job_dir: Path, logger=None, rows: list[dict[str, Any]] | None = None):
        self.path = Path(job_dir) / CURVES_FILE
        self.logger = logger or NoLogger()
        self.rows: list[dict[str, Any]] = [dict(r) for r in rows or []]

    def add(self, step: int, **values: Any) -> None:
        """Set ``values`` (keys of :data:`COLUMNS`) at ``step``: a new row, or the same step's row
        completed (a validation on a log boundary). The logger gets the values added."""
        unknown = set(values) - set(COLUMNS)
        if unknown:
            raise KeyError(f"unknown curve column(s) {sorted(unknown)}; columns: {COLUMNS}")
        values = {k: v for k, v in values.items() if v is not None}
        if self.rows and self.rows[-1]["step"] == step:
            self.rows[-1].update(values)
        else:
            self.rows.append({"step": int(step), **values})
        self.logger.log({"step": int(step), **values})

    def csv_text(self) -> str:
        """The CSV: a header of :data:`COLUMNS`, then one line per row (empty cells where no value)."""
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(COLUMNS)
        for row in self.rows:
            w.writerow([_cell(row.get(c)) for c in COLUMNS])
        return out.getvalue()

    def write(self) -> Path:
        """Rewrite ``curves.csv`` (atomically) with every row so far."""
        return write_text(self.path, self.csv_text())

    def close(self) -> None:
        self.logger.close()
