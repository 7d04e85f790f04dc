"""Path-X: Pathfinder at 128x128 (16,384 pixel tokens), as in LRA.

The same task as :mod:`lra.tasks.pathfinder` (see there for sources, splits and knobs) at
the release's 128x128 parameters (``lra_benchmarks/data/pathfinder.py``, ``Pathfinder128``:
paddle length 5, margins {2, 3}, thickness 1.5, marker radius 3, seed distance 20,
continuity 1.8, 35 // distractor_length distractors, contrast 0.9), drawn by the same
generator with the same named parameters (gaps, Lanczos rendering, stretch, seed search).
About 140 images per CPU-second, so 200,000 take ~25 CPU-minutes: ``task.gen_workers``
spreads them over cores. Release folder: ``pathfinder128/<difficulty>/``. No model in the
LRA paper beat chance on it.
"""
from __future__ import annotations

from .pathfinder import check_config as check_pathfinder, prepare_pathfinder
#: a square grayscale image, one pixel token per position, row-major (model.patch may group them)
IMAGE = True


def prepare(cfg):
    return prepare_pathfinder(cfg, "pathx", 128, "pathfinder128")


def check_config(cfg):
    """Path-X lengths too small for two markers and a path: :func:`lra.tasks.pathfinder.check_config`."""
    return check_pathfinder(cfg, 128, "pathx")
