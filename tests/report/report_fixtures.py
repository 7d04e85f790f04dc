"""Fixture records for the report tests, following the record contracts of issues 31, 33, 34 and 37:
a GPU op grid (non-causal and causal, one OOM), decode records, LRA-protocol and CPU-protocol training
runs with ``metrics.learned``/``learned_test`` and ``case.history``, byte-level LM runs (``text_lm``),
MQAR runs, smoothness records without host facts, a record from a dirty tree and a peers comparison.
Numbers follow simple power laws so that a test can say what the report must show."""
from __future__ import annotations

import json
from pathlib import Path

from lra.results import make_record, write_record

GPU = {"type": "cuda", "name": "NVIDIA H100 80GB HBM3", "count": 1, "memory_mb": 81559}
CPU = {"type": "cpu", "name": "CPU AMD EPYC", "count": 2, "memory_mb": 16000}
HOST = {"torch_threads": 2, "interop_threads": 2, "cpu_count": 16, "cpus_available": 16, "load_avg_1m": 0.5,
        "omp_num_threads": None, "mkl_num_threads": None, "affinity": list(range(16)), "loaded": False}
VERSIONS = {"python": "3.12.0", "torch": "2.13.0", "cuda": "12.8"}
LENGTHS = (1024, 2048, 4096, 8192)
# attention fwd+bwd ms = c * (N/1024)^p, peak MiB = m * (N/1024)^q
OPS = {"full": (1.0, 2, 100.0, 2), "flash": (0.5, 2, 10.0, 1), "performer": (2.0, 1, 20.0, 1),
       "linear": (1.5, 1, 15.0, 1)}


def _write(root: Path, device: dict, kind: str, host: dict | None = HOST, commit: str = "0123abc", **kw) -> None:
    rec = make_record(kind, host=dict(host) if host else {}, **kw)
    rec["device"] = dict(device)
    rec["versions"] = VERSIONS
    rec["git_commit"] = commit
    rec["started_at"] = "2026-12-01T03:04:05+00:00"
    if host is None:                     # smoothness records made before the host field
        rec.pop("host")
    folder = root / device["type"]
    folder.mkdir(parents=True, exist_ok=True)
    write_record(rec, folder)


def _history(acc: float, chance: float, steps: int = 4) -> list[dict]:
    return [{"step": 100 * (i + 1), "val_accuracy": chance + (acc - chance) * (i + 1) / steps,
             "val_loss": 2.0 - 0.3 * i * (acc > chance + 0.02), "train_loss": 2.0 - 0.3 * i,
             "train_accuracy": chance + (acc - chance) * (i + 1) / steps} for i in range(steps)]


def _learned(acc: float, majority: float, n: int = 2000) -> dict:
    learned = acc > majority + 0.03
    return {"learned": learned, "learned_test": {"split": "test", "majority_rate": majority, "n": n,
                                                 "correct": int(acc * n), "p_value": 1e-6 if learned else 0.4,
                                                 "alpha": 0.01, "test": "one-sided binomial"}}


def make_records(root: Path) -> Path:
    """Write the fixture records under ``root`` and return it."""
    for v, (c, p, m, q) in OPS.items():
        for n in LENGTHS:
            x = n / 1024
            for causal in (False, True):
                if v == "full" and n == 8192 and not causal:
                    _write(root, GPU, "bench", variant=v, status="oom", seq_len=n, batch_size=4, dtype="bf16",
                           message="CUDA out of memory", case={"mode": "op_fwd_bwd", "causal": False})
                    continue
                t = c * x ** p * (0.6 if causal else 1.0)
                _write(root, GPU, "bench", variant=v, seq_len=n, batch_size=4, dtype="bf16",
                       case={"mode": "op_fwd_bwd", "causal": causal},
                       metrics={"ms": t, "ms_p10": 0.97 * t, "ms_p90": 1.03 * t, "peak_mem_mb": m * x ** q,
                                "tflops_fraction": 0.3})
            _write(root, GPU, "bench", variant=v, seq_len=n, batch_size=1, dtype="bf16",
                   case={"mode": "decode", "causal": True},
                   metrics={"ms_per_token": 0.05 * (x if v in ("full", "flash") else 1.0),
                            "state_bytes": (4096 * n if v in ("full", "flash") else 65536)})
    # LRA protocol on the GPU: ListOps, two seeds of the exact kernels
    for v, acc, sps in (("flash", 0.37, 10.0), ("full", 0.365, 5.0), ("performer", 0.36, 20.0),
                        ("linear", 0.17, 25.0)):
        for seed in (0, 1):
            a = acc + 0.005 * seed
            _write(root, GPU, "train", variant=v, task="listops", seq_len=2000, seed=seed,
                   config={"recipe": "lra"}, case={"history": _history(a, 0.17)},
                   metrics={"accuracy": a, "steps_per_s": sps, **_learned(a, 0.17)})
    # the CPU protocol (issue 31): both exact and approximate at chance on one task
    for v, acc in (("full", 0.175), ("linear", 0.172), ("performer", 0.30)):
        _write(root, CPU, "train", variant=v, task="listops", seq_len=256, seed=0,
               config={"recipe": "lra", "protocol": "cpu_table"}, case={"history": _history(acc, 0.17)},
               metrics={"accuracy": acc, "steps_per_s": 4.0, **_learned(acc, 0.17)})
    # byte-level LM (issue 34) on the GPU
    for v, bpb in (("flash", 2.10), ("full", 2.11), ("performer", 2.14), ("linear", 2.40)):
        _write(root, GPU, "train", variant=v, task="text_lm", seq_len=1024, seed=0,
               config={"attention": {"causal": True}},
               metrics={"bits_per_byte": bpb, "unigram_bits_per_byte": 4.6, "steps_per_s": 10.0})
    # MQAR (issue 37) on the CPU: width 16 and 32, two learning rates
    for v, state in (("full", lambda d, n: 4 * 2 * d * n), ("linear", lambda d, n: 4 * d * d),
                     ("local", lambda d, n: 4 * 2 * d * 64)):
        for n in (64, 128):
            for d in (16, 32):
                for lr in (1e-3, 3e-3):
                    acc = {"full": 1.0, "linear": 0.6 + d / 100, "local": 0.5}[v] - (0.01 if lr == 1e-3 else 0)
                    _write(root, CPU, "train", variant=v, task="mqar", seq_len=n, seed=0,
                           config={"task": {"seq_len": n, "num_kv_pairs": n // 8}, "model": {"d_model": d},
                                   "trainer": {"lr": lr}, "attention": {"causal": True}},
                           case={"state": "kv cache" if v == "full" else "fixed", "attention_causal": True},
                           metrics={"query_accuracy": acc, "accuracy": acc, "state_bytes": state(d, n)})
    # exactness and smoothness (the latter without host facts, as older records are)
    for n in (256, 1024, 4096):
        for v, e in (("performer", 0.1), ("linear", 0.3), ("flash", 1e-6)):
            _write(root, GPU, "bench", variant=v, seq_len=n, case={"mode": "exactness", "pattern": "random"},
                   metrics={"approx_error": e * (n / 256) ** 0.3})
            _write(root, GPU, "bench", variant=v, seq_len=n, host=None,
                   case={"mode": "smoothness", "pattern": "random", "radius": 2.0},
                   metrics={"lipschitz": 2.0 * n ** (0.5 if v == "flash" else 0.2)})
        # the trained-encoder pattern for flash only (the others' checkpoint was not kept)
        _write(root, GPU, "bench", variant="flash", seq_len=n, host=None, case={"mode": "smoothness",
               "pattern": "data_trained"}, metrics={"lipschitz": 3.0 * n ** 0.25})
    # one record from a modified tree
    _write(root, GPU, "bench", variant="flash", seq_len=512, batch_size=4, dtype="bf16", commit="0123abc-dirty",
           case={"mode": "op_fwd", "causal": False}, metrics={"ms": 0.1})
    # a peers comparison: not a record
    (root / "cuda" / "peers.json").write_text(json.dumps(
        {"device": GPU, "versions": VERSIONS, "batch": 4, "d_model": 256, "heads": 4, "dtype": "bf16",
         "rows": [{"variant": "performer", "impl": impl, "seq_len": n, "ms_fwd_bwd": ms * n / 1024}
                  for n in (1024, 2048) for impl, ms in (("ours", 1.0), ("peer", 1.2))]}))
    (root / "cuda" / "notes.json").write_text(json.dumps({"note": "not a record"}))
    return root
