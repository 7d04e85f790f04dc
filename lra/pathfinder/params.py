"""The Pathfinder generator's parameters: what a config sets and a cache key or record holds.

:class:`PathfinderParams` holds every knob of :mod:`lra.pathfinder.generate` (names as in
drewlinsley/pathfinder's ``snakes2`` arguments where one exists); :func:`params_for` gives the
LRA release's set for an image size and a difficulty (``DIFFICULTIES``: target contour length
per difficulty), with single fields overridden (``task.generator``); :func:`params_dict` is the
plain dict that cache keys and task metadata hold. ``GENERATOR_VERSION`` changes whenever the
images of a given seed change; ``task.generator_version`` names the version a config expects.
NumPy only, like the rest of :mod:`lra.pathfinder`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

GENERATOR_VERSION = 2  # 1 (retired): continuous geometry, one-margin gaps, box filter, one contrast: easier
DIFFICULTIES = {"curv_baseline": 6, "curv_contour_length_9": 9, "curv_contour_length_14": 14}
RESAMPLE_FILTERS = ("lanczos", "box")




@dataclass(frozen=True)
class PathfinderParams:
    """Generator parameters (names as in drewlinsley/pathfinder's ``snakes2`` arguments where one exists).

    Lengths are in pixels of the output image. ``paddle_thickness * antialias_scale`` must be
    an integer (the width of the line drawn on the fine grid).
    """

    contour_length: int = 14          # paddles per target path
    distractor_length: int = 4        # paddles per distractor path (contour_length // 3)
    num_distractors: int = 5          # distractor paths (20 // distractor_length at 32x32)
    paddle_length: int = 2
    paddle_thickness: float = 0.5
    paddle_margin: tuple = (1,)       # margin m: gap ~2 m between paddles; one drawn per image
    marker_radius: float = 1.5
    seed_distance: int = 7            # distance of the two target seeds
    continuity: float = 1.0           # turn weight cos(min(continuity * turn, pi/2))^2
    padding: int = 1                  # border (px) no paddle enters
    target_contrast: float = 1.5      # target paddle intensity: snake_contrast 2 x paddle_contrast 0.75
    distractor_contrast: float = 2.0  # distractor paddle intensity: snake_contrast 2
    antialias_scale: int = 2          # paddles and markers are drawn this many times finer, then resampled
    resample: str = "lanczos"         # fine grid -> image filter: lanczos (the reference's) | box (area average)
    stretch: bool = True              # stretch each image to 0..255 (the reference's save); else clip at 1
    paddle_tries: int = 3             # draws per paddle (max_paddle_retrial 2, plus the first)
    seed_tries: int = 3               # seed placements per path (out-of-image paddles are redrawn)
    distractor_tries: int = 5         # attempts per distractor (max_distractor_contour_retrial 4, plus the first)
    mask_first_target_end: bool = False  # the reference leaves the first target's last paddle out of the mask
    seed_border_quirk: bool = True    # a first paddle whose seed kernel leaves a corner pixel with nothing to read fails
    stop_with_availability: float = 0.01  # no further distractor once less than this fraction of pixels is free

    def __post_init__(self):
        object.__setattr__(self, "paddle_margin", tuple(int(m) for m in np.atleast_1d(self.paddle_margin)))
        for name in ("contour_length", "distractor_length", "paddle_length", "antialias_scale", "padding",
                     "paddle_tries", "seed_tries", "distractor_tries"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"PathfinderParams.{name}={getattr(self, name)!r} must be >= 1")
        if self.num_distractors < 0:
            raise ValueError(f"PathfinderParams.num_distractors={self.num_distractors!r} must be >= 0")
        if not self.paddle_margin or min(self.paddle_margin) < 1:
            raise ValueError(f"PathfinderParams.paddle_margin={self.paddle_margin!r} must hold margins >= 1")
        if self.continuity < 0.5:
            raise ValueError(f"PathfinderParams.continuity={self.continuity!r} must be >= 0.5 "
                             "(turns beyond 180 degrees are not meaningful)")
        w = self.paddle_thickness * self.antialias_scale
        if w < 1 or abs(w - round(w)) > 1e-9:
            raise ValueError(f"paddle_thickness * antialias_scale = {w!r} must be a whole number >= 1 (the line "
                             f"width on the fine grid); paddle_thickness={self.paddle_thickness!r}, "
                             f"antialias_scale={self.antialias_scale!r}")
        if self.resample not in RESAMPLE_FILTERS:
            raise ValueError(f"PathfinderParams.resample={self.resample!r}; choose one of {', '.join(RESAMPLE_FILTERS)}")


def params_for(size: int, difficulty: str = "curv_contour_length_14", **overrides) -> PathfinderParams:
    """The LRA release's parameters for a resolution and difficulty (lra_benchmarks/data/pathfinder.py).

    32x32: paddle 2, margin 1, thickness 0.5, marker 1.5, seed distance 7, continuity 1.0,
    20 // distractor_length distractors, targets at 2 x 0.75, distractors at 2.
    64: paddle 5, margin 1, thickness 1, marker 2.5, seed distance 12, continuity 1.8,
    22 // distractor_length distractors, contrast 0.8. 128 (Path-X): paddle 5, margins {2, 3},
    thickness 1.5, marker 3, seed distance 20, continuity 1.8, 35 // distractor_length
    distractors, contrast 0.9. 256: paddle 5, margin 3, thickness 2, marker 5, and the
    wrapper's defaults (seed distance 27, padding 22), 30 // distractor_length distractors.
    Every size draws at 2x. Other sizes scale the 32x32 parameters. ``overrides`` set single
    fields (``None`` values are ignored); an unknown name is an error.
    """
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"unknown Pathfinder difficulty {difficulty!r}; choose one of {', '.join(DIFFICULTIES)}")
    known = {f.name for f in fields(PathfinderParams)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise ValueError(f"unknown Pathfinder generator parameter(s) {', '.join(bad)}; "
                         f"parameters: {', '.join(sorted(known))}")
    cl = DIFFICULTIES[difficulty]
    dl = max(1, cl // 3)
    table = {
        32: dict(paddle_length=2, paddle_margin=(1,), paddle_thickness=0.5, marker_radius=1.5, seed_distance=7,
                 continuity=1.0, num_distractors=20 // dl, target_contrast=1.5, distractor_contrast=2.0),
        64: dict(paddle_length=5, paddle_margin=(1,), paddle_thickness=1.0, marker_radius=2.5, seed_distance=12,
                 continuity=1.8, num_distractors=22 // dl, target_contrast=0.8, distractor_contrast=0.8),
        128: dict(paddle_length=5, paddle_margin=(2, 3), paddle_thickness=1.5, marker_radius=3, seed_distance=20,
                  continuity=1.8, num_distractors=35 // dl, target_contrast=0.9, distractor_contrast=0.9),
        256: dict(paddle_length=5, paddle_margin=(3,), paddle_thickness=2.0, marker_radius=5, seed_distance=27,
                  continuity=1.8, num_distractors=30 // dl, target_contrast=1.0, distractor_contrast=1.0, padding=22),
    }
    if size in table:
        base = table[size]
    else:
        s = size / 32
        base = dict(paddle_length=max(1, round(2 * s)), paddle_margin=(max(1, round(s)),),
                    paddle_thickness=max(1, round(s)) / 2, marker_radius=1.5 * s, seed_distance=max(1, round(7 * s)),
                    continuity=1.0, num_distractors=20 // dl, target_contrast=1.5, distractor_contrast=2.0)
    base = dict(base, contour_length=cl, distractor_length=dl, antialias_scale=2)
    base.update({k: v for k, v in overrides.items() if v is not None})
    return PathfinderParams(**base)


def params_dict(p: PathfinderParams) -> dict:
    """``p`` as a plain dict (tuples stay tuples), as cache keys and task metadata hold it."""
    return asdict(p)


__all__ = ["PathfinderParams", "params_for", "params_dict", "DIFFICULTIES", "GENERATOR_VERSION", "RESAMPLE_FILTERS"]
