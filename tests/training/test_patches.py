"""``model.patch``: square patches of pixels as tokens on the image tasks (a Pathfinder lever, issue 31)."""
import pytest
import torch

from lra.model import Encoder, EncoderConfig
from lra.schema import ConfigError
from lra.training.config import validate
from conftest import compose_train, train_two_steps


def _encoder(patch: int, side: int = 4, d_model: int = 4, **kw) -> Encoder:
    return Encoder(EncoderConfig(vocab_size=256, num_classes=2, max_length=side * side, d_model=d_model, heads=1,
                                 mlp_dim=8, layers=1, pooling="mean", patch=patch, attention="full", **kw))


def test_patch_tokens_group_each_square_row_major():
    """A 4 x 4 image of pixel ids 0..15 in 2 x 2 patches: patch m holds its four pixels in row-major order."""
    enc = _encoder(2)
    with torch.no_grad():
        enc.embed.weight.copy_(torch.arange(256.0)[:, None].expand(256, 4))  # pixel id i embeds as (i, i, i, i)
        enc.patch_proj.weight.zero_()
        enc.patch_proj.bias.zero_()
        for j in range(4):  # output j = the first embedding dimension of the patch's pixel j
            enc.patch_proj.weight[j, 4 * j] = 1.0
    tokens = torch.arange(16)[None]
    mask = torch.ones(1, 16, dtype=torch.bool)
    mask[0, [2, 3, 6, 7]] = False            # the whole second patch is padding ...
    mask[0, 8] = False                       # ... one pixel of the third is
    x, patch_mask = enc.patch_tokens(tokens, mask)
    assert x.shape == (1, 4, 4)
    assert x[0].tolist() == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]
    assert patch_mask[0].tolist() == [True, False, True, True]  # real when any pixel is


def test_patched_encoder_sees_fewer_positions_and_trains():
    enc = _encoder(2, side=8, d_model=8)
    assert enc.cfg.tokens == 16 and enc.pos.shape[0] == 16          # 64 pixels -> 16 patches (mean pooling)
    logits = enc(torch.randint(1, 256, (3, 64)))
    assert logits.shape == (3, 2)
    logits.sum().backward()
    assert enc.patch_proj.weight.grad is not None and enc.patch_proj.weight.grad.abs().sum() > 0


def test_patch_one_is_the_pixel_encoder():
    """patch=1 (the default) keeps one position per pixel and adds no parameter."""
    plain = _encoder(1)
    assert plain.patch_proj is None and not any("patch" in k for k in plain.state_dict())
    assert plain.cfg.tokens == 16 and plain.pos.shape[0] == 16
    x, _ = plain.hidden_states(torch.randint(0, 256, (2, 16)), None)
    assert x.shape == (2, 16, 4)


@pytest.mark.parametrize("overrides,expected", [
    (("task=listops", "model.patch=2"), "groups the pixels of an image task (image, pathfinder, pathx); task=listops"),
    (("task=pathfinder", "trainer.task_overrides.seq_len=256", "model.patch=3"),
     "model.patch=3 does not divide the image side 16 (task.seq_len=256); valid patch sizes: [1, 2, 4, 8, 16]"),
    (("task=pathfinder", "trainer.task_overrides.seq_len=256", "model.patch=2", "pretrain=mlm"),
     "masked pretraining predicts single pixels"),
    (("task=pathfinder", "trainer.task_overrides.seq_len=256", "model.patch=2", "trainer.bucketing=true"),
     "a bucketed batch would cut the image"),
    (("task=pathfinder", "model.patch=0"), "model.patch=0"),
])
def test_bad_patch_settings_stop_before_any_work(overrides, expected):
    with pytest.raises(ConfigError, match="model.patch") as err:
        validate(compose_train("trainer=quick", *overrides))
    assert expected in str(err.value)


def test_pathfinder_trains_on_patches(tmp_path):
    """Two steps on 12 x 12 Pathfinder images in 2 x 2 patches: 36 tokens; the record states the patch."""
    rec = train_two_steps(tmp_path, "pathfinder", "trainer.task_overrides.seq_len=144",
                          "trainer.task_overrides.num_train=16", "trainer.task_overrides.num_val=4",
                          "trainer.task_overrides.num_test=4", "model.patch=2", "model.pos_emb=learned")
    assert rec["config"]["model"]["patch"] == 2
    assert rec["case"]["bucketing"]["on"] is False


@pytest.mark.parametrize("kw,expected", [
    ({"max_length": 64, "patch": 3}, "the image side 8 is not divisible by 3; valid patch sizes: [1, 2, 4, 8]"),
    ({"max_length": 60, "patch": 2}, "max_length=60 is not a square"),
    ({"max_length": 64, "patch": 2, "dual": True}, "not for two-document inputs"),
    ({"max_length": 64, "patch": 2, "mask_token": True}, "not with masked self-pretraining"),
])
def test_encoder_config_refuses_patches_it_cannot_cut(kw, expected):
    with pytest.raises(ValueError, match="model.patch") as err:
        EncoderConfig(vocab_size=256, num_classes=2, d_model=8, heads=1, **kw)
    assert expected in str(err.value)
