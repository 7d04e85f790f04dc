"""The decode mode (issue 34 item 3): time per generated token at context N, the decoding state's
bytes, and ``skipped`` for variants without a cached path."""
from __future__ import annotations

import pytest
import torch

import attention_variants as av
from lra import bench
from lra.bench import decode
from lra.bench.grid import plan
from lra.bench.settings import resolve_settings
from conftest import compose_bench

pytestmark = pytest.mark.usefixtures("no_git")
CPU = torch.device("cpu")


def _settings(*variants, tokens=4, warmup=1):
    return {"heads": 2, "head_dim": 8, "seed": 0, "count_flops": True, "isolate": False,
            "knobs": {v: {} for v in variants}, "decode": {"tokens": tokens, "warmup": warmup, "batch_size": 1},
            "model_step": {"task": "text"}}


@pytest.mark.parametrize("variant", ["full", "linear"])
def test_decode_times_single_tokens_at_context_n(variant):
    n = 24
    m = decode.measure(bench.Case("decode", variant, n, 1, "float32", causal=True), _settings(variant), CPU)
    assert m.metrics["ms_per_token"] == m.metrics["ms"] > 0
    assert m.metrics["tokens_per_s"] == pytest.approx(1e3 / m.metrics["ms_per_token"], rel=1e-3)
    assert len(m.timings_ms) == 4 and m.metrics["flops"] > 0
    # fill 24 - 1 - 2 = 21 tokens, 1 warm-up, then 4 timed: contexts 23 ... 26, centred on N
    assert m.facts["filled_tokens"] == 21
    assert (m.facts["context_first"], m.facts["context_last"]) == (23, 26)
    attn = av.build(variant, heads=2, head_dim=8, max_length=n, causal=True)
    assert m.metrics["state_bytes"] == attn.decode_state_bytes(n, 4)[0]
    assert m.variant_config["causal"] is True and m.facts["memory_method"] == "rss_hwm_in_process"


def test_a_kv_cache_grows_with_n_and_a_running_state_does_not():
    def state(variant, n):
        return decode.measure(bench.Case("decode", variant, n, 1, "float32", causal=True), _settings(variant),
                              CPU).metrics["state_bytes"]

    assert state("full", 32) == 2 * state("full", 16) == 2 * (2 * 16 * 2 * 8 * 4)   # K and V, N x H x D fp32
    assert state("linear", 32) == state("linear", 16)


def test_variants_without_a_cached_path_are_skipped_with_the_reason():
    assert "no cached decoding path" in decode.no_cached_path("reformer")
    assert decode.no_cached_path("linformer").startswith("causal=true refused")
    assert decode.no_cached_path("full") is None
    calls = []

    def measure(case, s, device):
        calls.append(case.variant)
        raise AssertionError("not to be measured")

    cases = [bench.Case("decode", v, 16, 1, "float32", causal=True) for v in ("reformer", "linformer")]
    records = bench.run_grid(cases, _settings("reformer", "linformer"), CPU, measure=measure, progress=False)
    assert [r["status"] for r in records] == ["skipped", "skipped"] and not calls
    assert all(r["case"]["causal"] is True and r["case"]["mode"] == "decode" for r in records)


def test_decode_is_opt_in_always_causal_and_takes_its_own_lengths():
    s = resolve_settings(compose_bench("device=cpu", "variants=[full,linear]", "modes=[decode]",
                                       "decode.lengths=[64,32]", "calibration.enabled=false"), CPU)
    cases = plan(s)
    assert [(c.variant, c.seq_len, c.causal) for c in cases] == [
        ("full", 32, True), ("full", 64, True), ("linear", 32, True), ("linear", 64, True)]
    assert "decode" not in resolve_settings(compose_bench("device=cpu", "variants=[full]"), CPU)["modes"]
