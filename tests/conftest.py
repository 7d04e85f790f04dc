import os
from pathlib import Path

import pytest
import torch

# Tiny shapes: one thread is faster than two contending ones (CPU bf16 batched matmuls especially).
# OMP_NUM_THREADS caps the runs' threads=auto (lra.devices.job_threads) in-process and in subprocesses.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

# Small knobs so that every variant runs on tiny CPU shapes (heads=2, head_dim=16, N<=128).
SMALL_KNOBS = {
    "full": {},
    "flash": {},
    "local": {"window": 16},
    "bigbird": {"block_size": 16},
    "reformer": {"bucket_size": 16, "n_hashes": 2},
    "random_feature": {"num_features": 64},
    "performer": {"num_features": 64},
    "linear": {},
    "linformer": {"k": 32},
    "nystrom": {"landmarks": 8},
}


def _in_tree():
    import attention_variants as av

    return [name for name in av.available() if av.get(name)[0].__module__.startswith("attention_variants.")]


#: the in-tree variants (not a plugin or a test's own registration), in registry order
IN_TREE = _in_tree()


def rel(a, b) -> float:
    """Relative Frobenius error ``||a - b|| / ||b||``, in float64."""
    return float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm())


def small_variant(name, **overrides):
    import attention_variants as av

    cfg = {"heads": 2, "head_dim": 16, "max_length": 128, **SMALL_KNOBS.get(name, {}), **overrides}
    return av.build(name, **cfg)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _compose(config: str, overrides):
    from hydra import compose, initialize_config_dir

    import lra

    with initialize_config_dir(config_dir=str(lra.conf_dir()), version_base="1.3"):
        return compose(config, overrides=list(overrides))


def compose_train(*overrides):
    """The lra-train config composed as the CLI would, with overrides."""
    return _compose("train", overrides)


def compose_bench(*overrides):
    """The lra-bench config composed as the CLI would, with overrides."""
    return _compose("bench", overrides)


@pytest.fixture
def no_git(monkeypatch):
    """Records say git_commit "test" (no git call per record)."""
    monkeypatch.setenv("LRA_GIT_COMMIT", "test")


def tiny_train_overrides(cache_dir, *extra):
    """A seconds-long ListOps run: 32 tokens, a 2-layer width-16 model."""
    return ["trainer=quick", f"task.cache_dir={cache_dir}", "trainer.steps=8", "trainer.progress=false",
            "trainer.eval_every=4", "trainer.checkpoint_every=4", "trainer.log_every=2", "trainer.warmup=2",
            "trainer.batch_size=8", "trainer.task_overrides.seq_len=32", "trainer.task_overrides.num_train=64",
            "trainer.task_overrides.num_val=16", "trainer.task_overrides.num_test=16",
            "trainer.model_overrides.d_model=16", "trainer.model_overrides.heads=2",
            "trainer.model_overrides.mlp_dim=32", "trainer.model_overrides.dropout=0.1", *extra]


def train_two_steps(tmp_path: Path, task: str, *extra):
    """Two training steps of a tiny ``attention=full`` model on ``task`` (fixture data under ``tmp_path``)."""
    from lra.training.finetune import train

    cfg = compose_train(f"task={task}", "trainer=quick", "attention=full", "trainer.steps=2", "trainer.progress=false",
                        "trainer.batch_size=2", "trainer.eval_every=1000", "trainer.checkpoint_every=1000",
                        f"task.cache_dir={tmp_path / 'cache'}", "model.d_model=16", "model.heads=2", "model.mlp_dim=16",
                        "model.layers=1", *extra)
    (tmp_path / "job").mkdir()
    record = train(cfg, tmp_path / "job")
    assert record["status"] == "ok", record.get("message")
    assert record["metrics"]["steps"] == 2
    return record


def write_aan(root: Path, n: int = 4, bad_line: str | None = None):
    """A tiny ACL Anthology Network in the official LRA retrieval TSV format under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "eval", "test"):
        lines = [f"{i % 2}\tid{i}a\tid{i}b\t{repr(('Doc A ' + str(i) + ' caf').encode() + bytes([0xC3, 0xA9]))}"
                 f"\t{repr(b'Doc B ' + str(i).encode())}" for i in range(n)]
        if bad_line is not None and split == "eval":
            lines.insert(1, bad_line)
        (root / f"new_aan_pairs.{split}.tsv").write_text("\n".join(lines) + "\n")
    return root
