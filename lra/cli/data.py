"""``lra-data``: prepare, describe and look at the LRA task data.

    lra-data prepare task=<name> [key=value ...]      generate or read, then cache; prints where
    lra-data info task=<name> [key=value ...]         sizes, class balance, length statistics
    lra-data show task=pathfinder [n=16] [out=pathfinder.png] [split=train]   a PNG grid with labels
                                                     (pathfinder, pathx: also prints the difficulty checks)

``key=value`` sets ``task.<key>`` (e.g. ``data_dir=~/data/imdb``, ``source=release``,
``seq_len=1000``); ``trainer=quick`` and dotted keys (``trainer.task_overrides.seq_len=64``,
``task.num_train=100``) pass to Hydra unchanged. The config is composed from the same files
as ``lra-train`` (``conf/train.yaml``) and resolved the same way (an explicit ``seq_len=64``
beats ``trainer=quick``'s 128 here too), so both see the same data.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from hydra import compose as hydra_compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from .. import conf_dir, tasks
from ..data import default_cache_dir
from ..pathfinder import difficulty as pathfinder_difficulty
from ..pathfinder import params_for as pathfinder_params
from ..schema import ConfigError
from ..training.config import check_task_data, explicit_beats_presets, resolve, task_problems

COMMANDS = ("prepare", "info", "show")
SHOW_KEYS = ("n", "out", "split")


def usage() -> str:
    return __doc__.split("\n\n", 1)[1]


def parse(argv: list[str]) -> tuple[str, str, list[str], dict[str, str]]:
    """argv -> (command, task name, Hydra overrides, show options)."""
    if not argv or argv[0] in ("-h", "--help", "help"):
        raise SystemExit(usage())
    command, *rest = argv
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}; commands: {', '.join(COMMANDS)}\n{usage()}")
    task, overrides, show = None, [], {}
    for arg in rest:
        if "=" not in arg:
            raise ValueError(f"argument {arg!r} is not key=value (e.g. task=text data_dir=/data/imdb)")
        key, value = arg.split("=", 1)
        if key == "task":
            task = value
        elif key in SHOW_KEYS:
            show[key] = value
        elif key.startswith(("+", "~")) or "." in key or key in ("trainer", "model", "attention", "seed"):
            overrides.append(arg)
        else:
            overrides.append(f"task.{key}={value}")
    if task is None:
        raise ValueError(f"say which task: task=<name> with one of {', '.join(tasks.TASKS)}")
    tasks.get(task)  # unknown names -> ValueError with the list
    return command, task, [f"task={task}", *overrides], show


def compose(overrides: list[str]):
    """The ``lra-train`` config for these overrides and its effective task config."""
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = hydra_compose("train", overrides=overrides)
    cfg = explicit_beats_presets(cfg, overrides)  # the same rule as lra-train: task.<key> beats a preset
    return cfg, resolve(cfg)[0]


def show_grid(data: tasks.TaskData, split: str, n: int, out: Path) -> Path:
    """A PNG grid of the first ``n`` examples of a pixel task, titled with their labels."""
    import matplotlib  # noqa: PLC0415 - the plotting stack loads only for `show`, not for prepare/info

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - after choosing the Agg backend

    if data.pad_id is not None or data.dual:
        raise ValueError(f"show draws image tasks (image, pathfinder, pathx); task {data.name!r} holds token "
                         "sequences: use lra-data info")
    x, y = data.splits[split]
    n = max(1, min(n, len(y)))
    side = math.isqrt(x.shape[1])
    cols = min(n, 8)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 2.0 * rows + 0.4), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(x[i].reshape(side, side).numpy(), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_title(f"label {int(y[i])}", fontsize=8)
    fig.suptitle(f"{data.name} ({split}, {side}x{side})", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def difficulty_report(data: tasks.TaskData, split: str) -> str:
    """The difficulty checks of :mod:`lra.pathfinder.difficulty` on the first images of a Pathfinder split.

    1,000 images at 32x32 (a few seconds), 100 above; markers are found in the pixels.
    """
    x, y = data.splits[split]
    side = int(data.meta.get("image_side") or round(x.shape[1] ** 0.5))
    n = min(len(y), 1000 if side <= 64 else 100)
    if n < 20:
        return f"[lra] {data.name} {split}: {n} images, too few for the difficulty checks"
    images = x[:n].numpy().reshape(n, side, side)
    radius = pathfinder_params(side).marker_radius
    summary = pathfinder_difficulty.summary(images, y[:n].numpy(), marker_radius=radius)
    version = data.meta.get("generator_version")
    source = f"generator version {version}" if version else str(data.meta.get("source"))
    return f"[lra] {data.name} {split} ({source}): " + pathfinder_difficulty.format_summary(summary)


def run(argv: list[str]) -> int:
    command, task, overrides, show = parse(argv)
    _, task_cfg = compose(overrides)
    found = task_problems(task_cfg)  # every value checked before any data is prepared, as lra-train does
    if found:
        raise ConfigError("; ".join(found))
    check_task_data(task_cfg)
    t0 = time.perf_counter()
    data = tasks.prepare(task_cfg)
    took = time.perf_counter() - t0
    if command == "prepare":
        cache = Path(str(task_cfg.get("cache_dir") or default_cache_dir())).expanduser()
        sizes = ", ".join(f"{s} {len(y)}" for s, (_, y) in data.splits.items())
        print(f"[lra] {data.name}: prepared in {took:.1f}s ({sizes}; seq_len {data.seq_len}); cached under {cache} "
              f"({data.name}-*.pt)")
    elif command == "info":
        print(json.dumps(data.describe(), indent=2, default=str))
    else:
        out = Path(show.get("out", f"{data.name}.png")).expanduser()
        split = show.get("split", "train")
        if split not in data.splits:
            raise ValueError(f"split={split!r} is not one of {', '.join(data.splits)}")
        path = show_grid(data, split, int(show.get("n", 16)), out)
        print(f"[lra] wrote {path}")
        if data.name in ("pathfinder", "pathx"):
            print(difficulty_report(data, split))
    return 0


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        code = run(argv)
    except SystemExit:
        raise
    except (tasks.DataNotFoundError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except Exception as err:  # Hydra composition errors (unknown config key or group option)
        if type(err).__module__.startswith(("hydra", "omegaconf")):
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        raise
    sys.exit(code)


if __name__ == "__main__":
    main()
