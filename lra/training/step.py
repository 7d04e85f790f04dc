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

    ``ts(step)`` runs one optimizer step over ``accumulate`` (k) micro-batches: batches ``step * k``
    to ``step * k + k - 1`` of ``batches`` (:meth:`lra.data.DeviceBatches.batch`), each one's forward
    pass of ``step_fn`` under autocast (``amp``: dtype or None), cross-entropy in fp32 (plus
    ``aux_loss()``, if given: attention distillation) and backward of its summed loss, the accumulated
    gradient then divided by the step's target count (examples; labelled positions for token tasks),
    so that it is the gradient of the mean over all the step's real targets, whatever each
    micro-batch's size or padded length (:meth:`_forward_backward`); then
    gradient-norm clipping (``grad_clip``; 0/None = off), one optimizer and one scheduler step, and
    the on-device bookkeeping (first step with a non-finite loss, running loss and accuracy sums) --
    no host sync. With k = 1 it is the plain step (the mean loss, no division). Memory: one
    micro-batch's activations at a time; the effective batch is ``batch_size * k``.
    :meth:`boundary` is the loop's only host sync, once per ``log_every`` steps.

    ``step_fn`` may be a :class:`lra.compiled.CompiledModel`: when its compiled forward or
    backward raises, the whole step is redone eagerly from the random state it started with (the
    gradients cleared; nothing else has changed yet), and the run goes on eagerly.

    ``outputs(step_fn, x, mask, y) -> (logits, targets)`` (default: ``(step_fn(x, mask), y)``, one
    class per example) is what the loss compares: token-level tasks pass
    :func:`lra.training.token_task.outputs` (logits at the labelled positions only), and the running
    accuracy is then over those positions.
    """

    def __init__(self, model: torch.nn.Module, step_fn, opt, sched, batches: DeviceBatches,
                 amp: torch.dtype | None, grad_clip: float | None, aux_loss: Callable[[], torch.Tensor] | None = None,
                 outputs: Callable | None = None, accumulate: int = 1):
        if int(accumulate) < 1:
            raise ValueError(f"accumulate={accumulate!r}: micro-batches per optimizer step must be >= 1")
        self.model, self.step_fn, self.opt, self.sched, self.batches = model, step_fn, opt, sched, batches
        self.outputs = outputs or (lambda step_fn, x, mask, y: (step_fn(x, mask), y))
        self.amp, self.grad_clip, self.accumulate = amp, grad_clip, int(accumulate)
        self.aux_loss = aux_loss  # added to the task loss after the forward (attention distillation)
        self.device = batches.labels.device
        self.bad_step = torch.full((), -1, dtype=torch.long, device=self.device)
        self.loss_sum = torch.zeros((), device=self.device)
        self.correct_sum = torch.zeros((), device=self.device)
        self.seen, self.steps_seen, self.positions = 0, 0, 0
        #: positions (padding included) the optimizer steps of the last closed window computed
        self.window_positions = 0

    def micro_batches(self, step: int) -> list:
        """The ``(x, mask, y)`` micro-batches of optimizer step ``step``."""
        k = self.accumulate
        return [self.batches.batch(step * k + j) for j in range(k)]

    def _forward_backward(self, micro: list):
        """Forward and backward of each micro-batch (gradients accumulate); returns the step's
        (mean task loss over its targets, right answers, targets, whether every loss was finite), on
        device. One micro-batch: the plain mean loss. Several: each one's summed loss (plus its
        ``aux_loss()`` times its target count) is backpropagated and the accumulated gradients are
        divided by the step's target count, so the gradient is that of the mean over every target of
        the step whatever each micro-batch's size, padding or number of labelled positions."""
        self.opt.zero_grad(set_to_none=True)
        single = len(micro) == 1
        loss_sum = correct = finite = None
        n_total = 0
        for x, mask, y in micro:
            with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
                logits, y = self.outputs(self.step_fn, x, mask, y)
            n = len(y)
            # fp32 at least (autocast's bf16/fp16 logits up, a float64 model's kept: the equivalence tests)
            logits = logits if logits.dtype == torch.float64 else logits.float()
            loss = F.cross_entropy(logits, y, reduction="mean" if single else "sum")
            if self.aux_loss is None:
                total = loss
            else:
                total = loss + (self.aux_loss() if single else self.aux_loss() * n)
            total.backward()
            hits = (logits.detach().argmax(-1) == y).sum()  # read now: a CUDA-graph output is overwritten next call
            ok = torch.isfinite(total.detach())
            loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
            correct = hits if correct is None else correct + hits
            finite = ok if finite is None else finite & ok
            n_total += n
        if not single:
            for p in self.model.parameters():
                if p.grad is not None:
                    p.grad.div_(max(1, n_total))
            loss_sum = loss_sum / max(1, n_total)
        return loss_sum, correct, n_total, finite

    def __call__(self, step: int) -> None:
        device = self.device
        micro = self.micro_batches(step)
        if isinstance(self.step_fn, CompiledModel) and self.step_fn.active:
            rng = rng_state(device)
            try:
                loss, correct, n, finite = self._forward_backward(micro)
            except Exception as err:  # noqa: BLE001 - any failure of the compiled code: redo eagerly
                if is_oom(err):
                    raise
                self.step_fn.fall_back(err)
                set_rng_state(rng, device)
                loss, correct, n, finite = self._forward_backward(micro)
        else:
            loss, correct, n, finite = self._forward_backward(micro)
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.opt.step()
        self.sched.step()
        self.bad_step = torch.where((self.bad_step < 0) & ~finite, torch.tensor(step, device=device), self.bad_step)
        self.loss_sum += loss
        self.correct_sum += correct
        self.seen += n
        self.steps_seen += 1
        self.positions += sum(x.numel() for x, _, _ in micro)

    def window_state(self) -> dict:
        """The running sums since the last boundary (for the checkpoint: a resumed run closes the same
        windows as an uninterrupted one)."""
        return {"bad_step": self.bad_step.clone(), "loss_sum": self.loss_sum.clone(),
                "correct_sum": self.correct_sum.clone(), "seen": self.seen, "steps_seen": self.steps_seen,
                "positions": self.positions}

    def load_window_state(self, state: dict | None) -> None:
        """Restore :meth:`window_state` (None: nothing saved, a checkpoint of an earlier version)."""
        if not state:
            return
        for key in ("bad_step", "loss_sum", "correct_sum"):
            getattr(self, key).copy_(state[key])
        self.seen, self.steps_seen, self.positions = state["seen"], state["steps_seen"], state["positions"]

    def boundary(self) -> tuple[int, tuple[float, float] | None]:
        """(first step with a non-finite loss or -1, (mean loss, accuracy) since the last
        boundary, or None when a loss was non-finite); resets the running sums (and sets
        :attr:`window_positions`)."""
        bad, loss_sum, correct = torch.stack([self.bad_step.float(), self.loss_sum, self.correct_sum.float()]
                                             ).tolist()  # the one host sync
        first_bad = int(bad)
        if first_bad >= 0:
            return first_bad, None
        # the mean over optimizer steps of each step's mean loss over its targets
        window = (loss_sum / max(1, self.steps_seen), correct / max(1, self.seen))
        self.loss_sum.zero_(), self.correct_sum.zero_()
        self.window_positions = self.positions
        self.seen = self.steps_seen = self.positions = 0
        return first_bad, window


def evaluated_count(batches: DeviceBatches, max_batches: int | None = None) -> int:
    """How many examples :func:`evaluate` reads from ``batches`` with ``max_batches``."""
    n = len(batches.labels)
    return n if max_batches is None else min(n, int(max_batches) * batches.batch_size)


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
