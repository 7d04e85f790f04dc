"""Mode ``calibration``: the machine's own GEMM rate, once per run -- the CPU's peak.

Case: one per run (``variant`` null, ``seq_len`` null, ``case.gemm_size`` = ``calibration.size``),
first in the run; it joins every CPU run that has a mode with FLOPs (``op_fwd``, ``op_fwd_bwd``,
``model_step``, ``decode``) unless ``calibration.enabled=false`` (``true``: on any device). It
times ``torch.mm`` of two random square ``size x size`` matrices (2·size³ FLOPs per call) in fp32
and in bf16 with the run's threads and timing settings (:func:`lra.timing.gemm_gflops`), in a
process of its own like the cases it calibrates. A dtype whose one call at that size would take
more than ``calibration.max_call_s`` (estimated from a call at 256: size³ scaling) is measured at
the largest halved size that does not (:func:`gemm_size`; a CPU without a native bf16 path runs
bf16 GEMMs at well under 1 GFLOP/s, so 2048³ would take a minute a call). Metrics:
``gemm_fp32_gflops``, ``gemm_bf16_gflops`` (at the median call), their ``_ms`` medians and the
sizes used (``case.fp32_size``, ``case.bf16_size``).

Every later record of the run with ``tflops`` on a device without a tabulated peak (CPUs) then
gets ``tflops_fraction`` of the rate of its own dtype (:func:`apply`: fp32 cases of the fp32
rate, bf16 cases of the bf16 rate; other dtypes none), and ``case.calibration`` says which rate
(``gemm_gflops``, ``dtype``, ``size``). Why a GEMM of this size is the peak: ``docs/numerics.md``.
"""
from __future__ import annotations

import torch

from ..schema import Choice, Float, Int
from ..timing import gemm_gflops, time_fn
from .case import Case, Measurement
from .measuring import timing_facts, timing_kw
from .registry import MODES, Mode, register

#: the dtypes measured, by metric name
GEMM_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
#: the grid's dtype names -> the metric whose rate is their peak
PEAK_OF = {"float32": "gemm_fp32_gflops", "fp32": "gemm_fp32_gflops",
           "bfloat16": "gemm_bf16_gflops", "bf16": "gemm_bf16_gflops"}
RULES = (Choice("enabled", ("auto", True, False), means="auto: on CPU runs with FLOPs"),
         Int("size", low=16, means="the square matrices' side", example=2048),
         Float("max_call_s", low=0, open_low=True, means="longest one GEMM call may take (else a halved size)",
               example=1.0))
PROBE = 256


def joins(s: dict, device_type: str) -> bool:
    """Whether the run calibrates: ``enabled`` true, or ``auto`` on a CPU run with a mode that has FLOPs."""
    enabled = (s.get("calibration") or {}).get("enabled", "auto")
    if enabled == "auto":
        return device_type == "cpu" and any(MODES[m].uses_peak for m in s["modes"] if m in MODES)
    return bool(enabled)


def cases(s: dict) -> list[Case]:
    """The run's one calibration case."""
    return [Case("calibration", "", int(s["calibration"]["size"]))]


def gemm_size(size: int, dtype: torch.dtype, device: torch.device, max_call_s: float) -> int:
    """``size``, halved while one ``dtype`` GEMM call would take more than ``max_call_s`` seconds
    (from the time of one call at :data:`PROBE`, scaled by size³), but not below the probe."""
    probe = min(PROBE, size)
    a = torch.ones(probe, probe, device=device, dtype=dtype)
    call_s = time_fn(lambda: torch.mm(a, a), warmup=1, repeats=1, device=device).median_ms / 1e3
    while size > probe and call_s * (size / probe) ** 3 > max_call_s:
        size //= 2
    return size


def measure(case: Case, s: dict, device: torch.device) -> Measurement:
    """``calibration``: the fp32 and bf16 GEMM rates of ``size x size`` matrices."""
    metrics, facts = {}, {"gemm_size": case.seq_len, "threads": torch.get_num_threads()}
    for name, dtype in GEMM_DTYPES.items():
        size = gemm_size(case.seq_len, dtype, device, float(s["calibration"].get("max_call_s") or 1.0))
        facts[f"{name}_size"] = size
        gflops, timing = gemm_gflops(size, dtype, device, **timing_kw(s))
        metrics[f"gemm_{name}_gflops"] = round(gflops, 2)
        metrics[f"gemm_{name}_ms"] = round(timing.median_ms, 4)
        facts.update({f"{name}_{k}": v for k, v in timing_facts(timing).items()})
    facts["timer"] = facts.get("fp32_timer")
    return Measurement(metrics, facts, {})


def apply(record: dict, calibration: dict | None) -> None:
    """Fill ``metrics.tflops_fraction`` of ``record`` (in place) from the run's calibration record
    when the record has ``tflops`` but no fraction (no tabulated peak) and its dtype has a rate:
    ``flops / ms`` over the rate."""
    metrics = record.get("metrics") or {}
    if calibration is None or metrics.get("tflops") is None or metrics.get("tflops_fraction") is not None:
        return
    key = PEAK_OF.get(str(record.get("dtype")))
    rate = (calibration.get("metrics") or {}).get(key) if key else None
    if not rate or not metrics.get("flops") or not metrics.get("ms"):
        return
    # from flops and the median (unrounded), not from the rounded tflops
    metrics["tflops_fraction"] = round(metrics["flops"] / (metrics["ms"] * 1e-3) / (rate * 1e9), 5)
    name = key.split("_")[1]
    record["case"]["calibration"] = {"gemm_gflops": rate, "dtype": name,
                                     "size": (calibration.get("case") or {}).get(f"{name}_size")}


register(Mode("calibration", order=5, axes=lambda variant, s: [], measure=measure, metric="gemm_fp32_gflops",
              title="GEMM GFLOP/s (fp32)", section="calibration", rules=RULES, isolate=True, cases=cases,
              joins=joins, tables=(("gemm_bf16_gflops", "GEMM GFLOP/s (bf16)"),)))
