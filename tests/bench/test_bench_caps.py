"""The CPU grid to the LRA lengths (issue 31 item 2): caps that end a case as a recorded outcome,
larger N after a cap recorded ``skipped``, the dry estimate, the full-grid preset, resuming a run."""
from __future__ import annotations

import pytest
import torch

from lra import bench
from lra.bench.caps import SKIPPED_OOM, CapTracker, cap_facts, exponent
from lra.bench.grid import plan
from lra.bench.runner import RECORDS_DIR
from lra.bench.settings import resolve_settings
from lra.results import STATUSES
from lra.schema import ConfigError
from conftest import compose_bench

pytestmark = pytest.mark.usefixtures("no_git")
CPU = torch.device("cpu")


def _case(n, variant="full", causal=False):
    return bench.Case("op_fwd", variant, n, 2, "float32", causal=causal)


def test_skipped_is_a_record_status():
    assert "skipped" in STATUSES


@pytest.mark.parametrize("complexity, p", [("O(N^2)", 2.0), ("O(N)", 1.0), ("O(N log N)", 1.0), ("O(N k)", 1.0),
                                           ("O(N^1.5)", 1.5), (None, 2.0), ("quadratic", 2.0)])
def test_exponent_of_a_complexity(complexity, p):
    assert exponent(complexity) == p


def test_after_the_time_cap_larger_n_are_skipped_with_the_reason():
    caps = CapTracker(time_s=10)
    caps.update(_case(256), "ok", 1.0)
    caps.update(_case(512), "skipped", 10.2, capped="time")
    status, message = caps.verdict(_case(1024))
    assert status == "skipped" and "N=512 already passed the time cap (10 s)" in message
    assert caps.verdict(_case(1024, causal=True)) is None        # another group
    assert caps.verdict(_case(1024, variant="linear")) is None


def test_after_an_oom_larger_n_are_oom_without_running():
    caps = CapTracker(time_s=0)
    caps.update(_case(512), "oom", 3.0)
    assert caps.verdict(_case(1024)) == ("oom", SKIPPED_OOM)
    assert caps.verdict(_case(256)) is None


def test_the_estimate_skips_a_case_that_would_pass_the_cap_and_the_larger_ones():
    caps = CapTracker(time_s=100, estimate=True)
    caps.update(_case(1024), "ok", 10.0)            # full: O(N^2)
    assert caps.verdict(_case(2048)) is None         # 40 s
    caps.update(_case(2048), "ok", 40.0)
    status, message = caps.verdict(_case(4096))      # 160 s > 100 s
    assert status == "skipped" and message.startswith("estimate: 160 s > cap.time_s=100 s")
    assert "(4096/2048)^2 for O(N^2)" in message
    assert caps.verdict(_case(8192))[0] == "skipped"
    linear = CapTracker(time_s=100, estimate=True)
    linear.update(_case(2048, "linear"), "ok", 40.0)  # O(N): 80 s
    assert linear.verdict(_case(4096, "linear")) is None
    assert CapTracker(time_s=100, estimate=False).verdict(_case(4096)) is None


def test_records_name_the_caps_in_force():
    assert cap_facts({"cap": {"time_s": 120, "mem_mb": 0, "estimate": True}}) == \
        {"time_s": 120.0, "mem_mb": None, "estimate": True}

    def measure(case, s, device):
        return bench.Measurement({"ms": 1.0, "ms_fwd": 1.0}, {"timer": "perf_counter"}, {})

    s = {"model_step": {"task": "text"}, "knobs": {"full": {}}, "seed": 0, "isolate": False,
         "cap": {"time_s": 5, "mem_mb": 100, "estimate": False}}
    rec = bench.run_grid([_case(8)], s, CPU, measure=measure, progress=False)[0]
    assert rec["case"]["cap"] == {"time_s": 5.0, "mem_mb": 100.0, "estimate": False}
    assert rec["case"]["wall_s"] >= 0


@pytest.mark.parametrize("bad, name", [("cap.time_s=-1", "cap.time_s"), ("cap.mem_mb=lots", "cap.mem_mb"),
                                       ("isolate=sometimes", "isolate")])
def test_bad_caps_are_config_errors(bad, name):
    with pytest.raises(ConfigError, match=name):
        resolve_settings(compose_bench("device=cpu", "variants=[full]", "modes=[op_fwd]", bad), CPU)


def test_cpu_defaults_cap_and_isolate_and_the_full_grid_preset():
    quick = resolve_settings(compose_bench("device=cpu", "variants=[full]"), CPU)
    assert quick["cap"] == {"time_s": 120, "mem_mb": 8192, "estimate": True} and quick["isolate"] is True
    assert quick["lengths"] == [256, 512, 1024] and quick["causal"] == [False]
    s = resolve_settings(compose_bench("+preset=full_grid", "device=cpu"), CPU)
    assert s["lengths"] == [256, 512, 1024, 2048, 4096, 8192, 16384] and s["causal"] == [False, True]
    assert s["model_step"]["lengths"] == [1000, 2000, 4000] and s["decode"]["lengths"] == s["lengths"]
    assert s["modes"] == ["calibration", "op_fwd", "op_fwd_bwd", "model_step", "decode"]
    cases = plan(s)
    variants = len(s["variants"])
    assert sum(c.mode == "op_fwd" for c in cases) == variants * 7 * 2
    assert sum(c.mode == "model_step" for c in cases) == variants * 3 * 2
    assert sum(c.mode == "decode" for c in cases) == variants * 7


def test_a_run_resumes_from_the_records_it_already_wrote(tmp_path):
    calls = []

    def measure(case, s, device):
        calls.append(case.filename())
        return bench.Measurement({"ms": 1.0, "ms_fwd": 1.0}, {"timer": "perf_counter"}, {})

    cfg = compose_bench("device=cpu", "variants=[full,linear]", "modes=[op_fwd]", "lengths=[8,16]",
                        "calibration.enabled=false", "progress=false", "summary=false")
    first = bench.run(cfg, tmp_path, measure=measure)
    assert len(first) == 4 and len(calls) == 4
    lost = tmp_path / RECORDS_DIR / "op_fwd-linear-N16-B2-float32.json"
    lost.unlink()
    calls.clear()
    again = bench.run(cfg, tmp_path, measure=measure)
    assert calls == ["op_fwd-linear-N16-B2-float32.json"] and lost.is_file()
    assert [r["seq_len"] for r in again] == [8, 16, 8, 16] and all(r["status"] == "ok" for r in again)


def test_a_resumed_group_stopped_for_time_stays_stopped():
    caps = CapTracker(time_s=10)
    caps.resume(_case(512), {"status": "skipped", "message": "time cap: still running after cap.time_s=10 s; stopped"})
    assert caps.verdict(_case(1024))[0] == "skipped"
    refused = CapTracker(time_s=10)
    refused.resume(_case(512, causal=True), {"status": "skipped", "message": "causal=true refused: ..."})
    assert refused.verdict(_case(1024, causal=True)) is None
    done = CapTracker(time_s=10, estimate=True)
    done.resume(_case(512), {"status": "ok", "message": None, "case": {"wall_s": 8.0}})
    assert done.verdict(_case(1024))[0] == "skipped"   # estimate 32 s from the earlier run's 8 s
