"""Modes ``op_fwd`` and ``op_fwd_bwd``: the attention variant alone on random inputs.

Case: the variant built with ``max_length=N`` (``heads``, ``head_dim``, the grid's knobs) and
``causal`` on random ``q, k, v: (B, H, N, D)``, for every grid ``dtype`` x ``batch_size`` x
``causal`` x ``lengths``; a variant that refuses ``causal=True`` is ``skipped`` there with its reason.
``op_fwd`` runs under ``torch.no_grad`` in eval mode; ``op_fwd_bwd`` runs forward plus
``torch.autograd.grad`` of a fixed random output gradient w.r.t. q, k, v and the variant's
parameters, in train mode. Reduced precision (``dtype=bfloat16``) means bf16 inputs under
``torch.autocast`` (as the encoder runs them; some variants keep fp32 parameters). ``seed`` draws
q, k, v, then the output gradient (``case.input_seed``) and seeds the variant's projections.

Metrics: ``ms`` (median), ``ms_p10``/``ms_p90``, ``ms_iqr_rel``, ``ms_fwd`` or ``ms_fwd_bwd``,
``peak_mem_mb``, ``input_mem_mb``, ``flops``, ``tflops``, ``tflops_fraction``; facts: the clock,
the backend that ran, ``flops_source`` and ``flops_convention`` (causal exact attention: half the
score matrix on fused kernels), ``exact``, ``complexity``, ``memory_method``.
How the time, memory and FLOPs are measured and counted: ``docs/numerics.md``.
"""
from __future__ import annotations

import torch

import attention_variants as av

from ..results import variant_config
from ..timing import (FLOPS_COUNTED, PeakMemory, attention_flops, count_flops, exact_kernel, flops_convention,
                      free_memory, is_oom, time_fn)
from .case import Case, Measurement
from .measuring import (PEAK_MEMORY_TABLE, REDUCED_PRECISION, autocast, causal_knob_check, causal_refusal,
                        device_name, speed_metrics, timing_facts, timing_kw)
from .registry import Mode, register
from .settings import DTYPES


def axes(variant: str, s: dict) -> list[dict]:
    """Every grid dtype x batch size x causal."""
    return [{"batch_size": b, "dtype": dtype, "causal": causal} for dtype in s["dtype"] for b in s["batch_size"]
            for causal in s.get("causal", [False])]


def measure(case: Case, s: dict, device: torch.device) -> Measurement:
    """``op_fwd`` / ``op_fwd_bwd``: the variant alone on random inputs."""
    backward = case.mode == "op_fwd_bwd"
    dtype = DTYPES[case.dtype]
    b, h, n, d = case.batch_size, int(s["heads"]), case.seq_len, int(s["head_dim"])
    seed = int(s.get("seed") or 0)
    build_cfg = {"heads": h, "head_dim": d, "max_length": n, "seed": seed, **s["knobs"][case.variant],
                 "causal": case.causal}
    cls, _ = av.get(case.variant)
    torch.manual_seed(seed)  # parameters the variant initialises from the global generator
    gen = torch.Generator(device).manual_seed(seed)  # the inputs: q, k, v, then grad_out
    with PeakMemory(device) as mem:
        attn = av.build(case.variant, **build_cfg).to(device)
        attn.train(backward)
        q, k, v = (torch.randn(b, h, n, d, generator=gen, device=device, dtype=dtype, requires_grad=backward)
                   for _ in range(3))
        grad_out = torch.randn(b, h, n, d, generator=gen, device=device, dtype=dtype) if backward else None
        params = [p for p in attn.parameters() if p.requires_grad]
        mem.mark()

        if backward:
            def fn():
                with autocast(device, dtype):
                    out = attn(q, k, v)
                torch.autograd.grad(out, (q, k, v, *params), grad_out.to(out.dtype), allow_unused=True)
        else:
            def fn():
                with torch.no_grad(), autocast(device, dtype):
                    attn(q, k, v)

        timing = time_fn(fn, device=device, **timing_kw(s))
    backend = getattr(attn, "last_backend", None)
    mode_key = "fwd_bwd" if backward else "fwd"
    flops, source, convention = None, None, None
    if getattr(cls, "exact", False):
        kernel = exact_kernel(backend)
        flops, source = attention_flops(b, h, n, d, mode_key, kernel=kernel, causal=case.causal), "analytic"
        convention = flops_convention(mode_key, kernel, causal=case.causal)
    elif backend == "flex":
        source = "none: FlopCounterMode counts flex_attention as dense"
    elif s.get("count_flops", True):
        def count_fn():  # FlopCounterMode's module hooks do not support torch.autograd.grad
            if not backward:
                return fn()
            with autocast(device, dtype):
                out = attn(q, k, v)
            out.backward(grad_out.to(out.dtype))
            for t in (q, k, v, *params):
                t.grad = None

        try:
            flops, source, convention = count_flops(count_fn), "flop_counter", FLOPS_COUNTED
        except Exception as err:  # noqa: BLE001 - counting is best effort
            flops, source = None, f"none: FlopCounterMode failed ({type(err).__name__})"
            if is_oom(err):
                free_memory(device)
    metrics = speed_metrics(timing, f"ms_{mode_key}", flops, device_name(device))
    metrics.update({"peak_mem_mb": mem.peak_mb, "input_mem_mb": mem.inputs_mb})
    facts = {"heads": h, "head_dim": d, **timing_facts(timing), "backend": backend, "flops_source": source,
             "flops_convention": convention, "input_seed": seed,
             "autocast": dtype in REDUCED_PRECISION, "exact": bool(getattr(cls, "exact", False)),
             "complexity": getattr(cls, "complexity", None), "memory_method": mem.method}
    return Measurement(metrics, facts, variant_config(case.variant, **build_cfg), timings_ms=timing.times_ms)


register(Mode("op_fwd", order=10, axes=axes, measure=measure, metric="ms_fwd", title="ms (median)",
              skip=causal_refusal, finish=causal_knob_check, isolate=True, uses_peak=True,
              tables=(PEAK_MEMORY_TABLE,)))
register(Mode("op_fwd_bwd", order=20, axes=axes, measure=measure, metric="ms_fwd_bwd",
              title="ms (median)", tables=(PEAK_MEMORY_TABLE,), skip=causal_refusal, finish=causal_knob_check,
              isolate=True, uses_peak=True))
