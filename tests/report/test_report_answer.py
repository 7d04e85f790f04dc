"""The report's answer first: "Which attention?", the one-figure summary, and the command line on
inputs without records. Frames built in the test where possible; one small end-to-end build."""
import json
import re

import pandas as pd
import pytest

from lra import report
from lra.report import accuracy_evidence, answer_table, normalize, summary_points
from lra.results import flatten, make_record, write_record

GPU = {"type": "cuda", "name": "GPU X", "count": 1, "memory_mb": 80000}
# attention fwd+bwd ms = c * (N/1024)^p
OPS = {"full": (1.0, 2), "flash": (0.5, 2), "performer": (2.0, 1), "linear": (1.0, 1)}


def bench(variant, n, ms, status="ok", device=GPU, mode="op_fwd_bwd", **extra):
    return flatten({"schema": 1, "kind": "bench", "variant": variant, "seq_len": n, "batch_size": 4,
                    "dtype": "bfloat16", "device": device, "status": status, "case": {"mode": mode},
                    "metrics": {"ms": ms if status == "ok" else None}, **extra})


def train(variant, task, acc, n=2000, device=GPU, steps_per_s=10.0, mem=1000.0, status="ok"):
    return flatten({"schema": 1, "kind": "train", "variant": variant, "task": task, "seq_len": n,
                    "device": device, "status": status, "config": {},
                    "metrics": {"accuracy": acc, "steps_per_s": steps_per_s, "peak_mem_mb": mem}})


def grid(lengths=(1024, 2048, 4096, 8192, 16384), oom=(("full", 16384),)):
    rows = []
    for v, (c, p) in OPS.items():
        for n in lengths:
            failed = (v, n) in oom
            rows.append(bench(v, n, c * (n / 1024) ** p, status="oom" if failed else "ok"))
    return rows


def frame(rows):
    return normalize(pd.DataFrame(rows))


def cells(table, n_label, column_start):
    col = next(c for c in table.columns if c.startswith(column_start))
    return table.loc[n_label, col]


def test_answer_without_accuracy_says_why_in_every_accuracy_cell():
    table, notes = answer_table(frame(grid()), "GPU X")
    assert list(table.index) == ["1,024 (Image, Pathfinder)", "2,000 (ListOps)", "2,048", "4,000 (Text, Retrieval)",
                                 "4,096", "8,192", "16,384 (Path-X)"]
    assert cells(table, "1,024 (Image, Pathfinder)", "fastest exact").startswith("[flash](#time-gpu-x): 0.500 ms")
    assert cells(table, "1,024 (Image, Pathfinder)", "fastest exact").endswith(" · [[fig:time:gpu_x]]")  # its figure
    assert "runs to 16,384 (largest tried)" in cells(table, "8,192", "fastest exact")
    for m in ("fastest within 1 pt", "fastest within 3 pts"):
        assert set(table[next(c for c in table.columns if c.startswith(m))]) == \
            {"no accuracy on this device"}
    assert any("no training runs on this device" in n for n in notes)
    # performer 2x vs flash x^2/2 overtakes from 8K (equal at 4K); linear (x vs x^2/2) from 4K
    assert cells(table, "4,096", "overtakes") == "[linear from 4,096]([[page:ops]]#derived-gpu-x) · [[fig:time:gpu_x]]"
    assert cells(table, "16,384 (Path-X)", "overtakes").startswith(
        "[linear from 4,096, performer from 8,192]([[page:ops]]#derived-gpu-x)")
    assert cells(table, "2,000 (ListOps)", "fastest exact") == "not timed at this N on this device"


def test_oom_limits_and_a_length_where_every_exact_kernel_failed():
    rows = grid(oom=(("full", 8192), ("full", 16384), ("flash", 16384)))
    table, _ = answer_table(frame(rows), "GPU X")
    assert "runs to 8,192, oom at 16,384" in cells(table, "8,192", "fastest exact")            # flash
    assert cells(table, "16,384 (Path-X)", "fastest exact") == "[none ran: full oom, flash oom](#time-gpu-x)"


def test_answer_with_accuracy_picks_the_fastest_close_enough_variant():
    rows = grid() + [train("flash", "listops", 0.37), train("full", "listops", 0.36),
                     train("linear", "listops", 0.345),       # 2.5 points below the best exact run
                     train("performer", "listops", 0.365),    # 0.5 points below
                     train("flash", "text", 0.64, n=4000), train("performer", "text", 0.645, n=4000)]
    df = frame(rows)
    ev = accuracy_evidence(df, "GPU X")
    assert ev.reason is None and [t.split(" (")[0] for t in ev.tasks] == ["ListOps", "Text"]
    assert ev.tasks[0] == "ListOps (N = 2,000; recipe lra; 1 run per variant)"
    assert ev.gaps["linear"] == pytest.approx(-2.5) and ev.gaps["performer"] == pytest.approx(-0.5)
    table, _ = answer_table(df, "GPU X")
    # at 16K: within 1 pt = exact kernels + performer; flash OOMs nowhere, flash 128 ms vs performer 32 ms
    assert cells(table, "16,384 (Path-X)", "fastest within 1 pt").startswith("[performer](#time-gpu-x): 32.0 ms")
    assert "-0.5 pts on ListOps" in cells(table, "16,384 (Path-X)", "fastest within 1 pt")
    assert cells(table, "16,384 (Path-X)", "fastest within 1 pt").endswith(" · [[fig:summary:gpu_x]]")
    assert cells(table, "16,384 (Path-X)", "fastest within 3 pts").startswith("[linear]")
    # at 1K the exact kernel is fastest among those within 1 pt
    assert cells(table, "1,024 (Image, Pathfinder)", "fastest within 1 pt").startswith("[flash (exact)]")
    # at 2000 only the training runs timed it: ms per training step from steps_per_s (the op grid's reach after)
    assert cells(table, "2,000 (ListOps)", "fastest exact") == \
        "[flash](#accuracy-gpu-x): 100 ms/step; runs to 16,384 (largest tried) · [[fig:summary:gpu_x]]"


def test_an_exact_baseline_that_did_not_learn_answers_nothing():
    df = frame(grid() + [train("flash", "listops", 0.163), train("performer", "listops", 0.17)])
    ev = accuracy_evidence(df, "GPU X")
    assert ev.gaps == {} and "did not learn" in ev.reason and "16.3% vs the paper's 36.4%" in ev.reason
    table, notes = answer_table(df, "GPU X")
    assert cells(table, "4,096", "fastest within 1 pt") == "[exact baseline did not learn](#accuracy-gpu-x)"
    only = accuracy_evidence(frame([train("flash", "listops", 0.163)]), "GPU X")
    assert only.short == "exact baseline did not learn; no approximation trained"


def test_summary_points_need_two_variants_with_accuracy():
    pts, why = summary_points(frame(grid()), "GPU X")
    assert pts.empty and "no training runs" in why
    pts, why = summary_points(frame([train("flash", "listops", 0.37)]), "GPU X")
    assert pts.empty and "one point compares nothing" in why
    pts, why = summary_points(frame([train("flash", "listops", 0.37, steps_per_s=4.0),
                                     train("linear", "listops", 0.30, steps_per_s=10.0, mem=None)]), "GPU X")
    assert why == "" and set(pts["variant"]) == {"flash", "linear"}
    assert pts.set_index("variant").loc["flash", "ms_per_step"] == 250.0


def _write(root, **fields):
    rec = make_record(fields.pop("kind"), variant=fields.pop("variant"), **fields)
    root.mkdir(parents=True, exist_ok=True)
    write_record(rec, root)


def test_report_with_new_record_fields_end_to_end(tmp_path, monkeypatch):
    """Records carrying host facts, raw timings and the FLOP convention: daggers, spread, conventions, threads."""
    monkeypatch.setenv("LRA_GIT_COMMIT", "0123abc")
    host = {"torch_threads": 2, "interop_threads": 2, "cpu_count": 2, "cpus_available": 2, "load_avg_1m": 3.5,
            "omp_num_threads": "2", "mkl_num_threads": None, "affinity": [0, 1], "loaded": True}
    for v, ms, conv in (("full", 4.0, "fwd+bwd = 3.0 x fwd (materialized math)"),
                        ("linear", 2.0, "counted (FlopCounterMode)")):
        _write(tmp_path / "rec", kind="bench", variant=v, seq_len=256, batch_size=2, dtype="float32",
               host=dict(host, loaded=v == "full"), timings_ms=[ms, ms * 1.1, ms * 0.9],
               case={"mode": "op_fwd_bwd", "flops_convention": conv, "repeats": 3},
               metrics={"ms": ms, "ms_p10": ms * 0.9, "ms_p90": ms * 1.1, "tflops": 0.1})
    out = tmp_path / "out"
    md = report.build_report([tmp_path / "rec"], out, figure_formats=("png",)).read_text()
    assert md.index("## Which attention?") < md.index("### Time vs N")
    assert md.index("[Op-level detail](report-ops.md)") < md.index("## Which attention?")  # side pages from the top
    ops = (out / "report-ops.md").read_text()
    assert "4.00 (3.60–4.40)†" in ops and "median of 3 timed calls" in ops
    assert "† measured while the host was loaded" in ops
    assert "fwd+bwd = 3.0 x fwd (materialized math)" in ops and "counted (FlopCounterMode)" in ops
    prov = (out / "report-provenance.md").read_text()
    assert "torch threads" in prov and "2 (2)" in prov and "loaded records" in prov
    assert "not drawn (no training runs on this device" in md              # the summary says why it is missing
    tidy = pd.read_csv(out / "tidy.csv")
    assert sorted(len(json.loads(t)) for t in tidy["timings_ms"]) == [3, 3]
    html = (out / "report.html").read_text()
    assert 'href="report-ops.html"' in html and '<table class="sortable">' in html and "<th" in html
    assert "<script>" in html and "@media print" in html                   # sortable, a print stylesheet
    assert_links_resolve(md)


def assert_links_resolve(md):
    """Every in-page link of the report has its target anchor."""
    targets = set(re.findall(r"\]\(#([^)]+)\)", md))
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', md))
    assert targets and targets <= anchors, targets - anchors


def test_cli_without_records_fails_with_one_line_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "side").mkdir()
    (tmp_path / "side" / "peers.json").write_text('{"rows": []}')   # JSON, but not a record
    for folder in ("empty", "side"):
        out = tmp_path / f"out_{folder}"
        assert report.main([str(tmp_path / folder), f"out={out}"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("lra-report: error: no result records in") and err.count("\n") == 1
        assert not out.exists()
    assert "peers.json" in err
