"""trainer.test_checkpoint=final|best_val: the recipes' defaults, the tested weights are those of the best
validation (checked by evaluating them again), both test accuracies are recorded, and a typo stops the run."""
import pytest
import torch

from lra import tasks
from lra.data import DeviceBatches
from lra.schema import ConfigError
from lra.training.config import resolve
from lra.training.finetune import build_model
from lra.training.job import run
from lra.training.step import evaluate
from conftest import compose_train, tiny_train_overrides


@pytest.mark.parametrize("recipe,tested", [("lra", "final"), ("small", "best_val")])
def test_each_recipe_has_its_reference_default(recipe, tested):
    _, _, trainer, _ = resolve(compose_train("task=listops", f"recipe={recipe}"))
    assert trainer["test_checkpoint"] == tested
    _, _, trainer, _ = resolve(compose_train("task=listops", f"recipe={recipe}", "trainer.test_checkpoint=final"))
    assert trainer["test_checkpoint"] == "final"


def _overrides(tmp_path, tested):
    # a high constant lr on a tiny model: validation accuracy moves up and down from one evaluation to the next
    return tiny_train_overrides(tmp_path / "cache", "attention=full", "trainer.steps=24", "trainer.eval_every=2",
                                "trainer.checkpoint_every=8", "trainer.lr=0.02", "trainer.schedule=constant",
                                "trainer.model_overrides.dropout=0.0", f"trainer.test_checkpoint={tested}")


def _data_and_model(cfg, bucketing):
    """The run's model (untrained) and its validation and test batches, bucketed as the run's were."""
    task_cfg, model_kw, _, knobs = resolve(cfg)
    data = tasks.prepare(task_cfg)
    model = build_model(data, model_kw, cfg.attention.name, {**knobs, "seed": int(cfg.seed)})
    cut = dict(bucket_multiple=bucketing["multiple"], bucket_window=bucketing["window"]) if bucketing["on"] else {}
    split = lambda s: DeviceBatches(*data.splits[s], 8, "cpu", data.pad_id, shuffle=False, **cut)  # noqa: E731
    return model, split("val"), split("test")


def test_best_val_tests_the_weights_of_the_best_validation(tmp_path):
    cfg = compose_train(*_overrides(tmp_path, "best_val"))
    rec = run(cfg, tmp_path / "job")
    assert rec["status"] == "ok", rec["message"]
    m, tc = rec["metrics"], rec["case"]["test_checkpoint"]
    history = rec["case"]["history"] + [{"step": 24, "val_accuracy": m["val_accuracy"]}]
    best = max(history, key=lambda h: h["val_accuracy"])   # the first of equal accuracies
    assert tc == {"tested": "best_val", "best_val_step": best["step"], "best_val_accuracy": best["val_accuracy"]}
    assert tc["best_val_step"] < 24, "the setting must give a best validation before the end to test anything"
    assert m["accuracy"] == m["accuracy_best_val"] and m["best_val_accuracy"] == best["val_accuracy"]

    # evaluate again: the weights kept in the checkpoint score the best validation and the tested accuracy
    saved = torch.load(tmp_path / "job" / "checkpoint.pt", weights_only=False)
    assert saved["best"]["step"] == best["step"]
    model, val_b, test_b = _data_and_model(cfg, rec["case"]["bucketing"])
    model.load_state_dict(saved["best"]["weights"])
    assert evaluate(model, val_b, None)[0] == best["val_accuracy"]
    assert evaluate(model, test_b, None)[0] == m["accuracy_best_val"] == m["accuracy"]
    model.load_state_dict(saved["model"])                        # the final weights
    assert evaluate(model, test_b, None)[0] == m["accuracy_final"]
    assert evaluate(model, val_b, None)[0] == m["val_accuracy"] < best["val_accuracy"]


def test_final_tests_the_last_weights_and_records_both(tmp_path):
    best_val = run(compose_train(*_overrides(tmp_path, "best_val")), tmp_path / "best")
    final = run(compose_train(*_overrides(tmp_path, "final")), tmp_path / "final")
    assert final["case"]["test_checkpoint"]["tested"] == "final"
    assert final["metrics"]["accuracy"] == final["metrics"]["accuracy_final"]
    for key in ("accuracy_final", "accuracy_best_val", "val_accuracy"):   # same training, other choice
        assert final["metrics"][key] == best_val["metrics"][key], key
    assert final["case"]["test_checkpoint"]["best_val_step"] == best_val["case"]["test_checkpoint"]["best_val_step"]


def test_a_typo_stops_the_run_with_the_choices(tmp_path, monkeypatch):
    prepared = []
    monkeypatch.setattr(tasks, "prepare", lambda cfg: prepared.append(cfg))
    with pytest.raises(ConfigError, match=r"trainer\.test_checkpoint='bestval' is invalid: it must be null or "
                                          r"one of final, best_val"):
        run(compose_train(*_overrides(tmp_path, "bestval")), tmp_path / "job")
    assert not prepared
