"""Cached tensor datasets and on-device batching.

* :func:`cached_tensors` builds a dict of tensors once per key (task parameters and the
  source files' size/mtime), stores it atomically under a file lock so that concurrent
  jobs build it once, and detects corrupt or partial caches (checksum) and rebuilds them.
* :class:`DeviceBatches` keeps a split on the training device and yields the batch of a
  given step deterministically (a seeded permutation per epoch), so a resumed run sees
  exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import torch

CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    return Path(os.environ.get("LRA_CACHE_DIR", Path.home() / ".cache" / "lra-bench"))


def key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def source_fingerprint(paths) -> list[tuple[str, int, int]]:
    """(name, size, mtime) of source files: part of a cache key for data read from disk."""
    return [(str(Path(p).name), Path(p).stat().st_size, int(Path(p).stat().st_mtime)) for p in paths]


def tensors_checksum(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(name.encode())
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@contextmanager
def file_lock(path: Path):
    """Exclusive advisory lock on ``path`` (created if missing); blocks until acquired."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _plain(key: Any) -> Any:
    """``key`` as JSON would give it back (tuples become lists), so stored and new keys compare equal."""
    return json.loads(json.dumps(key, default=str))


def _try_load(path: Path, key: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        ok = (blob.get("format") == CACHE_FORMAT and _plain(blob.get("key")) == _plain(key)
              and blob.get("checksum") == tensors_checksum(blob["tensors"]))
    except Exception:  # truncated zip, unpickling error, missing keys: all mean "corrupt"
        ok = False
    if not ok:
        print(f"[lra] cache {path} is corrupt or stale; rebuilding it")
        return None
    return blob["tensors"]


def cached_tensors(cache_dir: str | os.PathLike, name: str, key: dict[str, Any],
                   build: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Load the tensors cached for ``key`` or build and cache them (once, even across processes)."""
    cache_dir = Path(cache_dir).expanduser()
    path = cache_dir / f"{name}-{key_digest(key)}.pt"
    tensors = _try_load(path, key)
    if tensors is not None:
        return tensors
    with file_lock(path.with_suffix(".lock")):
        tensors = _try_load(path, key)  # another process may have built it while we waited
        if tensors is not None:
            return tensors
        tensors = build()
        blob = {"format": CACHE_FORMAT, "key": _plain(key), "checksum": tensors_checksum(tensors), "tensors": tensors}
        fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".{path.name}.", suffix=".part")
        os.close(fd)
        try:
            torch.save(blob, tmp)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return tensors


def subsample(x: torch.Tensor, y: torch.Tensor, limit: int | None, seed: int = 0):
    """At most ``limit`` examples, a seeded random subset (all when limit is None)."""
    if limit is None or limit >= len(y):
        return x, y
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
    return x[idx], y[idx]


class DeviceBatches:
    """Batches of one split, held on ``device``; ``batch(step)`` is a pure function of step.

    Epoch ``e`` uses ``randperm(n)`` from a generator seeded with ``(seed, e)``; the last
    incomplete batch of an epoch is dropped when shuffling (training) and kept otherwise.
    Returns ``(tokens int64, mask bool or None, labels int64)``.
    """

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int, device,
                 pad_id: int | None, shuffle: bool, seed: int = 0):
        if len(labels) == 0:
            raise ValueError("cannot batch an empty split")
        self.inputs = inputs.to(device, non_blocking=True)
        self.labels = labels.to(device, non_blocking=True)
        self.batch_size = min(batch_size, len(labels))
        self.pad_id, self.shuffle, self.seed = pad_id, shuffle, seed
        n = len(labels)
        self.steps_per_epoch = n // self.batch_size if shuffle else -(-n // self.batch_size)
        self._perm_epoch, self._perm = -1, None

    def __len__(self) -> int:
        return self.steps_per_epoch

    def _indices(self, step: int) -> torch.Tensor | slice:
        epoch, i = divmod(step, self.steps_per_epoch)
        lo, hi = i * self.batch_size, (i + 1) * self.batch_size
        if not self.shuffle:
            return slice(lo, hi)
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(len(self.labels), generator=g).to(self.labels.device)
            self._perm_epoch = epoch
        return self._perm[lo:hi]

    def batch(self, step: int):
        idx = self._indices(step)
        x = self.inputs[idx].long()
        mask = None if self.pad_id is None else x != self.pad_id
        return x, mask, self.labels[idx]

    def __iter__(self):
        for step in range(self.steps_per_epoch):
            yield self.batch(step)
