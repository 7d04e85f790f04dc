"""The supervised loop: train and evaluate the common encoder on one task with one attention variant.

:func:`train` runs one job in its job directory: it validates and resolves the configuration
(:mod:`lra.training.config`), prepares the data, builds the encoder (:func:`build_model`),
runs self-pretraining first when asked (:func:`lra.training.pretrain.phase`), then the steps
(:class:`lra.training.step.TrainStep`), evaluating every ``trainer.eval_every`` steps and
checkpointing every ``trainer.checkpoint_every`` steps into ``checkpoint.pt``
(:class:`lra.training.state.LoopCheckpoint`); running the same job directory again resumes from
the last checkpoint and ends in the same state as an uninterrupted run. It returns the result
record; :func:`lra.training.job.run` writes it.

What a run states besides its accuracy (docs/recipes.md):

* **Did it learn** (:mod:`lra.training.verdict`): every validation and the final test are tested
  against the majority-class rate of the training labels (one-sided binomial, alpha 0.01);
  ``metrics.learned``/``learned_test`` (test split), ``metrics.val_learned`` (last validation); one
  warning line when still at chance after 25% of the steps.
* **Curves** (:mod:`lra.training.curves`): ``curves.csv`` in the job directory (``case.curves``),
  and TensorBoard or W&B scalars with ``logger=tensorboard|wandb``.
* **Which weights are tested** (``trainer.test_checkpoint=final|best_val``, :func:`test_checkpoints`):
  the best validation's weights are kept as a CPU copy inside the one checkpoint
  (:class:`lra.training.state.BestWeights`); both test accuracies are recorded.
* **Gradient accumulation** (``trainer.accumulate=k``): each optimizer step averages k micro-batches
  of ``trainer.batch_size`` (:class:`lra.training.step.TrainStep`); checkpoints fall on optimizer
  steps, so a resumed run stays bit-identical.

Throughput (README "Training throughput"): length-bucketed batches (``trainer.bucketing``,
:mod:`lra.bucketing`, :func:`bucketing_of`), a compiled step with an eager fallback
(``trainer.compile``, :mod:`lra.compiled`), and up to ``trainer.jobs_per_gpu`` jobs sharing a GPU
(``trainer.device=packed``, :mod:`lra.devices`); the record says which ran (``case.bucketing``,
``case.compile``, ``case.packed``; :func:`throughput_facts`).

Token-level tasks (MQAR, text_lm: ``TaskData.target == "token"``) train the encoder with a token
head and score the labelled positions (:mod:`lra.training.token_task`); everything else is the same
loop. ``trainer.stop_at_val_accuracy`` ends a run at the first validation that reaches it
(``case.early_stop``). Every record states the decoding state of the model at the task's length
(``metrics.state_bytes``, ``case.state``) and whether its attention was causal (``case.attention_causal``).

Failures after validation never raise: NaN/inf losses give status ``nan`` (with the first bad
step), out-of-memory ``oom``, a run that did not train or evaluate and anything else ``error``
(:func:`lra.training.state.loop_failure`, :func:`lra.training.state.trained_and_evaluated`).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from .. import bucketing, tasks
from ..compiled import CompiledModel
from ..data import DeviceBatches
from ..devices import set_job_threads, share_gpu
from ..distill import LayerDistiller
from ..model import Encoder, EncoderConfig
from ..progress import progress
from ..results import host_info, make_record, now
from . import pretrain, token_task
from .config import (autocast_dtype, device_of, distill_settings, effective_config, finetune_settings,
                     pretrain_settings, resolve, validate)
from .optim import make_optimizer
from .curves import CURVES_FILE, Curves, make_logger
from .state import BestWeights, LoopCheckpoint, PreemptionSignals, loop_failure, trained_and_evaluated
from .step import TrainStep, evaluate, evaluated_count
from .verdict import ChanceWarning, binomial_test, correct_count, learned, majority_rate

#: the fine-tuning loop's checkpoint file in the job directory
CHECKPOINT = "checkpoint.pt"


def build_model(data: tasks.TaskData, model: dict, attention: str, knobs: dict) -> Encoder:
    """The encoder for ``data`` (its vocabulary, classes, length, dual input) with ``model`` settings and
    attention variant ``attention`` with ``knobs``; says so when ``model.attention_dropout`` cannot apply."""
    encoder = Encoder(EncoderConfig(vocab_size=data.vocab_size, num_classes=data.num_classes, max_length=data.seq_len,
                                    dual=data.dual, attention=attention, attention_cfg=knobs, **model))
    if not encoder.attention_dropout_applies:
        print(f"[lra] note: model.attention_dropout={model.get('attention_dropout')} is not applied by "
              f"attention={attention} (no attention-weight hook for this variant; see lra.model.DROPOUT_BACKENDS)")
    return encoder


def bucketing_of(tr: dict, data: tasks.TaskData, model: Encoder, attention: str) -> tuple[bool, str]:
    """Whether this run buckets by length, and why (:func:`lra.bucketing.choose` on the built model)."""
    if data.target == "token":
        return False, "off: the labels of a token-level task are per position (a cut batch would drop them)"
    if model.cfg.patch > 1:
        return False, f"off: model.patch={model.cfg.patch} cuts whole images into patches (a cut batch would not be one)"
    return bucketing.choose(tr.get("bucketing", "auto"), pad_id=data.pad_id, variant=attention,
                            attention_module=model.blocks[0].attn.attention, pooling=model.cfg.pooling,
                            pool_masked=model.cfg.pool_masked, cls_last=model.causal)


def train(cfg: DictConfig, job_dir: Path) -> dict[str, Any]:
    """Train + evaluate one run in ``job_dir``; returns the result record (:func:`lra.training.job.run`
    writes it).

    Raises only for invalid configs/data (:class:`ConfigError`, ``tasks.DataNotFoundError``,
    ``ValueError``) before training starts; everything after is captured in the record.
    """
    started = now()
    validate(cfg)
    task_cfg, model_kw, tr, knobs = resolve(cfg)
    spt = pretrain_settings(cfg, task_cfg.name, tr)  # None: trained from scratch
    model_kw, tr = finetune_settings(spt, model_kw, tr)
    jobs_per_gpu = int(tr.get("jobs_per_gpu") or 4)
    device = device_of(tr.get("device", "auto"), acquire=True, jobs_per_gpu=jobs_per_gpu)
    packed = tr.get("device") == "packed"
    if packed:  # at most jobs_per_gpu jobs per GPU run at once, whatever the launcher started
        share_gpu(jobs_per_gpu, torch.cuda.device_count())
    set_job_threads(cfg.get("threads", "auto"))
    host = host_info()  # at the start (after any wait for a GPU): threads, cores, load
    amp = autocast_dtype(tr.get("precision", "auto"), device)
    data = tasks.prepare(task_cfg)
    empty = [split for split, (_, y) in data.splits.items() if len(y) == 0]
    if empty:
        raise tasks.DataNotFoundError(f"task {data.name!r}: the {', '.join(empty)} split(s) hold no examples, so the "
                                      "run could not train or evaluate; check task.num_train/num_val/num_test and "
                                      "the data files")

    torch.manual_seed(cfg.seed)
    model = build_model(data, model_kw, cfg.attention.name, {**knobs, "seed": int(cfg.seed)}).to(device)
    token = data.target == "token"  # a label per position: the encoder trains with a token head (token_task)
    net = token_task.predictor(model).to(device) if token else model
    steps = int(tr["steps"])
    opt, sched = make_optimizer(net, tr)
    bucket_on, bucket_why = bucketing_of(tr, data, model, cfg.attention.name)
    print(f"[lra] length bucketing {bucket_why}")
    batching = dict(bucket_multiple=int(tr.get("bucket_multiple") or bucketing.DEFAULT_MULTIPLE) if bucket_on else None,
                    bucket_window=int(tr.get("bucket_window") or bucketing.DEFAULT_WINDOW))
    train_b = DeviceBatches(*data.splits["train"], tr["batch_size"], device, data.pad_id, shuffle=True, seed=cfg.seed,
                            **batching)
    val_b = DeviceBatches(*data.splits["val"], tr["batch_size"], device, data.pad_id, shuffle=False, **batching)
    test_b = DeviceBatches(*data.splits["test"], tr["batch_size"], device, data.pad_id, shuffle=False, **batching)
    step_fn = CompiledModel(net, mode=tr.get("compile_mode") or "auto", backend=tr.get("compile_backend") or "inductor",
                            device=device) if tr.get("compile") else net

    if train_b.batch_size != int(tr["batch_size"]):
        print(f"[lra] trainer.batch_size={tr['batch_size']} exceeds the {len(data.splits['train'][1])} training "
              f"examples: batches of {train_b.batch_size}")
    config = effective_config(cfg, model.cfg, batch_size=train_b.batch_size)
    config["pretrain"] = spt or {"objective": "none"}
    config["trainer"]["bucketing"] = bucket_on  # what ran (the setting may say auto)
    if data.meta.get("image_side"):  # image tasks: the side of the square images that ran
        config["task"]["image_size"] = int(data.meta["image_side"])
    knobs_ran = {k: v for k, v in config["attention"].items() if k != "name"}
    distill = distill_settings(cfg)
    base = dict(task=data.name, variant=cfg.attention.name, variant_config=knobs_ran, seq_len=data.seq_len,
                batch_size=train_b.batch_size, dtype=str(amp or torch.float32).replace("torch.", ""),
                seed=int(cfg.seed), config=config, started_at=started, device=device, host=host, distill=distill)
    ckpt_path = job_dir / CHECKPOINT
    # self-pretraining first (resumes; skipped once fine-tuning has a checkpoint), then its best weights
    spt_result = pretrain.phase(spt, model, data, device, amp, job_dir, int(cfg.seed), tr,
                                finetuning_started=ckpt_path.is_file(), batching=batching)
    if spt_result is not None and spt_result["status"] != "ok":
        return make_record("train", status=spt_result["status"], message=spt_result["message"],
                           metrics=pretrain.metrics(spt_result), case={"pretrain": spt_result}, **base)
    # distillation trains fine-tuning only: hooked after pretraining, whose forwards it must not capture
    distiller = LayerDistiller(model, distill["weight"], distill["queries"]) if distill["on"] else None
    if distiller is not None and isinstance(step_fn, CompiledModel):  # its hooks must see every layer's q, k
        step_fn.fall_back(RuntimeError("attention.distill reads each layer's q, k through forward hooks, "
                                       "which a compiled (CUDA-graph) forward would not run as eager code"))
    step, train_time, history = 0, 0.0, []
    saved: dict[str, Any] = {}
    ckpt = LoopCheckpoint(ckpt_path, net, opt, sched, device)
    if ckpt.exists():
        saved = ckpt.restore(("step", "train_time", "history", "best", "curves", "chance_warned", "window",
                              "last_window"))
        step, train_time, history = saved["step"], saved["train_time"], saved["history"]
        print(f"[lra] resuming {job_dir} from step {step}")
    accumulate = int(tr.get("accumulate") or 1)
    best = BestWeights(**(saved.get("best") or {}))  # the best validation's weights (a CPU copy)
    chance = ChanceWarning(data.name, steps, warned=bool(saved.get("chance_warned")))
    majority = majority_rate(data.splits["train"][1])  # the "did not learn" baseline (labelled positions only)
    curves = Curves(job_dir, make_logger(cfg.get("logger", "none"), job_dir, step, f"{data.name}/{cfg.attention.name}",
                                         config), saved.get("curves"))
    stop_at = tr.get("stop_at_val_accuracy")
    reached = stop_at is not None and any(h["val_accuracy"] >= stop_at for h in history)  # also when resumed

    def score(batches: DeviceBatches, max_batches: int | None = None) -> dict[str, float]:
        """``accuracy``, ``loss`` and ``tokens`` (targets scored) of a split; token-level tasks: over its
        labelled positions (with their other measures, :func:`lra.training.token_task.evaluate`)."""
        if token:
            return token_task.evaluate(net, batches, amp, max_batches)
        accuracy, loss = evaluate(model, batches, amp, max_batches)
        return {"accuracy": accuracy, "loss": loss, "tokens": evaluated_count(batches, max_batches)}

    def checkpoint():
        ckpt.save(step=step, train_time=train_time, history=history, best=best.state(), curves=curves.rows,
                  chance_warned=chance.warned, window=train_step.window_state(), last_window=last_window)
        curves.write()

    signals = PreemptionSignals()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train_step = TrainStep(net, step_fn, opt, sched, train_b, amp, tr.get("grad_clip"),
                           aux_loss=distiller.loss if distiller else None, outputs=token_task.outputs if token else None,
                           accumulate=accumulate)
    train_step.load_window_state(saved.get("window"))
    last_window = saved.get("last_window")  # the last closed log window (a validation's train_loss)
    log_every = max(1, int(tr.get("log_every", 50)))
    status, message = "ok", None
    net.train()
    bar = progress(total=steps, initial=step, desc=f"{data.name}/{cfg.attention.name}", unit="step",
                   disable=not tr.get("progress", True))
    t0 = window_t0 = time.perf_counter()
    paused = 0.0  # seconds of evaluation and checkpointing inside the current log window
    try:
        while step < steps and not reached:
            train_step(step)
            step += 1
            bar.update()
            boundary = step % log_every == 0 or step == steps
            if boundary:
                first_bad, window = train_step.boundary()  # the loop's only host sync
                last_window = window
                if first_bad >= 0:
                    status, message = "nan", f"non-finite training loss at step {first_bad}"
                    break
                now_t = time.perf_counter()
                elapsed, window_t0, paused = now_t - window_t0 - paused, now_t, 0.0
                lr = sched.get_last_lr()[0]
                curves.add(step, train_loss=window[0], train_accuracy=window[1], lr=lr,
                           tokens_per_s=round(train_step.window_positions / elapsed, 1) if elapsed > 0 else None)
                bar.set_postfix(loss=f"{window[0]:.3f}", acc=f"{window[1]:.3f}", lr=f"{lr:.2e}")
            eval_now = step % int(tr.get("eval_every", 500)) == 0 and step < steps
            ckpt_now = step % int(tr.get("checkpoint_every", 500)) == 0 or signals.received is not None
            if eval_now or ckpt_now:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                pause_t0 = time.perf_counter()
                train_time += pause_t0 - t0
                if eval_now:
                    val_scores = score(val_b, tr.get("eval_batches"))
                    val_acc, val_loss = val_scores["accuracy"], val_scores["loss"]
                    val_test = binomial_test(correct_count(val_acc, val_scores["tokens"]), val_scores["tokens"],
                                             majority, "val")
                    best.update(step, val_acc, net)
                    reached = stop_at is not None and val_acc >= stop_at
                    distill_window = distiller.window() if distiller else None
                    history.append({"step": step, "val_accuracy": val_acc, "val_loss": val_loss,
                                    # training loss / accuracy over the last log_every steps
                                    **({"train_loss": last_window[0], "train_accuracy": last_window[1]}
                                       if last_window else {}),
                                    # per layer, mean over heads and the steps since the last evaluation
                                    **({"distill_loss": distill_window} if distiller else {})})
                    curves.add(step, val_loss=val_loss, val_accuracy=val_acc,
                               distill_loss=sum(distill_window) / len(distill_window) if distill_window else None)
                    train_part = f" train_loss {last_window[0]:.4f}" if last_window else ""
                    bar.write(f"[lra] step {step}:{train_part} val_accuracy {val_acc:.4f} val_loss {val_loss:.4f}"
                              f"{'' if learned(val_test) else ' (at chance)'}"
                              + (f"; reached trainer.stop_at_val_accuracy={stop_at}: stopping" if reached else ""))
                    chance.check(step, val_test, bar.write)
                    curves.write()
                if ckpt_now:
                    checkpoint()
                if signals.received is not None:
                    signals.hand_over(f"at step {step}; checkpoint written to {ckpt_path}")
                t0 = time.perf_counter()
                paused += t0 - pause_t0
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_time += time.perf_counter() - t0
    except RuntimeError as err:  # torch.cuda.OutOfMemoryError included
        status, message = loop_failure(err, f"step {step}")
    finally:
        bar.close()
        signals.restore()

    metrics: dict[str, Any] = {"steps": step, "train_time_s": round(train_time, 3)}
    distill_layers = distiller.window() if distiller else None  # since the last evaluation
    if distill_layers:
        metrics["distill_loss"] = round(sum(distill_layers) / len(distill_layers), 6)
    case: dict[str, Any] = {}
    if status == "ok":
        checkpoint()
        metrics_of = ((lambda val, test: token_task.record_metrics(data, val, test)) if token else
                      (lambda val, test: {"val_accuracy": val["accuracy"], "val_loss": val["loss"],
                                          "accuracy": test["accuracy"], "loss": test["loss"]}))
        tested = test_checkpoints(net, best, step, score, val_b, test_b, majority,
                                  tr.get("test_checkpoint") or "final", chance, metrics_of)
        metrics.update(tested["metrics"])
        case["test_checkpoint"] = tested["case"]
        curves.add(step, val_loss=metrics["val_loss"], val_accuracy=metrics["val_accuracy"])
    curves.write()
    curves.close()
    if status == "ok":
        status, message = trained_and_evaluated(metrics)
    speed, facts = throughput_facts(train_b, step, train_time, {"on": bucket_on, "reason": bucket_why, **batching},
                                    step_fn, {"jobs_per_gpu": jobs_per_gpu, "gpu": device.index} if packed else None,
                                    accumulate=accumulate)
    metrics.update(speed)
    if device.type == "cuda":
        metrics["peak_mem_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    metrics["params"] = sum(p.numel() for p in net.parameters())
    state = token_task.state_size(model, data.seq_len, torch.finfo(amp or torch.float32).bits // 8)
    metrics["state_bytes"] = state["bytes"]
    backend = getattr(model.blocks[0].attn.attention, "last_backend", None)
    case = {"history": history, "curves": CURVES_FILE, **case, **({"backend": backend} if backend else {}),
            "state": state, "attention_causal": model.causal,
            **({"early_stop": {"threshold": stop_at, "reached": reached, "step": step if reached else None}}
               if stop_at is not None else {}),
            **({"distill_loss_layers": distill_layers} if distill_layers else {}), **facts}
    notes = data_notes(task_cfg, data)
    if notes:
        case["notes"] = notes
    if spt_result is not None:
        metrics.update(pretrain.metrics(spt_result))
        case["pretrain"] = spt_result
    return make_record("train", status=status, message=message, metrics=metrics, case=case, **base)


def test_checkpoints(net: torch.nn.Module, best: BestWeights, step: int, score, val_b: DeviceBatches,
                     test_b: DeviceBatches, majority: float, tested: str, chance: ChanceWarning,
                     metrics_of) -> dict[str, dict[str, Any]]:
    """The end of a run that trained: validate the final weights (a validation like the others: it
    may become the best), test them and, when they differ, the best validation's weights; test the
    ``tested`` ones (``trainer.test_checkpoint``) for ``metrics.accuracy``/``loss`` and the learned
    verdict. ``score(batches)`` gives a split's ``accuracy``, ``loss`` and ``tokens`` (targets scored);
    ``metrics_of(val_scores, test_scores)`` the record's metrics of a validation and a test. ``net``
    ends holding the best validation's weights when they differ from the final ones (the checkpoint
    holds the final ones). Returns ``{"metrics": ..., "case": ...}``: ``metrics_of``'s (with the final
    weights' validation and the tested weights' test), ``val_learned``/``val_learned_test`` (the last
    validation's test), ``accuracy_final``, ``accuracy_best_val``, ``best_val_accuracy``, ``learned``,
    ``learned_test``; the case's ``{"tested", "best_val_step", "best_val_accuracy"}``."""
    val = score(val_b)
    val_test = binomial_test(correct_count(val["accuracy"], val["tokens"]), val["tokens"], majority, "val")
    chance.check(step, val_test)
    best.update(step, val["accuracy"], net)
    results = {"final": score(test_b)}
    if best.step == step:  # the final weights are the best validation's
        results["best_val"] = results["final"]
    else:
        best.load(net)
        results["best_val"] = score(test_b)
    m = metrics_of(val, results[tested])
    m["val_learned"], m["val_learned_test"] = learned(val_test), val_test
    m["accuracy_final"], m["accuracy_best_val"] = results["final"]["accuracy"], results["best_val"]["accuracy"]
    m["best_val_accuracy"] = best.accuracy
    t = results[tested]
    test = binomial_test(correct_count(t["accuracy"], t["tokens"]), t["tokens"], majority, "test")
    m["learned"], m["learned_test"] = learned(test), test
    return {"metrics": m, "case": {"tested": tested, "best_val_step": best.step, "best_val_accuracy": best.accuracy}}


def data_notes(task_cfg, data: tasks.TaskData) -> list[str]:
    """What the data did differently from what the configuration asked (the record's ``case.notes``):
    an image task's length that is not a square is resized to the largest square that fits."""
    side = data.meta.get("image_side") if data.meta else None
    asked = int(task_cfg.seq_len)
    if not side or side * side == asked:
        return []
    why = ("is not a square number of pixels: the images were resized to the largest square that fits"
           if side * side < asked and math.isqrt(asked) == side else "is more than the images hold")
    return [f"task.seq_len={asked} {why}: {side}x{side} = {side * side} pixels ran (config.task.image_size={side}, "
            f"seq_len={side * side})"]


def throughput_facts(train_b: DeviceBatches, steps: int, train_time: float, bucket: dict, step_fn,
                     packed: dict | None, accumulate: int = 1) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metrics, case entries) saying what the run's ``steps`` optimizer steps (of ``accumulate``
    micro-batches each) processed and how fast.

    Metrics: ``padded_fraction`` of the positions computed, and (unless ``packed``) ``steps_per_s``,
    ``tokens_per_s`` (positions computed, padding included) and ``real_tokens_per_s``. Case:
    ``bucketing`` (on, why, the batch lengths used, ``padded_fraction_unbucketed``: the same examples at
    the task's length), ``compile`` (:meth:`lra.compiled.CompiledModel.facts`, or off) and, for a job
    that shared its GPU (``packed``: jobs_per_gpu, gpu), ``packed`` with the speed figures instead:
    jobs sharing a GPU time each other's load, so those are no speed result.
    """
    micro = steps * accumulate  # batches of train_b the steps drew
    positions, real, shapes = train_b.token_counts(micro) if steps else (0, 0, set())
    metrics: dict[str, Any] = {"padded_fraction": round(1 - real / positions, 4)} if positions else {}
    speed = {}
    if train_time > 0 and steps:
        speed = {"steps_per_s": round(steps / train_time, 4), "tokens_per_s": round(positions / train_time, 1),
                 "real_tokens_per_s": round(real / train_time, 1)}
    on = bucket["on"]
    case: dict[str, Any] = {"bucketing": {"on": on, "reason": bucket["reason"], "lengths": sorted(shapes),
                                          **({"multiple": bucket["bucket_multiple"], "window": bucket["bucket_window"]}
                                             if on else {})}}
    if steps:
        case["bucketing"]["padded_fraction_unbucketed"] = round(
            1 - real / (micro * train_b.batch_size * train_b.positions_per_example), 4)
    case["compile"] = step_fn.facts() if isinstance(step_fn, CompiledModel) else {"status": "off"}
    if packed is None:
        metrics.update(speed)
    else:
        case["packed"] = {**packed, **speed, "note": "measured while sharing the GPU with other jobs: not a speed result"}
    return metrics, case
