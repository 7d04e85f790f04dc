"""Several jobs on one GPU (trainer.device=packed, lra.devices.acquire_gpu_slot): at most k at once, never
beside an exclusive (timing) job; a packed sweep runs its jobs concurrently with complete records; k jobs
that start together build a generated dataset once."""
import multiprocessing as mp
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from lra import results
from conftest import tiny_train_overrides

REPO = Path(__file__).resolve().parents[2]


def _hold_slot(lock_dir, jobs_per_gpu, hold_s, out, acquired=None):
    from lra.devices import acquire_gpu_slot

    device = acquire_gpu_slot(jobs_per_gpu, lock_dir=lock_dir, poll_s=0.02, count=1)
    start = time.time()
    if acquired is not None:
        acquired.set()
    time.sleep(hold_s)
    out.put((device.index, start, time.time()))


def _hold_exclusive(lock_dir, hold_s, out, acquired):
    from lra.devices import acquire_free_gpu

    acquire_free_gpu(lock_dir=lock_dir, poll_s=0.02, count=1)
    start = time.time()
    acquired.set()
    time.sleep(hold_s)
    out.put(("exclusive", start, time.time()))


def _most_at_once(spans):
    return max(sum(s <= t < e for _, s, e in spans) for _, t, _ in spans)


def test_at_most_k_packed_jobs_share_a_gpu(tmp_path):
    ctx = mp.get_context("fork")   # the children only lock files and sleep
    out = ctx.Queue()
    procs = [ctx.Process(target=_hold_slot, args=(tmp_path, 2, 1.2, out)) for _ in range(5)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    spans = [out.get(timeout=5) for _ in procs]
    assert {index for index, _, _ in spans} == {0}
    assert _most_at_once(spans) == 2      # two at once (they do share), never three


def test_an_exclusive_job_never_shares_its_gpu_with_packed_jobs(tmp_path):
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    first, second = ctx.Event(), ctx.Event()
    packed = ctx.Process(target=_hold_slot, args=(tmp_path, 4, 1.0, out, first))
    packed.start()
    assert first.wait(30)                                  # the packed job holds its slot
    exclusive = ctx.Process(target=_hold_exclusive, args=(tmp_path, 0.8, out, second))
    exclusive.start()
    assert second.wait(30)                                 # ... and the exclusive job gets the GPU after it
    late = ctx.Process(target=_hold_slot, args=(tmp_path, 4, 0.2, out))
    late.start()
    for p in (packed, exclusive, late):
        p.join(60)
    spans = sorted((out.get(timeout=5) for _ in range(3)), key=lambda s: s[1])
    (first, s0, e0), (second, s1, e1), (third, s2, e2) = spans
    assert first == 0 and second == "exclusive" and third == 0
    assert s1 >= e0 and s2 >= e1                           # no overlap either way


def test_packed_needs_a_gpu(tmp_path):
    from lra.schema import ConfigError
    from lra.training.job import run
    from conftest import compose_train

    if os.environ.get("CUDA_VISIBLE_DEVICES") != "" and __import__("torch").cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(ConfigError, match="trainer.device=packed shares a GPU"):
        run(compose_train(*tiny_train_overrides(tmp_path / "cache", "trainer.device=packed")), tmp_path / "job")


def test_packed_launcher_sweep_runs_its_jobs_at_once_with_complete_records(tmp_path):
    """The packed launcher on CPU: the jobs run concurrently; each record is complete."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "lra.cli.train", "-m", "hydra/launcher=packed", "trainer.device=cpu",
           f"hydra.sweep.dir={sweep}", "attention=full,linear", *tiny_train_overrides(tmp_path / "cache")]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "LRA_CONCURRENT_JOBS")}
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    records = [results.read_record(path) for path in sweep.rglob("record.json")]
    assert sorted(r["variant"] for r in records) == ["full", "linear"]
    for r in records:
        assert r["status"] == "ok", r["message"]
        assert {"accuracy", "val_accuracy", "loss", "steps", "steps_per_s", "padded_fraction"} <= set(r["metrics"])
        assert {"bucketing", "compile", "history"} <= set(r["case"]) and r["host"]["concurrent_jobs"] == 2
        assert r["config"]["attention"]["name"] == r["variant"] and r["finished_at"]
    spans = [(datetime.fromisoformat(r["started_at"]), datetime.fromisoformat(r["finished_at"])) for r in records]
    assert max(s for s, _ in spans) < min(e for _, e in spans), spans   # both ran at the same time
    assert (sweep / "report" / "report.md").is_file()


def _prepare_counting(cache_dir, counter):
    """lra.tasks.prepare of a tiny generated ListOps, counting how often its data is built."""
    from omegaconf import OmegaConf

    from lra import tasks
    from lra.tasks import listops

    real = listops.cached_tensors

    def counting(cache, name, key, build):
        def build_and_count():
            with open(counter, "a") as f:
                f.write("built\n")
            time.sleep(0.3)
            return build()
        return real(cache, name, key, build_and_count)

    listops.cached_tensors = counting
    cfg = OmegaConf.load(REPO / "conf" / "task" / "listops.yaml")
    cfg = OmegaConf.merge(cfg, {"cache_dir": str(cache_dir), "seq_len": 32, "num_train": 64, "num_val": 16,
                                "num_test": 16})
    data = tasks.prepare(cfg)
    return int(data.splits["train"][0].long().sum())


def test_jobs_starting_together_generate_the_dataset_once(tmp_path):
    counter = tmp_path / "builds.txt"
    ctx = mp.get_context("spawn")
    with ctx.Pool(3) as pool:
        sums = pool.starmap(_prepare_counting, [(tmp_path / "cache", counter)] * 3)
    assert len(set(sums)) == 1 and counter.read_text().count("built") == 1


def test_a_packed_record_keeps_its_shared_timing_out_of_the_metrics(tmp_path, monkeypatch):
    """Timings of jobs sharing a GPU are not speed results: steps/s goes to case.packed (simulated on
    the CPU: the GPU slot is replaced by the CPU)."""
    import torch

    from lra.training import config, finetune, job
    from conftest import compose_train

    for module in (config, finetune):  # validation checks the device, then the job acquires it
        monkeypatch.setattr(module, "device_of", lambda *args, **kwargs: torch.device("cpu"))
    monkeypatch.setenv("LRA_CONCURRENT_JOBS", "7")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    rec = job.run(compose_train(*tiny_train_overrides(tmp_path / "cache", "trainer.device=packed",
                                                        "trainer.jobs_per_gpu=3")), tmp_path / "job")
    assert rec["status"] == "ok" and rec["host"]["concurrent_jobs"] == 3     # 3 of the 7 run at once
    assert not {"steps_per_s", "tokens_per_s", "real_tokens_per_s"} & set(rec["metrics"])
    assert rec["case"]["packed"]["jobs_per_gpu"] == 3 and rec["case"]["packed"]["steps_per_s"] > 0


def test_accuracy_script_packs_jobs_and_returns_every_record(tmp_path):
    """scripts/device/accuracy.sh with JOBS=2 (on the CPU: PACK_DEVICE=cpu): both runs at once, both
    records and summary lines in what comes back."""
    import json
    import tarfile

    env = {**os.environ, "JOBS": "2", "PACK_DEVICE": "cpu", "OUT": str(tmp_path / "out"),
           "STAGE": str(tmp_path / "stage"), "TAG": "t", "LRA_SETUP_DONE": "1", "LRA_REPO": str(REPO),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("LRA_CONCURRENT_JOBS", None)
    p = subprocess.run(["bash", "scripts/device/accuracy.sh", "listops", "300", "full", "linear", "--",
                        *tiny_train_overrides(tmp_path / "cache")], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    lines = (tmp_path / "out" / "accuracy-listops-t.txt").read_text().splitlines()
    assert sorted(line.split()[0] for line in lines) == ["full", "linear"] and all(" ok " in l for l in lines)
    with tarfile.open(tmp_path / "out" / "accuracy-listops-t.tgz") as tar:
        records = [json.load(tar.extractfile(m)) for m in tar.getmembers() if m.name.startswith("records/")
                   and m.isfile()]
    assert sorted(r["variant"] for r in records) == ["full", "linear"]
    assert all(r["host"]["concurrent_jobs"] == 2 for r in records)
    spans = [(datetime.fromisoformat(r["started_at"]), datetime.fromisoformat(r["finished_at"])) for r in records]
    assert max(s for s, _ in spans) < min(e for _, e in spans), spans
