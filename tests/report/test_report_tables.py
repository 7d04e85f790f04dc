"""lra.report table functions on frames built in the test (no files): spreads, loaded hosts, FLOP
conventions, list columns, provenance of threads, markdown tables."""
import io
import json

import numpy as np
import pandas as pd
import pytest

from lra.report import case_table, flops_conventions, host_table, markdown_table, normalize, tidy
from lra.report.tables import speed_table, with_conventions
from lra.results import flatten

CPU = {"type": "cpu", "name": "CPU Test", "count": 8, "memory_mb": 16000}
HOST = {"torch_threads": 4, "interop_threads": 4, "cpu_count": 8, "cpus_available": 4, "load_avg_1m": 0.5,
        "omp_num_threads": "4", "mkl_num_threads": None, "affinity": [0, 1, 2, 3], "loaded": False}


def rec(variant="full", n=256, mode="op_fwd_bwd", ms=4.0, host=None, **extra):
    """One bench record as the bench writes it (nested dicts), flattened as lra.results.load does."""
    case = {"mode": mode, "heads": 2, "head_dim": 16, "timer": "perf_counter", "repeats": 5,
            **extra.pop("case", {})}
    r = {"schema": 1, "kind": "bench", "task": None, "variant": variant, "seq_len": n, "batch_size": 2,
         "dtype": "float32", "device": CPU, "status": "ok", "case": case,
         "metrics": {"ms": ms, "ms_p10": ms * 0.9, "ms_p90": ms * 1.25, "tflops": 0.1, **extra.pop("metrics", {})},
         **extra}
    if host is not None:
        r["host"] = host
    return flatten(r)


def frame(*rows):
    return normalize(pd.DataFrame(list(rows)))


def test_old_records_get_every_new_column():
    df = frame(rec())                                    # no host, no timings_ms, no flops_convention
    for col in ("host_torch_threads", "host_loaded", "host_affinity", "flops_convention", "n_timings",
                "time_p10", "time_p90"):
        assert col in df
    assert df["host_loaded"].isna().all()                # not recorded is not "not loaded"
    assert df["time_ms"].iloc[0] == 4.0 and df["time_p90"].iloc[0] == 5.0


def test_host_nested_or_flattened_reads_the_same():
    nested = frame(rec(host=dict(HOST, loaded=True)))    # flatten() without "host" in _FLAT_PREFIXED
    flat_row = rec()
    flat_row.update({f"host_{k}": v for k, v in dict(HOST, loaded=True).items()})
    flat = frame(flat_row)                               # flatten() with it
    for df in (nested, flat):
        assert "host" not in df
        assert df["host_loaded"].tolist() == [True]
        assert df["host_torch_threads"].iloc[0] == 4 and df["host_affinity"].iloc[0] == [0, 1, 2, 3]


def test_time_table_shows_median_and_spread_and_marks_loaded_host():
    df = frame(rec("full", 256, ms=4.0), rec("full", 512, ms=16.0, host=dict(HOST, loaded=True)),
               rec("flash", 256, ms=2.0, status="oom", metrics={"ms": None, "ms_p10": None, "ms_p90": None}))
    t = case_table(df, "time_ms", spread=True)
    assert t.loc["full", "N = 256"] == "4.00 (3.60–5.00)"
    assert t.loc["full", "N = 512"] == "16.0 (14.4–20.0)†"
    assert t.loc["flash", "N = 256"] == "oom"
    assert case_table(df, "time_ms").loc["full", "N = 256"] == "4.00"          # no spread unless asked


def test_values_a_loaded_host_cannot_change_carry_no_mark():
    loaded = dict(HOST, loaded=True)
    df = frame(rec("full", 512, host=loaded, metrics={"peak_mem_mb": 12.0}),
               rec("linear", 512, mode="exactness", host=loaded, metrics={"approx_error": 0.25}))
    assert case_table(df, "time_ms").loc["full", "N = 512"].endswith("†")
    assert case_table(df, "peak_mem_mb").loc["full", "N = 512"] == "12.0"
    assert case_table(df, "approx_error").loc["linear", "N = 512"] == "0.250"


def test_speed_table_spread_from_step_times():
    df = frame(rec("full", 256, mode="model_step", ms=100.0, metrics={"steps_per_s": 10.0}),
               rec("linear", 256, mode="model_step", ms=50.0, metrics={"steps_per_s": 20.0}))
    absolute = speed_table(df, None)
    assert absolute.loc["full", "steps/s 256"] == "10.0 (8.00–11.1)"       # 1000/125 .. 1000/90
    assert speed_table(df, "full").loc["linear", "steps/s 256"] == "2.00×"


def test_flops_convention_footnote_or_column():
    conv = "fwd+bwd = 3.0 x fwd (materialized math)"
    same = frame(rec("full", case={"flops_convention": conv}), rec("full", 512, case={"flops_convention": conv}))
    table, note = with_conventions(case_table(same, "tflops"), same)
    assert note == f"FLOPs counted as: {conv}." and "FLOPs counted as" not in table
    mixed = frame(rec("full", case={"flops_convention": conv}),
                  rec("linear", case={"flops_convention": "counted (FlopCounterMode)"}),
                  rec("flash", case={"flops_source": "analytic"}), rec("nystrom"))
    table, note = with_conventions(case_table(mixed, "tflops"), mixed)
    assert note is None
    col = table["FLOPs counted as"]
    assert col["full"] == conv and col["linear"] == "counted (FlopCounterMode)"
    assert col["flash"] == "analytic, fwd+bwd = 3.5 x fwd (from flops_source)"   # the old records' convention
    assert col["nystrom"] == "not recorded"
    assert flops_conventions(mixed).name == "FLOPs counted as"


def test_raw_timings_list_column_survives_tidy_csv():
    times = [4.1, 3.9, 4.0, 5.2]
    df = frame(rec(timings_ms=times), rec("linear"))
    assert df["n_timings"].tolist()[0] == 4 and np.isnan(df["n_timings"].iloc[1])
    csv = tidy(df).to_csv(index=False)
    back = pd.read_csv(io.StringIO(csv))
    assert json.loads(back["timings_ms"].iloc[0]) == times              # one cell, valid JSON
    again = normalize(back)
    assert again["timings_ms"].iloc[0] == times and again["n_timings"].iloc[0] == 4


def test_host_table_lists_threads_and_load():
    df = frame(rec(host=HOST), rec("linear", host=dict(HOST, load_avg_1m=9.0, loaded=True)), rec("flash"))
    t = host_table(df)
    row = t.loc["CPU Test"]
    assert row["torch threads"] == "4 (2)" and row["OMP_NUM_THREADS"] == "4 (2)"
    assert row["MKL_NUM_THREADS"] == "not recorded" and row["affinity"] == "0-3 (2)"
    assert row["load avg 1 min"] == "0.50–9.00" and row["loaded records"] == "1 of 2"
    assert host_table(frame(rec())).empty                              # old records: nothing to list


def test_markdown_table_escapes_and_aligns():
    df = pd.DataFrame({"v": ["a|b", None], "x": ["1.00", "2.5"]}, index=pd.Index(["r1", "r2"], name="row"))
    md = markdown_table(df, left=("v",)).splitlines()
    assert md[0].split("|")[1].strip() == "row"
    assert md[1].replace(" ", "").startswith("|:---") and md[1].rstrip().endswith(":|")
    assert "a\\|b" in md[2] and "—" in md[3] and "2.5" in md[3]


@pytest.mark.parametrize("loaded, expected", [("True", True), ("true", True), (True, True), (1.0, True),
                                               ("False", False), (False, False), ("", None), (np.nan, None)])
def test_loaded_flag_from_csv_text_or_bool(loaded, expected):
    row = rec()
    row["host_loaded"] = loaded
    got = frame(row)["host_loaded"].iloc[0]
    assert (got is pd.NA) if expected is None else (got == expected)


def test_overhead_row_of_a_loaded_host_is_marked():
    from lra.report import overhead_table

    row = rec(mode="train_overhead", host=dict(HOST, loaded=True),
              metrics={"ms_model_fwd_bwd": 20.0, "ms_train_step": 22.0, "overhead_pct": 10.0})
    assert overhead_table(frame(row, rec(mode="train_overhead")))["status"].tolist() == ["ok†", "ok"]


def test_weights_table_shows_entropy_and_monotonicity_columns():
    """Exactness records with Hedgehog's measures -> entropy / monotonicity / KL / error columns at the
    longest N, fitted and initial errors side by side, and a softmax reference row."""
    from lra.report.tables import weights_table

    def ex(variant, n, **m):
        return rec(variant, n, mode="exactness", case={"pattern": "random"},
                   metrics={"approx_error": m.pop("err"), "softmax_entropy": 5.0, **m})

    df = frame(ex("hedgehog", 256, err=0.8, approx_error_init=0.9, entropy=5.5, monotonicity=0.8, weight_kl=0.4),
               ex("hedgehog", 512, err=0.7, approx_error_init=0.75, entropy=6.1, monotonicity=0.7, weight_kl=0.3),
               ex("linear", 512, err=0.77, approx_error_init=0.77, entropy=6.2, monotonicity=0.5, weight_kl=0.45),
               ex("full", 512, err=0.0, approx_error_init=0.0, entropy=5.0, monotonicity=1.0, weight_kl=0.0))
    table, n = weights_table(df)
    assert n == 512
    assert list(table.index) == ["full", "linear", "hedgehog", "softmax"]
    assert table.loc["hedgehog", "entropy (nats)"] == "6.10" and table.loc["hedgehog", "monotonicity"] == "0.700"
    assert table.loc["hedgehog", "error at init"] == "0.75" and table.loc["hedgehog", "error (fitted)"] == "0.7"
    assert table.loc["softmax", "entropy (nats)"] == "5.00"
    assert weights_table(frame(rec("full", 256, mode="exactness", metrics={"approx_error": 0.0})))[1] is None


def test_distilled_train_records_report_as_their_own_variant():
    from lra.report.labels import variant_order

    rows = [flatten({"schema": 1, "kind": "train", "task": "listops", "variant": "hedgehog", "status": "ok",
                     "device": CPU, "metrics": {"accuracy": a}, "distill": d})
            for a, d in ((0.3, {"on": True, "weight": 1.0}), (0.2, {"on": False, "weight": 0.0}), (0.25, None))]
    df = frame(*rows)
    assert list(df["variant"]) == ["hedgehog+distill", "hedgehog", "hedgehog"]
    assert variant_order(["taylor", "hedgehog+distill", "full", "hedgehog"]) == ["full", "hedgehog", "hedgehog+distill", "taylor"]


def test_compare_keeps_smoothness_radii_apart():
    """Two smoothness cases that differ only in their radius are two cases, not one averaged."""
    from lra.report.compare import compare_frames

    def frame(lips):
        return pd.DataFrame([{"kind": "bench", "task": None, "variant": "full", "device_name": "CPU x",
                              "mode": "smoothness", "seq_len": 64, "batch_size": 1, "dtype": "float32",
                              "pattern": "adversarial", "radius": r, "causal": False, "status": "ok",
                              "lipschitz": lip} for r, lip in lips])

    cmp = compare_frames(frame([(1.0, 10.0), (4.0, 100.0)]), frame([(1.0, 10.0), (4.0, 100.0)]))
    rows = cmp[cmp["metric"] == "lipschitz"]
    assert sorted(rows["current"].astype(float)) == [10.0, 100.0]
    assert not rows["regression"].any()
