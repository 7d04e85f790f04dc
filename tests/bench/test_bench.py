"""lra-bench: timing protocol, OOM handling, exactness, the Lipschitz estimator, the Hydra app."""
from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import attention_variants as av
from lra import bench
from lra.bench import exactness, op, runner
from lra.bench import smoothness as smoothness_mode
from lra.cli import bench as cli_bench
from lra.results import load
from lra.schema import ConfigError
from lra.smoothness import growth_exponent, lipschitz_estimate
from lra.timing import (FLOP_CONVENTIONS, FLOPS_COUNTED, PerfCounterClock, attention_flops, count_flops, is_oom,
                        peak_bf16_tflops, time_fn, time_interleaved)
from conftest import compose_bench


pytestmark = pytest.mark.usefixtures("no_git")


# ----------------------------------------------------------------------------- timing

def test_timer_warms_up_syncs_then_times_and_reports_median():
    log = []
    ticks = iter([0.0, 0.003, 1.0, 1.001, 2.0, 2.002])  # durations 3, 1, 2 ms

    def clock():
        log.append("clock")
        return next(ticks)

    timing = time_fn(lambda: log.append("fn"), warmup=2, repeats=3, sync=lambda: log.append("sync"),
                     clock=PerfCounterClock(sync=lambda: log.append("sync"), clock=clock))
    repeat = ["sync", "clock", "fn", "sync", "clock"]          # sync -> start -> fn -> sync -> stop
    assert log == ["fn", "fn", "sync"] + repeat * 3 + ["sync"]  # warmup -> sync -> timed -> sync
    assert timing.median_ms == pytest.approx(2.0)
    assert timing.times_ms == pytest.approx([3.0, 1.0, 2.0])
    assert timing.p10_ms == pytest.approx(1.2) and timing.p90_ms == pytest.approx(2.8)
    assert timing.timer == "perf_counter" and timing.repeats == 3 and timing.warmup == 2


def test_event_style_clock_is_read_only_after_the_final_sync():
    """The CUDA-event structure: marks recorded around each call, elapsed read after sync."""
    log = []

    class FakeEvents:
        name = "cuda_event"

        def start(self):
            log.append("start")
            return len(log)

        def stop(self):
            log.append("stop")
            return len(log) + 1

        def elapsed_ms(self, a, b):
            log.append("elapsed")
            return float(b - a)

    timing = time_fn(lambda: log.append("fn"), warmup=1, repeats=2, sync=lambda: log.append("sync"),
                     clock=FakeEvents())
    assert log == ["fn", "sync", "start", "fn", "stop", "start", "fn", "stop", "sync", "elapsed", "elapsed"]
    assert timing.timer == "cuda_event" and timing.median_ms == pytest.approx(3.0)


def test_interleaved_timing_warms_each_up_then_rotates_rounds():
    log = []
    fns = {name: (lambda name=name: log.append(name)) for name in ("a", "b", "c")}
    timings = time_interleaved(fns, warmup=1, repeats=4)
    assert log == ["a", "b", "c"] + ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]
    assert set(timings) == {"a", "b", "c"}
    assert all(t.repeats == 4 and len(t.times_ms) == 4 and t.timer == "perf_counter" for t in timings.values())


class FakeClock(PerfCounterClock):
    """A host clock whose every call takes ``ms`` milliseconds."""

    def __init__(self, ms):
        self.t = 0.0
        super().__init__(clock=lambda: self.t)
        self.ms = ms

    def stop(self):
        self.t += self.ms / 1e3
        return self.t


def test_cpu_timing_runs_until_the_minimum_time_and_keeps_every_call():
    calls = []
    timing = time_fn(lambda: calls.append(1), warmup=1, repeats=5, min_time_s=0.2, clock=FakeClock(10.0))
    assert len(calls) == 1 + 20 and timing.repeats == 20 and len(timing.times_ms) == 20   # 20 x 10 ms = 0.2 s
    assert timing.total_s == pytest.approx(0.2) and timing.iqr_rel == pytest.approx(0.0)
    slow = time_fn(lambda: None, warmup=0, repeats=5, min_time_s=0.2, clock=FakeClock(100.0))
    assert slow.repeats == 5                                            # >= 5 calls even when 0.2 s is passed
    capped = time_fn(lambda: None, warmup=0, repeats=5, min_time_s=10.0, max_repeats=50, clock=FakeClock(1.0))
    assert capped.repeats == 50


def test_event_clocks_keep_exactly_repeats_calls():
    class Events(FakeClock):
        name, immediate = "cuda_event", False

    assert time_fn(lambda: None, warmup=0, repeats=3, min_time_s=5.0, clock=Events(1.0)).repeats == 3


def test_interleaved_rounds_run_until_every_function_has_the_minimum_time():
    fns = {"fast": lambda: None, "slow": lambda: time.sleep(0.01)}
    timings = time_interleaved(fns, warmup=0, repeats=2, min_time_s=0.05, max_repeats=20)
    assert timings["slow"].repeats == timings["fast"].repeats == 20   # fast never adds up to 0.05 s: the cap
    both = time_interleaved({"a": lambda: time.sleep(0.005), "b": lambda: time.sleep(0.005)}, warmup=0, repeats=2,
                            min_time_s=0.03, max_repeats=100)
    assert 2 < both["a"].repeats == both["b"].repeats < 100 and min(t.total_s for t in both.values()) >= 0.03


def test_flops_and_peaks():
    assert attention_flops(2, 3, 128, 64, "fwd", kernel="fused") == 4 * 2 * 3 * 128 * 128 * 64
    assert attention_flops(2, 3, 128, 64, "fwd_bwd", kernel="fused") == int(3.5 * 4 * 2 * 3 * 128 * 128 * 64)
    assert attention_flops(2, 3, 128, 64, "fwd_bwd", kernel="materialized") == 3 * 4 * 2 * 3 * 128 * 128 * 64
    assert peak_bf16_tflops("NVIDIA H100 80GB HBM3") == pytest.approx(989.4)
    assert peak_bf16_tflops("NVIDIA H200") == pytest.approx(989.4)
    assert peak_bf16_tflops("NVIDIA A100-SXM4-80GB") == pytest.approx(312.0)
    assert peak_bf16_tflops("CPU x86_64") is None and peak_bf16_tflops(None) is None
    assert is_oom(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert is_oom(RuntimeError("CUDA error: out of memory"))
    assert not is_oom(RuntimeError("shape mismatch"))


# ----------------------------------------------------------------------------- the grid

def _settings(**extra):
    s = {"model_step": {"task": "text"}, "knobs": {}, "seed": 0}
    s.update(extra)
    return s


def test_oom_is_recorded_larger_n_skipped_and_the_grid_goes_on():
    cases = [bench.Case("op_fwd", v, n, 2, "float32") for v in ("fake", "other") for n in (64, 128, 256, 512)]
    calls = []

    def measure(case, s, device):
        calls.append((case.variant, case.seq_len))
        if case.variant == "fake" and case.seq_len == 128:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
        if case.variant == "other" and case.seq_len == 256:
            raise ValueError("something else broke")
        return bench.Measurement({"ms": 1.0, "ms_fwd": 1.0}, {"timer": "perf_counter"}, {"heads": 2})

    records = bench.run_grid(cases, _settings(), torch.device("cpu"), measure=measure, progress=False)
    got = [(r["variant"], r["seq_len"], r["status"]) for r in records]
    assert got == [("fake", 64, "ok"), ("fake", 128, "oom"), ("fake", 256, "oom"), ("fake", 512, "oom"),
                   ("other", 64, "ok"), ("other", 128, "ok"), ("other", 256, "error"), ("other", 512, "ok")]
    assert ("fake", 256) not in calls and ("fake", 512) not in calls  # skipped, not run
    assert "out of memory" in records[1]["message"].lower()
    assert records[2]["message"] == runner.SKIPPED_OOM
    assert "something else broke" in records[6]["message"]
    assert all(r["kind"] == "bench" and r["case"]["mode"] == "op_fwd" for r in records)


def test_op_case_on_cpu_records_timer_flops_and_memory():
    """Peak memory on CPU (issue 31): measured in this process here (a run isolates each case:
    tests/bench/test_bench_isolation.py), and the record names the method."""
    s = _settings(heads=2, head_dim=16, repeats=2, warmup=1, count_flops=True,
                  knobs={"full": {}, "linear": {}})
    m = op.measure(bench.Case("op_fwd_bwd", "full", 64, 2, "float32"), s, torch.device("cpu"))
    assert m.facts["timer"] == "perf_counter" and m.facts["flops_source"] == "analytic"
    assert m.metrics["flops"] == attention_flops(2, 2, 64, 16, "fwd_bwd", kernel="materialized")
    assert m.metrics["ms_fwd_bwd"] > 0 and m.metrics["peak_mem_mb"] >= 0
    assert m.facts["memory_method"] == "rss_hwm_in_process"
    fwd = op.measure(bench.Case("op_fwd", "linear", 64, 2, "float32"), s, torch.device("cpu"))
    assert fwd.facts["flops_source"] == "flop_counter" and fwd.metrics["flops"] > 0
    assert fwd.facts["flops_convention"] == FLOPS_COUNTED
    both = op.measure(bench.Case("op_fwd_bwd", "linear", 64, 2, "float32"), s, torch.device("cpu"))
    assert both.facts["flops_source"] == "flop_counter" and both.metrics["flops"] > fwd.metrics["flops"]


def _full_fwd_bwd_counted(b, h, n, d):
    q, k, v = (torch.randn(b, h, n, d, requires_grad=True) for _ in range(3))
    attn = av.build("full", heads=h, head_dim=d, max_length=n)

    def fwd_bwd():
        attn(q, k, v).backward(torch.ones(b, h, n, d))

    return count_flops(fwd_bwd)


def test_exact_flops_follow_what_the_kernel_executes():
    """full runs the materialized math path: its forward+backward is 3.0x forward (FlopCounterMode
    agrees), not the 3.5x of fused kernels, which recompute QK^T in the backward pass."""
    b, h, n, d = 2, 2, 64, 16
    assert _full_fwd_bwd_counted(b, h, n, d) == attention_flops(b, h, n, d, "fwd_bwd", kernel="materialized")
    s = _settings(heads=h, head_dim=d, repeats=1, warmup=0, knobs={"full": {}, "flash": {}, "flash_math": {}})
    full = op.measure(bench.Case("op_fwd_bwd", "full", n, b, "float32"), s, torch.device("cpu"))
    assert full.metrics["flops"] == 3 * 4 * b * h * n * n * d
    assert full.facts["flops_convention"] == "fwd+bwd = 3.0 x fwd (materialized math)"
    flash = op.measure(bench.Case("op_fwd_bwd", "flash", n, b, "float32"), s, torch.device("cpu"))
    kernel = "materialized" if flash.facts["backend"] == "math" else "fused"   # whichever SDPA backend ran
    assert flash.facts["flops_convention"] == FLOP_CONVENTIONS[kernel][1]
    assert flash.metrics["flops"] == attention_flops(b, h, n, d, "fwd_bwd", kernel=kernel)
    s["knobs"]["flash"] = {"backend": "math"}
    math_path = op.measure(bench.Case("op_fwd_bwd", "flash", n, b, "float32"), s, torch.device("cpu"))
    assert math_path.facts["backend"] == "math" and math_path.metrics["flops"] == full.metrics["flops"]
    fwd = op.measure(bench.Case("op_fwd", "full", n, b, "float32"), s, torch.device("cpu"))
    assert fwd.metrics["flops"] == 4 * b * h * n * n * d and fwd.facts["flops_convention"].startswith("fwd = ")


def test_op_record_keeps_raw_times_spread_and_explicit_seed(tmp_path):
    s = _settings(heads=2, head_dim=16, repeats=3, warmup=0, min_time_s=0.0, knobs={"performer": {"num_features": 8}},
                  seed=7)
    case = bench.Case("op_fwd", "performer", 32, 1, "float32")
    rec = bench.run_grid([case], s, torch.device("cpu"), progress=False)[0]
    assert rec["status"] == "ok"
    times = rec["timings_ms"]
    assert len(times) == rec["case"]["repeats"] == 3 and "timings_ms" not in rec["metrics"]
    assert rec["metrics"]["ms"] == pytest.approx(sorted(times)[1], rel=1e-4)
    assert rec["metrics"]["ms_iqr_rel"] >= 0 and rec["case"]["timed_s"] == pytest.approx(sum(times) / 1e3, abs=2e-6)
    # the seed drives the inputs and the variant's random features, and the record says so
    assert rec["seed"] == 7 and rec["case"]["input_seed"] == 7 and rec["variant_config"]["seed"] == 7
    assert rec["variant_config"]["kernel"] == "softmax" and rec["variant_config"]["num_features"] == 8
    assert {"torch_threads", "cpus_available", "load_avg_1m", "loaded"} <= set(rec["host"])
    assert rec["device"]["count"] == rec["host"]["cpus_available"]


def test_measure_on_cpu_uses_the_minimum_time_rule():
    s = _settings(heads=2, head_dim=16, repeats=2, warmup=0, min_time_s=0.05, knobs={"linear": {}})
    m = op.measure(bench.Case("op_fwd", "linear", 16, 1, "float32"), s, torch.device("cpu"))
    assert sum(m.timings_ms) >= 50 or len(m.timings_ms) == 1000
    assert len(m.timings_ms) > 2 and m.facts["repeats"] == len(m.timings_ms)


# ----------------------------------------------------------------------------- exactness

def _exactness_error(variant, n=64, pattern="random", seeds=1, random_scale=1.0, dtype="float32", **knobs):
    s = _settings(exactness={"heads": 2, "head_dim": 16, "seeds": seeds, "concentrated_scale": 3.0,
                             "concentrated_keys": 4, "random_scale": random_scale}, knobs={variant: knobs})
    m = exactness.measure(bench.Case("exactness", variant, n, 1, dtype, pattern), s, torch.device("cpu"))
    assert m.facts["reference"] == exactness.REFERENCE
    return m.metrics["approx_error"]


@pytest.mark.parametrize("variant", ["full", "flash"])
@pytest.mark.parametrize("pattern", ["random", "concentrated"])
def test_exact_variants_have_no_error(variant, pattern):
    assert _exactness_error(variant, pattern=pattern) < 1e-5


def _float64_attention(q, k, v):
    """Softmax attention written out in float64 (einsum + torch.softmax), the test's own ground truth."""
    q, k, v = (t.double() for t in (q, k, v))
    scores = torch.einsum("bhnd,bhmd->bhnm", q, k) / math.sqrt(q.shape[-1])
    return torch.einsum("bhnm,bhmd->bhnd", torch.softmax(scores, dim=-1, dtype=torch.float64), v)


@pytest.mark.parametrize("score_std", [1.0, 4.0])
def test_exactness_reference_is_float64_end_to_end(score_std):
    from attention_variants.full import softmax_attention

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 96, 16, generator=gen, dtype=torch.float64) for _ in range(3))
    q, k = q * math.sqrt(score_std), k * math.sqrt(score_std)   # q.k/sqrt(d) ~ N(0, score_std^2)
    want = _float64_attention(q, k, v)
    for ref in (bench.reference_attention(q, k, v), softmax_attention(q, k, v)):
        assert ref.dtype == torch.float64
        assert float((ref - want).norm() / want.norm()) < 1e-13


def test_exactness_of_an_exact_float64_kernel_is_float64_rounding():
    """SDPA's math path in float64 computes exact attention to ~1e-16; against a reference that
    takes softmax in float32 it showed ~1e-7 (the reference's own error)."""
    err = _exactness_error("flash", pattern="concentrated", dtype="float64", backend="math")
    assert err < 1e-12


def test_performer_error_decreases_with_features():
    if "performer" not in av.available():
        pytest.skip("performer is not registered")
    # random_scale 0.5: logits ~ N(0, 1/4), where the random-feature (Monte Carlo) error dominates
    # and falls like 1/sqrt(num_features); at N(0, 1) logits and d=16 it is heavy-tailed and slow.
    few = _exactness_error("performer", seeds=3, random_scale=0.5, num_features=64)
    many = _exactness_error("performer", seeds=3, random_scale=0.5, num_features=1024)
    assert many < 0.6 * few


def test_concentrated_pattern_is_peaked():
    q, k, _ = exactness.exactness_inputs("concentrated", 1, 1, 64, 16, seed=0)
    qr, kr, _ = exactness.exactness_inputs("random", 1, 1, 64, 16, seed=0)
    top = lambda a, b: torch.softmax(a @ b.transpose(-1, -2) / 4.0, -1).max(-1).values.mean()  # noqa: E731
    assert top(q, k) > 2 * top(qr, kr)


# ----------------------------------------------------------------------------- smoothness

def test_lipschitz_estimate_recovers_spectral_norm_of_linear_map():
    gen = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=torch.float64))
    a = u @ torch.diag(torch.tensor([3.0, 1.5, 1.0, 0.5, 0.2, 0.1], dtype=torch.float64)) @ v.T
    x = torch.randn(5, 6, generator=gen, dtype=torch.float64)
    est = lipschitz_estimate(lambda z: z @ a, x, iters=20, seed=0)
    assert est == pytest.approx(float(torch.linalg.matrix_norm(a, 2)), abs=1e-3)


def test_lipschitz_estimate_of_attention_is_finite_and_exponent_fit():
    s = _settings(smoothness={"dim": 8, "radius": 1.0, "weight_std": 1.0, "iters": 5}, knobs={"flash": {}})
    m = smoothness_mode.measure(bench.Case("smoothness", "flash", 32, 1, "float32"), s, torch.device("cpu"))
    assert m.status == "ok" and math.isfinite(m.metrics["lipschitz"]) and m.metrics["lipschitz"] > 0
    assert growth_exponent([16, 64, 256], [2 * 4, 2 * 8, 2 * 16]) == pytest.approx(0.5)


# ----------------------------------------------------------------------------- the Hydra app

def test_tiny_end_to_end_run_via_compose(tmp_path):
    variants = [v for v in ("full", "linear") if v in av.available()]
    cfg = compose_bench(
        f"variants=[{','.join(variants)}]", "device=cpu", "lengths=[64,128]", "batch_size=1", "heads=2",
        "head_dim=16", "repeats=2", "warmup=1", "model_step.lengths=[64]", "model_step.layers=1",
        "model_step.d_model=32", "model_step.heads=2", "model_step.mlp_dim=32", "model_step.batch_size=1",
        "exactness.lengths=[64]", "exactness.heads=2", "exactness.head_dim=16", "smoothness.lengths=[16,32]",
        "smoothness.dim=8", "smoothness.iters=3", "smoothness.patterns=[random]", "smoothness.radius_sweep=[]",
        "progress=false", f"results_dir={tmp_path / 'results'}")
    records = bench.run(cfg, tmp_path / "job")
    per_variant = 2 * 2 + 1 + 2 + 2   # op_fwd + op_fwd_bwd, model_step, exactness x 2 patterns, smoothness
    assert len(records) == per_variant * len(variants) + 1   # + the run's calibration (CPU, a timed mode)
    df = load(tmp_path / "job" / "records")
    assert len(df) == len(records) and (df["status"] == "ok").all(), df[["mode", "variant", "message"]]
    for col in ("kind", "variant", "seq_len", "batch_size", "dtype", "status", "mode", "timer", "heads",
                "head_dim", "pattern", "backend", "ms", "ms_p10", "ms_p90", "ms_fwd", "ms_fwd_bwd", "peak_mem_mb",
                "flops", "tflops", "tflops_fraction", "steps_per_s", "tokens_per_s", "approx_error", "lipschitz",
                "device_name", "config", "variant_config"):
        assert col in df.columns, col
    assert set(df["mode"]) == set(bench.MODES) - {"train_overhead", "decode"}   # opt-in modes, not in the default grid
    assert (df.loc[df["mode"] == "model_step", "task"] == "text").all()
    assert set(df.loc[df["mode"].str.startswith("op_"), "timer"]) == {"perf_counter"}
    assert len(load(tmp_path / "results")) == len(records)
    assert "full" in bench.summary(records)


def test_train_overhead_times_the_real_train_step(tmp_path, monkeypatch):
    """The mode runs lra.training.step.TrainStep itself (so it cannot drift from lra-train) and records
    forward+backward, forward+backward+optimizer and train-step times and the overhead."""
    from lra.training.step import TrainStep

    calls = []
    real_call = TrainStep.__call__
    monkeypatch.setattr(TrainStep, "__call__", lambda self, step: (calls.append(step), real_call(self, step))[1])
    cfg = compose_bench(
        "variants=[full]", "modes=[train_overhead]", "device=cpu", "train_overhead.lengths=[32]",
        "train_overhead.layers=1", "train_overhead.d_model=16", "train_overhead.heads=2",
        "train_overhead.mlp_dim=32", "train_overhead.batch_size=2", "train_overhead.steps_per_call=2",
        "train_overhead.warmup=1", "train_overhead.repeats=2", "min_time_s=0", "progress=false")
    records = bench.run(cfg, tmp_path / "job")
    assert len(records) == 1
    rec = records[0]
    assert rec["status"] == "ok", rec["message"]
    assert rec["task"] == "listops" and rec["case"]["mode"] == "train_overhead" and rec["seq_len"] == 32
    assert calls == list(range((1 + 2) * 2))   # warmup + repeats calls of steps_per_call real steps each
    m = rec["metrics"]
    for key in ("ms_model_fwd_bwd", "ms_model_fwd_bwd_opt", "ms_train_step"):
        assert m[key] > 0 and m[f"{key}_p10"] <= m[key] <= m[f"{key}_p90"]
    assert m["overhead_pct"] == pytest.approx(100 * (m["ms_train_step"] / m["ms_model_fwd_bwd"] - 1), abs=0.1)
    assert m["overhead_pct"] == pytest.approx(m["optimizer_pct"] + m["loop_pct"], abs=0.01)
    assert m["steps_per_s"] == pytest.approx(1e3 / m["ms_train_step"], rel=1e-3)
    assert rec["case"]["grad_clip"] == 0 and rec["case"]["schedule"] == "rsqrt"   # lra-train's ListOps settings (no clipping)
    df = load(tmp_path / "job" / "records")
    assert len(df) == 1 and {"overhead_pct", "ms_train_step", "ms_model_fwd_bwd"} <= set(df.columns)
    assert "train_overhead" in bench.summary(records)


def test_a_new_mode_needs_only_its_registered_mode(tmp_path, monkeypatch):
    """Registering a Mode is all a mode needs: the settings accept its name, the grid plans its
    cases (N ascending), the runner measures and records them and the summary shows its table."""
    def measure(case, s, device):
        return bench.Measurement({"answer": float(case.seq_len)}, {"timer": "none"}, {})

    toy = bench.Mode("toy", order=99, axes=lambda variant, s: [{"batch_size": 1}], measure=measure,
                     metric="answer", title="a toy metric")
    monkeypatch.setitem(bench.MODES, "toy", toy)
    records = bench.run(_compose_bench("variants=[full]", "modes=[toy]", "lengths=[16,8]"), tmp_path / "job")
    assert [(r["case"]["mode"], r["seq_len"], r["status"], r["metrics"]["answer"]) for r in records] == \
        [("toy", 8, "ok", 8.0), ("toy", 16, "ok", 16.0)]
    assert sorted(p.name for p in (tmp_path / "job" / "records").glob("*.json")) == \
        ["toy-full-N16-B1.json", "toy-full-N8-B1.json"]
    assert "== toy: a toy metric ==" in bench.summary(records)


def test_unknown_variant_is_a_config_error():
    cfg = compose_bench("variants=[nope]", "device=cpu")
    with pytest.raises(ConfigError, match="available"):
        bench.resolve_settings(cfg, torch.device("cpu"))


def test_exactness_knobs_apply_to_that_mode_only(tmp_path):
    """Default: nystrom's exactness runs without its conv on V (the Nystrom approximation itself)."""
    cfg = compose_bench(
        "variants=[nystrom]", "device=cpu", "modes=[op_fwd,exactness]", "lengths=[64]", "batch_size=1",
        "heads=2", "head_dim=16", "repeats=1", "warmup=0", "exactness.lengths=[64]", "exactness.heads=2",
        "exactness.head_dim=16", "exactness.patterns=[random]", "progress=false", "summary=false")
    records = {r["case"]["mode"]: r for r in bench.run(cfg, tmp_path / "job")}
    assert records["exactness"]["variant_config"]["conv_kernel"] == 0
    assert records["op_fwd"]["variant_config"]["conv_kernel"] == 35


# ----------------------------------------------------------------------------- bad input, exit status, load

def _compose_bench(*overrides):
    return compose_bench("device=cpu", "progress=false", "summary=false", *overrides)


BAD_BENCH = [
    (["lengths=[0]"], r"lengths=\[0\] is invalid \(0 is not valid\): each value must be an integer >= 1"),
    (["lengths=[-8]"], r"lengths=\[-8\] is invalid"),
    (["lengths=[]"], r"lengths=\[\] is empty"),
    (["batch_size=0"], r"batch_size=0 is invalid: it must be an integer >= 1"),
    (["heads=0"], r"heads=0 is invalid"),
    (["repeats=0"], r"repeats=0 is invalid"),
    (["warmup=-1"], r"warmup=-1 is invalid"),
    (["min_time_s=-1"], r"min_time_s=-1 is invalid"),
    (["threads=0"], r"threads=0 is invalid"),
    (["modes=[exactness]", "exactness.lengths=[0,64]"], r"exactness\.lengths=\[0,64\] is invalid"),
    (["modes=[exactness]", "exactness.seeds=0"], r"exactness\.seeds=0 is invalid"),
    (["modes=[smoothness]", "smoothness.iters=0"], r"smoothness\.iters=0 is invalid"),
    (["modes=[model_step]", "model_step.layers=0"], r"model_step\.layers=0 is invalid"),
    (["modes=[model_step]", "model_step.d_model=30", "model_step.heads=4"], r"model_step\.d_model=30 is not divisible"),
    (["modes=[train_overhead]", "train_overhead.steps_per_call=0"], r"train_overhead\.steps_per_call=0 is invalid"),
    (["modes=[train_overhead]", "+train_overhead.trainer.lr=-1"], r"train_overhead\.trainer\.lr=-1 is invalid"),
    (["variants=[performer]", "+knobs.performer.num_features=0"], r"knobs\.performer\.num_features=0 is invalid"),
]


@pytest.mark.parametrize("overrides,message", BAD_BENCH, ids=[" ".join(o) for o, _ in BAD_BENCH])
def test_bad_bench_grids_are_config_errors(overrides, message):
    import re

    with pytest.raises(ConfigError) as err:
        bench.resolve_settings(_compose_bench("variants=[full]", *overrides), torch.device("cpu"))
    assert re.search(message, str(err.value)), str(err.value)


def test_bench_cli_rejects_non_positive_lengths_with_exit_2(tmp_path):
    p = subprocess.run([sys.executable, "-m", "lra.cli.bench", f"hydra.run.dir={tmp_path}", "variants=[full]",
                        "device=cpu", "lengths=[-8]"], cwd=Path(__file__).resolve().parents[2],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
    assert "lengths=[-8] is invalid" in p.stderr and "Traceback" not in p.stderr
    assert not list((tmp_path / "records").glob("*.json")) if (tmp_path / "records").exists() else True


def test_a_case_that_measured_nothing_is_not_ok():
    def measure(case, s, device):
        return bench.Measurement({"flops": 1}, {}, {})   # no time

    rec = bench.run_grid([bench.Case("op_fwd", "full", 8, 1, "float32")], _settings(), torch.device("cpu"),
                         measure=measure, progress=False)[0]
    assert rec["status"] == "error" and "measured nothing" in rec["message"]
    assert bench.exit_code([rec]) == 1
    assert bench.exit_code([{**rec, "status": "oom"}, {**rec, "status": "ok"}]) == 0


def test_bench_cli_exits_1_when_a_case_fails(tmp_path, monkeypatch):
    def broken(case, s, device):
        raise RuntimeError("kernel exploded")

    monkeypatch.setitem(bench.MODES, "op_fwd", dataclasses.replace(bench.MODES["op_fwd"], measure=broken))
    monkeypatch.setattr(sys, "argv", ["lra-bench", f"hydra.run.dir={tmp_path}", "variants=[full]", "device=cpu",
                                      "modes=[op_fwd]", "lengths=[8]", "progress=false", "summary=false",
                                      "calibration.enabled=false"])
    with pytest.raises(SystemExit) as stop:
        cli_bench.main()
    assert stop.value.code == 1
    assert load(tmp_path / "records")["status"].tolist() == ["error"]


def test_loaded_machine_warns_loudly_and_marks_records(tmp_path, monkeypatch, capsys):
    import os

    from lra import devices

    monkeypatch.setattr(os, "getloadavg", lambda: (64.0, 64.0, 64.0))
    monkeypatch.setattr(devices, "cpus_available", lambda: 2)
    cfg = _compose_bench("variants=[linear]", "modes=[op_fwd]", "lengths=[16]", "batch_size=1", "heads=2",
                         "head_dim=8", "repeats=1", "warmup=0", "min_time_s=0")
    records = bench.run(cfg, tmp_path / "job")
    err = capsys.readouterr().err
    assert "WARNING: the 1-minute load average (64.0) exceeds the 2 CPUs" in err
    assert records[0]["host"]["loaded"] is True and records[0]["host"]["load_avg_1m"] == 64.0
