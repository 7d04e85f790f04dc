"""Smoothness (Castin, Ablin & Peyre 2024): the estimator, the input patterns, the softmax bound,
and the sqrt(n) law of the worst case. CPU, small sizes."""
from __future__ import annotations

import math

import pytest
import torch

import attention_variants as av
from attention_variants.full import softmax_attention
from lra.smoothness import estimate, inputs
from lra.smoothness.estimate import exact_lipschitz, growth_exponent, power_iteration
from lra.smoothness.inputs import adversarial_rows, project_to_ball, search_rows, sphere_rows
from lra.smoothness.maps import Projections, projected_map, random_projections, softmax_bound
from lra.smoothness.measure import measure

from conftest import IN_TREE, SMALL_KNOBS

LENGTHS = [8, 16, 32, 64, 128, 256]
# the bench defaults: one head, d = 64, N(0, 1) projections, R = 2
DEFAULT = {"dim": 64, "weight_std": 1.0, "radius": 2.0, "iters": 20, "samples": 2,
           "search": {"steps": 4, "iters_per_step": 2, "starts": ["adversarial", "random"]}}


def softmax(q, k, v, key_padding_mask=None):
    return softmax_attention(q, k, v)


# ----------------------------------------------------------------------------- the estimator

@pytest.mark.parametrize("variant", ["full", "local", "linear", "performer", "random_feature", "reformer",
                                     "linformer", "nystrom", "bigbird"])
def test_power_iteration_agrees_with_the_exact_jacobian_norm(variant):
    """At small n the power iteration matches the spectral norm of the full Jacobian
    (torch.autograd.functional.jacobian), from below."""
    n, d = 6, 4
    attn = av.build(variant, heads=1, head_dim=d, max_length=n, **SMALL_KNOBS.get(variant, {})).eval()
    dtype = torch.float64
    attn = attn.to(dtype)
    fn = projected_map(attn, random_projections(d, d, seed=3, dtype=dtype))
    x = sphere_rows(n, d, radius=1.5, seed=4, dtype=dtype)
    exact = exact_lipschitz(fn, x)
    est = power_iteration(fn, x, iters=60, seed=0).sigma
    # softmaxes and feature maps run in fp32 inside the variants: both Jacobians agree to ~1e-6
    assert est <= exact * (1 + 1e-5)
    assert est == pytest.approx(exact, rel=5e-3)


def test_power_iteration_falls_back_to_double_vjp_without_forward_mode():
    class NoForward(torch.autograd.Function):   # tanh with a backward but no forward-mode rule
        @staticmethod
        def forward(x):
            return x.tanh()

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(inputs[0])

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * (1 - x.tanh() ** 2)

    a = torch.randn(5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    fn = lambda x: NoForward.apply(x @ a)  # noqa: E731
    x = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 0.3
    prod = estimate.JacobianProducts(fn, x)
    with pytest.raises(RuntimeError):
        torch.func.jvp(fn, (x,), (x,))
    assert power_iteration(fn, x, iters=100).sigma == pytest.approx(exact_lipschitz(fn, x), rel=1e-6)
    prod.jvp(x)
    assert not prod.forward_mode


def test_growth_exponent_fits_power_laws():
    ns = [8, 32, 128]
    assert growth_exponent(ns, [3 * n ** 0.5 for n in ns]) == pytest.approx(0.5)
    assert growth_exponent(ns, [3 * n ** 0.25 for n in ns]) == pytest.approx(0.25)
    assert growth_exponent([8], [1.0]) is None and growth_exponent([8, 8], [1.0, 2.0]) is None


# ----------------------------------------------------------------------------- the patterns

def test_adversarial_construction_follows_the_paper():
    """lambda_max > -8 lambda_min: [R u, R u/2, ...] with u the lambda_max eigenvector; else
    R [-u, u, ...] with u the lambda_min eigenvector (reference code: adversarial_data)."""
    d = 3
    q = torch.eye(d, dtype=torch.float64)[None, None]
    for diag, case, idx, lam in (([4.0, 1.0, -0.4], "max", 0, 4.0), ([4.0, 1.0, -0.6], "min", 2, -0.6)):
        k = torch.diag(torch.tensor(diag, dtype=torch.float64))[None, None] * math.sqrt(d)  # A = diag
        proj = Projections(torch.cat([q, k, q]))
        x, adv = adversarial_rows(proj, 5, radius=2.0)
        e = torch.zeros(d, dtype=torch.float64)
        e[idx] = 1.0
        sign = float(torch.sign(adv.direction[idx]))
        assert adv.case == case and adv.eigenvalue == pytest.approx(lam)
        if case == "max":
            expect = torch.stack([2.0 * e] + [1.0 * e] * 4) * sign
            assert adv.score_gap == pytest.approx(lam * 4 / 4)
        else:
            expect = torch.stack([-2.0 * e] + [2.0 * e] * 4) * sign
            assert adv.score_gap == pytest.approx(2 * abs(lam) * 4)
        torch.testing.assert_close(x, expect)


def _adversarial_curve(variant="full", lengths=LENGTHS, settings=DEFAULT, pattern="adversarial", **knobs):
    return [measure(variant, knobs, pattern, n, settings).metrics["lipschitz"] for n in lengths]


def test_softmax_adversarial_exponent_is_one_half_and_random_is_far_below():
    adv = _adversarial_curve()
    alpha = growth_exponent(LENGTHS, adv)
    assert 0.4 <= alpha <= 0.6, adv
    rand = _adversarial_curve(pattern="random")
    assert growth_exponent(LENGTHS, rand) < alpha - 0.25, rand


def test_softmax_adversarial_is_sqrt_n_times_the_value_norm():
    """In the sqrt(n) regime the other n - 1 queries (all n in the "max" case) attend to the
    first token only: L = sqrt(n - 1) ||W_V||_2 (sqrt(n) ||W_V||_2)."""
    proj = random_projections(64, 64, seed=0)
    v_norm = float(torch.linalg.matrix_norm(proj.w[2, 0].double(), ord=2))
    for n, value in zip(LENGTHS, _adversarial_curve()):
        assert math.sqrt(n - 1) * v_norm * 0.99 <= value <= math.sqrt(n) * v_norm * 1.01


def test_adversarial_falls_back_to_the_symmetric_part_without_real_eigenvalues():
    rot = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64) + 0.3 * torch.eye(2, dtype=torch.float64)
    adv = inputs.adversarial_direction(rot, radius=1.0)          # eigenvalues 0.3 +- i
    assert adv.source == "symmetric part" and adv.eigenvalue == pytest.approx(0.3)
    assert float(adv.direction @ rot @ adv.direction) == pytest.approx(0.3)


def test_small_radius_shows_the_mean_field_regime():
    """R = 0.5: the first token's share falls with n, L stops growing (mean-field regime)."""
    settings = {**DEFAULT, "radius": 0.5}
    adv = _adversarial_curve(settings=settings)
    assert growth_exponent(LENGTHS[:3], adv[:3]) > 0.4
    assert adv[-1] < 1.1 * adv[-3]


def test_search_finds_at_least_the_adversarial_value_and_stays_in_the_ball():
    for n in (8, 64):
        adv = measure("full", {}, "adversarial", n, DEFAULT).metrics["lipschitz"]
        rand = measure("full", {}, "random", n, DEFAULT).metrics["lipschitz_max"]
        out = measure("full", {}, "search", n, DEFAULT)
        assert out.metrics["lipschitz"] >= max(adv, rand)
        assert out.metrics["search_start_adversarial"] == adv and out.metrics["search_start_random"] == rand
    proj = random_projections(8, 8, seed=0)
    fn = projected_map(softmax, proj)
    res = search_rows(fn, {"random": sphere_rows(10, 8, radius=1.0, seed=1)}, radius=1.0, steps=5)
    assert float(res.x.norm(dim=-1).max()) <= 1.0 + 1e-6
    assert res.sigma >= res.start_sigma["random"]


def test_project_to_ball_only_shrinks_rows_outside():
    x = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    torch.testing.assert_close(project_to_ball(x, 1.0), torch.tensor([[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]]))


# ----------------------------------------------------------------------------- the bound

@pytest.mark.parametrize("radius", [0.5, 2.0, 8.0])
def test_no_exact_lipschitz_constant_exceeds_the_softmax_bound(radius):
    """Exact Jacobian norms (float64) at random, adversarial and searched points never exceed
    ||W_V|| sqrt(R_A^2 r^2 (n+1) + n)."""
    d, n = 4, 6
    for seed in range(3):
        proj = random_projections(d, d, seed=seed, dtype=torch.float64)
        fn = projected_map(softmax, proj)
        x_adv, _ = adversarial_rows(proj, n, radius=radius)
        points = [sphere_rows(n, d, radius=radius, seed=seed + 10, dtype=torch.float64), x_adv]
        points.append(search_rows(fn, {"adversarial": x_adv, "random": points[0]}, radius=radius, steps=8).x)
        for x in points:
            assert exact_lipschitz(fn, x) <= softmax_bound(x, proj) * (1 + 1e-9)


def test_bound_with_biases_holds_and_is_the_augmented_one():
    d, n, dh = 5, 7, 3
    gen = torch.Generator().manual_seed(0)
    proj = Projections(torch.randn(3, 2, d, dh, generator=gen, dtype=torch.float64),
                       torch.randn(3, 2, dh, generator=gen, dtype=torch.float64))
    fn = projected_map(softmax, proj)
    for seed in range(3):
        x = sphere_rows(n, d, radius=2.0, seed=seed, dtype=torch.float64)
        assert exact_lipschitz(fn, x) <= softmax_bound(x, proj)
    # the augmented projections compute the same map on [x, 1]
    x1 = torch.cat([x, torch.ones(n, 1, dtype=x.dtype)], dim=1)
    torch.testing.assert_close(projected_map(softmax, proj.augmented())(x1), fn(x))


def test_bound_matches_the_reference_formula_by_hand():
    proj = random_projections(3, 2, seed=0, dtype=torch.float64)
    x = sphere_rows(4, 3, radius=1.5, seed=1, dtype=torch.float64)
    wq, wk, wv = proj.w[:, 0]
    a = wk @ wq.T / math.sqrt(2)
    r_a = max(float((a @ xi).norm()) for xi in x)
    r = max(float((xi - xj).norm()) for xi in x for xj in x)
    expect = float(torch.linalg.matrix_norm(wv, 2)) * math.sqrt(r_a ** 2 * r ** 2 * 5 + 4)
    assert softmax_bound(x, proj) == pytest.approx(expect)


@pytest.mark.parametrize("pattern", ["random", "adversarial", "search"])
def test_measured_softmax_values_stay_under_the_bound(pattern):
    for n in (8, 64, 256):
        m = measure("full", {}, pattern, n, DEFAULT).metrics
        assert m["bound_ratio"] <= 1.0 and m["lipschitz"] <= m["softmax_bound"]


# ----------------------------------------------------------------------------- every variant, causal

@pytest.mark.parametrize("variant", sorted(IN_TREE))
def test_every_variant_runs_every_synthetic_pattern(variant):
    settings = {**DEFAULT, "dim": 8, "iters": 3, "samples": 1, "search": {"steps": 1, "iters_per_step": 1}}
    knobs = dict(SMALL_KNOBS.get(variant, {}))
    if variant == "flash":
        knobs["backend"] = "math"
    for pattern in ("random", "adversarial", "search"):
        out = measure(variant, knobs, pattern, 16, settings)
        assert math.isfinite(out.metrics["lipschitz"]) and out.metrics["lipschitz"] > 0
        assert out.facts["pattern"] == pattern and out.facts["radius"] == 2.0


def test_causal_setting_is_checked_and_recorded():
    settings = {**DEFAULT, "dim": 8, "iters": 3, "samples": 1}
    out = measure("random_feature", {"gate": True, "num_features": 16}, "adversarial", 16, settings, causal=True)
    assert out.facts["causal"] is True
    with pytest.raises(ValueError, match="not causal"):
        measure("random_feature", {"num_features": 16}, "adversarial", 16, settings, causal=True)
