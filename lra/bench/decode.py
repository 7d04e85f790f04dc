"""Mode ``decode``: the time per generated token at context N -- the number that decides decoders.

Case: the variant built causal (``causal=True``, ``heads``, ``head_dim``, the grid's knobs,
``max_length`` = N + the tokens decoded), for every grid ``dtype`` at ``decode.batch_size`` and
``decode.lengths`` (default the grid's). A variant that refuses ``causal=True`` or has no cached
decoding path (``decode_init`` / ``decode_step`` of :class:`attention_variants.Attention`) is
``skipped`` with the reason. Under ``torch.no_grad`` in eval mode, on random ``q, k, v`` of shape
``(B, H, 1, D)`` per position (``seed``):

1. fill: ``decode_init``, then one ``decode_step`` per position for the first
   ``F = max(0, N - warmup - tokens // 2)`` positions -- the KV cache of softmax variants, the
   running state of linear ones (``fill_s``: their total time, i.e. generating F tokens one by one);
2. ``decode.warmup`` untimed steps, then ``decode.tokens`` timed steps, each one ``decode_step``
   call for one new token (:func:`lra.timing.time_fn`, no minimum time: every timed call adds a
   token): the timed tokens see contexts ``N - tokens/2 ... N + tokens/2`` (``case.context_first``,
   ``case.context_last``: keys each attends to, itself included), centred on N.

Metrics: ``ms_per_token`` (median; = ``ms``), ``ms_p10``/``ms_p90``, ``ms_iqr_rel``,
``tokens_per_s`` (B tokens per step), ``state_bytes`` (``decode_state_bytes(N)`` per sequence, all
heads of the layer, at the dtype's element size; null with the reason in ``case.state`` where the
variant does not state it), ``fill_s``, ``peak_mem_mb`` (state, inputs and all), ``flops`` of one
step (``FlopCounterMode``), ``tflops``, ``tflops_fraction``. Cost: O(F) steps to fill (O(N^2) work
for a KV cache, O(N) for a running state) plus ``warmup + tokens`` steps.
"""
from __future__ import annotations

import time

import torch

import attention_variants as av
from attention_variants import Attention

from ..results import variant_config
from ..schema import Int, Ints
from ..timing import FLOPS_COUNTED, PeakMemory, count_flops, time_fn
from .case import Case, Measurement, SkipCase
from .measuring import (PEAK_MEMORY_TABLE, REDUCED_PRECISION, autocast, causal_refusal, device_name, speed_metrics,
                        timing_facts)
from .registry import Mode, register
from .settings import DTYPES

RULES = (Ints("lengths", means="context lengths N", example="[256,1024]"), Int("batch_size", example=1),
         Int("tokens", means="timed tokens per case", example=32), Int("warmup", low=0, example=4))


def axes(variant: str, s: dict) -> list[dict]:
    """Every grid dtype at ``decode.batch_size``; always causal."""
    return [{"batch_size": int(s["decode"]["batch_size"]), "dtype": dtype, "causal": True} for dtype in s["dtype"]]


def no_cached_path(variant: str) -> str | None:
    """The reason ``variant`` cannot decode token by token, or None: it refuses ``causal=True``, or
    its class keeps the interface's ``decode_init``/``decode_step`` (no cached path)."""
    refusal = causal_refusal(Case("decode", variant, 1, causal=True), {})
    if refusal is not None:
        return refusal
    cls = av.get(variant)[0]
    if cls.decode_step is Attention.decode_step or cls.decode_init is Attention.decode_init:
        return (f"no cached decoding path: {variant} does not implement decode_init/decode_step "
                "(attention_variants.Attention)")
    return None


def skip(case: Case, s: dict) -> str | None:
    """A mode's ``skip``: see :func:`no_cached_path`."""
    return no_cached_path(case.variant)


def measure(case: Case, s: dict, device: torch.device) -> Measurement:
    """``decode``: fill the state to about N tokens, then time single-token ``decode_step`` calls."""
    sec = s["decode"]
    dtype = DTYPES[case.dtype]
    b, h, n, d = case.batch_size, int(s["heads"]), case.seq_len, int(s["head_dim"])
    tokens, warmup = int(sec["tokens"]), int(sec["warmup"])
    fill = max(0, n - warmup - tokens // 2)
    positions = fill + warmup + tokens + 1          # + 1: the step FlopCounterMode counts
    seed = int(s.get("seed") or 0)
    build_cfg = {"heads": h, "head_dim": d, "max_length": positions, "seed": seed, **s["knobs"][case.variant],
                 "causal": True}
    torch.manual_seed(seed)
    gen = torch.Generator(device).manual_seed(seed)
    with torch.no_grad(), PeakMemory(device) as mem:
        attn = av.build(case.variant, **build_cfg).to(device).eval()
        # (positions, 3, B, H, 1, D): each position's q, k, v contiguous
        qkv = torch.randn(positions, 3, b, h, 1, d, generator=gen, device=device, dtype=dtype)
        mem.mark()
        at = [0]

        def step():
            q, k, v = qkv[at[0]]
            with autocast(device, dtype):
                _, state[0] = attn.decode_step(q, k, v, state[0])
            at[0] += 1

        try:
            state = [attn.decode_init(b, device, dtype)]
            start = time.perf_counter()
            for _ in range(fill):
                step()
            fill_s = time.perf_counter() - start
        except NotImplementedError as err:
            raise SkipCase(f"no cached decoding path: {err}") from None
        timing = time_fn(step, device=device, warmup=warmup, repeats=tokens, min_time_s=0, max_repeats=tokens)
        first, last = fill + warmup + 1, at[0]
        flops = count_flops(step) if s.get("count_flops", True) else None
    state_bytes, what = attn.decode_state_bytes(n, torch.finfo(dtype).bits // 8)
    metrics = {**speed_metrics(timing, "ms_per_token", flops, device_name(device)),
               "tokens_per_s": round(b * 1e3 / timing.median_ms, 2) if timing.median_ms > 0 else None,
               "state_bytes": state_bytes, "fill_s": round(fill_s, 4),
               "peak_mem_mb": mem.peak_mb, "input_mem_mb": mem.inputs_mb}
    cls = type(attn)
    facts = {"heads": h, "head_dim": d, **timing_facts(timing), "backend": getattr(attn, "last_backend", None),
             "flops_source": "flop_counter" if flops is not None else "none: count_flops=false",
             "flops_convention": FLOPS_COUNTED if flops is not None else None, "input_seed": seed,
             "autocast": dtype in REDUCED_PRECISION, "exact": bool(getattr(cls, "exact", False)),
             "complexity": getattr(cls, "complexity", None), "memory_method": mem.method, "state": what,
             "filled_tokens": fill, "context_first": first, "context_last": last}
    return Measurement(metrics, facts, variant_config(case.variant, **build_cfg), timings_ms=timing.times_ms)


register(Mode("decode", order=35, axes=axes, measure=measure, metric="ms_per_token", title="ms per token (median)",
              section="decode", rules=RULES, skip=skip, isolate=True, uses_peak=True,
              tables=(PEAK_MEMORY_TABLE, ("state_bytes", "decoding state (bytes per sequence)"))))
