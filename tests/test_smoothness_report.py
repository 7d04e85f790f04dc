"""Report pieces for smoothness records, on synthetic DataFrames shaped like lra.results.load's."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from lra.smoothness.report import exponent_table, pattern_figure, radius_figure, radius_table

NS = [8, 16, 32, 64, 128, 256]


def _rows(variant, pattern, alpha, *, radius=2.0, sweep=False, causal=False, c=3.0, bound=None, status="ok",
          device="CPU x"):
    out = []
    for n in NS:
        out.append({"kind": "bench", "mode": "smoothness", "variant": variant, "pattern": pattern,
                    "seq_len": n, "radius": radius, "sweep": sweep, "causal": causal, "status": status,
                    "lipschitz": c * n ** alpha, "device_name": device,
                    "softmax_bound": None if bound is None else bound * n ** 0.5})
    return out


def _frame():
    rows = (_rows("full", "adversarial", 0.5, bound=100.0) + _rows("full", "random", 0.0, bound=50.0)
            + _rows("bigbird", "adversarial", 0.5)
            + _rows("full", "data", 0.25, radius=math.nan) + _rows("linear", "adversarial", 0.0)
            + _rows("random_feature", "adversarial", 0.1, causal=True)
            + _rows("full", "adversarial", 0.3, radius=0.5, sweep=True)
            + _rows("full", "adversarial", 0.0, radius=0.25, sweep=True)
            + _rows("full", "search", 0.9, status="error")
            + [{"kind": "bench", "mode": "op_fwd", "variant": "full", "seq_len": 8, "status": "ok", "ms": 1.0}])
    return pd.DataFrame(rows)


def test_exponent_table_is_variant_by_pattern_at_the_main_setting():
    t = exponent_table(_frame())
    assert list(t.columns) == ["random", "adversarial", "data"]          # PATTERNS order; failed search left out
    assert t.loc["full", "adversarial"] == pytest.approx(0.5)           # the R = 0.5 / 0.25 sweep is left out
    assert t.loc["full", "random"] == pytest.approx(0.0, abs=1e-12)
    assert t.loc["full", "data"] == pytest.approx(0.25)
    assert t.loc["random_feature (causal)", "adversarial"] == pytest.approx(0.1)
    assert math.isnan(t.loc["linear", "data"])


def test_exponent_table_splits_devices_unless_one_is_chosen():
    df = pd.concat([_frame(), pd.DataFrame(_rows("full", "adversarial", 0.4, device="GPU y"))])
    assert exponent_table(df).index.names == ["device_name", "variant"]
    assert exponent_table(df, device="GPU y").loc["full", "adversarial"] == pytest.approx(0.4)
    assert exponent_table(pd.DataFrame()).empty


def test_radius_table_fits_each_radius():
    t = radius_table(_frame())
    full = t[(t["variant"] == "full") & (t["pattern"] == "adversarial")].set_index("radius")["alpha"]
    assert full.to_dict() == pytest.approx({0.25: 0.0, 0.5: 0.3, 2.0: 0.5}, abs=1e-12)
    assert set(t["pattern"]) == {"adversarial"}          # random was measured at one radius only


def test_pattern_figure_shows_exponents_and_the_softmax_bound():
    fig = pattern_figure(_frame(), "adversarial")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "full (\N{GREEK SMALL LETTER ALPHA}=0.50)" in labels and "linear (\N{GREEK SMALL LETTER ALPHA}=0.00)" in labels
    assert "random_feature (causal) (\N{GREEK SMALL LETTER ALPHA}=0.10)" in labels
    assert any(lab.startswith("softmax bound") for lab in labels)
    assert "bigbird (\N{GREEK SMALL LETTER ALPHA}=0.50, on top of full)" in labels
    bound = [ln for ln in fig.axes[0].get_lines() if ln.get_label().startswith("softmax bound")][0]
    np.testing.assert_allclose(bound.get_ydata(), [100.0 * n ** 0.5 for n in NS])
    assert fig.axes[0].get_xscale() == "log" and fig.axes[0].get_yscale() == "log"
    assert pattern_figure(_frame(), "search") is None                  # only failed records


def test_radius_figure_has_a_panel_per_swept_pattern():
    fig = radius_figure(_frame())
    assert len(fig.axes) == 1 and "adversarial" in fig.axes[0].get_title()
    assert radius_figure(pd.DataFrame(_rows("full", "random", 0.0))) is None
