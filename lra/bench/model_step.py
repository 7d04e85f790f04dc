"""Mode ``model_step``: one training step of the encoder at an LRA task shape.

Case: :class:`lra.model.Encoder` with the ``model_step:`` section's sizes (default: the LRA Text
shape on CUDA, a tiny model on CPU) and the variant as its attention (built with the case's
``causal``; a variant that refuses it is ``skipped``), at every grid ``dtype`` x ``causal`` and
``model_step.lengths``, batch ``model_step.batch_size``. One timed call is one step: forward
(under autocast at reduced precision), cross-entropy, ``zero_grad`` + backward, AdamW step, on
one fixed batch of random tokens and labels (``seed``) with a key-padding mask, as training runs
it (:func:`padding_mask`: the last ``ceil(padded_rows x B)`` rows real up to
``real_fraction x N`` and padding after; ``case.mask`` states it). The records' ``task`` is
``model_step.task``.

Metrics: ``ms`` (median), ``ms_p10``/``ms_p90``, ``ms_iqr_rel``, ``ms_step``, ``steps_per_s``,
``tokens_per_s`` (B·N positions per step), ``peak_mem_mb``, ``params``, ``flops`` (one step's
forward and backward, :func:`step_flops`), ``tflops``, ``tflops_fraction``; status ``nan`` when a
timed step's loss is not finite. Timing, memory and FLOP rules: ``docs/numerics.md``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import attention_variants as av

from ..model import Encoder, EncoderConfig
from ..schema import Float
from ..timing import FLOPS_COUNTED, PeakMemory, attention_flops, count_flops, exact_kernel, flops_convention, time_fn
from .case import Case, Measurement
from .encoder import ENCODER_RULES, divisibility_problems, encoder_config, encoder_facts, encoder_variant_config
from .measuring import (PEAK_MEMORY_TABLE, REDUCED_PRECISION, autocast, causal_knob_check, causal_refusal,
                        device_name, speed_metrics, timing_facts, timing_kw)
from .registry import Mode, register
from .settings import DTYPES

MASK_RULES = (Float("padded_rows", low=0, high=1, means="share of the batch's rows that end in padding", example=0.25),
              Float("real_fraction", low=0, high=1, open_low=True, means="real share of a padded row", example=0.78))


def axes(variant: str, s: dict) -> list[dict]:
    """Every grid dtype x causal at ``model_step.batch_size``."""
    b = int(s["model_step"]["batch_size"])
    return [{"batch_size": b, "dtype": dtype, "causal": causal} for dtype in s["dtype"]
            for causal in s.get("causal", [False])]


def padding_mask(b: int, n: int, padded_rows: float, real_fraction: float, device) -> tuple[torch.Tensor, dict]:
    """``(B, N)`` bool key-padding mask (True = real): the last ``ceil(padded_rows B)`` rows are real
    for their first ``max(1, round(real_fraction N))`` positions, the others real throughout; and
    the record's ``case.mask``."""
    rows = min(b, math.ceil(padded_rows * b - 1e-9))
    real = max(1, round(real_fraction * n))
    mask = torch.ones(b, n, dtype=torch.bool, device=device)
    if rows:
        mask[b - rows:, real:] = False
    return mask, {"kind": "key_padding", "padded_rows": rows, "rows": b, "real_length": real,
                  "real_tokens": int(mask.sum())}


def step_flops(model: Encoder, enc_cfg: EncoderConfig, step, mask: torch.Tensor, dtype: torch.dtype,
               device: torch.device, causal: bool) -> tuple[int, str, str]:
    """FLOPs of one step's forward and backward (``step()``; ``mask`` its ``(B, N)`` padding):
    ``FlopCounterMode`` on one extra step; for an exact variant the attention's own count is
    replaced by the analytic one of the kernel that ran (the counter does not see fused CPU
    kernels): counted - layers x counted(attention alone) + layers x analytic(attention).
    Returns ``(flops, flops_source, flops_convention)``."""
    total = count_flops(step)
    attn = model.blocks[0].attn.attention
    if not getattr(type(attn), "exact", False):
        return total, "flop_counter", FLOPS_COUNTED
    kernel = exact_kernel(getattr(attn, "last_backend", None))   # what the step ran (with its mask)
    b, h, d = mask.shape[0], enc_cfg.heads, enc_cfg.d_model // enc_cfg.heads
    cls = mask.new_ones(b, 1)   # the CLS token (first; last under causal attention) is real
    keys = mask if enc_cfg.pooling != "cls" else torch.cat([mask, cls] if model.causal else [cls, mask], dim=1)
    length = keys.shape[1]
    gen = torch.Generator(device).manual_seed(0)
    q, k, v = (torch.randn(b, h, length, d, generator=gen, device=device, dtype=dtype, requires_grad=True)
               for _ in range(3))

    def attention_alone():
        with autocast(device, dtype):
            out = attn(q, k, v, key_padding_mask=keys)
        out.float().sum().backward()

    counted = count_flops(attention_alone)
    analytic = attention_flops(b, h, length, d, "fwd_bwd", kernel=kernel, causal=causal)
    convention = (f"{FLOPS_COUNTED}; attention per layer analytic: "
                  f"{flops_convention('fwd_bwd', kernel, causal)}")
    return total - enc_cfg.layers * counted + enc_cfg.layers * analytic, "flop_counter+analytic", convention


def measure(case: Case, s: dict, device: torch.device) -> Measurement:
    """``model_step``: one training step of the encoder (forward, backward, AdamW) under a padding mask."""
    ms = s["model_step"]
    dtype = DTYPES[case.dtype]
    b, n = case.batch_size, case.seq_len
    seed = int(s.get("seed") or 0)
    knobs = {**s["knobs"][case.variant], "seed": seed, "causal": case.causal}
    enc_cfg = encoder_config(ms, case.variant, n, knobs, pos_emb="sinusoidal")
    torch.manual_seed(seed)
    gen = torch.Generator(device).manual_seed(seed)
    last_loss: list[torch.Tensor] = []
    with PeakMemory(device) as mem:
        model = Encoder(enc_cfg).to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=float(ms.get("lr", 1e-4)))
        tokens = torch.randint(1, enc_cfg.vocab_size, (b, n), generator=gen, device=device)
        labels = torch.randint(0, enc_cfg.num_classes, (b,), generator=gen, device=device)
        mask, mask_facts = padding_mask(b, n, float(ms.get("padded_rows", 0.25)), float(ms.get("real_fraction", 0.78)),
                                        device)
        tokens = tokens.masked_fill(~mask, 0)   # padding id 0, as the tasks pad
        mem.mark()

        def forward_backward():
            with autocast(device, dtype):
                logits = model(tokens, mask)
            loss = F.cross_entropy(logits.float(), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            return loss

        def step():
            loss = forward_backward()
            opt.step()
            last_loss[:] = [loss.detach()]

        timing = time_fn(step, device=device, **timing_kw(s))
    flops, source, convention = None, "none: count_flops=false", None
    backend = getattr(model.blocks[0].attn.attention, "last_backend", None)
    if s.get("count_flops", True):
        try:
            flops, source, convention = step_flops(model, enc_cfg, forward_backward, mask, dtype, device, case.causal)
        except Exception as err:  # noqa: BLE001 - counting is best effort
            source = f"none: FlopCounterMode failed ({type(err).__name__})"
    steps_per_s = 1e3 / timing.median_ms if timing.median_ms > 0 else None
    metrics = {**speed_metrics(timing, "ms_step", flops, device_name(device)),
               "steps_per_s": None if steps_per_s is None else round(steps_per_s, 4),
               "tokens_per_s": None if steps_per_s is None else round(steps_per_s * b * n, 1),
               "peak_mem_mb": mem.peak_mb, "params": sum(p.numel() for p in model.parameters())}
    cls = av.get(case.variant)[0]
    facts = {**encoder_facts(enc_cfg), **timing_facts(timing),
             "backend": backend, "autocast": dtype in REDUCED_PRECISION, "optimizer": "AdamW", "input_seed": seed,
             "mask": mask_facts, "flops_source": source, "flops_convention": convention,
             "exact": bool(getattr(cls, "exact", False)), "complexity": getattr(cls, "complexity", None),
             "memory_method": mem.method}
    m = Measurement(metrics, facts, encoder_variant_config(case.variant, enc_cfg, n, knobs),
                    timings_ms=timing.times_ms)
    if last_loss and not bool(torch.isfinite(last_loss[0])):
        m.status, m.message = "nan", "non-finite training loss in the timed steps"
    return m


register(Mode("model_step", order=30, axes=axes, measure=measure, metric="steps_per_s",
              title="steps/s", section="model_step",
              rules=ENCODER_RULES + (Float("lr", low=0, open_low=True, example=1e-4),) + MASK_RULES,
              problems=divisibility_problems("model_step"), task_shaped=True,
              tables=(PEAK_MEMORY_TABLE,), skip=causal_refusal, finish=causal_knob_check, isolate=True,
              uses_peak=True))
