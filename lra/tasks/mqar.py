"""Multi-query associative recall (MQAR; Arora, Eyuboglu et al. 2023, "Zoology: Measuring and
Improving Recall in Efficient Language Models"), generated locally, seeded and cached.

Definition (Zoology's generator, HazyResearch/zoology ``zoology/data/multiquery_ar.py``; this is
our own code): an example of ``seq_len`` N tokens over ``vocab_size`` V with P = ``num_kv_pairs``::

    positions 0 .. 2P-1    k1 v1 k2 v2 ... kP vP     the context: keys from [1, V/2), values from
                                                     [V/2, V), no key and no value twice in an example
    positions 2P .. N-1    .  .  k2 .  k1 .  ...     each key asked once, at position 2P + 2g, with the
                                                     gaps g distinct, drawn from 0 .. (N - 2P)/2 - 1 with
                                                     P(g) ~ (g + 1)^(power_a - 1) (a power law: short
                                                     gaps are likelier; power_a = 1 is uniform)
    labels                 the key's value at its query position, :data:`~lra.tasks.IGNORE` elsewhere

The query order is a random permutation of the context order. The other positions of the query
region (``.`` above) hold 0 (``random_non_queries=false``, Zoology's Figure 2 runs) or uniform
random tokens (``true``, the generator's default). Zoology draws those from the whole vocabulary;
here they are drawn from the tokens that are neither a key nor a value of the example, so that no
spurious query appears and a value occurs only in the context: never at its query's next position
or anywhere after it. A bidirectional model therefore sees nothing a causal one does not need,
and the task runs with every variant (causal where it can be, :mod:`lra.training.config`).

Splits come from their own seeded streams (``data_seed`` and the split's index), so changing one
split's size leaves the others as they were. Generation is vectorised NumPy, O(n N) per split;
the tensors are cached (:func:`lra.data.cached_tensors`) as int16 inputs and labels.
"""
from __future__ import annotations

import numpy as np
import torch

from ..data import cached_tensors, default_cache_dir
from . import IGNORE, TaskData

TARGET = "token"
#: a query's value is never after it: bidirectional variants run too (causal where they can)
NEEDS_CAUSAL = False
#: record names of the token-level numbers (lra.training.token_task): query accuracy is Zoology's metric
RECORD_METRICS = {"accuracy": "query_accuracy", "all_correct": "all_queries_correct"}
SPLITS = ("train", "val", "test")
#: changes whenever the same settings would draw other data
GENERATOR_VERSION = 1


def problems(seq_len: int, num_kv_pairs: int, vocab_size: int, power_a: float) -> list[str]:
    """Every constraint the settings break, one sentence each naming it and a fix ([] = fine)."""
    n, p, v = int(seq_len), int(num_kv_pairs), int(vocab_size)
    found = []
    if n % 2:
        found.append(f"task.seq_len={n} is odd: MQAR needs an even seq_len (each query sits at an even offset "
                     f"of the query region); fix: task.seq_len={n + 1}")
    if p < 1:
        found.append(f"task.num_kv_pairs={p} must be at least 1; fix: task.num_kv_pairs={max(1, n // 16)}")
    elif 4 * p > n:
        found.append(f"task.num_kv_pairs={p} is too large for task.seq_len={n}: the keys and values (2 x pairs tokens) "
                     f"and the queries (each at its own even offset after them) need 4 x num_kv_pairs <= seq_len "
                     f"({4 * p} > {n}); fix: task.num_kv_pairs={max(1, n // 4)} or task.seq_len={4 * p}")
    if v <= n:
        found.append(f"task.vocab_size={v} must be above task.seq_len={n} (Zoology's rule: more tokens than "
                     f"positions); fix: task.vocab_size={max(n + 1, 8192)}")
    if p >= 1 and (v // 2 - 1 < p or v - v // 2 < p):
        found.append(f"task.vocab_size={v} is too small for {p} distinct keys (drawn from [1, {v // 2}): "
                     f"{v // 2 - 1} tokens) and {p} distinct values (from [{v // 2}, {v}): {v - v // 2} tokens); "
                     f"fix: task.vocab_size={max(2 * p + 2, n + 1)} or more")
    if not float(power_a) > 0:
        found.append(f"task.power_a={power_a} must be > 0: it is the exponent of the query-gap power law "
                     f"P(gap) ~ gap^(power_a - 1); fix: task.power_a=0.01")
    return found


def check_config(cfg) -> None:
    """Fail fast (before generating) with every broken constraint of the settings (ValueError)."""
    found = problems(cfg.seq_len, cfg.num_kv_pairs, cfg.vocab_size, cfg.power_a)
    if found:
        raise ValueError("MQAR cannot be generated at these settings: " + "; ".join(found))


def distinct_draws(rng: np.random.Generator, n: int, count: int, low: int, high: int) -> np.ndarray:
    """``(n, count)`` int64 draws from ``[low, high)``, no value twice within a row (uniform over
    such rows): rows with a repeat are drawn again; a permutation prefix when ``count`` is a large
    share of the range."""
    width = high - low
    if count * 4 > width:
        return rng.random((n, width)).argsort(axis=1)[:, :count] + low
    out = rng.integers(low, high, (n, count))
    while True:
        ordered = np.sort(out, axis=1)
        repeat = (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)
        if not repeat.any():
            return out
        out[repeat] = rng.integers(low, high, (int(repeat.sum()), count))


def query_gaps(rng: np.random.Generator, n: int, count: int, space: int, power_a: float) -> np.ndarray:
    """``(n, count)`` distinct gaps from ``0 .. space - 1`` per row, drawn one after another without
    replacement with weights ``(g + 1)^(power_a - 1)`` (as ``numpy.random.choice(space, count,
    replace=False, p=...)``, Zoology's draw), vectorised by Efraimidis & Spirakis's keys: the
    ``count`` largest ``log(u) / w``. Returned in random order."""
    weights = np.arange(1, space + 1, dtype=np.float64) ** (float(power_a) - 1.0)
    with np.errstate(divide="ignore"):  # u = 0 (probability 2^-53) gives -inf: never chosen first
        keys = np.log(rng.random((n, space))) / weights
    top = np.argpartition(-keys, count - 1, axis=1)[:, :count]
    return rng.permuted(top, axis=1)


def random_fill(rng: np.random.Generator, shape: tuple[int, int], vocab_size: int,
                excluded: np.ndarray) -> np.ndarray:
    """``shape`` uniform tokens from ``[0, vocab_size)`` without row ``i``'s ``excluded[i]`` tokens
    (rejection: excluded draws are drawn again)."""
    n, length = shape
    offset = (np.arange(n, dtype=np.int64) * vocab_size)[:, None]
    banned = (np.sort(excluded, axis=1) + offset).ravel()  # sorted: rows in order, each sorted
    out = rng.integers(0, vocab_size, shape)
    while True:
        flat = out + offset
        hit = banned[np.minimum(np.searchsorted(banned, flat), len(banned) - 1)] == flat
        if not hit.any():
            return out
        out[hit] = rng.integers(0, vocab_size, int(hit.sum()))


def generate(n: int, seq_len: int, num_kv_pairs: int, vocab_size: int, power_a: float = 0.01,
             random_non_queries: bool = True, seed: int | list[int] = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` MQAR examples (see the module docstring): ``(inputs, labels)``, both ``(n, seq_len)``,
    int16 (int32 for a vocabulary above 32,767); ``seed``: anything ``numpy.random.default_rng``
    takes. Raises ValueError for settings that break a constraint (:func:`problems`)."""
    found = problems(seq_len, num_kv_pairs, vocab_size, power_a)
    if found:
        raise ValueError("; ".join(found))
    rng = np.random.default_rng(seed)
    p, context = num_kv_pairs, 2 * num_kv_pairs
    keys = distinct_draws(rng, n, p, 1, vocab_size // 2)
    values = distinct_draws(rng, n, p, vocab_size // 2, vocab_size)
    query_at = context + 2 * query_gaps(rng, n, p, (seq_len - context) // 2, power_a)
    inputs = np.zeros((n, seq_len), dtype=np.int64)
    if random_non_queries:
        inputs[:, context:] = random_fill(rng, (n, seq_len - context), vocab_size,
                                          np.concatenate([keys, values], axis=1))
    inputs[:, 0:context:2], inputs[:, 1:context:2] = keys, values
    np.put_along_axis(inputs, query_at, keys, axis=1)
    labels = np.full((n, seq_len), IGNORE, dtype=np.int64)
    np.put_along_axis(labels, query_at, values, axis=1)
    dtype = np.int16 if vocab_size <= np.iinfo(np.int16).max else np.int32
    return torch.from_numpy(inputs.astype(dtype)), torch.from_numpy(labels.astype(dtype))


def prepare(cfg) -> TaskData:
    """The three splits at ``cfg``'s settings (generated once, then read from the cache)."""
    check_config(cfg)
    settings = {"seq_len": int(cfg.seq_len), "num_kv_pairs": int(cfg.num_kv_pairs), "vocab_size": int(cfg.vocab_size),
                "power_a": float(cfg.power_a), "random_non_queries": bool(cfg.random_non_queries)}
    sizes = {s: int(cfg[f"num_{s}"]) for s in SPLITS}
    seed = int(cfg.get("data_seed") or 0)
    key = {"task": "mqar", "version": GENERATOR_VERSION, **settings, "sizes": sizes, "seed": seed}

    def build():
        out = {}
        for index, split in enumerate(SPLITS):
            out[f"{split}_x"], out[f"{split}_y"] = generate(sizes[split], **settings, seed=[seed, index])
        return out

    tensors = cached_tensors(cfg.get("cache_dir") or default_cache_dir(), "mqar", key, build)
    splits = {s: (tensors[f"{s}_x"], tensors[f"{s}_y"]) for s in SPLITS}
    return TaskData("mqar", splits, vocab_size=settings["vocab_size"], num_classes=settings["vocab_size"],
                    seq_len=settings["seq_len"], pad_id=None, target="token",
                    meta={"num_kv_pairs": settings["num_kv_pairs"], "power_a": settings["power_a"],
                          "random_non_queries": settings["random_non_queries"], "generator_version": GENERATOR_VERSION})
