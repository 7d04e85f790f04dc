"""Retrieval: byte-level document matching on the ACL Anthology Network (Radev et al. 2013) as in LRA.

Given two papers, decide whether one cites the other (2 classes). Inputs are two byte
sequences, each truncated to ``seq_len`` (LRA: 4,000 per document), tokens ``byte + 1``
with 0 for padding (vocabulary 257); the encoder sees ``(n, 2, seq_len)`` and combines the
two document encodings (``dual=True``).

Source: the LRA release (``lra_release.gz``; folder ``lra_release/tsv_data/``) holds
``new_aan_pairs.{train,eval,test}.tsv``: no header, tab-separated columns
``label id1 id2 text1 text2`` with each text written as a Python bytes literal ``b'...'``.
There is no other public source for these pairs. The texts are decoded with
``ast.literal_eval`` (never ``eval``); a field that is not a bytes literal is taken as plain
text. (The reference pipeline byte-encodes the raw field, i.e. the literal's own
characters ``b'`` and escape sequences included; we feed the bytes it denotes.)
Splits are the release's: 147,086 / 18,090 / 17,437 pairs (train / eval / test).
"""
from __future__ import annotations

import ast
from pathlib import Path

import torch

from ..data import cached_tensors, default_cache_dir, source_fingerprint, subsample
from . import DataNotFoundError, TaskData
from .text import VOCAB_SIZE, encode_bytes

SPLIT_FILES = {"train": "new_aan_pairs.train.tsv", "val": "new_aan_pairs.eval.tsv", "test": "new_aan_pairs.test.tsv"}


def find_dir(data_dir: Path) -> Path | None:
    for d in (data_dir, data_dir / "tsv_data", data_dir / "lra_release" / "tsv_data"):
        if all((d / f).is_file() for f in SPLIT_FILES.values()):
            return d
    return None


def missing_message(data_dir: Path) -> str:
    files = ", ".join(SPLIT_FILES.values())
    return (f"AAN retrieval files not found in task.data_dir={str(data_dir)!r} (also looked in tsv_data/ and "
            f"lra_release/tsv_data/ below it). Expected {files}: they come only with the LRA release "
            "(lra_release.gz from the google-research/long-range-arena README, unpacked: lra_release/tsv_data/); "
            "there is no live public source for these pairs. Then: lra-data prepare task=retrieval "
            "data_dir=<path to tsv_data>")


def decode_text(field: str) -> bytes:
    """A release text field -> the bytes it denotes (bytes literal via ast.literal_eval, else UTF-8 text)."""
    s = field.strip()
    if s[:2] in ("b'", 'b"'):
        value = ast.literal_eval(s)
        if not isinstance(value, bytes):
            raise ValueError("not a bytes literal")
        return value
    return s.encode("utf-8", "surrogateescape")


def read_tsv(path: Path, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One split file -> (inputs (n, 2, seq_len), labels (n,)); malformed lines name file and line."""
    firsts, seconds, labels = [], [], []
    with open(path, encoding="utf-8", errors="surrogateescape", newline="\n") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            cols = line.split("\t")
            if len(cols) != 5:
                raise DataNotFoundError(f"{path}, line {lineno}: expected 5 tab-separated columns "
                                        f"(label, id1, id2, text1, text2), got {len(cols)}")
            try:
                label = float(cols[0])
            except ValueError:
                raise DataNotFoundError(f"{path}, line {lineno}: label {cols[0]!r:.40} is not a number") from None
            if label not in (0.0, 1.0):
                raise DataNotFoundError(f"{path}, line {lineno}: label {cols[0]!r} is not 0 or 1")
            try:
                t1, t2 = decode_text(cols[3]), decode_text(cols[4])
            except (ValueError, SyntaxError, MemoryError, RecursionError) as err:
                raise DataNotFoundError(f"{path}, line {lineno}: a text column is not a valid Python bytes "
                                        f"literal b'...' ({type(err).__name__}: {err})") from None
            firsts.append(t1[:seq_len])
            seconds.append(t2[:seq_len])
            labels.append(int(label))
    x = torch.stack([encode_bytes(firsts, seq_len).to(torch.int16), encode_bytes(seconds, seq_len).to(torch.int16)], 1)
    if x.numel() == 0 or int(x.max()) <= 255:
        x = x.to(torch.uint8)
    return x, torch.tensor(labels, dtype=torch.int64)


def prepare(cfg) -> TaskData:
    seq_len = int(cfg.seq_len)
    if not cfg.get("data_dir"):
        raise DataNotFoundError("task retrieval needs task.data_dir. " + missing_message(Path("<data_dir>")))
    data_dir = Path(str(cfg.data_dir)).expanduser()
    d = find_dir(data_dir)
    if d is None:
        raise DataNotFoundError(missing_message(data_dir))
    files = {s: d / f for s, f in SPLIT_FILES.items()}
    key = {"task": "retrieval", "files": source_fingerprint(files.values()), "seq_len": seq_len}

    def build():
        out = {}
        for split, path in files.items():
            out[f"{split}_x"], out[f"{split}_y"] = read_tsv(path, seq_len)
        return out

    tensors = cached_tensors(cfg.get("cache_dir") or default_cache_dir(), "retrieval", key, build)
    sizes = {"train": cfg.get("num_train"), "val": cfg.get("num_val"), "test": cfg.get("num_test")}
    splits = {s: subsample(tensors[f"{s}_x"], tensors[f"{s}_y"], n) for s, n in sizes.items()}
    return TaskData("retrieval", splits, vocab_size=VOCAB_SIZE, num_classes=2, seq_len=seq_len, dual=True, pad_id=0,
                    meta={"data_dir": str(d)})

