"""Mode ``model_step``: one training step of the encoder at an LRA task shape.

Case: :class:`lra.model.Encoder` with the ``model_step:`` section's sizes (default: the LRA Text
shape on CUDA, a tiny model on CPU) and the variant as its attention, at every grid ``dtype`` and
``model_step.lengths``, batch ``model_step.batch_size``. One timed call is one step: forward
(under autocast at reduced precision), cross-entropy, ``zero_grad`` + backward, AdamW step, on
one fixed batch of random tokens and labels (``seed``). The records' ``task`` is
``model_step.task``.

Metrics: ``ms`` (median), ``ms_p10``/``ms_p90``, ``ms_iqr_rel``, ``ms_step``, ``steps_per_s``,
``tokens_per_s`` (B·N positions per step), ``peak_mem_mb``, ``params``; status ``nan`` when a
timed step's loss is not finite. Timing and memory rules: ``docs/numerics.md``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..model import Encoder
from ..schema import Float
from ..timing import PeakMemory, time_fn
from .case import Case, Measurement
from .encoder import (ENCODER_RULES, divisibility_problems, dtype_axes, encoder_config, encoder_facts,
                      encoder_variant_config)
from .measuring import PEAK_MEMORY_TABLE, REDUCED_PRECISION, autocast, time_metrics, timing_facts, timing_kw
from .registry import Mode, register
from .settings import DTYPES


def measure(case: Case, s: dict, device: torch.device) -> Measurement:
    """``model_step``: one training step of the encoder (forward, backward, AdamW)."""
    ms = s["model_step"]
    dtype = DTYPES[case.dtype]
    b, n = case.batch_size, case.seq_len
    seed = int(s.get("seed") or 0)
    knobs = {**s["knobs"][case.variant], "seed": seed}
    enc_cfg = encoder_config(ms, case.variant, n, knobs, pos_emb="sinusoidal")
    torch.manual_seed(seed)
    gen = torch.Generator(device).manual_seed(seed)
    last_loss: list[torch.Tensor] = []
    with PeakMemory(device) as mem:
        model = Encoder(enc_cfg).to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=float(ms.get("lr", 1e-4)))
        tokens = torch.randint(1, enc_cfg.vocab_size, (b, n), generator=gen, device=device)
        labels = torch.randint(0, enc_cfg.num_classes, (b,), generator=gen, device=device)
        mem.mark()

        def step():
            with autocast(device, dtype):
                logits = model(tokens)
            loss = F.cross_entropy(logits.float(), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            last_loss[:] = [loss.detach()]

        timing = time_fn(step, device=device, **timing_kw(s))
    steps_per_s = 1e3 / timing.median_ms if timing.median_ms > 0 else None
    metrics = {**time_metrics(timing), "ms_step": round(timing.median_ms, 5),
               "steps_per_s": None if steps_per_s is None else round(steps_per_s, 4),
               "tokens_per_s": None if steps_per_s is None else round(steps_per_s * b * n, 1),
               "peak_mem_mb": mem.peak_mb, "params": sum(p.numel() for p in model.parameters())}
    facts = {**encoder_facts(enc_cfg), **timing_facts(timing),
             "backend": getattr(model.blocks[0].attn.attention, "last_backend", None),
             "autocast": dtype in REDUCED_PRECISION, "optimizer": "AdamW", "input_seed": seed}
    m = Measurement(metrics, facts, encoder_variant_config(case.variant, enc_cfg, n, knobs),
                    timings_ms=timing.times_ms)
    if last_loss and not bool(torch.isfinite(last_loss[0])):
        m.status, m.message = "nan", "non-finite training loss in the timed steps"
    return m


register(Mode("model_step", order=30, axes=dtype_axes("model_step"), measure=measure, metric="steps_per_s",
              title="steps/s", section="model_step",
              rules=ENCODER_RULES + (Float("lr", low=0, open_low=True, example=1e-4),),
              problems=divisibility_problems("model_step"), task_shaped=True,
              tables=(PEAK_MEMORY_TABLE,)))
