"""The encoder at an LRA task shape, shared by the ``model_step`` and ``train_overhead`` modes.

Both read a section of model sizes (:data:`ENCODER_RULES`), build :class:`lra.model.Encoder`
from it (:func:`encoder_config`), sweep the grid's dtypes at the section's batch size
(:func:`dtype_axes`) and record the same facts about the model (:func:`encoder_facts`,
:func:`encoder_variant_config`).
"""
from __future__ import annotations

from typing import Callable

from ..model import POOLINGS, EncoderConfig
from ..results import variant_config
from ..schema import Choice, Float, Int, Ints

#: the model sizes of an encoder section (``model_step:``, ``train_overhead:``)
ENCODER_RULES = (Ints("lengths", example="[256]"), Int("layers", example=2), Int("d_model", example=64),
                 Int("heads", example=4), Int("mlp_dim", example=128), Int("batch_size", example=2),
                 Int("vocab_size", low=2, example=257), Int("num_classes", low=2, example=2),
                 Float("dropout", low=0, high=1, open_high=True, example=0.1),
                 Choice("pooling", POOLINGS), Choice("pos_emb", ("learned", "sinusoidal")))


def dtype_axes(section: str) -> Callable[[str, dict], list[dict]]:
    """A mode's ``axes``: every grid dtype at ``settings[section]``'s batch size."""
    def axes(variant: str, s: dict) -> list[dict]:
        return [{"batch_size": int(s[section]["batch_size"]), "dtype": dtype} for dtype in s["dtype"]]
    return axes


def divisibility_problems(section: str) -> Callable[[dict], list[str]]:
    """A mode's ``problems``: ``d_model`` must be divisible by ``heads`` (when both are valid)."""
    def problems(s: dict) -> list[str]:
        sec = s[section]
        if all(isinstance(sec.get(k), int) and sec[k] > 0 for k in ("d_model", "heads")) and \
                sec["d_model"] % sec["heads"]:
            return [f"{section}.d_model={sec['d_model']} is not divisible by {section}.heads={sec['heads']}; "
                    "change either"]
        return []
    return problems


def encoder_config(sec: dict, variant: str, n: int, attention_cfg: dict, *, pos_emb: str) -> EncoderConfig:
    """The encoder of section ``sec`` at length ``n`` with attention ``variant`` (``attention_cfg``:
    its knobs and seed); ``pos_emb``: the section's default position embedding."""
    return EncoderConfig(vocab_size=int(sec["vocab_size"]), num_classes=int(sec["num_classes"]), max_length=n,
                         d_model=int(sec["d_model"]), heads=int(sec["heads"]), mlp_dim=int(sec["mlp_dim"]),
                         layers=int(sec["layers"]), dropout=float(sec.get("dropout", 0.1)),
                         pooling=sec.get("pooling", "cls"), pos_emb=sec.get("pos_emb", pos_emb),
                         attention=variant, attention_cfg=dict(attention_cfg))


def encoder_facts(enc_cfg: EncoderConfig) -> dict:
    """The encoder shape of a case (the record's ``case``: heads, head_dim, layers, d_model, mlp_dim)."""
    return {"heads": enc_cfg.heads, "head_dim": enc_cfg.d_model // enc_cfg.heads, "layers": enc_cfg.layers,
            "d_model": enc_cfg.d_model, "mlp_dim": enc_cfg.mlp_dim}


def encoder_variant_config(variant: str, enc_cfg: EncoderConfig, n: int, knobs: dict) -> dict:
    """The record's ``variant_config`` of the attention inside an encoder at length ``n`` (one
    more position for the CLS token)."""
    return variant_config(variant, heads=enc_cfg.heads, head_dim=enc_cfg.d_model // enc_cfg.heads,
                          max_length=n + (enc_cfg.pooling == "cls"), **knobs)
