"""lra-bench: timing protocol, OOM handling, exactness, the Lipschitz estimator, the Hydra app."""
from __future__ import annotations

import math

import pytest
import torch

import attention_variants as av
from lra import bench, conf_dir
from lra.results import load
from lra.smoothness import growth_exponent, lipschitz_estimate
from lra.timing import PerfCounterClock, attention_flops, is_oom, peak_bf16_tflops, time_fn, time_interleaved


@pytest.fixture(autouse=True)
def _no_git(monkeypatch):
    monkeypatch.setenv("LRA_GIT_COMMIT", "test")


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


def test_flops_and_peaks():
    assert attention_flops(2, 3, 128, 64, "fwd") == 4 * 2 * 3 * 128 * 128 * 64
    assert attention_flops(2, 3, 128, 64, "fwd_bwd") == int(3.5 * 4 * 2 * 3 * 128 * 128 * 64)
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
    assert records[2]["message"] == bench.SKIPPED_OOM
    assert "something else broke" in records[6]["message"]
    assert all(r["kind"] == "bench" and r["case"]["mode"] == "op_fwd" for r in records)


def test_op_case_on_cpu_records_timer_flops_and_no_memory():
    s = _settings(heads=2, head_dim=16, repeats=2, warmup=1, count_flops=True,
                  knobs={"full": {}, "linear": {}})
    m = bench.measure_op(bench.Case("op_fwd_bwd", "full", 64, 2, "float32"), s, torch.device("cpu"))
    assert m.facts["timer"] == "perf_counter" and m.facts["flops_source"] == "analytic"
    assert m.metrics["flops"] == attention_flops(2, 2, 64, 16, "fwd_bwd")
    assert m.metrics["ms_fwd_bwd"] > 0 and m.metrics["peak_mem_mb"] is None
    fwd = bench.measure_op(bench.Case("op_fwd", "linear", 64, 2, "float32"), s, torch.device("cpu"))
    assert fwd.facts["flops_source"] == "flop_counter" and fwd.metrics["flops"] > 0
    both = bench.measure_op(bench.Case("op_fwd_bwd", "linear", 64, 2, "float32"), s, torch.device("cpu"))
    assert both.facts["flops_source"] == "flop_counter" and both.metrics["flops"] > fwd.metrics["flops"]


# ----------------------------------------------------------------------------- exactness

def _exactness_error(variant, n=64, pattern="random", seeds=1, random_scale=1.0, **knobs):
    s = _settings(exactness={"heads": 2, "head_dim": 16, "seeds": seeds, "concentrated_scale": 3.0,
                             "concentrated_keys": 4, "random_scale": random_scale}, knobs={variant: knobs})
    m = bench.measure_exactness(bench.Case("exactness", variant, n, 1, "float32", pattern), s, torch.device("cpu"))
    return m.metrics["approx_error"]


@pytest.mark.parametrize("variant", ["full", "flash"])
@pytest.mark.parametrize("pattern", ["random", "concentrated"])
def test_exact_variants_have_no_error(variant, pattern):
    assert _exactness_error(variant, pattern=pattern) < 1e-5


def test_performer_error_decreases_with_features():
    if "performer" not in av.available():
        pytest.skip("performer is not registered")
    # random_scale 0.5: logits ~ N(0, 1/4), where the random-feature (Monte Carlo) error dominates
    # and falls like 1/sqrt(num_features); at N(0, 1) logits and d=16 it is heavy-tailed and slow.
    few = _exactness_error("performer", seeds=3, random_scale=0.5, num_features=64)
    many = _exactness_error("performer", seeds=3, random_scale=0.5, num_features=1024)
    assert many < 0.6 * few


def test_concentrated_pattern_is_peaked():
    q, k, _ = bench.exactness_inputs("concentrated", 1, 1, 64, 16, seed=0)
    qr, kr, _ = bench.exactness_inputs("random", 1, 1, 64, 16, seed=0)
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
    m = bench.measure_smoothness(bench.Case("smoothness", "flash", 32, 1, "float32"), s, torch.device("cpu"))
    assert m.status == "ok" and math.isfinite(m.metrics["lipschitz"]) and m.metrics["lipschitz"] > 0
    assert growth_exponent([16, 64, 256], [2 * 4, 2 * 8, 2 * 16]) == pytest.approx(0.5)


# ----------------------------------------------------------------------------- the Hydra app

def test_tiny_end_to_end_run_via_compose(tmp_path):
    from hydra import compose, initialize_config_dir

    variants = [v for v in ("full", "linear") if v in av.available()]
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("bench", overrides=[
            f"variants=[{','.join(variants)}]", "device=cpu", "lengths=[64,128]", "batch_size=1", "heads=2",
            "head_dim=16", "repeats=2", "warmup=1", "model_step.lengths=[64]", "model_step.layers=1",
            "model_step.d_model=32", "model_step.heads=2", "model_step.mlp_dim=32", "model_step.batch_size=1",
            "exactness.lengths=[64]", "exactness.heads=2", "exactness.head_dim=16", "smoothness.lengths=[16,32]",
            "smoothness.dim=8", "smoothness.iters=3", "smoothness.patterns=[random]", "smoothness.radius_sweep=[]",
            "progress=false", f"results_dir={tmp_path / 'results'}"])
    records = bench.run(cfg, tmp_path / "job")
    per_variant = 2 * 2 + 1 + 2 + 2   # op_fwd + op_fwd_bwd, model_step, exactness x 2 patterns, smoothness
    assert len(records) == per_variant * len(variants)
    df = load(tmp_path / "job" / "records")
    assert len(df) == len(records) and (df["status"] == "ok").all(), df[["mode", "variant", "message"]]
    for col in ("kind", "variant", "seq_len", "batch_size", "dtype", "status", "mode", "timer", "heads",
                "head_dim", "pattern", "backend", "ms", "ms_p10", "ms_p90", "ms_fwd", "ms_fwd_bwd", "peak_mem_mb",
                "flops", "tflops", "tflops_fraction", "steps_per_s", "tokens_per_s", "approx_error", "lipschitz",
                "device_name", "config", "variant_config"):
        assert col in df.columns, col
    assert set(df["mode"]) == set(bench.MODES) - {"train_overhead"}   # opt-in mode, not in the default grid
    assert (df.loc[df["mode"] == "model_step", "task"] == "text").all()
    assert set(df.loc[df["mode"].str.startswith("op_"), "timer"]) == {"perf_counter"}
    assert len(load(tmp_path / "results")) == len(records)
    assert "full" in bench.summary(records)


def test_train_overhead_times_the_real_train_step(tmp_path, monkeypatch):
    """The mode runs lra.train.TrainStep itself (so it cannot drift from lra-train) and records
    forward+backward, forward+backward+optimizer and train-step times and the overhead."""
    from hydra import compose, initialize_config_dir

    from lra.train import TrainStep

    calls = []
    real_call = TrainStep.__call__
    monkeypatch.setattr(TrainStep, "__call__", lambda self, step: (calls.append(step), real_call(self, step))[1])
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("bench", overrides=[
            "variants=[full]", "modes=[train_overhead]", "device=cpu", "train_overhead.lengths=[32]",
            "train_overhead.layers=1", "train_overhead.d_model=16", "train_overhead.heads=2",
            "train_overhead.mlp_dim=32", "train_overhead.batch_size=2", "train_overhead.steps_per_call=2",
            "train_overhead.warmup=1", "train_overhead.repeats=2", "progress=false"])
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
    assert rec["case"]["grad_clip"] == 1.0 and rec["case"]["schedule"] == "rsqrt"   # lra-train's ListOps settings
    df = load(tmp_path / "job" / "records")
    assert len(df) == 1 and {"overhead_pct", "ms_train_step", "ms_model_fwd_bwd"} <= set(df.columns)
    assert "train_overhead" in bench.summary(records)


def test_unknown_variant_is_a_config_error():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("bench", overrides=["variants=[nope]", "device=cpu"])
    with pytest.raises(bench.ConfigError, match="available"):
        bench.resolve_settings(cfg, torch.device("cpu"))


def test_exactness_knobs_apply_to_that_mode_only(tmp_path):
    """Default: nystrom's exactness runs without its conv on V (the Nystrom approximation itself)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("bench", overrides=[
            "variants=[nystrom]", "device=cpu", "modes=[op_fwd,exactness]", "lengths=[64]", "batch_size=1",
            "heads=2", "head_dim=16", "repeats=1", "warmup=0", "exactness.lengths=[64]", "exactness.heads=2",
            "exactness.head_dim=16", "exactness.patterns=[random]", "progress=false", "summary=false"])
    records = {r["case"]["mode"]: r for r in bench.run(cfg, tmp_path / "job")}
    assert records["exactness"]["variant_config"]["conv_kernel"] == 0
    assert records["op_fwd"]["variant_config"]["conv_kernel"] == 35
