"""Readers of the LRA tasks on tiny fixtures written in the official formats, and 2-step training runs."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import lra
from lra import tasks
from lra.tasks import DataNotFoundError
from conftest import train_two_steps, write_aan


def task_cfg(name: str, tmp_path: Path, **kw):
    """The task's own yaml with overrides (as lra.training.config.resolve would give)."""
    cfg = OmegaConf.load(lra.conf_dir() / "task" / f"{name}.yaml")
    return OmegaConf.merge(cfg, {"cache_dir": str(tmp_path / "cache"), **kw})


# ----------------------------------------------------------------------------- text (IMDb)

def write_imdb_parquet(root: Path, rows_per_split: int = 2):
    import pandas as pd

    for split in ("train", "test"):
        path = root / "plain_text" / f"{split}-00000-of-00001.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        texts = [f"A {split} review number {i} " + "é" * i for i in range(rows_per_split)]
        pd.DataFrame({"text": texts, "label": [i % 2 for i in range(rows_per_split)]}).to_parquet(path)
    return root


def write_aclimdb(root: Path, per_class: int = 3):
    for split in ("train", "test"):
        for cls in ("pos", "neg"):
            d = root / "aclImdb" / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                (d / f"{i}_{7 if cls == 'pos' else 2}.txt").write_text(f"A {cls} review {i}.")
    return root


def test_text_parquet_byte_shift(tmp_path):
    pytest.importorskip("pyarrow")
    root = write_imdb_parquet(tmp_path / "imdb", rows_per_split=10)
    data = tasks.prepare(task_cfg("text", tmp_path, data_dir=str(root), seq_len=64))
    x, y = data.splits["test"]
    assert data.vocab_size == 257 and data.pad_id == 0 and data.num_classes == 2 and not data.dual
    assert x.shape == (10, 64)
    assert int(x[0, 0]) == ord("A") + 1 == 66  # b'A' = 65 -> token 66
    assert int(x[0, 1]) == ord(" ") + 1
    assert int(x[0].count_nonzero()) == len(b"A test review number 0 ")
    assert (x[5][x[5] != 0] - 1).to(torch.uint8).numpy().tobytes().decode() == "A test review number 5 " + "é" * 5
    assert y.tolist() == [i % 2 for i in range(10)]
    # validation is held out of the training set, not the test set
    assert len(data.splits["train"][1]) == 9 and len(data.splits["val"][1]) == 1
    train_rows = {tuple(r.tolist()) for r in torch.cat([data.splits["train"][0], data.splits["val"][0]])}
    assert all(bytes((r[r != 0] - 1).tolist()).startswith(b"A train") for r in map(torch.tensor, train_rows))


def test_text_aclimdb_layout(tmp_path):
    root = write_aclimdb(tmp_path / "imdb")
    data = tasks.prepare(task_cfg("text", tmp_path, data_dir=str(root), seq_len=32, val_fraction=0.2))
    assert sum(len(y) for _, y in data.splits.values()) == 12
    assert sorted(data.splits["test"][1].tolist()) == [0, 0, 0, 1, 1, 1]
    assert data.describe()["test"]["length"]["max"] <= 32


def test_text_missing_and_malformed(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        tasks.prepare(task_cfg("text", tmp_path, data_dir=str(tmp_path / "nowhere")))
    msg = str(err.value)
    assert "plain_text/train-00000-of-00001.parquet" in msg and "aclImdb" in msg and "lra-data prepare" in msg
    pytest.importorskip("pyarrow")
    import pandas as pd

    root = write_imdb_parquet(tmp_path / "bad")
    bad = root / "plain_text" / "test-00000-of-00001.parquet"
    pd.DataFrame({"text": ["fine", "x"], "label": [0, 7]}).to_parquet(bad)
    with pytest.raises(DataNotFoundError, match="test-00000-of-00001.parquet: row 1"):
        tasks.prepare(task_cfg("text", tmp_path, data_dir=str(root), seq_len=16))
    pd.DataFrame({"review": ["fine"], "y": [0]}).to_parquet(bad)
    with pytest.raises(DataNotFoundError, match="columns text, label"):
        tasks.prepare(task_cfg("text", tmp_path, data_dir=str(root), seq_len=17))


def test_text_download_without_datasets(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_datasets(name, *a, **k):
        if name == "datasets":
            raise ImportError("no datasets")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(DataNotFoundError, match="needs the `datasets` library"):
        tasks.prepare(task_cfg("text", tmp_path, data_dir=str(tmp_path / "x"), download=True))


def test_text_trains(tmp_path):
    root = write_aclimdb(tmp_path / "imdb")
    train_two_steps(tmp_path, "text", f"task.data_dir={root}", "trainer.task_overrides.seq_len=64",
                    "task.val_fraction=0.34")


# ----------------------------------------------------------------------------- retrieval (AAN)

def test_retrieval_reader_dual(tmp_path):
    write_aan(tmp_path / "lra_release" / "tsv_data")
    data = tasks.prepare(task_cfg("retrieval", tmp_path, data_dir=str(tmp_path), seq_len=24))
    x, y = data.splits["train"]
    assert data.dual and data.pad_id == 0 and data.vocab_size == 257
    assert x.shape == (4, 2, 24) and y.tolist() == [0, 1, 0, 1]
    first = bytes((x[1, 0][x[1, 0] != 0] - 1).tolist())
    assert first == b"Doc A 1 caf\xc3\xa9"  # the bytes the literal denotes, not its source text
    assert int(x[1, 1, 0]) == ord("D") + 1
    assert set(data.splits) == {"train", "val", "test"}


@pytest.mark.parametrize("line,match", [
    ("1\tonly\tthree", "expected 5 tab-separated columns"),
    ("x\ta\tb\tb'ok'\tb'ok'", "label 'x'"),
    ("1\ta\tb\tb'unterminated\tb'ok'", "not a valid Python bytes literal"),
    ("1\ta\tb\tb'ok' + __import__('os').system('true')\tb'ok'", "not a valid Python bytes literal"),
])
def test_retrieval_malformed_rows(tmp_path, line, match):
    root = write_aan(tmp_path / "tsv", bad_line=line)
    with pytest.raises(DataNotFoundError, match=match) as err:
        tasks.prepare(task_cfg("retrieval", tmp_path, data_dir=str(root), seq_len=16))
    assert "new_aan_pairs.eval.tsv, line 2" in str(err.value)


def test_retrieval_missing(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        tasks.prepare(task_cfg("retrieval", tmp_path, data_dir=str(tmp_path)))
    msg = str(err.value)
    assert "new_aan_pairs.train.tsv" in msg and "lra_release" in msg and "tsv_data" in msg


def test_retrieval_trains(tmp_path):
    root = write_aan(tmp_path / "tsv")
    train_two_steps(tmp_path, "retrieval", f"task.data_dir={root}", "trainer.task_overrides.seq_len=32")


# ----------------------------------------------------------------------------- image (CIFAR-10)

def write_cifar(root: Path, n: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        blob = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, n).tolist(),
                b"batch_label": name.encode()}
        with open(d / name, "wb") as f:
            pickle.dump(blob, f)
    return root


def test_image_reader(tmp_path):
    root = write_cifar(tmp_path / "cifar")
    data = tasks.prepare(task_cfg("image", tmp_path, data_dir=str(root)))
    assert data.pad_id is None and data.vocab_size == 256 and data.num_classes == 10 and data.seq_len == 1024
    assert [len(data.splits[s][1]) for s in ("train", "val", "test")] == [45, 5, 10]
    with open(root / "cifar-10-batches-py" / "data_batch_5", "rb") as f:
        last = pickle.load(f, encoding="bytes")
    # validation = the last 10% of the training batches; grayscale as tf.image.rgb_to_grayscale
    rgb = last[b"data"][5:].reshape(-1, 3, 1024).astype(np.float64) / 255
    gray = np.floor((0.2989 * rgb[:, 0] + 0.5870 * rgb[:, 1] + 0.1140 * rgb[:, 2]) * 255.5)
    assert np.abs(data.splits["val"][0].numpy().astype(int) - gray).max() <= 1
    assert data.splits["val"][1].tolist() == last[b"labels"][5:]
    white = np.full((1, 3072), 255, np.uint8)
    from lra.tasks.image import to_grayscale

    assert to_grayscale(white).max() == 255 and to_grayscale(np.zeros_like(white)).max() == 0
    assert "length" not in data.describe()["train"]  # no padding statistics for pixels


def test_image_missing_and_malformed(tmp_path):
    with pytest.raises(DataNotFoundError, match="cifar-10-batches-py") as err:
        tasks.prepare(task_cfg("image", tmp_path, data_dir=str(tmp_path)))
    assert "download=true" in str(err.value)
    root = write_cifar(tmp_path / "cifar")
    with open(root / "cifar-10-batches-py" / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}, f)
    with pytest.raises(DataNotFoundError, match="data_batch_3"):
        tasks.prepare(task_cfg("image", tmp_path, data_dir=str(root)))


def test_image_trains_resized(tmp_path):
    root = write_cifar(tmp_path / "cifar")
    record = train_two_steps(tmp_path, "image", f"task.data_dir={root}", "trainer.task_overrides.seq_len=64")
    assert record["seq_len"] == 64  # 8x8 area-averaged images for a quick run


# ----------------------------------------------------------------------------- pathfinder (release + generate)

def write_pathfinder_release(root: Path, size: int = 32, n: int = 10, res: str = "pathfinder32"):
    Image = pytest.importorskip("PIL.Image")
    d = root / res / "curv_contour_length_14"
    (d / "imgs" / "0").mkdir(parents=True, exist_ok=True)
    (d / "metadata").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        arr = np.full((size, size), i * 20, dtype=np.uint8)
        Image.fromarray(arr).save(d / "imgs" / "0" / f"sample_{i}.png")
        lines.append(f"imgs/0 sample_{i}.png {i} {i % 2} 1.0 14 4 2 0.5 1 1")
    lines.append("imgs/0 sample_missing.png 99 1 1.0 14 4 2 0.5 1 1")  # missing image: skipped
    (d / "imgs" / "0" / "sample_empty.png").write_bytes(b"")
    lines.append("imgs/0 sample_empty.png 100 0 1.0 14 4 2 0.5 1 1")  # empty image: skipped
    (d / "metadata" / "0.npy").write_text("\n".join(lines) + "\n")
    return root, d


def test_pathfinder_release_reader(tmp_path):
    root, d = write_pathfinder_release(tmp_path / "lra_release")
    data = tasks.prepare(task_cfg("pathfinder", tmp_path, source="release", data_dir=str(root)))
    assert data.pad_id is None and data.seq_len == 1024 and data.vocab_size == 256
    assert [len(data.splits[s][1]) for s in ("train", "val", "test")] == [8, 1, 1]
    assert data.meta["skipped_images"] == 2
    x = torch.cat([data.splits[s][0] for s in data.splits])
    y = torch.cat([data.splits[s][1] for s in data.splits])
    for row, label in zip(x, y):  # image i is constant i*20 with label i % 2
        assert (row == row[0]).all() and int(label) == (int(row[0]) // 20) % 2


def test_pathfinder_release_malformed_and_missing(tmp_path):
    root, d = write_pathfinder_release(tmp_path / "lra_release")
    (d / "metadata" / "1.npy").write_text("imgs/0 sample_0.png\n")
    with pytest.raises(DataNotFoundError, match=r"1\.npy, line 1"):
        tasks.prepare(task_cfg("pathfinder", tmp_path, source="release", data_dir=str(root)))
    with pytest.raises(DataNotFoundError) as err:
        tasks.prepare(task_cfg("pathx", tmp_path, source="release", data_dir=str(tmp_path / "none")))
    assert "pathfinder128/curv_contour_length_14/metadata" in str(err.value)
    assert "source=generate" in str(err.value)


def test_pathfinder_generated_task(tmp_path):
    cfg = task_cfg("pathfinder", tmp_path, num_images=60, progress=False)
    data = tasks.prepare(cfg)
    assert data.pad_id is None and data.seq_len == 1024
    assert [len(data.splits[s][1]) for s in ("train", "val", "test")] == [48, 6, 6]
    again = tasks.prepare(cfg)  # from the cache
    assert torch.equal(again.splits["train"][0], data.splits["train"][0])


def test_pathfinder_trains(tmp_path):
    # 121 = 11x11, the smallest Pathfinder length that holds two markers and a path (lra.tasks.pathfinder)
    train_two_steps(tmp_path, "pathfinder", "trainer.task_overrides.seq_len=121", "trainer.task_overrides.num_train=16",
                    "trainer.task_overrides.num_val=4", "trainer.task_overrides.num_test=4")


def test_pathx_trains(tmp_path):
    # 484 = 22x22, the smallest Path-X length that holds two markers and a path (lra.tasks.pathfinder)
    train_two_steps(tmp_path, "pathx", "trainer.task_overrides.seq_len=484", "trainer.task_overrides.num_train=8",
                    "trainer.task_overrides.num_val=2", "trainer.task_overrides.num_test=2",
                    "task.gen_batch_size=16")


# ----------------------------------------------------------------------------- lra-data

def test_cli_errors_are_one_paragraph(tmp_path, capsys):
    from lra.cli.data import main

    with pytest.raises(SystemExit) as exit_:
        main(["info", "task=text", f"data_dir={tmp_path}"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: IMDb data not found") and "Traceback" not in err
    with pytest.raises(SystemExit) as exit_:
        main(["info", "task=nope"])
    assert exit_.value.code == 2 and "unknown task 'nope'" in capsys.readouterr().err


def test_cli_prepare_info_show(tmp_path, capsys, monkeypatch):
    from lra.cli.data import main

    monkeypatch.setenv("LRA_CACHE_DIR", str(tmp_path / "cache"))
    args = ["task=pathfinder", "num_images=40", "progress=false"]
    with pytest.raises(SystemExit) as exit_:
        main(["prepare", *args])
    assert exit_.value.code == 0 and "cached under" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["info", *args])
    assert '"class_counts"' in capsys.readouterr().out
    out = tmp_path / "grid.png"
    with pytest.raises(SystemExit):
        main(["show", *args, "n=4", f"out={out}"])
    assert out.is_file() and out.stat().st_size > 0
