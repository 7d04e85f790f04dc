"""The effective bench settings: ``conf/bench.yaml`` with the device's defaults, checked once.

:func:`resolve_settings` turns the composed config into a plain dict: ``null`` values taken from
``device_defaults.<cuda|cpu>``, every mode's section filled (:mod:`lra.bench.registry`), the
variants and their knobs resolved, and every value checked (:mod:`lra.schema`) before the first
case, so a bad grid is one :class:`lra.schema.ConfigError` naming every bad value. The grid's
dtype names (:data:`DTYPES`), the device, the variants and their knobs are resolved here too.
"""
from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

import attention_variants as av

from .. import conf_dir, schema
from ..schema import Bool, ConfigError, Float
from .registry import MODES, sectioned

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
          "float64": torch.float64}
#: top-level keys whose null means "the device's default"
GRID_DEFAULTS = ("lengths", "batch_size", "heads", "head_dim", "dtype", "repeats", "warmup", "min_time_s")
#: the caps in force (``cap:``; null: the device's default; 0: no cap): lra.bench.caps
CAP_RULES = (Float("time_s", low=0, means="seconds one case may run; 0 = no cap", example=120),
             Float("mem_mb", low=0, means="MiB one case may hold over its baseline (CPU); 0 = no cap",
                   example=8192),
             Bool("estimate", means="skip a case whose estimate from the previous N passes the time cap"))
ISOLATE_CHOICES = ("auto", True, False)


def plain(node) -> Any:
    """An OmegaConf node as plain Python containers (anything else unchanged)."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) or \
        OmegaConf.is_list(node) else node


def as_list(value) -> list:
    """``value`` as a list (a scalar becomes a one-element list)."""
    value = plain(value)
    return list(value) if isinstance(value, (list, tuple)) else [value]


def fill(explicit: dict, defaults: dict) -> dict:
    """``explicit`` with its ``None`` values taken from ``defaults``."""
    out = dict(defaults or {})
    out.update({k: v for k, v in (explicit or {}).items() if v is not None})
    return out


def check_dtype(name: str) -> None:
    """A :class:`ConfigError` unless ``name`` is one of :data:`DTYPES`."""
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; choose one of {sorted(DTYPES)}")


def resolve_device(setting: str) -> torch.device:
    """``auto`` (CUDA if visible, else CPU), or the named device, which must exist."""
    if setting in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={setting!r} but no CUDA GPU is visible; use device=auto or cpu")
    return device


def resolve_settings(cfg: DictConfig, device: torch.device) -> dict[str, Any]:
    """The effective bench settings: ``null`` values replaced by the device's defaults.

    Order: the grid's keys, the mode names, every mode's section (filled, then its ``defaults``
    hook), the checks of the grid and of the sections of the modes that run (all reported at
    once), the grid's lists, the variants and knobs, then each mode's ``finish`` hook."""
    raw = plain(cfg)
    all_defaults = raw.get("device_defaults") or {}
    dd = all_defaults.get(device.type) or all_defaults.get("cpu") or {}
    s: dict[str, Any] = {k: v for k, v in raw.items() if k != "device_defaults"}
    for key in GRID_DEFAULTS:
        if s.get(key) is None:
            s[key] = dd.get(key)
        if s[key] is None:
            raise ConfigError(f"{key} is null and device_defaults.{device.type} has no {key}")
    modes = as_list(s.get("modes"))
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ConfigError(f"unknown mode(s) {bad}; modes are {list(MODES)}")
    found = schema.problems(s, schema.BENCH)
    for mode in sectioned():
        s[mode.section] = fill(s.get(mode.section), dd.get(mode.section))
        if s[mode.section].get("lengths") is None and mode.cases is None:
            s[mode.section]["lengths"] = s["lengths"]
    s["cap"] = fill(s.get("cap"), dd.get("cap"))
    found += schema.problems(s["cap"], CAP_RULES, prefix="cap.")
    found += causal_problems(s.get("causal", [False]))
    if s.get("isolate", "auto") not in ISOLATE_CHOICES:
        found.append(f"isolate={s.get('isolate')!r} is invalid: it must be auto (a fresh process per case on CPU), "
                     "true or false; fix: isolate=auto")
    s["modes"] = modes
    joined = [m.name for m in MODES.values() if m.name not in modes and m.joins is not None
              and m.joins({**s, "modes": modes}, device.type)]
    s["modes"] = modes = joined + modes
    running = [mode for mode in MODES.values() if mode.name in modes]
    for mode in MODES.values():
        if mode.defaults is not None:
            mode.defaults(s)
    for mode in running:
        if mode.section:  # the sections of modes not run are not used
            section = s[mode.section]
            found += schema.problems(section, mode.rules, prefix=f"{mode.section}.")
            found += [f"{mode.section}.{key} is null and device_defaults.{device.type}.{mode.section} has none"
                      for key in ("d_model", "heads")
                      if section.get(key) is None and key in {r.key for r in mode.rules}]
    for mode in running:
        if mode.problems is not None:
            found += mode.problems(s)
    found += schema.threads_problems(s.get("threads", "auto"))
    if found:
        raise ConfigError("; ".join(found))
    s["lengths"] = [int(n) for n in as_list(s["lengths"])]
    s["causal"] = [bool(c) for c in as_list(s.get("causal", [False]))]
    s["isolate"] = isolation_on(s.get("isolate", "auto"), device)
    s["batch_size"] = [int(b) for b in as_list(s["batch_size"])]
    s["dtype"] = [str(d) for d in as_list(s["dtype"])]
    for mode in running:
        if mode.section and mode.cases is None:
            s[mode.section]["lengths"] = [int(n) for n in as_list(s[mode.section]["lengths"])]
    s["device"] = str(device)
    for d in s["dtype"]:
        check_dtype(d)
    s["variants"] = resolve_variants(s.get("variants"))
    s["knobs"] = {name: variant_knobs(name, (raw.get("knobs") or {}).get(name)) for name in s["variants"]}
    for mode in MODES.values():
        if mode.finish is not None:
            mode.finish(s, mode in running)
    return s


def causal_problems(value) -> list[str]:
    """``causal`` must be a boolean or a non-empty list of booleans (the grid's causal axis)."""
    values = as_list(value)
    if values and all(isinstance(v, bool) for v in values):
        return []
    return [f"causal={value} is invalid: it must be true, false or a list of them (the causal axis of op_fwd, "
            "op_fwd_bwd and model_step); fix: causal=[false,true]"]


def isolation_on(setting, device: torch.device) -> bool:
    """Whether the modes that isolate run each case in a fresh process: ``auto`` = on CPU (peak
    RSS per case, caps that stop a case), off on CUDA (the allocator measures each case there)."""
    return device.type == "cpu" if setting == "auto" else bool(setting)


def resolve_variants(setting) -> list[str]:
    """The variant names of ``variants``: ``all`` (every registered one) or a list, checked."""
    known = av.available()
    if setting in (None, "all"):
        return known
    names = [str(n) for n in as_list(setting)]
    if "all" in names:
        names = known + [n for n in names if n != "all" and n not in known]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"unknown attention variant(s) {unknown}; available: {', '.join(known)}")
    return list(dict.fromkeys(names))


def variant_knobs(name: str, overrides: dict | None = None) -> dict[str, Any]:
    """A variant's knobs: ``conf/attention/<name>.yaml`` (without ``name``), then ``overrides``."""
    knobs: dict[str, Any] = {}
    path = conf_dir() / "attention" / f"{name}.yaml"
    if path.is_file():
        knobs = OmegaConf.to_container(OmegaConf.load(path), resolve=True) or {}
        knobs.pop("name", None)
    knobs.update(plain(overrides) or {})
    knobs = {k: v for k, v in knobs.items() if v is not None}
    try:
        av.make_config(name, **knobs)
    except (TypeError, ValueError) as err:  # an unknown knob; causal=true on a variant that refuses it
        raise ConfigError(str(err)) from None
    schema.check(knobs, schema.knob_rules(name, av.get(name)[1]), prefix=f"knobs.{name}.")
    return knobs
