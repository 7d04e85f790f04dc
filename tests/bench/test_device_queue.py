"""scripts/device/queue.py: picking the next call, running a call's steps, unpacking what returns."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "device" / "queue.py"


def _queue(tmp_path: Path, calls: list[dict]) -> Path:
    path = tmp_path / "queue.json"
    path.write_text(json.dumps(calls))
    return path


def _call(cid: str, status: str = "pending", waits_for=(), steps=("true",)) -> dict:
    return {"id": cid, "title": cid, "status": status, "waits_for": list(waits_for), "est_s": 60,
            "carry": [".whl"], "steps": list(steps), "results": "dev"}


def _run(args, queue: Path, **env):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          env={**os.environ, "LRA_QUEUE": str(queue), **env}, timeout=60)


def test_committed_queue_is_valid():
    calls = json.loads((SCRIPT.parent / "queue.json").read_text())
    assert len({c["id"] for c in calls}) == len(calls)
    for c in calls:
        assert c["status"] in ("pending", "done")
        assert c["est_s"] <= 560, f"call {c['id']} would not fit one device command"
        assert c["steps"] and ".whl" in c["carry"]


def test_next_skips_done_and_waiting_calls(tmp_path):
    q = _queue(tmp_path, [_call("a", "done"), _call("b", waits_for=[21]), _call("c"), _call("d")])
    res = _run(["next"], q)
    assert res.returncode == 0, res.stderr
    assert "next call: c" in res.stdout
    assert "queue.py run c" in res.stdout


def test_next_says_why_nothing_is_ready(tmp_path):
    q = _queue(tmp_path, [_call("a", "done"), _call("b", waits_for=[14, 20])])
    res = _run(["next"], q)
    assert res.returncode == 1
    assert "b (waits for issue 14, 20)" in res.stdout


def test_run_packs_each_step_and_unpack_places_records(tmp_path):
    out = tmp_path / "out"
    # a step that writes an accuracy-style pack with one record, and a step that fails
    step = ("mkdir -p $OUT/x/records && echo '{\"kind\": \"train\"}' > $OUT/x/records/train-a.json && "
            "tar -czf $OUT/accuracy-listops-small.tgz -C $OUT/x records && rm -r $OUT/x && "
            "echo '{\"rows\": []}' > $OUT/peers-dev.json")
    q = _queue(tmp_path, [_call("t1", steps=[step, "exit 3"])])
    res = _run(["run", "t1", "--no-gpu-tests"], q, OUT=str(out), LRA_STAGE=str(tmp_path / "stage"))
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["call-t1.tgz", "call-t1.txt"]
    summary = (out / "call-t1.txt").read_text()
    assert "step 1: rc 0" in summary and "step 2: rc 3" in summary
    with tarfile.open(out / "call-t1.tgz") as tar:
        assert "call-t1/out/accuracy-listops-small.tgz" in tar.getnames()

    # unpack into a copy of the repo layout: results/<results>/accuracy-listops-small/train-a.json
    import importlib.util

    spec = importlib.util.spec_from_file_location("device_queue", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    placed = mod.unpack_into(out / "call-t1.tgz", tmp_path / "results" / "dev")
    assert (tmp_path / "results" / "dev" / "accuracy-listops-small" / "train-a.json").is_file()
    assert any("1 records" in p for p in placed)
    assert (tmp_path / "results" / "dev" / "peers-dev.json").is_file()


def test_unknown_call_names_the_choices(tmp_path):
    q = _queue(tmp_path, [_call("a")])
    res = _run(["run", "zzz", "--no-gpu-tests"], q)
    assert res.returncode != 0 and "ids: ['a']" in res.stderr


def _accuracy_jobs():
    """(call id, lra-train overrides) of every job the committed queue's accuracy.sh steps start, once per
    distinct configuration (jobs that differ only in `seed=` validate alike)."""
    import shlex

    seen: set[tuple[str, ...]] = set()
    for c in json.loads((SCRIPT.parent / "queue.json").read_text()):
        for step in c["steps"]:
            lexer = shlex.shlex(step.replace("$PWD", "/data-on-the-device"), posix=True, punctuation_chars=True)
            lexer.wordchars += "$=[],.-/:+"
            words = list(lexer)
            # a step may start several commands: `(A & B & wait)`, `A; B`, `A && B`
            commands, current = [], []
            for w in words:
                if w in ("(", ")", "&", ";", "&&", "|", "||"):
                    commands.append(current)
                    current = []
                else:
                    current.append(w)
            commands.append(current)
            for cmd in commands:
                if "scripts/device/accuracy.sh" not in cmd:
                    continue
                args = cmd[cmd.index("scripts/device/accuracy.sh") + 1:]
                split = args.index("--") if "--" in args else len(args)
                task, variants, overrides = args[0], args[2:split], args[split + 1:]
                for v in variants:
                    job = [f"task={task}", f"attention={v}", *overrides]
                    key = tuple(sorted(o for o in job if not o.startswith("seed=")))  # a seed validates alike
                    if key not in seen:
                        seen.add(key)
                        yield c["id"], job


@pytest.mark.parametrize("call,overrides", list(_accuracy_jobs()), ids=lambda x: x if isinstance(x, str) else "")
def test_every_queued_training_job_has_a_valid_config(call, overrides):
    """A typo in a queued override (a knob that does not exist, a value out of range) would cost a
    whole device window: every job's config passes lra-train's checks here, before any data."""
    from conftest import compose_train
    from lra.training.config import validate

    # a GPU shared by packed jobs is the device's business too ($PACK_DEVICE=cpu in accuracy.sh's own test)
    cfg = compose_train(*(o.replace("trainer.device=packed", "trainer.device=cpu") for o in overrides))
    try:
        validate(cfg)
    except Exception as err:  # a missing data folder is the device's business, not the config's
        assert "data-on-the-device" in str(err), f"call {call}: {overrides}: {err}"


def _bench_calls():
    """(call id, lra-bench overrides) of every bench.sh step of the committed queue."""
    import shlex

    for c in json.loads((SCRIPT.parent / "queue.json").read_text()):
        for step in c["steps"]:
            words = shlex.split(step)
            if "scripts/device/bench.sh" in words:
                yield c["id"], words[words.index("scripts/device/bench.sh") + 2:]


@pytest.mark.parametrize("call,overrides", list(_bench_calls()), ids=lambda x: x if isinstance(x, str) else "")
def test_every_queued_bench_call_has_a_valid_config(call, overrides):
    """Each bench step's overrides resolve into lra-bench's settings for a GPU, before any work."""
    import torch
    from conftest import compose_bench
    from lra.bench.settings import resolve_settings

    s = resolve_settings(compose_bench(*overrides, "device=cuda"), torch.device("cuda"))
    assert s["modes"], call


def test_queued_bench_grid_covers_the_full_lengths_the_causal_axis_and_decode():
    import torch
    from conftest import compose_bench
    from lra.bench.settings import resolve_settings

    seen = set()
    for _, overrides in _bench_calls():
        s = resolve_settings(compose_bench(*overrides, "device=cuda"), torch.device("cuda"))
        for mode in s["modes"]:
            lengths = s["lengths"] if mode in ("op_fwd", "op_fwd_bwd") else s.get(mode, {}).get("lengths", [])
            causal = [True] if mode == "decode" else s["causal"]
            seen |= {(mode, v, c, n) for v in s["variants"] for c in causal for n in lengths}
    import attention_variants as av
    in_tree = [n for n in av.available() if av.get(n)[0].__module__.startswith("attention_variants.")]
    assert len(in_tree) >= 12
    for v in in_tree:
        for c in (False, True):
            for n in (256, 16384):
                assert ("op_fwd", v, c, n) in seen and ("op_fwd_bwd", v, c, n) in seen, (v, c, n)
            for n in (1000, 2000, 4000):
                assert ("model_step", v, c, n) in seen, (v, c, n)
        assert ("decode", v, True, 16384) in seen, v
