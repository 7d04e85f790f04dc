"""Causal as an axis of lra-bench (issue 34 item 3): planned for op_fwd, op_fwd_bwd and model_step,
recorded as ``case.causal``, refused variants ``skipped`` with their reason, FLOPs halved on fused
exact kernels only."""
from __future__ import annotations

import pytest
import torch

import attention_variants as av
from lra import bench
from lra.bench import op
from lra.bench.grid import plan
from lra.bench.settings import resolve_settings
from lra.schema import ConfigError
from lra.timing import CAUSAL_CONVENTIONS, attention_flops, exact_kernel, flops_convention
from conftest import compose_bench

pytestmark = pytest.mark.usefixtures("no_git")
CPU = torch.device("cpu")


def _resolved(*overrides):
    return resolve_settings(compose_bench("device=cpu", "calibration.enabled=false", *overrides), CPU)


def test_causal_axis_doubles_the_timed_modes_and_names_the_files():
    s = _resolved("variants=[full,linformer]", "modes=[op_fwd,op_fwd_bwd,model_step,exactness]",
                  "causal=[false,true]", "lengths=[64]", "model_step.lengths=[64]", "exactness.lengths=[64]")
    cases = plan(s)
    for mode in ("op_fwd", "op_fwd_bwd", "model_step"):
        assert sorted(c.causal for c in cases if c.mode == mode and c.variant == "full") == [False, True]
    assert all(not c.causal for c in cases if c.mode == "exactness")
    names = {c.filename() for c in cases}
    assert "op_fwd-full-N64-B2-float32-causal.json" in names and "op_fwd-full-N64-B2-float32.json" in names


def test_default_grid_is_not_causal():
    assert _resolved("variants=[full]", "modes=[op_fwd]")["causal"] == [False]


@pytest.mark.parametrize("bad", ["causal=maybe", "causal=[]", "causal=[1,0]"])
def test_bad_causal_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="causal="):
        _resolved("variants=[full]", "modes=[op_fwd]", bad)


def test_a_causal_knob_beside_the_axis_is_a_config_error():
    with pytest.raises(ConfigError, match=r"knobs.full.causal .*causal=\[true\]"):
        _resolved("variants=[full]", "modes=[op_fwd]", "+knobs.full.causal=true")


def test_refused_causal_case_is_skipped_with_its_reason_without_running():
    calls = []

    def measure(case, s, device):
        calls.append((case.variant, case.causal))
        return bench.Measurement({"ms": 1.0, "ms_fwd": 1.0}, {"timer": "perf_counter"}, {})

    s = {"model_step": {"task": "text"}, "knobs": {"linformer": {}, "full": {}}, "seed": 0, "isolate": False}
    cases = [bench.Case("op_fwd", v, 32, 1, "float32", causal=c) for v in ("linformer", "full") for c in (False, True)]
    records = bench.run_grid(cases, s, CPU, measure=measure, progress=False)
    assert [(r["variant"], r["case"]["causal"], r["status"]) for r in records] == [
        ("linformer", False, "ok"), ("linformer", True, "skipped"), ("full", False, "ok"), ("full", True, "ok")]
    assert ("linformer", True) not in calls
    reason = records[1]["message"]
    assert reason.startswith("causal=true refused") and "linformer" in reason
    assert "Causal variants:" in reason and "full" in reason
    assert bench.exit_code(records) == 0   # a stated outcome, not a failure


def test_causal_flops_are_halved_on_fused_kernels_only():
    full = attention_flops(2, 4, 128, 16, "fwd_bwd", kernel="fused")
    assert attention_flops(2, 4, 128, 16, "fwd_bwd", kernel="fused", causal=True) == full // 2
    mat = attention_flops(2, 4, 128, 16, "fwd", kernel="materialized")
    assert attention_flops(2, 4, 128, 16, "fwd", kernel="materialized", causal=True) == mat
    assert flops_convention("fwd_bwd", "fused", causal=True).endswith(CAUSAL_CONVENTIONS["fused"])
    assert "causal" not in flops_convention("fwd_bwd", "fused")


@pytest.mark.parametrize("variant", ["full", "flash"])
def test_causal_op_case_is_causal_and_counted_by_the_kernel_that_ran(variant):
    s = {"heads": 2, "head_dim": 8, "repeats": 1, "warmup": 0, "min_time_s": 0, "seed": 0, "count_flops": True,
         "knobs": {variant: {}}}
    m = op.measure(bench.Case("op_fwd_bwd", variant, 32, 1, "float32", causal=True), s, CPU)
    assert m.variant_config["causal"] is True
    kernel = exact_kernel(m.facts["backend"])
    assert m.metrics["flops"] == attention_flops(1, 2, 32, 8, "fwd_bwd", kernel=kernel, causal=True)
    assert m.facts["flops_convention"] == flops_convention("fwd_bwd", kernel, causal=True)


def test_causal_model_step_builds_a_causal_encoder():
    s = {"seed": 0, "repeats": 1, "warmup": 0, "min_time_s": 0, "count_flops": False, "knobs": {"linear": {}},
         "model_step": {"task": "text", "layers": 1, "d_model": 16, "heads": 2, "mlp_dim": 32, "vocab_size": 16,
                        "num_classes": 2, "pooling": "cls"}}
    m = bench.MODES["model_step"].measure(bench.Case("model_step", "linear", 16, 2, "float32", causal=True), s, CPU)
    assert m.variant_config["causal"] is True and m.metrics["steps_per_s"] > 0
    assert av.get("linear")[0].supports_causal
