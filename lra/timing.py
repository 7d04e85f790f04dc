"""Timing, memory and FLOP helpers for ``lra-bench`` (and ``lra-train``'s OOM check).

:func:`time_fn` times one function (warm-up, synchronize, timed calls, synchronize) with a clock
per device (:class:`CudaEventClock` on CUDA, :class:`PerfCounterClock` elsewhere) and returns a
:class:`Timing` (median, percentiles, every per-call time); :func:`time_interleaved` times
several functions in rotated rounds. :class:`PeakMemory` measures a block's peak memory: CUDA
allocator peaks on CUDA, the process's peak resident set (``VmHWM``) over its baseline on CPU
(:func:`rss_kib`, :func:`reset_peak_rss`, :data:`MEMORY_METHODS`). :func:`attention_flops` is
the analytic FLOP count of exact attention (:data:`FLOP_CONVENTIONS`, :func:`exact_kernel`,
causal or not), :func:`count_flops` asks ``FlopCounterMode``, :func:`peak_bf16_tflops` gives a
device's dense BF16 peak and :func:`gemm_gflops` measures the machine's own GEMM rate (the CPU's
peak). :func:`is_oom` and :func:`free_memory` handle out-of-memory.

The rules these implement -- warm-up, synchronisation, CUDA events vs ``perf_counter``,
``min_time_s``, medians and spread, peak memory, FLOP conventions, TFLOP/s fractions -- are
written once in ``docs/numerics.md``.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

# Dense BF16 tensor-core peak (TFLOP/s, no sparsity) by device name; vendor data sheets.
# Matched in order against torch.cuda.get_device_name() (case-insensitive substrings).
PEAK_BF16_TFLOPS: tuple[tuple[tuple[str, ...], float], ...] = (
    (("h200",), 989.4),           # H200 SXM (same compute die as H100 SXM)
    (("h100", "pcie"), 756.0),    # H100 PCIe
    (("h100", "nvl"), None),      # H100 NVL: not tabulated
    (("h100",), 989.4),           # H100 SXM ("NVIDIA H100 80GB HBM3")
    (("a100",), 312.0),           # A100 SXM / PCIe
)


def peak_bf16_tflops(device_name: str | None) -> float | None:
    """Dense BF16 peak of a device by its name, or None if not tabulated (CPUs included)."""
    name = (device_name or "").lower()
    for keys, peak in PEAK_BF16_TFLOPS:
        if all(k in name for k in keys):
            return peak
    return None


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile ``q`` in [0, 100] of an ascending list."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@dataclass
class Timing:
    """Result of :func:`time_fn`; times in milliseconds. ``repeats``: timed calls made;
    ``iqr_rel``: the interquartile range over the median, (p75 - p25) / median."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    times_ms: list[float] = field(default_factory=list)
    timer: str = "perf_counter"
    warmup: int = 0
    repeats: int = 0
    p25_ms: float = 0.0
    p75_ms: float = 0.0

    @property
    def iqr_rel(self) -> float | None:
        return (self.p75_ms - self.p25_ms) / self.median_ms if self.median_ms > 0 else None

    @property
    def total_s(self) -> float:
        return sum(self.times_ms) / 1e3


def _noop() -> None:
    return None


class PerfCounterClock:
    """Host wall clock; ``sync`` runs before reading it so that queued device work is included."""

    name = "perf_counter"
    immediate = True  # each elapsed time can be read right after the call

    def __init__(self, sync: Callable[[], Any] | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        self.sync = sync or _noop
        self.clock = clock

    def start(self) -> float:
        self.sync()
        return self.clock()

    def stop(self) -> float:
        self.sync()
        return self.clock()

    @staticmethod
    def elapsed_ms(start: float, stop: float) -> float:
        return (stop - start) * 1e3


class CudaEventClock:
    """CUDA events on the current stream; read after the final synchronize."""

    name = "cuda_event"
    immediate = False  # elapsed times are read after the final synchronize

    def start(self) -> torch.cuda.Event:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    stop = start

    @staticmethod
    def elapsed_ms(start: torch.cuda.Event, stop: torch.cuda.Event) -> float:
        return float(start.elapsed_time(stop))


def device_sync(device: torch.device | str) -> Callable[[], None]:
    """A callable that waits for all queued work on ``device`` (no-op on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return _noop


def default_clock(device: torch.device | str):
    """CUDA events on CUDA, ``time.perf_counter`` elsewhere."""
    device = torch.device(device)
    return CudaEventClock() if device.type == "cuda" else PerfCounterClock(device_sync(device))


MAX_REPEATS = 1000


def time_fn(fn: Callable[[], Any], *, warmup: int = 3, repeats: int = 10,
            sync: Callable[[], Any] | None = None, clock=None,
            device: torch.device | str = "cpu", min_time_s: float = 0.0,
            max_repeats: int = MAX_REPEATS) -> Timing:
    """Warm ``fn`` up, synchronize, time at least ``repeats`` calls; per-call times in ms.

    With a clock that reads on the host as it goes (``clock.immediate``: ``perf_counter``),
    timing goes on until the timed calls add up to ``min_time_s`` seconds too, up to
    ``max_repeats`` calls; CUDA events keep exactly ``repeats`` calls (``min_time_s`` would
    need a sync per call). ``sync`` and ``clock`` default to the device's
    (:func:`device_sync`, :func:`default_clock`); tests inject fakes to check the order of calls.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    sync = sync or device_sync(device)
    clock = clock or default_clock(device)
    for _ in range(max(0, warmup)):
        fn()
    sync()
    marks = []
    timed_ms, goal_ms = 0.0, (min_time_s * 1e3 if getattr(clock, "immediate", False) else 0.0)
    while len(marks) < repeats or (timed_ms < goal_ms and len(marks) < max(repeats, max_repeats)):
        start = clock.start()
        fn()
        stop = clock.stop()
        marks.append((start, stop))
        if goal_ms:
            timed_ms += clock.elapsed_ms(start, stop)
    sync()
    return summarize([clock.elapsed_ms(a, b) for a, b in marks],
                     timer=getattr(clock, "name", type(clock).__name__), warmup=warmup)


def summarize(times_ms: list[float], *, timer: str, warmup: int = 0) -> Timing:
    """Median and 10th/25th/75th/90th percentiles of per-call times (ms)."""
    times = [float(t) for t in times_ms]
    ordered = sorted(times)
    return Timing(median_ms=float(statistics.median(times)), p10_ms=float(_percentile(ordered, 10)),
                  p90_ms=float(_percentile(ordered, 90)), times_ms=times, timer=timer, warmup=warmup,
                  repeats=len(times), p25_ms=float(_percentile(ordered, 25)), p75_ms=float(_percentile(ordered, 75)))


def time_interleaved(fns: dict[str, Callable[[], Any]], *, warmup: int = 3, repeats: int = 10,
                     device: torch.device | str = "cpu", min_time_s: float = 0.0,
                     max_repeats: int = MAX_REPEATS) -> dict[str, Timing]:
    """:func:`time_fn` for several functions compared with each other, in interleaved rounds.

    Each function is warmed up ``warmup`` times; then rounds of one call of every function
    (one :func:`time_fn` call, so the same clock and syncs), the order rotated from round to
    round, so that slow drift (clocks, thermals, other jobs on a shared host) falls on all of
    them alike rather than on whichever ran last. At least ``repeats`` rounds; on a host clock
    more, until every function's timed calls add up to ``min_time_s`` (at most ``max_repeats``).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    names = list(fns)
    for name in names:
        for _ in range(max(0, warmup)):
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    timer, immediate = "perf_counter", True
    r = 0
    while r < repeats or (immediate and r < max(repeats, max_repeats)
                          and min(sum(t) for t in times.values()) < min_time_s * 1e3):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t = time_fn(fns[name], warmup=0, repeats=1, device=device)
            times[name] += t.times_ms
            timer = t.timer
        immediate = timer == PerfCounterClock.name
        r += 1
    return {name: summarize(times[name], timer=timer, warmup=warmup) for name in names}


#: ``case.memory_method`` of each way :class:`PeakMemory` measures (docs/numerics.md, "Peak memory")
MEMORY_METHODS = {
    "cuda": "cuda_max_memory_allocated",
    "fresh_process": "rss_hwm_fresh_process",   # CPU: VmHWM - VmRSS at the start, in a process of its own
    "in_process": "rss_hwm_in_process",         # CPU: the same in a process that ran other work before
}
_fresh_process = False


def mark_fresh_process() -> None:
    """Say that this process was started for one case (:mod:`lra.bench.isolation`): its CPU peak
    memory is then ``rss_hwm_fresh_process`` (no heap of earlier cases can hide its use)."""
    global _fresh_process
    _fresh_process = True


def rss_kib(key: str = "VmRSS", pid: int | str = "self") -> int | None:
    """``VmRSS`` (resident set now) or ``VmHWM`` (its peak) of a process in KiB, from
    ``/proc/<pid>/status``; None where there is no such file (not Linux, process gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset this process's peak resident set (``VmHWM``) to its current size (Linux >= 4.0:
    ``5`` written to ``/proc/self/clear_refs``); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Context manager: peak memory of a block in MiB, over what was held when it began.

    On CUDA: PyTorch's allocator peak (``torch.cuda.max_memory_allocated``, tensors only). On CPU:
    the process's peak resident set (``VmHWM``, reset to the current size at the start) minus its
    resident set at the start (``VmRSS``): every page the block touched that was not resident
    before -- tensors, allocator and library buffers, thread stacks -- i.e. the memory the block
    needs on top of an idle process. ``method`` names it (:data:`MEMORY_METHODS`); ``None``
    (with ``peak_mb`` None) where neither is available. ``inputs_mb``: what was held at
    :meth:`mark` (e.g. after creating the inputs), ``extra_mb = peak_mb - inputs_mb``: the working
    memory on top of them. Rules: ``docs/numerics.md``, "Peak memory".
    """

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.base = 0
        self.marked: int | None = None
        self.peak_mb: float | None = None
        self.inputs_mb: float | None = None
        self.extra_mb: float | None = None
        self.method: str | None = None

    def _now(self) -> int | None:
        """Bytes held now (CUDA allocated, or the resident set)."""
        if self.cuda:
            return torch.cuda.memory_allocated(self.device)
        kib = rss_kib("VmRSS")
        return None if kib is None else kib * 1024

    def __enter__(self) -> "PeakMemory":
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.method = MEMORY_METHODS["cuda"]
        elif reset_peak_rss() and rss_kib("VmHWM") is not None:
            self.method = MEMORY_METHODS["fresh_process" if _fresh_process else "in_process"]
        self.base = self._now() or 0
        return self

    def mark(self) -> None:
        if self.method is not None:
            self.marked = self._now()

    def __exit__(self, *exc) -> None:
        if self.method is None or exc[0] is not None:
            return
        if self.cuda:
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = (rss_kib("VmHWM") or 0) * 1024
        self.peak_mb = round((peak - self.base) / 2**20, 2)
        if self.marked is not None:
            self.inputs_mb = round((self.marked - self.base) / 2**20, 2)
            self.extra_mb = round((peak - self.marked) / 2**20, 2)


#: forward+backward / forward FLOPs of exact attention, and the record's ``flops_convention``
FLOP_CONVENTIONS = {
    "materialized": (3.0, "fwd+bwd = 3.0 x fwd (materialized math)"),
    "fused": (3.5, "fwd+bwd = 3.5 x fwd (fused, recomputes QK^T)"),
}
FLOPS_FWD = "fwd = 4 B H N^2 D (analytic)"
FLOPS_COUNTED = "counted (FlopCounterMode)"
#: what causal=True does to the analytic count, by kernel (appended to the convention)
CAUSAL_CONVENTIONS = {
    "materialized": "causal: x 1 (the materialized path computes the whole score matrix, then masks it)",
    "fused": "causal: x 1/2 (fused kernels skip the masked half of the score matrix; FlashAttention's convention)",
}
#: backends (``last_backend``) that run the materialized math path; None: no backend choice (``full``)
MATERIALIZED_BACKENDS = (None, "math", "reference")


def exact_kernel(backend: str | None) -> str:
    """``"materialized"`` for the math path (``full``, SDPA ``math``), else ``"fused"`` (SDPA
    flash / efficient / cuDNN, xformers: kernels that recompute QK^T in the backward pass)."""
    return "materialized" if backend in MATERIALIZED_BACKENDS else "fused"


def attention_flops(batch: int, heads: int, seq_len: int, head_dim: int, mode: str, *,
                    kernel: str, causal: bool = False) -> int:
    """Analytic FLOPs of exact attention: 4·B·H·N²·D forward (QK^T and PV, 2 FLOPs per MAC);
    ``mode``: ``"fwd"`` or ``"fwd_bwd"``: 3.0x forward for ``kernel="materialized"``, 3.5x for
    ``"fused"`` (see :data:`FLOP_CONVENTIONS`). ``causal``: half of that on a fused kernel, which
    skips the blocks above the diagonal; all of it on the materialized path, which computes the
    whole score matrix and masks it (:data:`CAUSAL_CONVENTIONS`)."""
    if kernel not in FLOP_CONVENTIONS:
        raise ValueError(f"kernel must be one of {list(FLOP_CONVENTIONS)}, got {kernel!r}")
    fwd = 4 * batch * heads * seq_len * seq_len * head_dim
    if causal and kernel == "fused":
        fwd //= 2
    if mode == "fwd":
        return fwd
    if mode == "fwd_bwd":
        return int(FLOP_CONVENTIONS[kernel][0] * fwd)
    raise ValueError(f"mode must be 'fwd' or 'fwd_bwd', got {mode!r}")


def flops_convention(mode: str, kernel: str, causal: bool = False) -> str:
    """The record's ``case.flops_convention`` for an analytic count (causal: with its rule appended)."""
    base = FLOPS_FWD if mode == "fwd" else FLOP_CONVENTIONS[kernel][1]
    return f"{base}; {CAUSAL_CONVENTIONS[kernel]}" if causal else base


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` as counted by ``FlopCounterMode`` (matmul-like ops only)."""
    from torch.utils.flop_counter import FlopCounterMode  # noqa: PLC0415

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def gemm_gflops(size: int, dtype: torch.dtype, device: torch.device | str = "cpu", **timing_kw: Any
                ) -> tuple[float, Timing]:
    """The machine's GEMM rate in GFLOP/s: ``torch.mm`` of two random square ``size x size``
    matrices of ``dtype`` into a preallocated output (2·size³ FLOPs per call), timed by
    :func:`time_fn` (``timing_kw``: warmup, repeats, min_time_s, ...) with the threads in force.
    Returns the rate at the median call and the :class:`Timing`. O(size³) time, 3·size² memory."""
    gen = torch.Generator(device).manual_seed(0)
    a, b = (torch.randn(size, size, generator=gen, device=device).to(dtype) for _ in range(2))
    out = torch.empty(size, size, device=device, dtype=dtype)
    timing = time_fn(lambda: torch.mm(a, b, out=out), device=device, **timing_kw)
    return 2 * size**3 / (timing.median_ms * 1e-3) / 1e9, timing


def tflops(flops: int | float | None, ms: float | None) -> float | None:
    """TFLOP/s of ``flops`` done in ``ms`` milliseconds (None if either is missing)."""
    if not flops or not ms or ms <= 0:
        return None
    return flops / (ms * 1e-3) / 1e12


def is_oom(err: BaseException) -> bool:
    """Whether an exception means the device (or host) ran out of memory."""
    if isinstance(err, torch.OutOfMemoryError):  # torch.cuda.OutOfMemoryError is the same class
        return True
    if isinstance(err, (RuntimeError, MemoryError)):
        text = str(err).lower()
        return isinstance(err, MemoryError) or "out of memory" in text or "can't allocate memory" in text
    return False


def free_memory(device: torch.device | str | None = None) -> None:
    """Drop cached allocator blocks after a case (most useful after an OOM) on CUDA.

    On CPU nothing is measured between cases and Python frees tensors by reference counting, so the
    full ``gc.collect()`` (0.5-2 s per case with a large heap, half the smoothness grid's time) runs
    only where a GPU allocator cache is released after it."""
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        import gc  # noqa: PLC0415

        gc.collect()
        torch.cuda.empty_cache()
