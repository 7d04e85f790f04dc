"""The Pathfinder generator: labels follow its own geometry, the reference's geometry and rendering, seeded, fast."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from lra.pathfinder import generate as pg
from lra.pathfinder import params_for


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
        assert np.allclose(geo["target_paddles"][i, a, 0, :2], m0)
        assert np.allclose(geo["target_paddles"][i, b, -1, 2:], m1)


def test_paths_are_chains_of_dashes_with_two_margin_gaps(sample):
    _, _, geo = sample
    p = params_for(32)
    seg = geo["target_paddles"]
    lengths = np.linalg.norm(seg[..., 2:] - seg[..., :2], axis=-1)
    assert np.allclose(lengths, p.paddle_length)
    # the reference starts the next paddle a margin past the previous one's end along the old
    # direction and a margin along the new one: ~2 m gaps, a repeat of ~L + 2 m (version 1: m and L + m)
    m = geo["margins"][:, None, None]
    gaps = np.linalg.norm(seg[..., 1:, :2] - seg[..., :-1, 2:], axis=-1)
    repeat = np.linalg.norm(seg[..., 1:, 2:] - seg[..., :-1, 2:], axis=-1)
    assert 1.6 <= (gaps / m).mean() <= 2.0 and gaps.max() <= 2 * m.max() + 3
    assert p.paddle_length + 2 * m.max() - 0.6 <= repeat.mean() <= p.paddle_length + 2 * m.max() + 0.1
    # turns bounded by the continuity: |turn| < pi / (2 * continuity)
    d = seg[..., 2:] - seg[..., :2]
    th = np.arctan2(d[..., 0], d[..., 1])
    turn = np.angle(np.exp(1j * (th[..., 1:] - th[..., :-1])))
    assert np.abs(turn).max() <= np.pi / (2 * p.continuity) + 1e-6
    # everything inside the image
    assert np.nanmin(seg) >= -1 and np.nanmax(seg) <= 32


def test_reference_seed_search(sample):
    """The reference's seed search fails for most first-paddle angles at 32x32 (OpenCV's dilation border)."""
    _, _, geo = sample
    seg = geo["target_paddles"][:, 0, 0]
    deg = np.degrees(np.arctan2(seg[:, 2] - seg[:, 0], seg[:, 3] - seg[:, 1]))
    assert deg.min() >= -150.5 and deg.max() <= -120.5  # the first target path starts up-left
    drawn = (~np.isnan(geo["distractor_paddles"][:, :, 0, 0])).sum(1).mean()
    assert 0.7 <= drawn <= 1.7  # of 5 distractors; the reference run drew 1.16 per image (200 images)
    assert pg._seed_ok(params_for(32), 32).sum() == 30
    assert pg._seed_ok(params_for(32, seed_border_quirk=False), 32).all()
    _, _, g = pg.generate(64, seed=3, size=32, return_geometry=True, seed_border_quirk=False)
    assert (~np.isnan(g["distractor_paddles"][:, :, 0, 0])).sum(1).mean() >= 4


def test_markers_are_drawn(sample):
    images, _, geo = sample
    yx = np.rint(geo["markers"]).astype(int)
    for i in range(len(images)):
        for y, x in yx[i]:
            assert images[i, y, x] >= 200
    assert images.max(axis=(1, 2)).min() == 255  # each image stretched to 0..255
    assert (images == 0).mean() > 0.4  # mostly black background


def test_contrast_per_contour_type():
    """Targets at 1.5, distractors at 2.0: where a distractor is drawn it is the image's brightest paddle."""
    images, _, geo = pg.generate(64, seed=5, size=32, return_geometry=True)
    p = params_for(32)
    no_stretch = pg.generate(64, seed=5, size=32, params=dataclasses.replace(p, stretch=False))[0]
    has = ~np.isnan(geo["distractor_paddles"][:, :, 0, 0]).all(1)
    assert has.any() and (~has).any()
    paths = no_stretch.copy()   # the markers are 255 in every image: blank them, look at the paths
    for i, points in enumerate(np.asarray(geo["markers"]).reshape(len(paths), -1, 2).astype(int)):
        for y, x in points:
            paths[i, max(0, y - 2):y + 3, max(0, x - 2):x + 3] = 0
    brightest = paths.max(axis=(1, 2))
    # unstretched, a paddle's centre is line peak x contrast: 0.6 x 2.0 > 1 for distractors (clipped to 255),
    # 0.6 x 1.5 = 0.9 for targets (at most 230 here)
    assert (brightest[~has] < 255).all()
    assert (brightest[has] == 255).mean() > 0.7    # 0.87 at distractor contrast 2.0; 0 at 1.5
    assert not np.array_equal(images, no_stretch)


def test_deterministic_per_seed_and_workers():
    a = pg.generate(40, seed=7, size=32, batch_size=16)
    b = pg.generate(40, seed=7, size=32, batch_size=16, workers=2)
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
    assert params_for(32, "curv_baseline").contour_length == 6
    p = params_for(32)
    assert (p.contour_length, p.distractor_length, p.num_distractors, p.seed_distance) == (14, 4, 5, 7)
    assert (p.target_contrast, p.distractor_contrast, p.antialias_scale, p.resample) == (1.5, 2.0, 2, "lanczos")
    q = params_for(128)
    assert q.paddle_margin == (2, 3) and (q.target_contrast, q.distractor_contrast) == (0.9, 0.9)
    assert (q.paddle_tries, q.stretch, q.seed_border_quirk) == (p.paddle_tries, p.stretch, p.seed_border_quirk)
    with pytest.raises(ValueError, match="difficulty"):
        params_for(32, "hardest")
    with pytest.raises(ValueError, match="contrast.*parameters:.*target_contrast"):
        params_for(32, contrast=1.0)  # version 1's single contrast
    with pytest.raises(ValueError, match="whole number"):
        params_for(32, paddle_thickness=0.3)
    with pytest.raises(ValueError, match="resample"):
        params_for(32, resample="bicubic")


def test_resampling_matches_pil():
    """The fine-grid -> image filter is PIL's 8-bit Lanczos (and box) resize, which the reference used."""
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    for n_in, n_out in [(17, 9), (64, 32), (42, 21)]:
        for kind, res in [("lanczos", Image.Resampling.LANCZOS), ("box", Image.Resampling.BOX)]:
            for a in ((rng.random((n_in, n_in)) < 0.2).astype(np.uint8) * 255,
                      rng.integers(0, 256, (n_in, n_in)).astype(np.uint8)):
                ref = np.asarray(Image.fromarray(a).resize((n_out, n_out), res))
                assert np.array_equal(pg.resample_u8(a, n_out, kind), ref)


def test_lines_match_pil():
    """Paddles on the fine grid: PIL's 1-px (Pathfinder) and 3-px (Path-X) lines, pixel for pixel."""
    Image = pytest.importorskip("PIL.Image")
    from PIL import ImageDraw

    for width, la in [(1, 4), (3, 10)]:
        for dy in range(-la, la + 1):
            for dx in range(-la, la + 1):
                n = 4 * la + 9
                c = n // 2
                im = Image.new("F", (n, n), "black")
                ImageDraw.Draw(im).line([(c, c), (c + dx, c + dy)], fill="white", width=width)
                ref = np.asarray(im) > 0
                mine = np.zeros((n, n), bool)
                pts = pg._line_pixels(dy, dx, width) + c
                mine[pts[:, 0], pts[:, 1]] = True
                assert np.array_equal(ref, mine), (width, dy, dx)


def test_speed_smoke():
    pg.generate(256, seed=0, size=32)  # warm up
    n = 4096
    t0 = time.process_time()
    pg.generate(n, seed=1, size=32)
    rate = n / (time.process_time() - t0)
    print(f"pathfinder 32x32: {rate:.0f} images per CPU-second")
    assert rate >= 500, f"{rate:.0f} images/s"  # ~2,500 per CPU-second measured on a shared machine


# torch made unimportable: ``sys.modules["torch"] = None`` in the process itself, and a stub package on
# PYTHONPATH that raises for the spawned workers (fresh interpreters that do not inherit sys.modules)
WITHOUT_TORCH = textwrap.dedent("""
    import sys
    sys.modules["torch"] = None
    import numpy as np
    import lra.pathfinder
    from lra.pathfinder import difficulty, generate
    x, y = generate.generate(8, seed=1, size=32, batch_size=4, workers=2)
    assert difficulty.blob_counts(x).shape == (8,)
    assert "torch" not in {name.split(".")[0] for name, module in sys.modules.items() if module is not None}
    np.savez(sys.argv[1], x=x, y=y)
""")


def test_generates_without_torch(tmp_path):
    """The package and the worker processes it spawns run with torch unimportable, and draw the same images."""
    stub = tmp_path / "no_torch" / "torch"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('torch is blocked in this test')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(stub.parent), os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "images.npz"
    p = subprocess.run([sys.executable, "-c", WITHOUT_TORCH, str(out)], env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    got = np.load(out)
    x, y = pg.generate(8, seed=1, size=32, batch_size=4, workers=None)  # None: default_workers (lra.devices)
    assert np.array_equal(got["x"], x) and np.array_equal(got["y"], y)
