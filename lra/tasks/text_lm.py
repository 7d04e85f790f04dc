"""text_lm: causal byte-level language modelling on the IMDb reviews (the Text task's data).

Each review is read as :mod:`lra.tasks.text` reads it (the parquet or aclImdb layout in
``task.data_dir``; byte ``b`` is token ``b + 1``, 0 is padding) and cut to its first ``seq_len + 1``
bytes: the inputs are bytes ``0 .. seq_len - 1`` and position ``i`` predicts byte ``i + 1``
(labels ``(n, seq_len)``; :data:`~lra.tasks.IGNORE` past the review's end). The first byte of a
review is never predicted. Splits: IMDb's 25,000 training reviews less a seeded ``val_fraction``
for validation, and its 25,000 test reviews (held out, reported).

The score is bits per byte: the mean next-byte cross-entropy over the predicted bytes, in bits
(:mod:`lra.training.token_task`). The baseline is measured on the data itself
(:func:`unigram_bits`): the entropy of the training split's predicted bytes, i.e. the best a model
that ignores the context can do on them (``unigram_bits_per_byte``), and the cross-entropy of that
distribution, add-one smoothed, on the test split's bytes (``unigram_test_bits_per_byte``).

Only causal attention can do this task (a bidirectional query would see the byte it predicts), so
a variant that cannot be causal is refused before any work (:mod:`lra.training.config`).
"""
from __future__ import annotations

import torch

from ..data import cached_tensors, default_cache_dir, subsample
from . import IGNORE, TaskData
from .text import SPLITS, VOCAB_SIZE, encode_bytes, imdb_sources, read_aclimdb, read_parquet, split_train_val

TARGET = "token"
#: a bidirectional model would see the byte it is asked for
NEEDS_CAUSAL = True
#: record names of the token-level numbers (lra.training.token_task)
RECORD_METRICS = {"bits": "bits_per_byte", "accuracy": "next_byte_accuracy"}
BYTES = 256


def next_byte_pairs(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n, L + 1)`` byte tokens (0 = padding) -> inputs ``(n, L)`` (same dtype) and labels
    ``(n, L)`` int16: the next token, :data:`IGNORE` where it is padding."""
    labels = tokens[:, 1:].to(torch.int16)
    return tokens[:, :-1], labels.masked_fill(labels == 0, IGNORE)


def byte_counts(labels: torch.Tensor) -> torch.Tensor:
    """``(256,)`` float64 counts of the predicted bytes (tokens 1..256) in ``labels``."""
    predicted = labels[labels != IGNORE].long()
    return torch.bincount(predicted - 1, minlength=BYTES).double()


def unigram_bits(train_labels: torch.Tensor, test_labels: torch.Tensor | None = None) -> float:
    """Entropy in bits of the byte distribution of ``train_labels``' predicted bytes; with
    ``test_labels``, the cross-entropy in bits per byte of that distribution (add-one smoothed over
    the 256 bytes, so no test byte has probability 0) on ``test_labels``' predicted bytes."""
    counts = byte_counts(train_labels)
    if test_labels is None:
        p = counts[counts > 0] / counts.sum()
        return float(-(p * p.log2()).sum())
    q = (counts + 1) / (counts.sum() + BYTES)
    test = byte_counts(test_labels)
    return float(-(test * q.log2()).sum() / test.sum())


def prepare(cfg) -> TaskData:
    """The three splits (``(n, seq_len)`` inputs and next-byte labels; see the module docstring) and the
    unigram baselines in ``meta["metrics"]``; the reviews are read once, then cached. O(n seq_len)."""
    seq_len = int(cfg.seq_len)
    data_dir, kind, files, fp = imdb_sources(cfg, "text_lm")
    val_fraction = float(cfg.get("val_fraction", 0.1))
    seed = int(cfg.get("data_seed", 0))
    key = {"task": "text_lm", "layout": kind, "files": fp, "seq_len": seq_len, "val_fraction": val_fraction,
           "seed": seed}

    def build():
        out = {}
        for split in SPLITS:
            texts, _sentiment = read_parquet(files[split][0]) if kind == "parquet" else read_aclimdb(files[split])
            tokens = encode_bytes(texts, seq_len + 1)
            if split == "train":
                tr, va = split_train_val(len(tokens), val_fraction, seed)
                out["train"], out["val"] = tokens[tr], tokens[va]
            else:
                out["test"] = tokens
        return out

    tensors = cached_tensors(cfg.get("cache_dir") or default_cache_dir(), "text_lm", key, build)
    splits = {}
    for split in ("train", "val", "test"):
        tokens = tensors[split]
        tokens, _ = subsample(tokens, torch.arange(len(tokens)), cfg.get(f"num_{split}"))
        splits[split] = next_byte_pairs(tokens)
    if len(splits["val"][1]) == 0:
        raise ValueError("task text_lm: the validation split is empty; raise task.val_fraction "
                         f"(now {val_fraction}) or provide more training reviews")
    train_labels, test_labels = splits["train"][1], splits["test"][1]
    empty = [s for s, (_, y) in splits.items() if not (y != IGNORE).any()]
    if empty:
        raise ValueError(f"task text_lm: the {', '.join(empty)} split(s) hold no byte to predict (seq_len={seq_len}: "
                         "every review there is shorter than 2 bytes?); check task.num_train/num_val/num_test")
    baselines = {"unigram_bits_per_byte": round(unigram_bits(train_labels), 6),
                 "unigram_test_bits_per_byte": round(unigram_bits(train_labels, test_labels), 6)}
    return TaskData("text_lm", splits, vocab_size=VOCAB_SIZE, num_classes=VOCAB_SIZE, seq_len=seq_len, pad_id=0,
                    target="token", meta={"source": kind, "data_dir": str(data_dir), "metrics": baselines})
