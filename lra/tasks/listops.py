"""ListOps (Nangia & Bowman 2018) as used by the Long Range Arena (Tay et al. 2020).

Expressions over the digits 0-9 with the operators MAX, MIN, MED (median, truncated to an
integer) and SM (sum modulo 10), nested up to depth 10 with 2-10 arguments per operator;
the label (10 classes) is the expression's value. LRA keeps expressions of 500-2,000 tokens
and uses 96,000 / 2,000 / 2,000 train/val/test examples.

Generation follows the LRA generator (``lra_benchmarks/data/listops.py``): below the
maximum depth a node is a digit with probability 0.75, else an operator with
``randint(2, max_args)`` children; trees are drawn until their token count lies strictly
between ``min_length`` and ``max_length``, duplicates dropped. Labels are computed by
evaluating the tree.

Tokenization follows the current LRA input pipeline: in the release's text form
``( ( [MAX 2 ) 9 ] )`` the parentheses are dropped, ``]`` is its own token and whitespace
splits tokens, so an expression is the token sequence ``[MAX 2 9 ]``. Id 0 is padding.
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import random
import statistics
import sys
from pathlib import Path

import pandas as pd
import torch

from ..data import cached_tensors, default_cache_dir, source_fingerprint, subsample
from ..progress import progress as progress_bar
from . import DataNotFoundError, TaskData

OPERATORS = ("[MAX", "[MIN", "[MED", "[SM")
END = "]"
PAD, UNK = "<pad>", "<unk>"
VOCAB = (PAD, UNK, *OPERATORS, END, *map(str, range(10)))
TOKEN_ID = {tok: i for i, tok in enumerate(VOCAB)}
VALUE_P = 0.25  # probability of an operator node below the maximum depth (LRA generator)
SPLIT_FILES = {"train": "basic_train.tsv", "val": "basic_val.tsv", "test": "basic_test.tsv"}


def evaluate(op: str, args: list[int]) -> int:
    """Value of one operator applied to digit arguments."""
    if op == "[MAX":
        return max(args)
    if op == "[MIN":
        return min(args)
    if op == "[MED":
        return int(statistics.median(args))
    if op == "[SM":
        return sum(args) % 10
    raise ValueError(f"unknown ListOps operator {op!r}; operators: {OPERATORS}")


class _TooLong(Exception):
    pass


def generate_tree(rng: random.Random, depth: int = 1, max_depth: int = 10, max_args: int = 10,
                  max_tokens: int | None = None):
    """One random expression: returns (tokens list, value).

    With ``max_tokens``, generation stops early (raising ``_TooLong``) once the expression
    cannot fit: such trees would be rejected anyway, and building them dominates the cost.
    """
    tokens: list[str] = []

    def node(depth: int) -> int:
        if max_tokens is not None and len(tokens) >= max_tokens:
            raise _TooLong
        if depth < max_depth and rng.random() <= VALUE_P:
            op = rng.choice(OPERATORS)
            tokens.append(op)
            values = [node(depth + 1) for _ in range(rng.randint(2, max_args))]
            tokens.append(END)
            return evaluate(op, values)
        value = rng.randrange(10)
        tokens.append(str(value))
        return value

    value = node(depth)
    return tokens, value


def tokenize(source: str) -> list[str]:
    """The LRA tokenization of a release-format expression (parentheses dropped)."""
    return source.replace("(", " ").replace(")", " ").split()


def parse_and_evaluate(tokens: list[str]) -> int:
    """Evaluate a token sequence like ``[MAX 2 [SM 3 4 ] 9 ]``."""
    stack: list[list] = []
    result = None
    for tok in tokens:
        if tok in OPERATORS:
            stack.append([tok])
        elif tok == END:
            op, *args = stack.pop()
            value = evaluate(op, args)
            if stack:
                stack[-1].append(value)
            else:
                result = value
        elif tok.isdigit():
            if stack:
                stack[-1].append(int(tok))
            else:
                result = int(tok)
        else:
            raise ValueError(f"unexpected ListOps token {tok!r}")
    if stack or result is None:
        raise ValueError("unbalanced ListOps expression")
    return result


def encode(tokens: list[str], seq_len: int) -> torch.Tensor:
    ids = [TOKEN_ID.get(t, TOKEN_ID[UNK]) for t in tokens[:seq_len]]
    out = torch.zeros(seq_len, dtype=torch.int8)
    out[: len(ids)] = torch.tensor(ids, dtype=torch.int8)
    return out


CHUNK = 1000  # expressions per generation chunk; chunk i draws from random.Random((seed, i))
# A chunk gives up when, after GIVE_UP_AFTER tries, fewer than 1 in MAX_TRIES_PER_EXPRESSION trees
# had an allowed length: the settings admit (almost) no expression. At the LRA settings about 1 in 12
# trees is kept, at seq_len 128 about 1 in 60.
GIVE_UP_AFTER = 20_000
MAX_TRIES_PER_EXPRESSION = 1000


class GenerationError(ValueError):
    """The generator settings cannot produce the requested number of distinct expressions."""


def _generate_chunk(args):
    """``n`` expressions of chunk ``index`` (fewer if the settings admit almost none; see GIVE_UP_AFTER)."""
    seed, index, n, min_length, max_length, max_depth, max_args = args
    rng = random.Random(f"{seed}-{index}")
    out = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries >= GIVE_UP_AFTER and tries > MAX_TRIES_PER_EXPRESSION * len(out):
            break
        try:
            tokens, value = generate_tree(rng, 1, max_depth, max_args, max_tokens=max_length)
        except _TooLong:
            continue
        if min_length < len(tokens) < max_length:
            out.append((tuple(tokens), value))
    return out


def count_expressions(min_length: int, max_length: int, max_depth: int = 10, max_args: int = 10,
                      cap: int | None = None) -> int:
    """How many distinct expressions the generator can draw with ``min_length < tokens <
    max_length`` (capped at ``cap``). Dynamic programming over (depth, length): a digit is 1
    token (10 of them); an operator node (4 kinds, below ``max_depth``) with k = 2..max_args
    children has 2 + the children's tokens. O(max_depth * max_args * max_length^2): call it for
    short lengths (it is what makes tiny ``seq_len`` values fail fast)."""
    top = max_length - 1
    if top < 1:
        return 0
    clip = (lambda x: min(x, cap)) if cap else (lambda x: x)
    below = None  # trees rooted one level deeper: below[L] = count with exactly L tokens
    for depth in range(max_depth, 0, -1):
        here = [0] * (top + 1)
        here[1] = 10
        if depth < max_depth:
            seq = below[:]          # sequences of k children, total length L; start with k = 1
            for k in range(2, max_args + 1):
                seq = [clip(sum(seq[a] * below[length - a] for a in range(1, length)))
                       for length in range(top + 1)]
                for length in range(top - 1):
                    here[length + 2] = clip(here[length + 2] + 4 * seq[length])
        below = here
    return clip(sum(below[min_length + 1:top + 1]))


def generate(n: int, seed: int, min_length: int, max_length: int, max_depth: int = 10, max_args: int = 10,
             progress: bool = True, workers: int | None = None):
    """``n`` distinct expressions with min_length < tokens < max_length: (inputs (n, max_length) int8, labels).

    Generated in chunks of ``CHUNK`` seeded by (seed, chunk index), in parallel over ``workers``
    processes (default: torch's intra-op thread count, i.e. this job's share of the cores), so
    the result depends on ``seed`` only. The progress bar moves as each chunk finishes (results
    are consumed as they arrive). Raises :class:`GenerationError` within seconds when the
    settings admit no, or too few distinct, expressions.
    """
    workers = workers or torch.get_num_threads()
    seen: set[tuple] = set()
    inputs = torch.zeros(n, max_length, dtype=torch.int8)
    labels = torch.zeros(n, dtype=torch.int64)
    index = 0
    what = (f"{n} distinct ListOps expressions with {min_length} < tokens < {max_length} (max_depth {max_depth}, "
            f"max_args {max_args})")
    with progress_bar(total=n, desc=f"ListOps: generating {n} expressions", disable=not progress, unit="ex") as bar:
        while len(seen) < n:
            missing = n - len(seen)
            jobs = [(seed, index + i, CHUNK, min_length, max_length, max_depth, max_args)
                    for i in range(-(-missing // CHUNK))]
            index += len(jobs)
            added = 0
            with _chunk_results(jobs, workers) as chunks:
                for chunk in chunks:  # lazily: each chunk as it finishes
                    if len(chunk) < CHUNK:
                        raise GenerationError(
                            f"cannot generate {what}: the generator keeps fewer than 1 in {MAX_TRIES_PER_EXPRESSION} "
                            "trees. Raise task.seq_len or task.max_depth, or lower task.min_length.")
                    before = len(seen)
                    for tokens, value in chunk:
                        if len(seen) == n:
                            break
                        if tokens in seen:
                            continue
                        inputs[len(seen)] = encode(list(tokens), max_length)
                        labels[len(seen)] = value
                        seen.add(tokens)
                    added += len(seen) - before
                    bar.update(len(seen) - before)
                    if len(seen) == n:
                        break
            if added == 0:
                raise GenerationError(f"cannot generate {what}: only {len(seen)} distinct ones turned up. "
                                      "Raise task.seq_len or lower task.num_train/num_val/num_test.")
    return inputs, labels


@contextlib.contextmanager
def _chunk_results(jobs: list, workers: int):
    """An iterator over the chunks of ``jobs`` in order, each as soon as it is done; worker
    processes (if any) are stopped when the block ends, also on errors."""
    if workers > 1 and len(jobs) > 1:
        ctx = mp.get_context("spawn" if sys.platform == "darwin" else "fork")
        with ctx.Pool(min(workers, len(jobs))) as pool:
            yield pool.imap(_generate_chunk, jobs)
    else:
        yield map(_generate_chunk, jobs)


def generation_limits(cfg) -> tuple[int, int]:
    """(min_length, max_length) of generated expressions for a task config."""
    seq_len = int(cfg.seq_len)
    return min(int(cfg.min_length), seq_len // 4), seq_len


def check_config(cfg) -> None:
    """Fail fast (before generating) when a generated ListOps cannot exist at these settings."""
    if cfg.get("source", "generate") != "generate":
        return
    min_length, max_length = generation_limits(cfg)
    n = sum(int(cfg[k]) for k in ("num_train", "num_val", "num_test"))
    if max_length > 64:  # longer expressions number far more than any data set; the generator still checks
        return
    available = count_expressions(min_length, max_length, int(cfg.max_depth), int(cfg.max_args), cap=n)
    if available < n:
        raise GenerationError(
            f"task.seq_len={max_length} is too short for ListOps: only {available} distinct expressions have "
            f"{min_length} < tokens < {max_length}, and num_train + num_val + num_test = {n} are asked for. "
            "Raise task.seq_len (e.g. task.seq_len=128) or ask for fewer examples.")


def read_tsv(path: Path, seq_len: int):
    """One split of the LRA release (``Source<TAB>Target`` with a header row)."""
    try:
        df = pd.read_csv(path, sep="\t", dtype={"Source": str}, keep_default_na=False)
    except Exception as err:
        raise DataNotFoundError(f"could not read ListOps file {path}: {err}") from err
    if list(df.columns[:2]) != ["Source", "Target"]:
        raise DataNotFoundError(f"{path} is not a ListOps release file: expected the header 'Source<TAB>Target', "
                                f"got {list(df.columns)}")
    try:
        labels = torch.tensor(pd.to_numeric(df["Target"], errors="raise").astype("int64").to_numpy())
    except (ValueError, TypeError) as err:
        raise DataNotFoundError(f"{path}: column Target must hold integers 0-9 ({err})") from err
    inputs = torch.stack([encode(tokenize(s), seq_len) for s in df["Source"]]) if len(df) else \
        torch.zeros(0, seq_len, dtype=torch.int8)
    return inputs, labels


def prepare(cfg) -> TaskData:
    seq_len = int(cfg.seq_len)
    cache_dir = cfg.get("cache_dir") or default_cache_dir()
    sizes = {"train": cfg.num_train, "val": cfg.num_val, "test": cfg.num_test}
    if cfg.source == "generate":
        min_length, _ = generation_limits(cfg)
        key = {"task": "listops", "source": "generate", "seed": cfg.data_seed, "sizes": sizes,
               "min_length": min_length, "max_length": seq_len, "max_depth": cfg.max_depth, "max_args": cfg.max_args}

        def build():
            x, y = generate(sum(sizes.values()), cfg.data_seed, min_length, seq_len, cfg.max_depth, cfg.max_args)
            out, start = {}, 0
            for split, n in sizes.items():
                out[f"{split}_x"], out[f"{split}_y"] = x[start:start + n], y[start:start + n]
                start += n
            return out

        tensors = cached_tensors(cache_dir, "listops", key, build)
    elif cfg.source == "tsv":
        data_dir = Path(str(cfg.data_dir or "")).expanduser()
        files = {s: data_dir / f for s, f in SPLIT_FILES.items()}
        missing = [str(p) for p in files.values() if not p.is_file()]
        if missing:
            raise DataNotFoundError(
                f"ListOps release files not found: {', '.join(missing)}. Expected the LRA release layout "
                f"(lra_release/listops-1000/basic_{{train,val,test}}.tsv) in task.data_dir={str(cfg.data_dir)!r}; "
                "or generate the data instead with task.source=generate (the default): lra-data prepare task=listops")
        key = {"task": "listops", "source": "tsv", "files": source_fingerprint(files.values()), "seq_len": seq_len}

        def build():
            out = {}
            for split, path in files.items():
                out[f"{split}_x"], out[f"{split}_y"] = read_tsv(path, seq_len)
            return out

        tensors = cached_tensors(cache_dir, "listops", key, build)
        tensors = dict(tensors)
        for split, n in sizes.items():
            tensors[f"{split}_x"], tensors[f"{split}_y"] = subsample(tensors[f"{split}_x"], tensors[f"{split}_y"], n)
    else:
        raise ValueError(f"task.source={cfg.source!r} is not one of 'generate', 'tsv'")
    splits = {s: (tensors[f"{s}_x"], tensors[f"{s}_y"]) for s in sizes}
    return TaskData("listops", splits, vocab_size=len(VOCAB), num_classes=10, seq_len=seq_len, pad_id=0)
