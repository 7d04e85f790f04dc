"""Records that never lie, inputs that never hang (issue 19): validation before any work, exit
statuses, the effective configuration in the record, the command-line-vs-preset rule, CPU
threads per job, and a ListOps progress bar that moves."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from lra import callbacks, devices, results, tasks
from lra.cli import train as cli_train
from lra.tasks import listops
from lra.schema import ConfigError
from lra.training import config, state
from lra.training.job import run
from conftest import compose_train, tiny_train_overrides

REPO = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def deadline(seconds: float):
    """Fail (TimeoutError) instead of hanging when the block runs longer than ``seconds``."""
    def on_alarm(*_):
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _hydra_main(monkeypatch, app, tmp_path, *args) -> int:
    """Run a Hydra CLI in this process; its exit status."""
    monkeypatch.setattr(sys, "argv", [app.__module__, f"hydra.run.dir={tmp_path / 'run'}", *args])
    try:
        app()
    except SystemExit as stop:
        return stop.code
    return 0


# ----------------------------------------------------------------------------- validation before any work

BAD_TRAIN = [  # (overrides, message) -- each must fail in validate(), before data or a model exist
    (["trainer.task_overrides.seq_len=0"], r"task\.seq_len=0 \(set by trainer\.task_overrides\.seq_len\) is invalid: "
                                           r"it must be an integer >= 1.*fix: trainer\.task_overrides\.seq_len="),
    (["trainer.task_overrides.seq_len=-5"], r"task\.seq_len=-5 .*integer >= 1"),
    (["trainer.task_overrides.num_val=0"], r"task\.num_val=0 .*integer >= 1"),
    (["trainer.steps=0"], r"trainer\.steps=0 is invalid: it must be an integer >= 1.*fix: trainer\.steps="),
    (["trainer.batch_size=-1"], r"trainer\.batch_size=-1 is invalid"),
    (["trainer.lr=0"], r"trainer\.lr=0 is invalid: it must be a number > 0"),
    (["trainer.warmup=-3"], r"trainer\.warmup=-3 is invalid: it must be an integer >= 0"),
    (["trainer.eval_every=0"], r"trainer\.eval_every=0"),
    (["trainer.log_every=0"], r"trainer\.log_every=0"),
    (["trainer.checkpoint_every=0"], r"trainer\.checkpoint_every=0"),
    (["trainer.grad_clip=-1"], r"trainer\.grad_clip=-1"),
    (["trainer.steps=2.5"], r"trainer\.steps=2\.5 is invalid: it must be an integer"),
    (["trainer.betas=[0.9,1.5]"], r"trainer\.betas=\[0\.9,1\.5\] is invalid: it must be a list of 2 numbers, each"),
    (["trainer.model_overrides.layers=0"], r"model\.layers=0 is invalid"),
    (["trainer.model_overrides.d_model=0"], r"model\.d_model=0 is invalid"),
    (["trainer.model_overrides.dropout=1.5"], r"model\.dropout=1\.5 is invalid: it must be a number >= 0 and < 1"),
    (["model.mlp_dim=-4"], r"model\.mlp_dim=-4 is invalid.*fix: model\.mlp_dim="),
    (["seed=-1"], r"seed=-1 is invalid"),
    (["threads=0"], r"threads=0 is invalid: it must be auto .* or an integer >= 1"),
    (["attention=performer", "attention.num_features=0"], r"attention\.num_features=0 is invalid"),
    (["attention=performer", "attention.kernel_eps=-1e-6"], r"attention\.kernel_eps=-1e-06 is invalid: it must be a number >= 0"),
    (["attention=random_feature", "attention.normalizer_floor=1"], r"attention\.normalizer_floor=1 is invalid"),
    (["attention=nystrom", "attention.landmarks=0"], r"attention\.landmarks=0 is invalid"),
    (["attention=local", "attention.window=-1"], r"attention\.window=-1 is invalid"),
    (["attention=reformer", "attention.n_hashes=0"], r"attention\.n_hashes=0 is invalid"),
    (["attention=random_feature", "attention.sigma_init=0"], r"attention\.sigma_init=0 is invalid"),
    (["attention=performer", "attention.num_features=2.5"], r"attention\.num_features=2\.5 is invalid"),
    (["attention=linformer", "attention.share_kv=3"], r"attention\.share_kv=3 is invalid: it must be true or false"),
    # several bad values: one message naming each
    (["trainer.steps=0", "trainer.lr=-1"], r"trainer\.steps=0 .*; trainer\.lr=-1 "),
    # ListOps cannot exist this short: fails in validate() (counted, not generated)
    (["trainer.task_overrides.seq_len=3"], r"task\.seq_len=3 is too short for ListOps: only 10 distinct"),
]


@pytest.mark.parametrize("overrides,message", BAD_TRAIN, ids=[" ".join(o) for o, _ in BAD_TRAIN])
def test_bad_values_fail_in_validation_before_any_data(tmp_path, monkeypatch, overrides, message):
    import re

    prepared = []
    monkeypatch.setattr(tasks, "prepare", lambda cfg: prepared.append(cfg))
    cfg = compose_train(*tiny_train_overrides(tmp_path / "cache", *overrides))
    with pytest.raises(ConfigError) as err:
        run(cfg, tmp_path / "job")
    assert re.search(message, str(err.value)), str(err.value)
    assert not prepared and not (tmp_path / "cache").exists()


def test_sweep_records_a_config_error_and_goes_on(tmp_path):
    cfg = compose_train(*tiny_train_overrides(tmp_path / "cache", "trainer.steps=0"))
    rec = run(cfg, tmp_path / "job", raise_config_errors=False)
    assert rec["status"] == "error" and "trainer.steps=0" in rec["message"]
    assert json.loads((tmp_path / "job" / "record.json").read_text())["status"] == "error"
    assert rec["config"]["trainer"]["steps"] == 0 and "host" in rec  # what it was asked to run, and where


def test_seq_len_zero_at_lra_settings_exits_2_within_seconds(tmp_path):
    """Used to hang at "ListOps: generating 0%" with its worker processes left behind."""
    t0 = time.time()
    p = subprocess.run([sys.executable, "-m", "lra.cli.train", f"hydra.run.dir={tmp_path}", "task.seq_len=0",
                        f"task.cache_dir={tmp_path / 'cache'}"], cwd=REPO, capture_output=True, text=True,
                       timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
    assert "task.seq_len=0 is invalid: it must be an integer >= 1" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "cache").exists()
    assert time.time() - t0 < 60


@pytest.mark.parametrize("args", [(0, 0), (1, 0), (5, 1)], ids=["max0", "max1", "max5"])
def test_listops_generator_never_hangs(args):
    """Settings that admit no (or too few distinct) expressions end with an error in seconds."""
    max_length, min_length = args
    with deadline(20), pytest.raises(listops.GenerationError, match="cannot generate"):
        listops.generate(500, seed=0, min_length=min_length, max_length=max_length, progress=False, workers=1)


def test_listops_generator_never_hangs_on_too_rare_expressions():
    with deadline(20), pytest.raises(listops.GenerationError, match="fewer than 1 in 1000"):
        listops.generate(100, seed=0, min_length=500, max_length=2000, max_depth=1, progress=False, workers=1)


def test_listops_expression_count_matches_enumeration():
    assert listops.count_expressions(0, 2) == 10                 # digits
    assert listops.count_expressions(0, 5) == 10 + 4 * 10 * 10   # + [OP a b ]
    assert listops.count_expressions(2, 8) == 400 + 4000 + 40000 + 4 * 10**5 + 4 * 2 * 10 * 400
    assert listops.count_expressions(0, 9, max_depth=1) == 10
    assert listops.count_expressions(0, 0) == 0
    assert listops.count_expressions(0, 64, cap=123) == 123


# ----------------------------------------------------------------------------- exit statuses

@pytest.fixture()
def nan_variant():
    from test_train import NaNAttention  # noqa: F401 - registers "nan_test"

    return "nan_test"


def test_single_run_exits_1_unless_ok_and_2_on_config_errors(tmp_path, monkeypatch, nan_variant):
    base = [*tiny_train_overrides(tmp_path / "cache"), "trainer.model_overrides.layers=1"]
    assert _hydra_main(monkeypatch, cli_train.main, tmp_path / "a", *base, "attention=full",
                       f"attention.name={nan_variant}") == 1
    assert json.loads((tmp_path / "a" / "run" / "record.json").read_text())["status"] == "nan"
    assert _hydra_main(monkeypatch, cli_train.main, tmp_path / "b", *base, "trainer.steps=-1") == 2
    assert _hydra_main(monkeypatch, cli_train.main, tmp_path / "c", *base, "task=nope") == 2  # Hydra's own error
    assert _hydra_main(monkeypatch, cli_train.main, tmp_path / "d", *base, "attention=full") == 0


def test_a_run_that_trained_or_evaluated_nothing_is_not_ok():
    assert state.trained_and_evaluated({"steps": 0, "accuracy": 0.5, "val_accuracy": 0.5})[0] == "error"
    status, message = state.trained_and_evaluated({"steps": 3, "accuracy": float("nan"), "val_accuracy": 0.5})
    assert status == "error" and "did not evaluate" in message
    assert state.trained_and_evaluated({"steps": 3, "accuracy": 0.5, "val_accuracy": 0.5}) == ("ok", None)


def test_an_empty_split_is_a_data_error_before_training(tmp_path):
    data_dir = tmp_path / "tsv"
    data_dir.mkdir()
    for name in ("basic_train.tsv", "basic_val.tsv", "basic_test.tsv"):
        rows = "" if name == "basic_test.tsv" else "( [MAX 2 9 ] )\t9\n"
        (data_dir / name).write_text("Source\tTarget\n" + rows)
    cfg = compose_train(*tiny_train_overrides(tmp_path / "cache", "task.source=tsv", f"task.data_dir={data_dir}"))
    with pytest.raises(tasks.DataNotFoundError, match="test split"):
        run(cfg, tmp_path / "job")
    assert not (tmp_path / "job" / "checkpoint.pt").exists()


# ----------------------------------------------------------------------------- the record states what ran

def _quick_overrides(cache):
    """`trainer=quick` as it is (seq_len 128, d_model 64, 2 layers), but two steps on a few examples."""
    return ["trainer=quick", f"task.cache_dir={cache}", "trainer.steps=2", "trainer.progress=false",
            "trainer.task_overrides.num_train=40", "trainer.task_overrides.num_val=8",
            "trainer.task_overrides.num_test=8", "trainer.batch_size=8", "attention=linear"]


def test_record_of_a_quick_run_holds_the_effective_configuration(tmp_path):
    rec = run(compose_train(*_quick_overrides(tmp_path / "cache")), tmp_path / "job")
    assert rec["status"] == "ok", rec["message"]
    c = rec["config"]
    assert rec["seq_len"] == 128 and c["task"]["seq_len"] == 128
    assert c["model"]["d_model"] == 64 and c["model"]["layers"] == 2 and c["model"]["heads"] == 4
    assert c["trainer"]["steps"] == 2 and c["trainer"]["lr"] == 2e-3 and c["trainer"]["schedule"] == "linear"
    assert c["task"]["num_train"] == 40
    # nothing in the record contradicts what ran: the LRA defaults the presets replaced are gone
    assert "model" not in c["task"] and "recipes" not in c["task"]
    assert "task_overrides" not in c["trainer"] and "model_overrides" not in c["trainer"]
    assert c["attention"] == {"name": "linear", **rec["variant_config"]}
    assert rec["variant_config"] == {"heads": 4, "head_dim": 16, "max_length": 129, "seed": 0, "causal": False,
                                     "backend": "auto", "chunk_size": 64}


def test_variant_config_lists_every_knob_with_its_default(tmp_path):
    cfg = compose_train(*tiny_train_overrides(tmp_path / "cache", "attention=full", "attention.name=performer",
                                              "trainer.steps=2"))
    rec = run(cfg, tmp_path / "job")
    assert rec["status"] == "ok", rec["message"]
    vc = rec["variant_config"]
    assert vc["num_features"] == 256 and vc["kernel"] == "softmax" and vc["redraw_interval"] == 1000
    assert vc["head_dim"] == 8 and vc["seed"] == 0


def test_explicit_command_line_value_beats_the_preset(tmp_path, capsys):
    """The documented rule: `lra-train trainer=quick task.seq_len=64` trains at 64 (not quick's 128)."""
    overrides = [*_quick_overrides(tmp_path / "cache"), "task.seq_len=64"]
    rec = run(compose_train(*overrides), tmp_path / "job", cli_overrides=overrides)
    assert rec["status"] == "ok", rec["message"]
    assert rec["seq_len"] == 64 and rec["config"]["task"]["seq_len"] == 64
    assert "task.seq_len=64 from the command line replaces" in capsys.readouterr().out
    assert rec["config"]["command_line"] == overrides
    # an explicit trainer.task_overrides value is explicit too, and stays
    both = [*overrides, "trainer.task_overrides.seq_len=32"]
    cfg = config.explicit_beats_presets(compose_train(*both), both)
    assert config.resolve(cfg)[0].seq_len == 32
    # lra-data composes the same way
    from lra.cli import data as cli_data

    assert cli_data.compose(["task=listops", "trainer=quick", "task.seq_len=64"])[1].seq_len == 64


# ----------------------------------------------------------------------------- threads and load

def test_threads_are_the_jobs_share_of_the_cores(monkeypatch):
    monkeypatch.setattr(devices, "cpus_available", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv(devices.CONCURRENT_JOBS_ENV, raising=False)
    assert devices.job_threads("auto") == 8
    monkeypatch.setenv(devices.CONCURRENT_JOBS_ENV, "3")
    assert devices.job_threads("auto") == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert devices.job_threads("auto") == 1
    assert devices.job_threads(5) == 5
    monkeypatch.setenv(devices.CONCURRENT_JOBS_ENV, "16")
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert devices.job_threads("auto") == 1


def test_slurm_allocation_bounds_the_cpus(monkeypatch):
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert devices.cpus_available() == 1


def _multirun_cfg(launcher: dict, overrides: list[str], params: dict | None = None):
    return OmegaConf.create({"hydra": {
        "launcher": launcher, "overrides": {"task": overrides},
        "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                    "max_batch_size": None, "params": params or {}}}})


def test_sweep_callback_counts_the_jobs_that_share_the_machine(monkeypatch):
    local = {"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"}
    slurm = {"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"}
    basic = {"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}
    joblib = {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 2}
    two = ["attention=full,linear", "trainer=quick"]
    assert callbacks.concurrent_jobs_of(_multirun_cfg(local, two)) == 2
    assert callbacks.concurrent_jobs_of(_multirun_cfg(local, ["seed=0,1,2", "attention=full,linear"])) == 6
    assert callbacks.concurrent_jobs_of(_multirun_cfg(local, ["trainer=quick"], {"attention": "full,flash,linear"})) == 3
    assert callbacks.concurrent_jobs_of(_multirun_cfg(basic, two)) == 1
    assert callbacks.concurrent_jobs_of(_multirun_cfg(joblib, ["seed=0,1,2"])) == 2
    assert callbacks.concurrent_jobs_of(_multirun_cfg(slurm, two)) is None
    monkeypatch.setenv(devices.CONCURRENT_JOBS_ENV, "7")
    cb = callbacks.ShareCpus()
    cb.on_multirun_start(_multirun_cfg(local, two))
    assert os.environ[devices.CONCURRENT_JOBS_ENV] == "2"
    cb.on_multirun_end(_multirun_cfg(local, two))
    assert os.environ[devices.CONCURRENT_JOBS_ENV] == "7"
    cb.on_multirun_start(_multirun_cfg(slurm, two))   # sbatch would carry it to the nodes
    assert devices.CONCURRENT_JOBS_ENV not in os.environ


def test_every_record_states_threads_cores_and_load(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "getloadavg", lambda: (5.0, 1.0, 1.0))
    monkeypatch.setattr(devices, "cpus_available", lambda: 2)
    rec = results.make_record("train", variant="full")
    host = rec["host"]
    assert host["torch_threads"] == torch.get_num_threads() and host["cpu_count"] == os.cpu_count()
    assert host["cpus_available"] == 2 and host["load_avg_1m"] == 5.0 and host["loaded"] is True
    assert set(host) >= {"interop_threads", "omp_num_threads", "mkl_num_threads", "affinity", "concurrent_jobs"}
    assert rec["device"]["count"] == 2   # CPU: the CPUs the job may use, not os.cpu_count()
    assert "WARNING" in results.loaded_warning(host)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.5, 1.0, 1.0))
    assert results.make_record("bench", variant="full")["host"]["loaded"] is False
    results.write_record(rec, tmp_path / "r.json")
    df = results.load(tmp_path)
    assert bool(df.loc[0, "host_loaded"]) and df.loc[0, "host_torch_threads"] == torch.get_num_threads()


def test_run_sets_the_threads_it_records(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setattr(devices, "cpus_available", lambda: 4)
    monkeypatch.setenv(devices.CONCURRENT_JOBS_ENV, "2")
    try:
        rec = run(compose_train(*tiny_train_overrides(tmp_path / "cache", "attention=linear", "trainer.steps=2")),
                  tmp_path / "job")
        assert rec["host"]["torch_threads"] == 2 and rec["host"]["concurrent_jobs"] == 2
    finally:
        torch.set_num_threads(1)


# ----------------------------------------------------------------------------- a progress bar that moves

_REAL_CHUNK = listops._generate_chunk


def _slow_chunk(args):
    time.sleep(0.4 * args[1])  # chunk i ends at about 0.4 i s
    return _REAL_CHUNK(args)


def test_listops_progress_moves_as_chunks_finish(monkeypatch):
    updates = []

    class Bar:
        def __init__(self, *a, **k):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n=1):
            updates.append((time.perf_counter(), n))

    monkeypatch.setattr(listops, "progress_bar", Bar)
    monkeypatch.setattr(listops, "_generate_chunk", _slow_chunk)
    monkeypatch.setattr(listops, "CHUNK", 20)
    t0 = time.perf_counter()
    listops.generate(80, seed=0, min_length=4, max_length=32, workers=2)
    total = time.perf_counter() - t0
    assert sum(n for _, n in updates) == 80
    assert updates[0][0] - t0 < 0.5 * total, (updates, total)   # the first chunk shows before the last ends


@pytest.mark.parametrize("arg,message", [("seq_len=-5", "task.seq_len=-5 is invalid"),
                                         ("seq_len=2", "task.seq_len=2 is too short for ListOps"),
                                         ("num_train=0", "task.num_train=0 is invalid")])
def test_lra_data_checks_values_before_preparing(tmp_path, capsys, arg, message):
    from lra.cli import data as cli_data

    with pytest.raises(SystemExit) as stop, deadline(30):
        cli_data.main(["prepare", "task=listops", f"cache_dir={tmp_path}", arg])
    assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
