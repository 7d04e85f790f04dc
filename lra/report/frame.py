"""Records -> one tidy pandas DataFrame (a row per record), the only input of every table and figure.

:func:`load_frame` reads record JSON (through :func:`lra.results.load`), a previous report's
``tidy.csv``, or a report folder; :func:`normalize` makes every column the report uses exist with
the right type, whatever vintage the records are; :func:`tidy` is what ``tidy.csv`` holds.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from lra.results import load

from .labels import UNKNOWN_DEVICE

BASE_COLUMNS = ("kind", "task", "variant", "seq_len", "batch_size", "dtype", "seed", "device_name",
                "device_type", "device_count", "device_memory_mb", "versions_torch", "versions_cuda",
                "git_commit", "status", "message", "started_at", "finished_at", "mode", "pattern",
                "accuracy", "val_accuracy", "loss", "steps_per_s", "tokens_per_s", "peak_mem_mb", "ms",
                "ms_p10", "ms_p90", "ms_fwd", "ms_fwd_bwd", "tflops", "tflops_fraction", "approx_error",
                "lipschitz", "flops_convention", "flops_source", "repeats", "approx_error_init", "fit_steps",
                "entropy", "softmax_entropy", "monotonicity", "weight_kl", "learned", "ms_per_token", "state_bytes",
                "query_accuracy", "val_query_accuracy", "bits_per_byte", "val_bits_per_byte", "unigram_bits_per_byte",
                "num_kv_pairs", "d_model", "lr", "history")
NUMERIC = ("seq_len", "batch_size", "seed", "device_count", "device_memory_mb", "accuracy", "val_accuracy",
           "loss", "steps_per_s", "tokens_per_s", "peak_mem_mb", "ms", "ms_p10", "ms_p90", "ms_fwd",
           "ms_fwd_bwd", "tflops", "tflops_fraction", "approx_error", "lipschitz", "repeats", "approx_error_init",
           "fit_steps", "entropy", "softmax_entropy", "monotonicity", "weight_kl", "ms_per_token", "state_bytes",
           "query_accuracy", "val_query_accuracy", "bits_per_byte", "val_bits_per_byte", "unigram_bits_per_byte",
           "num_kv_pairs", "d_model", "lr")
#: the host facts a record carries (``host`` dict, flattened to ``host_<key>``); absent in older records
HOST_FIELDS = ("torch_threads", "interop_threads", "cpu_count", "cpus_available", "load_avg_1m",
               "omp_num_threads", "mkl_num_threads", "affinity", "loaded")
#: columns holding a list per record; JSON text in ``tidy.csv``, lists again after :func:`normalize`
LIST_COLUMNS = ("timings_ms", "host_affinity", "history")
#: columns :func:`normalize` derives from others; left out of ``tidy.csv`` (derived again when it is read)
DERIVED = ("time_ms", "time_p10", "time_p90", "n_timings", "dirty", "host_known", "learned_p", "majority_rate")


class NoRecordsError(ValueError):
    """The inputs hold no result record, so there is nothing to report."""


def _read_any(path: Path, skipped: list[Path] | None = None) -> pd.DataFrame:
    """Records from a file/dir of JSON records, a tidy CSV, or a report dir holding ``tidy.csv``.

    A directory is read as a previous report (its ``tidy.csv``) only when it holds no JSON at all,
    so a records folder that also holds its own report (``results/``) is read from the records.
    """
    if path.is_file() and path.suffix == ".csv":
        return pd.read_csv(path)
    if path.is_dir() and (path / "tidy.csv").is_file() and not any(path.rglob("*.json")):
        return pd.read_csv(path / "tidy.csv")
    return load(path, skipped)


def load_frame(inputs: Iterable[str | os.PathLike] | str | os.PathLike,
               skipped: list[Path] | None = None) -> pd.DataFrame:
    """Load records (JSON files/dirs, tidy CSVs, report dirs) into one normalised frame.

    Every column the report uses exists afterwards (NaN where the records had none); see
    :func:`normalize`. ``skipped`` collects the JSON files found that are not result records.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    frames = [_read_any(Path(p), skipped) for p in inputs]
    frames = [f for f in frames if not f.empty]
    df = pd.concat(frames, ignore_index=True, sort=False) if frames else pd.DataFrame()
    return normalize(df)


def _as_list(value: Any) -> Any:
    """A list cell as a list: JSON text from a CSV is parsed back; other values pass through."""
    if isinstance(value, str) and value.startswith("["):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def as_flag(value: Any) -> bool | None:
    """A recorded yes/no (a bool, or its text in a CSV) as a bool; None where not recorded."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "1.0", "0.0"):
        return value.strip().lower() in ("true", "1", "1.0")
    if isinstance(value, (int, float)) and np.isfinite(value):
        return bool(value)
    return None


def _expand_host(df: pd.DataFrame) -> pd.DataFrame:
    """``host`` dicts -> ``host_<key>`` columns, where :func:`lra.results.flatten` left them nested."""
    if "host" in df:
        nested = df["host"].map(lambda h: h if isinstance(h, dict) else {})
        for key in {k for h in nested for k in h}:
            col = f"host_{key}"
            values = nested.map(lambda h: h.get(key, np.nan))
            df[col] = values if col not in df else df[col].where(df[col].notna(), values)
        df = df.drop(columns=["host"])
    for key in HOST_FIELDS:
        if f"host_{key}" not in df:
            df[f"host_{key}"] = np.nan
    return df


#: training protocols: trained from scratch (the LRA protocol) | self-pretrained first (Amos et al. 2024)
PROTOCOLS = ("scratch", "spt")


def protocol_of(config: Any, kind: Any, given: Any = None) -> str | None:
    """``"spt"`` for a train record whose config has ``pretrain.objective`` mlm/causal, ``"scratch"``
    for other train records (older records have no ``pretrain``); a tidy CSV's own column otherwise."""
    if isinstance(config, dict) and kind == "train":
        objective = (config.get("pretrain") or {}).get("objective", "none")
        return "scratch" if objective in (None, "none") else "spt"
    if isinstance(given, str) and given in PROTOCOLS:
        return given
    return "scratch" if kind == "train" else None


def experiment_of(config: Any, given: Any = None) -> str | None:
    """The named protocol a train run belongs to (e.g. ``cpu_table``): ``config.protocol``, else
    ``config.experiment``, else an ``experiment=NAME`` among ``config.command_line``'s overrides; a tidy
    CSV's own ``experiment`` column otherwise; None for a run outside any named protocol."""
    if isinstance(config, dict):
        for key in ("protocol", "experiment"):
            value = config.get(key)
            if isinstance(value, str) and value:
                return value
            if isinstance(value, dict) and isinstance(value.get("name"), str):
                return value["name"]
        line = config.get("command_line")
        words = line.split() if isinstance(line, str) else line if isinstance(line, list) else []
        for w in words:
            if isinstance(w, str) and w.lstrip("+").startswith("experiment="):
                return w.split("=", 1)[1]
        return None
    return given if isinstance(given, str) and given else None


def _config_value(config: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(config, dict):
            return None
        config = config.get(key)
    return config


def _learned_test(value: Any, key: str) -> Any:
    """A field of ``metrics.learned_test`` (a dict, or its JSON text in a CSV)."""
    if isinstance(value, str) and value.startswith("{"):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return np.nan
    return value.get(key, np.nan) if isinstance(value, dict) else np.nan


def normalize(df: pd.DataFrame) -> pd.DataFrame:
    """Add missing columns, coerce types and derive the columns the report reads.

    Afterwards: every column of :data:`BASE_COLUMNS` and ``host_<field>`` for :data:`HOST_FIELDS`
    exists; numbers are numeric; missing device names read ``"unknown device"``; ``recipe`` is the
    train recipe (``lra`` unless the config says otherwise); ``protocol`` is ``scratch`` or ``spt``
    (:func:`protocol_of`); ``time_ms`` is the per-call time of a
    bench case (``ms``, else ``ms_fwd_bwd``/``ms_fwd`` by mode) with ``time_p10``/``time_p90`` its
    spread over the timed calls where recorded; ``n_timings`` counts the raw per-call times in
    ``timings_ms``; ``host_loaded`` is a nullable bool (``pd.NA`` where not recorded); a train record
    whose ``distill`` says it trained with attention distillation reports as its own variant,
    ``<variant>+distill``; ``experiment`` names a train run's protocol (:func:`experiment_of`);
    ``learned`` (nullable bool), ``learned_p`` and ``majority_rate`` come from ``metrics.learned`` and
    ``metrics.learned_test``; ``causal`` (bool) from ``case.causal``, ``case.attention_causal`` or
    ``config.attention.causal``; ``num_kv_pairs``, ``d_model`` and ``lr`` of a train run from its config;
    ``dirty`` flags a ``-dirty`` commit and ``host_known`` a record that carries host facts.
    """
    df = _expand_host(df.copy())
    for col in BASE_COLUMNS:
        if col not in df:
            df[col] = np.nan
    for col in NUMERIC + ("host_torch_threads", "host_interop_threads", "host_cpu_count",
                          "host_cpus_available", "host_load_avg_1m"):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    for col in ("started_at", "finished_at"):
        df[col] = pd.to_datetime(df[col], utc=True, errors="coerce")
    df["status"] = df["status"].astype(object).where(df["status"].notna(), "ok")
    df["device_name"] = df["device_name"].astype(object).where(df["device_name"].notna(), UNKNOWN_DEVICE)
    df["variant"] = df["variant"].astype(object).where(df["variant"].notna(), "?")
    if "distill" in df:
        distilled = df["distill"].map(lambda d: isinstance(d, dict) and bool(d.get("on")))
        df.loc[distilled, "variant"] = df.loc[distilled, "variant"].astype(str) + "+distill"
    df["host_loaded"] = pd.array([as_flag(v) for v in df["host_loaded"]], dtype="boolean")
    for col in LIST_COLUMNS:
        if col in df:
            df[col] = df[col].astype(object).map(_as_list)
    df["n_timings"] = (df["timings_ms"].map(lambda t: len(t) if isinstance(t, list) else np.nan)
                       if "timings_ms" in df else np.nan)
    none = pd.Series([None] * len(df), index=df.index, dtype=object)
    config, given = df.get("config", none), df.get("recipe", none)  # a tidy CSV has `recipe`, not `config`
    df["recipe"] = [(c.get("recipe") or "lra") if isinstance(c, dict) and k == "train" else
                    (r if isinstance(r, str) else None) for c, k, r in zip(config, df["kind"], given)]
    df["protocol"] = [protocol_of(c, k, p) for c, k, p in zip(config, df["kind"], df.get("protocol", none))]
    df["experiment"] = [experiment_of(c, g) for c, g in zip(config, df.get("experiment", none))]
    # token tasks (MQAR, byte-level LM): their sizes live in the config; the record's own columns win
    for col, path in (("num_kv_pairs", ("task", "num_kv_pairs")), ("d_model", ("model", "d_model")),
                      ("lr", ("trainer", "lr"))):
        from_config = pd.to_numeric(pd.Series([_config_value(c, *path) if k == "train" else None
                                               for c, k in zip(config, df["kind"])], index=df.index, dtype=object),
                                    errors="coerce")
        df[col] = df[col].where(df[col].notna(), from_config)
    df["learned"] = pd.array([as_flag(v) for v in df["learned"]], dtype="boolean")
    tests = df.get("learned_test", none)
    df["learned_p"] = pd.to_numeric(tests.map(lambda t: _learned_test(t, "p_value")), errors="coerce")
    df["majority_rate"] = pd.to_numeric(tests.map(lambda t: _learned_test(t, "majority_rate")), errors="coerce")
    causal = df["causal"] if "causal" in df else none
    given = df["attention_causal"] if "attention_causal" in df else none
    df["causal"] = [bool(as_flag(c) if as_flag(c) is not None else as_flag(a) if as_flag(a) is not None else
                         as_flag(_config_value(cf, "attention", "causal")) or False)
                    for c, a, cf in zip(causal, given, config)]
    df["dirty"] = df["git_commit"].map(lambda c: isinstance(c, str) and c.endswith("-dirty"))
    df["host_known"] = df[[f"host_{k}" for k in HOST_FIELDS]].notna().any(axis=1)
    time = df["ms"].copy()
    spread = time.notna()
    for mode, col in (("op_fwd_bwd", "ms_fwd_bwd"), ("op_fwd", "ms_fwd")):
        fill = (df["mode"] == mode) & time.isna()
        time = time.where(~fill, df[col])
    df["time_ms"] = time
    df["time_p10"] = df["ms_p10"].where(spread)
    df["time_p90"] = df["ms_p90"].where(spread)
    return df


def _filled(value: Any) -> bool:
    """Whether a cell holds something (not NaN/None/NA, not an empty string, list or dict)."""
    if isinstance(value, (list, dict, str)):
        return len(value) > 0
    return value is not None and value is not pd.NA and not (isinstance(value, float) and np.isnan(value)) \
        and value is not pd.NaT


def tidy(df: pd.DataFrame) -> pd.DataFrame:
    """The frame as written to ``tidy.csv``: one row per record, the full Hydra config, the columns
    :func:`normalize` derives again (:data:`DERIVED`) and every column empty in all rows dropped, and
    dict/list cells (``timings_ms``, ``variant_config``, ``history``, ...) as JSON text, which
    :func:`normalize` turns back into lists when the CSV is read again. Its columns are described by
    :mod:`lra.report.dictionary` (written beside it as ``tidy.md``)."""
    out = df.drop(columns=[c for c in ("config", "_path", *DERIVED) if c in df])
    out = out.loc[:, [c for c in out.columns if out[c].map(_filled).any()]]
    for col in out.columns:
        if out[col].dtype == object and out[col].map(lambda v: isinstance(v, (dict, list))).any():
            out[col] = out[col].map(lambda v: json.dumps(v, sort_keys=True, default=str)
                                    if isinstance(v, (dict, list)) else v)
    return out
