"""lra.report.smoothness: exponent table, findings and figures, on synthetic frames shaped like the report's."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from lra.report.frame import normalize, tidy
from lra.report.plotting import FigureDir
from lra.report.smoothness import (RATIO_COLUMN, exponent_display, exponent_table, findings, growth_class, growth_legend,
                                   pattern_figure, radius_figure, radius_table, smoothness_figures)

NS = [8, 16, 32, 64, 128, 256]


def _rows(variant, pattern, alpha, *, radius=2.0, sweep=False, causal=False, c=3.0, bound=None, status="ok",
          device="CPU x", gap=None, **facts):
    """One record per N with L = c N^alpha and, when given, softmax bound = bound N^0.5."""
    out = []
    for n in NS:
        lip = c * n ** alpha
        b = None if bound is None else bound * n ** 0.5
        out.append({"kind": "bench", "mode": "smoothness", "variant": variant, "pattern": pattern, "seq_len": n,
                    "radius": radius, "sweep": sweep, "causal": causal, "status": status, "lipschitz": lip,
                    "device_name": device, "softmax_bound": b, "bound_ratio": None if b is None else lip / b,
                    "score_gap": gap, **facts})
    return out


def _frame(full_adv=0.5, full_bound=100.0):
    rows = (_rows("full", "adversarial", full_adv, bound=full_bound, gap=60.0)
            + _rows("full", "random", 0.0, bound=50.0, c=10.0, score_std=3.9)
            + _rows("full", "search", 0.5, c=4.0, bound=100.0)
            + _rows("bigbird", "adversarial", full_adv, bound=full_bound)
            + _rows("full", "data", 0.0, radius=math.nan, c=1.0, bound=40.0, data_task="listops", layer=0.0)
            + _rows("linear", "adversarial", -0.05, c=2.0, bound=0.1)          # L / bound > 1: not softmax
            + _rows("linformer", "adversarial", 0.9)
            + _rows("random_feature", "adversarial", 0.0, causal=True)
            + _rows("full", "adversarial", 0.3, radius=0.5, sweep=True, gap=4.0)
            + _rows("full", "adversarial", 0.0, radius=0.25, sweep=True, gap=1.0)
            + _rows("full", "random", 0.9, status="error")
            + [{"kind": "bench", "mode": "op_fwd", "variant": "full", "seq_len": 8, "status": "ok", "ms": 1.0,
                "device_name": "CPU x"}])
    return pd.DataFrame(rows)


def test_exponent_table_is_variant_by_pattern_at_the_main_setting():
    t = exponent_table(_frame())
    assert list(t.columns) == ["adversarial", "search", "random", "data"]   # worst case first
    assert list(t.index) == ["full", "linformer", "bigbird", "linear", "random_feature (causal)"]
    assert t.loc["full", "adversarial"] == pytest.approx(0.5)              # R = 0.5 / 0.25 sweep left out
    assert t.loc["full", "random"] == pytest.approx(0.0, abs=1e-12)        # the failed random records left out
    assert t.loc["random_feature (causal)", "adversarial"] == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(t.loc["linear", "data"])
    assert exponent_table(pd.DataFrame()).empty


def test_records_of_several_devices_need_a_device():
    df = pd.concat([_frame(), pd.DataFrame(_rows("full", "adversarial", 0.4, device="GPU y"))])
    with pytest.raises(ValueError, match="GPU y"):
        exponent_table(df)
    assert exponent_table(df, device="GPU y").loc["full", "adversarial"] == pytest.approx(0.4)


def test_exponent_table_survives_the_tidy_csv(tmp_path):
    """causal/sweep come back from tidy.csv as text: the table must not change."""
    df = normalize(_frame())
    path = tmp_path / "tidy.csv"
    tidy(df).to_csv(path, index=False)
    pd.testing.assert_frame_equal(exponent_table(normalize(pd.read_csv(path))), exponent_table(df))


def test_growth_classes_and_the_display_table():
    assert [growth_class(a) for a in (0.9, 0.5, 0.25, 0.0, -0.5, math.nan)] == \
        ["faster than √N", "√N", "slower than √N", "flat", "decreasing", "—"]
    assert growth_legend().startswith("α ≥ 0.6 faster than √N, 0.4–0.6 √N, 0.15–0.4 slower than √N, |α| < 0.15 flat")
    t = exponent_display(_frame())
    assert t.loc["full", "adversarial α"] == "0.50" and t.loc["linear", "data α"] == "—"
    assert t.loc["full", "worst-case growth (adversarial)"] == "√N"
    assert t.loc["linformer", "worst-case growth (adversarial)"] == "faster than √N"
    assert t.loc["full", RATIO_COLUMN] == "0.0707"               # random: 10 / (50 sqrt 8); exact softmax: a check
    assert t.loc["linear", RATIO_COLUMN] == "(6.37)"              # 2 * 8^-0.05 / (0.1 sqrt 8); not softmax: bracketed


def test_radius_table_fits_each_radius():
    t = radius_table(_frame())
    full = t[(t["variant"] == "full") & (t["pattern"] == "adversarial")].set_index("radius")
    assert full["alpha"].to_dict() == pytest.approx({0.25: 0.0, 0.5: 0.3, 2.0: 0.5}, abs=1e-12)
    assert full["score_gap"].to_dict() == {0.25: 1.0, 0.5: 4.0, 2.0: 60.0}
    assert set(t["pattern"]) == {"adversarial"}          # random was measured at one radius only


def _finding(lines, head):
    return next(x for x in lines if x.startswith(f"**{head}"))


def test_findings_are_read_from_the_records():
    lines = findings(_frame())
    assert "bigbird: the same L as full" in lines[1]
    radius = _finding(lines, "Radius R = 2")
    assert "std 3.9" in radius and "score gap is 60" in radius and "log N = 5.5" in radius
    assert "0.00 at R = 0.25" in radius and "0.30 at R = 0.5" in radius and "√N from R = 2" in radius
    worst = _finding(lines, "Worst case")
    assert "faster than √N: linformer (0.90)" in worst and "√N: full (0.50), bigbird (0.50)" in worst
    assert "flat: linear, random_feature (causal)" in worst
    search = _finding(lines, "Search")
    assert "true at 6 of 6 (variant, N)" in search
    assert "best random draw at R = 2 already gives L = 10.0 at N = 8, above the adversarial point's 8.49" in search
    bound = _finding(lines, "Softmax bound")
    assert "no measurement above the bound" in bound and "linear (up to 6.37)" in bound
    assert any("6 smoothness case(s) failed (error)" in x for x in lines)
    # other records, other words: nothing is hard-coded
    slower = findings(_frame(full_adv=0.3))
    assert "slower than √N: full (0.30), bigbird (0.30)" in _finding(slower, "Worst case")


def test_a_softmax_measurement_above_the_bound_is_called_a_bug():
    bound = _finding(findings(_frame(full_bound=1.0)), "Softmax bound")
    assert "a measurement above the bound: a bug" in bound and "largest L / bound 3.00 (full" in bound


def test_search_below_the_adversarial_value_is_named():
    df = _frame()
    df.loc[(df["pattern"] == "search") & (df["seq_len"] == 256), "lipschitz"] = 1.0
    search = _finding(findings(df), "Search")
    assert "Below it at: full N = 256" in search


def test_pattern_figure_shows_exponents_and_the_softmax_bound(tmp_path):
    out = FigureDir(tmp_path, ("png",))
    colors = {"full": "C0", "bigbird": "C1", "linear": "C2", "linformer": "C3", "random_feature": "C4"}
    import matplotlib.pyplot as plt

    captured = {}
    save = out.save

    def keep(fig, stem):
        captured["fig"] = fig
        return save(fig, stem)

    out.save = keep
    path, note = pattern_figure(_frame(), "adversarial", "CPU x", colors, out, "adv")
    assert path.is_file() and path.read_bytes()[:4] == b"\x89PNG"
    ax = captured["fig"].axes[0]
    legend = ax.get_legend() or captured["fig"].legends[0]       # outside the plot: the figure's legend
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels[0] == r"full ($\propto N^{0.50}$)"
    assert r"bigbird ($\propto N^{0.50}$), same as full" in labels and "full = bigbird" in note
    assert r"random_feature (causal) ($\propto N^{0.00}$)" in labels
    bound = next(ln for ln in ax.get_lines() if ln.get_color() == "k")
    np.testing.assert_allclose(bound.get_ydata(), [100.0 * n ** 0.5 for n in NS])
    causal = next(ln for ln in ax.get_lines() if ln.get_label().startswith("random_feature (causal)"))
    assert causal.get_linestyle() == "--"
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    plt.close("all")
    assert pattern_figure(_frame(), "data_trained", "CPU x", colors, out, "x") == \
        (None, "no ok smoothness record of pattern data_trained")


def test_smoothness_figures_one_per_pattern_and_the_radius_sweep(tmp_path):
    out = FigureDir(tmp_path, ("png",))
    figs = smoothness_figures(_frame(), "CPU x", {}, out)
    assert [c for c, _ in figs] == ["smoothness: L vs N, adversarial inputs, R = 2",
                                    "smoothness: L vs N, search inputs, R = 2",
                                    "smoothness: L vs N, random inputs, R = 2",
                                    "smoothness: L vs N, data inputs",
                                    "smoothness: fitted exponent vs radius R"]
    assert [p.name for _, (p, _) in figs] == ["smoothness_adversarial_cpu_x.png", "smoothness_search_cpu_x.png",
                                              "smoothness_random_cpu_x.png", "smoothness_data_cpu_x.png",
                                              "smoothness_radius_cpu_x.png"]
    assert radius_figure(pd.DataFrame(_rows("full", "random", 0.0)), "CPU x", {}, out, "r") == \
        (None, "no pattern measured at more than one radius")
