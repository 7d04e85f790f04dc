"""The ``data`` smoothness patterns: hidden states of real (tiny, generated) ListOps sequences at an
encoder layer's attention input, untrained and from a real lra-train checkpoint."""
from __future__ import annotations

import math

import pytest
import torch

from lra.smoothness import hidden
from lra.smoothness.estimate import growth_exponent
from lra.smoothness.measure import measure

from conftest import compose_train, tiny_train_overrides

TINY_MODEL = {"d_model": 16, "heads": 2, "mlp_dim": 16, "layers": 2, "dropout": 0.0, "pooling": "cls"}


def _tiny_task(cache_dir, **extra):
    return {"seq_len": 64, "num_train": 1, "num_val": 1, "num_test": 16, "cache_dir": str(cache_dir), **extra}


def _settings(cache_dir, **data):
    return {"iters": 20, "samples": 2, "radius": 2.0, "dim": 16,
            "data": {"task": "listops", "task_overrides": _tiny_task(cache_dir), "recipe": "small",
                     "model": TINY_MODEL, "layer": 0, **data}}


def _encoder(cache_dir, variant="full", **model):
    task_cfg = hidden.task_config("listops", _tiny_task(cache_dir))
    data = hidden.task_data(task_cfg)
    kw = hidden.model_kwargs(task_cfg, "small", {**TINY_MODEL, **model})
    return hidden.untrained_encoder(data, kw, variant, {}, seed=0), data


def test_sequences_are_real_prefixes(tmp_path):
    _, data = _encoder(tmp_path)
    x = data.splits["test"][0]
    seqs = hidden.sequences(data, 12, 3)
    assert seqs.shape == (3, 12) and bool((seqs != 0).all())
    first = int(torch.nonzero((x != 0).sum(-1) >= 12)[0])
    assert torch.equal(seqs[0], x[first, :12].long())
    with pytest.raises(ValueError, match="at most 64 tokens"):
        hidden.sequences(data, 65, 1)


def test_layer_map_is_the_layer_attention_before_its_output_projection(tmp_path):
    model, data = _encoder(tmp_path)
    mha = model.blocks[1].attn
    x = torch.randn(9, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(mha.out(hidden.layer_map(model, 1)(x)), mha(x[None], None)[0])


@pytest.mark.parametrize("tied", [False, True])
def test_attention_input_is_what_the_layer_receives(tmp_path, tied):
    model, data = _encoder(tmp_path, tied_weights=tied)
    tokens = hidden.sequences(data, 10, 1)
    seen = {}
    handle = model.blocks[0].register_forward_hook(lambda m, a, out: seen.setdefault("h1", out))
    with torch.no_grad():
        model.encode(tokens, None)
    handle.remove()
    x1 = hidden.attention_input(model, tokens, layer=1)
    with torch.no_grad():
        torch.testing.assert_close(x1, model.blocks[1].norm1(seen["h1"]))
    x0 = hidden.attention_input(model, tokens, layer=0)
    assert x0.shape == (1, 11, 16) and not torch.allclose(x0, x1)   # CLS + 10 tokens


def test_data_pattern_measures_real_hidden_states_below_the_bound(tmp_path):
    s = _settings(tmp_path)
    lengths = [8, 16, 32]
    vals = []
    for n in lengths:
        out = measure("full", {}, "data", n, s)
        m, f = out.metrics, out.facts
        assert f["data_task"] == "listops" and f["encoder"] == "untrained" and f["heads"] == 2 and f["cls_token"]
        assert m["samples"] == 2 and 0 < m["lipschitz"] <= m["softmax_bound"] and m["bound_ratio"] <= 1
        vals.append(m["lipschitz"])
    assert growth_exponent(lengths, vals) < 0.25      # far from the adversarial sqrt(n)


def test_data_pattern_runs_every_variant_family(tmp_path):
    s = _settings(tmp_path)
    for variant, knobs in (("linear", {}), ("performer", {"num_features": 16}), ("random_feature", {"gate": True})):
        out = measure(variant, knobs, "data", 16, s)
        assert math.isfinite(out.metrics["lipschitz"])
        assert out.facts["causal"] is (variant == "random_feature")


def test_data_pattern_reports_missing_lengths(tmp_path):
    with pytest.raises(ValueError, match="no test example"):
        measure("full", {}, "data", 64, _settings(tmp_path))   # ListOps lengths here are < 64


def test_trained_checkpoint_is_loaded_and_every_variant_measured_on_it(tmp_path):
    from lra.training.finetune import CHECKPOINT
    from lra.training.job import run

    job = tmp_path / "job"
    run(compose_train(*tiny_train_overrides(tmp_path / "cache")), job)
    model, task_cfg, variant, knobs, step = hidden.trained_encoder(job)
    state = torch.load(job / CHECKPOINT, weights_only=False)["model"]
    assert variant == "flash" and step == 8 and int(task_cfg.seq_len) == 32
    torch.testing.assert_close(model.state_dict()["blocks.0.attn.qkv.weight"], state["blocks.0.attn.qkv.weight"])

    s = _settings(tmp_path, checkpoint=str(job), task_overrides={"num_train": 1, "num_val": 1, "num_test": 16})
    own = measure("flash", {"backend": "math"}, "data_trained", 16, s)
    other = measure("linear", {}, "data_trained", 16, s)
    fresh = measure("flash", {"backend": "math"}, "data", 16, s)    # the same architecture, untrained
    assert own.facts["trained_attention"] is True and other.facts["trained_attention"] is False
    assert own.facts["checkpoint_variant"] == "flash" and own.facts["checkpoint_step"] == 8
    assert fresh.facts["architecture"] == "checkpoint" and fresh.facts["dim"] == own.facts["dim"] == 16
    assert own.metrics["lipschitz"] != fresh.metrics["lipschitz"]
    assert own.metrics["bound_ratio"] <= 1


@pytest.mark.parametrize("recipe", ["lra", "small"])
def test_untrained_data_encoder_is_the_one_lra_train_builds(recipe):
    """The ``data`` pattern's encoder has lra-train's settings for the recipe: its recipe_defaults
    (init, qkv_bias, norm_eps, pooling of masked positions, ...) and the task's mask_zero_tokens too."""
    from lra.training.config import resolve

    _, trained, _, _ = resolve(compose_train("task=text", f"recipe={recipe}"))
    assert hidden.model_kwargs(hidden.task_config("text"), recipe) == trained


def test_unknown_data_recipe_names_the_recipes():
    with pytest.raises(ValueError, match=r"recipe 'nope' has no config .*recipes: lra, small"):
        hidden.model_kwargs(hidden.task_config("listops"), "nope")
