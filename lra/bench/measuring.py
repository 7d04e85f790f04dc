"""Pieces every timed mode shares: autocast, the timing settings, the metrics and facts a
:class:`lra.timing.Timing` gives a record, and the causal axis's refusal and knob check.

The rules these follow (warm-up, synchronisation, clocks, minimum timed time, medians and
spread, FLOP conventions, TFLOP/s fractions) are written once in ``docs/numerics.md``.
"""
from __future__ import annotations

import torch

import attention_variants as av

from ..schema import ConfigError
from ..timing import MAX_REPEATS, Timing, peak_bf16_tflops, tflops
from .case import Case

REDUCED_PRECISION = (torch.bfloat16, torch.float16)
#: a mode's extra summary table of peak memory (:attr:`lra.bench.registry.Mode.tables`)
PEAK_MEMORY_TABLE = ("peak_mem_mb", "peak memory (MiB)")


def autocast(device: torch.device, dtype: torch.dtype):
    """Autocast for reduced precision (fp32 parameters of some variants stay fp32); off for fp32/fp64."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype in REDUCED_PRECISION)


def timing_kw(s: dict) -> dict:
    """Keyword arguments of :func:`lra.timing.time_fn` from the settings."""
    return {"warmup": int(s["warmup"]), "repeats": int(s["repeats"]), "min_time_s": float(s.get("min_time_s") or 0),
            "max_repeats": int(s.get("max_repeats") or MAX_REPEATS)}


def time_metrics(timing: Timing, per_call: int = 1) -> dict:
    """``ms`` (median), ``ms_p10``/``ms_p90`` and ``ms_iqr_rel`` = (p75 - p25) / median, the
    spread of the per-call times (0.05: the middle half of the calls lie within 5% of the
    median's size); times divided by ``per_call`` (steps per timed call)."""
    iqr = timing.iqr_rel
    return {"ms": round(timing.median_ms / per_call, 5), "ms_p10": round(timing.p10_ms / per_call, 5),
            "ms_p90": round(timing.p90_ms / per_call, 5), "ms_iqr_rel": None if iqr is None else round(iqr, 4)}


def timing_facts(timing: Timing) -> dict:
    """The record's ``case`` facts of a timing: clock, warm-up calls, timed calls and their total seconds."""
    return {"timer": timing.timer, "warmup": timing.warmup, "repeats": timing.repeats,
            "timed_s": round(timing.total_s, 6)}


def speed_metrics(timing: Timing, median_key: str, flops: int | None, device_name: str | None) -> dict:
    """:func:`time_metrics`, the median again under ``median_key`` (e.g. ``ms_fwd``), ``flops``,
    ``tflops`` and ``tflops_fraction`` of the device's dense BF16 peak (null where unknown)."""
    t = tflops(flops, timing.median_ms)
    peak = peak_bf16_tflops(device_name)
    return {**time_metrics(timing), median_key: round(timing.median_ms, 5), "flops": flops,
            "tflops": None if t is None else round(t, 4),
            "tflops_fraction": None if (t is None or peak is None) else round(t / peak, 5)}


def device_name(device: torch.device) -> str | None:
    """The CUDA device's name (``NVIDIA H100 80GB HBM3``), None on CPU."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else None


def first_line(err: BaseException) -> str:
    """``TypeName: first line of the message``."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def causal_refusal(case: Case, s: dict) -> str | None:
    """A mode's ``skip``: the variant's own refusal when the case is causal and it cannot be
    (:func:`attention_variants.check_causal`: the reason and the causal variants), else None."""
    if not case.causal:
        return None
    try:
        av.check_causal(case.variant, True)
    except ValueError as err:
        return f"causal=true refused: {err}"
    return None


def causal_knob_check(s: dict, running: bool) -> None:
    """A mode's ``finish``: with a causal axis running, ``knobs.<variant>.causal`` would be
    overruled by the axis, so it is a config error (set ``causal=[...]`` instead)."""
    if not running:
        return
    bad = [name for name, knobs in s["knobs"].items() if "causal" in knobs]
    if bad:
        raise ConfigError(f"knobs.{bad[0]}.causal is set, but op_fwd, op_fwd_bwd and model_step take causal from "
                          f"the grid's axis; use causal=[{str(bool(s['knobs'][bad[0]]['causal'])).lower()}] instead")
