"""The Pathfinder tasks say which generator made their images: config, metadata, cache key, lra-data show."""
from __future__ import annotations


import pytest
import torch
from omegaconf import OmegaConf

from lra import pathfinder, tasks
from conftest import compose_train
from test_tasks import task_cfg


@pytest.mark.parametrize("name", ["pathfinder", "pathx"])
def test_configs_name_the_generator_version(name):
    cfg = compose_train(f"task={name}")
    # train records hold the resolved config, so each record says which generator drew its images
    record_config = OmegaConf.to_container(cfg, resolve=True)
    assert record_config["task"]["generator_version"] == pathfinder.GENERATOR_VERSION == 2


def test_generated_data_carries_the_version(tmp_path):
    data = tasks.prepare(task_cfg("pathfinder", tmp_path, progress=False, num_images=20))
    assert data.meta["generator_version"] == pathfinder.GENERATOR_VERSION
    assert data.meta["params"]["seed_border_quirk"] is True and data.meta["params"]["target_contrast"] == 1.5
    (cached,) = (tmp_path / "cache").glob("pathfinder-*.pt")
    key = torch.load(cached, weights_only=False)["key"]
    assert key["generator_version"] == pathfinder.GENERATOR_VERSION  # old caches (version 1) are not reused
    with pytest.raises(ValueError, match="generator_version=1.*version 2"):
        tasks.prepare(task_cfg("pathfinder", tmp_path, progress=False, num_images=20, generator_version=1))


def test_generator_overrides_reach_the_images(tmp_path):
    a = tasks.prepare(task_cfg("pathfinder", tmp_path, progress=False, num_images=20))
    b = tasks.prepare(task_cfg("pathfinder", tmp_path, progress=False, num_images=20, generator={"seed_border_quirk": False}))
    assert b.meta["params"]["seed_border_quirk"] is False
    assert not torch.equal(a.splits["train"][0], b.splits["train"][0])
    with pytest.raises(ValueError, match="unknown Pathfinder generator parameter"):
        tasks.prepare(task_cfg("pathfinder", tmp_path, progress=False, num_images=20, generator={"contrast": 1.0}))


def test_show_prints_the_difficulty_checks(tmp_path, capsys, monkeypatch):
    from lra.cli.data import main

    monkeypatch.setenv("LRA_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "grid.png"
    with pytest.raises(SystemExit) as exit_:
        main(["show", "task=pathfinder", "num_images=60", "progress=false", "n=4", f"out={out}"])
    assert exit_.value.code == 0 and out.is_file()
    text = capsys.readouterr().out
    assert "generator version 2" in text and "flood fill" in text and "grey levels" in text
