"""Faults: killed and preempted jobs resume, concurrent jobs share data and results folders safely,
bad input fails early with a clear message, a submitit sweep runs end to end."""
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from lra import results
from lra.data import cached_tensors
from lra.training.job import run
from conftest import compose_train, tiny_train_overrides

REPO = Path(__file__).resolve().parents[2]


def _cli_overrides(cache, steps):
    return [o for o in tiny_train_overrides(cache) if not o.startswith("trainer.steps")] + [
        f"trainer.steps={steps}", "trainer.checkpoint_every=10", "trainer.eval_every=1000", "trainer.log_every=5",
        "trainer.task_overrides.num_train=256", "attention=performer", "attention.num_features=8"]


def _train_cli(job_dir, overrides):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "lra.cli.train", f"hydra.run.dir={job_dir}", *overrides],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_checkpoint(job_dir, proc, min_step, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        ckpt = job_dir / "checkpoint.pt"
        if ckpt.is_file():
            try:
                if torch.load(ckpt, weights_only=False)["step"] >= min_step:
                    return
            except Exception:  # being replaced right now
                pass
        if proc.poll() is not None:
            raise AssertionError(f"training ended before step {min_step}:\n{proc.stdout.read()}")
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


def test_killed_and_preempted_training_resumes_to_the_same_record(tmp_path):
    overrides = _cli_overrides(tmp_path / "cache", steps=400)
    ref = _train_cli(tmp_path / "ref", overrides)
    assert ref.wait(timeout=300) == 0, ref.stdout.read()
    # 1) SIGTERM (preemption): checkpoint written at the next step, exit code 143
    job = tmp_path / "job"
    p = _train_cli(job, overrides)
    _wait_for_checkpoint(job, p, 10)
    p.send_signal(signal.SIGTERM)
    out = p.communicate(timeout=120)[0]
    assert p.returncode == 143, out
    assert "preempted" in out and not (job / "record.json").exists()
    # 2) SIGKILL (no chance to clean up) of the resumed run, after it got further
    step_after_term = torch.load(job / "checkpoint.pt", weights_only=False)["step"]
    p = _train_cli(job, overrides)
    _wait_for_checkpoint(job, p, step_after_term + 10)
    p.kill()
    p.wait(timeout=60)
    # 3) resubmitted: runs to the end
    p = _train_cli(job, overrides)
    out = p.communicate(timeout=300)[0]
    assert p.returncode == 0, out
    assert "resuming" in out
    a = json.loads((tmp_path / "ref" / "record.json").read_text())
    b = json.loads((job / "record.json").read_text())
    assert b["status"] == "ok"
    for key in ("accuracy", "loss", "val_accuracy", "val_loss", "steps"):
        assert a["metrics"][key] == b["metrics"][key], key


def _build_counting(counter_path, cache_dir, _):
    def build():
        with open(counter_path, "a") as f:
            f.write("built\n")
        time.sleep(0.5)
        return {"x": torch.arange(10)}

    return cached_tensors(cache_dir, "race", {"k": 1}, build)["x"].sum().item()


def test_data_is_prepared_once_by_concurrent_jobs(tmp_path):
    counter = tmp_path / "builds.txt"
    ctx = mp.get_context("spawn")
    with ctx.Pool(3) as pool:
        sums = pool.starmap(_build_counting, [(counter, tmp_path / "cache", i) for i in range(3)])
    assert sums == [45, 45, 45]
    assert counter.read_text().count("built") == 1


def test_concurrent_writers_all_land_and_partial_files_are_never_read(tmp_path):
    def writer(i):
        for j in range(15):
            results.write_record(results.make_record("bench", variant=f"v{i}", metrics={"j": j}), tmp_path)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (tmp_path / ".half-written.json.part").write_text('{"schema": 1, "kind": "tra')
    (tmp_path / "other.json").write_text('{"not": "a record"}')
    df = results.load(tmp_path)
    assert len(df) == 60 and sorted(df["variant"].unique()) == ["v0", "v1", "v2", "v3"]


BAD_INPUTS = [
    (["task=nope"], "Could not find 'task/nope'"),  # Hydra itself lists the valid choices
    (["attention=full", "attention.name=perfromer"], r"unknown attention variant 'perfromer'.*Available: .*performer"),
    (["attention=flash", "attention.backend=fastest"], r"unknown flash backend 'fastest'; choose one of auto"),
    (["attention=reformer", "attention.n_buckets=3"], "n_buckets"),
    (["trainer.model_overrides.heads=3"], r"d_model=16 is not divisible by model.heads=3"),
    (["task=text", "task.data_dir=/nonexistent/imdb"], r"/nonexistent/imdb.*lra-data prepare"),
    (["task=image", "task.data_dir=__EMPTY__"], r"cifar-10-batches-py"),
    (["trainer.schedule=exponential"], "trainer.schedule='exponential' is invalid: it must be one of rsqrt, linear"),
]


@pytest.mark.parametrize("overrides,message", BAD_INPUTS, ids=[o[-1] for o, _ in BAD_INPUTS])
def test_bad_input_fails_before_training_with_a_clear_message(tmp_path, overrides, message):
    overrides = [o.replace("__EMPTY__", str(tmp_path)) for o in overrides]
    cache = tmp_path / "cache"
    with pytest.raises(Exception) as err:
        cfg = compose_train(*tiny_train_overrides(cache, *overrides))
        run(cfg, tmp_path / "job")
    import re

    assert re.search(message, str(err.value), re.S), str(err.value)
    assert not (tmp_path / "job" / "checkpoint.pt").exists()


def test_cli_error_is_one_paragraph_not_a_traceback(tmp_path):
    p = subprocess.run([sys.executable, "-m", "lra.cli.train", f"hydra.run.dir={tmp_path}", "attention=full",
                        "attention.name=perfromer", "trainer=quick"], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2
    assert "unknown attention variant 'perfromer'" in p.stderr and "Traceback" not in p.stderr


def test_submitit_local_sweep_end_to_end(tmp_path):
    """Two jobs at once on this machine: each runs with half its cores' threads (issue 19: both used
    to take every core), and the records say so."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from lra.devices import cpus_available

    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "lra.cli.train", "-m", "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep}",
           "attention=full,linear", *tiny_train_overrides(tmp_path / "cache")]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "LRA_CONCURRENT_JOBS")}
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    df = results.load(sweep)
    assert sorted(df["variant"]) == ["full", "linear"] and (df["status"] == "ok").all()
    assert (df["host_concurrent_jobs"] == 2).all()
    assert (df["host_torch_threads"] == max(1, cpus_available() // 2)).all()
    report = (sweep / "report" / "report.md").read_text()
    assert "full" in report and "linear" in report
