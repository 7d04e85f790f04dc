"""Hedgehog and Taylor (Based) attention, the attention-distillation loss and the weight measures."""
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import attention_variants as av
from attention_variants.taylor import taylor_features
from lra.attention_measures import (attention_entropy, average_ranks, fit_to_softmax, monotonicity,
                                    probe_weights, weight_measures)
from lra.bench.exactness import exactness_inputs
from lra.distill import distillation_loss, sample_queries, soft_kl, softmax_weights, variant_weights
from conftest import compose_bench


def inputs(score_std=1.0, b=2, h=2, n=48, d=16, seed=0, dtype=torch.float32):
    """q, k, v with softmax scores q.k/sqrt(d) of std ``score_std``; the last sequence padded from 2n/3."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=g, dtype=dtype) for _ in range(3))
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[-1, 2 * n // 3:] = False
    s = math.sqrt(score_std)
    return q * s, k * s, v, mask


def quadratic(kernel: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum_j K_ij v_j / sum_j K_ij`` over the real keys, float64."""
    kernel = kernel.masked_fill(~mask[:, None, None, :], 0.0)
    return kernel @ v.double() / kernel.sum(-1, keepdim=True)


def rel(a, b):
    return float((a.double() - b).norm() / b.norm())


# ----------------------------------------------------------------------------- taylor

@pytest.mark.parametrize("symmetric", [True, False])
def test_taylor_features_identity_exact(symmetric):
    """phi(x) . phi(y) = 1 + s + s^2 / 2 with s = x.y / sqrt(f), to float64 roundoff."""
    g = torch.Generator().manual_seed(1)
    x, y = (torch.randn(200, 16, generator=g, dtype=torch.float64) * 3 for _ in range(2))
    s = (x * y).sum(-1) / 4
    got = (taylor_features(x, symmetric) * taylor_features(y, symmetric)).sum(-1)
    torch.testing.assert_close(got, 1 + s + s * s / 2, rtol=1e-13, atol=1e-13)
    assert taylor_features(x, symmetric).shape[-1] == (153 if symmetric else 273)


def test_taylor_variant_matches_closed_form_across_scales():
    """The O(N) fp32 path equals sum_j (1 + s + s^2/2) v_j / sum_j (1 + s + s^2/2) in float64, where
    s is the score of the projected q, k, at score std 1, 2, 4; 153 features at f = 16."""
    attn = av.build("taylor", heads=2, head_dim=32, seed=3).eval()
    assert attn.num_features == 153
    for std in (1.0, 2.0, 4.0):
        q, k, v, mask = inputs(std, d=32)
        with torch.no_grad():
            out = attn(q, k, v, key_padding_mask=mask)
            pq, pk = attn.project(q.double()), attn.project(k.double())
        s = pq @ pk.transpose(-1, -2) / 4
        assert rel(out, quadratic(1 + s + s * s / 2, v, mask)) < 1e-5, std


def test_taylor_projection_init_keeps_score_scale_and_no_projection_option():
    attn = av.build("taylor", heads=2, head_dim=64, seed=0)
    p = attn.projection.detach()
    torch.testing.assert_close(p.transpose(-1, -2) @ p, torch.eye(16).expand(2, 16, 16), atol=1e-5, rtol=0)
    assert isinstance(attn.projection, torch.nn.Parameter)
    fixed = av.build("taylor", heads=2, head_dim=64, learned_projection=False)
    assert not any(True for _ in fixed.parameters())
    full = av.build("taylor", heads=2, head_dim=8, feature_dim=None)
    assert full.projection is None and full.num_features == 1 + 8 + 36
    with pytest.raises(ValueError, match="feature_dim"):
        av.build("taylor", heads=2, head_dim=8, feature_dim=0)


# ----------------------------------------------------------------------------- hedgehog

@pytest.mark.parametrize("activation", ["softmax", "exp"])
def test_hedgehog_matches_its_float64_definition_across_scales(activation):
    """Output = quadratic normalised attention of the unstabilised features in float64: the exp
    stabilizers (per query row, shared by the real keys) cancel at every score scale."""
    attn = av.build("hedgehog", heads=2, head_dim=16, activation=activation).eval()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # move off the identity so q and k maps differ
        for p in attn.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    for std in (1.0, 2.0, 4.0):
        q, k, v, mask = inputs(std)
        with torch.no_grad():
            out = attn(q, k, v, key_padding_mask=mask)

            def feats(x, w, b):
                u = torch.einsum("bhnd,hdf->bhnf", x.double(), w.double()) + b.double()[None, :, None]
                f = (lambda t: torch.softmax(t, -1)) if activation == "softmax" else torch.exp
                return torch.cat([f(u), f(-u)], dim=-1)

            phi_q = feats(q, attn.q_weight, attn.q_bias)
            phi_k = feats(k, attn.k_weight, attn.k_bias)
        assert rel(out, quadratic(phi_q @ phi_k.transpose(-1, -2), v, mask)) < 1e-5, std


def test_hedgehog_init_is_identity_and_knobs():
    attn = av.build("hedgehog", heads=3, head_dim=8)
    x = torch.randn(1, 3, 5, 8)
    torch.testing.assert_close(attn.feature_map(x, True), torch.cat([x.softmax(-1), (-x).softmax(-1)], -1))
    assert attn.q_weight.shape == (3, 8, 8) and attn.num_features == 16
    shared = av.build("hedgehog", heads=3, head_dim=8, share_heads=True, feature_dim=4)
    assert shared.k_weight.shape == (1, 8, 4) and shared.num_features == 8
    assert shared(x, x, x).shape == x.shape
    with pytest.raises(ValueError, match="softmax"):
        av.build("hedgehog", heads=2, head_dim=8, activation="relu")


def test_hedgehog_exp_padding_and_bf16_long_input():
    """The exp activation (not the default the common tests run) keeps padded keys out and stays
    finite under bf16 autocast at N = 4096 with large, padded inputs."""
    attn = av.build("hedgehog", heads=2, head_dim=16, activation="exp").train()
    q, k, v, mask = inputs(1.0, b=1, n=4096)
    mask[0] = torch.arange(4096) < 3000
    k = k.clone()
    k[0, :, 3000:] = 1e4                                   # huge padded keys: ignored by the stabilizer
    q, k, v = (t.requires_grad_() for t in (q * 3, k, v))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(q, k, v, key_padding_mask=mask)
    ref = attn(q.detach(), k.detach()[:, :, :3000], v.detach()[:, :, :3000])
    torch.testing.assert_close(out.float()[:, :, :3000], ref[:, :, :3000], atol=2e-2, rtol=2e-2)
    out.float().square().mean().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


# ----------------------------------------------------------------------------- distillation

def test_distillation_loss_equals_quadratic_definition():
    """With every query sampled, the loss is the mean over real queries of sum_j T (log T - log A):
    the soft-label cross-entropy minus the teacher's entropy."""
    attn = av.build("hedgehog", heads=2, head_dim=16)
    q, k, _, mask = inputs(2.0, dtype=torch.float64)
    loss = distillation_loss(attn, q, k, mask, num_queries=10_000)
    t = torch.softmax((q @ k.transpose(-1, -2) / 4).masked_fill(~mask[:, None, None, :], -math.inf), -1)
    phi_q, phi_k = attn.feature_map(q, True), attn.feature_map(k, False, mask)
    a = (phi_q @ phi_k.transpose(-1, -2)).masked_fill(~mask[:, None, None, :], 0.0)
    a = a / a.sum(-1, keepdim=True)
    real = mask[:, None, None, :]
    ce = -(t * a.log().masked_fill(~real, 0.0)).sum(-1)                           # (B, H, N)
    ce = ce + (t * t.log().masked_fill(~real, 0.0)).sum(-1)                      # minus H(T)
    w = mask[:, None, :].double()
    torch.testing.assert_close(loss, (ce * w).sum((0, 2)) / w.sum((0, 2)))


def test_distillation_teacher_sends_no_gradient_into_q_k():
    attn = av.build("taylor", heads=2, head_dim=16)
    q, k, _, mask = inputs(2.0)
    q.requires_grad_(), k.requires_grad_()
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    distillation_loss(attn, q, k, mask, 16, gen()).sum().backward()
    idx = sample_queries(q.shape[-2], 16, gen())
    q2, k2 = q.detach().clone().requires_grad_(), k.detach().clone().requires_grad_()
    teacher = softmax_weights(q[:, :, idx].detach(), k.detach(), mask)          # a constant
    soft_kl(teacher, variant_weights(attn, q2, k2, mask, idx), mask[:, idx]).sum().backward()
    torch.testing.assert_close(q.grad, q2.grad)
    torch.testing.assert_close(k.grad, k2.grad)


def test_distillation_is_linear_in_length():
    """O(N s): doubling N at a fixed number of sampled queries doubles the matmul FLOPs (an
    (N, N) matrix would quadruple them)."""
    attn = av.build("hedgehog", heads=2, head_dim=16)

    def flops(n):
        q, k, _, mask = inputs(1.0, n=n)
        with FlopCounterMode(display=False) as counter:
            distillation_loss(attn, q, k, mask, num_queries=32).sum().backward()
        return counter.get_total_flops()

    assert 1.8 < flops(512) / flops(256) < 2.2


def test_distillation_padded_queries_and_keys_do_not_count():
    attn = av.build("performer", heads=2, head_dim=16, num_features=32)
    q, k, _, mask = inputs(1.0)
    loss = distillation_loss(attn, q, k, mask, num_queries=10_000)
    q2, k2 = q.clone(), k.clone()
    pad = ~mask[:, None, :, None].expand_as(q)
    q2[pad], k2[pad] = 100.0, -100.0
    torch.testing.assert_close(distillation_loss(attn, q2, k2, mask, num_queries=10_000), loss)


def test_distillation_rejects_variants_without_features():
    q, k, _, mask = inputs()
    with pytest.raises(TypeError, match="feature_map"):
        distillation_loss(av.build("full", heads=2, head_dim=16), q, k, mask)
    gated = av.build("random_feature", heads=2, head_dim=16, num_features=8, gate=True)
    with pytest.raises(TypeError, match="causal"):
        distillation_loss(gated, q, k, mask)


@pytest.mark.parametrize("name,drop", [("hedgehog", 0.3), ("taylor", 0.03)])
def test_fitting_lowers_the_distillation_loss(name, drop):
    """25 Adam steps lower the distillation loss and the KL gap to softmax by at least ``drop``
    (relative); taylor's only learnable part is its projection, so it moves less."""
    attn = av.build(name, heads=2, head_dim=16)
    q, k, _, mask = inputs(2.0, n=64)
    kl0 = weight_measures(attn, q, k, mask, 64).weight_kl
    losses = fit_to_softmax(attn, lambda t: (q, k, mask), steps=25, lr=1e-2, num_queries=64)
    assert len(losses) == 25 and losses[-1] < losses[0]
    assert weight_measures(attn, q, k, mask, 64).weight_kl < (1 - drop) * kl0
    assert fit_to_softmax(av.build("linear", heads=2, head_dim=16), lambda t: (q, k, mask), 5) == []


# ----------------------------------------------------------------------------- measures

def test_entropy_and_ranks_by_hand():
    w = torch.tensor([[[[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0]]]])
    torch.testing.assert_close(attention_entropy(w), torch.tensor([[[math.log(4), 0.0]]]))
    mask = torch.tensor([[True, True, False, False]])
    torch.testing.assert_close(attention_entropy(w, mask), torch.tensor([[[math.log(2), 0.0]]]))
    torch.testing.assert_close(average_ranks(torch.tensor([3.0, 1.0, 3.0, 2.0])),
                               torch.tensor([2.5, 0.0, 2.5, 1.0], dtype=torch.float64))
    s = torch.tensor([[[[1.0, 2.0, 3.0, 4.0]]]])
    torch.testing.assert_close(monotonicity(s.exp(), s).float(), torch.ones(1, 1, 1))
    torch.testing.assert_close(monotonicity(-s, s).float(), -torch.ones(1, 1, 1))
    # padded keys are left out: the real part is monotone whatever the padded weights are
    torch.testing.assert_close(monotonicity(torch.tensor([[[[1.0, 2.0, 0.0, 9.0]]]]), s,
                                            torch.tensor([[True, True, False, False]])).float(), torch.ones(1, 1, 1))


@pytest.mark.parametrize("name", ["linear", "performer", "hedgehog", "taylor", "random_feature"])
def test_feature_map_weights_are_what_forward_applies(name):
    """The feature_map weights (used by distillation and the measures) equal the matrix that
    forward applies to the values, read off by probing with one-hot values."""
    from conftest import small_variant

    attn = small_variant(name).eval()
    q, k, _, mask = inputs(1.0, n=40)
    idx = torch.arange(40)
    with torch.no_grad():
        torch.testing.assert_close(variant_weights(attn, q, k, mask, idx), probe_weights(attn, q, k, mask),
                                   atol=1e-5, rtol=1e-4)


def test_softmax_measures_and_linear_lacks_spikiness():
    """Exact attention is monotone with softmax's entropy and zero KL; elu+1 is flatter (higher
    entropy) and less monotone on concentrated inputs (the Hedgehog paper's observation)."""
    q, k, _ = exactness_inputs("concentrated", 1, 2, 64, 16, seed=0)
    q, k = q.float(), k.float()
    full = weight_measures(av.build("full", heads=2, head_dim=16), q, k, None, 32)
    assert full.monotonicity > 0.999 and abs(full.weight_kl) < 1e-4
    assert abs(full.entropy - full.softmax_entropy) < 1e-4
    lin = weight_measures(av.build("linear", heads=2, head_dim=16), q, k, None, 32)
    assert lin.entropy > full.entropy + 1 and lin.monotonicity < 0.9 and lin.weight_kl > 0.5


def test_fitted_hedgehog_closer_to_softmax_than_performer_and_linear():
    """On the bench's random and concentrated inputs (small shapes), after fitting, hedgehog's
    output error against softmax is below performer's and linear's at the same feature count
    (2 head_dim = 32 for performer; elu+1 has head_dim = 16 features, hedgehog then f = 8)."""
    h, d, n = 2, 16, 128
    for pattern in ("random", "concentrated"):
        q, k, v = (t.float() for t in exactness_inputs(pattern, 1, h, n, d, seed=0))
        ref = softmax_weights(q.double(), k.double(), None) @ v.double()

        def err(name, **knobs):
            attn = av.build(name, heads=h, head_dim=d, **knobs)
            fit_to_softmax(attn, lambda t: tuple(x.float() for x in exactness_inputs(pattern, 2, h, n, d, seed=9 + t)[:2])
                           + (None,), steps=20, lr=3e-3)
            with torch.no_grad():
                return rel(attn(q, k, v), ref)

        assert err("hedgehog") < err("performer", num_features=2 * d), pattern
        assert err("hedgehog", feature_dim=d // 2) < err("linear"), pattern


# ----------------------------------------------------------------------------- the training option

def tiny_encoder(attention, tied=False, **knobs):
    from lra.model import Encoder, EncoderConfig

    return Encoder(EncoderConfig(vocab_size=12, num_classes=3, max_length=24, d_model=16, heads=2, mlp_dim=32,
                                 layers=2, dropout=0.0, tied_weights=tied, attention=attention, attention_cfg=knobs))


@pytest.mark.parametrize("tied", [False, True])
def test_layer_distiller_losses_per_layer_and_gradients(tied):
    """One loss per layer application (tied layers too), gradients reach the feature maps, the
    padded positions and evaluation forwards capture nothing; weight scales the loss."""
    from lra.distill import LayerDistiller

    model = tiny_encoder("hedgehog", tied=tied).train()
    dist = LayerDistiller(model, weight=2.0, num_queries=8)
    tokens = torch.randint(1, 12, (3, 24))
    mask = torch.ones(3, 24, dtype=torch.bool)
    mask[0, 10:] = False
    model(tokens, mask)
    assert len(dist._captured) == 2
    loss = dist.loss()
    loss.backward()
    assert model.blocks[0].attn.attention.q_weight.grad.abs().sum() > 0
    window = dist.window()
    assert len(window) == 2 and loss.item() == pytest.approx(2.0 * sum(window) / 2, rel=1e-5)
    assert dist.window() is None
    with torch.no_grad():
        model(tokens, mask)
    model.eval()
    model(tokens, mask)
    assert dist._captured == []
    with pytest.raises(RuntimeError, match="captured"):
        dist.loss()
    dist.remove()


def test_layer_distiller_rejects_non_kernel_variants():
    from lra.distill import LayerDistiller

    with pytest.raises(TypeError, match="feature_map"):
        LayerDistiller(tiny_encoder("full"), weight=1.0)
    with pytest.raises(ValueError, match="weight"):
        LayerDistiller(tiny_encoder("hedgehog"), weight=0.0)


def test_train_with_distillation_records_it_and_lowers_the_loss(tmp_path):
    """lra-train attention=hedgehog attention.distill=W: the record says it was on with its weight,
    the history has one loss per layer, and the per-layer loss falls during the run; off by default."""
    from conftest import compose_train, tiny_train_overrides
    from lra.training.job import run

    over = tiny_train_overrides(tmp_path / "cache", "attention=hedgehog", "trainer.steps=24", "trainer.eval_every=6",
                                "trainer.checkpoint_every=24", "trainer.lr=1e-2")
    rec = run(compose_train(*over, "attention.distill=5.0", "attention.distill_queries=16"), tmp_path / "on")
    assert rec["status"] == "ok", rec["message"]
    assert rec["distill"] == {"on": True, "weight": 5.0, "queries": 16}
    assert "distill" not in rec["variant_config"] and "distill" not in rec["config"]["attention"]
    losses = [h["distill_loss"] for h in rec["case"]["history"]]
    assert len(losses) == 3 and all(len(layer) == 2 for layer in losses)
    assert all(last < first for first, last in zip(losses[0], rec["case"]["distill_loss_layers"]))
    assert rec["metrics"]["distill_loss"] > 0
    off = run(compose_train(*over), tmp_path / "off")
    assert off["distill"] == {"on": False, "weight": 0.0, "queries": 64}
    assert "distill_loss" not in off["case"]["history"][0] and "distill_loss" not in off["metrics"]


def test_train_distillation_config_errors(tmp_path):
    from conftest import compose_train, tiny_train_overrides
    from lra.schema import ConfigError
    from lra.training.job import run

    with pytest.raises(ConfigError, match="kernel variant"):
        run(compose_train(*tiny_train_overrides(tmp_path / "c", "attention=full", "attention.distill=1")), tmp_path / "a")
    with pytest.raises(ConfigError, match="attention.distill=-1"):
        run(compose_train(*tiny_train_overrides(tmp_path / "c", "attention=linear", "attention.distill=-1")),
            tmp_path / "b")


def test_bench_exactness_reports_fitted_error_and_weight_measures(tmp_path, monkeypatch):
    """lra-bench exactness: a learned map is fitted (error at init and after, fit losses), every
    variant gets entropy / monotonicity / KL; exact attention is monotone with softmax's entropy."""
    from lra import bench

    monkeypatch.setenv("LRA_GIT_COMMIT", "0123abc")
    cfg = compose_bench(
        "variants=[hedgehog,linear,full]", "device=cpu", "modes=[exactness]", "exactness.lengths=[64]",
        "exactness.heads=2", "exactness.head_dim=16", "exactness.patterns=[random]", "exactness.fit_steps=5",
        "exactness.weight_queries=16", "progress=false", "summary=false")
    records = {r["variant"]: r for r in bench.run(cfg, tmp_path / "job")}
    hh = records["hedgehog"]["metrics"]
    assert hh["fit_steps"] == 5 and hh["approx_error_init"] > 0 and hh["fit_loss_first"] > 0
    assert records["hedgehog"]["case"]["fit"] == {"steps": 5, "lr": 3e-3, "batch_size": 2, "queries": 16}
    lin = records["linear"]["metrics"]
    assert lin["fit_steps"] == 0 and lin["approx_error_init"] == lin["approx_error"] and "fit_loss_first" not in lin
    full = records["full"]["metrics"]
    assert full["monotonicity"] > 0.999 and abs(full["entropy"] - full["softmax_entropy"]) < 1e-6
    assert 0 < lin["monotonicity"] < 0.999 and lin["entropy"] > full["entropy"] and lin["weight_kl"] > 0


def test_train_distillation_under_compile_trains_eagerly_and_says_why(tmp_path):
    from conftest import compose_train, tiny_train_overrides
    from lra.training.job import run

    over = tiny_train_overrides(tmp_path / "cache", "attention=hedgehog", "attention.distill=1.0", "trainer.compile=true",
                                "trainer.steps=4", "trainer.checkpoint_every=4")
    rec = run(compose_train(*over), tmp_path / "job")
    assert rec["status"] == "ok", rec["message"]
    assert rec["case"]["compile"]["status"] == "fallback" and "attention.distill" in rec["case"]["compile"]["reason"]
    assert rec["metrics"]["distill_loss"] > 0
