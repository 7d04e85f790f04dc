"""Issue 33's bad input, tried as a new user would: each stops before any work, naming the bad value and
the valid choices; a Pathfinder length too small for two markers and a path is a config error naming
the smallest valid size (worked out from the generator's marker radius and checked on generated
images); a length that is not a square runs at the square below it and the record says so."""
import math

import numpy as np
import pytest
import torch

from lra import tasks
from lra.pathfinder import params_for
from lra.pathfinder.generate import generate
from lra.schema import ConfigError
from lra.tasks.image import resize_square
from lra.tasks.pathfinder import smallest_side
from lra.training.job import run
from conftest import compose_train, tiny_train_overrides

BAD = [
    (["trainer.accumulate=0"], r"trainer\.accumulate=0 is invalid: it must be null or an integer >= 1 \(micro-batches "
                               r"per optimizer step.*fix: trainer\.accumulate=2"),
    (["trainer.accumulate=-2"], r"trainer\.accumulate=-2 is invalid: it must be null or an integer >= 1"),
    (["trainer.test_checkpoint=bestval"], r"trainer\.test_checkpoint='bestval' is invalid: it must be null or one of "
                                          r"final, best_val"),
    (["logger=tensorbaord"], r"logger='tensorbaord' is invalid: it must be one of none, tensorboard, wandb"),
    (["task=pathfinder", "trainer.task_overrides.seq_len=3"],
     r"task\.seq_len=3 is too small for pathfinder: .*1x1 pixels.*the smallest valid length is 121 \(11x11\); "
     r"fix: task\.seq_len=121"),
    (["task=pathx", "trainer.task_overrides.seq_len=400"],
     r"task\.seq_len=400 is too small for pathx: .*20x20.*smallest valid length is 484 \(22x22\)"),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_input_stops_before_any_work(tmp_path, monkeypatch, overrides, message):
    prepared = []
    monkeypatch.setattr(tasks, "prepare", lambda cfg: prepared.append(cfg))
    with pytest.raises(ConfigError, match=message):
        run(compose_train(*tiny_train_overrides(tmp_path / "cache", *overrides)), tmp_path / "job")
    assert not prepared and not (tmp_path / "cache").exists() and not (tmp_path / "job" / "checkpoint.pt").exists()


def test_the_smallest_pathfinder_size_follows_the_marker_radius():
    assert smallest_side(params_for(32), 32) == math.ceil(32 / 3) == 11          # LRA: markers of radius 1.5
    assert smallest_side(params_for(128), 128) == math.ceil(128 / 6) == 22       # Path-X: radius 3
    assert smallest_side(params_for(32, marker_radius=4.0), 32) == 4
    cfg = compose_train("task=pathfinder", "task.seq_len=121")
    tasks.get("pathfinder").check_config(cfg.task)                               # the smallest valid size passes


def _markers_after_resize(side, n=200):
    """Markers alone (paths drawn at zero contrast, no distractors), generated at 32x32 and resized to
    ``side``: per marker, the brightest resized pixel around its centre as a share of the marker's own
    intensity; per image, whether the two markers lie at least 2 pixels apart (room for a path pixel)."""
    params = params_for(32, target_contrast=0.0, num_distractors=0)
    images, _, geo = generate(n, seed=3, size=32, params=params, return_geometry=True)
    full = images.reshape(n, -1).max(1).astype(float)
    small = resize_square(torch.from_numpy(images.reshape(n, -1)), 32, side).view(n, side, side).float().numpy()
    peaks, apart = [], []
    for img, markers, top in zip(small, geo["markers"], full):
        cells = [(min(side - 1, int((y + 0.5) * side / 32)), min(side - 1, int((x + 0.5) * side / 32)))
                 for y, x in markers]
        peaks += [img[max(0, cy - 1):cy + 2, max(0, cx - 1):cx + 2].max() / top for cy, cx in cells]
        apart.append(max(abs(cells[0][0] - cells[1][0]), abs(cells[0][1] - cells[1][1])) >= 2)
    return np.array(peaks), np.mean(apart)


def test_at_the_smallest_size_two_markers_and_a_path_pixel_fit_and_far_below_it_they_do_not():
    """Area averaging fades a marker gradually (a stated convention sets the line: a marker at least one
    pixel wide); at the smallest valid size the two markers are still distinct spots with room for a
    path between them, at 3x3 (task.seq_len=9) they are not, at 1x1 (task.seq_len=3) nothing is."""
    side = smallest_side(params_for(32), 32)
    peaks, apart = _markers_after_resize(side)
    assert np.percentile(peaks, 10) >= 0.25 and apart >= 0.9
    peaks, apart = _markers_after_resize(3)
    assert np.median(peaks) < 0.1 and apart < 0.5
    _, apart = _markers_after_resize(1)
    assert apart == 0


def test_a_length_that_is_not_a_square_runs_at_the_square_below_and_the_record_says_so(tmp_path, capsys):
    overrides = tiny_train_overrides(tmp_path / "cache", "task=pathfinder", "attention=full", "trainer.steps=2",
                                     "trainer.eval_every=2", "trainer.task_overrides.seq_len=1000",
                                     "task.gen_workers=1")   # 64 / 16 / 16 images, generated
    rec = run(compose_train(*overrides), tmp_path / "job")
    assert rec["status"] == "ok", rec["message"]
    assert rec["seq_len"] == 961 and rec["config"]["task"]["image_size"] == 31
    assert rec["config"]["task"]["seq_len"] == 1000                          # what was asked
    assert any("task.seq_len=1000 is not a square" in n and "31x31 = 961" in n for n in rec["case"]["notes"])
    assert "seq_len=1000 -> 31x31 = 961 pixels" in capsys.readouterr().out   # and the log says so
