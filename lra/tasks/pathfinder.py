"""Pathfinder (Linsley et al. 2018) as in LRA: are the two markers connected by one path?

32x32 grayscale images flattened to 1,024 pixel tokens (vocabulary 256), 2 classes;
``pad_id`` None (every pixel is real). LRA uses the hardest set, ``curv_contour_length_14``,
and splits its 200,000 images 80/10/10: 160,000 / 20,000 / 20,000.

Sources (``task.source``):

* ``generate`` (default): :mod:`lra.pathfinder.generate`, a seeded vectorized reimplementation
  of the release's generator (drewlinsley/pathfinder ``snakes2``) with its parameters for the
  size and ``difficulty`` (``task.generator`` overrides single parameters; ``task.gen_workers``
  processes, default the CPUs available up to 8); a minute or two for 200,000 images on one
  core. ``task.generator_version`` names the generator the config expects (recorded with
  every run; a mismatch with the code is an error, so a record's images are known). The
  images pass the difficulty checks of :mod:`lra.pathfinder.difficulty` as the reference's
  do (flood fill at chance, dash and grey-level statistics; see tests/tasks/test_pathfinder*.py).
* ``release``: the LRA release's ``pathfinder32/<difficulty>/`` (``lra_release.gz``): PNGs under
  ``imgs/<batch>/`` listed by ``metadata/<batch>.npy``, which are *text* files, one line per
  image: ``subdir filename index label ...`` (label = fourth field). Lines whose image is
  missing or empty are skipped (the reference filters empty images too). The images are
  shuffled with ``data_seed`` and split 80/10/10 (the reference's TFDS builder also
  shuffles before its ``[:80%]`` / ``[80%:90%]`` / ``[90%:]`` splits). Needs Pillow.

``seq_len`` other than size^2 (e.g. ``trainer=quick``'s) resizes the images to the largest
square that fits (area averaging): a smaller task for quick runs, not comparable to LRA. A length
that is not a square (1000) runs at the square below it (31 x 31 = 961; the record says so). The
smallest valid length (:func:`smallest_side`, checked by :func:`check_config` before any work) keeps
each marker at least one pixel wide after the resize, ``side >= size / (2 * marker_radius)`` with
the generator's marker radius at the native size: 11 x 11 = 121 pixels for Pathfinder-32 (markers of
radius 1.5), 22 x 22 = 484 for Path-X (radius 3). Area averaging fades a marker gradually, so the
line is this stated convention; ``tests/training/test_bad_input.py`` measures on generated images
that at 11 x 11 the two markers are still distinct spots with a pixel of room between them, and at
3 x 3 they are not.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import torch

from ..data import cached_tensors, default_cache_dir, source_fingerprint
from ..pathfinder import DIFFICULTIES, GENERATOR_VERSION, PathfinderParams, params_dict, params_for
from ..pathfinder.generate import generate as generate_images
from ..progress import progress as progress_bar
from . import DataNotFoundError, TaskData
from .image import square_splits

SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
#: a square grayscale image, one pixel token per position, row-major (model.patch may group them)
IMAGE = True


def _sizes(cfg) -> dict[str, int | None]:
    return {"train": cfg.get("num_train"), "val": cfg.get("num_val"), "test": cfg.get("num_test")}


def release_dir(data_dir: Path, res_dir: str, difficulty: str) -> Path | None:
    for d in (data_dir / res_dir / difficulty, data_dir / "lra_release" / res_dir / difficulty, data_dir / difficulty,
              data_dir):
        if (d / "metadata").is_dir():
            return d
    return None


def missing_message(name: str, data_dir: Path, res_dir: str, difficulty: str) -> str:
    return (f"Pathfinder release files not found in task.data_dir={str(data_dir)!r}: expected "
            f"{data_dir / res_dir / difficulty}/metadata/*.npy and {data_dir / res_dir / difficulty}/imgs/ (the LRA "
            f"release lra_release.gz unpacks to lra_release/{res_dir}/{difficulty}/; data_dir may point at "
            f"lra_release, {res_dir} or the difficulty folder). Or generate the images instead (the default): "
            f"lra-data prepare task={name} source=generate")


def _metadata_files(d: Path) -> list[Path]:
    def order(p: Path):
        return (int(p.stem), "") if p.stem.isdigit() else (1 << 62, p.stem)
    return sorted((d / "metadata").glob("*.npy"), key=order)


def read_release(d: Path, size: int, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor, int]:
    """All images listed by ``d/metadata/*.npy``: (images (n, size*size) uint8, labels, skipped count)."""
    try:
        from PIL import Image  # noqa: PLC0415 - optional dependency, only to read the released images
    except ImportError:
        raise DataNotFoundError("reading the Pathfinder release needs Pillow (pip install pillow); or use "
                                "task.source=generate") from None
    metas = _metadata_files(d)
    if not metas:
        raise DataNotFoundError(f"{d / 'metadata'} holds no *.npy metadata files")
    entries = []
    for meta in metas:
        for lineno, line in enumerate(meta.read_text(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            f = line.split()
            if len(f) < 4 or not re.fullmatch(r"[01]", f[3]):
                raise DataNotFoundError(f"{meta}, line {lineno}: expected 'subdir filename index label ...' with "
                                        f"label 0 or 1, got {line[:80]!r}")
            entries.append((d / f[0] / f[1], int(f[3])))
    images = np.zeros((len(entries), size * size), dtype=np.uint8)
    labels = np.zeros(len(entries), dtype=np.int64)
    n = skipped = 0
    for path, label in progress_bar(entries, desc=f"Pathfinder: reading {len(entries)} images", disable=not progress,
                                    unit="img", mininterval=2):
        if not path.is_file() or path.stat().st_size == 0:
            skipped += 1
            continue
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("L"), dtype=np.uint8)
        except Exception as err:
            raise DataNotFoundError(f"{path}: not a readable image ({type(err).__name__}: {err})") from None
        if arr.shape != (size, size):
            raise DataNotFoundError(f"{path}: image is {arr.shape[1]}x{arr.shape[0]}, expected {size}x{size}")
        images[n], labels[n] = arr.reshape(-1), label
        n += 1
    if n == 0:
        raise DataNotFoundError(f"none of the {len(entries)} images listed in {d / 'metadata'} exist or are non-empty")
    return torch.from_numpy(images[:n]), torch.from_numpy(labels[:n]), skipped


def generator_params(cfg, size: int) -> PathfinderParams:
    overrides = dict(cfg.get("generator") or {})
    if "paddle_margin" in overrides and overrides["paddle_margin"] is not None:
        overrides["paddle_margin"] = tuple(np.atleast_1d(overrides["paddle_margin"]).tolist())
    return params_for(size, str(cfg.difficulty), **overrides)


def smallest_side(params: PathfinderParams, size: int) -> int:
    """The smallest image side at which a marker (a disc of ``params.marker_radius`` pixels of the
    ``size``-pixel image) is still at least one pixel wide after area-averaging down: ``ceil(size /
    (2 * marker_radius))``, capped at ``size``."""
    return min(size, math.ceil(size / (2 * params.marker_radius) - 1e-9))


def check_config(cfg, size: int = 32, name: str = "pathfinder") -> None:
    """``task.seq_len`` too small to hold two markers and a path (:func:`smallest_side`): ``ValueError``
    naming the smallest valid length. Cheap (no image is generated or read)."""
    seq_len = int(cfg.seq_len)
    try:
        params = generator_params(cfg, size)
    except ValueError:
        return  # a bad generator override is reported where the images are generated
    side = smallest_side(params, size)
    if math.isqrt(seq_len) < side:
        got = math.isqrt(seq_len)
        raise ValueError(f"task.seq_len={seq_len} is too small for {name}: it would resize the {size}x{size} images to "
                         f"{got}x{got} pixels, where a marker (radius {params.marker_radius} px at {size}x{size}) no longer "
                         f"fills a pixel and the two markers and the path between them cannot be told apart; the "
                         f"smallest valid length is {side * side} ({side}x{side}); fix: task.seq_len={side * side} "
                         f"(or {size * size}, the LRA size)")


def prepare_pathfinder(cfg, name: str, size: int, res_dir: str) -> TaskData:
    cache_dir = cfg.get("cache_dir") or default_cache_dir()
    difficulty = str(cfg.get("difficulty", "curv_contour_length_14"))
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"task.difficulty={difficulty!r} is not one of {', '.join(DIFFICULTIES)}")
    sizes = _sizes(cfg)
    meta: dict = {"source": cfg.source, "difficulty": difficulty}
    if cfg.source == "generate":
        want = cfg.get("generator_version")
        if want is not None and int(want) != GENERATOR_VERSION:
            raise ValueError(f"task.generator_version={want!r}, but this lra-bench generates version "
                             f"{GENERATOR_VERSION} images (version 1: easier, unbroken strokes; retired); set "
                             f"task.generator_version={GENERATOR_VERSION} or use task.source=release")
        params = generator_params(cfg, size)
        total = int(cfg.get("num_images", 200_000))
        n = {s: (v if v is not None else int(round(total * f))) for (s, v), f in zip(sizes.items(), SPLIT_FRACTIONS)}
        batch = int(cfg.get("gen_batch_size") or (2048 if size <= 32 else 128))
        key = {"task": name, "source": "generate", "seed": int(cfg.data_seed), "sizes": n, "size": size,
               "params": params_dict(params), "batch": batch, "generator_version": GENERATOR_VERSION}
        key = json.loads(json.dumps(key))  # tuples -> lists, as the cache compares keys after a JSON round trip

        def build():
            workers = cfg.get("gen_workers")
            x, y = generate_images(sum(n.values()), int(cfg.data_seed), size, params, batch_size=batch,
                                progress=bool(cfg.get("progress", True)),
                                workers=None if workers is None else int(workers))
            x = torch.from_numpy(x.reshape(len(x), -1))
            y = torch.from_numpy(y)
            out, lo = {}, 0
            for s, k in n.items():
                out[f"{s}_x"], out[f"{s}_y"] = x[lo:lo + k], y[lo:lo + k]
                lo += k
            return out

        tensors = cached_tensors(cache_dir, name, key, build)
        meta.update(generator_version=GENERATOR_VERSION, params=params_dict(params))
    elif cfg.source == "release":
        if not cfg.get("data_dir"):
            raise DataNotFoundError("task.source=release needs task.data_dir. "
                                    + missing_message(name, Path("<data_dir>"), res_dir, difficulty))
        data_dir = Path(str(cfg.data_dir)).expanduser()
        d = release_dir(data_dir, res_dir, difficulty)
        if d is None:
            raise DataNotFoundError(missing_message(name, data_dir, res_dir, difficulty))
        metas = _metadata_files(d)
        if not metas:
            raise DataNotFoundError(f"{d / 'metadata'} holds no *.npy files. "
                                    + missing_message(name, data_dir, res_dir, difficulty))
        seed = int(cfg.data_seed)
        key = {"task": name, "source": "release", "dir": str(d.resolve()), "files": source_fingerprint(metas),
               "size": size, "seed": seed}

        def build():
            x, y, skipped = read_release(d, size, progress=bool(cfg.get("progress", True)))
            perm = torch.from_numpy(np.random.default_rng(seed).permutation(len(y)))
            x, y = x[perm], y[perm]
            n_tr, n_va = int(len(y) * SPLIT_FRACTIONS[0]), int(len(y) * sum(SPLIT_FRACTIONS[:2]))
            return {"train_x": x[:n_tr], "train_y": y[:n_tr], "val_x": x[n_tr:n_va], "val_y": y[n_tr:n_va],
                    "test_x": x[n_va:], "test_y": y[n_va:], "skipped": torch.tensor(skipped)}

        tensors = cached_tensors(cache_dir, name, key, build)
        meta.update(data_dir=str(d), skipped_images=int(tensors["skipped"]))
    else:
        raise ValueError(f"task.source={cfg.source!r} is not one of 'generate', 'release'")
    splits, side = square_splits(tensors, sizes, cfg.seq_len, size, name)
    meta["image_side"] = side
    return TaskData(name, splits, vocab_size=256, num_classes=2, seq_len=side * side, pad_id=None, meta=meta)


def prepare(cfg) -> TaskData:
    return prepare_pathfinder(cfg, "pathfinder", 32, "pathfinder32")
