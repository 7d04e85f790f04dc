"""The tasks, one module each, behind one small surface: the Long Range Arena five and Path-X
(one class per example), and the token-level tasks MQAR and text_lm (a label per position).

Each module ``lra.tasks.<name>`` provides ``prepare(cfg) -> TaskData`` where ``cfg`` is the
task's (resolved) Hydra config: it generates or reads the data, caches it as compact tensors
(see :func:`lra.data.cached_tensors`) and returns the splits with the task's facts. A token-level
task's module also sets ``TARGET = "token"`` (:func:`target_of`), ``NEEDS_CAUSAL`` (whether only
causal attention can do it) and ``RECORD_METRICS`` (the names its numbers get in the record).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch

TASKS = ("listops", "text", "retrieval", "image", "pathfinder", "pathx", "mqar", "text_lm")
#: what a task predicts: "class" (one label per example) or "token" (a label per position)
TARGETS = ("class", "token")
#: the label of a position without a target in a token-level task (torch's cross-entropy ignore_index)
IGNORE = -100
_Found = TypeVar("_Found")


class DataNotFoundError(FileNotFoundError):
    """The data a task reads is missing or in the wrong layout (message says how to fix it)."""


@dataclass
class TaskData:
    """Prepared splits of one task.

    ``splits[name] = (inputs, labels)``: inputs are compact integer tensors ``(n, L)``
    (``(n, 2, L)`` for dual-input tasks) holding token ids; labels ``(n,)`` int64 for
    ``target="class"``, or ``(n, L)`` compact integers for ``target="token"``: the token id each
    position must predict, :data:`IGNORE` where it predicts nothing.
    ``pad_id`` marks padding for token tasks; ``None`` where every position is real (pixel
    tasks, where a black pixel is a value, not padding; MQAR).
    """

    name: str
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]]
    vocab_size: int
    num_classes: int
    seq_len: int
    dual: bool = False
    pad_id: int | None = 0
    meta: dict[str, Any] = field(default_factory=dict)
    target: str = "class"

    def describe(self) -> dict[str, Any]:
        """Sizes, class balance (token tasks: labelled positions per example) and length statistics
        (``lra-data info``)."""
        out: dict[str, Any] = {"task": self.name, "seq_len": self.seq_len, "vocab_size": self.vocab_size,
                               "num_classes": self.num_classes, "dual": self.dual, "target": self.target,
                               **self.meta}
        for split, (x, y) in self.splits.items():
            info: dict[str, Any] = {"examples": len(y)}
            if self.target == "token":
                per_example = (y != IGNORE).sum(-1).float()
                info["labelled_positions"] = {"total": int(per_example.sum()),
                                              "mean_per_example": round(float(per_example.mean()), 2) if len(y) else 0}
            else:
                info["class_counts"] = torch.bincount(y, minlength=self.num_classes).tolist()
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


def target_of(name: str) -> str:
    """What task ``name`` predicts: ``"token"`` (its module sets ``TARGET``) or ``"class"``."""
    return getattr(get(name), "TARGET", "class")


def is_image(name: str) -> bool:
    """Whether task ``name``'s tokens are the pixels of a square image, row-major (its module sets
    ``IMAGE``): what ``model.patch`` can cut into patch tokens."""
    return bool(getattr(get(name), "IMAGE", False))


def needs_causal(name: str) -> bool:
    """Whether task ``name`` can only be learned with causal attention (next-token prediction:
    a bidirectional model would see the answer)."""
    return bool(getattr(get(name), "NEEDS_CAUSAL", False))


def prepare(cfg) -> TaskData:
    """Prepare (generate or read, then cache) the data of the task ``cfg.name``."""
    return get(cfg.name).prepare(cfg)
