"""``lra-train``: train and evaluate the common encoder on one LRA task with one attention variant.

A Hydra app (configs in ``conf/``; groups ``task/ attention/ model/ trainer/ experiment/``).
Writes one result record (``record.json``) into the job directory and, with
``results_dir=...``, a copy there. Checkpoints every ``trainer.checkpoint_every`` steps into
the job directory; running the same job directory again (``hydra.run.dir=<dir>``) resumes
from the last checkpoint and ends in the same state as an uninterrupted run.

Every value of the effective configuration is checked against its valid range before any
data is prepared (:func:`validate`, tables in :mod:`lra.schema`); the record's ``config`` is
that effective configuration (:func:`effective_config`). An explicit ``task.<key>=...`` on the
command line beats a trainer preset's ``trainer.task_overrides.<key>``
(:func:`explicit_beats_presets`). CPU threads: ``threads=auto`` gives the job its share of the
cores (:mod:`lra.devices`).

Throughput (README "Training throughput"): length-bucketed batches (``trainer.bucketing``,
:mod:`lra.bucketing`), a compiled step with an eager fallback (``trainer.compile``,
:mod:`lra.compiled`), and up to ``trainer.jobs_per_gpu`` jobs sharing a GPU
(``trainer.device=packed``, :mod:`lra.devices`); the record says which ran (``case.bucketing``,
``case.compile``, ``case.packed``; :func:`throughput_facts`).

Failures never raise out of the job (so a sweep goes on and its report is built): NaN/inf
losses give status ``nan`` (with the first bad step), out-of-memory ``oom``, a run that did
not train or evaluate and anything else ``error``. A single (non ``-m``) run exits 0 only
with status ``ok`` (exit statuses: :func:`_hydra_main`).
"""
from __future__ import annotations

import math
import os
import signal
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

import attention_variants as av

from . import bucketing, pretrain, schema, tasks
from .compiled import CompiledModel
from .data import DeviceBatches
from .devices import set_job_threads, share_gpu
from .distill import LayerDistiller, has_feature_map
from .model import Encoder, EncoderConfig
from .results import RECORD_FILENAME, host_info, make_record, now, read_record, variant_config, write_record
from .schema import ConfigError
from .timing import is_oom

CHECKPOINT = "checkpoint.pt"


# ----------------------------------------------------------------------------- configuration

def _merge(*layers) -> dict[str, Any]:
    """Later layers override earlier ones; ``None`` values mean "not set" and are skipped."""
    out: dict[str, Any] = {}
    for layer in layers:
        for k, v in (OmegaConf.to_container(layer, resolve=True) if isinstance(layer, DictConfig)
                     else dict(layer or {})).items():
            if v is not None:
                out[k] = v
    return out


def recipe_of(cfg: DictConfig) -> DictConfig | dict:
    """The task's ``model``/``trainer`` blocks for ``recipe`` (conf/recipe/<name>.yaml).

    ``lra``: the task config's own ``model:`` and ``trainer:`` blocks. Other recipes live in the
    task config under ``recipes.<name>`` with their own complete ``model`` and ``trainer`` blocks
    (nothing is inherited from the LRA blocks; see conf/task/listops.yaml).
    """
    name = cfg.get("recipe") or "lra"
    if name == "lra":
        return {"model": cfg.task.get("model"), "trainer": cfg.task.get("trainer")}
    recipes = cfg.task.get("recipes") or {}
    if name not in recipes:
        raise ConfigError(f"recipe={name!r} is not defined for task {cfg.task.name!r}; "
                          f"choices: {['lra', *recipes]}")
    return recipes[name]


def resolve(cfg: DictConfig) -> tuple[DictConfig, dict, dict, dict]:
    """Effective (task cfg, model kwargs, trainer settings, attention knobs) of a run.

    Model and trainer settings, later layers winning (``null`` = not set): the recipe's settings
    shared by every task (``recipe_defaults``, from conf/recipe/<name>.yaml), the task's blocks for
    the recipe (:func:`recipe_of`), ``trainer.model_overrides`` (model only), then the ``model``
    and ``trainer`` groups (the command line). ``task.mask_zero_tokens`` becomes the model's.
    """
    task_cfg = OmegaConf.merge(cfg.task, {k: v for k, v in (cfg.trainer.get("task_overrides") or {}).items()})
    recipe = recipe_of(cfg)
    shared = cfg.get("recipe_defaults") or {}
    model = model_settings(cfg, task_cfg, cfg.trainer.get("model_overrides"), cfg.model)
    trainer = _merge(shared.get("trainer"), recipe.get("trainer"),
                     {k: v for k, v in cfg.trainer.items()
                      if k not in ("task_overrides", "model_overrides", "pretrain_overrides")})
    _check_trainer(trainer)
    knobs = _merge(cfg.attention)
    for key in ("name", *DISTILL_KEYS):  # training options, not the variant's knobs
        knobs.pop(key, None)
    return task_cfg, model, trainer, knobs


def model_settings(cfg: DictConfig, task_cfg: DictConfig, *later) -> dict[str, Any]:
    """The encoder settings of ``cfg``'s recipe for its task (see :func:`resolve`): the recipe's
    ``recipe_defaults.model``, the task's block for the recipe (:func:`recipe_of`), then ``later``
    layers (``null`` = not set); ``mask_zero_tokens`` from ``task_cfg``."""
    model = _merge((cfg.get("recipe_defaults") or {}).get("model"), recipe_of(cfg).get("model"), *later)
    model["mask_zero_tokens"] = bool(task_cfg.get("mask_zero_tokens") or False)
    return model


#: the attention-distillation training options under ``attention.`` (conf/train.yaml)
DISTILL_KEYS = ("distill", "distill_queries")


def distill_settings(cfg: DictConfig) -> dict[str, Any]:
    """``attention.distill`` (weight; 0 = off) and ``attention.distill_queries`` as the record
    states them: ``{"on", "weight", "queries"}`` (:class:`lra.distill.LayerDistiller`)."""
    weight, queries = cfg.attention.get("distill") or 0.0, cfg.attention.get("distill_queries") or 64
    if not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
        raise ConfigError(f"attention.distill={weight!r}: the distillation weight must be a number >= 0 (0 = off)")
    if not isinstance(queries, int) or queries < 1:
        raise ConfigError(f"attention.distill_queries={queries!r}: must be an integer >= 1")
    return {"on": weight > 0, "weight": float(weight), "queries": int(queries)}


def _check_trainer(trainer: dict) -> None:
    """Optimizer knobs that only make_optimizer reads: fail before any data is prepared."""
    scope = trainer.get("weight_decay_params", "matrices")
    if scope not in schema.DECAY_SCOPES:
        raise ConfigError(f"trainer.weight_decay_params={scope!r} is not one of {schema.DECAY_SCOPES}")
    if trainer.get("schedule") == "onecycle" and int(trainer.get("warmup") or 0) < 2:
        raise ConfigError(f"trainer.schedule=onecycle needs trainer.warmup >= 2 (torch's OneCycleLR), "
                          f"got {trainer.get('warmup')}")
    if trainer.get("schedule") == "onecycle" and int(trainer.get("steps") or 0) < 3:
        raise ConfigError(f"trainer.schedule=onecycle needs trainer.steps >= 3 (a warm-up and an anneal phase), "
                          f"got {trainer.get('steps')}")


def device_of(setting: str, acquire: bool = False, jobs_per_gpu: int = 4) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda[:N]`` | ``exclusive`` (lock a GPU no other job holds) | ``packed``
    (one of ``jobs_per_gpu`` slots on a GPU, never beside an exclusive job); see lra.devices."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting in ("exclusive", "packed"):
        if not torch.cuda.is_available():
            what = "locks a free GPU" if setting == "exclusive" else "shares a GPU among a sweep's jobs"
            raise ConfigError(f"trainer.device={setting} {what}, but no CUDA GPU is visible; "
                              "use trainer.device=auto or cpu")
        from .devices import acquire_free_gpu, acquire_gpu_slot

        if not acquire:
            return torch.device("cuda")
        return acquire_free_gpu() if setting == "exclusive" else acquire_gpu_slot(jobs_per_gpu)
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={setting!r} but no CUDA GPU is visible; use trainer.device=auto or cpu")
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp32":
        return None
    raise ConfigError(f"trainer.precision={precision!r} is not one of auto, bf16, fp32")


def validate(cfg: DictConfig) -> None:
    """Check the effective config before any data is prepared: every value against its valid
    range (the tables of :mod:`lra.schema`: task, model, trainer, the variant's knobs), names,
    divisibility, lengths, and that the task's data can exist at these settings. Raises one
    :class:`ConfigError` naming every bad value, its constraint and the fix."""
    task_cfg, model, trainer, knobs = resolve(cfg)
    tasks.get(task_cfg.name)  # unknown task -> ValueError with the list
    name = cfg.attention.name
    try:
        _, config_cls = av.get(name)
        av.make_config(name, **knobs)
    except (KeyError, TypeError) as err:
        raise ConfigError(str(err)) from None
    for key in ("d_model", "heads", "layers"):
        if key not in model:
            raise ConfigError(f"model.{key} is not set and task {task_cfg.name!r} has no default for it")
    for key in ("batch_size", "steps", "lr", "schedule", "warmup"):
        if key not in trainer:
            raise ConfigError(f"trainer.{key} is not set and task {task_cfg.name!r} has no default for it")
    preset = {k: f"trainer.task_overrides.{k}" for k in (cfg.trainer.get("task_overrides") or {})}
    found = task_problems(task_cfg, preset)
    found += schema.problems(model, schema.MODEL, "model.")
    found += schema.problems(trainer, schema.TRAINER, "trainer.")
    found += schema.problems({"seed": cfg.get("seed")}, schema.RUN)
    found += schema.problems(knobs, schema.knob_rules(name, config_cls), "attention.")
    found += schema.threads_problems(cfg.get("threads", "auto"))
    found += pretrain.problems(cfg, task_cfg.name, trainer)
    if found:
        raise ConfigError("; ".join(found))
    if model["d_model"] % model["heads"]:
        raise ConfigError(f"model.d_model={model['d_model']} is not divisible by model.heads={model['heads']}; "
                          "each head gets d_model/heads dimensions: change model.heads or model.d_model")
    device = device_of(trainer.get("device", "auto"))
    autocast_dtype(trainer.get("precision", "auto"), device)
    attn = av.build(name, heads=model["heads"], head_dim=model["d_model"] // model["heads"],
                    max_length=int(task_cfg.seq_len) + 1, **knobs)
    pretrain.check_attention(cfg, attn)
    if distill_settings(cfg)["on"] and not has_feature_map(attn):
        raise ConfigError(f"attention.distill needs a non-causal kernel variant exposing feature_map "
                          f"(hedgehog, taylor, performer, linear, random_feature without gate); got attention={name}")
    check = getattr(attn, "check_length", None)
    if check is not None:
        try:
            check(int(task_cfg.seq_len) + (model.get("pooling", "cls") == "cls"))
        except ValueError as err:
            raise ConfigError(f"attention={name} cannot take task {task_cfg.name!r} at length "
                              f"{task_cfg.seq_len}: {err}") from None
    check_task_data(task_cfg)


def task_problems(task_cfg: DictConfig, source: dict[str, str] | None = None) -> list[str]:
    """The effective task config's bad values (:func:`lra.schema.problems` with the task's rules)."""
    return schema.problems(OmegaConf.to_container(task_cfg, resolve=True), schema.task_rules(task_cfg.name),
                           "task.", source)


def check_task_data(task_cfg: DictConfig) -> None:
    """Whether the task's data can exist at these settings (the task module's ``check_config``,
    e.g. enough distinct ListOps expressions of the allowed lengths); :class:`ConfigError` if not."""
    check = getattr(tasks.get(task_cfg.name), "check_config", None)
    if check is not None:
        try:
            check(task_cfg)
        except ValueError as err:
            raise ConfigError(str(err)) from None


def lr_factor(schedule: str, warmup: int, steps: int):
    """Multiplier of the base lr for optimizer step s (0-based: update s uses factor(s)).

    ``rsqrt`` and ``cosine`` are the LRA reference's ``create_learning_rate_scheduler`` factors
    (lra_benchmarks/utils/train_utils.py), evaluated at its step counter, which starts at 0 (so the
    first update has lr 0): ``constant * linear_warmup * rsqrt_decay`` = min(1, s/w) / sqrt(max(s, w));
    ``constant * linear_warmup * cosine_decay`` = min(1, s/w) * 0.5 (1 + cos(pi ((s - w)+ / steps mod 1)))
    with steps_per_cycle = the run's steps, as every LRA image config sets it. ``linear``: warm-up
    to the base lr, then linear decay to 0 (the quick trainer's). ``constant``: min(1, s/w), then
    constant (transformers' get_constant_schedule_with_warmup, the self-pretraining code's
    ``constant_warmup``). ``onecycle`` is torch's OneCycleLR, built in :func:`make_optimizer`.
    """
    w = max(warmup, 1)

    def rsqrt(s):  # LRA: constant * linear_warmup * rsqrt_decay
        return min(1.0, s / w) / math.sqrt(max(s, w))

    def linear(s):
        if s < warmup:
            return (s + 1) / warmup
        return max(0.0, (steps - s) / max(1, steps - warmup))

    def cosine(s):  # LRA: constant * linear_warmup * cosine_decay
        progress = max(0.0, (s - warmup) / max(1, steps))
        return min(1.0, s / w) * max(0.0, 0.5 * (1 + math.cos(math.pi * (progress % 1.0))))

    def constant(s):  # transformers.get_constant_schedule_with_warmup
        return s / w if s < warmup else 1.0

    return {"rsqrt": rsqrt, "linear": linear, "cosine": cosine, "constant": constant}[schedule]


# ----------------------------------------------------------------------------- training

def build_model(data: tasks.TaskData, model: dict, attention: str, knobs: dict) -> Encoder:
    encoder = Encoder(EncoderConfig(vocab_size=data.vocab_size, num_classes=data.num_classes, max_length=data.seq_len,
                                    dual=data.dual, attention=attention, attention_cfg=knobs, **model))
    if not encoder.attention_dropout_applies:
        print(f"[lra] note: model.attention_dropout={model.get('attention_dropout')} is not applied by "
              f"attention={attention} (no attention-weight hook for this variant; see lra.model.DROPOUT_BACKENDS)")
    return encoder


def make_optimizer(model: torch.nn.Module, tr: dict):
    """AdamW and its schedule: ``betas``, ``eps`` (default 1e-8), ``weight_decay`` on
    ``weight_decay_params`` (``all`` | ``matrices``: every >= 2-D tensor but position embeddings),
    ``schedule`` (a LambdaLR of :func:`lr_factor`, or torch's OneCycleLR for ``onecycle``:
    linear anneal from lr/25 up to lr over ``warmup`` steps and down to lr/25e4 at ``steps``,
    beta1 cycled 0.95 -> 0.85 -> 0.95, as the Nystromformer LRA code runs it)."""
    decay = tr.get("weight_decay", 0.0)
    if tr.get("weight_decay_params", "matrices") == "all":
        groups = [{"params": list(model.parameters()), "weight_decay": decay}]
    else:
        matrix = {id(p) for n, p in model.named_parameters() if p.dim() >= 2 and "pos" not in n}
        groups = [{"params": [p for p in model.parameters() if id(p) in matrix], "weight_decay": decay},
                  {"params": [p for p in model.parameters() if id(p) not in matrix], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=tr["lr"], betas=tuple(tr.get("betas") or (0.9, 0.98)),
                            eps=float(tr.get("eps") or 1e-8),
                            fused=next(model.parameters()).is_cuda or None)  # one fused kernel on CUDA
    steps, warmup = int(tr["steps"]), int(tr["warmup"])
    if tr["schedule"] == "onecycle":
        # OneCycleLR divides by each phase's length: both need >= 1 step, so a warm-up as long as the
        # run (a short run under a recipe's warm-up) peaks at the last-but-one step instead of failing
        peak = min(warmup, steps - 1)
        if peak < warmup:
            print(f"[lra] trainer.warmup={warmup} >= trainer.steps={steps}: the one-cycle schedule peaks at step {peak}")
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tr["lr"], total_steps=steps,
                                                    pct_start=peak / steps, anneal_strategy="linear")
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(tr["schedule"], warmup, steps))
    return opt, sched


def bucketing_of(tr: dict, data: tasks.TaskData, model: Encoder, attention: str) -> tuple[bool, str]:
    """Whether this run buckets by length, and why (:func:`lra.bucketing.choose` on the built model)."""
    return bucketing.choose(tr.get("bucketing", "auto"), pad_id=data.pad_id, variant=attention,
                            attention_module=model.blocks[0].attn.attention, pooling=model.cfg.pooling,
                            pool_masked=model.cfg.pool_masked, cls_last=model.causal)


class TrainStep:
    """The body of the training loop: :func:`train` runs it, and so does ``lra-bench``'s
    ``train_overhead`` mode, so that what the benchmark times cannot drift from the real loop.

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
    """

    def __init__(self, model: torch.nn.Module, step_fn, opt, sched, batches: DeviceBatches,
                 amp: torch.dtype | None, grad_clip: float | None, aux_loss: Callable[[], torch.Tensor] | None = None):
        self.model, self.step_fn, self.opt, self.sched, self.batches = model, step_fn, opt, sched, batches
        self.amp, self.grad_clip = amp, grad_clip
        self.aux_loss = aux_loss  # added to the task loss after the forward (attention distillation)
        self.device = batches.labels.device
        self.bad_step = torch.full((), -1, dtype=torch.long, device=self.device)
        self.loss_sum = torch.zeros((), device=self.device)
        self.correct_sum = torch.zeros((), device=self.device)
        self.seen, self.last_batch = 0, 1

    def _forward_backward(self, x, mask, y):
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            logits = self.step_fn(x, mask)
        loss = F.cross_entropy(logits.float(), y)
        total = loss if self.aux_loss is None else loss + self.aux_loss()
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        return logits, loss, total

    def __call__(self, step: int) -> None:
        device = self.device
        x, mask, y = self.batches.batch(step)
        if isinstance(self.step_fn, CompiledModel) and self.step_fn.active:
            rng = _rng_state(device)
            try:
                logits, loss, total = self._forward_backward(x, mask, y)
            except Exception as err:  # noqa: BLE001 - any failure of the compiled code: redo eagerly
                if is_oom(err):
                    raise
                self.step_fn.fall_back(err)
                _set_rng_state(rng, device)
                logits, loss, total = self._forward_backward(x, mask, y)
        else:
            logits, loss, total = self._forward_backward(x, mask, y)
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.opt.step()
        self.sched.step()
        self.bad_step = torch.where((self.bad_step < 0) & ~torch.isfinite(total.detach()),
                                    torch.tensor(step, device=device), self.bad_step)
        self.loss_sum += loss.detach()
        self.correct_sum += (logits.detach().argmax(-1) == y).sum()
        self.seen += len(y)
        self.last_batch = len(y)

    def boundary(self) -> tuple[int, tuple[float, float] | None]:
        """(first step with a non-finite loss or -1, (mean loss, accuracy) since the last
        boundary, or None when a loss was non-finite); resets the running sums."""
        bad, loss_sum, correct = torch.stack([self.bad_step.float(), self.loss_sum, self.correct_sum.float()]
                                             ).tolist()  # the one host sync
        first_bad = int(bad)
        if first_bad >= 0:
            return first_bad, None
        window = (loss_sum / max(1, self.seen / self.last_batch), correct / max(1, self.seen))
        self.loss_sum.zero_(), self.correct_sum.zero_()
        self.seen = 0
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


def _rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_checkpoint(path: Path, **state) -> None:
    tmp = path.with_name(f".{path.name}.part")
    torch.save(state, tmp)
    os.replace(tmp, path)


class Preempted(Exception):
    """SIGTERM/SIGUSR1 arrived: checkpoint written, the job can be resubmitted."""


def train(cfg: DictConfig, job_dir: Path) -> dict[str, Any]:
    """Train + evaluate one run; returns the result record (also written to the job dir).

    Raises only for invalid configs/data (:class:`ConfigError`, ``tasks.DataNotFoundError``,
    ``ValueError``) before training starts; everything after is captured in the record.
    """
    started = now()
    validate(cfg)
    task_cfg, model_kw, tr, knobs = resolve(cfg)
    spt = pretrain.settings(cfg, task_cfg.name, tr)  # None: trained from scratch
    model_kw, tr = pretrain.finetune_settings(spt, model_kw, tr)
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
    steps = int(tr["steps"])
    opt, sched = make_optimizer(model, tr)
    bucket_on, bucket_why = bucketing_of(tr, data, model, cfg.attention.name)
    print(f"[lra] length bucketing {bucket_why}")
    batching = dict(bucket_multiple=int(tr.get("bucket_multiple") or bucketing.DEFAULT_MULTIPLE) if bucket_on else None,
                    bucket_window=int(tr.get("bucket_window") or bucketing.DEFAULT_WINDOW))
    train_b = DeviceBatches(*data.splits["train"], tr["batch_size"], device, data.pad_id, shuffle=True, seed=cfg.seed,
                            **batching)
    val_b = DeviceBatches(*data.splits["val"], tr["batch_size"], device, data.pad_id, shuffle=False, **batching)
    test_b = DeviceBatches(*data.splits["test"], tr["batch_size"], device, data.pad_id, shuffle=False, **batching)
    step_fn = CompiledModel(model, mode=tr.get("compile_mode") or "auto", backend=tr.get("compile_backend") or "inductor",
                            device=device) if tr.get("compile") else model

    if train_b.batch_size != int(tr["batch_size"]):
        print(f"[lra] trainer.batch_size={tr['batch_size']} exceeds the {len(data.splits['train'][1])} training "
              f"examples: batches of {train_b.batch_size}")
    config = effective_config(cfg, model.cfg, batch_size=train_b.batch_size)
    config["pretrain"] = spt or {"objective": "none"}
    config["trainer"]["bucketing"] = bucket_on  # what ran (the setting may say auto)
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
    step, train_time, history, best_val = 0, 0.0, [], 0.0
    if ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        step, train_time, history, best_val = ckpt["step"], ckpt["train_time"], ckpt["history"], ckpt["best_val"]
        _set_rng_state(ckpt["rng"], device)
        print(f"[lra] resuming {job_dir} from step {step}")

    def checkpoint():
        save_checkpoint(ckpt_path, model=model.state_dict(), optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                        step=step, train_time=train_time, history=history, best_val=best_val, rng=_rng_state(device))

    signals = PreemptionSignals()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train_step = TrainStep(model, step_fn, opt, sched, train_b, amp, tr.get("grad_clip"),
                           aux_loss=distiller.loss if distiller else None)
    last_window = None
    log_every = max(1, int(tr.get("log_every", 50)))
    status, message = "ok", None
    model.train()
    bar = tqdm(total=steps, initial=step, desc=f"{data.name}/{cfg.attention.name}", unit="step",
               disable=not tr.get("progress", True), dynamic_ncols=True)
    t0 = time.perf_counter()
    try:
        while step < steps:
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
                bar.set_postfix(loss=f"{window[0]:.3f}", acc=f"{window[1]:.3f}",
                                lr=f"{sched.get_last_lr()[0]:.2e}")
            eval_now = step % int(tr.get("eval_every", 500)) == 0 and step < steps
            ckpt_now = step % int(tr.get("checkpoint_every", 500)) == 0 or signals.received is not None
            if eval_now or ckpt_now:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                train_time += time.perf_counter() - t0
                if eval_now:
                    val_acc, val_loss = evaluate(model, val_b, amp, tr.get("eval_batches"))
                    best_val = max(best_val, val_acc)
                    history.append({"step": step, "val_accuracy": val_acc, "val_loss": val_loss,
                                    # training loss / accuracy over the last log_every steps
                                    **({"train_loss": last_window[0], "train_accuracy": last_window[1]}
                                       if last_window else {}),
                                    # per layer, mean over heads and the steps since the last evaluation
                                    **({"distill_loss": distiller.window()} if distiller else {})})
                    train_part = f" train_loss {last_window[0]:.4f}" if last_window else ""
                    bar.write(f"[lra] step {step}:{train_part} val_accuracy {val_acc:.4f} val_loss {val_loss:.4f}")
                if ckpt_now:
                    checkpoint()
                if signals.received is not None:
                    signals.hand_over(f"at step {step}; checkpoint written to {ckpt_path}")
                t0 = time.perf_counter()
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
    if status == "ok":
        checkpoint()
        metrics["val_accuracy"], metrics["val_loss"] = evaluate(model, val_b, amp)
        metrics["accuracy"], metrics["loss"] = evaluate(model, test_b, amp)
        metrics["best_val_accuracy"] = max(best_val, metrics["val_accuracy"])
    if status == "ok":
        status, message = _trained_and_evaluated(metrics)
    speed, case = throughput_facts(train_b, step, train_time, {"on": bucket_on, "reason": bucket_why, **batching},
                                   step_fn, {"jobs_per_gpu": jobs_per_gpu, "gpu": device.index}
                                   if packed else None)
    metrics.update(speed)
    if device.type == "cuda":
        metrics["peak_mem_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    metrics["params"] = sum(p.numel() for p in model.parameters())
    backend = getattr(model.blocks[0].attn.attention, "last_backend", None)
    case = {"history": history, **({"backend": backend} if backend else {}),
            **({"distill_loss_layers": distill_layers} if distill_layers else {}), **case}
    if spt_result is not None:
        metrics.update(pretrain.metrics(spt_result))
        case["pretrain"] = spt_result
    return make_record("train", status=status, message=message, metrics=metrics, case=case, **base)


def throughput_facts(train_b: DeviceBatches, steps: int, train_time: float, bucket: dict, step_fn,
                     packed: dict | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metrics, case entries) saying what the run's steps processed and how fast.

    Metrics: ``padded_fraction`` of the positions computed, and (unless ``packed``) ``steps_per_s``,
    ``tokens_per_s`` (positions computed, padding included) and ``real_tokens_per_s``. Case:
    ``bucketing`` (on, why, the batch lengths used, ``padded_fraction_unbucketed``: the same examples at
    the task's length), ``compile`` (:meth:`lra.compiled.CompiledModel.facts`, or off) and, for a job
    that shared its GPU (``packed``: jobs_per_gpu, gpu), ``packed`` with the speed figures instead:
    jobs sharing a GPU time each other's load, so those are no speed result.
    """
    positions, real, shapes = train_b.token_counts(steps) if steps else (0, 0, set())
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
            1 - real / (steps * train_b.batch_size * train_b.positions_per_example), 4)
    case["compile"] = step_fn.facts() if isinstance(step_fn, CompiledModel) else {"status": "off"}
    if packed is None:
        metrics.update(speed)
    else:
        case["packed"] = {**packed, **speed, "note": "measured while sharing the GPU with other jobs: not a speed result"}
    return metrics, case


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


class PreemptionSignals:
    """SIGTERM / SIGUSR1 / SIGUSR2 (SLURM preemption, submitit's timeout signal) during a training
    loop: installed on construction (main thread only), they only set :attr:`received`; the loop
    finishes its step, writes a checkpoint, then calls :meth:`hand_over`. :meth:`restore` puts the
    previous handlers back (the loop's ``finally``)."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)

    def __init__(self):
        self.received: int | None = None
        self.previous = {s: signal.signal(s, self._on_signal) for s in self.SIGNALS if _main_thread()}

    def _on_signal(self, signum, _frame) -> None:
        self.received = signum

    def hand_over(self, where: str) -> None:
        """Call the previous handler (e.g. submitit: requeue the job, which resumes from the
        checkpoint), then raise :class:`Preempted` saying ``where``."""
        previous = self.previous.get(self.received)
        if callable(previous):
            previous(self.received, None)
        raise Preempted(f"signal {self.received} {where}")

    def restore(self) -> None:
        for s, h in self.previous.items():
            signal.signal(s, h)


def loop_failure(err: RuntimeError, where: str) -> tuple[str, str]:
    """The record's ``(status, message)`` for an error that ended a training loop ``where``
    (e.g. "step 12"): ``oom`` (:func:`lra.timing.is_oom`) or ``error`` with a short traceback."""
    if is_oom(err):
        return "oom", f"out of memory at {where}: {str(err).splitlines()[0]}"
    return "error", f"{type(err).__name__} at {where}: {err}\n{traceback.format_exc(limit=4)}"


def _trained_and_evaluated(metrics: dict[str, Any]) -> tuple[str, str | None]:
    """``("ok", None)`` if the run trained (steps > 0) and evaluated (finite accuracies), else
    ``("error", why)``: a run that did neither is not a result."""
    if not metrics.get("steps"):
        return "error", "did not train: 0 optimizer steps ran"
    bad = [k for k in ("val_accuracy", "accuracy") if not isinstance(metrics.get(k), float)
           or not math.isfinite(metrics[k])]
    if bad:
        return "error", f"did not evaluate: {', '.join(f'{k} = {metrics.get(k)}' for k in bad)}"
    return "ok", None


# ----------------------------------------------------------------------------- the record's configuration

def effective_config(cfg: DictConfig, model_cfg: EncoderConfig | None = None,
                     batch_size: int | None = None) -> dict[str, Any]:
    """The configuration a run uses, as its record states it: after the recipe, the trainer
    preset (``trainer=quick``'s ``task_overrides``/``model_overrides``) and command-line
    overrides. ``task``: the task config with the overrides applied (its ``model``/``trainer``/
    ``recipes`` blocks are folded into the other groups); ``model``: the encoder's config
    (``model_cfg``, the built model's, else the resolved values); ``trainer``: the resolved
    trainer settings (``batch_size``: the one used, when the data forced a smaller one);
    ``attention``: ``name`` and every field of the variant's config dataclass
    (:func:`lra.results.variant_config`; ``seed`` is the base seed, layer l uses seed*1009 + l).
    """
    import dataclasses  # noqa: PLC0415

    task_cfg, model, trainer, knobs = resolve(cfg)
    task = {k: v for k, v in OmegaConf.to_container(task_cfg, resolve=True).items()
            if k not in ("model", "trainer", "recipes")}
    if model_cfg is not None:
        model = {k: v for k, v in dataclasses.asdict(model_cfg).items() if k not in ("attention", "attention_cfg")}
    if batch_size is not None:
        trainer = {**trainer, "batch_size": batch_size}
    name = str(cfg.attention.name)
    heads, d_model = int(model["heads"]), int(model["d_model"])
    max_length = int(task["seq_len"]) + (model.get("pooling", "cls") == "cls")
    try:
        attention = variant_config(name, heads=heads, head_dim=d_model // heads, max_length=max_length,
                                   **{**knobs, "seed": int(cfg.seed)})
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        attention = dict(knobs)
    return {"task": task, "model": model, "trainer": trainer, "attention": {"name": name, **attention},
            "recipe": cfg.get("recipe") or "lra", "seed": cfg.get("seed"), "threads": cfg.get("threads", "auto"),
            "results_dir": cfg.get("results_dir")}


def _recorded_config(cfg: DictConfig) -> dict[str, Any]:
    """The effective configuration where it can be resolved, else the composed one (a config
    error can make resolving impossible)."""
    try:
        return effective_config(cfg)
    except Exception:  # noqa: BLE001
        return {"composed": OmegaConf.to_container(cfg, resolve=False)}


def explicit_beats_presets(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The rule for command-line values and presets: an explicit ``task.<key>=value`` beats
    the trainer preset's ``trainer.task_overrides.<key>`` (``lra-train trainer=quick
    task.seq_len=64`` trains at 64, not quick's 128). ``model.<key>=value`` already wins over
    ``trainer.model_overrides`` (:func:`resolve` applies ``model`` last); values set directly in
    ``trainer.task_overrides.<key>=...`` on the command line stay. Returns a copy without the
    overruled preset entries and says which it dropped."""
    from hydra.core.override_parser.overrides_parser import OverridesParser  # noqa: PLC0415
    from omegaconf import open_dict  # noqa: PLC0415

    preset = dict(cfg.trainer.get("task_overrides") or {})
    if not preset or not overrides:
        return cfg
    keys = []
    for o in OverridesParser.create().parse_overrides(list(overrides)):
        if not o.is_delete():
            keys.append(o.key_or_group)
    explicit_task = {k.split(".", 1)[1] for k in keys if k.startswith("task.") and k.count(".") == 1}
    explicit_preset = {k.rsplit(".", 1)[1] for k in keys if k.startswith("trainer.task_overrides.")}
    drop = sorted((explicit_task & set(preset)) - explicit_preset)
    if not drop:
        return cfg
    cfg = cfg.copy()
    with open_dict(cfg):
        for key in drop:
            print(f"[lra] task.{key}={cfg.task[key]} from the command line replaces the trainer preset's "
                  f"trainer.task_overrides.{key}={preset[key]}")
            del cfg.trainer.task_overrides[key]
    return cfg


# ----------------------------------------------------------------------------- running

def run(cfg: DictConfig, job_dir: Path, raise_config_errors: bool = True,
        cli_overrides: list[str] | None = None) -> dict[str, Any]:
    """Run one job in ``job_dir``: train (or resume), write the record, never lose it.

    ``cli_overrides``: the command line's overrides (``lra-train`` passes Hydra's); an explicit
    ``task.<key>`` among them beats a trainer preset's override (:func:`explicit_beats_presets`),
    and the record keeps them (``config.command_line``).
    A job whose record already says ``ok`` is not run again (a resubmitted finished job).
    Config and data errors raise when ``raise_config_errors`` (single runs) and are recorded
    as status ``error`` otherwise (sweeps go on).
    """
    job_dir.mkdir(parents=True, exist_ok=True)
    existing = read_record(job_dir / RECORD_FILENAME) if (job_dir / RECORD_FILENAME).is_file() else None
    if existing and existing.get("status") == "ok":
        print(f"[lra] {job_dir} already finished; record at {job_dir / RECORD_FILENAME}")
        return existing
    cfg = explicit_beats_presets(cfg, cli_overrides or [])

    def failed(message: str) -> dict[str, Any]:
        return make_record("train", variant=str(cfg.attention.get("name")), task=str(cfg.task.get("name")),
                           status="error", message=message, seed=cfg.get("seed"), config=_recorded_config(cfg))

    try:
        record = train(cfg, job_dir)
    except Preempted:
        raise
    except (ConfigError, tasks.DataNotFoundError, ValueError, KeyError, TypeError) as err:
        if raise_config_errors:
            raise
        record = failed(f"{type(err).__name__}: {err}")
    except Exception as err:  # a bug: record it so that the sweep goes on
        record = failed(f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=6)}")
    if cli_overrides is not None:
        record["config"]["command_line"] = list(cli_overrides)
    path = write_record(record, job_dir / RECORD_FILENAME)
    if cfg.get("results_dir"):
        write_record(record, f"{cfg.results_dir}/")  # a folder, created if missing
    m = record["metrics"]
    summary = ", ".join(f"{k} {m[k]:.4f}" if isinstance(m.get(k), float) else f"{k} {m[k]}"
                        for k in ("val_accuracy", "accuracy", "steps_per_s", "peak_mem_mb") if k in m)
    print(f"[lra] {record['task']}/{record['variant']}: status {record['status']}"
          f"{' (' + record['message'].splitlines()[0] + ')' if record['message'] else ''}; {summary}")
    print(f"[lra] result record: {path}")
    return record
