"""text_lm (lra.tasks.text_lm): causal byte-level language modelling on IMDb-format fixtures (the
official parquet and aclImdb layouts, as the Text tests write them): next-byte labels, the unigram
baseline against a hand count, a tiny run's bits per byte, and the refusal of non-causal attention
(for text_lm and for pretrain=causal) with the list of causal variants."""
from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from omegaconf import OmegaConf

import attention_variants as av
import lra
from conftest import compose_train, tiny_train_overrides
from lra.schema import ConfigError
from lra.tasks import IGNORE, text_lm
from lra.training.config import validate
from lra.training.job import run

TRAIN = ["abab abab", "aab", "hello world", "ba", "abba baab"]
TEST = ["abc", "zz top", "b"]


def write_parquet(root, train=TRAIN, test=TEST):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    for split, texts in (("train", train), ("test", test)):
        path = root / "plain_text" / f"{split}-00000-of-00001.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"text": texts, "label": [i % 2 for i in range(len(texts))]}).to_parquet(path)
    return root


def write_aclimdb(root, per_class: int = 4):
    for split in ("train", "test"):
        for cls in ("pos", "neg"):
            d = root / "aclImdb" / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                (d / f"{i}_{7 if cls == 'pos' else 2}.txt").write_text(f"The {cls} review {i} says abab abab. " * 3)
    return root


def cfg_of(tmp_path, root, **kw):
    cfg = OmegaConf.load(lra.conf_dir() / "task" / "text_lm.yaml")
    return OmegaConf.merge(cfg, {"cache_dir": str(tmp_path / "cache"), "data_dir": str(root), "num_val": None,
                                 "num_test": None, **kw})


def test_each_position_predicts_the_next_byte(tmp_path):
    data = text_lm.prepare(cfg_of(tmp_path, write_parquet(tmp_path / "imdb"), seq_len=8, val_fraction=0.2))
    assert data.target == "token" and data.pad_id == 0 and data.vocab_size == 257
    x, y = data.splits["test"]
    assert x.shape == y.shape == (3, 8)
    # "zz top": inputs are its first 8 bytes (padded), position i is labelled with byte i + 1
    row = [t for t in range(3) if int(x[t, 0]) == ord("z") + 1][0]
    assert x[row].tolist() == [ord(c) + 1 for c in "zz top"] + [0, 0]
    assert y[row].tolist() == [ord(c) + 1 for c in "z top"] + [IGNORE] * 3
    one = [t for t in range(3) if int(x[t, 0]) == ord("b") + 1][0]
    assert (y[one] == IGNORE).all()                                # a one-byte review predicts nothing
    assert len(data.splits["train"][1]) == 4 and len(data.splits["val"][1]) == 1


def test_unigram_baseline_matches_a_hand_count(tmp_path):
    data = text_lm.prepare(cfg_of(tmp_path, write_parquet(tmp_path / "imdb"), seq_len=16, val_fraction=0.2))
    x, _ = data.splits["train"]
    texts = [bytes((r[r != 0] - 1).tolist()).decode() for r in x]
    counts = Counter("".join(t[1:] for t in texts))                # the predicted bytes: all but each first
    total = sum(counts.values())
    entropy = -sum(c / total * math.log2(c / total) for c in counts.values())
    test_bytes = Counter("".join(t[1:] for t in TEST))
    smoothed = -sum(n * math.log2((counts.get(b, 0) + 1) / (total + 256)) for b, n in test_bytes.items())
    metrics = data.meta["metrics"]
    assert metrics["unigram_bits_per_byte"] == pytest.approx(entropy, abs=1e-6)
    assert metrics["unigram_test_bits_per_byte"] == pytest.approx(smoothed / sum(test_bytes.values()), abs=1e-6)


def tiny_lm(tmp_path, root, *extra):
    return compose_train("task=text_lm", "attention=full", f"task.data_dir={root}", f"task.cache_dir={tmp_path}/c",
                         "task.seq_len=32", "task.val_fraction=0.25", "task.num_val=null", "task.num_test=null",
                         "model.d_model=16", "model.mlp_dim=16", "model.heads=2", "trainer.batch_size=4",
                         "trainer.steps=6", "trainer.warmup=2", "trainer.eval_every=3", "trainer.log_every=3",
                         "trainer.checkpoint_every=3", "trainer.progress=false", "threads=1", *extra)


def test_a_tiny_run_reports_bits_per_byte_beside_the_unigram_entropy(tmp_path):
    root = write_aclimdb(tmp_path / "imdb")
    rec = run(tiny_lm(tmp_path, root), tmp_path / "job")
    assert rec["status"] == "ok", rec["message"]
    m = rec["metrics"]
    assert math.isfinite(m["bits_per_byte"]) and math.isfinite(m["val_bits_per_byte"])
    assert m["bits_per_byte"] == pytest.approx(m["loss"] / math.log(2))
    assert 0 < m["unigram_bits_per_byte"] < 8 and m["test_tokens"] == 8 * 32      # 8 test reviews, bytes 1..32 predicted
    assert rec["task"] == "text_lm" and rec["case"]["attention_causal"] is True
    assert rec["case"]["state"]["bytes"] == 2 * 2 * 32 * 16 * 4                   # 2 layers' KV cache, fp32


@pytest.mark.parametrize("overrides", [["task=text_lm"], ["pretrain=causal"]])
def test_non_causal_attention_is_refused_before_any_work_with_the_causal_variants(tmp_path, overrides):
    root = write_aclimdb(tmp_path / "imdb")
    base = tiny_lm(tmp_path, root, "attention=nystrom") if overrides == ["task=text_lm"] else \
        compose_train(*tiny_train_overrides(tmp_path / "c", "attention=nystrom", *overrides))
    with pytest.raises(ConfigError) as err:
        run(base, tmp_path / "job")
    text = str(err.value)
    assert "needs causal attention" in text and "nystrom" in text
    assert "causal" in text and all(name in text for name in av.available(causal=True))
    assert not (tmp_path / "c").exists() and not (tmp_path / "job" / "record.json").exists()


#: the causal variants with a config file (attention=<name>); not the ones other test modules register
CAUSAL_WITH_CONFIG = [n for n in av.available(causal=True) if (lra.conf_dir() / "attention" / f"{n}.yaml").is_file()]


@pytest.mark.parametrize("name", CAUSAL_WITH_CONFIG)
def test_pretrain_causal_accepts_every_causal_variant(tmp_path, name):
    validate(compose_train(*tiny_train_overrides(tmp_path / "c", f"attention={name}", "pretrain=causal")))
    validate(tiny_lm(tmp_path, tmp_path / "imdb", f"attention={name}"))


def test_causal_pretraining_runs_with_full_attention(tmp_path):
    rec = run(compose_train(*tiny_train_overrides(tmp_path / "c", "attention=full", "pretrain=causal",
                                                  "pretrain.steps=4", "pretrain.eval_every=2",
                                                  "pretrain.checkpoint_every=2")), tmp_path / "job")
    assert rec["status"] == "ok", rec["message"]
    assert rec["config"]["pretrain"]["objective"] == "causal" and rec["variant_config"]["causal"] is True
    assert rec["metrics"]["pretrain_steps"] == 4
