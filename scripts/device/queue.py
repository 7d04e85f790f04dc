#!/usr/bin/env python3
"""The GPU call queue: which device call runs next, running it on the device, unpacking what it returns.

The queue is ``scripts/device/queue.json``: a list of calls, in the order they should run, each::

    id          short name, also the name of the files the call returns (call-<id>.tgz / .txt)
    title       what it measures
    status      "pending" | "done"
    waits_for   issue numbers that must land before the call is worth a window (empty: ready)
    est_s       estimated seconds on the device, GPU tests included (a call must stay under ~540)
    carry       paths the `run` tool must carry (".whl" always; ".data" for Text)
    steps       shell commands run one after another from the repository root; each writes its
                files into $OUT (accuracy.sh / bench.sh do), and its budget is part of its command
    results     folder under results/ that `unpack` fills (e.g. nvidia-h200)
    done        {date, commit, summary} once unpacked

Three verbs (standard library only, plus :mod:`lra.io`, which needs nothing else; the device has no
hydra until the carried wheels are installed):

    python3 scripts/device/queue.py next            # here: the next ready call and the exact `run` arguments
    python3 scripts/device/queue.py run ID          # on the device: GPU tests, then the call's steps
    python3 scripts/device/queue.py unpack DIR      # here: files_at of the reply -> results/, queue updated

``run`` always starts with ``pytest -m gpu`` (a broken GPU path must show before minutes go to
measurements), then runs each step with ``OUT`` pointing into a staging folder, and after every
step packs everything so far into ``$OUT/call-<id>.tgz`` plus a one-line-per-step ``call-<id>.txt``:
two files whatever happens, and a call stopped at its limit still returns the steps it finished.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO))  # this checkout's lra (lra/__init__.py and lra/io.py: standard library only)

from lra.io import atomic_write, write_text  # noqa: E402 - after the path fix above
QUEUE = Path(os.environ.get("LRA_QUEUE", HERE / "queue.json"))
GPU_TESTS_S = 150          # the GPU tests' own limit inside a call
CALL_LIMIT_S = 560         # what a call may spend in all (timeout_s of the run tool: 600)


def load_queue(path: Path = QUEUE) -> list[dict]:
    calls = json.loads(path.read_text())
    ids = [c["id"] for c in calls]
    if len(set(ids)) != len(ids):
        raise SystemExit(f"queue.json: duplicate call ids in {ids}")
    for c in calls:
        if c.get("status") not in ("pending", "done"):
            raise SystemExit(f"queue.json: call {c['id']!r} has status {c.get('status')!r}; use pending or done")
    return calls


def save_queue(calls: list[dict], path: Path = QUEUE) -> None:
    write_text(path, json.dumps(calls, indent=2) + "\n")


def next_call(calls: list[dict]) -> dict | None:
    """The first pending call that waits for no open issue."""
    return next((c for c in calls if c["status"] == "pending" and not c.get("waits_for")), None)


def find(calls: list[dict], call_id: str) -> dict:
    for c in calls:
        if c["id"] == call_id:
            return c
    raise SystemExit(f"no call {call_id!r} in queue.json; ids: {[c['id'] for c in calls]}")


def git_commit() -> str:
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                           capture_output=True, text=True).stdout.strip()
    return head + ("-dirty" if dirty else "")


# ----------------------------------------------------------------------------- next (here)

def cmd_next(args) -> int:
    calls = load_queue()
    call = find(calls, args.id) if args.id else next_call(calls)
    if call is None:
        waiting = [f"{c['id']} (waits for issue {', '.join(map(str, c['waits_for']))})"
                   for c in calls if c["status"] == "pending"]
        print("no ready call in the queue" + (f"; waiting: {'; '.join(waiting)}" if waiting else ": all done"))
        return 1
    carry = call.get("carry", [".whl"])
    missing = [p for p in carry if not (REPO / p).exists()]
    print(f"next call: {call['id']}: {call['title']} (est. {call['est_s']} s)")
    if missing:
        print(f"  prepare first (missing here: {missing}): bash scripts/device/prepare.sh")
    print("run tool arguments:")
    print(json.dumps({"command": f"LRA_GIT_COMMIT={git_commit()} python3 scripts/device/queue.py run {call['id']}",
                      "carry": carry, "timeout_s": 600}, indent=1))
    return 0


# ----------------------------------------------------------------------------- run (device)

def _pack(stage: Path, out: Path, name: str) -> None:
    def write(tmp: Path) -> None:
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(stage, arcname=name)

    atomic_write(out / f"{name}.tgz", write)


def cmd_run(args) -> int:
    call = find(load_queue(), args.id)
    start = time.monotonic()
    out = Path(os.environ.get("OUT") or REPO / "out")
    name = f"call-{call['id']}"
    stage = Path(os.environ.get("LRA_STAGE", f"/tmp/lra-device/{name}"))
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    out.mkdir(parents=True, exist_ok=True)
    summary = out / f"{name}.txt"
    lines: list[str] = []

    def note(line: str) -> None:
        print(f"[queue] {line}", flush=True)
        lines.append(line)
        summary.write_text("\n".join(lines) + "\n")

    def shell(cmd: str, log: Path, limit: float) -> int:
        env = dict(os.environ, OUT=str(stage / "out"))
        (stage / "out").mkdir(exist_ok=True)
        with open(log, "w") as fh:
            try:
                return subprocess.run(["bash", "-c", f". scripts/device/setup.sh; {cmd}"], cwd=REPO, env=env,
                                      stdout=fh, stderr=subprocess.STDOUT, timeout=max(limit, 1)).returncode
            except subprocess.TimeoutExpired:
                return 124

    note(f"call {call['id']}: {call['title']}; commit {os.environ.get('LRA_GIT_COMMIT', 'unset')}")
    t0 = time.monotonic()
    if args.gpu_tests:
        rc = shell("python3 -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tail -n 40",
                   stage / "gpu-tests.log", GPU_TESTS_S)
        tail = (stage / "gpu-tests.log").read_text().strip().splitlines()[-1:] or ["(no output)"]
        note(f"gpu tests: rc {rc}, {time.monotonic() - t0:.0f} s: {tail[0]}")
        _pack(stage, out, name)
    for i, step in enumerate(call["steps"], 1):
        left = CALL_LIMIT_S - (time.monotonic() - start)
        if left < 20:
            note(f"step {i}: not started, {left:.0f} s left: {step}")
            continue
        t0 = time.monotonic()
        rc = shell(step, stage / f"step-{i}.log", left - 10)
        note(f"step {i}: rc {rc}, {time.monotonic() - t0:.0f} s: {step}")
        _pack(stage, out, name)
    note(f"done in {time.monotonic() - start:.0f} s")
    _pack(stage, out, name)
    return 0


# ----------------------------------------------------------------------------- unpack (here)

def unpack_into(tgz: Path, results: Path) -> list[str]:
    """Records of one returned call -> ``results``; returns what went where (for COMMANDS.md).

    bench parts go to ``results/bench-<tag>/``, accuracy records to ``results/accuracy-<task>[-tag]/``,
    other JSON a step wrote into ``$OUT`` (``scripts/peers.py``) to ``results/``, the GPU test log to
    ``results/gpu_tests-<id>.log``.
    """
    stage = Path(f"/tmp/lra-unpack/{tgz.stem}")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    with tarfile.open(tgz) as tar:
        tar.extractall(stage, filter="data")
    root = stage / tgz.stem
    placed = []
    results.mkdir(parents=True, exist_ok=True)
    log = root / "gpu-tests.log"
    if log.is_file():
        dest = results / f"gpu_tests-{tgz.stem.removeprefix('call-')}.log"
        shutil.copy(log, dest)
        placed.append(str(dest))
    for part in sorted((root / "out").glob("*.tgz")):
        label = part.name[: -len(".tgz")]
        inner = stage / "inner" / label
        inner.mkdir(parents=True)
        with tarfile.open(part) as tar:
            tar.extractall(inner, filter="data")
        if label.startswith("bench-"):
            tag = label.split("-", 1)[1]
            for slug in ("nvidia-h200-", "nvidia-h100-80gb-", "cpu-"):
                tag = tag.removeprefix(slug)
            dest = results / f"bench-{tag}"
        else:
            dest = results / label
        dest.mkdir(parents=True, exist_ok=True)
        n = 0
        for rec in (inner / "records").glob("*.json"):
            shutil.copy(rec, dest / rec.name)
            n += 1
        placed.append(f"{dest} ({n} records)")
    for extra in sorted((root / "out").glob("*.json")):     # e.g. scripts/peers.py output (not a record)
        shutil.copy(extra, results / extra.name)
        placed.append(str(results / extra.name))
    return placed


def cmd_unpack(args) -> int:
    files = Path(args.files_at)
    calls = load_queue()
    done_any = False
    for tgz in sorted(files.glob("call-*.tgz")):
        call = find(calls, tgz.stem.removeprefix("call-"))
        results = REPO / "results" / call.get("results", "nvidia-h200")
        placed = unpack_into(tgz, results)
        txt = files / f"{tgz.stem}.txt"
        summary = txt.read_text().strip() if txt.is_file() else "(no summary)"
        date = dt.date.today().isoformat()
        commands = results / "COMMANDS.md"
        with open(commands, "a") as fh:
            fh.write(f"\n## Call `{call['id']}` ({date}): {call['title']}\n\n"
                     f"Run with `python3 scripts/device/queue.py run {call['id']}` (steps below, each after "
                     f"`. scripts/device/setup.sh`), preceded by `pytest -m gpu`.\n\n"
                     + "".join(f"- `{s}`\n" for s in call["steps"])
                     + "\nWhat came back:\n\n" + "".join(f"- {p}\n" for p in placed)
                     + "\nSummary:\n\n```\n" + summary + "\n```\n")
        call["status"] = "done"
        call["done"] = {"date": date, "summary": summary.splitlines()}
        done_any = True
        print(f"unpacked {tgz.name}: " + "; ".join(placed))
    if not done_any:
        print(f"no call-*.tgz in {files}")
        return 1
    save_queue(calls)
    print("now: lra-report results out=results name=REPORT.md; then commit results/ and scripts/device/queue.json")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="verb", required=True)
    n = sub.add_parser("next", help="print the next ready call and the run tool's arguments")
    n.add_argument("id", nargs="?")
    r = sub.add_parser("run", help="on the device: GPU tests, then the call's steps")
    r.add_argument("id")
    r.add_argument("--no-gpu-tests", dest="gpu_tests", action="store_false",
                   help="skip the GPU tests (for trying a call's steps on a CPU)")
    u = sub.add_parser("unpack", help="the reply's files_at -> results/, mark the call done")
    u.add_argument("files_at")
    args = p.parse_args(argv)
    return {"next": cmd_next, "run": cmd_run, "unpack": cmd_unpack}[args.verb](args)


if __name__ == "__main__":
    sys.exit(main())
