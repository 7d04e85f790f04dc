"""lra.report: tables, derived numbers, figures and the baseline comparison, on synthetic records."""
import math

import numpy as np
import pandas as pd
import pytest

from lra import report
from lra.report.accuracy import accuracy_time_table, blocks
from lra.results import make_record, write_record
from test_report_answer import assert_links_resolve

H100 = {"type": "cuda", "name": "NVIDIA H100 80GB HBM3", "count": 1, "memory_mb": 81559}
A100 = {"type": "cuda", "name": "NVIDIA A100-SXM4-40GB", "count": 1, "memory_mb": 40536}
VERSIONS = {"python": "3.12.0", "torch": "2.13.0", "cuda": "12.8"}

# op time per call (ms) = c * (N/1024)^p; memory (MiB) = m * (N/1024)^q
OPS = {"full": (1.0, 2, 100.0, 2), "flash": (0.5, 2, 10.0, 1), "performer": (2.0, 1, 20.0, 1)}
LENGTHS = (1024, 2048, 4096, 8192)


def _write(root, device, kind, **kw):
    rec = make_record(kind, **kw)
    rec["device"] = dict(device)  # make_record queries the local device; records carry the measured one
    rec["versions"] = VERSIONS
    rec["host"] = {**rec["host"], "load_avg_1m": 0.5, "loaded": False}  # not this machine's load of the moment
    rec["started_at"] = "2025-01-02T03:04:05+00:00"
    folder = root / device["name"].split()[1]
    folder.mkdir(parents=True, exist_ok=True)
    write_record(rec, folder)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LRA_GIT_COMMIT", "0123abc")  # no git subprocess per record
        return _make_records(tmp_path_factory.mktemp("records"))


def _make_records(root):
    for dev, speed in ((H100, 1.0), (A100, 2.0)):
        for v, (c, p, m, q) in OPS.items():
            for n in LENGTHS:
                x = n / 1024
                if dev is A100 and v == "full" and n == 8192:
                    _write(root, dev, "bench", variant=v, status="oom", seq_len=n, batch_size=4, dtype="bf16",
                           message="CUDA out of memory. Tried to allocate 4 GiB\nsecond line", case={"mode": "op_fwd_bwd"})
                    continue
                _write(root, dev, "bench", variant=v, seq_len=n, batch_size=4, dtype="bf16",
                       case={"mode": "op_fwd_bwd"}, metrics={"ms": speed * c * x ** p, "peak_mem_mb": m * x ** q})
            for n, sps, mem in ((1024, 4.0, 1000.0), (2048, 2.0, 4000.0)):
                factor = {"full": 1.0, "flash": 2.0, "performer": 3.0}[v]
                _write(root, dev, "bench", variant=v, task="text", seq_len=n, batch_size=32, dtype="bf16",
                       case={"mode": "model_step"},
                       metrics={"steps_per_s": sps * factor / speed, "peak_mem_mb": mem / factor})
    # accuracy on the H100: two seeds of full/listops, one failed Path-X run
    for seed, acc in ((0, 0.36), (1, 0.38)):
        _write(root, H100, "train", variant="full", task="listops", seq_len=2000, seed=seed,
               metrics={"accuracy": acc, "steps_per_s": 5.0})
    _write(root, H100, "train", variant="full", task="text", seq_len=4000, seed=0, metrics={"accuracy": 0.6426})
    _write(root, H100, "train", variant="full", task="pathx", seq_len=16384, seed=0, status="oom",
           message="CUDA out of memory")
    _write(root, H100, "train", variant="performer", task="listops", seq_len=2000, seed=0,
           metrics={"accuracy": 0.18, "steps_per_s": 12.5, "peak_mem_mb": 900.0})
    _write(root, H100, "train", variant="performer", task="text", seq_len=4000, seed=0, metrics={"accuracy": 0.65})
    _write(root, H100, "train", variant="performer", task="pathx", seq_len=16384, seed=0, metrics={"accuracy": 0.5})
    # training-loop overhead on the H100
    _write(root, H100, "bench", variant="flash", task="listops", seq_len=2000, batch_size=32, dtype="bfloat16",
           case={"mode": "train_overhead"},
           metrics={"ms": 22.0, "ms_model_fwd_bwd": 20.0, "ms_model_fwd_bwd_opt": 21.0, "ms_train_step": 22.0,
                    "overhead_pct": 10.0, "optimizer_pct": 5.0, "loop_pct": 5.0, "steps_per_s": 45.45})
    # exactness and smoothness on the H100
    for n in (256, 1024):
        for pat, e in (("random", 0.01), ("concentrated", 0.1)):
            _write(root, H100, "bench", variant="performer", seq_len=n, case={"mode": "exactness", "pattern": pat},
                   metrics={"approx_error": e * n / 256})
    for n in (256, 1024, 4096):  # an exponent needs >= 3 lengths
        _write(root, H100, "bench", variant="performer", seq_len=n, case={"mode": "smoothness"},
               metrics={"lipschitz": 2.0 * n ** 0.5})
    return root


@pytest.fixture(scope="module")
def built(records, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    path = report.build_report([records], out, figure_formats=("png",))
    return out, path.read_text()


def _page(out, key, name="report.md"):
    """The markdown of one side page ("ops", "training", ...) of the report in ``out``."""
    return (out / report.page_names(name)[key]).read_text()


def _plain(cells):
    """Table cells without the bold marking the best of a column."""
    return [c.replace("**", "") for c in cells]


def _row(md, first_cell, after=None):
    """The cells of the first markdown table row whose first cell is ``first_cell`` (after the line
    containing ``after``)."""
    lines = md.splitlines()
    start = next(i for i, ln in enumerate(lines) if after in ln) if after else 0
    for ln in lines[start:]:
        if ln.startswith("|"):
            cells = [c.strip() for c in ln.strip().strip("|").split("|")]
            if cells[0] == first_cell:
                return cells
    raise AssertionError(f"no row {first_cell!r} after {after!r}")


# ---------------------------------------------------------------------------------------------- numbers

def test_fit_exponent_quadratic_and_linear():
    n = np.array([256, 512, 1024, 2048, 4096])
    assert report.fit_exponent(n, 3e-6 * n ** 2) == pytest.approx(2.0, abs=1e-9)
    # upper half only: a constant overhead at small N does not bend the slope much
    y = 0.2 + 1e-3 * n
    whole = np.polyfit(np.log(n), np.log(y), 1)[0]
    upper = report.fit_exponent(n, y)
    assert whole < 0.85 < upper < 1.0
    assert math.isnan(report.fit_exponent([1024], [1.0]))
    assert math.isnan(report.fit_exponent([1024, 2048], [float("nan"), 2.0]))


def test_crossover_linear_vs_quadratic():
    lengths = [512, 1024, 2048, 4096, 8192]
    flash = {n: (n / 1024) ** 2 for n in lengths}          # 1 ms at 1K, quadratic
    linear = {n: 2.5 * n / 1024 for n in lengths}          # 2.5 ms at 1K, linear: equal at N = 2.5K
    assert report.crossover_length(linear, flash) == 4096
    # a variant that OOMs at the largest length does not "stay below"
    assert report.crossover_length({**linear, 8192: float("nan")}, flash) is None
    # a reference that OOMs counts as slower; both failing says nothing
    assert report.crossover_length(linear, {**flash, 8192: float("nan")}) == 4096
    assert report.crossover_length({**linear, 8192: np.inf}, {**flash, 8192: np.inf}) == 4096
    # never faster
    assert report.crossover_length({n: 10 * t for n, t in flash.items()}, flash) is None


def test_derived_numbers(records):
    df = report.load_frame([records])
    der = report.derived_numbers(df, "NVIDIA H100 80GB HBM3").set_index("variant")
    assert der.loc["full", "time_exponent"] == pytest.approx(2.0, abs=1e-6)
    assert der.loc["flash", "memory_exponent"] == pytest.approx(1.0, abs=1e-6)
    assert der.loc["performer", "time_exponent"] == pytest.approx(1.0, abs=1e-6)
    # performer 2*x vs flash 0.5*x^2: equal at x = 4 (4K); strictly below only at 8K
    assert der.loc["performer", "crossover"] == 8192
    assert pd.isna(der.loc["full", "crossover"])
    a100 = report.derived_numbers(df, "NVIDIA A100-SXM4-40GB").set_index("variant")
    assert a100.loc["full", "largest_ok"] == 4096 and a100.loc["full", "n_max"] == 8192


# ---------------------------------------------------------------------------------------------- report

def test_accuracy_table(built):
    out, md = built
    after = "Table 1, LRA protocol"
    row = _plain(_row(md, "full", after=after))
    header = _row(md, "variant", after=after)
    cells = dict(zip(header, row))
    assert cells["ListOps (%)"] == "37.00 ± 1.41"
    assert cells["Text (%)"] == "64.26"
    assert cells["Path-X (%)"] == "oom"                  # failed, not blank, not zero
    assert cells["mean (%)"] == "50.63 (2/3 tasks)"
    assert cells["ListOps ms/step"] == "200"             # from steps_per_s = 5
    perf = dict(zip(header, _plain(_row(md, "performer", after=after))))
    assert perf["Path-X (%)"] == "50.00" and perf["mean (%)"] == "44.33"
    training = _page(out, "training")
    gap = _row(training, "full vs Transformer")
    assert gap[1] == "+0.63" and gap[2] == "-0.01"
    assert "Tay et al. 2020" in training
    assert _row(training, "BigBird", after="## Published numbers")[-1] == "55.01"


def test_speed_tables(built):
    """One table per question in the unit of its figure (ms per step), the relative speed a column."""
    out, _ = built
    ops = _page(out, "ops")
    h100 = ops[ops.index('<a id="ops-nvidia-h100-80gb-hbm3-model-step">'):]
    assert _row(h100, "variant")[1:] == ["N = 1,024", "N = 2,048", "time ÷ full at N = 2,048"]
    assert _row(h100, "flash")[1:] == ["125", "250", "0.50×"]            # 2x the steps/s of full
    assert _row(h100, "performer")[3] == "0.33×"
    assert _row(h100, "full")[1:3] == ["250", "500"]                     # 4 and 2 steps/s
    memory = h100[h100.index("Peak memory of the same steps"):]
    assert _row(memory, "full")[1] == "1,000"
    # sorted by the table's own measure, the best cell of each column in bold
    rows = [ln.split("|")[1].strip() for ln in h100[:h100.index("Peak memory")].splitlines()
            if ln.startswith("| ") and not ln.startswith("| variant")]
    assert rows == ["performer", "flash", "full"] and _row(h100, "performer")[1] == "**83.3**"


def test_training_loop_overhead_table(built):
    out, _ = built
    row = _row(_page(out, "ops"), "flash", after="Training-loop overhead")
    assert row[1:5] == ["listops", "2000", "32", "bfloat16"]
    assert row[5:11] == ["20.0", "21.0", "22.0", "+10.0", "+5.0", "+5.0"] and row[11] == "ok"


def test_op_tables_and_failures(built):
    out, md = built
    ops = _page(out, "ops")
    a100 = ops[ops.index("## NVIDIA A100-SXM4-40GB"):]
    assert _row(a100, "full") == ["full", "2.00", "8.00", "32.0", "oom"]
    h100 = ops[ops.index('<a id="derived-nvidia-h100-80gb-hbm3">'):]
    assert _row(h100, "performer") == ["performer", "1.00 ± 0.00", "1.00 ± 0.00", "8,192", "8,192"]
    assert _row(h100, "full")[3] == "none up to 8,192"
    # the main page's time table says why a cell has no number, where it shows
    main_a100 = md[md.index('<a id="time-nvidia-a100-sxm4-40gb">'):]
    assert _row(main_a100, "full")[4] == "oom" and "*oom*: ran out of memory" in main_a100
    prov = _page(out, "provenance")
    sec = prov[prov.index("## Failed cases"):]
    row = _row(sec, "bench")
    assert "oom" in row and "CUDA out of memory. Tried to allocate 4 GiB" in row and "second line" not in sec
    assert "2025-01-02" in prov and "`0123abc`" in prov and "2.13.0" in prov


def test_smoothness_section(built):
    """Records without a pattern (older ones) count as random tokens; the exponent comes from the records."""
    out, md = built
    sm = _page(out, "smoothness")
    sm = sm[sm.index("## NVIDIA H100 80GB HBM3"):]
    assert _row(sm, "performer") == ["performer", "0.50"]                  # L = 2 sqrt(N)
    assert "**Random tokens.** √N: performer (0.50)." in sm
    assert "largest L / softmax bound" not in sm                          # no bound in these records
    assert "figures/smoothness_random_nvidia_h100_80gb_hbm3.png" in sm
    assert "smoothness" not in md.split("Other pages:")[0]                 # a side page, linked from the top
    assert "[Smoothness](report-smoothness.md)" in md


def test_figures_are_pngs(built):
    out, md = built
    pngs = sorted((out / "figures").glob("*.png"))
    names = {p.name for p in pngs}
    pages = "\n".join(p.read_text() for p in out.glob("*.md"))
    assert any(n.startswith("time_op_fwd_bwd_") for n in names)
    assert any(n.startswith("memory_op_fwd_bwd_") for n in names)
    assert any(n.startswith("summary_nvidia_h100") for n in names)
    assert any(n.startswith("approx_error_") for n in names)
    assert any(n.startswith("smoothness_") for n in names)
    assert "cross_device_op_fwd_bwd.png" in names
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", p
        assert f"figures/{p.name}" in pages
    assert (out / "report.html").read_text().startswith("<!doctype html>")
    assert_links_resolve(md)
    # numbered figures, referenced from the answer cells; the main page holds the answer's figures
    assert "![Figure 1: NVIDIA H100 80GB HBM3: test accuracy vs time" in md and "· [Fig. 4](#fig-4)" in md
    assert "approx_error_" not in md and "smoothness_" not in md


def test_tidy_csv(built):
    out, _ = built
    tidy = pd.read_csv(out / "tidy.csv")
    assert len(tidy) == 51 and "config" not in tidy.columns
    assert "variant_config" not in tidy.columns          # "{}" in every record: an empty column is dropped
    assert {"device_name", "mode", "ms", "status"} <= set(tidy.columns)
    assert not tidy.isna().all().any()                     # no all-empty column
    dictionary = (out / "tidy.md").read_text()
    for col in tidy.columns:                               # every column explained
        assert f"| `{col}`" in dictionary, col


def test_compare_flags_planted_regression(records, built, tmp_path):
    out, _ = built
    cur = pd.read_csv(out / "tidy.csv")
    slow = (cur["variant"] == "performer") & (cur["mode"] == "op_fwd_bwd") & (cur["seq_len"] == 2048) \
        & (cur["device_name"] == "NVIDIA H100 80GB HBM3")
    assert slow.sum() == 1
    cur.loc[slow, "ms"] *= 1.5                       # 50% slower than the baseline
    small = (cur["variant"] == "flash") & (cur["mode"] == "op_fwd_bwd") & (cur["seq_len"] == 1024) \
        & (cur["device_name"] == "NVIDIA H100 80GB HBM3")
    cur.loc[small, "ms"] *= 1.02                     # within tolerance
    cur_csv = tmp_path / "current.csv"
    cur.to_csv(cur_csv, index=False)
    path = report.build_report([cur_csv], tmp_path / "rep", compare=out, tolerance=0.05, figure_formats=())
    md = path.read_text()
    cmp = pd.read_csv(tmp_path / "rep" / "compare.csv")
    reg = cmp[cmp["regression"]]
    assert len(reg) == 1
    assert reg.iloc[0]["variant"] == "performer" and reg.iloc[0]["metric"] == "ms"
    assert reg.iloc[0]["change"] == pytest.approx(0.5)
    assert "1 regression(s)" in md
    row = _row(_page(tmp_path / "rep", "compare"), "bench")
    assert "+50.0%" in row and any("REGRESSION" in c for c in row)
    assert report.main([str(cur_csv), "--out", str(tmp_path / "cli"), "--compare", str(out),
                        "--fail-on-regression", "--no-figures"]) == 1


def test_empty_and_partial_inputs(tmp_path, monkeypatch):
    monkeypatch.setenv("LRA_GIT_COMMIT", "0123abc")
    (tmp_path / "none").mkdir()
    with pytest.raises(report.NoRecordsError, match="no result records"):
        report.build_report([tmp_path / "none"], tmp_path / "out")
    assert not (tmp_path / "out").exists()           # nothing written that could be mistaken for a report
    # only one train record: every other section says there is nothing
    rec = make_record("train", variant="linear", task="image", metrics={"accuracy": 0.4}, git_commit="x")
    write_record(rec, tmp_path / "one.json")
    md = report.build_report([tmp_path / "one.json"], tmp_path / "out2", figure_formats=()).read_text()
    assert _plain(_row(md, "linear"))[1] == "40.00"
    assert "no op benchmark on this device" in md


# ---------------------------------------------------------------------------------------------- output options

CPU = {"type": "cpu", "name": "CPU x86_64", "count": 2, "memory_mb": 16000}


def _cpu_records(root):
    """A tiny CPU grid: op time without peak memory (as CPU runs record it), plus a non-record JSON."""
    for v, c in (("full", 1.0), ("linear", 2.0)):
        for n in (256, 512):
            _write(root, CPU, "bench", variant=v, seq_len=n, batch_size=2, dtype="float32",
                   case={"mode": "op_fwd_bwd", "timer": "perf_counter"},
                   metrics={"ms": c * n / 256, "peak_mem_mb": None})
            _write(root, CPU, "bench", variant=v, task="text", seq_len=n, batch_size=2, dtype="float32",
                   case={"mode": "model_step"}, metrics={"steps_per_s": 10 / c, "peak_mem_mb": None})
    for v, acc in (("full", 0.37), ("linear", 0.40)):  # a trainer=quick sweep: ListOps at N = 128
        _write(root, CPU, "train", variant=v, task="listops", seq_len=128, batch_size=32, dtype="float32",
               seed=0, metrics={"accuracy": acc, "steps_per_s": 1.2, "peak_mem_mb": None})
    _write(root, CPU, "train", variant="performer", task="listops", seed=0, status="error",
           message="TypeError: boom")               # failed before its shape was known
    (root / "x86_64" / "peers.json").write_text('{"rows": [{"variant": "full", "ms": 1.0}]}')
    return root


def test_cpu_only_report_says_memory_not_measured(tmp_path, monkeypatch):
    monkeypatch.setenv("LRA_GIT_COMMIT", "0123abc")
    root = _cpu_records(tmp_path / "rec")
    out = tmp_path / "out"
    md = report.build_report([root], out, figure_formats=("png",)).read_text()
    assert "peak memory not measured on CPU" in md
    assert "No memory table: peak memory not measured on CPU" in md  # no table of empty memory columns
    ops = _page(out, "ops")
    step = ops[ops.index("Training step of the encoder"):]
    assert "Peak memory of the same steps" not in step and "N = 256" in step
    derived = ops[ops.index("### Exponents"):]
    assert _row(derived, "full")[2] == "not measured"                # no memory exponent
    assert _row(derived, "linear")[1] == "too few lengths (2)"       # 2 lengths fit no exponent
    names = {p.name for p in (out / "figures").glob("*.png")}
    assert any(n.startswith("time_op_fwd_bwd_cpu") for n in names)
    assert any(n.startswith("summary_cpu") for n in names)           # accuracy and speed from the train records
    assert not any(n.startswith("memory_") for n in names)           # no empty memory figure ...
    assert "CPU x86_64: attention forward+backward peak memory vs N: not drawn (peak memory not measured on CPU" in md
    # ... and the non-record JSON is named, not read and not fatal
    assert report.load_frame([root])["variant"].notna().all()
    prov = _page(out, "provenance")
    assert "1 other JSON file is not records" in md and "peers.json" in prov
    # quick runs are not the paper's problem; a job that failed early is listed with its message
    assert "Table 1, CPU protocol (recipe `lra`): not comparable to the LRA paper" in md
    assert "ListOps (N = 128, not LRA's 2,000" in md
    assert _row(prov[prov.index("## Failed cases"):], "train")[-1] == "TypeError: boom"


def test_report_into_its_records_folder(tmp_path, monkeypatch):
    """`lra-report results out=results name=REPORT.md`: the report's own files are never read back."""
    monkeypatch.setenv("LRA_GIT_COMMIT", "0123abc")
    root = _cpu_records(tmp_path / "results")
    monkeypatch.chdir(tmp_path)
    for _ in range(2):  # the second build sees the first one's tidy.csv, REPORT.md and figures
        assert report.main(["results", "out=results", "name=REPORT.md"]) == 0
    md = (root / "REPORT.md").read_text()
    assert not (root / "report.md").exists() and (root / "REPORT.html").is_file()
    assert len(pd.read_csv(root / "tidy.csv")) == 11               # 11 records, not 11 + the previous CSV
    assert "11 records" in md
    assert md.splitlines()[2].endswith("Rebuild: `lra-report results out=results name=REPORT.md`.")
    assert (root / "REPORT-ops.md").is_file() and "[Op-level detail](REPORT-ops.md)" in md
    links = [ln[ln.index("](") + 2:-1] for ln in md.splitlines() if ln.startswith("![")]
    assert links and all(link.startswith("figures/") for link in links)   # relative: renders on GitHub
    for link in links:
        assert (root / link).is_file()
    # a figure from an earlier build that is not drawn any more does not linger
    (root / "figures" / "time_op_fwd_old.png").write_bytes(b"x")
    report.build_report(["results"], "results", name="REPORT.md", figure_formats=("png",))
    assert not (root / "figures" / "time_op_fwd_old.png").exists()
    with pytest.raises(ValueError):
        report.build_report(["results"], "results", name="sub/REPORT.md", figure_formats=())


def test_recipes_get_their_own_accuracy_tables(tmp_path, monkeypatch):
    monkeypatch.setenv("LRA_GIT_COMMIT", "0123abc")
    for recipe, acc in ((None, 0.163), ("small", 0.371)):
        config = {"recipe": recipe} if recipe else {}
        _write(tmp_path, H100, "train", variant="flash", task="listops", seq_len=2000, seed=0, config=config,
               metrics={"accuracy": acc})
    md = report.build_report([tmp_path], tmp_path / "out", figure_formats=()).read_text()
    assert "recipe `lra`" in md and "recipe `small`" in md
    assert _plain(_row(md, "flash", after="recipe `lra`"))[1] == "16.30"  # not averaged with the other recipe
    assert _plain(_row(md, "flash", after="recipe `small`"))[1] == "37.10"


def test_curve_ends_with_the_final_validation(tmp_path):
    """A run's history holds the validations during training; its line ends at the final weights'
    validation (``metrics.val_accuracy`` at ``metrics.steps``), which the history does not hold."""
    from lra.report.curves import curve_points
    history = [{"step": 250, "val_accuracy": 0.30, "val_loss": 1.9}, {"step": 750, "val_accuracy": 0.33,
                                                                       "val_loss": 1.8}]
    for variant, steps in (("full", 1000), ("flash", 750)):  # flash's last validation is its last step
        _write(tmp_path, A100, "train", variant=variant, task="listops", seq_len=512, seed=0,
               case={"history": history}, metrics={"accuracy": 0.33, "steps": steps, "val_accuracy": 0.34,
                                                   "val_loss": 1.7})
    df = report.load_frame(tmp_path)
    pts = curve_points(df, A100["name"])
    full = pts[pts["variant"] == "full"].sort_values("step")
    assert full["step"].tolist() == [250, 750, 1000]
    assert full["val_accuracy"].iloc[-1] == pytest.approx(0.34) and full["val_loss"].iloc[-1] == pytest.approx(1.7)
    assert pts[pts["variant"] == "flash"]["step"].tolist() == [250, 750]


def test_cpu_table_block_says_how_many_runs_shared_a_loaded_host(tmp_path):
    """Training times of runs that ended on a loaded host are rough: the block's settings line says how many."""
    for v, loaded in (("full", True), ("flash", False)):
        rec = make_record("train", variant=v, task="listops", seq_len=512, seed=0,
                          config={"protocol": "cpu_table"}, metrics={"accuracy": 0.33, "steps_per_s": 1.0})
        rec["device"] = dict(CPU)
        rec["host"] = {**rec["host"], "load_avg_1m": 3.5 if loaded else 1.0, "loaded": loaded}
        write_record(rec, tmp_path)
    (block,) = blocks(report.load_frame(tmp_path), CPU["name"])
    assert "1 of 2 runs on a loaded host" in block.settings()
    rows = block.rows.assign(host_loaded=False)
    assert "loaded host" not in type(block)(block.device, block.experiment, block.recipe, block.protocol,
                                            rows).settings()


def test_a_variant_run_on_fewer_tasks_sorts_after_those_run_on_all():
    """A mean over one easy task must not rank above means over every task (the CPU protocol mid-campaign)."""
    rows = pd.DataFrame([
        dict(variant="full", task="listops", accuracy=0.33, status="ok", steps_per_s=1.0, learned=True),
        dict(variant="full", task="text", accuracy=0.58, status="ok", steps_per_s=2.0, learned=True),
        dict(variant="linformer", task="text", accuracy=0.50, status="ok", steps_per_s=2.0, learned=False),
    ])
    table = accuracy_time_table(rows)
    assert table.index.tolist() == ["full", "linformer"]
    assert table.loc["linformer", "mean (%)"] == "50.00 (1/2 tasks)"
