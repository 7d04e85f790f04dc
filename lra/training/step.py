"""One optimizer step of supervised training, and evaluation over a split.

:class:`TrainStep` is the body of the fine-tuning loop (:func:`lra.training.finetune.train`) and
what ``lra-bench``'s ``train_overhead`` mode times, so the benchmark cannot drift from the real
loop; :func:`evaluate` gives a split's accuracy and mean loss.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..compiled import CompiledModel
from ..data import DeviceBatches
from ..model import Encoder
from ..timing import is_oom
from .state import rng_state, set_rng_state


class TrainStep:
    """The body of the training loop: :func:`lra.training.finetune.train` runs it, and so does
    ``lra-bench``'s ``train_overhead`` mode, so that what the benchmark times cannot drift from the
    real loop.

    ``ts(step)`` runs one optimizer step: the batch of ``step`` from ``batches``
    (:meth:`lra.data.DeviceBatches.batch`), the forward pass of ``step_fn`` under autocast
    (``amp``: dtype or None), cross-entropy in fp32, backward, gradient-norm clipping
    (``grad_clip``; 0/None = off; ``aux_loss()``, if given, is added to the loss before it),
    optimizer and scheduler steps, and the on-device bookkeeping
    (first step with a non-finite loss, running loss and accuracy sums) -- no host sync.
    :meth:`boundary` is the loop's only host sync, once per ``log_every`` steps.

    ``step_fn`` may be a :class:`lra.compiled.CompiledModel`: when its compiled forward or
    backward raises, the step is redone eagerly from the random state it started with (the
    gradients cleared; nothing else has changed yet), and the run goes on eagerly.

    ``outputs(step_fn, x, mask, y) -> (logits, targets)`` (default: ``(step_fn(x, mask), y)``, one
    class per example) is what the loss compares: token-level tasks pass
    :func:`lra.training.token_task.outputs` (logits at the labelled positions only), and the running
    accuracy is then over those positions.
    """

    def __init__(self, model: torch.nn.Module, step_fn, opt, sched, batches: DeviceBatches,
                 amp: torch.dtype | None, grad_clip: float | None, aux_loss: Callable[[], torch.Tensor] | None = None,
                 outputs: Callable | None = None):
        self.model, self.step_fn, self.opt, self.sched, self.batches = model, step_fn, opt, sched, batches
        self.outputs = outputs or (lambda step_fn, x, mask, y: (step_fn(x, mask), y))
        self.amp, self.grad_clip = amp, grad_clip
        self.aux_loss = aux_loss  # added to the task loss after the forward (attention distillation)
        self.device = batches.labels.device
        self.bad_step = torch.full((), -1, dtype=torch.long, device=self.device)
        self.loss_sum = torch.zeros((), device=self.device)
        self.correct_sum = torch.zeros((), device=self.device)
        self.seen, self.batches_seen = 0, 0

    def _forward_backward(self, x, mask, y):
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            logits, y = self.outputs(self.step_fn, x, mask, y)
        loss = F.cross_entropy(logits.float(), y)
        total = loss if self.aux_loss is None else loss + self.aux_loss()
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        return logits, y, loss, total

    def __call__(self, step: int) -> None:
        device = self.device
        x, mask, y = self.batches.batch(step)
        if isinstance(self.step_fn, CompiledModel) and self.step_fn.active:
            rng = rng_state(device)
            try:
                logits, y, loss, total = self._forward_backward(x, mask, y)
            except Exception as err:  # noqa: BLE001 - any failure of the compiled code: redo eagerly
                if is_oom(err):
                    raise
                self.step_fn.fall_back(err)
                set_rng_state(rng, device)
                logits, y, loss, total = self._forward_backward(x, mask, y)
        else:
            logits, y, loss, total = self._forward_backward(x, mask, y)
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.opt.step()
        self.sched.step()
        self.bad_step = torch.where((self.bad_step < 0) & ~torch.isfinite(total.detach()),
                                    torch.tensor(step, device=device), self.bad_step)
        self.loss_sum += loss.detach()
        self.correct_sum += (logits.detach().argmax(-1) == y).sum()
        self.seen += len(y)
        self.batches_seen += 1

    def boundary(self) -> tuple[int, tuple[float, float] | None]:
        """(first step with a non-finite loss or -1, (mean loss, accuracy) since the last
        boundary, or None when a loss was non-finite); resets the running sums."""
        bad, loss_sum, correct = torch.stack([self.bad_step.float(), self.loss_sum, self.correct_sum.float()]
                                             ).tolist()  # the one host sync
        first_bad = int(bad)
        if first_bad >= 0:
            return first_bad, None
        window = (loss_sum / max(1, self.batches_seen), correct / max(1, self.seen))
        self.loss_sum.zero_(), self.correct_sum.zero_()
        self.seen = self.batches_seen = 0
        return first_bad, window


@torch.no_grad()
def evaluate(model: Encoder, batches: DeviceBatches, amp: torch.dtype | None, max_batches: int | None = None):
    """(accuracy, mean loss) over a split (its first ``max_batches`` batches' examples when set;
    length-bucketed when ``batches`` is); eager; accumulates on device, one sync at the end."""
    model.eval()
    device = batches.labels.device
    correct = torch.zeros((), device=device)
    loss_sum = torch.zeros((), device=device)
    count = 0
    for x, mask, y in batches.iterate(max_batches):
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = model(x, mask)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(-1) == y).sum()
        count += len(y)
    model.train()
    return (correct / count).item(), (loss_sum / count).item()
