"""The Pathfinder generator: labels follow its own geometry, markers are drawn, seeded, fast."""
from __future__ import annotations

import time

import numpy as np
import pytest

from lra import pathfinder_gen as pg


@pytest.fixture(scope="module")
def sample():
    return pg.generate(64, seed=3, size=32, return_geometry=True)


def test_shapes_and_balance(sample):
    images, labels, geo = sample
    assert images.shape == (64, 32, 32) and images.dtype == np.uint8
    assert set(labels.tolist()) <= {0, 1} and 10 < labels.sum() < 54
    assert geo["target_paddles"].shape == (64, 2, 14, 4)
    assert not np.isnan(geo["target_paddles"]).any()  # both target paths always complete


def test_labels_follow_geometry(sample):
    images, labels, geo = sample
    for i in range(len(labels)):
        origins, terminals = geo["origins"][i], geo["terminals"][i]
        m0, m1 = geo["markers"][i]
        # the first marker is the origin of a target path, the second the terminal of a target path
        a = int(np.argmin(np.linalg.norm(origins - m0, axis=1)))
        b = int(np.argmin(np.linalg.norm(terminals - m1, axis=1)))
        assert np.allclose(origins[a], m0) and np.allclose(terminals[b], m1)
        assert (a, b) == tuple(geo["marker_paths"][i])
        assert labels[i] == int(a == b)  # positive: the two ends of one path; negative: ends of two paths
        # the ends are the actual ends of the drawn paddle chains
        paddles = geo["target_paddles"][i, a]
        assert np.allclose(paddles[0, :2], m0)
        assert np.allclose(geo["target_paddles"][i, b, -1, 2:], m1)


def test_paths_are_chains_of_short_dashes(sample):
    _, _, geo = sample
    p = pg.params_for(32)
    seg = geo["target_paddles"]
    lengths = np.linalg.norm(seg[..., 2:] - seg[..., :2], axis=-1)
    assert np.allclose(lengths, p.paddle_length)
    gaps = np.linalg.norm(seg[..., 1:, :2] - seg[..., :-1, 2:], axis=-1)
    assert np.allclose(gaps, geo["margins"][:, None, None])
    # turns bounded by the continuity: |turn| <= pi / (2 * continuity)
    d = seg[..., 2:] - seg[..., :2]
    th = np.arctan2(d[..., 0], d[..., 1])
    turn = np.angle(np.exp(1j * (th[..., 1:] - th[..., :-1])))
    assert np.abs(turn).max() <= np.pi / (2 * p.continuity) + 1e-6
    # everything inside the image
    assert np.nanmin(seg) >= -0.5 and np.nanmax(seg) <= 31.5


def test_markers_are_drawn(sample):
    images, _, geo = sample
    yx = np.rint(geo["markers"]).astype(int)
    for i in range(len(images)):
        for y, x in yx[i]:
            assert images[i, y, x] >= 200
    assert (images == 0).mean() > 0.4  # mostly black background


def test_deterministic_per_seed():
    a = pg.generate(40, seed=7, size=32, batch_size=16)
    b = pg.generate(40, seed=7, size=32, batch_size=16)
    c = pg.generate(40, seed=8, size=32, batch_size=16)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_pathx_size():
    images, labels, geo = pg.generate(4, seed=0, size=128, batch_size=4, return_geometry=True)
    assert images.shape == (4, 128, 128)
    for i in range(4):
        for y, x in np.rint(geo["markers"][i]).astype(int):
            assert images[i, y, x] >= 200


def test_params_for_difficulties():
    assert pg.params_for(32, "curv_baseline").contour_length == 6
    p = pg.params_for(32)
    assert (p.contour_length, p.distractor_length, p.num_distractors, p.seed_distance) == (14, 4, 5, 7)
    assert pg.params_for(128).paddle_margin == (2, 3)
    with pytest.raises(ValueError, match="difficulty"):
        pg.params_for(32, "hardest")


def test_speed_smoke():
    pg.generate(256, seed=0, size=32)  # warm up
    n = 4096
    t0 = time.perf_counter()
    pg.generate(n, seed=1, size=32)
    rate = n / (time.perf_counter() - t0)
    print(f"pathfinder 32x32: {rate:.0f} images/s")
    assert rate >= 500, f"{rate:.0f} images/s"  # ~1,500/s measured on 2 shared cores; lenient for busy CI
