"""The optimizer and its learning-rate schedule, as both training loops use them.

:func:`make_optimizer` builds AdamW (weight decay on the chosen parameters) and its schedule from
a settings dict (``trainer.*``, or ``pretrain.*`` for self-pretraining); :func:`lr_factor` is the
multiplier of the base learning rate per step for the LambdaLR schedules.
"""
from __future__ import annotations

import math

import torch


def lr_factor(schedule: str, warmup: int, steps: int):
    """Multiplier of the base lr for optimizer step s (0-based: update s uses factor(s)).

    ``rsqrt`` and ``cosine`` are the LRA reference's ``create_learning_rate_scheduler`` factors
    (lra_benchmarks/utils/train_utils.py), evaluated at its step counter, which starts at 0 (so the
    first update has lr 0): ``constant * linear_warmup * rsqrt_decay`` = min(1, s/w) / sqrt(max(s, w));
    ``constant * linear_warmup * cosine_decay`` = min(1, s/w) * 0.5 (1 + cos(pi ((s - w)+ / steps mod 1)))
    with steps_per_cycle = the run's steps, as every LRA image config sets it. ``linear``: warm-up
    to the base lr, then linear decay to 0 (the quick trainer's). ``constant``: min(1, s/w), then
    constant (transformers' get_constant_schedule_with_warmup, the self-pretraining code's
    ``constant_warmup``). ``onecycle`` is torch's OneCycleLR, built in :func:`make_optimizer`.
    """
    w = max(warmup, 1)

    def rsqrt(s):  # LRA: constant * linear_warmup * rsqrt_decay
        return min(1.0, s / w) / math.sqrt(max(s, w))

    def linear(s):
        if s < warmup:
            return (s + 1) / warmup
        return max(0.0, (steps - s) / max(1, steps - warmup))

    def cosine(s):  # LRA: constant * linear_warmup * cosine_decay
        progress = max(0.0, (s - warmup) / max(1, steps))
        return min(1.0, s / w) * max(0.0, 0.5 * (1 + math.cos(math.pi * (progress % 1.0))))

    def constant(s):  # transformers.get_constant_schedule_with_warmup
        return s / w if s < warmup else 1.0

    return {"rsqrt": rsqrt, "linear": linear, "cosine": cosine, "constant": constant}[schedule]


def make_optimizer(model: torch.nn.Module, tr: dict):
    """AdamW and its schedule: ``betas``, ``eps`` (default 1e-8), ``weight_decay`` on
    ``weight_decay_params`` (``all`` | ``matrices``: every >= 2-D tensor but position embeddings),
    ``schedule`` (a LambdaLR of :func:`lr_factor`, or torch's OneCycleLR for ``onecycle``:
    linear anneal from lr/25 up to lr over ``warmup`` steps and down to lr/25e4 at ``steps``,
    beta1 cycled 0.95 -> 0.85 -> 0.95, as the Nystromformer LRA code runs it)."""
    decay = tr.get("weight_decay", 0.0)
    if tr.get("weight_decay_params", "matrices") == "all":
        groups = [{"params": list(model.parameters()), "weight_decay": decay}]
    else:
        matrix = {id(p) for n, p in model.named_parameters() if p.dim() >= 2 and "pos" not in n}
        groups = [{"params": [p for p in model.parameters() if id(p) in matrix], "weight_decay": decay},
                  {"params": [p for p in model.parameters() if id(p) not in matrix], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=tr["lr"], betas=tuple(tr.get("betas") or (0.9, 0.98)),
                            eps=float(tr.get("eps") or 1e-8),
                            fused=next(model.parameters()).is_cuda or None)  # one fused kernel on CUDA
    steps, warmup = int(tr["steps"]), int(tr["warmup"])
    if tr["schedule"] == "onecycle":
        # OneCycleLR divides by each phase's length: both need >= 1 step, so a warm-up as long as the
        # run (a short run under a recipe's warm-up) peaks at the last-but-one step instead of failing
        peak = min(warmup, steps - 1)
        if peak < warmup:
            print(f"[lra] trainer.warmup={warmup} >= trainer.steps={steps}: the one-cycle schedule peaks at step {peak}")
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tr["lr"], total_steps=steps,
                                                    pct_start=peak / steps, anneal_strategy="linear")
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(tr["schedule"], warmup, steps))
    return opt, sched
