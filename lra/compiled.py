"""``trainer.compile``: the training forward pass compiled with ``torch.compile``, or eager with a reason.

:class:`CompiledModel` wraps the encoder for :class:`lra.training.step.TrainStep`. Mode ``auto`` is
``reduce-overhead`` on CUDA -- inductor kernels replayed as CUDA graphs, which removes the launch
gaps that leave a GPU idle under a small model (the small recipe's 2 layers x 64) -- and
``default`` elsewhere (CPU: inductor's C++ kernels, no graphs). Shapes: with length bucketing
(:mod:`lra.bucketing`) a run sees a few batch lengths (multiples of ``trainer.bucket_multiple``);
torch compiles the first one statically, recompiles once with a dynamic length, and records one
CUDA graph per length. Recompile limits are raised (:func:`raise_compile_limits`) so that no length
silently falls back to eager.

Fallback: a step whose compiled forward or backward raises (an unsupported operation, a backend
failure) is re-run eagerly from the same random state (:meth:`lra.training.step.TrainStep.__call__`), the
model stays eager for the rest of the run, and the reason is printed and recorded
(:meth:`CompiledModel.facts` -> the record's ``case.compile``). Graph breaks are no failure (the
pieces still compile); their count and first reasons are recorded, and so are CUDA-graph skips
(inductor runs such a graph without CUDA graphs and logs why).
"""
from __future__ import annotations

import logging
from typing import Any

import torch

MODES = ("auto", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def resolve_mode(mode: str, device: torch.device) -> str:
    """``auto`` -> ``reduce-overhead`` (CUDA graphs) on CUDA, ``default`` elsewhere; others as given."""
    if mode not in MODES:
        raise ValueError(f"trainer.compile_mode={mode!r} is not one of {', '.join(MODES)}")
    if mode == "auto":
        return "reduce-overhead" if device.type == "cuda" else "default"
    return mode


def raise_compile_limits() -> None:
    """Many shapes of one compiled function (a length per bucket, flex_attention per N) would hit
    dynamo's default recompile limit (8) and silently fall back to eager; allow more."""
    try:
        import torch._dynamo.config as dcfg  # noqa: PLC0415
    except Exception:  # noqa: BLE001
        return
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dcfg, name) and getattr(dcfg, name) < 256:
            setattr(dcfg, name, 256)
    for name in ("accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(dcfg, name) and getattr(dcfg, name) < 2048:
            setattr(dcfg, name, 2048)


class _Collect(logging.Handler):
    """Keeps the first lines of a logger's messages (inductor's CUDA-graph skip reasons), at most ``keep``."""

    def __init__(self, keep: int = 100):
        super().__init__(logging.WARNING)
        self.keep, self.messages = keep, []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.messages) < self.keep:
            self.messages.append(record.getMessage().splitlines()[0][:300])


_SKIP_LOG = _Collect()
logging.getLogger("torch._inductor.cudagraph_utils.__cudagraphs").addHandler(_SKIP_LOG)


def _counters():
    try:
        from torch._dynamo.utils import counters  # noqa: PLC0415
    except Exception:  # noqa: BLE001
        return None
    return counters


class CompiledModel:
    """``model`` compiled (``torch.compile(model, mode=..., backend=...)``), callable as the model.

    ``status``: ``compiled`` until a compiled call fails, then ``fallback`` (eager from then on,
    ``reason`` says why). ``cudagraphs``: whether the mode replays CUDA graphs (then every call
    first marks a new step: outputs of the previous replay may be overwritten).
    """

    def __init__(self, model: torch.nn.Module, mode: str = "auto", backend: str = "inductor",
                 device: torch.device | str = "cpu", log=print):
        self.model, self.log = model, log
        self.device = torch.device(device)
        self.mode, self.backend = resolve_mode(mode, self.device), backend
        self.cudagraphs = self.device.type == "cuda" and backend == "inductor" and self.mode in (
            "reduce-overhead", "max-autotune")
        raise_compile_limits()
        counters = _counters()
        self._breaks_before = sum(counters["graph_break"].values()) if counters is not None else 0
        self._skips_before = counters["inductor"]["cudagraph_skips"] if counters is not None else 0
        self._skip_messages_before = len(_SKIP_LOG.messages)
        self.fn = torch.compile(model, mode=None if self.mode == "default" else self.mode, backend=backend)
        self.status, self.reason = "compiled", None

    @property
    def active(self) -> bool:
        return self.status == "compiled"

    def __call__(self, *args, **kwargs):
        if not self.active:
            return self.model(*args, **kwargs)
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        return self.fn(*args, **kwargs)

    def fall_back(self, err: BaseException) -> None:
        """Use the eager model from now on; print and keep why."""
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        self.status, self.reason = "fallback", f"{type(err).__name__}: {' '.join(lines[:3])}"[:400]
        self.log(f"[lra] trainer.compile: the compiled step failed, training eagerly from here on ({self.reason})")

    def facts(self) -> dict[str, Any]:
        """What the record says about compilation (``case.compile``)."""
        counters = _counters()
        out: dict[str, Any] = {"status": self.status, "mode": self.mode, "backend": self.backend,
                               "cudagraphs": self.cudagraphs and self.active}
        if self.reason:
            out["reason"] = self.reason
        if counters is not None:
            breaks = counters["graph_break"]
            out["graph_breaks"] = sum(breaks.values()) - self._breaks_before
            if out["graph_breaks"]:
                out["graph_break_reasons"] = [str(k).splitlines()[0][:200] for k, _ in breaks.most_common(3)]
            skips = counters["inductor"]["cudagraph_skips"] - self._skips_before
            if skips:
                out["cudagraph_skips"] = skips
                out["cudagraph_skip_reasons"] = _SKIP_LOG.messages[self._skip_messages_before:][:3]
        return out

