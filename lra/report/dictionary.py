"""The data dictionary of ``tidy.csv``: what each column holds, written beside it as ``tidy.md``.

``tidy.csv`` has one row per record and only the columns some record fills (:func:`lra.report.frame.tidy`).
Columns are the record's top-level fields, its ``metrics`` and ``case`` facts (flattened), and
``device_*``, ``host_*``, ``versions_*`` (prefixed). :data:`COLUMNS` describes the ones every report
reads; :data:`PREFIXES` the families; any other column is a case fact or metric of the bench modes or
task that fill it, which :func:`dictionary` names from the data.
"""
from __future__ import annotations

import pandas as pd

#: column -> meaning (units in brackets)
COLUMNS = {
    "schema": "record schema version",
    "kind": "`train` (an `lra-train` run) or `bench` (one `lra-bench` case)",
    "task": "task of a train run (listops, text, ..., mqar, text_lm); for `model_step` benches the task shape",
    "variant": "attention variant (`X+distill`: trained with attention distillation)",
    "variant_config": "every field of the variant's config dataclass (JSON)",
    "seq_len": "sequence length N (tokens)",
    "batch_size": "batch size (sequences)",
    "dtype": "compute dtype",
    "seed": "seed of the run or case",
    "status": "ok | oom | nan | error | skipped",
    "message": "why, when status is not ok (first lines of the error or the skip reason)",
    "mode": "bench mode: op_fwd, op_fwd_bwd, model_step, decode, calibration, exactness, smoothness, train_overhead",
    "causal": "causal mask on (a query sees keys at positions ≤ its own)",
    "git_commit": "commit of the code that made the record (`-dirty`: uncommitted changes)",
    "started_at": "start time (UTC)", "finished_at": "end time (UTC)",
    "accuracy": "test accuracy (fraction; MQAR: query accuracy)",
    "val_accuracy": "validation accuracy (fraction)", "loss": "test loss", "val_loss": "validation loss",
    "learned": "the run learned its task: test accuracy above the majority class by its binomial test",
    "learned_test": "that test's numbers: split, majority_rate, n, correct, p_value, alpha, test (JSON)",
    "history": "evaluations along the run: step, val_accuracy, val_loss, train_loss, ... (JSON)",
    "ms": "median time per call or step (ms)", "ms_p10": "10th percentile of the timed calls (ms)",
    "ms_p90": "90th percentile of the timed calls (ms)", "ms_fwd": "forward time (ms, older records)",
    "ms_fwd_bwd": "forward+backward time (ms)", "timings_ms": "every timed call (ms, JSON list)",
    "steps_per_s": "training steps per second", "tokens_per_s": "tokens per second",
    "peak_mem_mb": "peak memory of the case or run (MiB)", "tflops": "achieved TFLOP/s",
    "tflops_fraction": "achieved FLOP/s as a fraction of the device's peak (CPU: its measured GEMM rate)",
    "flops": "floating-point operations counted for one call", "flops_convention": "how FLOPs were counted",
    "ms_per_token": "decode: time to generate one token at context N (ms)",
    "state_bytes": "bytes a decoder keeps per sequence at length N (KV cache or running state)",
    "query_accuracy": "MQAR: accuracy at the query positions (held-out)",
    "bits_per_byte": "byte-level LM: held-out bits per byte", "val_bits_per_byte": "the same on validation",
    "unigram_bits_per_byte": "byte-level LM: entropy of the training bytes' unigram distribution (baseline)",
    "num_kv_pairs": "MQAR: key-value pairs per sequence", "d_model": "model width", "lr": "peak learning rate",
    "approx_error": "‖out − exact‖_F / ‖exact‖_F against float64 softmax attention",
    "approx_error_init": "the same before fitting a learned feature map",
    "lipschitz": "smoothness: local Lipschitz constant L of the attention map",
    "softmax_bound": "smoothness: the closed-form bound on L for softmax attention at that input",
    "bound_ratio": "smoothness: L / softmax_bound", "pattern": "input pattern (exactness, smoothness)",
    "radius": "smoothness: radius R of the input tokens", "recipe": "training recipe (lra | small)",
    "protocol": "training protocol: scratch (LRA) | spt (self-pretrained first)",
    "experiment": "the named protocol the run belongs to (e.g. cpu_table)",
    "repeats": "timed calls requested", "timer": "how time was measured (cuda_event | perf_counter)",
    "heads": "attention heads", "head_dim": "dimensions per head", "exact": "the variant computes exact softmax",
    "complexity": "the variant's stated complexity", "memory_method": "how peak memory was measured",
}
#: column families by prefix
PREFIXES = {
    "device_": "the device: type, name, count (GPUs; CPUs available on CPU), memory_mb",
    "host_": "the host at the start: threads, CPUs, load average, `loaded` (load above the CPUs: timings "
             "not trustworthy), OMP/MKL settings, affinity; empty in records made before the `host` field",
    "versions_": "software versions: python, torch, cuda, cudnn, triton, xformers, lra_bench",
    "search_": "smoothness `search` pattern: its starts, steps and best values",
    "adversarial_": "smoothness `adversarial` pattern: how the worst-case input was built",
    "ms_model_": "train_overhead: model forward+backward (+ optimizer) times (ms)",
    "ms_train_step": "train_overhead: the real lra-train step time (ms)",
    "lipschitz_": "smoothness: spread of L over samples",
}


def describe(column: str) -> str | None:
    """The meaning of ``column`` from :data:`COLUMNS` or :data:`PREFIXES`; None when neither knows it."""
    if column in COLUMNS:
        return COLUMNS[column]
    for prefix, text in PREFIXES.items():
        if column.startswith(prefix):
            return text
    return None


def dictionary(tidy: pd.DataFrame) -> pd.DataFrame:
    """One row per column of ``tidy`` (a frame as :func:`lra.report.frame.tidy` writes it): the column,
    what it holds, and how many records fill it (those of a few kinds/modes named where it is specific)."""
    rows = []
    kinds = tidy["mode"].astype(object).where(tidy["mode"].notna(), tidy["kind"]) if "mode" in tidy else tidy["kind"]
    for col in tidy.columns:
        filled = tidy[col].notna()
        where = sorted(kinds[filled].dropna().astype(str).unique())
        scope = "" if len(where) > 3 or not where else f" ({', '.join(where)})"
        meaning = describe(col) or f"a case fact or metric of {', '.join(where) or 'some records'} (see the record)"
        rows.append({"column": f"`{col}`", "meaning": meaning, "records": f"{int(filled.sum()):,}{scope}"})
    return pd.DataFrame(rows)
