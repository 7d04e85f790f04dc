"""Same behaviour, shown: run a fixed set of commands and compare their records with a saved set.

A refactor (or a fix that must not change what training computes) is checked in two steps, on one
machine and one torch build:

    python scripts/golden.py record golden-before.json     # on the old commit
    python scripts/golden.py record golden-after.json      # on the new commit
    python scripts/golden.py compare golden-before.json golden-after.json

Both take command names to run or compare only those (``record out.json bench-grid``).

``record`` runs each command of :data:`COMMANDS` in a fresh job directory (``lra-train`` with a
fixed seed and two threads, ``lra-bench`` on a small grid of every mode), reads the records they
write and keeps, per record, every field with its value. ``compare`` says, per record, whether
(1) the two hold the same fields (the flattened key paths) and (2) every value that is not a
timing, a timestamp, the host or the commit is bit-identical (floats compared exactly). Exit 0 when
both hold for every record, 1 otherwise, with the differences listed.

Timings differ from run to run and are left out of (2); :data:`VOLATILE` names them.
Bit-identical numbers need the same CPU, torch build and thread count on both sides.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

TRAIN = ["lra-train", "trainer=quick", "seed=1", "threads=2", "trainer.progress=false"]
BENCH_GRID = ["lra-bench", "threads=2", "progress=false", "summary=false", "seed=1",
              "modes=[op_fwd,op_fwd_bwd,model_step,exactness,smoothness,train_overhead]",
              "variants=all", "lengths=[64,128]", "repeats=2", "warmup=1", "min_time_s=0",
              "model_step.lengths=[64,128]", "exactness.lengths=[64,128]", "exactness.fit_steps=3",
              "smoothness.lengths=[16,32]", "smoothness.radius_sweep=[0.5]", "smoothness.iters=4",
              "smoothness.search.steps=2", "smoothness.samples=1",
              "train_overhead.lengths=[64]", "train_overhead.repeats=2", "train_overhead.warmup=1",
              "train_overhead.steps_per_call=2"]

#: name -> command (a job directory is appended as hydra.run.dir)
COMMANDS: dict[str, list[str]] = {
    "train-flash": [*TRAIN, "attention=flash"],
    "train-performer": [*TRAIN, "attention=performer"],
    "train-bigbird": [*TRAIN, "attention=bigbird"],
    "train-linear": [*TRAIN, "attention=linear"],
    "pretrain-mlm": [*TRAIN, "attention=flash", "pretrain=mlm", "trainer.steps=200", "pretrain.steps=100"],
    "bench-grid": BENCH_GRID,
}

#: flattened key paths whose values are not compared (run-to-run timings, clocks, host, commit, paths)
VOLATILE = re.compile(
    r"(^|\.)(started_at|finished_at|git_commit|host|timings_ms|timings_ms_by_part|checkpoint|command_line|"
    r"results_dir)(\.|$)"
    r"|(^|\.)(ms|ms_\w+|\w+_ms|steps_per_s|\w*tokens_per_s\w*|train_time_s|pretrain_train_time_s|timed_s|wall_s|"
    r"repeats|tflops|tflops_fraction|overhead_pct|optimizer_pct|loop_pct|bucketing_speedup|packed|peak_mem_mb|"
    r"input_mem_mb|gemm_\w+|calibration\.\w+)$")


def flatten(obj, prefix: str = "") -> dict[str, object]:
    """``{"a.b.0.c": value}`` for every leaf of a JSON value (lists indexed by position)."""
    if isinstance(obj, dict):
        out: dict[str, object] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out or {prefix.rstrip("."): {}}
    if isinstance(obj, list):
        out = {}
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}{i}."))
        return out or {prefix.rstrip("."): []}
    return {prefix.rstrip("."): obj}


def records_of(job_dir: Path) -> dict[str, dict]:
    """The records a job wrote, by path relative to its job directory."""
    out = {}
    for path in sorted(job_dir.rglob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("kind") in ("train", "bench"):
            out[str(path.relative_to(job_dir))] = data
    return out


def record(out: Path, names: list[str] | None = None) -> int:
    env = {**os.environ, "LRA_CACHE_DIR": os.environ.get("LRA_CACHE_DIR") or tempfile.mkdtemp(prefix="lra-golden-")}
    saved: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="lra-golden-") as tmp:
        for name, command in COMMANDS.items():
            if names and name not in names:
                continue
            job = Path(tmp) / name
            print(f"[golden] {name}: {' '.join(command)}", flush=True)
            done = subprocess.run([*command, f"hydra.run.dir={job}"], env=env, capture_output=True, text=True)
            if done.returncode not in (0, 1):
                print(done.stdout[-3000:], done.stderr[-3000:], sep="\n")
                raise SystemExit(f"[golden] {name} exited {done.returncode}")
            for rel, rec in records_of(job).items():
                saved[f"{name}/{rel}"] = rec
    out.write_text(json.dumps(saved, indent=1, sort_keys=True))
    print(f"[golden] {len(saved)} records -> {out}")
    return 0


def compare(a_path: Path, b_path: Path, names: list[str] | None = None) -> int:
    """Compare two saved sets (only the records of the commands ``names``, when given)."""
    a, b = json.loads(a_path.read_text()), json.loads(b_path.read_text())
    if names:
        a, b = ({k: v for k, v in x.items() if k.split("/", 1)[0] in names} for x in (a, b))
    problems = [f"only in {a_path.name}: {k}" for k in sorted(set(a) - set(b))]
    problems += [f"only in {b_path.name}: {k}" for k in sorted(set(b) - set(a))]
    same = 0
    for key in sorted(set(a) & set(b)):
        fa, fb = flatten(a[key]), flatten(b[key])
        found = [f"  field only in {a_path.name}: {f}" for f in sorted(set(fa) - set(fb))]
        found += [f"  field only in {b_path.name}: {f}" for f in sorted(set(fb) - set(fa))]
        found += [f"  {f}: {fa[f]!r} != {fb[f]!r}" for f in sorted(set(fa) & set(fb))
                  if not VOLATILE.search(f) and fa[f] != fb[f]]
        if found:
            problems.append(f"{key}:\n" + "\n".join(found[:40]) + (f"\n  ... {len(found) - 40} more" if len(found) > 40
                                                                     else ""))
        else:
            same += 1
    print(f"[golden] {same} of {len(set(a) | set(b))} records identical (fields, and values but timings)")
    for p in problems:
        print(p)
    return 0 if not problems else 1


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "record":
        return record(Path(argv[1]), argv[2:] or None)
    if len(argv) >= 3 and argv[0] == "compare":
        return compare(Path(argv[1]), Path(argv[2]), argv[3:] or None)
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
