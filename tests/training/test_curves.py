"""Training curves: curves.csv beside every record, TensorBoard scalars with logger=tensorboard (read back
with tensorboard's own reader), and loggers whose package is missing stop the run before any work."""
import csv
import importlib.util
import re

import pytest

from lra import tasks
from lra.schema import ConfigError
from lra.training.curves import COLUMNS, CURVES_FILE, Curves, logger_problems
from lra.training.job import run
from conftest import compose_train, tiny_train_overrides


def _overrides(tmp_path, *extra):
    return tiny_train_overrides(tmp_path / "cache", "attention=full", "trainer.steps=10", "trainer.eval_every=4",
                                "trainer.log_every=3", *extra)


def _rows(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == COLUMNS
        return list(reader)


def test_every_run_writes_curves_csv_beside_its_record(tmp_path):
    rec = run(compose_train(*_overrides(tmp_path)), tmp_path / "job")
    assert rec["status"] == "ok" and rec["case"]["curves"] == CURVES_FILE
    rows = _rows(tmp_path / "job" / CURVES_FILE)
    # log boundaries 3, 6, 9, 10 (the last step) and validations 4, 8, 10 (the final one), merged per step
    assert [int(r["step"]) for r in rows] == [3, 4, 6, 8, 9, 10]
    by_step = {int(r["step"]): r for r in rows}
    for h in rec["case"]["history"]:    # the in-loop validations
        assert float(by_step[h["step"]]["val_accuracy"]) == h["val_accuracy"]
        assert float(by_step[h["step"]]["val_loss"]) == h["val_loss"]
    assert float(by_step[10]["val_accuracy"]) == rec["metrics"]["val_accuracy"]
    assert by_step[4]["train_loss"] == "" and by_step[3]["val_accuracy"] == ""   # empty where none exists
    for r in (by_step[s] for s in (3, 6, 9, 10)):
        assert float(r["train_loss"]) > 0 and 0 <= float(r["train_accuracy"]) <= 1
        assert float(r["tokens_per_s"]) > 0
    lrs = [float(by_step[s]["lr"]) for s in (3, 6, 9, 10)]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] > 0 and lrs[-1] == 0   # quick's linear decay to 0
    assert all(r["distill_loss"] == "" for r in rows)


def test_distillation_loss_is_a_curve(tmp_path):
    rec = run(compose_train(*tiny_train_overrides(tmp_path / "cache", "attention=performer", "attention.num_features=8",
                                                  "attention.distill=0.5", "trainer.log_every=2")), tmp_path / "job")
    rows = [r for r in _rows(tmp_path / "job" / CURVES_FILE) if r["distill_loss"]]
    assert [int(r["step"]) for r in rows] == [h["step"] for h in rec["case"]["history"]]
    for r, h in zip(rows, rec["case"]["history"]):
        assert float(r["distill_loss"]) == pytest.approx(sum(h["distill_loss"]) / len(h["distill_loss"]))


def test_curves_rewrite_merges_a_validation_into_its_step_row(tmp_path):
    c = Curves(tmp_path)
    c.add(5, train_loss=1.5, lr=0.1)
    c.add(5, val_accuracy=0.25)
    c.add(7, val_accuracy=float("nan"))
    c.write()
    assert (tmp_path / CURVES_FILE).read_text().splitlines()[1:] == ["5,1.5,,,0.25,0.1,,", "7,,,,nan,,,"]
    with pytest.raises(KeyError, match="unknown curve column"):
        c.add(8, accuracy=1.0)


def test_tensorboard_event_file_holds_the_scalars(tmp_path):
    pytest.importorskip("tensorboard", reason='logger=tensorboard needs the extra: pip install "lra-bench[tensorboard]"')
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rec = run(compose_train(*_overrides(tmp_path), "logger=tensorboard"), tmp_path / "job")
    assert rec["status"] == "ok" and rec["config"]["logger"] == "tensorboard"
    events = EventAccumulator(str(tmp_path / "job" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/accuracy", "train/lr", "train/tokens_per_s", "val/loss", "val/accuracy"} <= tags
    rows = _rows(tmp_path / "job" / CURVES_FILE)
    for tag, column in (("val/accuracy", "val_accuracy"), ("train/loss", "train_loss"), ("train/lr", "lr")):
        want = [(int(r["step"]), float(r[column])) for r in rows if r[column]]
        got = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in want], tag
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6), tag   # stored as float32


@pytest.mark.parametrize("logger,package,extra", [("wandb", "wandb", "lra-bench[wandb]"),
                                                  ("tensorboard", "tensorboard", "lra-bench[tensorboard]")])
def test_a_logger_without_its_package_stops_before_any_work_naming_the_extra(tmp_path, monkeypatch, logger,
                                                                              package, extra):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package else real(name, *a))
    prepared = []
    monkeypatch.setattr(tasks, "prepare", lambda cfg: prepared.append(cfg))
    message = rf"logger={logger} needs the {package} package.*" + re.escape(f'pip install "{extra}"')
    with pytest.raises(ConfigError, match=message):
        run(compose_train(*_overrides(tmp_path), f"logger={logger}"), tmp_path / "job")
    assert not prepared and not (tmp_path / "job" / "checkpoint.pt").exists()


def test_an_unknown_logger_names_the_choices():
    assert logger_problems("tensorbaord") == ["logger='tensorbaord' is invalid: it must be one of none, tensorboard, "
                                              "wandb; fix: logger=tensorboard"]
    assert logger_problems("none") == []
