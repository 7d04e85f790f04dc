"""lra-bench on CPU states its fraction of the machine (issue 38 item 3): the calibration record,
``tflops_fraction`` of the calibrated GEMM rate, and ``model_step`` under a padding mask."""
from __future__ import annotations

import pytest
import torch

from lra import bench
from lra.bench import calibration, model_step
from lra.bench.settings import resolve_settings
from lra.schema import ConfigError
from lra.timing import gemm_gflops
from conftest import compose_bench

pytestmark = pytest.mark.usefixtures("no_git")
CPU = torch.device("cpu")


def _settings(**extra):
    s = {"model_step": {"task": "text"}, "knobs": {}, "seed": 0, "repeats": 2, "warmup": 1, "min_time_s": 0,
         "calibration": {"enabled": "auto", "size": 64, "max_call_s": 1.0}, "isolate": False}
    s.update(extra)
    return s


def _record(dtype, flops=2e9, ms=10.0):
    return {"dtype": dtype, "case": {}, "metrics": {"flops": flops, "ms": ms, "tflops": 0.2, "tflops_fraction": None}}


def test_gemm_rate_counts_two_n_cubed_flops_per_call():
    gflops, timing = gemm_gflops(32, torch.float32, CPU, warmup=1, repeats=3, min_time_s=0)
    assert timing.repeats >= 3
    assert gflops == pytest.approx(2 * 32**3 / (timing.median_ms * 1e-3) / 1e9)


def test_fraction_is_of_the_rate_of_the_records_own_dtype():
    cal = {"metrics": {"gemm_fp32_gflops": 100.0, "gemm_bf16_gflops": 400.0},
           "case": {"fp32_size": 2048, "bf16_size": 1024}}
    fp32, bf16, f64 = _record("float32"), _record("bfloat16"), _record("float64")
    for r in (fp32, bf16, f64):
        calibration.apply(r, cal)
    # 2 GFLOP in 10 ms = 200 GFLOP/s
    assert fp32["metrics"]["tflops_fraction"] == pytest.approx(2.0)
    assert fp32["case"]["calibration"] == {"gemm_gflops": 100.0, "dtype": "fp32", "size": 2048}
    assert bf16["metrics"]["tflops_fraction"] == pytest.approx(0.5)
    assert bf16["case"]["calibration"]["size"] == 1024
    assert f64["metrics"]["tflops_fraction"] is None and "calibration" not in f64["case"]


def test_fraction_left_alone_without_calibration_or_with_a_device_peak():
    r = _record("float32")
    calibration.apply(r, None)
    assert r["metrics"]["tflops_fraction"] is None
    cuda = _record("bfloat16")
    cuda["metrics"]["tflops_fraction"] = 0.3    # from the device's tabulated peak
    calibration.apply(cuda, {"metrics": {"gemm_bf16_gflops": 1.0}, "case": {}})
    assert cuda["metrics"]["tflops_fraction"] == 0.3


def test_a_slow_dtype_is_measured_at_a_halved_size():
    assert calibration.gemm_size(512, torch.float32, CPU, max_call_s=1e-12) == calibration.PROBE
    assert calibration.gemm_size(512, torch.float32, CPU, max_call_s=1e6) == 512


@pytest.mark.parametrize("modes, device, enabled, joins", [
    (["op_fwd"], "cpu", "auto", True), (["decode"], "cpu", "auto", True),
    (["exactness", "smoothness"], "cpu", "auto", False), (["op_fwd"], "cuda", "auto", False),
    (["op_fwd"], "cpu", False, False), (["exactness"], "cuda", True, True)])
def test_calibration_joins_cpu_runs_with_flops(modes, device, enabled, joins):
    assert calibration.joins({"modes": modes, "calibration": {"enabled": enabled}}, device) is joins


def test_resolved_cpu_run_calibrates_first_and_bad_enabled_is_a_config_error():
    s = resolve_settings(compose_bench("variants=[full]", "modes=[op_fwd]", "device=cpu"), CPU)
    assert s["modes"] == ["calibration", "op_fwd"]
    with pytest.raises(ConfigError, match="calibration.enabled"):
        resolve_settings(compose_bench("variants=[full]", "modes=[op_fwd]", "calibration.enabled=sometimes"), CPU)


def test_run_records_calibration_and_fills_later_cpu_fractions():
    s = _settings(heads=2, head_dim=8, count_flops=True, knobs={"full": {}}, modes=["calibration", "op_fwd"])
    cases = calibration.cases(s) + [bench.Case("op_fwd", "full", 32, 1, "float32")]
    cal, op = bench.run_grid(cases, s, CPU, progress=False)
    assert cal["status"] == "ok" and cal["case"]["mode"] == "calibration"
    assert cal["variant"] is None and cal["seq_len"] is None and cal["case"]["causal"] is None
    assert cal["metrics"]["gemm_fp32_gflops"] > 0 and cal["metrics"]["gemm_bf16_gflops"] > 0
    assert cal["case"]["fp32_size"] <= 64 and cal["case"]["threads"] >= 1
    rate = cal["metrics"]["gemm_fp32_gflops"] * 1e9
    m = op["metrics"]
    # the record rounds the fraction to 5 decimals (calibration.py): an absolute 5e-6 on top
    assert m["tflops_fraction"] == pytest.approx(m["flops"] / (m["ms"] * 1e-3) / rate, rel=1e-3, abs=5e-6)
    assert op["case"]["calibration"]["dtype"] == "fp32"


def test_padding_mask_pads_the_last_rows_after_the_real_fraction():
    mask, facts = model_step.padding_mask(4, 10, 0.25, 0.8, CPU)
    assert mask.shape == (4, 10) and mask.dtype == torch.bool
    assert mask[:3].all() and mask[3, :8].all() and not mask[3, 8:].any()
    assert facts == {"kind": "key_padding", "padded_rows": 1, "rows": 4, "real_length": 8, "real_tokens": 38}
    none, facts = model_step.padding_mask(2, 10, 0.0, 0.5, CPU)
    assert none.all() and facts["padded_rows"] == 0


def test_model_step_runs_under_the_mask_and_counts_its_flops():
    s = _settings(count_flops=True, knobs={"full": {}, "linear": {}},
                  model_step={"task": "text", "layers": 1, "d_model": 16, "heads": 2, "mlp_dim": 32,
                              "vocab_size": 16, "num_classes": 2, "pooling": "cls", "padded_rows": 0.5,
                              "real_fraction": 0.5})
    for variant in ("full", "linear"):
        m = model_step.measure(bench.Case("model_step", variant, 16, 2, "float32"), s, CPU)
        assert m.facts["mask"]["padded_rows"] == 1 and m.facts["mask"]["real_tokens"] == 16 + 8
        assert m.metrics["flops"] > 0 and m.metrics["tflops"] is not None
        assert m.facts["memory_method"] == "rss_hwm_in_process"
    assert m.facts["flops_source"] == "flop_counter"

