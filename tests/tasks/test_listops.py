import random

import pytest
import torch

from lra.tasks import DataNotFoundError
from lra.tasks import listops
from conftest import compose_train
from lra.training.config import resolve


@pytest.mark.parametrize("source,value", [
    ("( ( ( [MAX 2 ) 9 ) ] )", 9),
    ("( ( ( [MIN 4 ) 7 ) ] )", 4),
    ("( ( ( ( [MED 1 ) 3 ) 5 ) ] )", 3),
    ("( ( ( ( ( [MED 1 ) 2 ) 3 ) 8 ) ] )", 2),        # median 2.5 truncated to 2
    ("( ( ( ( [SM 7 ) 8 ) 9 ) ] )", 4),               # 24 mod 10
    ("( ( ( [MAX 2 ) ( ( ( [SM 5 ) 6 ) ] ) ) ] )", 2),  # MAX(2, SM(5, 6)=1)
    ("( ( ( [MIN ( ( ( [MAX 3 ) 8 ) ] ) ) ( ( ( [MED 9 ) 9 ) 1 ) ] ) ] )", 8),  # MIN(8, 9)
    ("7", 7),
])
def test_labels_of_hand_written_expressions(source, value):
    assert listops.parse_and_evaluate(listops.tokenize(source)) == value


def test_tokenizer_drops_parentheses_and_keeps_bracket():
    assert listops.tokenize("( ( [MAX 2 ) 9 ] )") == ["[MAX", "2", "9", "]"]


def test_generated_labels_match_evaluation_and_lengths():
    x, y = listops.generate(50, seed=1, min_length=10, max_length=64, progress=False)
    inv = {i: t for t, i in listops.TOKEN_ID.items()}
    for row, label in zip(x, y):
        tokens = [inv[int(i)] for i in row if int(i) != 0]
        assert 10 < len(tokens) < 64
        assert listops.parse_and_evaluate(tokens) == int(label)
    x2, y2 = listops.generate(50, seed=1, min_length=10, max_length=64, progress=False)
    assert torch.equal(x, x2) and torch.equal(y, y2)


def test_generator_respects_depth():
    rng = random.Random(0)
    for _ in range(200):
        tokens, _ = listops.generate_tree(rng, max_depth=3)
        depth = max_depth = 0
        for t in tokens:
            depth += t in listops.OPERATORS
            depth -= t == listops.END
            max_depth = max(max_depth, depth)
        assert max_depth <= 2  # operators only below max_depth (depth 1 and 2)


def _write_tsv(path, rows):
    path.write_text("Source\tTarget\n" + "".join(f"{s}\t{t}\n" for s, t in rows))


def test_tsv_reader(tmp_path):
    rows = [("( ( ( [MAX 2 ) 9 ) ] )", 9), ("( ( ( [SM 5 ) 6 ) ] )", 1), ("3", 3)]
    for split in ("train", "val", "test"):
        _write_tsv(tmp_path / f"basic_{split}.tsv", rows)
    cfg = resolve(compose_train("task.source=tsv", f"task.data_dir={tmp_path}", f"task.cache_dir={tmp_path}/cache",
                                "task.seq_len=16"))[0]
    data = listops.prepare(cfg)
    x, y = data.splits["train"]
    assert y.tolist() == [9, 1, 3]
    ids = listops.TOKEN_ID
    assert x[0, :4].tolist() == [ids["[MAX"], ids["2"], ids["9"], ids["]"]]
    assert x[0, 4:].eq(0).all()
    assert data.describe()["train"]["examples"] == 3


def test_tsv_reader_errors(tmp_path):
    cfg = resolve(compose_train("task.source=tsv", f"task.data_dir={tmp_path}", f"task.cache_dir={tmp_path}/c"))[0]
    with pytest.raises(DataNotFoundError, match="basic_train.tsv"):
        listops.prepare(cfg)
    (tmp_path / "bad.tsv").write_text("a\tb\nx\ty\n")
    with pytest.raises(DataNotFoundError, match="Source<TAB>Target"):
        listops.read_tsv(tmp_path / "bad.tsv", 8)


def test_generated_data_is_cached(tmp_path):
    cfg = resolve(compose_train("trainer=quick", f"task.cache_dir={tmp_path}", "trainer.task_overrides.seq_len=32",
                                "trainer.task_overrides.num_train=20", "trainer.task_overrides.num_val=4",
                                "trainer.task_overrides.num_test=4"))[0]
    a = listops.prepare(cfg)
    assert len(list(tmp_path.glob("listops-*.pt"))) == 1
    b = listops.prepare(cfg)
    assert torch.equal(a.splits["train"][0], b.splits["train"][0])
    cache = next(tmp_path.glob("listops-*.pt"))
    cache.write_bytes(cache.read_bytes()[:100])  # corrupt it: rebuilt, not used
    c = listops.prepare(cfg)
    assert torch.equal(a.splits["train"][0], c.splits["train"][0])


def test_cache_is_reused_for_keys_holding_tuples(tmp_path):
    """Keys of file-backed tasks hold (name, size, mtime) tuples; a stored key must still match."""
    from lra.data import cached_tensors, source_fingerprint

    src = tmp_path / "src.txt"
    src.write_text("data")
    key = {"task": "t", "files": source_fingerprint([src])}
    calls = []

    def build():
        calls.append(1)
        return {"x": torch.arange(3)}

    for _ in range(3):
        assert torch.equal(cached_tensors(tmp_path, "t", key, build)["x"], torch.arange(3))
    assert len(calls) == 1
    src.write_text("changed data")  # the source changed: its fingerprint too, so the cache is rebuilt
    cached_tensors(tmp_path, "t", {"task": "t", "files": source_fingerprint([src])}, build)
    assert len(calls) == 2
