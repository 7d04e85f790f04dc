"""The ``data`` pattern: hidden states of real sequences at an encoder layer's attention input.

The paper's realistic setting (Castin et al. 2024, Sec. 5): feed real text through a model and
measure the attention layer at the hidden states it actually receives. Here:

1. Token sequences of a real LRA task (:func:`task_data`; ListOps is generated locally, Text
   reads IMDb): for each length ``n``, the first ``n`` tokens of the first ``samples`` examples
   whose real (unpadded) length is at least ``n`` (:func:`sequences`). With CLS pooling the
   encoder adds its CLS token, so the attention sees ``n + 1`` rows.
2. The encoder (:class:`lra.model.Encoder`): untrained (:func:`untrained_encoder`, seeded, the
   task's model sizes) or trained (:func:`trained_encoder`, from an ``lra-train`` job directory
   or its ``checkpoint.pt``), in eval mode.
3. :func:`attention_input` runs the encoder and captures the input of layer ``layer``'s
   multi-head attention (after the block's LayerNorm), ``X: (rows, d_model)``.
4. :func:`layer_projections` reads that layer's query/key/value weights and biases, and
   :func:`layer_map` is ``X -> all heads of that attention, side by side`` (before the output
   projection, as the paper measures BERT's ``attention.self``). Any registered variant can take
   the place of the layer's own attention (same projections): that is how every variant is
   measured on one trained model.
"""
from __future__ import annotations

import contextlib
import functools
import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from .. import conf_dir, tasks
from ..results import RECORD_FILENAME, read_record
from ..training.config import model_settings, resolve
from ..training.finetune import CHECKPOINT, build_model
from .maps import Projections, projected_map


class _Captured(Exception):
    """Raised by the capture hook to stop the forward pass once the input is recorded."""


def task_config(task: str, overrides: dict | None = None) -> DictConfig:
    """``conf/task/<task>.yaml`` with ``overrides`` (e.g. smaller splits, ``data_dir``)."""
    path = conf_dir() / "task" / f"{task}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (conf_dir() / "task").glob("*.yaml"))
        raise ValueError(f"data task {task!r} has no config {path}; tasks: {', '.join(known)}")
    cfg = OmegaConf.load(path)
    return OmegaConf.merge(cfg, {k: v for k, v in (overrides or {}).items() if v is not None})


@functools.lru_cache(maxsize=4)
def _prepared(cfg_json: str):
    return tasks.prepare(OmegaConf.create(json.loads(cfg_json)))


def task_data(task_cfg: DictConfig):
    """The prepared task (:func:`lra.tasks.prepare`, cached on disk and in this process)."""
    return _prepared(json.dumps(OmegaConf.to_container(task_cfg, resolve=True), sort_keys=True))


def sequences(data, n: int, samples: int, split: str = "test") -> torch.Tensor:
    """``(k, n)`` int64 prefixes of the first ``k <= samples`` examples of ``split`` with at least
    ``n`` real tokens; ValueError if there is none."""
    if split not in data.splits:
        raise ValueError(f"split {split!r} not in task {data.name}; splits: {sorted(data.splits)}")
    x = data.splits[split][0]
    if data.dual:
        x = x[:, 0]
    if x.shape[-1] < n:
        raise ValueError(f"task {data.name} holds sequences of at most {x.shape[-1]} tokens; n={n} asks for more")
    real = (x != data.pad_id).sum(-1) if data.pad_id is not None else torch.full((len(x),), x.shape[-1])
    idx = torch.nonzero(real >= n).flatten()[:samples]
    if len(idx) == 0:
        raise ValueError(f"no {split} example of task {data.name} has {n} real tokens "
                         f"(longest: {int(real.max()) if len(real) else 0})")
    return x[idx, :n].long()


def model_kwargs(task_cfg: DictConfig, recipe: str = "lra", overrides: dict | None = None) -> dict[str, Any]:
    """The task's encoder settings for ``recipe`` as ``lra-train`` resolves them (conf/recipe/<recipe>.yaml's
    ``recipe_defaults``, the task's block for the recipe: :func:`lra.training.config.model_settings`), then
    ``overrides``."""
    path = conf_dir() / "recipe" / f"{recipe}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (conf_dir() / "recipe").glob("*.yaml"))
        raise ValueError(f"recipe {recipe!r} has no config {path}; recipes: {', '.join(known)}")
    cfg = OmegaConf.create({"recipe": recipe, "task": task_cfg,
                            "recipe_defaults": OmegaConf.load(path).get("recipe_defaults")})
    return model_settings(cfg, task_cfg, overrides or {})


def untrained_encoder(data, model_kw: dict, variant: str, knobs: dict, seed: int = 0):
    """A freshly initialised (``torch.manual_seed(seed)``) encoder for ``data`` with ``variant``, as
    ``lra-train`` builds it (:func:`lra.training.finetune.build_model`)."""
    torch.manual_seed(seed)
    return build_model(data, model_kw, variant, {**knobs, "seed": seed}).eval()


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """``(checkpoint.pt, job dir)`` of an ``lra-train`` job directory or checkpoint file."""
    p = Path(path).expanduser()
    ckpt = p / CHECKPOINT if p.is_dir() else p
    if not ckpt.is_file():
        raise FileNotFoundError(f"no lra-train checkpoint at {p} (expected a job directory holding {CHECKPOINT}, "
                                "or the file itself)")
    return ckpt, ckpt.parent


def job_config(job_dir: Path) -> DictConfig:
    """The composed config of an ``lra-train`` job: ``.hydra/config.yaml``, else ``record.json``'s
    ``config`` (the effective configuration; its ``model`` block also lists what the data decides,
    e.g. ``vocab_size``, which is dropped here since :func:`lra.training.finetune.build_model` sets it)."""
    hydra_cfg = job_dir / ".hydra" / "config.yaml"
    if hydra_cfg.is_file():
        return OmegaConf.load(hydra_cfg)
    rec = read_record(job_dir / RECORD_FILENAME) if (job_dir / RECORD_FILENAME).is_file() else None
    if rec and rec.get("config"):
        cfg = dict(rec["config"])
        cfg["model"] = {k: v for k, v in (cfg.get("model") or {}).items()
                        if k not in ("vocab_size", "num_classes", "max_length", "dual", "attention", "attention_cfg")}
        return OmegaConf.create(cfg)
    raise FileNotFoundError(f"{job_dir}: neither .hydra/config.yaml nor record.json says how the model was built")


def _job(path: str | Path, task_overrides: dict | None):
    """``(checkpoint file, job config, task config with overrides, model sizes, knobs)`` of a job."""
    ckpt, job_dir = checkpoint_paths(path)
    cfg = job_config(job_dir)
    task_cfg, model_kw, _, knobs = resolve(cfg)
    task_cfg = OmegaConf.merge(task_cfg, {k: v for k, v in (task_overrides or {}).items() if v is not None})
    return ckpt, cfg, task_cfg, model_kw, knobs


def checkpoint_setup(path: str | Path, task_overrides: dict | None = None) -> tuple[DictConfig, dict[str, Any]]:
    """``(task config, model sizes)`` of an ``lra-train`` job (its task with ``task_overrides``)."""
    _, _, task_cfg, model_kw, _ = _job(path, task_overrides)
    return task_cfg, model_kw


def trained_encoder(path: str | Path, task_overrides: dict | None = None):
    """``(encoder, task config, variant, knobs, step)`` of a trained ``lra-train`` job, weights
    loaded (``step``: the checkpoint's training step, -1 if it does not say).

    The task config is the job's, with ``task_overrides`` (e.g. smaller splits to read).
    """
    ckpt, cfg, task_cfg, model_kw, knobs = _job(path, task_overrides)
    data = task_data(task_cfg)
    variant = str(cfg.attention.name)
    model = build_model(data, model_kw, variant, {**knobs, "seed": int(cfg.get("seed", 0))})
    state = _checkpoint(str(ckpt), ckpt.stat().st_mtime_ns)
    model.load_state_dict(state["model"] if "model" in state else state)   # copies: the cached state stays
    return model.eval(), task_cfg, variant, knobs, int(state.get("step", -1))


@functools.lru_cache(maxsize=2)
def _checkpoint(path: str, _mtime_ns: int) -> dict:
    """A checkpoint file's contents, read once per file version (a grid measures it at every N)."""
    return torch.load(path, map_location="cpu", weights_only=False)


def attention_input(model, tokens: torch.Tensor, layer: int = 0) -> torch.Tensor:
    """``(B, rows, d_model)``: what layer ``layer``'s multi-head attention receives for ``tokens (B, N)``."""
    blocks = model.blocks
    if not 0 <= layer < len(blocks):
        raise ValueError(f"layer={layer} but the encoder has layers 0..{len(blocks) - 1}")
    target = blocks[layer].attn
    calls = [0]
    seen: list[torch.Tensor] = []
    # tied weights share one module across layers: count its calls up to this layer
    nth = sum(1 for b in blocks[:layer] if b.attn is target)

    def hook(_module, args):
        if calls[0] == nth:
            seen.append(args[0].detach())
            raise _Captured
        calls[0] += 1

    handle = target.register_forward_pre_hook(hook)
    try:
        with torch.no_grad(), contextlib.suppress(_Captured):  # the hook stops the forward at the layer
            model.encode(tokens, None)
    finally:
        handle.remove()
    if not seen:
        raise RuntimeError(f"layer {layer}'s attention was never called")
    return seen[0]


def layer_projections(model, layer: int = 0) -> Projections:
    """Query/key/value weights ``(3, H, d, d_h)`` and biases ``(3, H, d_h)`` of layer ``layer``.

    Reads :class:`lra.model.MultiHeadAttention`'s fused ``qkv`` linear, whose output splits as
    ``(3, heads, d_h)`` (the order its forward uses; ``tests/smoothness/test_smoothness_data.py`` checks it).
    """
    mha = model.blocks[layer].attn
    h = mha.heads
    lin = mha.qkv
    d = lin.in_features
    dh = lin.out_features // (3 * h)
    w = lin.weight.detach().view(3, h, dh, d).transpose(-1, -2)     # y = x W^T + b
    b = lin.bias.detach().view(3, h, dh) if lin.bias is not None else None
    return Projections(w.contiguous(), b)


def layer_map(model, layer: int = 0, attention=None):
    """``X (rows, d_model) -> (rows, d_model)``: layer ``layer``'s heads side by side before the
    output projection, with ``attention`` (default: the layer's own) in place of its attention."""
    mha = model.blocks[layer].attn
    return projected_map(attention if attention is not None else mha.attention, layer_projections(model, layer))
