"""Image: grayscale CIFAR-10 (Krizhevsky 2009) as a sequence of 1,024 pixels, as in LRA.

Each 32x32 image is converted to grayscale exactly as the reference pipeline does
(``tf.image.rgb_to_grayscale`` then back to uint8: ``floor(255.5 * sum_c w_c * x_c / 255)``
with weights 0.2989 / 0.5870 / 0.1140), flattened row by row; tokens are the pixel values
0-255 (vocabulary 256), 10 classes. Every position is real: ``pad_id`` is None (the
reference masks pixels of value 0 as padding; a black pixel is a value, so we do not).

Splits as the reference (``train[:90%]``, ``train[90%:]``, ``test``): 45,000 / 5,000 / 10,000;
validation is the last 10% of the training batches in file order (``data_batch_5``).

Source: ``task.data_dir`` holding ``cifar-10-batches-py/`` (``data_batch_1``..``5``,
``test_batch``: pickled dicts with ``b'data'`` (10000, 3072) uint8, RGB planes, and
``b'labels'``), or the folder itself; ``task.download=true`` fetches it with torchvision.

``seq_len`` other than 1,024 (e.g. the small lengths of ``trainer=quick``) resizes the
images to the largest square side with ``side^2 <= seq_len`` (area averaging): a smaller
task for quick runs, not comparable to LRA numbers.
"""
from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data import cached_tensors, default_cache_dir, source_fingerprint, subsample
from . import DataNotFoundError, TaskData, find_or_download

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
FOLDER = "cifar-10-batches-py"
GRAY_WEIGHTS = np.array([0.2989, 0.5870, 0.1140], dtype=np.float32)  # tf.image.rgb_to_grayscale
SIZE = 32
#: a square grayscale image, one pixel token per position, row-major (model.patch may group them)
IMAGE = True


def to_grayscale(rgb_planar: np.ndarray) -> np.ndarray:
    """(n, 3072) uint8 RGB planes -> (n, 1024) uint8 gray, as tf.image.rgb_to_grayscale on uint8 images."""
    x = rgb_planar.reshape(-1, 3, SIZE * SIZE).astype(np.float32) / 255.0
    gray = np.einsum("ncp,c->np", x, GRAY_WEIGHTS)
    return np.clip(np.floor(gray * 255.5), 0, 255).astype(np.uint8)  # convert_image_dtype: scale by 255.5, truncate


def square_side(seq_len: int, native: int) -> int:
    side = math.isqrt(int(seq_len))
    if side < 1:
        raise ValueError(f"task.seq_len={seq_len} is too small for an image task")
    return min(side, native)


def resize_square(x: torch.Tensor, native: int, side: int) -> torch.Tensor:
    """(n, native^2) uint8 -> (n, side^2) uint8 by area averaging (identity when side == native)."""
    if side == native:
        return x
    out = torch.empty(len(x), side * side, dtype=torch.uint8)
    for lo in range(0, len(x), 4096):
        chunk = x[lo:lo + 4096].view(-1, 1, native, native).float()
        out[lo:lo + 4096] = F.adaptive_avg_pool2d(chunk, side).round().clamp(0, 255).to(torch.uint8).view(-1, side * side)
    return out


def square_splits(tensors: dict[str, torch.Tensor], sizes: dict[str, int | None], seq_len: int, native: int,
                  name: str) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], int]:
    """Cached ``<split>_x/_y`` tensors of ``native``-pixel square images -> (splits subsampled to
    ``sizes`` and resized to the largest square of at most ``seq_len`` pixels, its side)."""
    side = square_side(seq_len, native)
    splits = {}
    for s, n in sizes.items():
        x, y = subsample(tensors[f"{s}_x"], tensors[f"{s}_y"], n)
        splits[s] = (resize_square(x, native, side), y)
    if side * side != int(seq_len):
        print(f"[lra] {name}: seq_len={seq_len} -> {side}x{side} = {side * side} pixels")
    return splits, side


def find_dir(data_dir: Path) -> Path | None:
    for d in (data_dir / FOLDER, data_dir):
        if all((d / f).is_file() for f in (*TRAIN_FILES, TEST_FILE)):
            return d
    return None


def missing_message(data_dir: Path) -> str:
    return (f"CIFAR-10 not found in task.data_dir={str(data_dir)!r}: expected {data_dir / FOLDER}/"
            f"{{{','.join(TRAIN_FILES)},{TEST_FILE}}} (the python version, "
            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, unpacked). To download it with torchvision: "
            "lra-data prepare task=image data_dir=<dir> download=true")


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        data = np.asarray(d[b"data"], dtype=np.uint8)
        labels = np.asarray(d[b"labels"], dtype=np.int64)
    except Exception as err:
        raise DataNotFoundError(f"{path} is not a CIFAR-10 python batch (a pickled dict with b'data' (n, 3072) "
                                f"uint8 and b'labels'): {type(err).__name__}: {err}") from None
    if data.ndim != 2 or data.shape[1] != 3 * SIZE * SIZE or len(labels) != len(data):
        raise DataNotFoundError(f"{path}: b'data' has shape {data.shape} and b'labels' {len(labels)} entries; "
                                "expected (n, 3072) and n")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataNotFoundError(f"{path}: labels must lie in 0..9, got {labels.min()}..{labels.max()}")
    return data, labels


def download(data_dir: Path) -> None:
    try:
        import torchvision  # noqa: PLC0415 - optional dependency, only for task.download=true
    except ImportError:
        raise DataNotFoundError("task.download=true needs torchvision (pip install torchvision); or put the data "
                                f"in place by hand. {missing_message(data_dir)}") from None
    try:
        torchvision.datasets.CIFAR10(root=str(data_dir), train=True, download=True)
    except Exception as err:
        raise DataNotFoundError(f"downloading CIFAR-10 with torchvision failed ({type(err).__name__}: {err}). "
                                f"{missing_message(data_dir)}") from None


def prepare(cfg) -> TaskData:
    if not cfg.get("data_dir"):
        raise DataNotFoundError("task image needs task.data_dir. " + missing_message(Path("<data_dir>")))
    data_dir = Path(str(cfg.data_dir)).expanduser()
    d = find_or_download(cfg, data_dir, find_dir, download, missing_message)
    files = [d / f for f in (*TRAIN_FILES, TEST_FILE)]
    val_fraction = float(cfg.get("val_fraction", 0.1))
    key = {"task": "image", "files": source_fingerprint(files), "val_fraction": val_fraction}

    def build():
        parts = [read_batch(d / f) for f in TRAIN_FILES]
        x = to_grayscale(np.concatenate([p[0] for p in parts]))
        y = np.concatenate([p[1] for p in parts])
        n_train = len(y) - int(round(len(y) * val_fraction))  # reference: train[:90%] / train[90%:]
        tx, ty = read_batch(d / TEST_FILE)
        t = torch.from_numpy
        return {"train_x": t(x[:n_train]), "train_y": t(y[:n_train]), "val_x": t(x[n_train:]),
                "val_y": t(y[n_train:]), "test_x": t(to_grayscale(tx)), "test_y": t(ty)}

    tensors = cached_tensors(cfg.get("cache_dir") or default_cache_dir(), "image", key, build)
    sizes = {"train": cfg.get("num_train"), "val": cfg.get("num_val"), "test": cfg.get("num_test")}
    splits, side = square_splits(tensors, sizes, cfg.seq_len, SIZE, "image")
    return TaskData("image", splits, vocab_size=256, num_classes=10, seq_len=side * side, pad_id=None,
                    meta={"data_dir": str(d), "image_side": side})
