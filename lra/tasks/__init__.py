"""The Long Range Arena tasks, one module each, behind one small surface.

Each module ``lra.tasks.<name>`` provides ``prepare(cfg) -> TaskData`` where ``cfg`` is the
task's (resolved) Hydra config: it generates or reads the data, caches it as compact tensors
(see :func:`lra.data.cached_tensors`) and returns the splits with the task's facts.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch

TASKS = ("listops", "text", "retrieval", "image", "pathfinder", "pathx")
_Found = TypeVar("_Found")


class DataNotFoundError(FileNotFoundError):
    """The data a task reads is missing or in the wrong layout (message says how to fix it)."""


@dataclass
class TaskData:
    """Prepared splits of one task.

    ``splits[name] = (inputs, labels)``: inputs are compact integer tensors ``(n, L)``
    (``(n, 2, L)`` for dual-input tasks) holding token ids, labels ``(n,)`` int64.
    ``pad_id`` marks padding for token tasks; ``None`` for pixel tasks, where every
    position is real (a black pixel is a value, not padding).
    """

    name: str
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]]
    vocab_size: int
    num_classes: int
    seq_len: int
    dual: bool = False
    pad_id: int | None = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """Sizes, class balance and length statistics (``lra-data info``)."""
        out: dict[str, Any] = {"task": self.name, "seq_len": self.seq_len, "vocab_size": self.vocab_size,
                               "num_classes": self.num_classes, "dual": self.dual, **self.meta}
        for split, (x, y) in self.splits.items():
            info: dict[str, Any] = {"examples": len(y),
                                    "class_counts": torch.bincount(y, minlength=self.num_classes).tolist()}
            if self.pad_id is not None and len(y):
                lengths = (x != self.pad_id).sum(-1).float().flatten()
                info["length"] = {"min": int(lengths.min()), "mean": round(float(lengths.mean()), 1),
                                  "max": int(lengths.max())}
            out[split] = info
        return out


def find_or_download(cfg, data_dir: Path, find: Callable[[Path], _Found | None],
                     download: Callable[[Path], None], missing_message: Callable[[Path], str]) -> _Found:
    """What ``find(data_dir)`` finds of a task's data; if nothing and ``task.download=true``, after
    ``download(data_dir)``. Raises :class:`DataNotFoundError` with ``missing_message(data_dir)`` when
    the data is still not there."""
    found = find(data_dir)
    if found is None and cfg.get("download"):
        download(data_dir)
        found = find(data_dir)
    if found is None:
        raise DataNotFoundError(missing_message(data_dir))
    return found


def get(name: str):
    """The task module ``lra.tasks.<name>``; unknown names fail with the list of tasks."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}. Choose one with task=<name>.")
    return importlib.import_module(f"{__name__}.{name}")


def prepare(cfg) -> TaskData:
    """Prepare (generate or read, then cache) the data of the task ``cfg.name``."""
    return get(cfg.name).prepare(cfg)
