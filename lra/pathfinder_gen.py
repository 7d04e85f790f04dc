"""A seeded, vectorized (NumPy) Pathfinder generator (Linsley et al. 2018; as used by LRA).

An image shows two circular markers and several curved paths made of short dashes
("paddles") separated by gaps. Two *target* paths start from seeds ``seed_distance`` apart;
one marker sits on the start (origin) of one target path, the other marker on the far end
(terminal) of the same path (label 1) or of the other target path (label 0). Shorter
*distractor* paths fill the rest of the image. This follows drewlinsley/pathfinder's
``snakes2.py`` (the generator of the LRA release), simplified but faithful:

* A path of ``n`` paddles is a walk: paddle ``i`` runs from ``A_i`` to
  ``B_i = A_i + paddle_length * u(theta_i)``; the next one starts a gap ``margin`` further,
  ``A_{i+1} = B_i + margin * u(theta_{i+1})``. The turn ``theta_{i+1} - theta_i`` has density
  proportional to ``cos^2(continuity * turn)`` on ``|turn| <= pi / (2 continuity)`` (the
  reference weights candidate end points by ``cos(min(continuity * turn, pi/2))^2``), so
  ``continuity`` 1.0 allows turns up to 90 degrees and 1.8 up to 50 degrees.
* Paddles avoid each other: a candidate paddle is rejected when it touches a pixel already
  used by another paddle (dilated by the margin) other than the path's previous paddle (the
  reference's mask, updated one paddle late); the turn is then drawn again (rejection
  sampling keeps the turn density restricted to free directions). A target path that
  cannot be completed makes the whole image be drawn again (as in the reference); a
  distractor that cannot be completed is left out (``allow_incomplete``).
* The first target seed lies at least ``2 * seed_distance`` from the border (the
  reference's ``lined_mask``), the second ``seed_distance`` away in a random direction.
* Rendering: paddles and markers are drawn on an ``antialias_scale`` times finer grid and
  averaged down (anti-aliasing); paddles have intensity ``contrast`` (clipped at 1), the
  markers (discs of ``marker_radius``) full intensity; uint8 output, black background.

Everything is done for a batch of images at once: each growth step is one set of array
operations over the batch, so the standard 200,000-image set takes well under a minute.
Deterministic for a given ``(n, seed, size, params, batch_size)``.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace

import numpy as np

DISTRACTOR_RETRIES = 4
DIFFICULTIES = {"curv_baseline": 6, "curv_contour_length_9": 9, "curv_contour_length_14": 14}


@dataclass(frozen=True)
class PathfinderParams:
    """Generator parameters (names as in drewlinsley/pathfinder's ``snakes2`` arguments)."""

    contour_length: int = 14          # paddles per target path
    paddle_length: float = 2.0        # pixels
    paddle_margin: tuple = (1,)       # gap between paddles (one drawn per image)
    paddle_thickness: float = 0.5     # pixels
    marker_radius: float = 1.5        # pixels
    seed_distance: float = 7.0        # distance of the two target seeds
    continuity: float = 1.0           # turn density cos^2(continuity * turn)
    distractor_length: int = 4        # paddles per distractor path (contour_length // 3)
    num_distractors: int = 5          # distractor paths (20 // distractor_length at 32x32)
    padding: int = 1                  # border kept empty
    contrast: float = 1.5             # paddle intensity factor (snake 2 x paddle 0.75), clipped at 1
    antialias_scale: int = 2
    max_tries: int = 16               # turn candidates per paddle

    def __post_init__(self):
        object.__setattr__(self, "paddle_margin", tuple(int(m) for m in np.atleast_1d(self.paddle_margin)))
        if self.contour_length < 1 or self.distractor_length < 1:
            raise ValueError("contour_length and distractor_length must be >= 1")
        if self.continuity < 0.5:
            raise ValueError("continuity must be >= 0.5 (turns beyond 180 degrees are not meaningful)")


def params_for(size: int, difficulty: str = "curv_contour_length_14", **overrides) -> PathfinderParams:
    """The LRA release's parameters for a resolution and difficulty (lra_benchmarks/data/pathfinder.py).

    32x32: paddle 2, margin 1, thickness 0.5, marker 1.5, seed distance 7, continuity 1.0,
    20 // distractor_length distractors. 128x128 (Path-X): paddle 5 (snakes2 default),
    margins {2, 3}, thickness 1.5, marker 3, seed distance 20, continuity 1.8,
    35 // distractor_length distractors. 64 and 256 follow the same docstring. Other sizes
    scale the 32x32 parameters.
    """
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"unknown Pathfinder difficulty {difficulty!r}; choose one of {', '.join(DIFFICULTIES)}")
    cl = DIFFICULTIES[difficulty]
    dl = max(1, cl // 3)
    table = {
        32: dict(paddle_length=2, paddle_margin=(1,), paddle_thickness=0.5, marker_radius=1.5, seed_distance=7,
                 continuity=1.0, num_distractors=20 // dl, contrast=1.5, antialias_scale=2),
        64: dict(paddle_length=5, paddle_margin=(1,), paddle_thickness=1.0, marker_radius=2.5, seed_distance=12,
                 continuity=1.8, num_distractors=22 // dl, contrast=0.8, antialias_scale=2),
        128: dict(paddle_length=5, paddle_margin=(2, 3), paddle_thickness=1.5, marker_radius=3, seed_distance=20,
                  continuity=1.8, num_distractors=35 // dl, contrast=0.9, antialias_scale=2),
        256: dict(paddle_length=5, paddle_margin=(3,), paddle_thickness=2, marker_radius=5, seed_distance=27,
                  continuity=1.8, num_distractors=30 // dl, contrast=1.0, antialias_scale=2),
    }
    if size in table:
        base = table[size]
    else:
        s = size / 32
        base = dict(paddle_length=2 * s, paddle_margin=(max(1, round(s)),), paddle_thickness=0.5 * s,
                    marker_radius=1.5 * s, seed_distance=7 * s, continuity=1.0, num_distractors=20 // dl,
                    contrast=1.5, antialias_scale=4 if size <= 48 else 2)
    base.update(contour_length=cl, distractor_length=dl)
    base.update({k: v for k, v in overrides.items() if v is not None})
    return PathfinderParams(**base)


# ----------------------------------------------------------------------------- geometry

def _turn_table(continuity: float, n: int = 4096) -> np.ndarray:
    """Inverse CDF of the turn density cos^2(c * t) on |t| <= pi / (2c), tabulated at (i + 0.5) / n."""
    x = np.linspace(-np.pi / 2, np.pi / 2, 8193)
    cdf = (x + np.pi / 2 + np.sin(2 * x) / 2) / np.pi
    return np.interp((np.arange(n) + 0.5) / n, cdf, x / continuity)


class _Batch:
    """Growth state of a batch of images: occupancy grid and the list of committed paddles."""

    def __init__(self, b: int, size: int, p: PathfinderParams, margins: np.ndarray, rng: np.random.Generator):
        self.b, self.size, self.p, self.rng = b, size, p, rng
        self.margin = margins.astype(np.float64)  # (b,)
        n_pts = max(2, int(math.ceil(p.paddle_length)) + 1)
        self.frac = np.linspace(0.0, 1.0, n_pts)  # sample points along a paddle, <= 1 px apart
        self.turns = _turn_table(p.continuity)
        # dilation of a stamped paddle: disc of radius ~ margin (at least one pixel)
        r = int(max(1, round(max(p.paddle_margin) * 0.5 + p.paddle_thickness * 0.5)))
        oy, ox = np.mgrid[-r:r + 1, -r:r + 1]
        keep = oy ** 2 + ox ** 2 <= r * r + r  # a rounded square
        # occupancy grid with a frame G wide, marked used: candidates (within one paddle plus
        # a gap of a placed tip) and stamps never leave the array, so no bounds checks
        self.G = G = int(math.ceil(p.paddle_length + max(p.paddle_margin))) + r + 2
        self.W = W = size + 2 * G
        self.dil = (oy[keep] * W + ox[keep]).astype(np.int64)
        grid = np.ones((b, W, W), dtype=bool)
        grid[:, G + p.padding:G + size - p.padding, G + p.padding:G + size - p.padding] = False
        self._empty = grid[0].copy()
        self.grid = grid  # (b, W, W): True = out of bounds or used (dilated) by committed paddles

    def reset(self, rows) -> None:
        self.grid[rows] = self._empty

    def sample_turns(self, shape) -> np.ndarray:
        return self.turns[self.rng.integers(0, len(self.turns), shape)]

    def points(self, a: np.ndarray, bpt: np.ndarray) -> np.ndarray:
        """(..., 2) start/end -> (..., P, 2) sample points."""
        return a[..., None, :] + (bpt - a)[..., None, :] * self.frac[:, None]

    def _flat(self, pts: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Flat grid index of the pixel nearest each point of pts (k, ..., 2) of images rows (k,)."""
        yi = (pts[..., 0] + (self.G + 0.5)).astype(np.int64)
        xi = (pts[..., 1] + (self.G + 0.5)).astype(np.int64)
        base = (rows * (self.W * self.W)).reshape((-1,) + (1,) * (yi.ndim - 1))
        return base + yi * self.W + xi

    def free(self, pts: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """pts (k, C, P, 2) float for images ``rows`` (k,) -> (k, C) True where in bounds and unused."""
        return ~self.grid.reshape(-1)[self._flat(pts, rows)].any(-1)

    def stamp(self, seg: np.ndarray, rows: np.ndarray) -> None:
        """Mark paddles seg (k, 4) of images ``rows`` (dilated) in the occupancy grid."""
        if len(rows) == 0:
            return
        flat = self._flat(self.points(seg[:, :2], seg[:, 2:]), rows)  # (k, P)
        self.grid.reshape(-1)[(flat[..., None] + self.dil).reshape(-1)] = True

    def is_free_pixel(self, yx: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """(k, m, 2) integer pixel coordinates -> (k, m) True where in bounds and unused."""
        return ~self.grid.reshape(-1)[self._flat(yx.astype(np.float64), rows)]

    def _candidates(self, rows, start_tip, theta, first: bool, c: int):
        k = len(rows)
        if first:
            th = self.rng.uniform(-np.pi, np.pi, (k, c))  # any orientation for a path's first paddle
        else:
            th = theta[:, None] + self.sample_turns((k, c))
        uy, ux = np.sin(th), np.cos(th)
        ay, ax = start_tip[:, 0, None], start_tip[:, 1, None]
        if not first:
            gap = self.margin[rows][:, None]
            ay, ax = ay + gap * uy, ax + gap * ux
        else:
            ay, ax = np.broadcast_to(ay, (k, c)), np.broadcast_to(ax, (k, c))
        steps = self.frac * self.p.paddle_length
        off = self.G + 0.5
        yi = (ay[..., None] + off + uy[..., None] * steps).astype(np.int64)
        xi = (ax[..., None] + off + ux[..., None] * steps).astype(np.int64)
        flat = (rows * (self.W * self.W))[:, None, None] + yi * self.W + xi
        okc = ~self.grid.reshape(-1)[flat].any(-1)
        a = np.stack([ay, ax], -1)
        bpt = a + self.p.paddle_length * np.stack([uy, ux], -1)
        return th, a, bpt, okc

    def extend(self, rows, start_tip, theta, first: bool):
        """Place one paddle per image in ``rows``.

        ``first``: the paddle starts exactly at ``start_tip`` in a random orientation;
        otherwise it starts a gap past ``start_tip`` (the previous paddle's end) after a turn
        from ``theta``. Up to ``max_tries`` candidates are drawn in order and the first free
        one is taken (4 for every image first, the rest only where those 4 all failed).
        Returns (ok (k,), seg (k, 4), new theta (k,)).
        """
        k, c = len(rows), self.p.max_tries
        c1 = min(4, c)
        th, a, bpt, okc = self._candidates(rows, start_tip, theta, first, c1)
        ok = okc.any(1)
        pick = np.argmax(okc, axis=1)
        idx = np.arange(k)
        seg = np.concatenate([a[idx, pick], bpt[idx, pick]], axis=1)
        new_th = th[idx, pick]
        miss = np.nonzero(~ok)[0]
        if len(miss) and c > c1:
            th2, a2, b2, okc2 = self._candidates(rows[miss], start_tip[miss], theta[miss], first, c - c1)
            pick2 = np.argmax(okc2, axis=1)
            i2 = np.arange(len(miss))
            seg[miss] = np.concatenate([a2[i2, pick2], b2[i2, pick2]], axis=1)
            new_th[miss] = th2[i2, pick2]
            ok[miss] = okc2.any(1)
        return ok, seg, new_th


def _grow_paths(st: _Batch, rows: np.ndarray, starts: np.ndarray, thetas: np.ndarray, n_paddles: int):
    """Grow several paths per image in lock-step (paddle by paddle, path by path).

    ``starts`` (k, m, 2), ``thetas`` (k, m) for m paths. Returns (ok (k,), segs (k, m, n, 4)).
    Paddles are stamped into the grid one step late (the previous paddle does not block the
    next). On failure of an image, its grid rows may hold partial stamps (callers restore).
    """
    k, m = starts.shape[:2]
    segs = np.full((k, m, n_paddles, 4), np.nan)
    ok = np.ones(k, dtype=bool)
    tip, th = starts.copy(), thetas.copy()
    pending = [None] * m
    for i in range(n_paddles):
        for j in range(m):
            live = np.nonzero(ok)[0]
            if len(live) == 0:
                return ok, segs
            good, seg, new_th = st.extend(rows[live], tip[live, j], th[live, j], first=(i == 0))
            ok[live[~good]] = False
            g = live[good]
            segs[g, j, i] = seg[good]
            tip[g, j] = seg[good, 2:]
            th[g, j] = new_th[good]
            if pending[j] is not None:
                pg, pseg = pending[j]
                keep = ok[pg]
                st.stamp(pseg[keep], rows[pg[keep]])
            pending[j] = (g, seg[good])
    for j in range(m):
        if pending[j] is not None:
            pg, pseg = pending[j]
            keep = ok[pg]
            st.stamp(pseg[keep], rows[pg[keep]])
    return ok, segs


def _targets(st: _Batch, rows: np.ndarray):
    """Two target paths for images ``rows``: (ok, segs (k, 2, C, 4))."""
    p, size, rng = st.p, st.size, st.rng
    k = len(rows)
    d = p.seed_distance
    lo = min(2 * d, (size - 1) / 2 - 1)
    lo = max(lo, p.padding + 1)
    hi = size - 1 - lo
    s1 = rng.uniform(lo, hi, (k, 2)) if hi > lo else np.full((k, 2), (size - 1) / 2)
    phi = rng.uniform(-np.pi, np.pi, k)
    s2 = s1 + d * np.stack([np.sin(phi), np.cos(phi)], -1)
    starts = np.stack([np.rint(s1), np.rint(s2)], 1)
    thetas = rng.uniform(-np.pi, np.pi, (k, 2))
    ok = st.is_free_pixel(starts, rows).all(1)
    ok2, segs = _grow_paths(st, rows, starts, thetas, p.contour_length)
    return ok & ok2, segs


def _distractor(st: _Batch, rows: np.ndarray):
    """One distractor path per image: seeded on a free pixel; (ok, segs (k, 1, D, 4))."""
    p, size, rng = st.p, st.size, st.rng
    k = len(rows)
    # a few random seed candidates per image; take the first free one
    cand = rng.uniform(p.padding, size - 1 - p.padding, (k, 8, 2)).round()
    free = st.is_free_pixel(cand, rows)
    has = free.any(1)
    pick = np.argmax(free, 1)
    starts = cand[np.arange(k), pick][:, None, :]
    thetas = rng.uniform(-np.pi, np.pi, (k, 1))
    ok, segs = _grow_paths(st, rows, starts, thetas, p.distractor_length)
    return ok & has, segs


def _disc(radius: float) -> np.ndarray:
    r = int(math.ceil(radius))
    oy, ox = np.mgrid[-r:r + 1, -r:r + 1]
    keep = oy ** 2 + ox ** 2 <= radius ** 2 + 1e-9
    return np.stack([oy[keep], ox[keep]], 1)


def render(size: int, segs: np.ndarray, markers: np.ndarray, p: PathfinderParams) -> np.ndarray:
    """Anti-aliased images (b, size, size) uint8 from paddles (b, S, 4) (NaN = absent) and markers (b, 2, 2)."""
    b = segs.shape[0]
    aa = int(p.antialias_scale)
    hs = size * aa
    canvas = np.zeros((b, hs * hs), dtype=np.float32)
    # paddles: dense points (spacing 0.5 fine px), each stamped with a disc of the line's half-thickness
    n_pts = int(math.ceil(p.paddle_length * aa * 2)) + 1
    frac = np.linspace(0.0, 1.0, n_pts)
    valid = ~np.isnan(segs[..., 0])
    bi, si = np.nonzero(valid)
    s = segs[bi, si] * aa + (aa - 1) / 2  # pixel centres of the fine grid
    pts = s[:, None, :2] + (s[:, None, 2:] - s[:, None, :2]) * frac[:, None]  # (q, P, 2)
    pen = _disc(max(0.5, p.paddle_thickness * aa / 2))
    yi = np.rint(pts[..., 0])[..., None].astype(np.int64) + pen[:, 0]
    xi = np.rint(pts[..., 1])[..., None].astype(np.int64) + pen[:, 1]
    inside = (yi >= 0) & (yi < hs) & (xi >= 0) & (xi < hs)
    flat = (bi[:, None, None] * (hs * hs) + yi * hs + xi)[inside]
    canvas.reshape(-1)[flat] = p.contrast  # clipped at 1 after anti-aliasing
    # markers: full-intensity discs
    mk = markers.reshape(b * 2, 2) * aa + (aa - 1) / 2
    mdisc = _disc(p.marker_radius * aa)
    yi = np.rint(mk[:, 0])[:, None].astype(np.int64) + mdisc[:, 0]
    xi = np.rint(mk[:, 1])[:, None].astype(np.int64) + mdisc[:, 1]
    mb = np.repeat(np.arange(b), 2)[:, None]
    inside = (yi >= 0) & (yi < hs) & (xi >= 0) & (xi < hs)
    canvas.reshape(-1)[(mb * (hs * hs) + yi * hs + xi)[inside]] = 1.0
    img = canvas.reshape(b, size, aa, size, aa).mean((2, 4))
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def _generate_batch(n: int, size: int, p: PathfinderParams, rng: np.random.Generator, max_rows: int = 65536):
    """One batch: images, labels and geometry.

    Target paths fail often (a long walk in a small image runs into the border or itself;
    ~10% succeed at 32x32, contour length 14), so they are attempted for more images than
    needed (the expected success rate, learnt as it goes) and the first successes are kept:
    the same distribution as redrawing each failed image, with far fewer Python-level steps.
    """
    tseg = np.full((n, 2, p.contour_length, 4), np.nan)
    grid = None
    margins = np.zeros(n, dtype=np.int64)
    filled, rate = 0, 0.25
    for _ in range(1000):
        want = n - filled
        if want == 0:
            break
        m = int(min(max_rows, math.ceil(want / rate * 1.3) + 8))
        att = _Batch(m, size, p, rng.choice(np.asarray(p.paddle_margin), m), rng)
        ok, segs = _targets(att, np.arange(m))
        good = np.nonzero(ok)[0][:want]
        sl = slice(filled, filled + len(good))
        if grid is None:
            grid = np.empty((n,) + att.grid.shape[1:], dtype=bool)
        tseg[sl], grid[sl], margins[sl] = segs[good], att.grid[good], att.margin[good]
        filled += len(good)
        rate = min(1.0, max(ok.mean(), 0.005))
    else:
        raise RuntimeError(f"Pathfinder: could not place the target paths in {n - filled} images; "
                           f"parameters {p} do not fit a {size}x{size} image")
    st = _Batch(n, size, p, margins, rng)
    st.grid = grid
    rows_all = np.arange(n)
    dseg = np.full((n, p.num_distractors, p.distractor_length, 4), np.nan)
    for j in range(p.num_distractors):
        todo = rows_all
        for _ in range(1 + DISTRACTOR_RETRIES):  # reference: max_distractor_contour_retrial, then left out
            saved = st.grid[todo].copy()
            ok, segs = _distractor(st, todo)
            st.grid[todo[~ok]] = saved[~ok]  # drop incomplete distractors
            dseg[todo[ok], j] = segs[ok, 0]
            todo = todo[~ok]
            if len(todo) == 0:
                break
    labels = rng.integers(0, 2, n)
    origin_idx = rng.integers(0, 2, n)
    term_idx = np.where(labels == 1, origin_idx, 1 - origin_idx)
    origins = tseg[:, :, 0, :2]   # (n, 2, 2) start of each target path
    terminals = tseg[:, :, -1, 2:]  # (n, 2, 2) far end of each target path
    markers = np.stack([origins[rows_all, origin_idx], terminals[rows_all, term_idx]], 1)
    all_segs = np.concatenate([tseg.reshape(n, -1, 4), dseg.reshape(n, -1, 4)], 1)
    images = render(size, all_segs, markers, p)
    geometry = {"target_paddles": tseg, "distractor_paddles": dseg, "origins": origins, "terminals": terminals,
                "markers": markers, "marker_paths": np.stack([origin_idx, term_idx], 1), "margins": margins}
    return images, labels.astype(np.int64), geometry


def generate(n: int, seed: int, size: int = 32, params: PathfinderParams | None = None, *,
             difficulty: str = "curv_contour_length_14", batch_size: int = 2048, progress: bool = False,
             return_geometry: bool = False, **overrides):
    """``n`` Pathfinder images: ``(images uint8 (n, size, size), labels int64 (n,)[, geometry])``.

    ``params`` defaults to :func:`params_for` ``(size, difficulty, **overrides)``. Batch ``i``
    draws from ``np.random.default_rng([seed, i])``, so results depend only on
    ``(n, seed, size, params, batch_size)``. ``geometry`` (for tests and plots) holds per
    image: ``target_paddles`` (n, 2, C, 4) [y0 x0 y1 x1] of the two target paths,
    ``distractor_paddles`` (n, K, D, 4) (NaN rows: a distractor left out), ``origins`` and
    ``terminals`` (n, 2, 2) of the target paths, ``markers`` (n, 2, 2) and ``marker_paths``
    (n, 2): which target path each marker ends (the label is 1 iff they are equal).
    """
    from tqdm.auto import tqdm

    p = params if params is not None else params_for(size, difficulty, **overrides)
    images = np.zeros((n, size, size), dtype=np.uint8)
    labels = np.zeros(n, dtype=np.int64)
    geo_parts: list[dict] = []
    starts = list(range(0, n, batch_size))
    bar = tqdm(starts, desc=f"Pathfinder {size}x{size}: generating {n} images", unit="batch",
               disable=not progress)
    for i, lo in enumerate(bar):
        m = min(batch_size, n - lo)
        rng = np.random.default_rng([int(seed), i])
        x, y, geo = _generate_batch(m, size, p, rng)
        images[lo:lo + m], labels[lo:lo + m] = x, y
        if return_geometry:
            geo_parts.append(geo)
    if not return_geometry:
        return images, labels
    geometry = {k: np.concatenate([g[k] for g in geo_parts]) for k in geo_parts[0]} if geo_parts else {}
    return images, labels, geometry


def measure_speed(n: int = 20000, size: int = 32, seed: int = 0, **kw) -> float:
    """Images per second of :func:`generate` on this machine."""
    t0 = time.perf_counter()
    generate(n, seed, size, **kw)
    return n / (time.perf_counter() - t0)


def params_dict(p: PathfinderParams) -> dict:
    return asdict(p)


__all__ = ["PathfinderParams", "params_for", "generate", "render", "measure_speed", "DIFFICULTIES", "params_dict",
           "replace"]
