"""Out-of-tree variants: the entry-point group `attention_variants` and training with one."""
import shutil
import sys
from pathlib import Path

import pytest

import attention_variants as av
from attention_variants import registry
from lra.training.job import run
from conftest import compose_train, tiny_train_overrides


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """An installed distribution (dist-info with an entry point) on sys.path, as pip leaves it."""
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(Path(__file__).parent / "plugin_dist" / "example_topk_attention.py", site)
    info = site / "example_topk_attention-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: example-topk-attention\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[attention_variants]\ntopk_example = example_topk_attention:TopKAttention\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    yield
    registry._REGISTRY.pop("topk_example", None)
    sys.modules.pop("example_topk_attention", None)


def test_entry_point_variant_is_available_and_trains(installed_plugin, tmp_path):
    assert "topk_example" in av.available()
    attn = av.build("topk_example", heads=2, head_dim=8, top_k=3)
    assert attn.config.top_k == 3 and attn.name == "topk_example"
    cfg = compose_train(*tiny_train_overrides(tmp_path / "cache", "attention=full", "attention.name=topk_example",
                                              "~attention.backend",  # full's knob; the plugin has none
                                              "+attention.top_k=2", "trainer.steps=1", "trainer.eval_every=1"))
    rec = run(cfg, tmp_path / "job")
    assert rec["status"] == "ok" and rec["variant"] == "topk_example"
    assert rec["variant_config"] == {"heads": 2, "head_dim": 8, "max_length": 33, "seed": 0, "causal": False,
                                     "top_k": 2}


def test_register_decorator_from_outside_the_package():
    @av.register("outside_test")
    class Outside(av.Attention):
        def forward(self, q, k, v, key_padding_mask=None):
            return v

    try:
        assert "outside_test" in av.available()
        assert isinstance(av.build("outside_test"), Outside)
        with pytest.raises(ValueError, match="already registered"):
            av.register("outside_test")(type("Other", (av.Attention,), {}))
    finally:
        registry._REGISTRY.pop("outside_test")
