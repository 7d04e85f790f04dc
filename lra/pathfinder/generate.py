"""A seeded, vectorized (NumPy) Pathfinder generator (Linsley et al. 2018; as used by LRA).

An image shows two circular markers and several curved paths made of short dashes
("paddles") separated by gaps. Two *target* paths start ``seed_distance`` apart; one marker
sits on the start (origin) of one target path, the other on the far end (terminal) of the
same path (label 1) or of the other target path (label 0). Shorter *distractor* paths fill
the rest of the image. This reimplements the geometry and rendering of drewlinsley/pathfinder
(``snakes.py``, ``snakes2.py``: the generator of the LRA release) on integer pixel
coordinates, as the reference does:

* **Paddles** are ``paddle_length`` px long. Each one is drawn from an integer pixel (its
  *start*) in an orientation; a path keeps a *pivot* one margin ``m`` behind its paddles.
  The next pivot lies ``paddle_length + 2 m`` past the current one (rounded up), and the next
  paddle's far end is an integer pixel on the circle of radius ``paddle_length + m`` around
  it (one candidate per pixel of arc). So consecutive paddles are ``~2 m`` apart and repeat
  every ``~paddle_length + 2 m`` px: at 32x32 a 2-px dash, a 2-px gap.
* **Turns**: a candidate at turn ``d`` from the path's direction has weight
  ``cos(min(continuity * d, pi / 2))^2 * (1 - occupancy)``, where ``occupancy`` is the
  overlap mask dilated by ``m`` at that pixel; ``continuity`` 1.0 allows turns below 90
  degrees, 1.8 below 50. A drawn candidate is kept if its footprint (the paddle dilated by
  ``m``, antialiased) plus the mask stays below 1.8 everywhere; ``paddle_tries`` draws, then
  the path fails. The mask holds every paddle drawn so far except the path's previous one
  (and, as in the reference, except the first target path's last paddle:
  ``mask_first_target_end``).
* **Seeds**: the first target path starts in the centre (at least ``2 * seed_distance``
  from the border, where its first paddle fits), the second ``seed_distance`` away in a
  random direction; a distractor starts on a pixel where its first paddle's footprint meets
  no mask. First-paddle angles are whole degrees. The reference finds free seed pixels with
  an OpenCV dilation whose default border turns the result negative when a corner pixel has
  no kernel tap inside the image, and then reports no free pixel: at 32x32 only angles from
  -150 to -121 degrees survive, so the first target path always starts up-left and a
  distractor attempt usually fails (~1.2 of 5 distractors drawn). ``seed_border_quirk``
  (default True) reproduces this; False draws every angle (~4.6 distractors; the images are
  then denser). A target path that cannot be completed makes the image be drawn again; a
  distractor gets ``distractor_tries`` attempts and is then left out.
* **Rendering**: each paddle is drawn ``antialias_scale`` times finer (a line of width
  ``paddle_thickness * antialias_scale``) in a small patch and resampled to the image grid
  with a Lanczos (or box) filter on 8-bit values, as PIL does (``resample``); targets at
  intensity ``target_contrast``, distractors at ``distractor_contrast``; overlaps take the
  maximum. The markers (discs of ``marker_radius``) are resampled from the fine grid the same
  way at intensity 1. With ``stretch`` (the reference's image save) each image is then
  stretched to 0..255 (at 32x32 the brighter distractors reach 255 and the markers ~220).

Everything is done for a batch of images at once: each growth step is one set of array
operations over the batch (~2,500 images per CPU-second at 32x32, ~140 at 128x128; batches
can run in parallel processes). Deterministic for a given ``(n, seed, size, params,
batch_size)``. The parameters and ``GENERATOR_VERSION`` (which changes whenever the images of
a given seed change) live in :mod:`lra.pathfinder.params`. NumPy only: the worker processes
that :func:`generate` spawns never load torch.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..progress import progress as progress_bar
from .params import PathfinderParams, params_for

OVERLAP_LIMIT = 1.8       # reference: a paddle is refused where mask + footprint reaches 1.8
FREE_LIMIT = 0.3          # reference: a seed pixel is free where the dilated mask is <= 0.3


# ----------------------------------------------------------------------------- drawing on the fine grid

def _filter(kind: str, x: np.ndarray) -> np.ndarray:
    """Resampling kernels: Lanczos-3 (sinc(x) sinc(x/3) on |x| < 3) or box (1 on [-1/2, 1/2))."""
    if kind == "box":
        return ((x >= -0.5) & (x < 0.5)).astype(np.float64)
    return np.where((x >= -3) & (x < 3), np.sinc(x) * np.sinc(x / 3), 0.0)


@lru_cache(maxsize=64)
def _resample_matrix(n_in: int, n_out: int, kind: str) -> np.ndarray:
    """(n_out, n_in) int64 fixed-point weights of an antialiasing resample from n_in to n_out pixels.

    Output pixel ``i`` covers input ``[i, i + 1) * scale``; the kernel is stretched by the
    scale when shrinking; weights are normalised per output pixel and quantised to 22
    fractional bits (the convolution PIL's ``Image.resize`` applies to 8-bit images).
    """
    scale = n_in / n_out
    stretch = max(scale, 1.0)
    support = (3.0 if kind == "lanczos" else 0.5) * stretch
    mat = np.zeros((n_out, n_in))
    for i in range(n_out):
        centre = (i + 0.5) * scale
        lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), n_in)
        w = _filter(kind, (np.arange(lo, hi) - centre + 0.5) / stretch)
        if w.sum() != 0:
            mat[i, lo:hi] = w / w.sum()
    return np.where(mat < 0, np.trunc(mat * (1 << 22) - 0.5), np.trunc(mat * (1 << 22) + 0.5)).astype(np.int64)


def resample_u8(img: np.ndarray, n_out: int, kind: str = "lanczos") -> np.ndarray:
    """Resample square 8-bit images ``(..., n, n)`` to ``(..., n_out, n_out)`` (int64 in 0..255).

    Rows first, then columns, each pass rounded and clipped to 0..255 (so a Lanczos filter's
    negative lobes are cut off and its positive ringing stays). O(n * n_out * support).
    """
    a = np.asarray(img, dtype=np.int64)
    m = _resample_matrix(a.shape[-1], n_out, kind)
    half = 1 << 21
    a = np.clip((a @ m.T + half) >> 22, 0, 255)
    return np.clip((m @ a + half) >> 22, 0, 255)


def _line_pixels(dy: int, dx: int, width: int) -> np.ndarray:
    """(k, 2) integer offsets of a line from (0, 0) to (dy, dx) ``width`` px wide, as PIL draws it.

    Width 1: one pixel per step along the longer axis, the other coordinate rounded half
    away from zero (Bresenham, both ends included): identical to PIL's ``ImageDraw.line``.
    Wider: that line plus the quadrilateral whose corners are the two ends shifted by
    +-(width - 1) / 2 along the normal (rounded to pixels), filled row by row between the
    crossings rounded inwards at half pixels: PIL's pixels exactly for width 3 (Path-X);
    even widths (not used at 32 or 128) are approximate.
    """
    n = max(abs(dy), abs(dx))
    if n == 0:
        return np.zeros((1, 2), dtype=np.int64)
    t = np.arange(n + 1)
    pts = np.stack([np.sign(dy) * np.floor(np.abs(t * dy) / n + 0.5),
                    np.sign(dx) * np.floor(np.abs(t * dx) / n + 0.5)], 1).astype(np.int64)
    if width > 1:
        half, length = (width - 1) / 2, math.hypot(dy, dx)
        ny, nx = math.floor(-half * dx / length + 0.5), math.floor(half * dy / length + 0.5)
        corners = np.array([[ny, nx], [dy + ny, dx + nx], [dy - ny, dx - nx], [-ny, -nx]], np.float64)
        extra = []
        for y in range(int(corners[:, 0].min()), int(corners[:, 0].max()) + 1):
            xs = []
            for a, b in zip(corners, np.roll(corners, -1, axis=0)):
                if a[0] == b[0]:
                    xs += [a[1], b[1]] if a[0] == y else []
                elif min(a[0], b[0]) <= y <= max(a[0], b[0]):
                    xs.append(a[1] + (y - a[0]) / (b[0] - a[0]) * (b[1] - a[1]))
            if xs:
                extra += [(y, x) for x in range(math.floor(min(xs) + 0.5), math.ceil(max(xs) - 0.5) + 1)]
        pts = np.unique(np.concatenate([pts, np.asarray(extra, np.int64).reshape(-1, 2)]), axis=0)
    return pts


def _disc_offsets(radius: float) -> np.ndarray:
    """(k, 2) integer offsets with y^2 + x^2 <= radius^2."""
    r = int(math.floor(radius))
    oy, ox = np.mgrid[-r:r + 1, -r:r + 1]
    keep = oy ** 2 + ox ** 2 <= radius ** 2
    return np.stack([oy[keep], ox[keep]], 1)


def _ceil_step(y, x, sin, cos, dist):
    """Integer point ``ceil((y, x) + dist * (sin, cos))`` (the reference's translate_coord)."""
    return np.ceil(y + dist * sin).astype(np.int64), np.ceil(x + dist * cos).astype(np.int64)


def _sparse(patches: np.ndarray, keep: np.ndarray, half: int):
    """Per patch, the (dy, dx) offsets and values where ``keep``: (..., F, 2) int64, (..., F) int64.

    Lists are padded to a common length by repeating their first entry (harmless for a
    maximum or an any()); an empty list becomes offset (0, 0) with value 0.
    """
    flat_p = patches.reshape(-1, patches.shape[-2] * patches.shape[-1])
    flat_k = keep.reshape(flat_p.shape)
    n = max(1, int(flat_k.sum(1).max()))
    off = np.zeros((len(flat_p), n, 2), np.int64)
    val = np.zeros((len(flat_p), n), patches.dtype)
    side = patches.shape[-1]
    for i, (v, k) in enumerate(zip(flat_p, flat_k)):
        idx = np.nonzero(k)[0]
        if len(idx) == 0:
            continue
        idx = np.concatenate([idx, np.full(n - len(idx), idx[0])])
        off[i] = np.stack([idx // side - half, idx % side - half], 1)
        val[i] = v[idx]
    return off.reshape(patches.shape[:-2] + (n, 2)), val.reshape(patches.shape[:-2] + (n,))


@dataclass(frozen=True)
class _Stamps:
    """Everything that depends on the parameters only: patches, candidate sets, turn weights.

    A paddle's *shape* index encodes the fine-grid end point ``(dy, dx)`` of a paddle drawn
    from the patch centre, ``(dy + La) * (2 La + 1) + dx + La`` with ``La = paddle_length *
    antialias_scale``; arrays are indexed ``[margin index, shape index]``. A *direction*
    index is a seed angle (0..359: whole degrees from -180) or a candidate direction
    (``360 + margin index * C + candidate``). Footprint values are in 1/255 units (the
    reference's 8-bit resampled masks), as (dy, dx) offset lists from the paddle's start.
    """

    half: int                  # patch radius H: paddle patches are (2H+1)^2, centred on the start pixel
    line: tuple                # (offsets (M, T, F, 2), values (M, T, F) float32 in [0, 1]): paddle intensity
    foot: tuple                # (offsets (M, T, F, 2), values (M, T, F)): footprint (paddle dilated by m), > 0
    foot_high: tuple           # its pixels above 0.3: all the seed and overlap tests can see
    dfoot: tuple               # the footprint dilated by m once more (the occupancy the turn weights read)
    hard: tuple                # footprint pixels >= 255 * 1.8 - 255: the only ones that can overlap
    core: np.ndarray           # (M, T, K, 2) full-intensity footprint pixels, +1 (the reference's seed kernel)
    seed_shape: np.ndarray     # (M, 360) shape of a first paddle at (index - 180) degrees
    dir_theta: np.ndarray      # (360 + M C,) angle of each direction index
    cand_off: np.ndarray       # (M, C, 2) far-end offsets from the pivot (circle of radius L + m)
    cand_shape: np.ndarray     # (M, C) shape of the paddle drawn back from the far end
    turn_weight: np.ndarray    # (M, 360 + M C, C) cos(min(continuity * turn, pi/2))^2 (0 for list padding)
    occupancy: np.ndarray      # (M, D, 2) disc of radius m: the turn weights read the mask's maximum over it


def _shape_index(theta, length_fine: int, centre: int) -> np.ndarray:
    """Shape index of a paddle drawn from a fine-grid patch centre at angle theta."""
    dy = np.ceil(centre + length_fine * np.sin(theta)).astype(np.int64) - centre
    dx = np.ceil(centre + length_fine * np.cos(theta)).astype(np.int64) - centre
    return (dy + length_fine) * (2 * length_fine + 1) + dx + length_fine


def _dilate(img: np.ndarray, disc: np.ndarray) -> np.ndarray:
    """Grey-level dilation (maximum filter) of (..., h, w) by integer offsets (k, 2), zero outside."""
    r = int(np.abs(disc).max()) if len(disc) else 0
    pad = np.pad(img, [(0, 0)] * (img.ndim - 2) + [(r, r), (r, r)])
    h, w = img.shape[-2:]
    out = np.zeros_like(img)
    for dy, dx in disc:
        out = np.maximum(out, pad[..., r + dy:r + dy + h, r + dx:r + dx + w])
    return out


@lru_cache(maxsize=16)
def _stamps(p: PathfinderParams) -> _Stamps:
    """Draw every paddle shape on the fine grid once (line, footprint, seed kernel), the candidate
    circles and turn weights. O(M (2 La + 1)^2) small resamples: 0.02 s at 32x32, 0.6 s at 128."""
    aa, L = p.antialias_scale, p.paddle_length
    la = L * aa
    width = int(round(p.paddle_thickness * aa))
    margins = p.paddle_margin
    M = len(margins)
    H = L + int(math.ceil(p.paddle_thickness)) + max(margins)
    S = 2 * H + 1
    n_shapes = (2 * la + 1) ** 2
    line = np.zeros((M, n_shapes, S, S), np.float32)
    foot = np.zeros((M, n_shapes, S, S), np.int64)
    core = np.zeros((M, n_shapes, S, S), bool)
    mm = max(margins)
    dfoot = np.zeros((M, n_shapes, S + 2 * mm, S + 2 * mm), np.int64)
    seed_shape = np.zeros((M, 360), np.int64)
    cands, discs = [], []
    for mi, m in enumerate(margins):
        h = L + int(math.ceil(p.paddle_thickness)) + m   # the reference's patch radius for this margin
        hf = h * aa                                      # fine patch (2 h aa + 1)^2, the paddle starts at its centre
        fine = 2 * hf + 1
        fine_disc = _disc_offsets(m * aa)
        disc = _disc_offsets(m)
        o = H - h
        for s in range(n_shapes):
            dy, dx = divmod(s, 2 * la + 1)
            pts = _line_pixels(dy - la, dx - la, width) + hf
            canvas = np.zeros((fine, fine), np.int64)
            canvas[pts[:, 0], pts[:, 1]] = 255
            line[mi, s, o:o + 2 * h + 1, o:o + 2 * h + 1] = resample_u8(canvas, 2 * h + 1, p.resample) / 255.0
            fp = resample_u8(_dilate(canvas, fine_disc), 2 * h + 1, p.resample)
            foot[mi, s, o:o + 2 * h + 1, o:o + 2 * h + 1] = fp
            # the reference's seed test dilates the mask by the footprint's full-intensity pixels, placed
            # in a (2(L+m)+1)^2 kernel one pixel off its anchor: offsets in [-(L+m+1), L+m-1], shifted by 1
            yy, xx = np.mgrid[-h:h + 1, -h:h + 1]
            inside = (yy >= -(L + m + 1)) & (yy <= L + m - 1) & (xx >= -(L + m + 1)) & (xx <= L + m - 1)
            full = (fp == 255) & inside
            core[mi, s, o + 1:o + 2 * h + 1, o + 1:o + 2 * h + 1] = full[:-1, :-1]
            if not full.any():
                raise ValueError(f"Pathfinder parameters {p}: a paddle footprint has no full-intensity pixel")
        dfoot[mi] = _dilate(np.pad(foot[mi], [(0, 0), (mm, mm), (mm, mm)]), disc)
        seed_shape[mi] = _shape_index(np.arange(-180, 180) * np.pi / 180, la, hf)
        # candidate far ends: one sample per pixel of arc on the circle of radius L + m, cut to whole pixels
        R = L + m
        deg = np.arange(0, 360, 360.0 / (2 * R * np.pi)) * np.pi / 180
        off = np.unique(np.stack([np.floor(R * np.sin(deg)), np.floor(R * np.cos(deg))], 1).astype(np.int64), axis=0)
        th = np.arctan2(off[:, 0], off[:, 1])
        flipped = np.where(th < 0, th + np.pi, th - np.pi)
        cands.append((off, th, _shape_index(flipped, la, hf)))
        discs.append(disc)
    C = max(len(c[0]) for c in cands)
    cand_off, cand_theta = np.zeros((M, C, 2), np.int64), np.zeros((M, C))
    cand_shape, cand_ok = np.zeros((M, C), np.int64), np.zeros((M, C), bool)
    for mi, (off, th, sh) in enumerate(cands):
        cand_off[mi, :len(off)], cand_theta[mi, :len(off)], cand_shape[mi, :len(off)] = off, th, sh
        cand_ok[mi, :len(off)] = True
    dir_theta = np.concatenate([np.arange(-180, 180) * np.pi / 180, cand_theta.reshape(-1)])
    turn = np.abs(cand_theta[:, None, :] - dir_theta[None, :, None])
    turn = np.minimum(turn, 2 * np.pi - turn)
    turn_weight = np.maximum(np.cos(np.minimum(turn * p.continuity, np.pi / 2)), 0) ** 2 * cand_ok[:, None, :]
    hard_min = int(math.ceil(OVERLAP_LIMIT * 255)) - 255
    D = max(len(d) for d in discs)
    occupancy = np.stack([np.concatenate([d, np.repeat(d[:1], D - len(d), 0)]) for d in discs])
    return _Stamps(H, _sparse(line, line > 0, H), _sparse(foot, foot > 0, H),
                   _sparse(foot, foot > FREE_LIMIT * 255, H), _sparse(dfoot, dfoot > 0, H + mm),
                   _sparse(foot, foot >= hard_min, H),
                   _sparse(core, core, H)[0], seed_shape, dir_theta, cand_off, cand_shape, turn_weight, occupancy)


def _marker_radius_px(p: PathfinderParams) -> int:
    """Half-size R of a marker patch: the disc plus the filter's reach."""
    return int(math.ceil(p.marker_radius)) + 4


def _marker_case(c: np.ndarray, size: int, R: int) -> np.ndarray:
    """Border case of a marker coordinate: c for c < R, R inside, 2R - (size - 1 - c) within R of the far end."""
    return np.where(c < R, c, np.where(c > size - 1 - R, 2 * R - (size - 1 - c), R))


@lru_cache(maxsize=16)
def _marker_patches(p: PathfinderParams, size: int) -> np.ndarray:
    """(2R+1, 2R+1, 2R+1, 2R+1) float32 in [0, 1]: marker patches by border case of y and x (see _marker_case).

    The reference draws a marker (a disc of ``marker_radius * aa`` fine pixels around fine
    pixel (aa y, aa x)) on the whole fine image and resamples the whole image, so within R px
    of the border the filter's weights are renormalised over the pixels inside: one patch per
    case and axis, each the exact resample of its rows and columns.
    """
    aa, R = p.antialias_scale, _marker_radius_px(p)
    if size < 2 * R + 1:
        raise ValueError(f"a {size}x{size} image is too small for markers of radius {p.marker_radius}")
    fine = size * aa
    wm = _resample_matrix(fine, size, p.resample)                                 # (size, fine)
    disc = _disc_offsets(p.marker_radius * aa)
    rep = lambda k: k if k < R else (size // 2 if k == R else size - 1 - (2 * R - k))
    out = np.zeros((2 * R + 1,) * 4, np.float32)
    for ky in range(2 * R + 1):
        for kx in range(2 * R + 1):
            cy, cx = rep(ky), rep(kx)
            pts = disc + np.array([aa * cy, aa * cx])
            pts = pts[((pts >= 0) & (pts < fine)).all(1)]
            rows = np.unique(pts[:, 0])
            img = np.zeros((len(rows), fine), np.int64)
            img[np.searchsorted(rows, pts[:, 0]), pts[:, 1]] = 255
            h = np.clip((img @ wm.T + (1 << 21)) >> 22, 0, 255)                     # rows pass, (rows, size)
            ys = np.arange(cy - R, cy + R + 1)
            ok = (ys >= 0) & (ys < size)
            v = np.clip((wm[ys[ok]][:, rows] @ h + (1 << 21)) >> 22, 0, 255)        # columns pass
            xs = np.arange(cx - R, cx + R + 1)
            okx = (xs >= 0) & (xs < size)
            out[ky, kx][np.ix_(ok, okx)] = v[:, xs[okx]] / 255.0
    return out


@lru_cache(maxsize=16)
def _seed_ok(p: PathfinderParams, size: int) -> np.ndarray:
    """(M, 360) bool: first-paddle angles whose seed search can succeed in a size x size image.

    The reference finds free seed pixels by dilating the mask with the paddle's seed kernel
    in OpenCV, whose default border makes a pixel with every kernel tap outside the image
    -inf; one negative value makes it report no free pixel at all, and the path fails. With
    small kernels the corner pixels decide: each needs a tap inside. At 32x32 only 30
    angles (-150..-121 degrees, up-left) pass, so the first target path always starts
    up-left and most distractor attempts fail. ``seed_border_quirk=False``: all pass.
    """
    st = _stamps(p)
    ok = np.ones((len(p.paddle_margin), 360), bool)
    if p.seed_border_quirk:
        taps = st.core[np.arange(len(p.paddle_margin))[:, None], st.seed_shape]   # (M, 360, K, 2)
        for cy in (0, size - 1):
            for cx in (0, size - 1):
                q = taps + np.array([cy, cx])
                ok &= ((q >= 0) & (q < size)).all(-1).any(-1)
    return ok


# ----------------------------------------------------------------------------- growth

class _Batch:
    """Growth state of a batch of images: the reference's overlap mask and its dilation by the margin.

    ``mask`` (b, W, W) uint8 in 1/255 units, W = size + 2 P: the image sits at [P, P + size);
    outside it the mask stays 0 (ignored, as the reference clips to the image). The turn
    weights read the mask dilated by the margin at each candidate pixel: gathered from the
    mask where that is cheap (32x32), else kept up to date in ``dmask`` (Path-X), whose
    values outside the image are never read; the mask itself then only needs its values
    above 0.3. O(b W^2).
    """

    def __init__(self, b: int, size: int, p: PathfinderParams, margin_idx: np.ndarray, rng: np.random.Generator):
        self.b, self.size, self.p, self.rng = b, size, p, rng
        self.st = st = _stamps(p)
        self.midx = margin_idx.astype(np.int64)   # (b,) index into p.paddle_margin
        self.margins = np.asarray(p.paddle_margin, np.int64)
        self.P = P = st.half + max(p.paddle_margin) + 2
        self.W = W = size + 2 * P
        frame = np.zeros((W, W), np.uint8)
        frame[P:P + size, P:P + size] = 255
        pad = p.padding
        frame[P + pad:P + size - pad, P + pad:P + size - pad] = 0
        self.inside = np.zeros(W * W, bool)
        self.inside.reshape(W, W)[P:P + size, P:P + size] = True
        self.mask = np.broadcast_to(frame, (b, W, W)).copy()
        flat = lambda off: off[..., 0] * W + off[..., 1]
        self.occupancy = flat(st.occupancy)
        # per growth step: gather C x D mask pixels, or scatter a dilated footprint (about twice the work per pixel)
        self.track = st.cand_off.shape[1] * st.occupancy.shape[1] > 2 * st.dfoot[0].shape[2]
        if self.track:
            self.dmask = np.stack([_dilate(frame, d) for d in st.occupancy])[self.midx]
            self.foot = (flat(st.foot_high[0]), st.foot_high[1].astype(np.uint8))
            self.dfoot = (flat(st.dfoot[0]), st.dfoot[1].astype(np.uint8))
        else:
            self.dmask = None
            self.foot = (flat(st.foot[0]), st.foot[1].astype(np.uint8))
        self.hard = (flat(st.hard[0]), st.hard[1].astype(np.int16))
        self.core = flat(st.core)
        self.sin, self.cos = np.sin(st.dir_theta), np.cos(st.dir_theta)
        self.cand_y, self.cand_x = st.cand_off[..., 0], st.cand_off[..., 1]
        self.n_dirs = st.turn_weight.shape[1]
        self.turn_weight = st.turn_weight.reshape(-1, st.turn_weight.shape[2]).astype(np.float32)

    def flat(self, rows: np.ndarray, yx: np.ndarray) -> np.ndarray:
        """Flat index of image pixels ``yx`` (k, ..., 2) of images ``rows`` (k,)."""
        base = (rows * (self.W * self.W) + self.P * (self.W + 1)).reshape((-1,) + (1,) * (yx.ndim - 2))
        return base + yx[..., 0] * self.W + yx[..., 1]

    def stamp(self, rows: np.ndarray, start: np.ndarray, shape: np.ndarray) -> None:
        """Max the footprints of paddles (start (k, 2), shape (k,)) into the mask (one paddle per image)."""
        if len(rows) == 0:
            return
        mi = self.midx[rows]
        local = ((start[:, 0] + self.P) * self.W + start[:, 1] + self.P)[:, None] + self.foot[0][mi, shape]
        keep = self.inside[local]                      # the reference clips footprints to the image
        idx = (rows * (self.W * self.W))[:, None] + local
        m = self.mask.reshape(-1)
        cur = m[idx]
        m[idx] = np.where(keep, np.maximum(cur, self.foot[1][mi, shape]), cur)
        if self.track:  # outside pixels reach only image pixels within m of the border, already 255 (frame)
            idx = (self.flat(rows, start))[:, None] + self.dfoot[0][mi, shape]
            d = self.dmask.reshape(-1)
            d[idx] = np.maximum(d[idx], self.dfoot[1][mi, shape])

    def rows_state(self, rows: np.ndarray):
        """A copy of the growth state of images ``rows`` (see :meth:`set_rows_state`)."""
        return self.mask[rows].copy(), None if self.dmask is None else self.dmask[rows].copy()

    def set_rows_state(self, rows: np.ndarray, state) -> None:
        self.mask[rows] = state[0]
        if self.dmask is not None:
            self.dmask[rows] = state[1]

    def free_fraction(self, rows: np.ndarray) -> np.ndarray:
        s, P = self.size, self.P
        return (self.mask[rows, P:P + s, P:P + s] <= FREE_LIMIT * 255).mean((1, 2))

    def fits(self, rows: np.ndarray, yx: np.ndarray, shape: np.ndarray) -> np.ndarray:
        """Seed test: pixels (k, c, 2), shapes (k,) -> (k, c) True where the footprint core meets no mask."""
        core = self.core[self.midx[rows], shape]                   # (k, K)
        vals = self.mask.reshape(-1)[self.flat(rows, yx)[..., None] + core[:, None]]
        return ~(vals > FREE_LIMIT * 255).any(-1)

    def overlaps(self, rows: np.ndarray, start: np.ndarray, shape: np.ndarray) -> np.ndarray:
        """(k,) True where a paddle's footprint plus the mask reaches the overlap limit somewhere."""
        mi = self.midx[rows]
        vals = self.mask.reshape(-1)[self.flat(rows, start)[:, None] + self.hard[0][mi, shape]]
        over = (vals + self.hard[1][mi, shape]) >= int(math.ceil(OVERLAP_LIMIT * 255))
        return over.view(np.uint8).max(-1).astype(bool) if over.shape[-1] else over[..., 0]

    def extend(self, rows, pivot, direction):
        """Add one paddle to a path in each image ``rows`` (k,), given its pivot (k, 2) and direction index (k,).

        Returns ``(ok, start, shape, new_pivot, new_direction)``: the paddle is drawn from
        ``start`` (its far end, an integer pixel) back towards the pivot.
        """
        p, st, rng, W, size = self.p, self.st, self.rng, self.W, self.size
        k = len(rows)
        mi = self.midx[rows]
        ny, nx = _ceil_step(pivot[:, 0], pivot[:, 1], self.sin[direction], self.cos[direction],
                            p.paddle_length + 2 * self.margins[mi])
        hy = ny[:, None] + self.cand_y[mi]                                            # (k, C) candidate far ends
        hx = nx[:, None] + self.cand_x[mi]
        inb = (hy >= 0) & (hy < size) & (hx >= 0) & (hx < size)
        at = (rows * (W * W) + self.P * (W + 1))[:, None] + np.clip(hy, 0, size - 1) * W + np.clip(hx, 0, size - 1)
        if self.track:                                                                # the dilated mask
            occ = self.dmask.reshape(-1)[at]
        else:
            flat_mask, taps = self.mask.reshape(-1), self.occupancy[mi]
            occ = flat_mask[at + taps[:, :1]]
            for d in range(1, taps.shape[1]):
                np.maximum(occ, flat_mask[at + taps[:, d:d + 1]], out=occ)
        w = self.turn_weight[mi * self.n_dirs + direction] * (255 - occ.astype(np.float32))
        w *= inb
        cmf = np.cumsum(w, 1)
        total = cmf[:, -1]
        todo = np.nonzero(total >= 1e-4 * 255)[0]
        chosen = np.full(k, -1)
        for _ in range(p.paddle_tries):            # draw from the weights; keep the first that does not overlap
            if len(todo) == 0:
                break
            # r < total even after float32 rounding, so the first cmf > r has a positive weight
            r = rng.random(len(todo), dtype=np.float32) * (total[todo] * np.float32(1 - 2 ** -20))
            c = (cmf[todo] <= r[:, None]).sum(1)
            bad = self.overlaps(rows[todo], np.stack([hy[todo, c], hx[todo, c]], 1), st.cand_shape[mi[todo], c])
            chosen[todo[~bad]] = c[~bad]
            todo = todo[bad]
        ok = chosen >= 0
        c = np.maximum(chosen, 0)
        i = np.arange(k)
        return (ok, np.stack([hy[i, c], hx[i, c]], 1), st.cand_shape[mi, c], np.stack([ny, nx], 1),
                360 + mi * st.cand_off.shape[1] + c)

    def seed_paddle(self, rows, tail, deg):
        """Shape and pivot of first paddles drawn from ``tail`` at ``deg`` degrees; ok where head and pivot are inside."""
        p = self.p
        m = self.margins[self.midx[rows]]
        shape = self.st.seed_shape[self.midx[rows], deg + 180]
        theta = deg * np.pi / 180
        back = np.where(theta + np.pi < np.pi, theta + np.pi, theta - np.pi)
        hy, hx = _ceil_step(tail[:, 0], tail[:, 1], np.sin(theta), np.cos(theta), p.paddle_length)
        py, px = _ceil_step(hy, hx, np.sin(back), np.cos(back), p.paddle_length + m)
        s = self.size
        inside = (hy >= 0) & (hy < s) & (hx >= 0) & (hx < s) & (py >= 0) & (py < s) & (px >= 0) & (px < s)
        return inside, shape, np.stack([py, px], 1)


class _Paths:
    """Paddles of m paths per image: start (k, m, n, 2), shape and direction index (k, m, n), pivot (k, m, 2)."""

    def __init__(self, k: int, m: int, n: int):
        self.start = np.zeros((k, m, n, 2), np.int64)
        self.shape = np.zeros((k, m, n), np.int64)
        self.dir = np.zeros((k, m, n), np.int64)
        self.pivot = np.zeros((k, m, 2), np.int64)

    def seed(self, rows, j, start, shape, pivot, deg):
        self.start[rows, j, 0], self.shape[rows, j, 0], self.pivot[rows, j] = start, shape, pivot
        self.dir[rows, j, 0] = deg + 180


def _grow(bt: _Batch, rows: np.ndarray, paths: _Paths, ok: np.ndarray, n: int, last_stamped=None) -> None:
    """Extend the seeded paths to ``n`` paddles, path by path within each step.

    A paddle's footprint enters the mask when the next paddle of its path is placed; at the
    end every path's last paddle enters it, except paths listed in ``last_stamped=False``.
    ``ok`` (k,) is updated in place.
    """
    m = paths.start.shape[1]
    for i in range(1, n):
        for j in range(m):
            live = np.nonzero(ok)[0]
            if len(live) == 0:
                return
            good, start, shape, piv, d = bt.extend(rows[live], paths.pivot[live, j], paths.dir[live, j, i - 1])
            ok[live[~good]] = False
            g = live[good]
            bt.stamp(rows[g], paths.start[g, j, i - 1], paths.shape[g, j, i - 1])
            paths.start[g, j, i], paths.shape[g, j, i], paths.dir[g, j, i] = start[good], shape[good], d[good]
            paths.pivot[g, j] = piv[good]
    g = np.nonzero(ok)[0]
    for j in range(m):
        if last_stamped is None or last_stamped[j]:
            bt.stamp(rows[g], paths.start[g, j, n - 1], paths.shape[g, j, n - 1])


def _targets(bt: _Batch, rows: np.ndarray) -> tuple[np.ndarray, _Paths]:
    """Two target paths per image: (ok (k,), paths)."""
    p, size, rng, st = bt.p, bt.size, bt.rng, bt.st
    k = len(rows)
    paths = _Paths(k, 2, p.contour_length)
    ok = np.zeros(k, bool)
    # first seed: its first paddle's seed kernel must lie in the window 2 d px from the border
    lo_w, hi_w = 2 * p.seed_distance, size - 2 * p.seed_distance - 1
    good = _seed_ok(p, size)                       # (M, 360)
    if not good.any(1).all():
        raise ValueError(f"Pathfinder parameters {p}: no first-paddle angle passes the seed search at {size}x{size}")
    n_good = good.sum(1)
    good_deg = np.argsort(~good, axis=1, kind="stable") - 180   # good angles first, per margin
    todo = np.arange(k)
    for _ in range(p.seed_tries):
        if len(todo) == 0:
            break
        # a failing angle ends the attempt at once, and attempts are redrawn until one succeeds:
        # the same as drawing among the passing angles
        mi = bt.midx[rows[todo]]
        deg = good_deg[mi, np.floor(rng.random(len(todo)) * n_good[mi]).astype(np.int64)]
        core = st.core[bt.midx[rows[todo]], st.seed_shape[bt.midx[rows[todo]], deg + 180]]   # (t, K, 2)
        lo, hi = lo_w - core.min(1), hi_w - core.max(1)                                       # (t, 2) tail range
        room = (hi >= lo).all(1)
        tail = lo + np.floor(rng.random((len(todo), 2)) * (np.maximum(hi - lo, 0) + 1)).astype(np.int64)
        inside, shape, piv = bt.seed_paddle(rows[todo], tail, deg)
        done = room & inside
        paths.seed(todo[done], 0, tail[done], shape[done], piv[done], deg[done])
        ok[todo[done]] = True
        todo = todo[~done & room]  # no room at all: the reference gives up on the image
    # second seed: seed_distance away in a whole-degree direction; only its paddle is checked for the border
    todo = np.nonzero(ok)[0]
    ok[:] = False
    tail1 = paths.start[:, 0, 0]
    for _ in range(p.seed_tries):
        if len(todo) == 0:
            break
        deg = rng.integers(-180, 180, len(todo))
        phi = rng.integers(0, 360, len(todo)) * np.pi / 180
        tail = np.stack([np.round(tail1[todo, 0] + p.seed_distance * np.sin(phi)),
                         np.round(tail1[todo, 1] + p.seed_distance * np.cos(phi))], 1).astype(np.int64)
        inside, shape, piv = bt.seed_paddle(rows[todo], tail, deg)
        paths.seed(todo[inside], 1, tail[inside], shape[inside], piv[inside], deg[inside])
        ok[todo[inside]] = True
        todo = todo[~inside]
    _grow(bt, rows, paths, ok, p.contour_length, last_stamped=(p.mask_first_target_end, True))
    return ok, paths


def _distractor(bt: _Batch, rows: np.ndarray) -> tuple[np.ndarray, _Paths]:
    """One distractor path per image ``rows``: (ok (k,), paths with m = 1). The mask is updated where ok."""
    p, size, rng, st = bt.p, bt.size, bt.rng, bt.st
    k = len(rows)
    paths = _Paths(k, 1, p.distractor_length)
    ok = np.zeros(k, bool)
    todo = np.nonzero(bt.free_fraction(rows) >= p.stop_with_availability)[0]
    n_cand = 32
    for _ in range(p.seed_tries):
        if len(todo) == 0:
            break
        deg = rng.integers(-180, 180, len(todo))
        shape = st.seed_shape[bt.midx[rows[todo]], deg + 180]
        # a uniformly drawn free pixel: the first free one of n_cand uniform draws, else from the full map
        cand = rng.integers(0, size, (len(todo), n_cand, 2))
        free = bt.fits(rows[todo], cand, shape)
        passes = _seed_ok(p, size)[bt.midx[rows[todo]], deg + 180]
        free &= passes[:, None]
        has = free.any(1)
        tail = cand[np.arange(len(todo)), free.argmax(1)]
        rare = np.nonzero(~has & passes)[0]
        if len(rare):
            grid = np.stack(np.meshgrid(np.arange(size), np.arange(size), indexing="ij"), -1).reshape(-1, 2)
            full = bt.fits(rows[todo[rare]], np.broadcast_to(grid, (len(rare),) + grid.shape), shape[rare])
            n_free = full.sum(1)
            has[rare] = n_free > 0
            pick = np.minimum((rng.random(len(rare)) * n_free).astype(np.int64), np.maximum(n_free - 1, 0))
            order = np.argsort(~full, axis=1, kind="stable")        # free pixels first, in raster order
            tail[rare] = grid[order[np.arange(len(rare)), pick]]
        inside, shape, piv = bt.seed_paddle(rows[todo], tail, deg)
        done = has & inside
        paths.seed(todo[done], 0, tail[done], shape[done], piv[done], deg[done])
        ok[todo[done]] = True
        todo = todo[has & ~inside]  # no free pixel: the reference gives up on this attempt
    _grow(bt, rows, paths, ok, p.distractor_length)
    return ok, paths


# ----------------------------------------------------------------------------- rendering

def _segments(paths: _Paths, length: float, dir_theta: np.ndarray) -> np.ndarray:
    """(k, m, n, 4) float [y0 x0 y1 x1] of each paddle in path order.

    A path's first paddle runs from its start pixel along its direction; later ones are
    drawn from their start (the far end, on the pivot's circle) back towards the pivot.
    """
    s = paths.start.astype(np.float64)
    th = dir_theta[paths.dir]
    u = np.stack([np.sin(th), np.cos(th)], -1) * length
    first = np.zeros(paths.shape.shape, bool)
    first[..., 0] = True
    a = np.where(first[..., None], s, s - u)
    b = np.where(first[..., None], s + u, s)
    return np.concatenate([a, b], -1)


def render(size: int, p: PathfinderParams, starts: np.ndarray, shapes: np.ndarray, margin_idx: np.ndarray,
           contrast: np.ndarray, markers: np.ndarray) -> np.ndarray:
    """Images (b, size, size) uint8 from paddles and markers.

    ``starts`` (b, S, 2) integer start pixels, ``shapes`` (b, S) shape indices (see
    :class:`_Stamps`), ``contrast`` (b, S) intensities (0 = absent), ``margin_idx`` (b,),
    ``markers`` (b, 2, 2) integer pixels. Paddle patches scaled by their contrast and the
    marker patch are combined by maximum; then stretched to 0..255 per image (``p.stretch``)
    or clipped at 1. O(b * S * patch area).
    """
    st = _stamps(p)
    b = len(starts)
    H, R = st.half, _marker_radius_px(p)
    patches = _marker_patches(p, size)
    P = max(H, R)
    W = size + 2 * P
    canvas = np.zeros(b * W * W, np.float32)
    base = np.arange(b) * (W * W) + P * (W + 1)
    line_idx = st.line[0][..., 0] * W + st.line[0][..., 1]                 # (M, T, F) flat offsets
    contrast = np.asarray(contrast, np.float32)
    for j in range(starts.shape[1]):  # one paddle per image at a time: no index repeats within a write
        idx = (base + starts[:, j, 0] * W + starts[:, j, 1])[:, None] + line_idx[margin_idx, shapes[:, j]]
        vals = st.line[1][margin_idx, shapes[:, j]] * contrast[:, j, None]
        canvas[idx] = np.maximum(canvas[idx], vals)
    my, mx = np.mgrid[-R:R + 1, -R:R + 1]
    mpatch = (my * W + mx).reshape(-1)
    for j in range(markers.shape[1]):
        idx = (base + markers[:, j, 0] * W + markers[:, j, 1])[:, None] + mpatch
        vals = patches[_marker_case(markers[:, j, 0], size, R), _marker_case(markers[:, j, 1], size, R)]
        canvas[idx] = np.maximum(canvas[idx], vals.reshape(b, -1))
    img = canvas.reshape(b, W, W)[:, P:P + size, P:P + size].astype(np.float64)
    if p.stretch:
        lo = img.min((1, 2), keepdims=True)
        span = img.max((1, 2), keepdims=True) - lo
        img = (img - lo) * (255.0 / np.where(span > 0, span, 1.0))
    else:
        img = img * 255.0
    return (np.clip(img, 0, 255) + 0.5).astype(np.uint8)


# ----------------------------------------------------------------------------- batches

def _generate_batch(n: int, size: int, p: PathfinderParams, rng: np.random.Generator, max_bytes: int = 4 << 20):
    """One batch: images, labels and geometry.

    Target paths fail often (two long walks in a small image run into the border or each
    other; ~4% of pairs succeed at 32x32, contour length 14), so they are attempted for more
    images than needed (the expected success rate, learnt as it goes; about ``max_bytes`` of
    masks at a time, which keeps them in cache, but at least 320 images) and the first successes are kept: the same
    distribution as redrawing each failed image, with far fewer Python-level steps.
    """
    C, D, K = p.contour_length, p.distractor_length, p.num_distractors
    tp = _Paths(n, 2, C)
    bt = _Batch(n, size, p, np.zeros(n, np.int64), rng)   # the batch's state; draws nothing
    max_rows = max(320, max_bytes // (bt.W * bt.W * (2 if bt.track else 1)))   # fewer steps for Path-X
    filled, rate = 0, 0.05
    tried = 0
    while filled < n:
        want = n - filled
        if tried >= 100_000 and filled == 0 or tried >= 100_000 * n:
            raise RuntimeError(f"Pathfinder: could not place the target paths in {n - filled} of {n} images after "
                               f"{tried} attempts; parameters {p} do not fit a {size}x{size} image")
        m = int(min(max_rows, math.ceil(want / rate * 1.2) + 8))
        att = _Batch(m, size, p, rng.integers(0, len(p.paddle_margin), m), rng)
        ok, paths = _targets(att, np.arange(m))
        good = np.nonzero(ok)[0][:want]
        sl = slice(filled, filled + len(good))
        tp.start[sl], tp.shape[sl], tp.dir[sl] = paths.start[good], paths.shape[good], paths.dir[good]
        bt.set_rows_state(np.arange(filled, filled + len(good)), att.rows_state(good))
        bt.midx[sl] = att.midx[good]
        filled += len(good)
        tried += m
        rate = min(1.0, max(ok.mean(), 0.002))
    rows_all = np.arange(n)
    dp = _Paths(n, K, D)
    d_ok = np.zeros((n, K), bool)
    for j in range(K):
        todo = rows_all
        for _ in range(p.distractor_tries):
            saved = bt.rows_state(todo)
            ok, paths = _distractor(bt, todo)
            bt.set_rows_state(todo[~ok], tuple(None if a is None else a[~ok] for a in saved))  # failures leave nothing
            g = todo[ok]
            dp.start[g, j], dp.shape[g, j], dp.dir[g, j] = paths.start[ok, 0], paths.shape[ok, 0], paths.dir[ok, 0]
            d_ok[g, j] = True
            todo = todo[~ok]
            if len(todo) == 0:
                break
    labels = rng.integers(0, 2, n)
    origin_idx = rng.integers(0, 2, n)
    term_idx = np.where(labels == 1, origin_idx, 1 - origin_idx)
    origins = tp.start[:, :, 0]               # (n, 2, 2) start pixel of each target path
    terminals = tp.start[:, :, -1]            # (n, 2, 2) far end of each target path's last paddle
    markers = np.stack([origins[rows_all, origin_idx], terminals[rows_all, term_idx]], 1)
    starts = np.concatenate([tp.start.reshape(n, -1, 2), dp.start.reshape(n, -1, 2)], 1)
    shapes = np.concatenate([tp.shape.reshape(n, -1), dp.shape.reshape(n, -1)], 1)
    contrast = np.concatenate([np.full((n, 2 * C), p.target_contrast),
                               np.repeat(np.where(d_ok, p.distractor_contrast, 0.0), D, axis=1)], 1)
    images = render(size, p, starts, shapes, bt.midx, contrast, markers)
    dir_theta = bt.st.dir_theta
    dseg = _segments(dp, p.paddle_length, dir_theta)
    dseg[~d_ok] = np.nan
    geometry = {"target_paddles": _segments(tp, p.paddle_length, dir_theta), "distractor_paddles": dseg,
                "origins": origins.astype(np.float64), "terminals": terminals.astype(np.float64),
                "markers": markers.astype(np.float64), "marker_paths": np.stack([origin_idx, term_idx], 1),
                "margins": np.asarray(p.paddle_margin)[bt.midx]}
    return images, labels.astype(np.int64), geometry


def _batch_job(job) -> tuple:
    """One generator batch ``(n, size, params, seed, index, with_geometry)``: a separate process can run it."""
    n, size, p, seed, i, with_geometry = job
    x, y, geo = _generate_batch(n, size, p, np.random.default_rng([seed, i]))
    return x, y, (geo if with_geometry else None)


def default_workers(n_batches: int) -> int:
    """Processes worth starting for ``n_batches`` batches: the CPUs this process may use
    (:func:`lra.devices.cpus_available`), at most 8."""
    from ..devices import cpus_available  # noqa: PLC0415 - here: lra.devices loads torch, the workers must not

    return max(1, min(cpus_available(), 8, n_batches))


def generate(n: int, seed: int, size: int = 32, params: PathfinderParams | None = None, *,
             difficulty: str = "curv_contour_length_14", batch_size: int = 2048, progress: bool = False,
             return_geometry: bool = False, workers: int = 1, **overrides):
    """``n`` Pathfinder images: ``(images uint8 (n, size, size), labels int64 (n,)[, geometry])``.

    ``params`` defaults to :func:`params_for` ``(size, difficulty, **overrides)``. Batch ``i``
    draws from ``np.random.default_rng([seed, i])``, so results depend only on
    ``(n, seed, size, params, batch_size)``, not on ``workers`` (processes that generate
    batches in parallel; ``None``: :func:`default_workers`). ``geometry`` (for tests and
    plots) holds per image: ``target_paddles`` (n, 2, C, 4) [y0 x0 y1 x1] of the two target
    paths in path order, ``distractor_paddles`` (n, K, D, 4) (NaN rows: a distractor left
    out), ``origins`` and ``terminals`` (n, 2, 2) of the target paths (integer pixels),
    ``markers`` (n, 2, 2), ``marker_paths`` (n, 2): which target path each marker ends (the
    label is 1 iff they are equal), and ``margins`` (n,).
    """
    p = params if params is not None else params_for(size, difficulty, **overrides)
    images = np.zeros((n, size, size), dtype=np.uint8)
    labels = np.zeros(n, dtype=np.int64)
    geo_parts: list[dict] = []
    starts = list(range(0, n, batch_size))
    jobs = [(min(batch_size, n - lo), size, p, int(seed), i, return_geometry) for i, lo in enumerate(starts)]
    workers = default_workers(len(jobs)) if workers is None else max(1, min(int(workers), len(jobs)))
    pool = None
    if workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        results = pool.map(_batch_job, jobs) if pool else map(_batch_job, jobs)
        bar = progress_bar(results, total=len(jobs), desc=f"Pathfinder {size}x{size}: generating {n} images",
                           unit="batch", disable=not progress)
        for lo, (x, y, geo) in zip(starts, bar):
            images[lo:lo + len(y)], labels[lo:lo + len(y)] = x, y
            if return_geometry:
                geo_parts.append(geo)
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    if not return_geometry:
        return images, labels
    geometry = {k: np.concatenate([g[k] for g in geo_parts]) for k in geo_parts[0]} if geo_parts else {}
    return images, labels, geometry


def measure_speed(n: int = 20000, size: int = 32, seed: int = 0, **kw) -> float:
    """Images per second of :func:`generate` on this machine."""
    t0 = time.perf_counter()
    generate(n, seed, size, **kw)
    return n / (time.perf_counter() - t0)


__all__ = ["generate", "render", "resample_u8", "measure_speed", "default_workers"]
