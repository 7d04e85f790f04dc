"""Mode ``train_overhead`` (not in the default ``modes``): how much slower the real ``lra-train``
step is than the model's forward+backward alone, at one task shape.

Case: the encoder of the ``train_overhead:`` section (null sizes: ``model_step``'s) on
ListOps-like padded tokens (:func:`overhead_data`), at every grid ``dtype`` and
``train_overhead.lengths``, batch ``train_overhead.batch_size``. Optimizer and schedule come from
``conf/task/<task>.yaml`` over ``conf/trainer/lra.yaml``, as ``lra-train`` resolves them
(:func:`overhead_trainer`). Three timings, each of ``steps_per_call`` consecutive steps per timed
call (default the trainer's ``log_every``) divided by that count, timed in interleaved rounds
(:func:`lra.timing.time_interleaved`):

* ``ms_model_fwd_bwd``: forward under autocast, cross-entropy, ``zero_grad`` + backward on one
  fixed on-device batch;
* ``ms_model_fwd_bwd_opt``: the same plus gradient clipping and the AdamW step;
* ``ms_train_step``: ``TrainStep``, the very code ``lra-train`` runs (batch fetch from
  :class:`lra.data.DeviceBatches`, autocast, loss, backward, clip, AdamW, scheduler, on-device
  NaN and metric bookkeeping), ending each call with the loop's host sync (``TrainStep.boundary``).

Metrics: the three times (with ``_p10``/``_p90``), ``overhead_pct`` (train step over
forward+backward), split into ``optimizer_pct`` (clip + AdamW) and ``loop_pct`` (the rest: batch
fetch, scheduler, bookkeeping, sync), ``steps_per_s``, ``tokens_per_s``, ``peak_mem_mb``,
``params``. With ``bucketing``, the train step also on length-bucketed batches of the same data
(``ms_train_step_bucketed``, ``real_tokens_per_s(_bucketed)``, ``padded_fraction(_bucketed)``,
``bucketing_speedup``). Evaluation and checkpointing are outside, as they are outside
``lra-train``'s ``steps_per_s``. Timing rules: ``docs/numerics.md``.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from .. import conf_dir, schema
from ..compiled import CompiledModel
from ..data import DeviceBatches
from ..model import Encoder
from ..schema import Bool, ConfigError, Float, Int
from ..timing import PeakMemory, time_interleaved
from ..training.config import merge_layers
from ..training.optim import make_optimizer
from ..training.step import TrainStep
from .case import Case, Measurement
from .encoder import (ENCODER_RULES, divisibility_problems, dtype_axes, encoder_config, encoder_facts,
                      encoder_variant_config)
from .measuring import REDUCED_PRECISION, time_metrics, timing_facts, timing_kw
from .registry import Mode, register
from .settings import DTYPES, plain

RULES = ENCODER_RULES + (
    Float("min_fraction", low=0, high=1, open_low=True, means="shortest real length / N", example=0.25),
    Int("examples", optional=True, example=1000), Int("steps_per_call", example=5),
    Int("warmup", low=0, example=1), Int("repeats", example=3), Bool("compile"), Bool("bucketing"),
    Int("bucket_multiple", example=128))


def defaults(s: dict) -> None:
    """Null model sizes and batch are ``model_step``'s; null ``warmup``/``repeats`` the grid's."""
    to = s["train_overhead"]
    for key in ("layers", "d_model", "heads", "mlp_dim", "batch_size"):
        if to.get(key) is None:
            to[key] = s["model_step"].get(key)
    for key in ("warmup", "repeats"):
        if to.get(key) is None:
            to[key] = s[key]


def finish(s: dict, running: bool) -> None:
    """When the mode runs: the trainer settings it times (checked) and ``steps_per_call``."""
    to = s["train_overhead"]
    if running:
        to["trainer"] = overhead_trainer(to.get("task") or "listops", to.get("trainer"))
        schema.check(to["trainer"], schema.TRAINER, prefix="train_overhead.trainer.")
        if to.get("steps_per_call") is None:
            to["steps_per_call"] = int(to["trainer"].get("log_every", 50))


def overhead_trainer(task: str, overrides: dict | None = None) -> dict[str, Any]:
    """Trainer settings of ``lra-train task=<task>`` (``conf/task/<task>.yaml``'s ``trainer:``
    under ``conf/trainer/lra.yaml``, layered as ``lra-train`` does), then ``overrides``."""
    path = conf_dir() / "task" / f"{task}.yaml"
    if not path.is_file():
        raise ConfigError(f"train_overhead.task={task!r}: no {path}")
    trainer = OmegaConf.load(conf_dir() / "trainer" / "lra.yaml")
    trainer = {k: v for k, v in OmegaConf.to_container(trainer, resolve=True).items()
               if k not in ("defaults", "task_overrides", "model_overrides")}
    tr = merge_layers(OmegaConf.load(path).get("trainer"), trainer, plain(overrides) or {})
    for key in ("lr", "schedule", "warmup", "steps"):
        if key not in tr:
            raise ConfigError(f"train_overhead: trainer.{key} is not set for task {task!r}")
    return tr


def overhead_data(examples: int, n: int, vocab_size: int, num_classes: int, min_fraction: float, seed: int):
    """ListOps-like padded token data on the CPU: ``(inputs (examples, n), labels)``; each
    example's real length is uniform in ``[min_fraction * n, n]``, token ids in ``[1, vocab)``,
    0 = padding, stored compactly (int8 when the vocabulary allows) as the tasks store them."""
    gen = torch.Generator().manual_seed(seed)
    lo = max(1, min(n, int(min_fraction * n)))
    lengths = torch.randint(lo, n + 1, (examples,), generator=gen)
    tokens = torch.randint(1, vocab_size, (examples, n), generator=gen)
    tokens[torch.arange(n)[None, :] >= lengths[:, None]] = 0
    labels = torch.randint(0, num_classes, (examples,), generator=gen)
    return tokens.to(torch.int8 if vocab_size <= 127 else torch.int32), labels


def measure(case: Case, s: dict, device: torch.device) -> Measurement:
    """``train_overhead``: the real training step (``TrainStep``) against the model's
    forward+backward alone (and forward+backward+optimizer) at the same shapes."""
    to = s["train_overhead"]
    tr = to["trainer"]
    dtype = DTYPES[case.dtype]
    amp = dtype if dtype in REDUCED_PRECISION else None   # as lra-train's trainer.precision
    b, n = case.batch_size, case.seq_len
    per_call, warmup, repeats = int(to["steps_per_call"]), int(to["warmup"]), int(to["repeats"])
    if per_call < 1:
        raise ValueError(f"train_overhead.steps_per_call must be >= 1, got {per_call}")
    seed = int(s.get("seed") or 0)
    knobs = s["knobs"][case.variant]
    # enough examples that every timed step of the train loop lies in one epoch (with LRA's
    # 96K ListOps examples a new permutation comes once per 3,000 steps)
    examples = int(to.get("examples") or b * ((warmup + repeats) * per_call + 1))
    inputs, labels = overhead_data(examples, n, int(to["vocab_size"]), int(to["num_classes"]),
                                   float(to.get("min_fraction", 0.25)), seed)
    enc_cfg = encoder_config(to, case.variant, n, {**knobs, "seed": seed}, pos_emb="learned")
    torch.manual_seed(seed)
    with PeakMemory(device) as mem:
        model = Encoder(enc_cfg).to(device).train()
        opt, sched = make_optimizer(model, tr)
        batches = DeviceBatches(inputs, labels, b, device, pad_id=0, shuffle=True, seed=seed)
        step_fn = CompiledModel(model, device=device) if to.get("compile") else model   # as trainer.compile
        train_step = TrainStep(model, step_fn, opt, sched, batches, amp, tr.get("grad_clip"))
        bucketed = None
        if to.get("bucketing"):  # the same step on length-bucketed batches of the same data (lra.bucketing)
            bucketed = DeviceBatches(inputs, labels, b, device, pad_id=0, shuffle=True, seed=seed,
                                     bucket_multiple=int(to.get("bucket_multiple") or 128))
            bucketed_step = TrainStep(model, step_fn, opt, sched, bucketed, amp, tr.get("grad_clip"))
        x, mask, y = batches.batch(0)   # the fixed batch of the model-only timings
        mem.mark()
        clip = tr.get("grad_clip")

        def model_steps(with_opt: bool):
            def fn():
                for _ in range(per_call):
                    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                        logits = step_fn(x, mask)
                    loss = F.cross_entropy(logits.float(), y)
                    model.zero_grad(set_to_none=True)
                    loss.backward()
                    if with_opt:
                        if clip:
                            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                        opt.step()
            return fn

        first_bad = [-1]
        steps_run = {}

        def train_steps(ts, name):
            steps_run[name] = 0

            def fn():
                for _ in range(per_call):
                    ts(steps_run[name])
                    steps_run[name] += 1
                bad, _ = ts.boundary()      # the loop's host sync, once per log_every steps
                if bad >= 0 and first_bad[0] < 0:
                    first_bad[0] = bad
            return fn

        fns = {"model_fwd_bwd": model_steps(False), "model_fwd_bwd_opt": model_steps(True),
               "train_step": train_steps(train_step, "train_step")}
        if bucketed is not None:
            fns["train_step_bucketed"] = train_steps(bucketed_step, "train_step_bucketed")
        timings = time_interleaved(fns, device=device, **{**timing_kw(s), "warmup": warmup, "repeats": repeats})
    ms = {name: t.median_ms / per_call for name, t in timings.items()}
    fb, fbo, full = ms["model_fwd_bwd"], ms["model_fwd_bwd_opt"], ms["train_step"]
    metrics: dict[str, Any] = time_metrics(timings["train_step"], per_call)
    for name, t in timings.items():
        metrics[f"ms_{name}"] = round(ms[name], 5)
        metrics[f"ms_{name}_p10"] = round(t.p10_ms / per_call, 5)
        metrics[f"ms_{name}_p90"] = round(t.p90_ms / per_call, 5)
    metrics.update({"overhead_pct": round(100 * (full - fb) / fb, 3),
                    "optimizer_pct": round(100 * (fbo - fb) / fb, 3),
                    "loop_pct": round(100 * (full - fbo) / fb, 3),
                    "steps_per_s": round(1e3 / full, 4), "tokens_per_s": round(1e3 / full * b * n, 1),
                    "peak_mem_mb": mem.peak_mb, "params": sum(p.numel() for p in model.parameters())})
    bucket_lengths = None
    if bucketed is not None:  # real (non-padding) tokens per second: mean over the steps run / mean timed step
        rates = {}
        for name, db in (("train_step", batches), ("train_step_bucketed", bucketed)):
            positions, real, bucket_lengths = db.token_counts(steps_run[name])  # the bucketed one's stays
            mean_ms = sum(timings[name].times_ms) / len(timings[name].times_ms) / per_call
            rates[name] = real / steps_run[name] / mean_ms * 1e3
            metrics["padded_fraction" + name[len("train_step"):]] = round(1 - real / positions, 4)
        metrics["real_tokens_per_s"] = round(rates["train_step"], 1)
        metrics["real_tokens_per_s_bucketed"] = round(rates["train_step_bucketed"], 1)
        metrics["bucketing_speedup"] = round(rates["train_step_bucketed"] / rates["train_step"], 4)
    facts = {**encoder_facts(enc_cfg), **timing_facts(timings["train_step"]),
             "steps_per_call": per_call, "examples": examples, "input_seed": seed,
             "trainer_task": to.get("task"), "grad_clip": clip, "schedule": tr.get("schedule"),
             "compile": step_fn.facts() if isinstance(step_fn, CompiledModel) else False,
             "autocast": amp is not None, "optimizer": "AdamW",
             "bucketing": bool(to.get("bucketing")),
             **({"bucket_lengths": sorted(bucket_lengths)} if bucket_lengths is not None else {}),
             "backend": getattr(model.blocks[0].attn.attention, "last_backend", None)}
    m = Measurement(metrics, facts, encoder_variant_config(case.variant, enc_cfg, n, {**knobs, "seed": seed}),
                    timings_ms=[x / per_call for x in timings["train_step"].times_ms],
                    timings_ms_by_part={name: [x / per_call for x in t.times_ms] for name, t in timings.items()})
    if first_bad[0] >= 0:
        m.status, m.message = "nan", f"non-finite training loss at timed step {first_bad[0]}"
    return m


register(Mode("train_overhead", order=60, axes=dtype_axes("train_overhead"), measure=measure,
              metric="overhead_pct", title="% training-step time over model forward+backward",
              section="train_overhead", rules=RULES, defaults=defaults,
              problems=divisibility_problems("train_overhead"), finish=finish, task_shaped=True,
              tables=(("ms_model_fwd_bwd", "model forward+backward (ms per step, median)"),
                      ("ms_model_fwd_bwd_opt", "model forward+backward+clip+AdamW (ms per step, median)"),
                      ("ms_train_step", "lra-train step (lra.training.step.TrainStep) (ms per step, median)"))))
