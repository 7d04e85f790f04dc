"""CPU inputs of the device time model (scripts/device/TIME_MODEL.md) and the table built from them.

    python scripts/device/time_model.py measure [--out time_model_cpu.json] [--repeats 3]
    python scripts/device/time_model.py table time_model_cpu.json [--us-per-op 10]

``measure`` (CPU, one thread; minutes): for the stop-9 H100 ListOps model (4 x 512, mlp 1024, flash,
batch 32 x 2,000 tokens: 22.9 steps/s there) and the small recipe's model (2 x 64) of every variant on
ListOps (2,000), Text (1,000) and Pathfinder (1,024), each with the knobs lra-train resolves:
* ``cpu_ms_per_token``: one training step (forward, cross-entropy, backward, AdamW) timed on the CPU
  at batch 1, median of ``repeats`` interleaved rounds, divided by the tokens of the step;
* ``ops``: aten operations of one training step other than views (about one CUDA kernel launch each
  in eager mode), counted with a TorchDispatchMode at a small length (the count does not depend on it);
* ``cpu_ms_tiny_step``: the step at batch 1 and 64 tokens, where the time is the framework's per-op
  overhead (its ratio to ``ops`` estimates the host cost of one eager op).
* ``flops_per_token``: FLOPs of the step per token (FlopCounterMode), for the optimistic estimate.
``table`` turns them into milliseconds per step and seconds per (task, variant) (TIME_MODEL.md).
Timings on a loaded machine are rough; op counts are counts.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[0] = str(REPO)   # not this folder, whose queue.py would shadow the standard library's

import torch  # noqa: E402 - after the path fix above
import torch.nn.functional as F  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from lra import conf_dir  # noqa: E402
from lra.bucketing import PADDING_INVARIANT  # noqa: E402
from lra.model import Encoder, EncoderConfig  # noqa: E402
from lra.results import host_info  # noqa: E402
from lra.timing import count_flops  # noqa: E402
from lra.training.config import resolve  # noqa: E402

TASKS = {"listops": {"vocab": 18, "classes": 10, "n": 2000, "batch": 32, "steps": 5000},
         "text": {"vocab": 257, "classes": 2, "n": 1000, "batch": 32, "steps": 20000},
         "pathfinder": {"vocab": 256, "classes": 2, "n": 1024, "batch": 256, "steps": 62400}}
VARIANTS = ("full", "flash", "local", "bigbird", "reformer", "random_feature", "performer", "linear", "linformer",
            "nystrom")
#: the stop-9 H100 run (results/nvidia-h100-80gb/train-listops-flash.json): 22.9 steps/s at batch 32 x 2,000
REF = {"steps_per_s": 22.87, "batch": 32, "n": 2000, "d_model": 512, "heads": 8, "mlp_dim": 1024, "layers": 4}


def _small_model(task: str, variant: str, n: int):
    """The small recipe's encoder for (task, variant) as lra-train resolves it, at max length ``n``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[f"task={task}", f"attention={variant}", "recipe=small"])
    _, model, _, knobs = resolve(cfg)
    t = TASKS[task]
    return Encoder(EncoderConfig(vocab_size=t["vocab"], num_classes=t["classes"], max_length=n, attention=variant,
                                 attention_cfg=knobs, **model))


def _ref_model(n: int):
    return Encoder(EncoderConfig(vocab_size=18, num_classes=10, max_length=n, d_model=REF["d_model"],
                                 heads=REF["heads"], mlp_dim=REF["mlp_dim"], layers=REF["layers"], pooling="cls",
                                 pos_emb="sinusoidal", attention="flash", dropout=0.1))


def _step(model, opt, x, y):
    loss = F.cross_entropy(model(x, x != 0), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _inputs(vocab: int, classes: int, batch: int, n: int):
    g = torch.Generator().manual_seed(0)
    return torch.randint(1, vocab, (batch, n), generator=g), torch.randint(0, classes, (batch,), generator=g)


VIEW_OPS = {"view", "_unsafe_view", "t", "transpose", "expand", "permute", "slice", "select", "unsqueeze", "squeeze",
            "as_strided", "detach", "alias", "reshape", "unbind", "split", "split_with_sizes", "chunk", "lift_fresh",
            "_reshape_alias", "view_as", "expand_as", "narrow", "diagonal", "unfold", "movedim"}


def count_ops(build, vocab, classes, n) -> int:
    """Non-view aten ops of one training step (the second: the first may build caches)."""
    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__.rstrip("_") not in VIEW_OPS:
                self.n += 1
            return func(*args, **(kwargs or {}))

    model = build(n)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    x, y = _inputs(vocab, classes, 1, n)
    _step(model, opt, x, y)
    with Count() as c:
        _step(model, opt, x, y)
    return c.n


def _cases():
    cases = {"ref/listops/flash": (lambda n: _ref_model(n), 18, 10, REF["n"])}
    for task, t in TASKS.items():
        for v in VARIANTS:
            cases[f"small/{task}/{v}"] = ((lambda n, task=task, v=v: _small_model(task, v, n)), t["vocab"],
                                          t["classes"], t["n"])
    return cases


def measure(repeats: int) -> dict:
    torch.set_num_threads(1)
    cases = _cases()
    out = {}
    built = {}
    for key, (build, vocab, classes, n) in cases.items():
        torch.manual_seed(0)
        model = build(n)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
        x, y = _inputs(vocab, classes, 1, n)
        _step(model, opt, x, y)                                      # warm-up
        tiny_model = build(64)
        tiny_opt = torch.optim.AdamW(tiny_model.parameters(), lr=1e-4, foreach=True)
        tx, ty = _inputs(vocab, classes, 1, 64)
        for _ in range(3):
            _step(tiny_model, tiny_opt, tx, ty)
        built[key] = (model, opt, x, y, tiny_model, tiny_opt, tx, ty, n)
        out[key] = {"n": n, "ops": count_ops(build, vocab, classes, 256),
                    # FLOPs of one training step per token (FlopCounterMode: matmuls and attention kernels)
                    "flops_per_token": count_flops(lambda: _step(model, opt, x, y)) / n, "times_ms": [], "tiny_ms": []}
        print(f"[time-model] built {key}: {out[key]['ops']} ops per step", flush=True)
    for r in range(repeats):                                          # interleaved rounds
        for key, (model, opt, x, y, tiny_model, tiny_opt, tx, ty, n) in built.items():
            t0 = time.perf_counter()
            _step(model, opt, x, y)
            out[key]["times_ms"].append((time.perf_counter() - t0) * 1e3)
            t0 = time.perf_counter()
            for _ in range(5):
                _step(tiny_model, tiny_opt, tx, ty)
            out[key]["tiny_ms"].append((time.perf_counter() - t0) * 1e3 / 5)
        print(f"[time-model] round {r + 1}/{repeats} done", flush=True)
    for key, o in out.items():
        o["cpu_ms_per_token"] = statistics.median(o.pop("times_ms")) / o["n"]
        o["cpu_ms_tiny_step"] = statistics.median(o.pop("tiny_ms"))
    return {"cases": out, "host": host_info(), "torch": torch.__version__}


# ----------------------------------------------------------------------------- the model

#: tokens per step with bucketing (multiple 128) / without: measured per epoch on the generated ListOps
#: (96K, 48.3% -> 6.8% padding) and the IMDb train split (16.4% -> 4.3%); Pathfinder has no padding
BUCKETED_TOKENS = {"listops": 35483 / 64000, "text": 27940 / 32000, "pathfinder": 1.0}


def estimates(data: dict, us_per_op: float, bucketing: bool = True) -> dict:
    """Per (task, variant): tokens per step and milliseconds per step of one eager job alone on the GPU.

    ``ms_cpu``: compute time if the small model runs on the GPU with the efficiency, relative to the
    stop-9 model, that it has on the CPU (tokens/s = stop-9's x CPU ms/token ratio); ``ms_flop``: if it
    ran at the stop-9 model's FLOP rate; ``ms_launch``: the eager launch floor, ops x ``us_per_op``.
    """
    cases = data["cases"]
    ref = cases["ref/listops/flash"]
    ref_tokens_per_s = REF["steps_per_s"] * REF["batch"] * REF["n"]
    ref_flops_per_s = ref_tokens_per_s * ref["flops_per_token"]
    out = {}
    for task, t in TASKS.items():
        for v in VARIANTS:
            c = cases[f"small/{task}/{v}"]
            frac = BUCKETED_TOKENS[task] if bucketing and v in PADDING_INVARIANT else 1.0  # as auto buckets
            tokens = t["batch"] * t["n"] * frac
            out[(task, v)] = {"tokens": tokens,
                              "ms_cpu": tokens / (ref_tokens_per_s * ref["cpu_ms_per_token"] / c["cpu_ms_per_token"]) * 1e3,
                              "ms_flop": tokens * c["flops_per_token"] / ref_flops_per_s * 1e3,
                              "ms_launch": c["ops"] * us_per_op / 1e3, "steps": t["steps"]}
    return out


def table(data: dict, us_per_op: float) -> str:
    """The per-(task, variant) table of TIME_MODEL.md and per-task sums."""
    est = estimates(data, us_per_op)
    lines = ["| task | variant | tokens/step | ms/step GPU (CPU ratio) | ms/step GPU (FLOP ratio) | eager launch "
             "floor ms/step | s alone, eager (CPU ratio) | GPU-busy s (CPU ratio / FLOP ratio) |",
             "|---|---|---|---|---|---|---|---|"]
    for (task, v), e in est.items():
        alone = e["steps"] * max(e["ms_cpu"], e["ms_launch"]) / 1e3
        lines.append(f"| {task} | {v} | {e['tokens']:,.0f} | {e['ms_cpu']:.2f} | {e['ms_flop']:.2f} | "
                     f"{e['ms_launch']:.2f} | {alone:,.0f} | {e['steps'] * e['ms_cpu'] / 1e3:,.0f} / "
                     f"{e['steps'] * e['ms_flop'] / 1e3:,.0f} |")
    lines.append("")
    for task in TASKS:
        rows = [e for (tk, _), e in est.items() if tk == task]
        busy_cpu = sum(e["steps"] * e["ms_cpu"] for e in rows) / 1e3
        busy_flop = sum(e["steps"] * e["ms_flop"] for e in rows) / 1e3
        longest = max(e["steps"] * max(e["ms_launch"], e["ms_cpu"]) for e in rows) / 1e3
        alone = sum(e["steps"] * max(e["ms_cpu"], e["ms_launch"]) for e in rows) / 1e3
        lines.append(f"- {task}: one variant after another {alone:,.0f} s; packed (all 10 at once) the GPU is "
                     f"busy {busy_cpu:,.0f} s (CPU ratio) / {busy_flop:,.0f} s (FLOP ratio), the slowest job "
                     f"alone needs {longest:,.0f} s")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--out", default="time_model_cpu.json")
    m.add_argument("--repeats", type=int, default=3)
    t = sub.add_parser("table")
    t.add_argument("json")
    t.add_argument("--us-per-op", type=float, default=10.0, help="host cost of one eager op on the GPU machine")
    args = ap.parse_args(argv)
    if args.cmd == "measure":
        data = measure(args.repeats)
        Path(args.out).write_text(json.dumps(data, indent=1))
        print(f"[time-model] wrote {args.out}")
        return 0
    print(table(json.loads(Path(args.json).read_text()), args.us_per_op))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
