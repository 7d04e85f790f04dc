"""Registry of attention variants: an in-tree decorator and out-of-tree entry points.

In-tree::

    @register("performer", PerformerConfig)
    class Performer(Attention): ...

Out-of-tree, a distribution declares an entry point in the group ``attention_variants``
whose name is the variant name and whose value is the class (``pkg.module:MyAttention``).
The class is registered on first use with its ``Config`` attribute (or the base config).
"""
from __future__ import annotations

import dataclasses
import difflib
from importlib.metadata import entry_points
from typing import Callable

from .base import Attention, AttentionConfig

ENTRY_POINT_GROUP = "attention_variants"

_REGISTRY: dict[str, tuple[type[Attention], type[AttentionConfig]]] = {}
_entry_points_loaded = False


class UnknownVariantError(KeyError):
    """Raised for a variant name that is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def register(name: str, config_cls: type[AttentionConfig] | None = None) -> Callable:
    """Class decorator that registers an :class:`Attention` subclass under ``name``."""

    def decorator(cls: type[Attention]) -> type[Attention]:
        if not (isinstance(cls, type) and issubclass(cls, Attention)):
            raise TypeError(f"@register({name!r}) expects an Attention subclass, got {cls!r}")
        cfg = config_cls or getattr(cls, "Config", AttentionConfig)
        if name in _REGISTRY and _REGISTRY[name][0] is not cls:
            raise ValueError(f"attention variant {name!r} is already registered "
                             f"by {_REGISTRY[name][0].__module__}.{_REGISTRY[name][0].__qualname__}")
        cls.name = name
        cls.Config = cfg
        _REGISTRY[name] = (cls, cfg)
        return cls

    return decorator


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _REGISTRY:
            continue
        obj = ep.load()  # importing the module may already register it via the decorator
        if ep.name not in _REGISTRY and isinstance(obj, type) and issubclass(obj, Attention):
            register(ep.name)(obj)


def available(causal: bool | None = None) -> list[str]:
    """Sorted names of every registered variant, in-tree and from entry points; ``causal=True``:
    only those that can be built with ``causal=True`` (``False``: only those that cannot)."""
    _load_entry_points()
    return sorted(n for n, (cls, _) in _REGISTRY.items()
                  if causal is None or bool(getattr(cls, "supports_causal", False)) == causal)


def check_causal(name: str, causal: bool) -> None:
    """Raise ``ValueError`` naming ``causal``, the reason and the causal variants when ``name``
    cannot be built with ``causal=True``."""
    cls, _ = get(name)
    if causal and not getattr(cls, "supports_causal", False):
        why = getattr(cls, "causal_refusal", "it does not implement a causal mask")
        raise ValueError(f"attention variant {name!r} cannot be causal (causal=True): {why}. "
                         f"Causal variants: {', '.join(available(causal=True))}")


def get(name: str) -> tuple[type[Attention], type[AttentionConfig]]:
    """The (class, config class) registered under ``name``."""
    _load_entry_points()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownVariantError(
            f"unknown attention variant {name!r}.{hint} Available: {', '.join(sorted(_REGISTRY))}. "
            f"Choose one with attention=<name>, or register your own (docs/variants.md: 'Add a variant').") from None


def make_config(name: str, **cfg) -> AttentionConfig:
    """Build the variant's config dataclass from keyword arguments, rejecting unknown knobs and
    ``causal=True`` on a variant that cannot be causal (:func:`check_causal`)."""
    _, config_cls = get(name)
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(cfg) - fields)
    if unknown:
        raise TypeError(f"attention variant {name!r} has no knob(s) {unknown}; "
                        f"its knobs are {sorted(fields)}")
    check_causal(name, bool(cfg.get("causal", False)))
    return config_cls(**cfg)


def build(name: str, **cfg) -> Attention:
    """Instantiate variant ``name`` from keyword config (heads, head_dim, max_length, knobs)."""
    cls, _ = get(name)
    return cls(make_config(name, **cfg))
