"""What a training loop keeps across an interruption, and how it ends.

* RNG state (:func:`rng_state`, :func:`set_rng_state`): the CPU generator and, on CUDA, the
  device's; a resumed run draws the same dropout masks as an uninterrupted one.
* Checkpoints: :func:`save_checkpoint` writes one file atomically (:func:`lra.io.atomic_write`,
  a unique temporary name beside it); :class:`LoopCheckpoint` is the file both loops
  (:mod:`lra.training.finetune`, :mod:`lra.training.pretrain`) keep -- model, optimizer,
  schedule and RNG state plus the loop's own entries -- saved and restored in one place.
* The best validation's weights (:class:`BestWeights`): a CPU copy kept inside the loop's one
  checkpoint, so ``trainer.test_checkpoint=best_val`` needs no second checkpoint per evaluation.
* Preemption: :class:`PreemptionSignals` turns SIGTERM / SIGUSR1 / SIGUSR2 into a flag the loop
  checks after each step; the loop then checkpoints and :meth:`~PreemptionSignals.hand_over`
  raises :class:`Preempted` (exit status 143, :mod:`lra.cli.app`).
* How a loop ended: :func:`loop_failure` (``oom`` or ``error`` for an exception) and
  :func:`trained_and_evaluated` (a run with no step or no finite accuracy is no result).
"""
from __future__ import annotations

import math
import signal
import threading
import traceback
from pathlib import Path
from typing import Any, Iterable

import torch

from ..io import atomic_write
from ..timing import is_oom


# ----------------------------------------------------------------------------- RNG state and checkpoints

def rng_state(device: torch.device) -> dict:
    """The random state a step draws from: the CPU generator's, and the CUDA device's on CUDA."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore a state :func:`rng_state` took."""
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_checkpoint(path: Path, **state) -> None:
    """``torch.save(state)`` to ``path``, atomically: a reader (or a resumed job) sees the previous
    checkpoint or this one, never a partial file."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


class LoopCheckpoint:
    """The checkpoint file of a training loop at ``path``: the ``model``, ``optimizer``,
    ``scheduler`` and RNG state (``rng``) of ``device``, plus the loop's own entries (step,
    history, ...). :meth:`save` writes them; :meth:`restore` loads them back into the same objects."""

    def __init__(self, path: Path, model: torch.nn.Module, optimizer, scheduler, device: torch.device):
        self.path, self.model, self.optimizer, self.scheduler, self.device = path, model, optimizer, scheduler, device

    def exists(self) -> bool:
        return self.path.is_file()

    def save(self, **entries: Any) -> None:
        save_checkpoint(self.path, model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
                        scheduler=self.scheduler.state_dict(), rng=rng_state(self.device), **entries)

    def restore(self, keys: Iterable[str]) -> dict[str, Any]:
        """Load the model, optimizer, schedule and RNG state saved at :attr:`path`; returns the loop's
        entries ``keys`` (None for an entry the file does not hold: a checkpoint of an earlier version)."""
        saved = torch.load(self.path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        set_rng_state(saved["rng"], self.device)
        return {k: saved.get(k) for k in keys}


class BestWeights:
    """The weights of the best validation so far, kept as a CPU copy of the model's state (no second
    checkpoint file per evaluation): :meth:`update` after each validation, :meth:`state` into the
    loop's one checkpoint and back (``BestWeights(**saved)``), :meth:`load` into a model to test them.
    The first of equal accuracies stays the best. Memory: one copy of the parameters and buffers
    in host memory; a device-to-host copy only when a validation beats the best."""

    def __init__(self, step: int | None = None, accuracy: float | None = None, weights: dict | None = None):
        self.step, self.accuracy, self.weights = step, accuracy, weights

    def update(self, step: int, accuracy: float, model: torch.nn.Module) -> bool:
        """Keep ``model``'s weights if ``accuracy`` beats the best so far; whether it did."""
        if self.accuracy is not None and not accuracy > self.accuracy:
            return False
        self.step, self.accuracy = int(step), float(accuracy)
        self.weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        return True

    def state(self) -> dict[str, Any]:
        return {"step": self.step, "accuracy": self.accuracy, "weights": self.weights}

    def load(self, model: torch.nn.Module) -> None:
        """Put the best weights into ``model`` (on its device)."""
        if self.weights is None:
            raise RuntimeError("no validation has run: there are no best-validation weights")
        model.load_state_dict(self.weights)


# ----------------------------------------------------------------------------- preemption

class Preempted(Exception):
    """SIGTERM/SIGUSR1 arrived: checkpoint written, the job can be resubmitted."""


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class PreemptionSignals:
    """SIGTERM / SIGUSR1 / SIGUSR2 (SLURM preemption, submitit's timeout signal) during a training
    loop: installed on construction (main thread only), they only set :attr:`received`; the loop
    finishes its step, writes a checkpoint, then calls :meth:`hand_over`. :meth:`restore` puts the
    previous handlers back (the loop's ``finally``)."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)

    def __init__(self):
        self.received: int | None = None
        self.previous = {s: signal.signal(s, self._on_signal) for s in self.SIGNALS if _main_thread()}

    def _on_signal(self, signum, _frame) -> None:
        self.received = signum

    def hand_over(self, where: str) -> None:
        """Call the previous handler (e.g. submitit: requeue the job, which resumes from the
        checkpoint), then raise :class:`Preempted` saying ``where``."""
        previous = self.previous.get(self.received)
        if callable(previous):
            previous(self.received, None)
        raise Preempted(f"signal {self.received} {where}")

    def restore(self) -> None:
        for s, h in self.previous.items():
            signal.signal(s, h)


# ----------------------------------------------------------------------------- how a loop ended

def loop_failure(err: RuntimeError, where: str) -> tuple[str, str]:
    """The record's ``(status, message)`` for an error that ended a training loop ``where``
    (e.g. "step 12"): ``oom`` (:func:`lra.timing.is_oom`) or ``error`` with a short traceback."""
    if is_oom(err):
        return "oom", f"out of memory at {where}: {str(err).splitlines()[0]}"
    return "error", f"{type(err).__name__} at {where}: {err}\n{traceback.format_exc(limit=4)}"


def trained_and_evaluated(metrics: dict[str, Any]) -> tuple[str, str | None]:
    """``("ok", None)`` if the run trained (steps > 0) and evaluated (finite accuracies), else
    ``("error", why)``: a run that did neither is not a result."""
    if not metrics.get("steps"):
        return "error", "did not train: 0 optimizer steps ran"
    bad = [k for k in ("val_accuracy", "accuracy") if not isinstance(metrics.get(k), float)
           or not math.isfinite(metrics[k])]
    if bad:
        return "error", f"did not evaluate: {', '.join(f'{k} = {metrics.get(k)}' for k in bad)}"
    return "ok", None
