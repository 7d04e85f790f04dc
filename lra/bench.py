"""``lra-bench``: speed, memory, approximation error and smoothness of attention variants.

A Hydra app (``conf/bench.yaml``). It runs a grid of cases -- variant x length x batch x
dtype x mode -- and writes one result record per case (:func:`lra.results.make_record`,
``kind="bench"``) into ``<job dir>/records/`` and, with ``results_dir=...``, a copy there.
No data is needed; every input is random and seeded.

Modes (``case.mode`` in the record):

``op_fwd`` / ``op_fwd_bwd``
    The variant alone on random ``(B, H, N, D)`` q, k, v, built with ``max_length=N``.
    ``op_fwd`` runs under ``torch.no_grad`` in eval mode; ``op_fwd_bwd`` runs forward plus
    ``torch.autograd.grad`` of a fixed random output gradient w.r.t. q, k, v and the
    variant's parameters, in train mode. Reduced precision (``dtype=bfloat16``) means bf16
    inputs under ``torch.autocast`` (as the encoder runs them; some variants keep fp32
    parameters). Metrics: ``ms`` (median), ``ms_p10``/``ms_p90``, ``ms_fwd`` or
    ``ms_fwd_bwd``, ``peak_mem_mb``, ``input_mem_mb``, ``flops``, ``tflops``, ``tflops_fraction``.
``model_step``
    One training step (forward, cross-entropy, backward, AdamW step) of
    :class:`lra.model.Encoder` at an LRA task shape (default Text). Metrics: ``ms_step``,
    ``steps_per_s``, ``tokens_per_s``, ``peak_mem_mb``, ``params``.
``train_overhead`` (not in the default ``modes``)
    How much slower the real ``lra-train`` step is than the model's forward+backward alone,
    at one task shape (default: ListOps-like padded tokens, the ``model_step`` model sizes).
    Three timings, each of ``steps_per_call`` consecutive steps per timed call (default the
    trainer's ``log_every``) divided by that count, timed in interleaved rounds
    (:func:`lra.timing.time_interleaved`): ``ms_model_fwd_bwd`` -- forward under
    autocast, cross-entropy, ``zero_grad`` + backward on one fixed on-device batch;
    ``ms_model_fwd_bwd_opt`` -- the same plus gradient clipping and the AdamW step;
    ``ms_train_step`` -- :class:`lra.train.TrainStep`, the very code ``lra-train`` runs (batch
    fetch from :class:`lra.data.DeviceBatches`, autocast, loss, backward, clip, AdamW,
    scheduler, on-device NaN and metric bookkeeping), ending each call with the loop's host
    sync (``TrainStep.boundary``). Optimizer and schedule settings come from
    ``conf/task/<task>.yaml`` over ``conf/trainer/lra.yaml``, as ``lra-train`` resolves them.
    Metrics: the three times (with ``_p10``/``_p90``), ``overhead_pct`` (train step over
    forward+backward), split into ``optimizer_pct`` (clip + AdamW) and ``loop_pct`` (the rest:
    batch fetch, scheduler, bookkeeping, sync), ``steps_per_s``, ``tokens_per_s``,
    ``peak_mem_mb``, ``params``. Evaluation and checkpointing are outside, as they are outside
    ``lra-train``'s ``steps_per_s``.
``exactness``
    ``approx_error = ||out - exact||_F / ||exact||_F`` against
    :func:`reference_attention` (float64 end to end) on the same inputs, for
    input patterns ``random`` (q, k, v ~ N(0, 1)) and ``concentrated`` (each query built from
    a few keys, q and k scaled up: peaked attention). Averaged over ``exactness.seeds`` draws
    of inputs and variant seeds (``approx_error_max``: the worst). A learned feature map
    (hedgehog, taylor, random_feature's sigma) is first fitted to softmax weights for
    ``exactness.fit_steps`` steps on fresh draws of the pattern (``approx_error_init``: before).
    Beside it, Hedgehog's measures of the attention weights, for every variant
    (:mod:`lra.attention_measures`): ``entropy`` (spikiness), ``softmax_entropy``,
    ``monotonicity`` (Spearman of the weights with q.k) and ``weight_kl`` (KL from softmax).
``smoothness``
    ``lipschitz``: the local Lipschitz constant (Jacobian spectral norm, by power iteration) of
    ``X -> Attention(X Wq, X Wk, X Wv)`` at inputs of ``case.pattern`` (Castin, Ablin & Peyre
    2024): ``random``, ``adversarial`` and ``search`` tokens in the ball of radius
    ``case.radius`` (one head, fixed random projections), ``data`` / ``data_trained`` hidden
    states of real task sequences at an (un)trained encoder layer's attention input; also
    ``softmax_bound`` (the closed-form softmax bound at that input) and ``bound_ratio``. Extra
    radii (``smoothness.radius_sweep``) and causal settings (``case.causal``) are cases of their
    own. Details: :mod:`lra.smoothness.measure`. The summary fits ``L ~ N^alpha``.

Measurement rules (``lra.timing``): warm-up calls first (they also compile
``torch.compile`` paths); ``torch.cuda.synchronize()``; CUDA events around each timed call
(``case.timer = "cuda_event"``), ``repeats`` calls; or on CPU ``time.perf_counter``
(``"perf_counter"``) for at least ``repeats`` calls *and* until the timed calls add up to
``min_time_s`` (CPU default 0.2 s; at most ``max_repeats`` calls), so a CPU case is never five
calls inside one slow phase of the machine. The record keeps every per-call time
(``timings_ms``, top level, outside ``metrics``); ``metrics.ms`` is their median, ``ms_p10``/
``ms_p90`` the 10th/90th percentiles and ``ms_iqr_rel`` = (p75 - p25) / median their spread;
``case.repeats`` is the number of timed calls and ``case.timed_s`` their total. Peak memory:
``torch.cuda.reset_peak_memory_stats`` before the case, ``torch.cuda.max_memory_allocated``
after the warm-up and timed calls (the peak of the timed loop itself, not a separate call),
counted from what was allocated before the case; it includes the inputs (``input_mem_mb``
says how much of it they are). CPU memory is not measured (``peak_mem_mb`` null). FLOPs:
exact variants (``exact = True``: ``full``, ``flash``) use the analytic 4·B·H·N²·D forward
and, forward+backward, what the kernel that ran executes (``case.flops_convention``): 3.0x
forward on the materialized math path (``full``; ``flash`` when SDPA ran ``math``), 3.5x for
fused kernels that recompute QKᵀ in the backward pass (``flash`` on its flash / efficient /
cuDNN / xformers backends, on CPU too) (``case.flops_source = "analytic"``); the others count
matmul-like ops of one extra untimed call with ``FlopCounterMode`` (``"flop_counter"``,
convention ``"counted (FlopCounterMode)"``), except on a ``flex_attention`` backend, which it
would count as dense (``flops`` null). TFLOP/s fractions are of the device's dense BF16 peak
(``lra.timing.PEAK_BF16_TFLOPS``; null where unknown, e.g. on CPU).

Seeds: ``seed`` draws the inputs (``case.input_seed``; exactness: ``case.input_seeds``) and
seeds the variant's random projections (``variant_config.seed``). Every record's ``host``
says how many threads ran, on how many CPUs, at what load (:func:`lra.results.host_info`);
CPU threads are the job's share of the cores (``threads``, :mod:`lra.devices`), and a run
that starts with the load average above its CPUs warns loudly (records: ``host.loaded``).

All settings are checked before the first case (:mod:`lra.schema`; non-positive lengths,
sizes, counts are config errors). Exit status of ``lra-bench``: 0, 1 when a case failed
(status ``error`` or ``nan``; ``oom`` is a measured outcome), 2 on a config error.

Failures never stop the grid: an out-of-memory case is a record with status ``oom`` (and the
same variant's larger N in that mode/batch/dtype are recorded as ``oom`` with message
"skipped: smaller N already out of memory", without running); a non-finite result ``nan``;
any other exception ``error`` with its message.
"""
from __future__ import annotations

import math
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

import attention_variants as av

from . import conf_dir, schema
from .attention_measures import fitted_exactness
from .compiled import CompiledModel, raise_compile_limits
from .devices import set_job_threads
from .results import flatten, git_commit, host_info, loaded_warning, make_record, now, variant_config, write_record
from .schema import ConfigError
from .smoothness import growth_exponent
from .smoothness import measure as smoothness
from .timing import (FLOPS_COUNTED, MAX_REPEATS, PeakMemory, attention_flops, count_flops, exact_kernel, flops_convention,
                     free_memory, is_oom, peak_bf16_tflops, tflops, time_fn, time_interleaved)

MODES = ("op_fwd", "op_fwd_bwd", "model_step", "exactness", "smoothness", "train_overhead")
PATTERNS = ("random", "concentrated")
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
          "float64": torch.float64}
SKIPPED_OOM = "skipped: smaller N already out of memory"
RECORDS_DIR = "records"




# ----------------------------------------------------------------------------- configuration

def _plain(node) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) or \
        OmegaConf.is_list(node) else node


def _as_list(value) -> list:
    value = _plain(value)
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _fill(explicit: dict, defaults: dict) -> dict:
    """``explicit`` with its ``None`` values taken from ``defaults``."""
    out = dict(defaults or {})
    out.update({k: v for k, v in (explicit or {}).items() if v is not None})
    return out


def resolve_device(setting: str) -> torch.device:
    if setting in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={setting!r} but no CUDA GPU is visible; use device=auto or cpu")
    return device


def resolve_settings(cfg: DictConfig, device: torch.device) -> dict[str, Any]:
    """The effective bench settings: ``null`` values replaced by the device's defaults."""
    raw = _plain(cfg)
    all_defaults = raw.get("device_defaults") or {}
    dd = all_defaults.get(device.type) or all_defaults.get("cpu") or {}
    s: dict[str, Any] = {k: v for k, v in raw.items() if k != "device_defaults"}
    for key in ("lengths", "batch_size", "heads", "head_dim", "dtype", "repeats", "warmup", "min_time_s"):
        if s.get(key) is None:
            s[key] = dd.get(key)
        if s[key] is None:
            raise ConfigError(f"{key} is null and device_defaults.{device.type} has no {key}")
    modes = _as_list(s.get("modes"))
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ConfigError(f"unknown mode(s) {bad}; modes are {list(MODES)}")
    s["modes"] = modes
    found = schema.problems(s, schema.BENCH)
    for section in ("model_step", "exactness", "smoothness", "train_overhead"):
        s[section] = _fill(s.get(section), dd.get(section))
        if s[section].get("lengths") is None:
            s[section]["lengths"] = s["lengths"]
    to = s["train_overhead"]
    for key in ("layers", "d_model", "heads", "mlp_dim", "batch_size"):  # null = model_step's
        if to.get(key) is None:
            to[key] = s["model_step"].get(key)
    for key in ("warmup", "repeats"):
        if to.get(key) is None:
            to[key] = s[key]
    for section in ("model_step", "exactness", "smoothness", "train_overhead"):
        if section in modes:  # the sections of modes not run are not used
            found += schema.problems(s[section], schema.BENCH_SECTIONS[section], prefix=f"{section}.")
            for key in ("d_model", "heads"):
                if s[section].get(key) is None and key in {r.key for r in schema.BENCH_SECTIONS[section]}:
                    found.append(f"{section}.{key} is null and device_defaults.{device.type}.{section} has none")
    found += [f"{sec}.d_model={s[sec]['d_model']} is not divisible by {sec}.heads={s[sec]['heads']}; change either"
              for sec in ("model_step", "train_overhead") if sec in modes
              and all(isinstance(s[sec].get(k), int) and s[sec][k] > 0 for k in ("d_model", "heads"))
              and s[sec]["d_model"] % s[sec]["heads"]]
    found += schema.threads_problems(s.get("threads", "auto"))
    if found:
        raise ConfigError("; ".join(found))
    s["lengths"] = [int(n) for n in _as_list(s["lengths"])]
    s["batch_size"] = [int(b) for b in _as_list(s["batch_size"])]
    s["dtype"] = [str(d) for d in _as_list(s["dtype"])]
    for section in ("model_step", "exactness", "smoothness", "train_overhead"):
        if section in modes:
            s[section]["lengths"] = [int(n) for n in _as_list(s[section]["lengths"])]
    if "train_overhead" in modes:
        to["trainer"] = overhead_trainer(to.get("task") or "listops", to.get("trainer"))
        schema.check(to["trainer"], schema.TRAINER, prefix="train_overhead.trainer.")
        if to.get("steps_per_call") is None:
            to["steps_per_call"] = int(to["trainer"].get("log_every", 50))
    s["device"] = str(device)
    for d in s["dtype"] + [s["exactness"]["dtype"], s["smoothness"]["dtype"]]:
        if d not in DTYPES:
            raise ConfigError(f"unknown dtype {d!r}; choose one of {sorted(DTYPES)}")
    try:
        smoothness.check_settings(s["smoothness"])
    except ValueError as err:
        raise ConfigError(str(err)) from None
    patterns = _as_list(s["exactness"].get("patterns") or list(PATTERNS))
    bad = [p for p in patterns if p not in PATTERNS]
    if bad:
        raise ConfigError(f"unknown exactness pattern(s) {bad}; patterns are {list(PATTERNS)}")
    s["exactness"]["patterns"] = patterns
    s["variants"] = resolve_variants(s.get("variants"))
    s["knobs"] = {name: variant_knobs(name, (raw.get("knobs") or {}).get(name)) for name in s["variants"]}
    if "exactness" in modes:
        for name, knobs in (s["exactness"].get("knobs") or {}).items():
            if name in s["variants"]:
                variant_knobs(name, {**s["knobs"][name], **(knobs or {})})
    return s


def overhead_trainer(task: str, overrides: dict | None = None) -> dict[str, Any]:
    """Trainer settings of ``lra-train task=<task>`` (``conf/task/<task>.yaml``'s ``trainer:``
    under ``conf/trainer/lra.yaml``, resolved as :func:`lra.train.resolve` does), then ``overrides``."""
    from .train import _merge  # noqa: PLC0415

    path = conf_dir() / "task" / f"{task}.yaml"
    if not path.is_file():
        raise ConfigError(f"train_overhead.task={task!r}: no {path}")
    trainer = OmegaConf.load(conf_dir() / "trainer" / "lra.yaml")
    trainer = {k: v for k, v in OmegaConf.to_container(trainer, resolve=True).items()
               if k not in ("defaults", "task_overrides", "model_overrides")}
    tr = _merge(OmegaConf.load(path).get("trainer"), trainer, _plain(overrides) or {})
    for key in ("lr", "schedule", "warmup", "steps"):
        if key not in tr:
            raise ConfigError(f"train_overhead: trainer.{key} is not set for task {task!r}")
    return tr


def resolve_variants(setting) -> list[str]:
    known = av.available()
    if setting in (None, "all"):
        return known
    names = [str(n) for n in _as_list(setting)]
    if "all" in names:
        names = known + [n for n in names if n != "all" and n not in known]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"unknown attention variant(s) {unknown}; available: {', '.join(known)}")
    return list(dict.fromkeys(names))


def variant_knobs(name: str, overrides: dict | None = None) -> dict[str, Any]:
    """A variant's knobs: ``conf/attention/<name>.yaml`` (without ``name``), then ``overrides``."""
    knobs: dict[str, Any] = {}
    path = conf_dir() / "attention" / f"{name}.yaml"
    if path.is_file():
        knobs = OmegaConf.to_container(OmegaConf.load(path), resolve=True) or {}
        knobs.pop("name", None)
    knobs.update(_plain(overrides) or {})
    knobs = {k: v for k, v in knobs.items() if v is not None}
    try:
        av.make_config(name, **knobs)
    except TypeError as err:
        raise ConfigError(str(err)) from None
    schema.check(knobs, schema.knob_rules(name, av.get(name)[1]), prefix=f"knobs.{name}.")
    return knobs


# ----------------------------------------------------------------------------- the grid

@dataclass(frozen=True)
class Case:
    mode: str
    variant: str
    seq_len: int
    batch_size: int | None = None
    dtype: str | None = None
    pattern: str | None = None
    radius: float | None = None     # smoothness: the ball's radius of a synthetic pattern
    causal: bool = False            # smoothness: the variant built with its causal knobs

    def _parts(self, eq: str) -> list[str]:
        """mode, variant, N, B, dtype, pattern, R, causal (those set); ``eq`` joins a letter to its value."""
        parts = [self.mode, self.variant, f"N{eq}{self.seq_len}"]
        if self.batch_size is not None:
            parts.append(f"B{eq}{self.batch_size}")
        parts += [p for p in (self.dtype, self.pattern) if p]
        if self.radius is not None:
            parts.append(f"R{eq}{self.radius:g}")
        return parts + (["causal"] if self.causal else [])

    def label(self) -> str:
        return " ".join(self._parts("="))

    def group(self) -> tuple:
        """Cases that differ only in N: an OOM at one N skips the larger ones."""
        return (self.mode, self.variant, self.batch_size, self.dtype, self.pattern, self.radius, self.causal)

    def filename(self) -> str:
        return "-".join(self._parts("")) + ".json"


def plan(s: dict[str, Any]) -> list[Case]:
    """Every case of the grid, N ascending innermost (so OOM skipping sees small N first)."""
    cases: list[Case] = []
    for mode in s["modes"]:
        for variant in s["variants"]:
            if mode in ("op_fwd", "op_fwd_bwd"):
                for dtype in s["dtype"]:
                    for b in s["batch_size"]:
                        cases += [Case(mode, variant, n, b, dtype) for n in sorted(s["lengths"])]
            elif mode == "model_step":
                ms = s["model_step"]
                for dtype in s["dtype"]:
                    cases += [Case(mode, variant, n, int(ms["batch_size"]), dtype) for n in sorted(ms["lengths"])]
            elif mode == "train_overhead":
                to = s["train_overhead"]
                for dtype in s["dtype"]:
                    cases += [Case(mode, variant, n, int(to["batch_size"]), dtype) for n in sorted(to["lengths"])]
            elif mode == "exactness":
                ex = s["exactness"]
                for pattern in ex["patterns"]:
                    cases += [Case(mode, variant, n, int(ex["batch_size"]), ex["dtype"], pattern)
                              for n in sorted(ex["lengths"])]
            elif mode == "smoothness":
                sm = s["smoothness"]
                for pattern, radius, causal in smoothness.plan_axes(variant, sm):
                    cases += [Case(mode, variant, n, 1, sm["dtype"], pattern, radius, causal)
                              for n in sorted(sm["lengths"])]
    return cases


# ----------------------------------------------------------------------------- measurements

@dataclass
class Measurement:
    metrics: dict[str, Any]
    facts: dict[str, Any]          # goes into the record's ``case``
    variant_config: dict[str, Any]
    status: str = "ok"
    message: str | None = None
    timings_ms: list[float] | None = None   # raw per-call times behind metrics["ms"] (record's ``timings_ms``)
    timings_ms_by_part: dict[str, list[float]] | None = None  # train_overhead: each timed function's times


def _autocast(device: torch.device, dtype: torch.dtype):
    """Autocast for reduced precision (fp32 parameters of some variants stay fp32)."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype in (torch.bfloat16, torch.float16))


def _time_metrics(timing, per_call: int = 1) -> dict:
    """``ms`` (median), ``ms_p10``/``ms_p90`` and ``ms_iqr_rel`` = (p75 - p25) / median, the
    spread of the per-call times (0.05: the middle half of the calls lie within 5% of the
    median's size); times divided by ``per_call`` (steps per timed call)."""
    iqr = timing.iqr_rel
    return {"ms": round(timing.median_ms / per_call, 5), "ms_p10": round(timing.p10_ms / per_call, 5),
            "ms_p90": round(timing.p90_ms / per_call, 5), "ms_iqr_rel": None if iqr is None else round(iqr, 4)}


def _timing_facts(timing) -> dict:
    return {"timer": timing.timer, "warmup": timing.warmup, "repeats": timing.repeats,
            "timed_s": round(timing.total_s, 6)}


def _speed_metrics(timing, prefix_metric: str, flops: int | None, device_name: str | None) -> dict:
    t = tflops(flops, timing.median_ms)
    peak = peak_bf16_tflops(device_name)
    return {**_time_metrics(timing), prefix_metric: round(timing.median_ms, 5), "flops": flops,
            "tflops": None if t is None else round(t, 4),
            "tflops_fraction": None if (t is None or peak is None) else round(t / peak, 5)}


def _timing_kw(s: dict) -> dict:
    """Keyword arguments of :func:`lra.timing.time_fn` from the settings."""
    return {"warmup": int(s["warmup"]), "repeats": int(s["repeats"]), "min_time_s": float(s.get("min_time_s") or 0),
            "max_repeats": int(s.get("max_repeats") or MAX_REPEATS)}


def _encoder_facts(enc_cfg) -> dict:
    """The encoder shape (an :class:`lra.model.EncoderConfig`) of a model_step / train_overhead case."""
    return {"heads": enc_cfg.heads, "head_dim": enc_cfg.d_model // enc_cfg.heads, "layers": enc_cfg.layers,
            "d_model": enc_cfg.d_model, "mlp_dim": enc_cfg.mlp_dim}


def _encoder_variant_config(variant: str, enc_cfg, n: int, knobs: dict) -> dict:
    """The record's ``variant_config`` of the attention inside an encoder at length ``n`` (one
    more position for the CLS token)."""
    return variant_config(variant, heads=enc_cfg.heads, head_dim=enc_cfg.d_model // enc_cfg.heads,
                          max_length=n + (enc_cfg.pooling == "cls"), **knobs)


def _device_name(device: torch.device) -> str | None:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else None


def measure_op(case: Case, s: dict, device: torch.device) -> Measurement:
    """``op_fwd`` / ``op_fwd_bwd``: the variant alone on random inputs."""
    backward = case.mode == "op_fwd_bwd"
    dtype = DTYPES[case.dtype]
    b, h, n, d = case.batch_size, int(s["heads"]), case.seq_len, int(s["head_dim"])
    seed = int(s.get("seed") or 0)
    build_cfg = {"heads": h, "head_dim": d, "max_length": n, "seed": seed, **s["knobs"][case.variant]}
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
                with _autocast(device, dtype):
                    out = attn(q, k, v)
                torch.autograd.grad(out, (q, k, v, *params), grad_out.to(out.dtype), allow_unused=True)
        else:
            def fn():
                with torch.no_grad(), _autocast(device, dtype):
                    attn(q, k, v)

        timing = time_fn(fn, device=device, **_timing_kw(s))
    backend = getattr(attn, "last_backend", None)
    mode_key = "fwd_bwd" if backward else "fwd"
    flops, source, convention = None, None, None
    if getattr(cls, "exact", False):
        kernel = exact_kernel(backend)
        flops, source = attention_flops(b, h, n, d, mode_key, kernel=kernel), "analytic"
        convention = flops_convention(mode_key, kernel)
    elif backend == "flex":
        source = "none: FlopCounterMode counts flex_attention as dense"
    elif s.get("count_flops", True):
        def count_fn():  # FlopCounterMode's module hooks do not support torch.autograd.grad
            if not backward:
                return fn()
            with _autocast(device, dtype):
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
    metrics = _speed_metrics(timing, f"ms_{mode_key}", flops, _device_name(device))
    metrics.update({"peak_mem_mb": mem.peak_mb, "input_mem_mb": mem.inputs_mb})
    facts = {"heads": h, "head_dim": d, **_timing_facts(timing), "backend": backend, "flops_source": source,
             "flops_convention": convention, "input_seed": seed,
             "autocast": dtype in (torch.bfloat16, torch.float16), "exact": bool(getattr(cls, "exact", False)),
             "complexity": getattr(cls, "complexity", None)}
    return Measurement(metrics, facts, variant_config(case.variant, **build_cfg), timings_ms=timing.times_ms)


def measure_model_step(case: Case, s: dict, device: torch.device) -> Measurement:
    """``model_step``: one training step of the encoder (forward, backward, AdamW)."""
    from .model import Encoder, EncoderConfig  # noqa: PLC0415

    ms = s["model_step"]
    dtype = DTYPES[case.dtype]
    b, n = case.batch_size, case.seq_len
    seed = int(s.get("seed") or 0)
    knobs = {**s["knobs"][case.variant], "seed": seed}
    enc_cfg = EncoderConfig(vocab_size=int(ms["vocab_size"]), num_classes=int(ms["num_classes"]), max_length=n,
                            d_model=int(ms["d_model"]), heads=int(ms["heads"]), mlp_dim=int(ms["mlp_dim"]),
                            layers=int(ms["layers"]), dropout=float(ms.get("dropout", 0.1)),
                            pooling=ms.get("pooling", "cls"), pos_emb=ms.get("pos_emb", "sinusoidal"),
                            attention=case.variant, attention_cfg=dict(knobs))
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
            with _autocast(device, dtype):
                logits = model(tokens)
            loss = F.cross_entropy(logits.float(), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            last_loss[:] = [loss.detach()]

        timing = time_fn(step, device=device, **_timing_kw(s))
    steps_per_s = 1e3 / timing.median_ms if timing.median_ms > 0 else None
    metrics = {**_time_metrics(timing), "ms_step": round(timing.median_ms, 5),
               "steps_per_s": None if steps_per_s is None else round(steps_per_s, 4),
               "tokens_per_s": None if steps_per_s is None else round(steps_per_s * b * n, 1),
               "peak_mem_mb": mem.peak_mb, "params": sum(p.numel() for p in model.parameters())}
    facts = {**_encoder_facts(enc_cfg), **_timing_facts(timing),
             "backend": getattr(model.blocks[0].attn.attention, "last_backend", None),
             "autocast": dtype in (torch.bfloat16, torch.float16), "optimizer": "AdamW", "input_seed": seed}
    m = Measurement(metrics, facts, _encoder_variant_config(case.variant, enc_cfg, n, knobs),
                    timings_ms=timing.times_ms)
    if last_loss and not bool(torch.isfinite(last_loss[0])):
        m.status, m.message = "nan", "non-finite training loss in the timed steps"
    return m


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


def measure_train_overhead(case: Case, s: dict, device: torch.device) -> Measurement:
    """``train_overhead``: the real training step (:class:`lra.train.TrainStep`) against the
    model's forward+backward alone (and forward+backward+optimizer) at the same shapes."""
    from .data import DeviceBatches  # noqa: PLC0415
    from .model import Encoder, EncoderConfig  # noqa: PLC0415
    from .train import TrainStep, make_optimizer  # noqa: PLC0415

    to = s["train_overhead"]
    tr = to["trainer"]
    dtype = DTYPES[case.dtype]
    amp = dtype if dtype in (torch.bfloat16, torch.float16) else None   # as lra.train's trainer.precision
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
    enc_cfg = EncoderConfig(vocab_size=int(to["vocab_size"]), num_classes=int(to["num_classes"]), max_length=n,
                            d_model=int(to["d_model"]), heads=int(to["heads"]), mlp_dim=int(to["mlp_dim"]),
                            layers=int(to["layers"]), dropout=float(to.get("dropout", 0.1)),
                            pooling=to.get("pooling", "cls"), pos_emb=to.get("pos_emb", "learned"),
                            attention=case.variant, attention_cfg={**knobs, "seed": seed})
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
        timings = time_interleaved(fns, device=device, **{**_timing_kw(s), "warmup": warmup, "repeats": repeats})
    ms = {name: t.median_ms / per_call for name, t in timings.items()}
    fb, fbo, full = ms["model_fwd_bwd"], ms["model_fwd_bwd_opt"], ms["train_step"]
    metrics: dict[str, Any] = _time_metrics(timings["train_step"], per_call)
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
    facts = {**_encoder_facts(enc_cfg), **_timing_facts(timings["train_step"]),
             "steps_per_call": per_call, "examples": examples, "input_seed": seed,
             "trainer_task": to.get("task"), "grad_clip": clip, "schedule": tr.get("schedule"),
             "compile": step_fn.facts() if isinstance(step_fn, CompiledModel) else False,
             "autocast": amp is not None, "optimizer": "AdamW",
             "bucketing": bool(to.get("bucketing")),
             **({"bucket_lengths": sorted(bucket_lengths)} if bucket_lengths is not None else {}),
             "backend": getattr(model.blocks[0].attn.attention, "last_backend", None)}
    m = Measurement(metrics, facts, _encoder_variant_config(case.variant, enc_cfg, n, {**knobs, "seed": seed}),
                    timings_ms=[x / per_call for x in timings["train_step"].times_ms],
                    timings_ms_by_part={name: [x / per_call for x in t.times_ms] for name, t in timings.items()})
    if first_bad[0] >= 0:
        m.status, m.message = "nan", f"non-finite training loss at timed step {first_bad[0]}"
    return m


def exactness_inputs(pattern: str, b: int, h: int, n: int, d: int, *, seed: int, scale: float = 3.0,
                     keys_per_query: int = 4, random_scale: float = 1.0, device: torch.device | str = "cpu"):
    """float64 ``q, k, v (B, H, N, D)`` for an exactness pattern.

    ``random``: q, k, v ~ N(0, 1), q and k then multiplied by ``random_scale`` (1: logits
    ``q.k/sqrt(d) ~ N(0, 1)``). ``concentrated``: k, v ~ N(0, 1); each query is the sum of
    ``keys_per_query`` random keys plus N(0, 1) noise, normalized by ``sqrt(keys_per_query + 1)``;
    then q and k are multiplied by ``scale`` -- each query's attention concentrates on a few keys.
    """
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=gen, dtype=torch.float64) for _ in range(3))
    if pattern == "concentrated":
        c = max(1, min(int(keys_per_query), n))
        idx = torch.randint(0, n, (b, h, n, c), generator=gen)
        bi = torch.arange(b)[:, None, None, None]
        hi = torch.arange(h)[None, :, None, None]
        picked = k[bi, hi, idx]                                # (B, H, N, c, D)
        q = (q + picked.sum(dim=3)) / math.sqrt(c + 1)
        q, k = q * scale, k * scale
    elif pattern == "random":
        q, k = q * random_scale, k * random_scale
    else:
        raise ValueError(f"unknown exactness pattern {pattern!r}; patterns are {list(PATTERNS)}")
    return q.to(device), k.to(device), v.to(device)


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Exact softmax attention in float64 end to end: ``softmax(q kᵀ / sqrt(D)) v``.

    ``q, k, v: (B, H, N, D)`` (any dtype; cast to float64) -> ``(B, H, N, D)`` float64; scores,
    softmax and both products all in float64. Time O(B·H·N²·D), memory O(B·H·N²). The ground
    truth of the ``exactness`` mode (``case.reference``)."""
    q, k, v = (t.to(torch.float64) for t in (q, k, v))
    scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    return torch.matmul(torch.softmax(scores, dim=-1), v)


REFERENCE = "float64 end to end (lra.bench.reference_attention)"


#: seeds of the fitting draws start here (the measured inputs use seed + 1000 i)
FIT_SEED = 10**7
#: exactness metrics averaged over the input draws besides approx_error (lra.attention_measures.fitted_exactness)
WEIGHT_METRICS = ("approx_error_init", "fit_steps", "fit_loss_first", "fit_loss_last", "entropy", "softmax_entropy",
                  "monotonicity", "weight_kl")


def measure_exactness(case: Case, s: dict, device: torch.device) -> Measurement:
    """``exactness``: relative Frobenius error against float64 softmax attention; for a learned
    feature map after fitting it to softmax (``approx_error_init``: before), and the attention
    weights' entropy, monotonicity and KL from softmax (:func:`lra.attention_measures.fitted_exactness`)."""
    ex = s["exactness"]
    dtype = DTYPES[case.dtype]
    b, h, n, d = case.batch_size, int(ex["heads"]), case.seq_len, int(ex["head_dim"])
    # exactness-only knob overrides (e.g. nystrom without its conv on V: the approximation itself)
    knobs = {**s["knobs"][case.variant], **((ex.get("knobs") or {}).get(case.variant) or {})}
    input_seeds, variant_seeds, per_seed = [], [], []
    base_seed = int(s.get("seed") or 0)
    pattern_kw = dict(scale=float(ex.get("concentrated_scale", 3.0)), keys_per_query=int(ex.get("concentrated_keys", 4)),
                      random_scale=float(ex.get("random_scale", 1.0)), device=device)
    fit = {"steps": int(ex.get("fit_steps", 0)), "lr": float(ex.get("fit_lr", 3e-3)),
           "batch_size": int(ex.get("fit_batch_size", 2)), "queries": int(ex.get("weight_queries", 128))}
    for i in range(max(1, int(ex.get("seeds", 1)))):
        input_seeds.append(base_seed + 1000 * i)
        variant_seeds.append(base_seed + i)
        q, k, v = exactness_inputs(case.pattern, b, h, n, d, seed=input_seeds[-1], **pattern_kw)
        ref = reference_attention(q, k, v)
        attn = av.build(case.variant, **{"heads": h, "head_dim": d, "max_length": n, "seed": variant_seeds[-1],
                                         **knobs}).to(device).eval()

        def error() -> float:
            with torch.no_grad(), _autocast(device, dtype):
                out = attn(q.to(dtype), k.to(dtype), v.to(dtype))
            return float((out.double() - ref).norm() / ref.norm())

        def draw(t: int, seed: int = FIT_SEED + 10_000 * input_seeds[-1]):  # fresh draws, never the measured one
            fq, fk, _ = exactness_inputs(case.pattern, fit["batch_size"], h, n, d, seed=seed + t, **pattern_kw)
            return fq.float(), fk.float(), None

        per_seed.append(fitted_exactness(attn, q.float(), k.float(), error, draw, fit_steps=fit["steps"],
                                         lr=fit["lr"], num_queries=fit["queries"], seed=variant_seeds[-1]))
        del q, k, v, ref, attn
    errors = [m["approx_error"] for m in per_seed]
    err = sum(errors) / len(errors)
    metrics = {"approx_error": err, "approx_error_max": max(errors), "approx_seeds": len(errors),
               **{key: sum(m[key] for m in per_seed) / len(per_seed) for key in WEIGHT_METRICS if key in per_seed[0]}}
    facts = {"heads": h, "head_dim": d, "pattern": case.pattern, "reference": REFERENCE,
             "input_seeds": input_seeds, "variant_seeds": variant_seeds, "fit": fit,
             "pattern_scale": float(ex.get("concentrated_scale", 3.0) if case.pattern == "concentrated"
                                    else ex.get("random_scale", 1.0))}
    m = Measurement(metrics, facts, variant_config(case.variant, heads=h, head_dim=d, max_length=n,
                                                   **{**knobs, "seed": base_seed}))
    if not all(math.isfinite(e) for e in errors):
        m.status, m.message = "nan", "non-finite output"
    return m


def _backend_attempts(name: str, knobs: dict) -> list[dict]:
    """``knobs``, then (for variants with a ``backend`` knob) the plain differentiable paths:
    ``reference`` / ``math`` compute the same function without fused kernels, which have no
    forward-mode or double-backward derivatives."""
    import dataclasses  # noqa: PLC0415

    attempts = [dict(knobs)]
    _, config_cls = av.get(name)
    if "backend" in {f.name for f in dataclasses.fields(config_cls)}:
        attempts += [{**knobs, "backend": alt} for alt in ("reference", "math") if knobs.get("backend") != alt]
    return attempts


def measure_smoothness(case: Case, s: dict, device: torch.device) -> Measurement:
    """``smoothness``: the local Lipschitz constant at ``case.pattern`` inputs
    (:func:`lra.smoothness.measure.measure`).

    A fused backend without the needed derivatives (e.g. SDPA flash, compiled flex_attention)
    is replaced by the variant's ``reference``/``math`` backend (same function); the record
    says so in ``case.backend_fallback``."""
    sm = s["smoothness"]
    knobs = dict(s["knobs"][case.variant])
    if case.causal:
        knobs.update(smoothness.causal_knobs(case.variant, sm))
    first_error: BaseException | None = None
    fallback = None
    out = None
    for attempt in _backend_attempts(case.variant, knobs):
        try:
            out = smoothness.measure(case.variant, attempt, case.pattern or "random", case.seq_len, sm,
                                     radius=case.radius, causal=case.causal, seed=int(s.get("seed") or 0),
                                     dtype=DTYPES[case.dtype], device=device)
        except smoothness.AttentionBuildError:
            continue  # this variant has no such backend
        except Exception as err:  # noqa: BLE001 - e.g. no forward-mode / double-backward derivative
            if is_oom(err):
                raise
            if first_error is None:
                first_error = err
            fallback = _first_line(err)
            continue
        break
    if out is None:
        raise first_error or RuntimeError("no backend of this variant could be differentiated")
    cfg = {"heads": out.facts.get("heads", 1), "max_length": case.seq_len, **out.variant_config}
    if "head_dim" in out.facts:
        cfg.setdefault("head_dim", out.facts["head_dim"])
    try:
        full_cfg = variant_config(case.variant, **cfg)   # every knob with its default
    except (KeyError, TypeError, ValueError):
        full_cfg = out.variant_config
    m = Measurement(out.metrics, {**out.facts, "backend_fallback": fallback if first_error else None}, full_cfg)
    if not math.isfinite(out.metrics["lipschitz"]):
        m.status, m.message = "nan", "non-finite Lipschitz estimate"
    return m


MEASURE: dict[str, Callable[[Case, dict, torch.device], Measurement]] = {
    "op_fwd": measure_op, "op_fwd_bwd": measure_op, "model_step": measure_model_step,
    "exactness": measure_exactness, "smoothness": measure_smoothness, "train_overhead": measure_train_overhead,
}


def measure_case(case: Case, s: dict, device: torch.device) -> Measurement:
    return MEASURE[case.mode](case, s, device)


# ----------------------------------------------------------------------------- running

def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def run_grid(cases: Iterable[Case], s: dict, device: torch.device, *,
             measure: Callable[[Case, dict, torch.device], Measurement] = measure_case,
             emit: Callable[[Case, dict], None] | None = None, config: dict | None = None,
             progress: bool = True) -> list[dict[str, Any]]:
    """Measure every case; one record each. Failures become records; the grid goes on."""
    cases = list(cases)
    oom_at: dict[tuple, int] = {}
    records = []
    bar = tqdm(cases, disable=not progress, dynamic_ncols=True, unit="case")
    for case in bar:
        bar.set_description(case.label())
        started = now()
        host = host_info()
        status, message = "ok", None
        m: Measurement | None = None
        group = case.group()
        if group in oom_at and case.seq_len > oom_at[group]:
            status, message = "oom", SKIPPED_OOM
        else:
            try:
                m = measure(case, s, device)
                status, message = m.status, m.message
            except Exception as err:  # noqa: BLE001 - every failure is a record
                if is_oom(err):
                    status, message = "oom", _first_line(err)
                    oom_at[group] = min(case.seq_len, oom_at.get(group, case.seq_len))
                else:
                    status = "error"
                    message = f"{_first_line(err)}\n{traceback.format_exc(limit=6)}"
            finally:
                free_memory(device)
        if status == "ok" and m is not None:
            status, message = _measured_something(case, m)
        facts = {"mode": case.mode, "heads": None, "head_dim": None, "timer": None,
                 "pattern": case.pattern, "backend": None}
        if m is not None:
            facts.update(m.facts)
        extra = {}
        if m is not None and m.timings_ms is not None:
            extra["timings_ms"] = [round(t, 6) for t in m.timings_ms]
        if m is not None and m.timings_ms_by_part is not None:
            extra["timings_ms_by_part"] = {k: [round(t, 6) for t in v] for k, v in m.timings_ms_by_part.items()}
        record = make_record(
            "bench", variant=case.variant, task=s[case.mode].get("task") if case.mode in ("model_step", "train_overhead")
            else None,
            seq_len=case.seq_len, batch_size=case.batch_size, dtype=case.dtype, status=status, message=message,
            metrics=m.metrics if m is not None else {}, case=facts,
            variant_config=m.variant_config if m is not None else dict(s["knobs"].get(case.variant, {})),
            config=config if config is not None else s, device=device, seed=int(s.get("seed") or 0),
            started_at=started, host=host, **extra)
        records.append(record)
        if emit is not None:
            emit(case, record)
    bar.close()
    return records


def _measured_something(case: Case, m: Measurement) -> tuple[str, str | None]:
    """``ok`` only if the mode's main metric was measured and is finite; else ``error``."""
    metric = MAIN_METRIC[case.mode][0]
    value = m.metrics.get(metric)
    if value is None:
        return "error", f"measured nothing: no {metric}"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan", f"{metric} is {value}"
    return m.status, m.message


def run(cfg: DictConfig, job_dir: Path, *, raise_config_errors: bool = True,
        measure: Callable[[Case, dict, torch.device], Measurement] = measure_case) -> list[dict[str, Any]]:
    """Run the grid of ``cfg``; records go to ``job_dir/records/`` (and ``cfg.results_dir``)."""
    job_dir = Path(job_dir)
    records_dir = job_dir / RECORDS_DIR
    records_dir.mkdir(parents=True, exist_ok=True)
    results_dir = Path(cfg.results_dir) if cfg.get("results_dir") else None
    if results_dir is not None:
        results_dir.mkdir(parents=True, exist_ok=True)
    set_commit = "LRA_GIT_COMMIT" not in os.environ
    if set_commit:  # one `git` lookup per run instead of one per record
        commit = git_commit()
        if commit:
            os.environ["LRA_GIT_COMMIT"] = commit
        else:
            set_commit = False
    try:
        try:
            device = resolve_device(cfg.get("device", "auto"))
            s = resolve_settings(cfg, device)
        except ConfigError as err:
            if raise_config_errors:
                raise
            variants = _as_list(cfg.get("variants"))
            record = make_record("bench", variant=",".join(map(str, variants)), status="error",
                                 message=f"ConfigError: {err}", config=_plain(cfg), case={"mode": None})
            write_record(record, records_dir / "config-error.json")
            if results_dir is not None:
                write_record(record, results_dir)
            print(f"[lra-bench] config error: {err}", file=sys.stderr)
            return [record]
        raise_compile_limits()
        threads = set_job_threads(s.get("threads", "auto"))
        cases = plan(s)
        print(f"[lra-bench] {len(cases)} cases on {device} ({_device_name(device) or 'cpu'}, {threads} CPU "
              f"threads): variants {', '.join(s['variants'])}; modes {', '.join(s['modes'])}; records in {records_dir}")
        warning = loaded_warning(host_info())
        if warning:
            print(f"[lra-bench] {warning}", file=sys.stderr)

        def emit(case: Case, record: dict) -> None:
            write_record(record, records_dir / case.filename())
            if results_dir is not None:
                write_record(record, results_dir)

        records = run_grid(cases, s, device, measure=measure, emit=emit, config=s,
                           progress=bool(s.get("progress", True)))
    finally:
        if set_commit:
            os.environ.pop("LRA_GIT_COMMIT", None)
    if s.get("summary", True):
        print(summary(records))
    loaded = sum(bool((r.get("host") or {}).get("loaded")) for r in records)
    if loaded:
        print(f"[lra-bench] WARNING: {loaded} of {len(records)} cases started on a loaded machine (load average "
              "above the CPUs available; host.loaded=true in their records): their timings are not trustworthy.",
              file=sys.stderr)
    return records


def exit_code(records: list[dict[str, Any]]) -> int:
    """``lra-bench``'s exit status: 1 if any case failed (status ``error`` or ``nan``: nothing
    valid was measured), else 0. ``oom`` is a measured outcome (the case does not fit), not a
    failure."""
    return 1 if any(r["status"] in ("error", "nan") for r in records) else 0


# ----------------------------------------------------------------------------- summary

MAIN_METRIC = {"op_fwd": ("ms_fwd", "ms (median)"), "op_fwd_bwd": ("ms_fwd_bwd", "ms (median)"),
               "model_step": ("steps_per_s", "steps/s"), "exactness": ("approx_error", "rel. error"),
               "smoothness": ("lipschitz", "Lipschitz estimate"),
               "train_overhead": ("overhead_pct", "% training-step time over model forward+backward")}


def _cell(row, metric: str) -> str:
    if row["status"] != "ok":
        return {"oom": "OOM", "nan": "NaN", "error": "ERR"}.get(row["status"], row["status"])
    value = row.get(metric)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def summary(records: list[dict[str, Any]]) -> str:
    """Compact text tables: one per mode, variants as rows and N as columns."""
    import pandas as pd  # noqa: PLC0415

    if not records:
        return "[lra-bench] no records"
    df = pd.DataFrame([flatten(r) for r in records])
    out = []
    for mode, (metric, title) in MAIN_METRIC.items():
        sub = df[df["mode"] == mode]
        if sub.empty:
            continue
        sub = sub.copy()
        if metric not in sub:
            sub[metric] = None
        sub["cell"] = [_cell(r, metric) for _, r in sub.iterrows()]
        if mode == "smoothness" and "radius" in sub:   # data patterns have none; keep their rows
            sub["radius"] = [f"{r:g}" if isinstance(r, (int, float)) and math.isfinite(r) else "-"
                             for r in sub["radius"]]
        index = ["variant"]
        for col in ("pattern", "radius", "causal", "dtype", "batch_size"):
            if col in sub and sub[col].nunique(dropna=True) > 1:
                index.append(col)
        table = sub.pivot_table(index=index, columns="seq_len", values="cell", aggfunc="first")
        if mode == "smoothness":
            ok = sub[sub["status"] == "ok"]
            alphas = []
            for key in table.index:
                key = key if isinstance(key, tuple) else (key,)
                g = ok[(ok[index] == pd.Series(key, index=index)).all(axis=1)]
                alphas.append(_fmt_alpha(growth_exponent(list(g["seq_len"]), list(g[metric]))))
            table["alpha (L~N^a)"] = alphas
        out.append(f"\n== {mode}: {title} ==\n{table.to_string()}")
        if mode in ("op_fwd_bwd", "model_step") and "peak_mem_mb" in sub and sub["peak_mem_mb"].notna().any():
            sub["cell"] = [_cell(r, "peak_mem_mb") for _, r in sub.iterrows()]
            mem = sub.pivot_table(index=index, columns="seq_len", values="cell", aggfunc="first")
            out.append(f"\n== {mode}: peak memory (MiB) ==\n{mem.to_string()}")
        if mode == "train_overhead":
            for extra, what in (("ms_model_fwd_bwd", "model forward+backward"),
                                ("ms_model_fwd_bwd_opt", "model forward+backward+clip+AdamW"),
                                ("ms_train_step", "lra-train step (lra.train.TrainStep)")):
                if extra in sub:
                    sub["cell"] = [_cell(r, extra) for _, r in sub.iterrows()]
                    t = sub.pivot_table(index=index, columns="seq_len", values="cell", aggfunc="first")
                    out.append(f"\n== {mode}: {what} (ms per step, median) ==\n{t.to_string()}")
    return "\n".join(out)


def _fmt_alpha(alpha: float | None) -> str:
    return "-" if alpha is None else f"{alpha:.2f}"
