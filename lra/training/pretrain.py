"""Self-pretraining (SPT): the encoder learns the task's inputs before it learns the labels.

Amos, Berant & Gupta 2024 ("Never Train from Scratch", ICLR 2024, arXiv:2310.02980) show that
training from a random initialisation, as the LRA protocol does, grossly underestimates some
architectures: pretraining the same model on the task's own training inputs with a denoising
objective, then fine-tuning it on the labels, moves a Transformer's LRA average from the 50s to the
level of S4. ``lra-train pretrain=mlm|causal`` runs both phases in one job; ``pretrain=none`` (the
default) is the LRA protocol. Settings and their sources: ``conf/pretrain/mlm.yaml``, resolved by
:func:`lra.training.config.pretrain_settings`; the fine-tuning loop
(:func:`lra.training.finetune.train`) calls :func:`phase` first.

The phase, as :func:`phase` runs it:

* **Inputs only, training split only.** :func:`pretraining_inputs` takes ``data.splits["train"]``'s
  inputs and drops its labels; the validation split's inputs (no labels) score checkpoints, the test
  split is never read. Dual-input tasks (Retrieval) pretrain on each document separately.
* **Objectives.** ``mlm``: each real position is masked with probability ``mask_rate``, i.i.d. per
  position and step (the SPT code's ``rand < p``), and replaced by the [MASK] token (an extra
  embedding row, :attr:`lra.model.EncoderConfig.mask_token`); the loss is the cross-entropy over the
  task's tokens (pixel tasks: the 256 intensities) at the masked positions only
  (:func:`mask_tokens`). ``causal``: every real position predicts the next real token
  (:func:`next_token_targets`); it needs causal attention.
* **Padding is never masked or predicted**: padding is what the encoder ignores, i.e. the pad id,
  and every zero token when ``model.mask_zero_tokens`` (the LRA recipe's black pixels).
* **Model.** :class:`lra.model.TokenPredictor`: the fine-tuning encoder itself plus a linear token
  head; the encoder's classifier takes no part (its weights stay as initialised).
* **Optimisation**: AdamW with the pretraining settings (``pretrain.lr``, ``schedule``, ``warmup``,
  ``weight_decay``, ``betas``, ``eps``, ``batch_size``, ``steps``) through
  :func:`lra.training.optim.make_optimizer`.
* **Checkpoint selection.** Every ``eval_every`` steps (and at step 0 and the end) the masked
  validation loss and accuracy are measured with fixed masks (the same masks at every evaluation);
  the best by ``select`` (``loss``: lowest; ``accuracy``: highest, the paper's App. C.1) is saved
  (``pretrain_best.pt``) and fine-tuning starts from it (:func:`load_encoder`).
* **Faults.** The phase checkpoints every ``checkpoint_every`` steps (``pretrain_checkpoint.pt``:
  model, optimizer, schedule, RNG state, history, best) and on SIGTERM/SIGUSR1/SIGUSR2 (then
  :class:`lra.training.state.Preempted`); running the job directory again resumes it and ends bit-identical to
  an uninterrupted run: batches and masks are pure functions of the step (seeded per step), dropout's
  RNG state is restored. Once fine-tuning has its own checkpoint the phase is not run again.

Cost per pretraining step: one encoder forward/backward plus the O(B N d V) token head.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..data import DeviceBatches
from ..model import Encoder, TokenPredictor
from ..progress import progress
from ..schema import ConfigError
from ..tasks import TaskData
from .optim import make_optimizer
from .state import LoopCheckpoint, PreemptionSignals, loop_failure, save_checkpoint

#: target value of positions without a loss (unmasked, padding, no next token)
IGNORE = -100
CHECKPOINT = "pretrain_checkpoint.pt"
BEST = "pretrain_best.pt"
#: the pretraining knobs the optimizer reads (lra.training.optim.make_optimizer)
OPTIMIZER_KEYS = ("lr", "steps", "warmup", "schedule", "weight_decay", "betas", "eps", "weight_decay_params")


# ----------------------------------------------------------------------------- data and targets

def pretraining_inputs(data: TaskData, split: str = "train") -> torch.Tensor:
    """The token sequences pretraining may see: the training split's inputs, ``(n, L)`` (a dual-input
    task's two documents as separate rows, ``(2n, L)``). Labels, validation and test are not read.
    ``split="val"``: the validation split's inputs (no labels), for checkpoint selection only."""
    inputs, _labels = data.splits[split]
    return inputs.flatten(0, 1) if data.dual else inputs


def real_positions(tokens: torch.Tensor, pad_mask: torch.Tensor | None, mask_zero_tokens: bool) -> torch.Tensor:
    """``(B, N)`` bool, True where the encoder sees a real token: not the pad id (``pad_mask``) and,
    with ``mask_zero_tokens``, not a zero token (the encoder treats those as padding too)."""
    real = torch.ones_like(tokens, dtype=torch.bool) if pad_mask is None else pad_mask
    return real & (tokens != 0) if mask_zero_tokens else real


def mask_tokens(tokens: torch.Tensor, real: torch.Tensor, rate: float, mask_id: int,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked modelling inputs and targets: each real position is masked with probability ``rate``
    (independently; padding never). Returns ``(inputs, targets)``, both ``(B, N)`` int64: inputs with
    the masked positions set to ``mask_id``; targets holding the original token at masked positions
    and :data:`IGNORE` elsewhere."""
    chosen = (torch.rand(tokens.shape, generator=generator, device=tokens.device) < rate) & real
    return tokens.masked_fill(chosen, mask_id), tokens.masked_fill(~chosen, IGNORE)


def next_token_targets(tokens: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """``(B, N)`` targets of next-token prediction: position i's is token i + 1 where both are real,
    else :data:`IGNORE` (the last position, padding)."""
    targets = torch.full_like(tokens, IGNORE)
    both = real[:, :-1] & real[:, 1:]
    targets[:, :-1] = torch.where(both, tokens[:, 1:], IGNORE)
    return targets


def _generator(device: torch.device, seed: int, stream: int, index: int) -> torch.Generator:
    """A generator seeded by (seed, stream, index): the masks of a step are a pure function of it."""
    g = torch.Generator(device=device)
    g.manual_seed(((seed * 1_000_003 + index) * 8 + stream) % (2**63))
    return g


TRAIN_STREAM, VAL_STREAM = 1, 2


def batch_targets(spt: dict, encoder: Encoder, tokens: torch.Tensor, pad_mask: torch.Tensor | None,
                  generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(model inputs, targets) of one batch for the run's objective."""
    real = real_positions(tokens, pad_mask, encoder.cfg.mask_zero_tokens)
    if spt["objective"] == "mlm":
        return mask_tokens(tokens, real, float(spt["mask_rate"]), encoder.mask_id, generator)
    return tokens, next_token_targets(tokens, real)


def token_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(summed cross-entropy, count, correct) over the positions with a target; fp32."""
    flat = logits.float().flatten(0, 1)
    y = targets.flatten()
    loss = F.cross_entropy(flat, y, ignore_index=IGNORE, reduction="sum")
    has = y != IGNORE
    return loss, has.sum(), ((flat.argmax(-1) == y) & has).sum()


# ----------------------------------------------------------------------------- the phase

@torch.no_grad()
def evaluate(lm: TokenPredictor, batches: DeviceBatches, spt: dict, amp, seed: int,
             max_batches: int | None = None) -> tuple[float, float]:
    """(mean loss, accuracy) over the predicted positions of the validation inputs (their first
    ``max_batches`` batches' examples when set, as :func:`lra.training.step.evaluate` reads them); batch i
    always gets the same masks, so evaluations are comparable across steps."""
    lm.eval()
    device = batches.inputs.device
    loss_sum, count, correct = (torch.zeros((), device=device) for _ in range(3))
    for i, (x, pad, _ids) in enumerate(batches.iterate(max_batches)):
        inputs, targets = batch_targets(spt, lm.encoder, x, pad, _generator(device, seed, VAL_STREAM, i))
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = lm(inputs, pad)
        s, c, k = token_loss(logits, targets)
        loss_sum, count, correct = loss_sum + s, count + c, correct + k
    lm.train()
    n = max(int(count), 1)
    return float(loss_sum) / n, float(correct) / n


def _better(select: str, score: tuple[float, float], best: dict | None) -> bool:
    if best is None:
        return True
    loss, acc = score
    return loss < best["val_loss"] if select == "loss" else acc > best["val_accuracy"]


def phase(spt: dict | None, model: Encoder, data: TaskData, device: torch.device, amp, job_dir: Path, seed: int,
          trainer: dict, finetuning_started: bool = False, batching: dict | None = None) -> dict[str, Any] | None:
    """Run (or resume) self-pretraining of ``model`` in ``job_dir``, then load its best checkpoint
    into ``model``. ``batching``: the fine-tuning's length-bucketing settings (``bucket_multiple``,
    ``bucket_window`` of :class:`lra.data.DeviceBatches`), used for pretraining's batches too. Returns the phase's record part (``status``, history, best step, ...), or None
    for ``pretrain=none``. ``finetuning_started``: fine-tuning has a checkpoint of its own, which
    holds the weights, so only the summary is read back. Never raises for nan/oom/errors (status
    says); raises :class:`lra.training.state.Preempted` on a preemption signal, after checkpointing."""
    if spt is None:
        return None
    ckpt_path = job_dir / CHECKPOINT
    if finetuning_started:
        if not ckpt_path.is_file():
            raise ConfigError(f"{job_dir} holds a fine-tuning checkpoint but no {CHECKPOINT}: that job was started "
                              f"without pretraining (pretrain=none); run pretrain={spt['objective']} in a new job "
                              f"directory")
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        return summary(spt, state, job_dir)
    result = pretrain(spt, model, data, device, amp, job_dir, seed, trainer, batching)
    if result["status"] == "ok":
        best = load_encoder(model, job_dir / BEST)
        print(f"[lra] fine-tuning from the pretraining checkpoint of step {best['step']} "
              f"(validation loss {best['val_loss']:.4f}, masked accuracy {best['val_accuracy']:.4f})")
    return result


def load_encoder(model: Encoder, path: Path) -> dict[str, Any]:
    """Load a pretraining checkpoint's encoder weights into ``model`` (every weight but the classifier,
    which pretraining does not train); fails loudly on any other missing or extra weight. Returns the
    checkpoint's step and validation scores."""
    best = torch.load(path, map_location="cpu", weights_only=False)
    weights = {k: v for k, v in best["encoder"].items() if not k.startswith("head.")}
    result = model.load_state_dict(weights, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("head.")]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"pretraining checkpoint {path} does not fit the model: missing {missing}, "
                           f"unexpected {result.unexpected_keys}")
    return {k: best[k] for k in ("step", "val_loss", "val_accuracy")}


def summary(spt: dict, state: dict, job_dir: Path, status: str = "ok", message: str | None = None) -> dict[str, Any]:
    """The record's ``case.pretrain``: settings, steps run, loss history and the best checkpoint."""
    best = state.get("best") or {}
    return {"status": status, "message": message, "objective": spt["objective"], "mask_rate": spt.get("mask_rate"),
            "select": spt["select"], "planned_steps": spt["steps"], "steps": state.get("step", 0),
            "train_time_s": round(state.get("train_time", 0.0), 3), "best_step": best.get("step"),
            "best_val_loss": best.get("val_loss"), "best_val_accuracy": best.get("val_accuracy"),
            "history": state.get("history", []), "checkpoint": str(job_dir / BEST)}


def metrics(result: dict[str, Any]) -> dict[str, Any]:
    """The pretraining numbers that go into the record's ``metrics`` (``pretrain_*``)."""
    hist = [h for h in result.get("history", []) if h.get("train_loss") is not None]
    return {"pretrain_steps": result.get("steps"), "pretrain_best_step": result.get("best_step"),
            "pretrain_val_loss": result.get("best_val_loss"), "pretrain_val_accuracy": result.get("best_val_accuracy"),
            "pretrain_first_train_loss": hist[0]["train_loss"] if hist else None,
            "pretrain_last_train_loss": hist[-1]["train_loss"] if hist else None,
            "pretrain_train_time_s": result.get("train_time_s")}


def pretrain(spt: dict, model: Encoder, data: TaskData, device: torch.device, amp, job_dir: Path, seed: int,
             trainer: dict, batching: dict | None = None) -> dict[str, Any]:
    """The pretraining loop (see the module docstring); returns :func:`summary` with the status.
    ``batching``: length bucketing as in fine-tuning (padding is never masked or predicted, so cutting
    a batch to its longest example changes nothing but the time)."""
    lm = TokenPredictor(model).to(device)
    opt, sched = make_optimizer(lm, {k: spt[k] for k in OPTIMIZER_KEYS})
    inputs = pretraining_inputs(data)
    ids = torch.arange(len(inputs))  # what DeviceBatches carries in the label slot: example ids, never labels
    batching = batching or {}
    train_b = DeviceBatches(inputs, ids, int(spt["batch_size"]), device, data.pad_id, shuffle=True, seed=seed,
                            **batching)
    val_in = pretraining_inputs(data, "val")
    val_b = DeviceBatches(val_in, torch.arange(len(val_in)), int(spt["batch_size"]), device, data.pad_id,
                          shuffle=False, **batching)
    ckpt_path, best_path, steps = job_dir / CHECKPOINT, job_dir / BEST, int(spt["steps"])
    state: dict[str, Any] = {"step": 0, "train_time": 0.0, "history": [], "best": None}
    ckpt = LoopCheckpoint(ckpt_path, lm, opt, sched, device)
    if ckpt.exists():
        state = ckpt.restore(state)
        print(f"[lra] resuming self-pretraining in {job_dir} from step {state['step']}")

    def validate(step: int, window: float | None) -> None:
        val_loss, val_acc = evaluate(lm, val_b, spt, amp, seed, spt.get("eval_batches"))
        state["history"].append({"step": step, "train_loss": window, "val_loss": val_loss, "val_accuracy": val_acc})
        if _better(spt["select"], (val_loss, val_acc), state["best"]):
            state["best"] = {"step": step, "val_loss": val_loss, "val_accuracy": val_acc}
            save_checkpoint(best_path, encoder=model.state_dict(), **state["best"])
        bar.write(f"[lra] pretraining step {step}:" + (f" train_loss {window:.4f}" if window is not None else "")
                  + f" val_loss {val_loss:.4f} val_accuracy {val_acc:.4f}")

    signals = PreemptionSignals()
    bar = progress(total=steps, initial=state["step"], desc=f"{data.name}/pretrain-{spt['objective']}", unit="step",
                   disable=not trainer.get("progress", True))
    log_every, eval_every = max(1, int(trainer.get("log_every", 50))), int(spt["eval_every"])
    loss_sum, count = torch.zeros((), device=device), torch.zeros((), device=device)
    bad_step = torch.full((), -1, dtype=torch.long, device=device)
    window, status, message = None, "ok", None
    lm.train()
    t0 = time.perf_counter()
    try:
        if state["step"] == 0 and not state["history"]:
            validate(0, None)  # the untrained model's score: where the loss starts
        while state["step"] < steps:
            step = state["step"]
            x, pad, _ids = train_b.batch(step)
            model_in, targets = batch_targets(spt, model, x, pad, _generator(device, seed, TRAIN_STREAM, step))
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                logits = lm(model_in, pad)
            s, c, _ = token_loss(logits, targets)
            loss = s / c.clamp_min(1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if trainer.get("grad_clip"):
                torch.nn.utils.clip_grad_norm_(lm.parameters(), trainer["grad_clip"])
            opt.step()
            sched.step()
            bad_step = torch.where((bad_step < 0) & ~torch.isfinite(loss.detach()), torch.tensor(step, device=device),
                                   bad_step)
            loss_sum += s.detach()
            count += c
            state["step"] = step = step + 1
            bar.update()
            eval_now = step % eval_every == 0 or step == steps
            ckpt_now = step % int(spt["checkpoint_every"]) == 0 or step == steps or signals.received is not None
            # a checkpoint is also a log boundary, so a resumed run's loss windows are the uninterrupted run's
            if step % log_every == 0 or eval_now or ckpt_now:
                first_bad, total, n = torch.stack([bad_step.float(), loss_sum, count.float()]).tolist()
                if first_bad >= 0:
                    status, message = "nan", f"non-finite pretraining loss at step {int(first_bad)}"
                    break
                window = total / max(n, 1.0)
                loss_sum.zero_(), count.zero_()
                bar.set_postfix(loss=f"{window:.3f}", lr=f"{sched.get_last_lr()[0]:.2e}")
            if eval_now or ckpt_now:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                state["train_time"] += time.perf_counter() - t0
                if eval_now:
                    validate(step, window)
                if ckpt_now:
                    ckpt.save(**state)
                if signals.received is not None:
                    signals.hand_over(f"at pretraining step {step}; checkpoint written to {ckpt_path}")
                t0 = time.perf_counter()
    except RuntimeError as err:  # torch.cuda.OutOfMemoryError included
        status, message = loop_failure(err, f"pretraining step {state['step']}")
    finally:
        bar.close()
        signals.restore()
    if status == "ok" and state["best"] is None:
        status, message = "error", "self-pretraining ended without a validation score, so no checkpoint to fine-tune"
    return summary(spt, state, job_dir, status, message)

