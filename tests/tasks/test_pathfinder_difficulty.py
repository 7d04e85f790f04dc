"""Generated Pathfinder is as hard as the reference's: shortcuts at chance, dash and pixel statistics in range.

The ranges come from the reference generator itself (drewlinsley/pathfinder ``snakes2.py`` with
LRA's 32x32 settings, scipy.misc's 8-bit resize emulated, OpenCV 5.0), run outside this repository:
2,500 images with its OpenCV dilation (``REFERENCE``, the default ``seed_border_quirk=True``) and
1,000 with a zero-border dilation (``REFERENCE_ZERO_BORDER``, ``seed_border_quirk=False``), and
Path-X images. Each range is the reference's mean +- about 1.5 times the spread (0.1%..99.9%)
of a 400-image mean, bootstrapped from the reference set; version 1 of the generator falls
outside nearly all of them (grey levels 6.8, blobs 5.1, no faint pixels).
"""
from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from lra.pathfinder import difficulty as pd
from lra.pathfinder import generate as pg

N = 400  # images per check: the standard error of an accuracy is 2.5 points

# (low, high) of a 400-image mean; reference means in the comments
REFERENCE = {                      # OpenCV dilation, 2,500 images: mean
    "blobs_t16": (11.8, 13.3),     # 12.54
    "blobs_t64": (13.1, 14.5),     # 13.79
    "blobs_t128": (20.1, 22.1),    # 21.11
    "gray_levels": (62.8, 65.9),   # 64.34
    "mean": (19.6, 20.9),          # 20.23
    "black": (0.649, 0.667),       # 0.658
    "faint_1_15": (0.178, 0.190),  # 0.184
    "marker_peak": (236.4, 242.4),  # 239.4
}
REFERENCE_ZERO_BORDER = {          # zero-border dilation, 1,000 images: mean
    "blobs_t16": (15.1, 16.6),     # 15.86
    "blobs_t64": (17.8, 19.4),     # 18.57
    "blobs_t128": (31.4, 33.1),    # 32.22
    "gray_levels": (78.6, 80.6),   # 79.63
    "mean": (27.2, 28.0),          # 27.60
    "black": (0.544, 0.556),       # 0.550
    "faint_1_15": (0.228, 0.238),  # 0.233
    "marker_peak": (220.3, 224.0),  # 222.1
}
# Path-X (128x128), 144 reference images: mean +- 4.5 standard deviations of a 24-image mean (bootstrap)
REFERENCE_PATHX = {"mean": (7.55, 8.25),            # 7.90
                   "black": (0.857, 0.870),         # 0.863
                   "faint_1_15": (0.072, 0.081),    # 0.077
                   "gray_levels": (167.5, 177.0),   # 172.2
                   "blobs_t64": (56.0, 59.8)}       # 57.9


def _stats(images: np.ndarray, markers: np.ndarray) -> dict[str, float]:
    px = pd.pixel_stats(images, markers)
    out = {f"blobs_t{t}": float(pd.blob_counts(images, t).mean()) for t in pd.THRESHOLDS}
    out.update(gray_levels=float(pd.gray_levels(images).mean()), mean=px["mean"], black=px["black"],
               faint_1_15=px["faint_1_15"], marker_peak=px["marker_peak"])
    return out


def _check_ranges(stats: dict, ranges: dict) -> list[str]:
    return [f"{k} = {stats[k]:.3f} not in [{lo}, {hi}]" for k, (lo, hi) in ranges.items() if not lo <= stats[k] <= hi]


@pytest.fixture(scope="module")
def generated():
    images, labels, geo = pg.generate(N, seed=101, size=32, return_geometry=True)
    return images, labels, geo["markers"].astype(np.int64)


def test_flood_fill_is_at_chance(generated):
    """Version 1's unbroken strokes: 0.76 at threshold 16 and 64, reach 1 (same blob for every positive)."""
    images, labels, markers = generated
    ff = pd.flood_fill(images, labels, markers)
    assert set(ff) == {f"t{t}_r{r}" for t in (16, 64, 128) for r in (1, 2, 3)}
    bad = {k: round(v["accuracy"], 3) for k, v in ff.items() if not 0.40 <= v["accuracy"] <= 0.60}
    assert not bad, f"flood fill beats chance: {bad}"


def test_dash_and_pixel_statistics_match_the_reference(generated):
    images, _, markers = generated
    problems = _check_ranges(_stats(images, markers), REFERENCE)
    assert not problems, problems


def test_zero_border_variant_matches_its_reference():
    images, labels, geo = pg.generate(N, seed=102, size=32, return_geometry=True, seed_border_quirk=False)
    markers = geo["markers"].astype(np.int64)
    problems = _check_ranges(_stats(images, markers), REFERENCE_ZERO_BORDER)
    assert not problems, problems
    ff = pd.flood_fill(images, labels, markers)
    assert all(0.40 <= v["accuracy"] <= 0.60 for v in ff.values()), ff


def test_simple_features_stay_near_chance(generated):
    """Pixel counts, intensity histogram, blob counts: chance. The marker distance: the reference leaks
    a little (0.56 at 2,000 images: its first target path always starts up-left), so do we."""
    images, labels, markers = generated
    acc = {k: pd.logistic_accuracy(v, labels) for k, v in pd.simple_features(images, markers).items()}
    limits = {"pixel_counts": 0.60, "histogram": 0.60, "blob_counts": 0.60, "marker_distance": 0.65, "all": 0.65}
    bad = {k: round(a, 3) for k, a in acc.items() if a > limits[k]}
    assert not bad, f"a simple feature predicts the label: {bad}"


def test_pathx_statistics_match_the_reference():
    images, labels, geo = pg.generate(24, seed=103, size=128, batch_size=24, return_geometry=True)
    px = pd.pixel_stats(images, geo["markers"].astype(np.int64))
    stats = {"mean": px["mean"], "black": px["black"], "faint_1_15": px["faint_1_15"],
             "gray_levels": float(pd.gray_levels(images).mean()), "blobs_t64": float(pd.blob_counts(images, 64).mean())}
    problems = _check_ranges(stats, REFERENCE_PATHX)
    assert not problems, problems
    # 24 images are too few for chance within 10 points, but version 1 (0.83-0.88 on 144) fails this
    ff = pd.flood_fill(images, labels, geo["markers"].astype(np.int64), thresholds=(64,), reaches=(1, 3))
    assert all(v["accuracy"] <= 0.75 for v in ff.values()), ff


def test_markers_are_found_in_the_pixels(generated):
    images, _, markers = generated
    found = pd.find_markers(images, 1.5)
    dist = np.abs(found[:, :, None, :] - markers[:, None, :, :]).max(-1)  # (n, found, true) Chebyshev
    assert (dist.min(1) <= 1).all(1).mean() >= 0.97


def test_flood_fill_sees_a_connection():
    """The measure itself: markers joined by a solid line share a blob, markers with a gap do not."""
    images = np.zeros((2, 16, 16), np.uint8)
    images[:, 8, 2:14] = 200
    images[1, 8, 7:9] = 0                      # a 2-px gap: reach 1 and 2 split it, reach 3 jumps it
    markers = np.array([[[8, 2], [8, 13]]] * 2)
    labels = np.array([1, 0])
    assert pd.same_blob(images, markers, 64, 1).tolist() == [True, False]
    assert pd.same_blob(images, markers, 64, 3).tolist() == [True, True]
    assert pd.flood_fill(images, labels, markers, thresholds=(64,), reaches=(1,))["t64_r1"]["accuracy"] == 1.0
    assert not pd.same_blob(images, markers, 255, 1).any()  # below the threshold: background


@pytest.mark.parametrize("reach", [1, 2, 3])
def test_label_blobs_matches_breadth_first_search(reach):
    rng = np.random.default_rng(reach)
    fg = rng.random((6, 12, 15)) < 0.3
    lab = pd.label_blobs(fg, reach)
    for i in range(len(fg)):
        seen = -np.ones(fg[i].shape, int)
        count = 0
        for y0, x0 in zip(*np.nonzero(fg[i])):
            if seen[y0, x0] >= 0:
                continue
            queue, seen[y0, x0] = deque([(y0, x0)]), count
            while queue:
                y, x = queue.popleft()
                for yy in range(max(0, y - reach), min(12, y + reach + 1)):
                    for xx in range(max(0, x - reach), min(15, x + reach + 1)):
                        if fg[i, yy, xx] and seen[yy, xx] < 0:
                            seen[yy, xx] = count
                            queue.append((yy, xx))
            count += 1
        pairs = set(zip(lab[i][fg[i]].tolist(), seen[fg[i]].tolist()))
        assert len(pairs) == count == len({a for a, _ in pairs})  # the same partition
    assert (lab[~fg] == -1).all()
    assert pd.blob_counts(fg.astype(np.uint8) * 255, 128, reach).tolist() == [
        len(np.unique(lab[i][fg[i]])) for i in range(len(fg))]


def test_logistic_accuracy_finds_a_real_signal():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    x = y[:, None] + rng.normal(0, 0.5, (400, 1))
    assert pd.logistic_accuracy(x, y) > 0.8  # the Bayes rate is 0.84
    assert 0.4 < pd.logistic_accuracy(rng.normal(size=(400, 3)), y) < 0.6
