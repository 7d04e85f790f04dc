"""Token-level tasks (MQAR, text_lm): their model, loss, metrics and decoding state, kept apart from
the classification path that :mod:`lra.training.step` and :mod:`lra.training.finetune` run.

A token-level task (``TaskData.target == "token"``, :mod:`lra.tasks`) labels positions, not
examples: labels ``(B, N)`` hold the token each position must predict and
:data:`lra.tasks.IGNORE` where it predicts nothing (MQAR: the P query positions; text_lm: every
byte but the last and the padding).

* Model (:func:`predictor`): the common encoder with a token head (:class:`lra.model.TokenPredictor`);
  the encoder's classifier is dropped, since nothing is pooled or classified.
* Loss (:func:`outputs`, :class:`lra.training.step.TrainStep`'s ``outputs`` hook): the states at the
  K labelled positions of a batch are gathered before the head, so the logits are ``(K, V)``, never
  ``(B, N, V)``; cross-entropy over those K.
* Metrics (:func:`evaluate`): token accuracy over the labelled positions (for MQAR the query
  accuracy, Zoology's metric), the share of examples with every labelled position right, and the
  mean cross-entropy per labelled token in nats (``loss``) and in bits (``bits``: bits per byte for
  text_lm, whose tokens are bytes). :func:`record_metrics` names them as the task's module says
  (``RECORD_METRICS``) and adds what the task measured on its data (``TaskData.meta["metrics"]``).
* Decoding state (:func:`state_size`, recorded for every run): the bytes a decoder keeps per sequence
  at length N, each layer's ``decode_state_bytes`` summed (None with the reason where a variant has
  no fixed-size decoding state).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ..data import DeviceBatches
from ..model import Encoder, TokenPredictor
from .. import tasks
from ..tasks import IGNORE, TaskData


def predictor(encoder: Encoder) -> TokenPredictor:
    """The token-task model on ``encoder``; its classifier becomes ``Identity`` (a token task never
    classifies, and an unused ``(mlp_dim, vocab)`` layer would only count as parameters)."""
    encoder.head = torch.nn.Identity()
    return TokenPredictor(encoder)


def outputs(step_fn, x: torch.Tensor, mask: torch.Tensor | None, y: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits (K, V), targets (K,) int64)`` at the K labelled positions of a batch (``y != IGNORE``);
    ``step_fn`` is the :class:`~lra.model.TokenPredictor` (or what wraps it). O(B N) to find them, the
    head O(K d V)."""
    where = y != IGNORE
    return step_fn(x, mask, where), y[where].long()


@torch.no_grad()
def evaluate(model: TokenPredictor, batches: DeviceBatches, amp: torch.dtype | None,
             max_batches: int | None = None) -> dict[str, float]:
    """Scores over a split's labelled positions (its first ``max_batches`` batches' examples when set):
    ``accuracy`` (share of labelled positions whose most likely token is the label), ``all_correct``
    (share of examples with every labelled position right), ``loss`` (mean cross-entropy per labelled
    token, nats), ``bits`` (the same in bits) and ``tokens`` (labelled positions scored). Eager;
    accumulates on the device, one sync at the end."""
    model.eval()
    device = batches.labels.device
    loss_sum, correct, tokens, all_right = (torch.zeros((), device=device, dtype=torch.float64) for _ in range(4))
    examples = 0
    for x, mask, y in batches.iterate(max_batches):
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits, target = outputs(model, x, mask, y)
        hit = logits.argmax(-1) == target
        loss_sum += F.cross_entropy(logits.float(), target, reduction="sum")
        correct += hit.sum()
        tokens += target.numel()
        right = torch.ones(y.shape, dtype=torch.bool, device=device)
        right[y != IGNORE] = hit
        all_right += right.all(dim=-1).sum()
        examples += len(y)
    model.train()
    loss_sum, correct, tokens, all_right = torch.stack([loss_sum, correct, tokens, all_right]).tolist()
    loss = loss_sum / max(tokens, 1.0)
    return {"accuracy": correct / max(tokens, 1.0), "all_correct": all_right / max(examples, 1), "loss": loss,
            "bits": loss / math.log(2), "tokens": int(tokens)}


def record_metrics(data: TaskData, val: dict[str, float], test: dict[str, float]) -> dict[str, Any]:
    """The record's metrics of a token-level run from :func:`evaluate`'s scores of the validation and
    test splits: ``accuracy``/``loss`` (test) and ``val_accuracy``/``val_loss`` as every run has them,
    each number the task names (its module's ``RECORD_METRICS``: MQAR's ``{"accuracy":
    "query_accuracy", ...}`` gives ``query_accuracy`` and ``val_query_accuracy``), ``test_tokens``, and
    the task's own measurements of its data (``data.meta["metrics"]``, e.g. text_lm's unigram entropy)."""
    out: dict[str, Any] = {"val_accuracy": val["accuracy"], "val_loss": val["loss"],
                           "accuracy": test["accuracy"], "loss": test["loss"]}
    for measure, name in getattr(tasks.get(data.name), "RECORD_METRICS", {}).items():
        out[name], out[f"val_{name}"] = test[measure], val[measure]
    out["test_tokens"] = test["tokens"]
    out.update(data.meta.get("metrics", {}))
    return out


def state_size(encoder: Encoder, length: int, element_bytes: int) -> dict[str, Any]:
    """The decoding state of ``encoder`` per sequence at ``length`` tokens with ``element_bytes`` per
    number: ``{"bytes", "what", "per_layer", "length", "element_bytes"}``, where ``bytes`` sums each
    layer's ``decode_state_bytes`` (every layer keeps its own, tied weights or not), or is None with
    the first layer's reason where one has no fixed-size decoding state."""
    parts = [block.attn.attention.decode_state_bytes(length, element_bytes) for block in encoder.blocks]
    missing = [what for size, what in parts if size is None]
    total = None if missing else sum(size for size, _ in parts)
    what = missing[0] if missing else f"{parts[0][1]}; summed over {len(parts)} layers"
    return {"bytes": total, "what": what, "per_layer": [size for size, _ in parts], "length": int(length),
            "element_bytes": int(element_bytes)}
