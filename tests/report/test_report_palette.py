"""The report's palette and plotting rules (issue 32): 12 colours told apart in normal vision and under
each simulated dichromacy, one marker each, one colour per variant everywhere, one tick style, axes
bounded by the data. Pure functions, no figure drawn."""
from itertools import combinations

import numpy as np
import pandas as pd
import pytest

from lra.report.palette import COLORS, DICHROMACY, FIXED, MARKERS, delta_e, hex_rgb, simulate, styles
from lra.report.plotting import robust_limits, tick_text

#: pairs a reader compares most, once look-alikes in the paired palette (issue 32)
COMPARED = (("full", "flash"), ("local", "linformer"), ("reformer", "bigbird"), ("random_feature", "nystrom"),
            ("hedgehog", "taylor"))


def test_twelve_distinct_colours_each_with_its_own_marker():
    assert len(COLORS) == 12 == len(set(c.upper() for c in COLORS))
    assert len(MARKERS) == 12 == len(set(MARKERS))
    assert sorted(FIXED.values()) == list(range(12))          # every registered variant its own slot


def test_colours_far_apart_in_normal_vision_and_from_the_background():
    closest = min(delta_e(a, b) for a, b in combinations(COLORS, 2))
    assert closest >= 18.0                                     # CIEDE2000; ~2 is just noticeable
    assert min(delta_e(c, "#FFFFFF") for c in COLORS) >= 20.0


@pytest.mark.parametrize("kind", sorted(DICHROMACY))
def test_colours_stay_apart_under_each_dichromacy(kind):
    seen = {c: simulate(hex_rgb(c), kind) for c in COLORS}
    assert min(delta_e(seen[a], seen[b]) for a, b in combinations(COLORS, 2)) >= 8.0
    for a, b in COMPARED:
        assert delta_e(seen[COLORS[FIXED[a]]], seen[COLORS[FIXED[b]]]) >= 10.0, (a, b)


def test_delta_e_known_values():
    assert delta_e("#000000", "#000000") == pytest.approx(0.0, abs=1e-9)
    assert delta_e("#000000", "#FFFFFF") == pytest.approx(100.0, abs=0.01)
    # Sharma, Wu & Dalal 2005, test pair 1 (CIELAB inputs)
    from lra.report.palette import delta_e_lab
    assert delta_e_lab(np.array([50.0, 2.6772, -79.7751]), np.array([50.0, 0.0, -82.7485])) == \
        pytest.approx(2.0425, abs=1e-4)


def test_one_style_per_variant_whatever_else_is_drawn():
    alone = styles(["flash"])["flash"]
    assert styles(["full", "flash", "performer"])["flash"] == alone == styles(FIXED)["flash"]
    s = styles(["linear", "linear+distill", "my_plugin", "other_plugin"])
    assert s["linear+distill"].color == s["linear"].color and s["linear+distill"].dashed and not s["linear"].dashed
    assert s["my_plugin"].dashed and s["other_plugin"].dashed
    assert (s["my_plugin"].color, s["my_plugin"].marker) != (s["other_plugin"].color, s["other_plugin"].marker)
    fixed = {(st.color, st.marker) for st in styles(FIXED).values()}
    assert (s["my_plugin"].color, s["my_plugin"].marker) not in fixed   # never mistaken for a registered one


@pytest.mark.parametrize("value, text", [(0.0001, "10⁻⁴"), (0.00001, "10⁻⁵"), (0.001, "0.001"), (0.25, "0.25"),
                                         (1.0, "1"), (1000.0, "1,000"), (100000.0, "100,000"), (1e6, "10⁶"),
                                         (2e6, "2×10⁶"), (3.5e-7, "3.5×10⁻⁷")])
def test_one_tick_style(value, text):
    assert tick_text(value) == text


def test_axis_bounded_by_the_data_leaves_outliers_off_scale():
    approximations = [0.2, 0.3, 0.5, 0.8, 1.0, 0.4, 0.6, 0.9]
    exact = [1e-6, 2e-6]                                        # rounding level, decades below
    lo, hi = robust_limits(approximations + exact, log=True)
    assert 1e-3 < lo < 0.2 and 1.0 < hi < 2.0                   # the approximations fill the axis
    lo, hi = robust_limits([1.0, 2.0, 3.0, 2.5, 1.5, 4.0, 1e9], log=True)
    assert hi < 100.0                                           # one runaway value does not squash the rest
    lo, hi = robust_limits(pd.Series([1.0, 10.0, 100.0]), log=True)
    assert lo < 1.0 and hi > 100.0                              # nothing left out when nothing stands apart
