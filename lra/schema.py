"""Valid values of every config value a run uses, checked once before any work.

One table per config group (:data:`TASK`, :data:`MODEL`, :data:`TRAINER`, :data:`RUN` for
``lra-train``; :data:`BENCH` for ``lra-bench``'s grid, and each bench mode's section in that
mode's module; :data:`KNOBS` for the attention variants' knobs), each a list of :class:`Rule`
(key, type, range or choices, what the value means).
:func:`check` applies a table to a dict of *effective* values (after recipes, presets and
command-line overrides) and raises one :class:`ConfigError` that names every bad value, the
constraint it breaks and how to fix it, e.g.::

    task.seq_len=0 is invalid: it must be an integer >= 1 (sequence length in tokens);
    fix: task.seq_len=128

Values the table does not list pass through (the task modules and the variants still check
what only they can know, such as a file layout); cross-field rules (``d_model`` divisible by
``heads``) live in the callers, next to the values they combine.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any, Iterable

from omegaconf import OmegaConf

from . import model as _model
from .compiled import MODES as COMPILE_MODES


class ConfigError(ValueError):
    """A configuration that cannot work; raised before any data is prepared or model built."""


@dataclass(frozen=True)
class Rule:
    """One config value: ``kind`` is ``int``, ``float``, ``bool``, ``str`` or ``ints`` (a
    non-empty list of ints, or one int); ``low``/``high`` bound numbers (``open_low``/
    ``open_high``: strict); ``choices`` lists the valid strings (a ``str`` rule may list booleans
    too: ``auto | true | false``); ``optional``: ``null`` is
    allowed (it means "default" or "off"); ``means`` says what the value is; ``example`` is a
    valid value for the fix."""

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    choices: tuple[Any, ...] = ()
    optional: bool = False
    means: str = ""
    example: Any = None
    length: int | None = None  # ``floats``: the list's length

    def constraint(self) -> str:
        """What a valid value is, e.g. "an integer >= 1 (sequence length in tokens)"."""
        if self.choices:
            text = "one of " + ", ".join(str(c).lower() if isinstance(c, bool) else str(c) for c in self.choices)
        elif self.kind == "bool":
            text = "true or false"
        else:
            noun = {"int": "an integer", "float": "a number", "ints": "an integer", "floats": "a number",
                    "str": "a string"}[self.kind]
            bounds = []
            if self.low is not None:
                bounds.append(f"{'>' if self.open_low else '>='} {_fmt(self.low)}")
            if self.high is not None:
                bounds.append(f"{'<' if self.open_high else '<='} {_fmt(self.high)}")
            text = noun + (" " + " and ".join(bounds) if bounds else "")
        if self.optional:
            text = "null or " + text
        return text + (f" ({self.means})" if self.means else "")

    def problem(self, value: Any) -> str | None:
        """None if ``value`` is valid, else a sentence saying what is wrong (without the key)."""
        if value is None:
            return None if self.optional else f"is not set: it must be {self.constraint()}"
        if self.kind == "floats":
            if not isinstance(value, (list, tuple)) or (self.length is not None and len(value) != self.length) \
                    or not all(self._ok(v, "float") for v in value):
                count = f"a list of {self.length} numbers" if self.length else "a list of numbers"
                return f"is invalid: it must be {count}, each {self.constraint()}"
            return None
        if self.kind == "ints":
            if not isinstance(value, (list, tuple)):
                return None if self._ok(value, "int") else f"is invalid: it must be {self.constraint()}"
            values = value
            if not values:
                return f"is empty: give at least one value, each {self.constraint()}"
            bad = [v for v in values if not self._ok(v, "int")]
            if not bad:
                return None
            return (f"is invalid ({_fmt_list(bad)} {'is' if len(bad) == 1 else 'are'} not valid): "
                    f"each value must be {self.constraint()}")
        return None if self._ok(value, self.kind) else f"is invalid: it must be {self.constraint()}"

    def _ok(self, value: Any, kind: str) -> bool:
        if kind == "bool":
            return isinstance(value, bool)
        if kind == "str":  # choices may hold booleans too (auto | true | false)
            return (isinstance(value, str) or (isinstance(value, bool) and bool(self.choices))) \
                and (not self.choices or value in self.choices)
        if self.choices:
            return value in self.choices and not isinstance(value, bool)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if kind == "int" and not (isinstance(value, int) or float(value).is_integer()):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.open_high else value > self.high):
            return False
        return True


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _fmt_list(values: Iterable[Any]) -> str:
    return ", ".join(map(repr, values))


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(map(str, value)) + "]"
    return "null" if value is None else repr(value) if isinstance(value, str) else str(value)


def Int(key, low=1, high=None, **kw) -> Rule:  # noqa: N802 - reads as a type in the tables
    return Rule(key, "int", low=low, high=high, **kw)


def Float(key, low=None, high=None, **kw) -> Rule:  # noqa: N802
    return Rule(key, "float", low=low, high=high, **kw)


def Ints(key, low=1, **kw) -> Rule:  # noqa: N802
    return Rule(key, "ints", low=low, **kw)


def Bool(key, **kw) -> Rule:  # noqa: N802
    return Rule(key, "bool", **kw)


def Choice(key, choices, **kw) -> Rule:  # noqa: N802
    return Rule(key, "str", choices=tuple(choices), **kw)


# ----------------------------------------------------------------------------- lra-train

#: ``task.*`` of every task (the task's own file may set more; see TASK_EXTRA)
TASK = [
    Int("seq_len", means="sequence length in tokens", example=128),
    Int("data_seed", low=0, optional=True, means="data generation / split seed", example=0),
    Int("num_train", optional=True, means="training examples; null = all", example=1000),
    Int("num_val", optional=True, means="validation examples; null = all", example=200),
    Int("num_test", optional=True, means="test examples; null = all", example=200),
    Float("val_fraction", low=0, high=1, open_low=True, open_high=True, optional=True,
          means="share of the training set held out for validation", example=0.1),
    Bool("download", optional=True), Bool("progress", optional=True),
    Bool("mask_zero_tokens", optional=True),
]
TASK_EXTRA = {
    "listops": [
        Choice("source", ("generate", "tsv")),
        Int("num_train", means="training examples", example=1000),
        Int("num_val", means="validation examples", example=200),
        Int("num_test", means="test examples", example=200),
        Int("min_length", low=0, means="generated expressions are longer than this (capped at seq_len/4)",
            example=500),
        Int("max_depth", low=1, means="nesting depth of generated expressions", example=10),
        Int("max_args", low=2, means="arguments per operator: 2..max_args", example=10),
    ],
    "pathfinder": [Int("num_images", means="generated images", example=20000),
                   Int("gen_batch_size", optional=True, means="images per generator batch", example=2048),
                   Int("gen_workers", optional=True, means="generator processes; null = the CPUs available",
                       example=2),
                   Int("generator_version", means="lra.pathfinder.GENERATOR_VERSION expected", example=2)],
    "pathx": [Int("num_images", means="generated images", example=20000),
              Int("gen_batch_size", optional=True, means="images per generator batch", example=128),
              Int("gen_workers", optional=True, means="generator processes; null = the CPUs available", example=2),
              Int("generator_version", means="lra.pathfinder.GENERATOR_VERSION expected", example=2)],
    "mqar": [Int("vocab_size", low=2, means="tokens; keys from the lower half, values from the upper", example=8192),
             Int("num_kv_pairs", means="key-value pairs per example (4 x pairs <= seq_len)", example=4),
             Float("power_a", low=0, open_low=True, means="exponent of the query-gap power law", example=0.01),
             Bool("random_non_queries"),
             Int("num_train", means="training examples", example=20000),
             Int("num_val", means="validation examples", example=1000),
             Int("num_test", means="test examples", example=1000)],
}

def task_rules(name: str) -> list[Rule]:
    """:data:`TASK` with the task's own rules (:data:`TASK_EXTRA`) in place of same-named ones."""
    extra = {r.key: r for r in TASK_EXTRA.get(name, [])}
    return [extra.pop(r.key, r) for r in TASK] + list(extra.values())


#: the encoder (``model.*`` after task defaults, recipe, ``trainer.model_overrides`` and ``model=``)
MODEL = [
    Int("d_model", means="model width", example=64),
    Int("heads", means="attention heads; must divide d_model", example=4),
    Int("mlp_dim", means="MLP hidden width", example=128),
    Int("layers", means="encoder blocks", example=2),
    Float("dropout", low=0, high=1, open_high=True, means="dropout rate", example=0.1),
    Choice("pooling", _model.POOLINGS, optional=True),
    Choice("pos_emb", _model.POS_EMBEDDINGS, optional=True),
    Bool("tied_weights", optional=True),
    Int("qkv_dim", optional=True, means="total q/k/v width; must divide by heads; null = d_model", example=64),
    Bool("qkv_bias", optional=True),
    Float("attention_dropout", low=0, high=1, open_high=True, optional=True, means="dropout on attention weights",
          example=0.1),
    Choice("init", _model.INITS, optional=True),
    Float("token_init_std", low=0, open_low=True, optional=True, means="std of the token embedding init",
          example=0.02),
    Float("norm_eps", low=0, open_low=True, optional=True, means="LayerNorm epsilon", example=1e-6),
    Choice("gelu", _model.GELUS, optional=True),
    Choice("head_activation", _model.HEAD_ACTIVATIONS, optional=True),
    Choice("dual_head", _model.DUAL_HEADS, optional=True),
    Choice("masked_queries", _model.MASKED_QUERIES, optional=True),
    Choice("cls_mask", _model.CLS_MASKS, optional=True),
    Choice("pool_masked", _model.POOL_MASKED, optional=True),
    Int("patch", optional=True, means="image tasks: pixels per side of a patch token; 1 = a token per pixel",
        example=2),
]

#: learning-rate schedules of ``trainer.schedule`` and ``pretrain.schedule`` (lra.training.optim.lr_factor)
SCHEDULES = ("rsqrt", "linear", "cosine", "onecycle", "constant")
#: which parameters weight decay applies to (lra.training.optim.make_optimizer): every one (both references) |
#: matrices other than position embeddings (this suite's earlier choice)
DECAY_SCOPES = ("all", "matrices")
#: which weights a run tests (lra.training.finetune): the last step's | those of the best validation
TEST_CHECKPOINTS = ("final", "best_val")
#: ``pretrain.objective`` (lra.training.pretrain)
OBJECTIVES = ("none", "mlm", "causal")

#: ``trainer.*`` (after task defaults, recipe and the trainer preset)
TRAINER = [
    Int("batch_size", means="examples per step", example=32),
    Int("steps", means="optimizer steps", example=500),
    Float("lr", low=0, open_low=True, means="base learning rate", example=1e-3),
    Choice("schedule", SCHEDULES),
    Int("warmup", low=0, means="warm-up steps", example=50),
    Float("weight_decay", low=0, optional=True, means="AdamW weight decay", example=0.01),
    Rule("betas", "floats", low=0, high=1, open_high=True, length=2, means="AdamW betas", example="[0.9,0.98]"),
    Float("eps", low=0, open_low=True, optional=True, means="Adam epsilon", example=1e-9),
    Choice("weight_decay_params", DECAY_SCOPES, optional=True),
    Float("grad_clip", low=0, optional=True, means="gradient-norm clipping; 0 or null = off", example=1.0),
    Int("eval_every", means="steps between validations", example=500),
    Float("stop_at_val_accuracy", low=0, high=1, open_low=True, optional=True,
          means="stop training once the validation accuracy reaches this; null = never", example=0.99),
    Bool("lr_sweep_skip", optional=True),
    Int("eval_batches", optional=True, means="cap on validation batches; null = all", example=10),
    Int("checkpoint_every", means="steps between checkpoints", example=500),
    Int("log_every", means="steps between progress/NaN checks", example=50),
    Choice("precision", ("auto", "bf16", "fp32")),
    Bool("compile"), Bool("progress"),
    Choice("compile_mode", COMPILE_MODES, optional=True),
    Rule("compile_backend", "str", optional=True, means="torch.compile backend", example="inductor"),
    Rule("bucketing", "str", choices=("auto", True, False), optional=True,
         means="length bucketing: auto = where the padded length cannot change what the model computes"),
    Int("bucket_multiple", optional=True, means="bucketed batches are cut to multiples of this length", example=128),
    Int("bucket_window", optional=True, means="batches per length-sorting window", example=64),
    Int("jobs_per_gpu", optional=True, means="jobs sharing one GPU with trainer.device=packed", example=4),
    Int("accumulate", optional=True, means="micro-batches per optimizer step (gradient accumulation); "
        "the effective batch is batch_size x accumulate", example=2),
    Choice("test_checkpoint", TEST_CHECKPOINTS, optional=True),
]

#: ``pretrain.*`` of a self-pretraining run (pretrain=mlm|causal), after the task's defaults
#: (conf/pretrain/mlm.yaml ``tasks.<task>``), ``shared``, the trainer preset and the command line
PRETRAIN = [
    Choice("objective", OBJECTIVES),
    Float("mask_rate", low=0, high=1, open_low=True, open_high=True,
          means="share of real positions masked (the paper: 0.1 ListOps, 0.15 text, 0.5 pixels)", example=0.15),
    Int("steps", means="pretraining optimizer steps", example=200),
    Int("batch_size", means="examples per pretraining step", example=32),
    Float("lr", low=0, open_low=True, means="peak pretraining learning rate", example=1e-3),
    Choice("schedule", SCHEDULES),
    Int("warmup", low=0, means="pretraining warm-up steps", example=20),
    Float("weight_decay", low=0, means="AdamW weight decay", example=0.0),
    Rule("betas", "floats", low=0, high=1, open_high=True, length=2, means="AdamW betas", example="[0.9,0.999]"),
    Float("eps", low=0, open_low=True, means="Adam epsilon", example=1e-8),
    Choice("weight_decay_params", DECAY_SCOPES),
    Choice("select", ("loss", "accuracy")),
    Choice("budget", ("extra", "shared")),
    Int("eval_every", means="steps between pretraining validations", example=50),
    Int("eval_batches", optional=True, means="cap on validation batches; null = all", example=10),
    Int("checkpoint_every", means="steps between pretraining checkpoints", example=500),
]

#: top-level keys of ``lra-train``
RUN = [Int("seed", low=0, means="training seed", example=0)]

# ----------------------------------------------------------------------------- attention knobs

#: ranges of the in-tree variants' knobs (types of every variant's knobs come from its dataclass)
KNOBS = {
    "bigbird": [Int("block_size", example=64), Int("window_blocks", example=3), Int("global_blocks", low=0, example=2),
                Int("random_blocks", low=0, example=3)],
    "linformer": [Int("k", means="projected length", example=256)],
    "local": [Int("window", low=0, means="max distance |i-j| attended", example=256)],
    "nystrom": [Int("landmarks", example=64), Int("pinv_iterations", low=0, example=6),
                Int("conv_kernel", low=0, means="odd, or 0 = off", example=35)],
    "performer": [Int("num_features", example=256), Int("redraw_interval", low=0, means="0 = never", example=1000),
                  Choice("kernel", ("softmax", "relu")), Choice("scaling", ("chi", "sqrt_d")),
                  Float("kernel_eps", low=0, example=1e-3)],
    "random_feature": [Int("num_features", example=256), Float("sigma_init", low=0, open_low=True, example=1.0),
                       Float("normalizer_floor", low=0, high=1, open_high=True, means="relative floor of the normaliser",
                             example=1e-3), Int("gate_chunk", example=64),
                       Float("gate_bias_init", example=2.0)],
    "reformer": [Int("bucket_size", example=64), Int("n_hashes", example=2),
                 Int("n_buckets", optional=True, means="1 or even; null = from the length", example=8)],
}


def knob_rules(name: str, config_cls: type) -> list[Rule]:
    """Rules for variant ``name``'s knobs: the table's ranges, else a type check from the
    config dataclass (``int``, ``float``, ``bool``, ``str``, optional when ``None`` is allowed)."""
    rules = {r.key: r for r in KNOBS.get(name, [])}
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        if f.name in rules or f.name in ("heads", "head_dim", "max_length", "seed"):
            continue
        hint = hints.get(f.name)
        args = typing.get_args(hint) or (hint,)
        optional = type(None) in args
        kind = next((k for t, k in ((bool, "bool"), (int, "int"), (float, "float"), (str, "str")) if t in args), None)
        if kind is not None:
            rules[f.name] = Rule(f.name, kind, optional=optional)
    return list(rules.values())


# ----------------------------------------------------------------------------- lra-bench

#: top-level grid keys of ``lra-bench`` (after device defaults); the rules of a mode's own section
#: (``model_step:``, ``exactness:``, ...) are that mode's ``rules`` (:mod:`lra.bench.registry`)
BENCH = [
    Ints("lengths", means="sequence lengths N", example="[256,512]"),
    Ints("batch_size", means="batch sizes", example=2),
    Int("heads", example=4), Int("head_dim", example=64),
    Int("repeats", means="timed calls per case, at least", example=5),
    Int("warmup", low=0, means="untimed calls first", example=2),
    Float("min_time_s", low=0, means="keep timing until this much time is timed (host clock only)", example=0.2),
    Int("max_repeats", means="cap on timed calls per case", example=1000),
    Int("seed", low=0, example=0), Bool("count_flops"), Bool("progress"), Bool("summary"),
]


# ----------------------------------------------------------------------------- checking

def problems(values: dict[str, Any], rules: Iterable[Rule], prefix: str = "",
             source: dict[str, str] | None = None) -> list[str]:
    """One sentence per bad value of ``values`` under ``rules`` (keys absent from ``values``
    are skipped: the caller decides what must be present). ``prefix`` names the group on the
    command line (``"task."``); ``source`` maps a key to where its value was set, when that is
    not ``prefix + key`` (e.g. ``trainer.task_overrides.seq_len``)."""
    out = []
    for rule in rules:
        if rule.key not in values:
            continue
        value = values[rule.key]
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        problem = rule.problem(value)
        if problem is None:
            continue
        name = f"{prefix}{rule.key}"
        where = (source or {}).get(rule.key)
        origin = f" (set by {where})" if where and where != name else ""
        example = rule.example if rule.example is not None else (rule.choices[0] if rule.choices else None)
        fix = f"; fix: {where or name}={example if isinstance(example, str) else _show(example)}" \
            if example is not None else ""
        shown = name if value is None else f"{name}={_show(value)}"
        out.append(f"{shown}{origin} {problem}{fix}")
    return out


def check(values: dict[str, Any], rules: Iterable[Rule], prefix: str = "",
          source: dict[str, str] | None = None) -> None:
    """Raise :class:`ConfigError` naming every bad value (see :func:`problems`)."""
    found = problems(values, rules, prefix, source)
    if found:
        raise ConfigError("; ".join(found))


def threads_problems(value: Any, key: str = "threads") -> list[str]:
    """``threads`` must be ``auto`` or an integer >= 1 (as :func:`problems`)."""
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return []
    return [f"{key}={_show(value)} is invalid: it must be auto (the cores available to this job divided among "
            f"the jobs running at once) or an integer >= 1; fix: {key}=auto"]
