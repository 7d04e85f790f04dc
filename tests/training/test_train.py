"""lra-train end to end on tiny ListOps: records, resume, failure statuses."""
import json

import pytest
import torch

import attention_variants as av
from attention_variants.full import FullAttention
from lra import results
from lra.data import DeviceBatches
from lra.schema import ConfigError
from lra.training.job import run
from conftest import compose_train, tiny_train_overrides


def test_run_writes_a_record(tmp_path):
    cfg = compose_train(*tiny_train_overrides(tmp_path / "cache", "attention=full"))
    rec = run(cfg, tmp_path / "job")
    assert rec["status"] == "ok", rec["message"]
    df = results.load(tmp_path / "job")
    row = df.iloc[0]
    assert row["variant"] == "full" and row["task"] == "listops" and row["kind"] == "train"
    assert 0 <= row["accuracy"] <= 1 and row["steps_per_s"] > 0
    assert row["device_type"] == "cpu" and row["versions_torch"] == torch.__version__
    assert row["seq_len"] == 32 and row["steps"] == 8


@pytest.mark.parametrize("recipe", ["lra", "small"])   # small: OneCycleLR (lr and beta1) must resume too
def test_resume_reaches_the_same_state(tmp_path, monkeypatch, recipe):
    overrides = tiny_train_overrides(tmp_path / "cache", "attention=performer", "attention.num_features=8",
                                     f"recipe={recipe}")
    full_run = run(compose_train(*overrides), tmp_path / "a")
    # interrupted run: dies at step 6, after the checkpoint of step 4
    real_batch = DeviceBatches.batch

    def dying_batch(self, step):
        if step == 6 and self.shuffle:
            raise KeyboardInterrupt
        return real_batch(self, step)

    monkeypatch.setattr(DeviceBatches, "batch", dying_batch)
    with pytest.raises(KeyboardInterrupt):
        run(compose_train(*overrides), tmp_path / "b")
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["step"] == 4
    monkeypatch.setattr(DeviceBatches, "batch", real_batch)
    resumed = run(compose_train(*overrides), tmp_path / "b")
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["model"]
    for name in a:
        assert torch.equal(a[name], b[name]), name
    for key in ("accuracy", "loss", "val_accuracy"):
        assert resumed["metrics"][key] == full_run["metrics"][key]


@av.register("nan_test")
class NaNAttention(FullAttention):
    """Test-only variant whose output turns NaN from its third training call on."""

    def __init__(self, config):
        super().__init__(config)
        self.calls = 0

    def forward(self, q, k, v, key_padding_mask=None):
        self.calls += self.training
        out = super().forward(q, k, v, key_padding_mask)
        return out * float("nan") if self.calls > 2 else out


def test_nan_loss_gives_status_nan(tmp_path):
    cfg = compose_train(*tiny_train_overrides(tmp_path / "cache", "attention=full", "attention.name=nan_test",
                                              "trainer.model_overrides.layers=1"))
    rec = run(cfg, tmp_path / "job")
    assert rec["status"] == "nan"
    assert "step 2" in rec["message"]
    assert json.loads((tmp_path / "job" / "record.json").read_text())["status"] == "nan"


def test_config_errors_raise_before_training(tmp_path):
    bad_heads = compose_train(*tiny_train_overrides(tmp_path / "c", "trainer.model_overrides.heads=3"))
    with pytest.raises(ConfigError, match="not divisible by model.heads=3"):
        run(bad_heads, tmp_path / "j1")
    unknown = compose_train(*tiny_train_overrides(tmp_path / "c", "attention=full", "attention.name=nope"))
    with pytest.raises(ConfigError, match="Available: .*full"):
        run(unknown, tmp_path / "j2")
    # in a sweep the same errors become records instead
    rec = run(unknown, tmp_path / "j3", raise_config_errors=False)
    assert rec["status"] == "error" and "nope" in rec["message"]
    assert not (tmp_path / "c").exists()  # no data was prepared


def test_tied_weights_share_one_block():
    from lra.model import Encoder, EncoderConfig

    kw = dict(vocab_size=20, num_classes=3, max_length=8, d_model=16, heads=2, mlp_dim=32, layers=3, attention="full")
    tied, untied = Encoder(EncoderConfig(tied_weights=True, **kw)), Encoder(EncoderConfig(**kw))
    assert tied.blocks[0] is tied.blocks[2]
    per_block = sum(p.numel() for p in untied.blocks[0].parameters())
    assert sum(p.numel() for p in untied.parameters()) - sum(p.numel() for p in tied.parameters()) == 2 * per_block
    tied(torch.randint(1, 20, (2, 8))).sum().backward()
    assert tied.blocks[0].attn.qkv.weight.grad is not None
