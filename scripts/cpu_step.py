"""The CPU training step of every variant: time it, profile it, and compare two checkouts interleaved.

The step is what ``lra-train`` runs on a CPU at the Text protocol's size: the common encoder
(2 layers x 64, 4 heads, MLP 128, no dropout, fp32), a batch of 32 byte sequences of N = 512
with a boolean key-padding mask (8 of the 32 rows padded from position 400), cross-entropy,
backward, AdamW. Each variant runs with its ``conf/attention/<name>.yaml`` knobs.

    python scripts/cpu_step.py time [--variants flash,performer] [--n 512]
    python scripts/cpu_step.py profile --variants performer          # top self-CPU ops
    python scripts/cpu_step.py compare OLD_CHECKOUT NEW_CHECKOUT [--rounds 3] [--out table.json]
    python scripts/cpu_step.py compare . . --old-set backend=reference  # reference vs auto, one checkout
    python scripts/cpu_step.py gemm                                    # the machine's fp32 GEMM rate

``compare`` runs each (variant, checkout) in a fresh subprocess that imports ``lra`` and
``attention_variants`` from that checkout, alternating the two checkouts round by round
(before/after/before/after...), so that a slow phase of the machine hits both alike; each
subprocess reports the median of ``--steps`` timed steps after ``--warmup`` untimed ones (more steps
until ``--min-time`` seconds have passed, so a fast variant's side is not one short phase of the
machine), and the table gives the median over rounds with the spread (min-max of the per-round
medians) and the median of the per-round ratios (``paired``: each round's two sides ran back to back).
It also counts each step's FLOPs (``torch.utils.flop_counter``, matmul-like ops) and states the step
as a fraction of the machine's fp32 GEMM rate: ``--peak-gflops`` given, or measured (``gemm``: square
fp32 matmuls of 2,048 on the run's threads, median of 10 after 3 of warm-up) before and after the
comparison, the higher of the two kept and both recorded, with the memory bandwidth of a large copy.
In the first round each side also profiles one extra step (``torch.profiler``, after the timed ones)
for its three top self-CPU ops.
Timings are CPU wall clock (``time.perf_counter``); compare only within one run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent

WORKER = r"""
import json, sys, time, statistics
sys.path.insert(0, {root!r})
import torch, torch.nn.functional as F
from omegaconf import OmegaConf
import attention_variants as av
from lra.model import Encoder, EncoderConfig
assert av.__file__.startswith({root!r}), av.__file__
torch.set_num_threads({threads})
variant, n, batch, steps, warmup, flops_too, min_time = {variant!r}, {n}, {batch}, {steps}, {warmup}, {flops}, {min_time}
path = {root!r} + "/conf/attention/" + variant + ".yaml"
knobs = {{k: v for k, v in (OmegaConf.to_container(OmegaConf.load(path)) or {{}}).items() if k != "name" and v is not None}}
knobs.update({extra!r})
torch.manual_seed(0)
cfg = EncoderConfig(vocab_size=257, num_classes=2, max_length=n, d_model=64, heads=4, mlp_dim=128, layers=2,
                    dropout=0.0, attention_dropout=0.0, attention=variant, attention_cfg=knobs)
model = Encoder(cfg).train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
g = torch.Generator().manual_seed(0)
x = torch.randint(1, 257, (batch, n), generator=g)
mask = torch.ones(batch, n, dtype=torch.bool)
mask[:8, 400:] = False
x[~mask] = 0
y = torch.randint(0, 2, (batch,), generator=g)
def step():
    loss = F.cross_entropy(model(x, mask).float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss
for _ in range(warmup):
    step()
times = []
start = time.perf_counter()
while len(times) < steps or (steps and time.perf_counter() - start < min_time):
    t0 = time.perf_counter(); step(); times.append(time.perf_counter() - t0)
out = {{"variant": variant, "ms": 1e3 * statistics.median(times), "times_ms": [1e3 * t for t in times],
        "backend": getattr(model.blocks[0].attn.attention, "last_backend", None)}}
if flops_too:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc:
        step()
    out["flops"] = fc.get_total_flops()
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    out["top_ops"] = [[e.key, round(100 * e.self_cpu_time_total / total, 1)]
                      for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:3]]
print("RESULT " + json.dumps(out))
"""


GEMM = r"""
import json, statistics, time, torch
torch.set_num_threads({threads})
a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
for _ in range(3):
    a @ b
times = []
for _ in range(10):
    t0 = time.perf_counter(); a @ b; times.append(time.perf_counter() - t0)
src, dst = torch.randn(64 * 2 ** 20), torch.empty(64 * 2 ** 20)
for _ in range(2):
    dst.copy_(src)
copies = []
for _ in range(10):
    t0 = time.perf_counter(); dst.copy_(src); copies.append(time.perf_counter() - t0)
print("RESULT " + json.dumps({{"gflops": 2 * 2048 ** 3 / statistics.median(times) / 1e9,
                               "copy_gbs": 2 * src.numel() * 4 / statistics.median(copies) / 1e9}}))
"""


def machine_rates(threads: int) -> dict:
    """The machine's fp32 GEMM rate (``gflops``: 2,048-square matmuls) and memory bandwidth
    (``copy_gbs``: a 256 MiB fp32 copy, bytes read + written) on ``threads`` threads, medians of 10."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run([sys.executable, "-c", GEMM.format(threads=threads)], capture_output=True, text=True,
                          env=env, cwd="/tmp", check=True)
    return json.loads(done.stdout.split("RESULT ", 1)[1])


def parse_knobs(pairs: list[str]) -> dict:
    """``["backend=reference", "chunk_size=64"]`` -> knob overrides (values parsed as YAML scalars)."""
    import yaml  # noqa: PLC0415 - only when knobs are given

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"a knob override is KEY=VALUE, got {pair!r}")
        out[key] = yaml.safe_load(value)
    return out


def run_worker(root: Path, variant: str, args, flops: bool = False, extra: dict | None = None) -> dict:
    code = WORKER.format(root=str(root), threads=args.threads, variant=variant, n=args.n, batch=args.batch,
                         steps=args.steps, warmup=args.warmup, flops=flops, extra=extra or {},
                         min_time=args.min_time)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd="/tmp")
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"variant": variant, "error": (done.stderr or done.stdout)[-2000:]}


def variants_of(args) -> list[str]:
    if args.variants:
        return args.variants.split(",")
    sys.path.insert(0, str(HERE))
    import attention_variants as av  # noqa: PLC0415 - the checkout's own registry, after the path is set

    return av.available()


def cmd_time(args) -> None:
    for v in variants_of(args):
        r = run_worker(HERE, v, args, flops=True)
        print(json.dumps(r) if "error" in r else f"{v:15s} {r['ms']:9.1f} ms/step  {r.get('flops', 0) / 1e9:7.1f} GFLOP "
              f"backend {r['backend']}")


def cmd_profile(args) -> None:
    import torch  # noqa: PLC0415 - this command only
    from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415

    for v in variants_of(args):
        code = WORKER.format(root=str(HERE), threads=args.threads, variant=v, n=args.n, batch=args.batch,
                             steps=0, warmup=args.warmup, flops=False, extra={},
                             min_time=0).split("times = []")[0]
        scope: dict = {}
        exec(compile(code, "worker", "exec"), scope)  # builds model, inputs and step(), runs the warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(2):
                scope["step"]()
        total = sum(e.self_cpu_time_total for e in prof.key_averages())
        rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[: args.top]
        print(f"== {v}: {total / 2e3:.0f} ms/step (profiled), top self-CPU ops")
        for e in rows:
            print(f"   {e.key:40s} {100 * e.self_cpu_time_total / total:5.1f}%  calls/step {e.count // 2}")
        del torch


def cmd_gemm(args) -> None:
    rates = machine_rates(args.threads)
    print(f"on {args.threads} threads: fp32 GEMM 2048^2 {rates['gflops']:.1f} GFLOP/s, "
          f"copy {rates['copy_gbs']:.1f} GB/s")


def cmd_compare(args) -> None:
    rates = [machine_rates(args.threads)]
    knobs = {"old": parse_knobs(args.old_set), "new": parse_knobs(args.new_set)}
    roots = [Path(args.old).resolve(), Path(args.new).resolve()]
    variants = variants_of(args)
    results: dict = {v: {"old": [], "new": []} for v in variants}
    flops: dict = {}
    top_ops: dict = {}
    t0 = time.time()
    for r in range(args.rounds):
        for v in variants:
            sides = [("old", roots[0]), ("new", roots[1])]
            for side, root in (sides if r % 2 == 0 else sides[::-1]):
                res = run_worker(root, v, args, flops=(r == 0), extra=knobs[side])
                if "error" in res:
                    print(f"[{side}] {v}: {res['error']}", file=sys.stderr)
                    continue
                results[v][side].append(res["ms"])
                if "flops" in res and side == "new":
                    flops[v] = res["flops"]
                if "top_ops" in res:
                    top_ops[(v, side)] = res["top_ops"]
                print(f"round {r} {side} {v:15s} {res['ms']:9.1f} ms  backend {res['backend']}", flush=True)
    rates.append(machine_rates(args.threads))
    if not args.peak_gflops:
        args.peak_gflops = round(max(r["gflops"] for r in rates), 1)
    table = []
    for v in variants:
        old, new = results[v]["old"], results[v]["new"]
        if not old or not new:
            continue
        mo, mn = statistics.median(old), statistics.median(new)
        paired = [o / n for o, n in zip(old, new)]  # each round's two sides ran back to back
        row = {"variant": v, "old_ms": round(mo, 1), "old_range": [round(min(old), 1), round(max(old), 1)],
               "new_ms": round(mn, 1), "new_range": [round(min(new), 1), round(max(new), 1)],
               "speedup": round(mo / mn, 2), "paired_speedups": [round(x, 3) for x in paired],
               "paired_median": round(statistics.median(paired), 2), "gflop_per_step": round(flops.get(v, 0) / 1e9, 2),
               "old_top_ops": top_ops.get((v, "old")), "new_top_ops": top_ops.get((v, "new"))}
        if args.peak_gflops and flops.get(v):
            row["fraction_of_peak"] = round(flops[v] / (mn / 1e3) / 1e9 / args.peak_gflops, 3)
        table.append(row)
    gm = statistics.geometric_mean([r["speedup"] for r in table]) if table else None
    summary = {"command": " ".join(sys.argv), "rounds": args.rounds, "steps": args.steps, "warmup": args.warmup,
               "min_time_s": args.min_time,
               "n": args.n, "batch": args.batch, "threads": args.threads, "knobs": knobs, "wall_s": round(time.time() - t0),
               "old": str(roots[0]), "new": str(roots[1]), "geomean_speedup": None if gm is None else round(gm, 3),
               "peak_gflops": args.peak_gflops, "machine_rates_before_after": rates,
               "rows": table}
    print(f"\n{'variant':15s} {'old ms':>9s} {'new ms':>9s} {'speedup':>8s} {'paired':>7s} {'GFLOP':>7s}")
    for row in table:
        print(f"{row['variant']:15s} {row['old_ms']:9.1f} {row['new_ms']:9.1f} {row['speedup']:8.2f} "
              f"{row['paired_median']:7.2f} "
              f"{row['gflop_per_step']:7.2f}" + (f"  {row['fraction_of_peak']:.1%} of peak"
                                               if "fraction_of_peak" in row else ""))
    print(f"geometric mean speedup {summary['geomean_speedup']}; fp32 GEMM peak {args.peak_gflops} GFLOP/s")
    if args.out:
        sys.path.insert(0, str(HERE))
        from lra.io import write_json  # noqa: PLC0415 - this checkout's atomic writer, after the path is set

        write_json(Path(args.out), summary)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["time", "profile", "compare", "gemm"])
    ap.add_argument("old", nargs="?")
    ap.add_argument("new", nargs="?")
    ap.add_argument("--variants", default="")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-time", type=float, default=0.0,
                    help="time at least this many seconds of steps per side and round (more steps for fast variants)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--peak-gflops", type=float, default=None, help="the machine's fp32 GEMM rate, GFLOP/s (default: measured)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--old-set", nargs="*", default=[], metavar="KNOB=VALUE",
                    help="knob overrides for the old side, e.g. backend=reference (same checkout twice: a "
                         "variant's reference path against its auto path)")
    ap.add_argument("--new-set", nargs="*", default=[], metavar="KNOB=VALUE", help="knob overrides for the new side")
    args = ap.parse_args()
    {"time": cmd_time, "profile": cmd_profile, "compare": cmd_compare, "gemm": cmd_gemm}[args.command](args)


if __name__ == "__main__":
    main()
