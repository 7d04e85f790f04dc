"""``lra-bench modes=[smoothness]``: the case plan (patterns x radii x causal) and a tiny run."""
from __future__ import annotations

import pytest
import torch

from lra import bench
from lra.bench import runner
from lra.results import load
from lra.schema import ConfigError
from lra.report.smoothness import exponent_table
from conftest import compose_bench


pytestmark = pytest.mark.usefixtures("no_git")


def _compose(*overrides):
    return compose_bench("modes=[smoothness]", "device=cpu", "progress=false", *overrides)


def test_default_plan_has_every_pattern_the_radius_sweep_and_the_causal_case():
    s = bench.resolve_settings(_compose("variants=[full,random_feature]"), torch.device("cpu"))
    cases = bench.plan(s)
    lengths = s["smoothness"]["lengths"]
    assert lengths == [8, 16, 32, 64, 128, 256]
    full = [c for c in cases if c.variant == "full"]
    main = {(c.pattern, c.radius) for c in full if c.radius in (None, 2.0)}
    assert main == {("random", 2.0), ("adversarial", 2.0), ("search", 2.0), ("data", None)}
    swept = {(c.pattern, c.radius) for c in full if c.radius not in (None, 2.0)}
    assert swept == {("adversarial", r) for r in (0.25, 0.5, 1.0, 4.0, 8.0)}
    assert len(full) == (4 + 5) * len(lengths) and not any(c.causal for c in full)
    causal = [c for c in cases if c.variant == "random_feature" and c.causal]
    assert {c.pattern for c in causal} == {"random", "adversarial", "search", "data"}
    assert len({c.filename() for c in cases}) == len(cases)     # one record file per case


def test_checkpoint_adds_the_trained_data_pattern():
    s = bench.resolve_settings(_compose("variants=[full]", "smoothness.data.checkpoint=/some/job"),
                               torch.device("cpu"))
    assert "data_trained" in {c.pattern for c in bench.plan(s)}


@pytest.mark.parametrize("override, message", [
    ("smoothness.patterns=[random,worst]", "unknown smoothness pattern"),
    ("smoothness.radius=-1", "radius=-1 is invalid|must be a positive number"),
    ("smoothness.sweep_patterns=[data]", "only"),
    ("smoothness.patterns=[data_trained]", "needs smoothness.data.checkpoint"),
])
def test_bad_smoothness_settings_fail_with_the_choices(override, message):
    with pytest.raises(ConfigError, match=message):
        bench.resolve_settings(_compose("variants=[full]", override), torch.device("cpu"))


def test_tiny_smoothness_run_writes_a_record_per_case(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "free_memory", lambda device=None: None)   # a full gc per case: slow, not tested here
    cfg = _compose("variants=[full,random_feature]", "smoothness.lengths=[8,16]", "smoothness.dim=8",
                   "smoothness.iters=3", "smoothness.samples=1", "smoothness.radius_sweep=[1.0]",
                   "smoothness.search.steps=1", "+knobs.random_feature.num_features=16",
                   "+smoothness.data.task_overrides.seq_len=32", f"+smoothness.data.task_overrides.cache_dir={tmp_path}",
                   "smoothness.data.task_overrides.num_test=8",
                   "++smoothness.data.model={d_model: 16, heads: 2, mlp_dim: 16, layers: 1}")
    records = bench.run(cfg, tmp_path / "job")
    per_variant = (4 + 1) * 2                      # 4 patterns + the sweep (1 radius, adversarial), 2 lengths
    assert len(records) == 2 * per_variant + 4 * 2 # + random_feature causal
    df = load(tmp_path / "job" / "records")
    assert (df["status"] == "ok").all(), df[["variant", "pattern", "message"]]
    assert {"lipschitz", "softmax_bound", "bound_ratio", "radius", "pattern", "causal", "sweep"} <= set(df.columns)
    causal = df[df["causal"] == True]  # noqa: E712
    assert len(causal) == 8 and set(causal["variant"]) == {"random_feature"}
    table = exponent_table(df)
    assert set(table.index) == {"full", "random_feature", "random_feature (causal)"}
    assert list(table.columns) == ["adversarial", "search", "random", "data"]
