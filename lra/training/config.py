"""The effective configuration of a training run: layering, validation, and what the record states.

* Layering (:func:`resolve`): the recipe's settings shared by every task, the task's blocks for
  the recipe (:func:`recipe_of`), the trainer preset, then the command line; later layers win and
  ``null`` means "not set" (:func:`merge_layers`). An explicit ``task.<key>=...`` on the command
  line beats a trainer preset's ``trainer.task_overrides.<key>`` (:func:`explicit_beats_presets`).
* Self-pretraining settings (``pretrain=mlm|causal``): :func:`pretrain_settings`,
  :func:`finetune_settings`, their check :func:`pretrain_problems`.
* Causal attention where a run predicts tokens (:func:`causal_reason`): token-level tasks (MQAR,
  text_lm) and ``pretrain=causal`` switch ``causal`` on for every variant that can be causal
  (:func:`resolve`); where only causal attention can do the job (text_lm, ``pretrain=causal``) a
  variant that cannot is refused with the causal variants (:func:`check_causal_attention`).
* Validation (:func:`validate`): every value of the effective configuration against its valid
  range (tables in :mod:`lra.schema`) before any data is prepared; one :class:`ConfigError`
  names every bad value.
* Where and how it runs: :func:`device_of`, :func:`autocast_dtype`.
* The record's ``config`` (:func:`effective_config`).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict

import attention_variants as av

from .. import schema, tasks
from ..devices import acquire_free_gpu, acquire_gpu_slot
from ..distill import has_feature_map
from ..model import EncoderConfig, patch_sizes
from ..results import variant_config
from ..schema import OBJECTIVES, ConfigError
from .curves import logger_problems

#: the attention-distillation training options under ``attention.`` (conf/train.yaml)
DISTILL_KEYS = ("distill", "distill_queries")
#: the pretraining knobs a run with objective mlm/causal must have after resolving
PRETRAIN_REQUIRED = ("steps", "batch_size", "lr", "schedule", "warmup", "weight_decay", "betas", "eps",
                     "weight_decay_params", "select", "budget", "eval_every", "checkpoint_every")


# ----------------------------------------------------------------------------- layering

def merge_layers(*layers) -> dict[str, Any]:
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
    trainer = merge_layers(shared.get("trainer"), recipe.get("trainer"),
                           {k: v for k, v in cfg.trainer.items()
                            if k not in ("task_overrides", "model_overrides", "pretrain_overrides")})
    _check_trainer(trainer)
    knobs = merge_layers(cfg.attention)
    for key in ("name", *DISTILL_KEYS):  # training options, not the variant's knobs
        knobs.pop(key, None)
    if causal_reason(cfg, task_cfg.name) is not None and _can_be_causal(str(cfg.attention.name)):
        knobs["causal"] = True
    return task_cfg, model, trainer, knobs


def causal_reason(cfg: DictConfig, task: str) -> str | None:
    """Why this run wants causal attention (None: it does not): a token-level task (MQAR, text_lm)
    predicts tokens, and so does ``pretrain=causal``. :func:`resolve` then sets ``causal=True`` for
    every variant that supports it; the others run bidirectionally (MQAR) or are refused
    (:func:`check_causal_attention`)."""
    if pretrain_objective(cfg) == "causal":
        return "pretrain=causal predicts each next token"
    if tasks.needs_causal(task):
        return f"task={task} predicts each next token"
    if tasks.target_of(task) == "token":
        return f"task={task} predicts tokens"
    return None


def _can_be_causal(name: str) -> bool:
    try:
        return bool(av.get(name)[0].supports_causal)
    except KeyError:  # an unknown variant: validate() says so
        return False


def model_settings(cfg: DictConfig, task_cfg: DictConfig, *later) -> dict[str, Any]:
    """The encoder settings of ``cfg``'s recipe for its task (see :func:`resolve`): the recipe's
    ``recipe_defaults.model``, the task's block for the recipe (:func:`recipe_of`), then ``later``
    layers (``null`` = not set); ``mask_zero_tokens`` from ``task_cfg``."""
    model = merge_layers((cfg.get("recipe_defaults") or {}).get("model"), recipe_of(cfg).get("model"), *later)
    model["mask_zero_tokens"] = bool(task_cfg.get("mask_zero_tokens") or False)
    return model


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


def explicit_beats_presets(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The rule for command-line values and presets: an explicit ``task.<key>=value`` beats
    the trainer preset's ``trainer.task_overrides.<key>`` (``lra-train trainer=quick
    task.seq_len=64`` trains at 64, not quick's 128). ``model.<key>=value`` already wins over
    ``trainer.model_overrides`` (:func:`resolve` applies ``model`` last); values set directly in
    ``trainer.task_overrides.<key>=...`` on the command line stay. Returns a copy without the
    overruled preset entries and says which it dropped."""
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


# ----------------------------------------------------------------------------- self-pretraining settings

def pretrain_objective(cfg: DictConfig) -> str:
    """``pretrain.objective``: ``none`` (the LRA protocol, trained from scratch), ``mlm`` or ``causal``."""
    pre = cfg.get("pretrain")
    return "none" if pre is None else str(pre.get("objective", "none"))


def pretrain_settings(cfg: DictConfig, task: str, trainer: dict) -> dict[str, Any] | None:
    """The effective pretraining settings of a run, or None for ``pretrain=none``.

    Later layers win (``null`` = not set): ``pretrain.shared``, ``pretrain.tasks.<task>``, the trainer
    preset's ``trainer.pretrain_overrides``, then ``pretrain.<key>`` (the command line).
    ``eval_every``/``eval_batches``/``checkpoint_every`` default to the trainer's. Adds
    ``finetune_steps``: ``trainer.steps`` (``budget=extra``) or ``trainer.steps - steps`` (``shared``).
    """
    if pretrain_objective(cfg) == "none":
        return None
    pre = cfg.pretrain
    given = {k: v for k, v in pre.items() if k not in ("shared", "tasks")}
    out = merge_layers(pre.get("shared"), (pre.get("tasks") or {}).get(task), cfg.trainer.get("pretrain_overrides"),
                       given)
    for key in ("eval_every", "eval_batches", "checkpoint_every"):
        if out.get(key) is None:
            out[key] = trainer.get(key)
    out.setdefault("eval_batches", None)
    if out.get("objective") == "causal":
        out.pop("mask_rate", None)
    if isinstance(out.get("steps"), int) and isinstance(trainer.get("steps"), int):
        out["finetune_steps"] = trainer["steps"] - out["steps"] if out.get("budget") == "shared" else trainer["steps"]
    return out


def pretrain_problems(cfg: DictConfig, task: str, trainer: dict) -> list[str]:
    """The pretraining settings' bad values (as :func:`lra.schema.problems`), [] for pretrain=none."""
    objective = pretrain_objective(cfg)
    if objective not in OBJECTIVES:
        return [f"pretrain.objective={objective!r} is not one of {', '.join(OBJECTIVES)}; fix: pretrain=mlm"]
    spt = pretrain_settings(cfg, task, trainer)
    if spt is None:
        return []
    required = PRETRAIN_REQUIRED + (("mask_rate",) if objective == "mlm" else ())
    found = [f"pretrain.{key} is not set and task {task!r} has no default for it (conf/pretrain/mlm.yaml "
             f"`tasks.{task}`); set pretrain.{key}=..." for key in required if spt.get(key) is None]
    found += schema.problems(spt, schema.PRETRAIN, "pretrain.")
    if not found and spt["finetune_steps"] < 1:
        found.append(f"pretrain.budget=shared leaves trainer.steps={trainer['steps']} - pretrain.steps="
                     f"{spt['steps']} = {spt['finetune_steps']} fine-tuning steps; fix: pretrain.steps below "
                     f"trainer.steps, or pretrain.budget=extra")
    return found


def check_causal_attention(cfg: DictConfig, task: str, attention) -> None:
    """``pretrain=causal`` and the tasks that only causal attention can do (``NEEDS_CAUSAL``: text_lm)
    need a built ``attention`` whose queries see no later position, else the next token is in view:
    :class:`ConfigError` with the variant's reason and the causal variants."""
    needed = pretrain_objective(cfg) == "causal" or tasks.needs_causal(task)
    if not needed or getattr(attention, "causal", False):
        return
    name, causal = str(cfg.attention.name), av.available(causal=True)
    try:
        av.check_causal(name, True)
        refusal = f"attention={name} is bidirectional here. Causal variants: {', '.join(causal)}"
    except ValueError as err:  # names `causal`, the variant's reason and the causal variants
        refusal = str(err).rstrip(".")
    gated = "" if "random_feature" in causal else " (and random_feature with attention.gate=true, causal by construction)"
    raise ConfigError(f"{causal_reason(cfg, task)}, which needs causal attention (a query sees no later position): "
                      f"{refusal}{gated}. Choose one with attention=<name>"
                      + ("; or pretrain=mlm" if pretrain_objective(cfg) == "causal" else ""))


def token_task_problems(cfg: DictConfig, task: str, trainer: dict) -> list[str]:
    """What a token-level task (:func:`lra.tasks.target_of`) cannot run with: self-pretraining (it
    trains its token head from scratch), a compiled step (the labelled positions change the shapes),
    and ``trainer.lr_sweep_skip`` without ``trainer.stop_at_val_accuracy`` (any task)."""
    found = []
    if trainer.get("lr_sweep_skip") and trainer.get("stop_at_val_accuracy") is None:
        found.append("trainer.lr_sweep_skip=true skips the learning rates of a cell once one reached "
                     "trainer.stop_at_val_accuracy, which is not set; fix: trainer.stop_at_val_accuracy=0.99")
    if tasks.target_of(task) != "token":
        return found
    if pretrain_objective(cfg) != "none":
        found.append(f"pretrain={pretrain_objective(cfg)} is for the classification tasks; task={task} trains its "
                     "token head from scratch; fix: pretrain=none")
    if trainer.get("compile"):
        found.append(f"trainer.compile=true is not supported for task={task} (the labelled positions change the "
                     "shapes of every batch); fix: trainer.compile=false")
    return found


def patch_problems(cfg: DictConfig, task_cfg: DictConfig, model: dict, trainer: dict) -> list[str]:
    """What ``model.patch`` > 1 (patches of pixels as tokens, :meth:`lra.model.Encoder.patch_tokens`)
    cannot run with: a task that is not a square image, an image side it does not divide, masked
    self-pretraining (it predicts single pixels) and length bucketing (it would cut an image)."""
    patch = model.get("patch") or 1
    if not isinstance(patch, int) or patch <= 1:
        return []
    name, found = task_cfg.name, []
    if not tasks.is_image(name):
        images = [t for t in tasks.TASKS if tasks.is_image(t)]
        return [f"model.patch={patch} groups the pixels of an image task ({', '.join(images)}); task={name} is not "
                "one; fix: model.patch=1"]
    side = math.isqrt(int(task_cfg.seq_len))
    if side % patch:
        found.append(f"model.patch={patch} does not divide the image side {side} (task.seq_len={task_cfg.seq_len}); "
                     f"valid patch sizes: {patch_sizes(side)}")
    if pretrain_objective(cfg) == "mlm":
        found.append(f"model.patch={patch} with pretrain=mlm: masked pretraining predicts single pixels; fix: "
                     "model.patch=1 or pretrain=none")
    if trainer.get("bucketing") is True:
        found.append(f"model.patch={patch} with trainer.bucketing=true: a bucketed batch would cut the image; "
                     "fix: trainer.bucketing=false")
    return found


def finetune_settings(spt: dict | None, model: dict, trainer: dict) -> tuple[dict, dict]:
    """The model and trainer settings of the fine-tuning model: with masked pretraining the encoder
    carries the [MASK] embedding row (unused when fine-tuning); ``budget=shared`` shortens
    ``trainer.steps`` to the steps pretraining left."""
    if spt is None:
        return model, trainer
    return {**model, "mask_token": spt["objective"] == "mlm"}, {**trainer, "steps": spt["finetune_steps"]}


# ----------------------------------------------------------------------------- where it runs

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
        if not acquire:
            return torch.device("cuda")
        return acquire_free_gpu() if setting == "exclusive" else acquire_gpu_slot(jobs_per_gpu)
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={setting!r} but no CUDA GPU is visible; use trainer.device=auto or cpu")
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``trainer.precision`` on ``device`` (None: fp32, no autocast)."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp32":
        return None
    raise ConfigError(f"trainer.precision={precision!r} is not one of auto, bf16, fp32")


# ----------------------------------------------------------------------------- validation

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
    except (KeyError, TypeError, ValueError) as err:  # unknown variant or knob, causal=True refused
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
    found += logger_problems(cfg.get("logger", "none"))
    found += pretrain_problems(cfg, task_cfg.name, trainer)
    found += token_task_problems(cfg, task_cfg.name, trainer)
    found += patch_problems(cfg, task_cfg, model, trainer)
    if found:
        raise ConfigError("; ".join(found))
    if model["d_model"] % model["heads"]:
        raise ConfigError(f"model.d_model={model['d_model']} is not divisible by model.heads={model['heads']}; "
                          "each head gets d_model/heads dimensions: change model.heads or model.d_model")
    device = device_of(trainer.get("device", "auto"))
    autocast_dtype(trainer.get("precision", "auto"), device)
    tokens = int(task_cfg.seq_len) // (model.get("patch") or 1) ** 2  # positions the blocks see
    attn = av.build(name, heads=model["heads"], head_dim=model["d_model"] // model["heads"],
                    max_length=tokens + 1, **knobs)
    check_causal_attention(cfg, task_cfg.name, attn)
    if distill_settings(cfg)["on"] and not has_feature_map(attn):
        raise ConfigError(f"attention.distill needs a non-causal kernel variant exposing feature_map "
                          f"(hedgehog, taylor, performer, linear, random_feature without gate); got attention={name}")
    check = getattr(attn, "check_length", None)
    if check is not None:
        try:
            check(tokens + (model.get("pooling", "cls") == "cls"))
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
    task_cfg, model, trainer, knobs = resolve(cfg)
    task = {k: v for k, v in OmegaConf.to_container(task_cfg, resolve=True).items()
            if k not in ("model", "trainer", "recipes")}
    if model_cfg is not None:
        model = {k: v for k, v in dataclasses.asdict(model_cfg).items() if k not in ("attention", "attention_cfg")}
    if batch_size is not None:
        trainer = {**trainer, "batch_size": batch_size}
    if isinstance(trainer.get("batch_size"), int) and isinstance(trainer.get("accumulate", 1), int):
        # examples per optimizer step (trainer.accumulate micro-batches of batch_size)
        trainer["effective_batch_size"] = trainer["batch_size"] * trainer.get("accumulate", 1)
    name = str(cfg.attention.name)
    heads, d_model = int(model["heads"]), int(model["d_model"])
    max_length = int(task["seq_len"]) + (model.get("pooling", "cls") == "cls")
    try:
        attention = variant_config(name, heads=heads, head_dim=d_model // heads, max_length=max_length,
                                   **{**knobs, "seed": int(cfg.seed)})
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        attention = dict(knobs)
    return {"task": task, "model": model, "trainer": trainer, "attention": {"name": name, **attention},
            "recipe": cfg.get("recipe") or "lra", "protocol": cfg.get("protocol"), "seed": cfg.get("seed"),
            "threads": cfg.get("threads", "auto"), "logger": cfg.get("logger", "none"),
            "results_dir": cfg.get("results_dir")}
