"""Length bucketing: batches of examples of similar length, each padded to one of a few lengths.

Tasks store every example right-padded to ``seq_len`` (ListOps: 500-2,000 real tokens padded to
2,000). With ``trainer.bucketing`` a batch is cut to the length of its longest example, rounded
up to a multiple of ``multiple`` (default 128, so that compiled and CUDA-graph shapes stay few;
capped at ``seq_len``), and batches are formed from examples of similar length:

* **training**, epoch ``e`` (:func:`train_plan`): the epoch's permutation is the one unbucketed
  training uses (``randperm(n)`` from a generator seeded with ``(seed, e)``) and so are the
  epoch's examples (the first ``steps * batch_size`` of it; the rest is dropped as before). Those
  are cut into windows of ``window`` batches; each window is sorted by padded length (stable),
  cut into batches, and the batch order of the whole epoch is shuffled with the same generator.
  A pure function of ``(seed, e)``: a run resumed mid-epoch sees the batches an uninterrupted run
  sees. When every batch of the epoch pads to one length, nothing is reordered: the batches are
  exactly the unbucketed ones.
* **evaluation** (:func:`eval_plan`): the split's examples (the first ``limit``, as unbucketed
  evaluation with a batch cap reads them) sorted by length, batches in that order; every example
  is used once, so accuracy and mean loss are those of the unbucketed evaluation up to
  floating-point summation order.

Which runs bucket (:func:`choose`): ``trainer.bucketing=auto`` (the task configs' default for
token tasks) turns it on only where the trailing padding cannot change what the model computes
for the real tokens -- variants whose output on real queries does not depend on how many padded
keys follow (:data:`PADDING_INVARIANT`; ``tests/training/test_bucketing.py`` checks the list against every
registered variant) and pooling that ignores padded positions. Pixel tasks have no padding.

Costs: :func:`example_lengths` reads the split once (O(n L), in chunks); a plan is O(n log n)
per epoch on the CPU; nothing of it syncs the training device.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

#: Variants whose output for real queries is the same whatever number of padded keys follows the
#: real tokens (masked keys are excluded exactly, and nothing else depends on the padded length).
#: Not in it: ``nystrom`` (landmarks are means over N/m-token segments of the padded sequence),
#: ``reformer`` (its number of hash buckets and chunks follows the padded length), ``bigbird`` (its
#: last global block and the folding of its random blocks follow the padded length). A third-party
#: variant joins by a class attribute ``padding_invariant = True``.
PADDING_INVARIANT = frozenset({"full", "flash", "local", "linear", "performer", "random_feature", "linformer",
                               "hedgehog", "taylor"})

#: why a variant's output depends on the padded length (for :func:`choose`'s reason)
LENGTH_DEPENDENT = {
    "nystrom": "its landmarks are means over N/landmarks-token segments of the padded sequence",
    "reformer": "its number of hash buckets and chunks follows the padded length",
    "bigbird": "its last global block and the folding of its random blocks follow the padded length",
}

SETTINGS = ("auto", True, False)
DEFAULT_MULTIPLE = 128
DEFAULT_WINDOW = 64


def _generator(seed: int, epoch: int) -> torch.Generator:
    """The epoch's generator: the same seeding unbucketed batching has always used."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def example_lengths(inputs: torch.Tensor, pad_id: int, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lengths, real)`` of ``inputs (n, L)`` or ``(n, 2, L)`` (dual), both ``(n,)`` int64 on the CPU.

    ``lengths``: one past the last non-``pad_id`` token (the length an example can be cut to
    without losing a real token; for dual inputs the larger of the two documents'), 0 for an
    all-padding example. ``real``: the number of non-``pad_id`` tokens (both documents).
    Reads ``chunk`` examples at a time, so memory stays O(chunk L).
    """
    n, width = inputs.shape[0], inputs.shape[-1]
    lengths = torch.empty(n, dtype=torch.int64)
    real = torch.empty(n, dtype=torch.int64)
    positions = torch.arange(1, width + 1, dtype=torch.int32, device=inputs.device)
    for lo in range(0, n, chunk):
        nonpad = inputs[lo:lo + chunk] != pad_id                     # (c, L) or (c, 2, L)
        last = (nonpad * positions).amax(dim=-1)                     # 1 + index of the last real token, 0 if none
        if last.dim() == 2:
            last = last.amax(dim=-1)
            count = nonpad.sum(dim=(-2, -1))
        else:
            count = nonpad.sum(dim=-1)
        lengths[lo:lo + chunk] = last.cpu().to(torch.int64)
        real[lo:lo + chunk] = count.cpu().to(torch.int64)
    return lengths, real


def padded_length(length: torch.Tensor | int, multiple: int, seq_len: int) -> torch.Tensor | int:
    """``length`` rounded up to a multiple of ``multiple``, at most ``seq_len``, at least ``min(multiple, seq_len)``."""
    if isinstance(length, int):
        return min(seq_len, max(1, -(-length // multiple)) * multiple)
    return (((length + multiple - 1) // multiple).clamp(min=1) * multiple).clamp(max=seq_len)


@dataclass
class Plan:
    """Batches of one epoch (or one evaluation pass): ``index[i]`` the examples of batch ``i``
    (a ``(steps, B)`` tensor for training, a list of 1-D tensors for evaluation, whose last batch
    may be smaller) and ``lengths[i]`` the length batch ``i`` is cut to."""

    index: torch.Tensor | list[torch.Tensor]
    lengths: list[int] = field(default_factory=list)


def train_plan(n: int, batch_size: int, seed: int, epoch: int, *, lengths: torch.Tensor | None = None,
               multiple: int = DEFAULT_MULTIPLE, window: int = DEFAULT_WINDOW, seq_len: int | None = None) -> Plan:
    """The training batches of ``epoch`` (see the module docstring); unbucketed when ``lengths`` is None.

    ``lengths``: ``(n,)`` per-example lengths (:func:`example_lengths`); ``window``: batches per
    sorting window; ``seq_len``: the stored length (the cap of every padded length).
    Returns ``index (n // batch_size, batch_size)`` int64 and the per-batch lengths.
    """
    steps = n // batch_size
    g = _generator(seed, epoch)
    perm = torch.randperm(n, generator=g)[: steps * batch_size]
    if lengths is None:
        return Plan(perm.view(steps, batch_size), [int(seq_len or 0)] * steps)
    if seq_len is None:
        raise ValueError("train_plan: seq_len is needed with lengths")
    bucket = padded_length(lengths[perm], multiple, seq_len)
    window_id = torch.arange(len(perm)) // (max(1, window) * batch_size)
    order = torch.sort(window_id * (seq_len + 1) + bucket, stable=True).indices
    index = perm[order].view(steps, batch_size)
    batch_lengths = padded_length(lengths[index].amax(dim=1), multiple, seq_len)
    if (batch_lengths == batch_lengths[0]).all():  # one length: the unbucketed batches, cut to it
        return Plan(perm.view(steps, batch_size), batch_lengths.tolist())
    shuffle = torch.randperm(steps, generator=g)
    return Plan(index[shuffle], batch_lengths[shuffle].tolist())


def eval_plan(n: int, batch_size: int, *, lengths: torch.Tensor, seq_len: int, multiple: int = DEFAULT_MULTIPLE,
              limit: int | None = None) -> Plan:
    """Bucketed evaluation batches over the first ``limit`` examples (all when None): sorted by length
    and cut to each batch's padded length (unbucketed splits are read in stored order by
    :meth:`lra.data.DeviceBatches.iterate`)."""
    count = n if limit is None else min(n, limit)
    order = torch.sort(lengths[:count], stable=True).indices
    index = list(order.split(batch_size))
    return Plan(index, [padded_length(int(lengths[i].max()), multiple, seq_len) for i in index])


def choose(setting, *, pad_id: int | None, variant: str, attention_module=None, pooling: str = "cls",
           pool_masked: str = "exclude", cls_last: bool = False) -> tuple[bool, str]:
    """Whether a run buckets, and why (the record and the log say it).

    ``setting``: ``trainer.bucketing`` (``auto`` | true | false). ``pad_id`` None (a pixel task):
    every example has the task's length, never bucketed. ``auto``: on unless the padded length
    changes what the model computes for the real tokens: a variant outside
    :data:`PADDING_INVARIANT` (see :data:`LENGTH_DEPENDENT`), mean pooling over every position
    (``pool_masked=include``), or a CLS token placed after the padding (``cls_last``: causal
    attention). ``true`` buckets even then, and the reason says what it changes.
    """
    if setting not in SETTINGS:
        raise ValueError(f"trainer.bucketing={setting!r} is not one of auto, true, false")
    if pad_id is None:
        return False, "off: every example of this task has the same length (no padding)"
    if setting is False:
        return False, "off: trainer.bucketing=false"
    changes = []
    invariant = getattr(type(attention_module), "padding_invariant", None) if attention_module is not None else None
    if not (variant in PADDING_INVARIANT or invariant is True):
        changes.append(f"attention={variant}: " + LENGTH_DEPENDENT.get(
            variant, "not known to be independent of the padded length (a variant declares it with "
                     "padding_invariant = True)"))
    if pooling == "mean" and pool_masked == "include":
        changes.append("mean pooling over every position (model.pool_masked=include) counts the padded ones")
    if pooling == "cls" and cls_last:
        changes.append("the CLS token goes after the padding (causal attention), at a position that follows "
                       "the padded length")
    if setting is True:
        return True, "on: trainer.bucketing=true" + (f" (it changes what the model computes: {'; '.join(changes)})"
                                                     if changes else "")
    if changes:
        return False, "off (auto): the padded length would change what the model computes: " + "; ".join(changes)
    return True, "on (auto): the padded length does not change what this model computes for the real tokens"


def epoch_padding(lengths: torch.Tensor, real: torch.Tensor, batch_size: int, seq_len: int, *, seed: int = 0,
                  epoch: int = 0, multiple: int = DEFAULT_MULTIPLE, window: int = DEFAULT_WINDOW,
                  positions_per_token: int = 1) -> dict[str, float]:
    """Padded-token fractions of one training epoch, unbucketed and bucketed (the same examples).

    ``positions_per_token``: 2 for dual inputs (two documents per example, each padded alike).
    Returns ``{"padded_fraction", "padded_fraction_bucketed", "tokens_per_step",
    "tokens_per_step_bucketed", "shapes_bucketed"}`` (tokens = positions the model computes).
    """
    n = len(lengths)
    plain = train_plan(n, batch_size, seed, epoch, seq_len=seq_len)
    bucketed = train_plan(n, batch_size, seed, epoch, lengths=lengths, multiple=multiple, window=window,
                          seq_len=seq_len)
    used = int(real[plain.index].sum())
    steps = plain.index.shape[0]
    pos_plain = steps * batch_size * seq_len * positions_per_token
    pos_bucketed = batch_size * sum(bucketed.lengths) * positions_per_token
    return {"padded_fraction": 1 - used / pos_plain, "padded_fraction_bucketed": 1 - used / pos_bucketed,
            "tokens_per_step": pos_plain / steps, "tokens_per_step_bucketed": pos_bucketed / steps,
            "shapes_bucketed": len(set(bucketed.lengths))}
