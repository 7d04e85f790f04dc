"""Cached tensor datasets and on-device batching.

* :func:`cached_tensors` builds a dict of tensors once per key (task parameters and the
  source files' size/mtime), stores it atomically under a file lock so that concurrent
  jobs build it once, and detects corrupt or partial caches (checksum) and rebuilds them.
* :class:`DeviceBatches` keeps a split on the training device and yields the batch of a
  given step deterministically (a seeded permutation per epoch), so a resumed run sees
  exactly the batches an uninterrupted one would; optionally length-bucketed
  (:mod:`lra.bucketing`).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import torch

from . import bucketing
from .io import atomic_write

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
        atomic_write(path, lambda tmp: torch.save(blob, tmp))
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

    ``bucket_multiple`` (an int; None = off, the default) turns on length bucketing
    (:mod:`lra.bucketing`): each batch holds examples of similar length and is cut to its
    longest example's length rounded up to a multiple of ``bucket_multiple``; training batches
    come from sorting windows of ``bucket_window`` batches, evaluation (:meth:`iterate`) sorts the
    split. Needs ``pad_id`` (a split without padding is never bucketed). The epoch's plan is
    built on the CPU once per epoch and moved to ``device`` once, so no step syncs the device.
    """

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int, device,
                 pad_id: int | None, shuffle: bool, seed: int = 0, bucket_multiple: int | None = None,
                 bucket_window: int = bucketing.DEFAULT_WINDOW):
        if len(labels) == 0:
            raise ValueError("cannot batch an empty split")
        if bucket_multiple is not None and pad_id is None:
            raise ValueError("length bucketing needs a padding id: this split has no padding")
        self.seq_len = inputs.shape[-1]
        self.positions_per_example = self.seq_len * (inputs.shape[1] if inputs.dim() == 3 else 1)
        self._lengths = None
        self.inputs = inputs.to(device, non_blocking=True)
        self.labels = labels.to(device, non_blocking=True)
        self.batch_size = min(batch_size, len(labels))
        self.pad_id, self.shuffle, self.seed = pad_id, shuffle, seed
        self.bucket_multiple, self.bucket_window = bucket_multiple, bucket_window
        n = len(labels)
        self.steps_per_epoch = n // self.batch_size if shuffle else -(-n // self.batch_size)
        self._plan_epoch, self._plan, self._device_index = -1, None, None

    def __len__(self) -> int:
        return self.steps_per_epoch

    @property
    def bucketed(self) -> bool:
        return self.bucket_multiple is not None

    def _example_lengths(self) -> tuple[torch.Tensor, torch.Tensor] | tuple[None, None]:
        """(lengths, real-token counts) per example (:func:`lra.bucketing.example_lengths`), on the CPU;
        computed on first use (one pass over the split on its device); None without padding."""
        if self.pad_id is None:
            return None, None
        if self._lengths is None:
            self._lengths = bucketing.example_lengths(self.inputs, self.pad_id)
        return self._lengths

    @property
    def lengths(self) -> torch.Tensor | None:
        return self._example_lengths()[0]

    @property
    def real(self) -> torch.Tensor | None:
        return self._example_lengths()[1]

    def plan(self, epoch: int) -> bucketing.Plan:
        """The training batches of ``epoch`` (:func:`lra.bucketing.train_plan`), on the CPU."""
        return bucketing.train_plan(len(self.labels), self.batch_size, self.seed, epoch,
                                    lengths=self.lengths if self.bucketed else None,
                                    multiple=self.bucket_multiple or 1, window=self.bucket_window,
                                    seq_len=self.seq_len)

    def _take(self, idx, length: int):
        x = self.inputs if length >= self.seq_len else self.inputs[..., :length]
        x = x[idx].long()
        mask = None if self.pad_id is None else x != self.pad_id
        return x, mask, self.labels[idx]

    def batch(self, step: int):
        """Training batch ``step`` (epochs follow one another: step // steps_per_epoch is the epoch)."""
        if not self.shuffle:
            raise ValueError("DeviceBatches.batch(step) draws training batches (shuffle=True); read an "
                             "evaluation split with iterate()")
        epoch, i = divmod(step, self.steps_per_epoch)
        if epoch != self._plan_epoch:
            self._plan = self.plan(epoch)
            self._device_index = self._plan.index.to(self.labels.device)
            self._plan_epoch = epoch
        return self._take(self._device_index[i], self._plan.lengths[i])

    def iterate(self, max_batches: int | None = None):
        """Every batch of the split once, for evaluation: the first ``max_batches * batch_size``
        examples (all when None) in stored order, or sorted by length when bucketed."""
        limit = None if max_batches is None else max_batches * self.batch_size
        if not self.bucketed:
            count = len(self.labels) if limit is None else min(limit, len(self.labels))
            for lo in range(0, count, self.batch_size):
                yield self._take(slice(lo, min(lo + self.batch_size, count)), self.seq_len)
            return
        plan = bucketing.eval_plan(len(self.labels), self.batch_size, lengths=self.lengths,
                                   multiple=self.bucket_multiple, seq_len=self.seq_len, limit=limit)
        on_device = torch.cat(plan.index).to(self.labels.device)   # one copy (a GPU sync), not one per batch
        for idx, length in zip(on_device.split([len(i) for i in plan.index]), plan.lengths):
            yield self._take(idx, length)

    def __iter__(self):
        return self.iterate()

    def token_counts(self, steps: int) -> tuple[int, int, set[int]]:
        """``(positions, real, lengths)`` of training steps ``0 .. steps-1``: positions the model
        computed (padded ones included), real (non-padding) tokens among them, and the distinct
        batch lengths. A pure function of the plans, so a resumed run counts what an
        uninterrupted one does. O(epochs * n log n) on the CPU."""
        positions = real = 0
        shapes: set[int] = set()
        per_token = self.positions_per_example // self.seq_len
        for epoch in range(-(-steps // self.steps_per_epoch)):
            plan = self.plan(epoch)
            k = min(self.steps_per_epoch, steps - epoch * self.steps_per_epoch)
            lengths = plan.lengths[:k]
            shapes.update(lengths)
            positions += self.batch_size * sum(lengths) * per_token
            real += int(self.real[plan.index[:k]].sum()) if self.real is not None \
                else k * self.batch_size * self.positions_per_example
        return positions, real, shapes
