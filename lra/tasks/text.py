"""Text: byte-level IMDb sentiment classification (Maas et al. 2011) as in LRA (Tay et al. 2020).

Each review is its UTF-8 bytes, each byte ``b`` becoming token ``b + 1`` so that 0 stays
the padding id (vocabulary 257), truncated to ``seq_len`` (LRA paper: 4,000; the reference
config ``base_tc_config.py`` defaults to ``max_length`` 1,000). 2 classes (0 negative, 1 positive).

Sources, in ``task.data_dir`` (first found wins):

* the Hugging Face parquet layout ``plain_text/{train,test}-00000-of-00001.parquet``
  (columns ``text``, ``label``), as written by ``datasets`` or ``task.download=true``;
* the original release ``aclImdb/{train,test}/{pos,neg}/*.txt`` (``data_dir`` may also be the
  ``aclImdb`` folder itself).

Splits: IMDb has 25,000 train and 25,000 test reviews. Validation is a seeded
``val_fraction`` (default 0.1: 2,500 reviews) held out of the training set; the LRA
reference pipeline instead validates on the test set, which leaks model selection into the
reported number.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data import cached_tensors, default_cache_dir, source_fingerprint, subsample
from ..io import atomic_write
from . import DataNotFoundError, TaskData, find_or_download

VOCAB_SIZE = 257  # 256 byte values shifted by one + padding id 0
SPLITS = ("train", "test")
PARQUET = "plain_text/{split}-00000-of-00001.parquet"


def encode_bytes(texts, seq_len: int) -> torch.Tensor:
    """Byte sequences (bytes or str, UTF-8) -> ``(n, seq_len)`` token ids ``byte + 1``, 0-padded.

    Stored as uint8 when every byte is below 255 (always true for valid UTF-8, which never
    uses 0xF5-0xFF) and int16 otherwise.
    """
    raw = [t.encode("utf-8") if isinstance(t, str) else bytes(t) for t in texts]
    out = np.zeros((len(raw), seq_len), dtype=np.int16)
    for i, b in enumerate(raw):
        arr = np.frombuffer(b[:seq_len], dtype=np.uint8)
        out[i, : len(arr)] = arr.astype(np.int16) + 1
    if out.size == 0 or out.max() <= 255:
        return torch.from_numpy(out.astype(np.uint8))
    return torch.from_numpy(out)


def find_layout(data_dir: Path) -> tuple[str, dict[str, list[Path]]] | None:
    """("parquet" | "aclimdb", files per split) or None when neither layout is complete."""
    parquet = {s: [data_dir / PARQUET.format(split=s)] for s in SPLITS}
    if all(p[0].is_file() for p in parquet.values()):
        return "parquet", parquet
    for root in (data_dir / "aclImdb", data_dir):
        if all((root / s / c).is_dir() for s in SPLITS for c in ("pos", "neg")):
            return "aclimdb", {s: sorted((root / s / "neg").glob("*.txt")) + sorted((root / s / "pos").glob("*.txt"))
                               for s in SPLITS}
    return None


def missing_message(data_dir: Path) -> str:
    return (f"IMDb data not found in task.data_dir={str(data_dir)!r}. Accepted layouts: the Hugging Face parquet "
            f"files {data_dir / PARQUET.format(split='train')} and {data_dir / PARQUET.format(split='test')} "
            f"(columns text, label), or the original release {data_dir / 'aclImdb'}/{{train,test}}/{{pos,neg}}/*.txt "
            "(https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz, unpacked). To fetch it with the "
            "`datasets` library: lra-data prepare task=text data_dir=<dir> download=true")


def read_parquet(path: Path) -> tuple[list[str], np.ndarray]:
    try:
        df = pd.read_parquet(path, columns=["text", "label"])
    except ImportError as err:
        raise DataNotFoundError(f"reading {path} needs pyarrow (pip install pyarrow): {err}") from err
    except Exception as err:  # wrong columns, not parquet, truncated file
        raise DataNotFoundError(f"could not read IMDb parquet file {path} (expected columns text, label): {err}") \
            from err
    bad = [i for i, (t, y) in enumerate(zip(df["text"], df["label"])) if not isinstance(t, str) or y not in (0, 1)]
    if bad:
        raise DataNotFoundError(f"{path}: row {bad[0]} is malformed (text must be a string and label 0 or 1; "
                                f"got {df['text'].iloc[bad[0]]!r:.60}, {df['label'].iloc[bad[0]]!r})")
    return list(df["text"]), np.array(df["label"], dtype=np.int64)


def read_aclimdb(files: list[Path]) -> tuple[list[bytes], np.ndarray]:
    texts, labels = [], []
    for f in files:
        texts.append(f.read_bytes())
        labels.append(1 if f.parent.name == "pos" else 0)
    return texts, np.asarray(labels, dtype=np.int64)


def download(data_dir: Path) -> None:
    """Fetch IMDb with the ``datasets`` library into the parquet layout."""
    try:
        import datasets  # noqa: PLC0415 - optional dependency, only for task.download=true
    except ImportError:
        raise DataNotFoundError(f"task.download=true needs the `datasets` library (pip install datasets); or put "
                                f"the data in place by hand. {missing_message(data_dir)}") from None
    try:
        ds = datasets.load_dataset("stanfordnlp/imdb")
    except Exception as err:
        raise DataNotFoundError(f"downloading IMDb with `datasets` failed ({type(err).__name__}: {err}). "
                                f"{missing_message(data_dir)}") from None
    for split in SPLITS:
        frame = ds[split].to_pandas()[["text", "label"]]
        atomic_write(data_dir / PARQUET.format(split=split), frame.to_parquet)


def split_train_val(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, val) index sets of a training set of ``n`` examples."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"task.val_fraction={val_fraction} must lie in [0, 1)")
    perm = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def imdb_sources(cfg, task: str) -> tuple[Path, str, dict[str, list[Path]], object]:
    """``(data_dir, layout, files per split, fingerprint)`` of the IMDb reviews under ``cfg.data_dir`` (the
    ``text`` and ``text_lm`` tasks): a clear error, before any work, when the folder is not given or
    holds no reviews; the fingerprint keys the tensor cache."""
    if not cfg.get("data_dir"):
        raise DataNotFoundError(f"task {task} needs task.data_dir (a folder with the IMDb data; under "
                                "experiment=cpu_table give it as imdb_dir=<folder>). "
                                + missing_message(Path("<data_dir>")))
    data_dir = Path(str(cfg.data_dir)).expanduser()
    kind, files = find_or_download(cfg, data_dir, find_layout, download, missing_message)
    if kind == "aclimdb" and any(len(files[s]) == 0 for s in SPLITS):
        raise DataNotFoundError(f"{data_dir}: the aclImdb folders hold no *.txt reviews. {missing_message(data_dir)}")
    fp = source_fingerprint([p for s in SPLITS for p in files[s]]) if kind == "parquet" else \
        [(s, len(files[s]), max(int(p.stat().st_mtime) for p in files[s])) for s in SPLITS]
    return data_dir, kind, files, fp


def prepare(cfg) -> TaskData:
    seq_len = int(cfg.seq_len)
    data_dir, kind, files, fp = imdb_sources(cfg, "text")
    val_fraction = float(cfg.get("val_fraction", 0.1))
    seed = int(cfg.get("data_seed", 0))
    key = {"task": "text", "layout": kind, "files": fp, "seq_len": seq_len, "val_fraction": val_fraction,
           "seed": seed}

    def build():
        out = {}
        for split in SPLITS:
            texts, labels = read_parquet(files[split][0]) if kind == "parquet" else read_aclimdb(files[split])
            x, y = encode_bytes(texts, seq_len), torch.from_numpy(labels)
            if split == "train":
                tr, va = split_train_val(len(y), val_fraction, seed)
                out["train_x"], out["train_y"] = x[tr], y[tr]
                out["val_x"], out["val_y"] = x[va], y[va]
            else:
                out["test_x"], out["test_y"] = x, y
        return out

    tensors = cached_tensors(cfg.get("cache_dir") or default_cache_dir(), "text", key, build)
    sizes = {"train": cfg.get("num_train"), "val": cfg.get("num_val"), "test": cfg.get("num_test")}
    splits = {s: subsample(tensors[f"{s}_x"], tensors[f"{s}_y"], n) for s, n in sizes.items()}
    if len(splits["val"][1]) == 0:
        raise ValueError("task text: the validation split is empty; raise task.val_fraction "
                         f"(now {val_fraction}) or provide more training reviews")
    return TaskData("text", splits, vocab_size=VOCAB_SIZE, num_classes=2, seq_len=seq_len, pad_id=0,
                    meta={"source": kind, "data_dir": str(data_dir)})
