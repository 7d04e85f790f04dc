"""Recipes reproduce their reference code: composed values, initialisation, masking, pooling,
attention dropout, optimizer and schedules (docs/recipes.md; conf/recipe/, conf/task/)."""
import math

import pytest
import torch
import torch.nn.functional as F

import attention_variants as av
from attention_variants.full import FullAttention
from lra.model import Encoder, EncoderConfig
from lra.schema import ConfigError
from lra.training.config import resolve
from lra.training.optim import lr_factor, make_optimizer
from conftest import compose_train

# ------------------------------------------------------------------ the table
# Settings every task shares under a recipe (conf/recipe/<name>.yaml).
SHARED = {
    "lra": dict(init="reference", qkv_bias=False, token_init_std=1.0, norm_eps=1e-6, gelu="tanh",
                head_activation="relu", dual_head="concat", masked_queries="uniform", cls_mask="first_token",
                pool_masked="include", mask_zero_tokens=True,
                betas=[0.9, 0.98], eps=1e-9, weight_decay_params="all"),
    "small": dict(init="torch", qkv_bias=True, token_init_std=0.02, norm_eps=1e-5, gelu="erf",
                  head_activation="relu", dual_head="nli", masked_queries="variant", cls_mask="real",
                  pool_masked="zero", mask_zero_tokens=True,
                  betas=[0.9, 0.999], eps=1e-6, weight_decay_params="all", schedule="onecycle"),
}
SMALL_MODEL = dict(d_model=64, qkv_dim=64, heads=2, mlp_dim=128, layers=2, tied_weights=False, dropout=0.1,
                   attention_dropout=0.1, pooling="mean", pos_emb="learned", grad_clip=0, weight_decay=0.0, lr=1e-4)
# Per task: (seq_len, model and trainer values). LRA: the paper-era code (0b1a343) as its train.py
# scripts pass the configs on; small: the Nystromformer code's lra_config.py.
TABLE = {
    ("listops", "lra"): dict(seq_len=2000, d_model=512, qkv_dim=512, heads=8, mlp_dim=2048, layers=6,
                             tied_weights=False, dropout=0.1, attention_dropout=0.1, pooling="cls",
                             pos_emb="sinusoidal", batch_size=32, steps=5000, lr=0.05, schedule="rsqrt", warmup=1000,
                             weight_decay=0.1, grad_clip=0),
    ("text", "lra"): dict(seq_len=1000, d_model=256, qkv_dim=256, heads=4, mlp_dim=1024, layers=4, tied_weights=False,
                          dropout=0.1, attention_dropout=0.1, pooling="cls", pos_emb="sinusoidal", batch_size=32,
                          steps=20000, lr=0.05, schedule="rsqrt", warmup=8000, weight_decay=0.1, grad_clip=0),
    ("retrieval", "lra"): dict(seq_len=4000, d_model=128, qkv_dim=128, heads=4, mlp_dim=512, layers=4,
                               dropout=0.1, attention_dropout=0.1, pooling="cls", pos_emb="sinusoidal", batch_size=32,
                               steps=5000, lr=0.05, schedule="rsqrt", warmup=8000, weight_decay=0.1, grad_clip=0),
    ("image", "lra"): dict(seq_len=1024, d_model=32, qkv_dim=32, heads=1, mlp_dim=64, layers=1, dropout=0.3,
                           attention_dropout=0.2, pooling="cls", pos_emb="learned", batch_size=256, steps=35000,
                           lr=5e-4, schedule="cosine", warmup=175, weight_decay=0.0, grad_clip=0),
    ("pathfinder", "lra"): dict(seq_len=1024, d_model=128, qkv_dim=64, heads=4, mlp_dim=128, layers=1, dropout=0.2,
                                attention_dropout=0.1, pooling="mean", pos_emb="sinusoidal", batch_size=512,
                                steps=62400, lr=1e-3, schedule="cosine", warmup=312, weight_decay=0.0, grad_clip=0),
    ("pathx", "lra"): dict(seq_len=16384, d_model=32, qkv_dim=16, heads=2, mlp_dim=32, layers=1, dropout=0.1,
                           attention_dropout=0.1, pooling="mean", pos_emb="learned", batch_size=64, steps=500000,
                           lr=1e-3, schedule="cosine", warmup=2500, weight_decay=0.0, grad_clip=1.0),
    ("listops", "small"): dict(seq_len=2000, batch_size=32, steps=5000, warmup=1000, **SMALL_MODEL),
    ("text", "small"): dict(seq_len=1000, batch_size=32, steps=20000, warmup=8000, **SMALL_MODEL),
    ("retrieval", "small"): dict(seq_len=4000, batch_size=32, steps=30000, warmup=800, **SMALL_MODEL),
    ("image", "small"): dict(seq_len=1024, batch_size=256, steps=35000, warmup=175, **SMALL_MODEL),
    ("pathfinder", "small"): dict(seq_len=1024, batch_size=256, steps=62400, warmup=312, **SMALL_MODEL),
}


@pytest.mark.parametrize("task,recipe", sorted(TABLE))
def test_each_recipe_composes_to_the_documented_values(task, recipe):
    cfg = compose_train(f"task={task}", f"recipe={recipe}")
    task_cfg, model, trainer, _ = resolve(cfg)
    got = {**model, **trainer, "seq_len": task_cfg.seq_len}
    want = {**SHARED[recipe], **TABLE[(task, recipe)]}
    assert {k: got.get(k) for k in want} == want
    assert cfg.recipe == recipe   # the string the report groups by
    # every model setting builds (no unknown keys)
    EncoderConfig(vocab_size=8, num_classes=2, max_length=8, **model)


def test_command_line_wins_and_missing_recipes_are_named():
    _, model, trainer, _ = resolve(compose_train("task=listops", "recipe=small", "model.d_model=32",
                                                 "model.init=reference", "trainer.grad_clip=1.0"))
    assert (model["d_model"], model["init"], trainer["grad_clip"]) == (32, "reference", 1.0)
    _, model, _, _ = resolve(compose_train("task=image", "task.mask_zero_tokens=false"))
    assert model["mask_zero_tokens"] is False
    with pytest.raises(ConfigError, match=r"recipe='small' is not defined for task 'pathx'; choices: \['lra'\]"):
        resolve(compose_train("task=pathx", "recipe=small"))
    with pytest.raises(Exception, match=r"recipe/bogus"):
        compose_train("recipe=bogus")
    with pytest.raises(ConfigError, match=r"weight_decay_params='some'.*\('all', 'matrices'\)"):
        resolve(compose_train("trainer.weight_decay_params=some"))


def test_quick_runs_keep_the_recipe_but_shrink_the_model():
    _, model, trainer, _ = resolve(compose_train("trainer=quick"))
    assert (model["d_model"], model["attention_dropout"], model["init"]) == (64, 0.0, "reference")
    assert trainer["grad_clip"] == 0 and trainer["eps"] == 1e-9


# ------------------------------------------------------------------ initialisation
def _encoder(**kw):
    base = dict(vocab_size=300, num_classes=10, max_length=16, d_model=512, qkv_dim=256, heads=4, mlp_dim=1024,
                layers=1, attention="full")
    torch.manual_seed(0)
    return Encoder(EncoderConfig(**{**base, **kw}))


def test_reference_init_matches_the_lra_formulas():
    enc = _encoder(init="reference", qkv_bias=False, pooling="cls", pos_emb="learned", head_activation="relu")
    d, q, m = 512, 256, 1024
    attn, mlp = enc.blocks[0].attn, enc.blocks[0].mlp
    xavier = lambda fan_in, fan_out: math.sqrt(2.0 / (fan_in + fan_out))   # std of xavier-uniform
    for part in attn.qkv.weight.split(q):   # q, k, v: each its own (d_model, qkv_dim) kernel
        assert part.std().item() == pytest.approx(xavier(d, q), rel=0.03)
        assert part.abs().max().item() <= math.sqrt(6.0 / (d + q))
    assert attn.out.weight.std().item() == pytest.approx(xavier(q, d), rel=0.03)
    assert attn.qkv.bias is None and attn.out.bias is None
    assert mlp[0].weight.std().item() == pytest.approx(xavier(d, m), rel=0.03)
    assert mlp[3].weight.std().item() == pytest.approx(xavier(m, d), rel=0.03)
    for bias in (mlp[0].bias, mlp[3].bias):   # N(0, 1e-6)
        assert 0 < bias.std().item() < 2e-6 and bias.abs().max().item() < 1e-5
    dense, logits = enc.head[0], enc.head[2]
    for layer, fan_in in ((dense, d), (logits, m)):   # lecun-normal: truncated at 2 std, std sqrt(1/fan_in)
        std = math.sqrt(1.0 / fan_in)
        assert layer.weight.std().item() == pytest.approx(std, rel=0.05)
        assert layer.weight.abs().max().item() <= 2 * std / 0.87962566103423978 + 1e-7
        assert torch.all(layer.bias == 0)
    assert isinstance(enc.head[1], torch.nn.ReLU)
    assert enc.embed.weight.std().item() == pytest.approx(1.0, rel=0.03)
    assert enc.pos.std().item() == pytest.approx(0.02, rel=0.1)
    assert torch.all(enc.cls == 0)
    assert enc.norm.eps == 1e-5   # the LayerNorm eps is its own knob (norm_eps)


def test_torch_init_is_smaller_than_the_reference_as_the_issue_measured():
    # PyTorch's nn.Linear default: uniform(+-1/sqrt(fan_in)), std 1/sqrt(3 fan_in): 0.58x the reference's
    # xavier std for the 512x512 q/k/v/out kernels, 0.46x for a 2048 -> 512 MLP output layer
    ref = _encoder(init="reference", qkv_dim=None, mlp_dim=2048)
    tch = _encoder(init="torch", qkv_dim=None, mlp_dim=2048)
    ratio = lambda a, b: a.std().item() / b.std().item()
    assert ratio(tch.blocks[0].attn.qkv.weight, ref.blocks[0].attn.qkv.weight) == pytest.approx(0.577, abs=0.02)
    assert ratio(tch.blocks[0].mlp[3].weight, ref.blocks[0].mlp[3].weight) == pytest.approx(0.456, abs=0.02)


def test_small_recipe_embeddings_and_biases():
    enc = _encoder(init="torch", qkv_bias=True, token_init_std=0.02, pooling="mean", d_model=64, qkv_dim=None,
                   heads=2, mlp_dim=128)
    assert enc.embed.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert enc.pos.std().item() == pytest.approx(0.02, rel=0.1)
    assert enc.blocks[0].attn.qkv.bias is not None and enc.blocks[0].attn.out.bias is not None
    bound = 1 / math.sqrt(64)   # nn.Linear default
    assert enc.blocks[0].attn.qkv.weight.abs().max().item() <= bound


# ------------------------------------------------------------------ zero-pixel masking
def _flax_attention_f32(x, qkv, out, heads, q_mask, k_mask):
    """The LRA reference's attention (flax nn.SelfAttention with padding_mask): bias -1e10 where the
    query or the key is masked, added to the scaled logits in fp32, softmax over keys."""
    b, n, _ = x.shape
    width = qkv.weight.shape[0] // 3
    q, k, v = F.linear(x, qkv.weight, qkv.bias).view(b, n, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    logits = (q @ k.transpose(-1, -2)) / math.sqrt(width // heads)
    allowed = q_mask[:, None, :, None] & k_mask[:, None, None, :]
    bias = torch.where(allowed, torch.zeros((), dtype=torch.float32), torch.full((), -1e10, dtype=torch.float32))
    y = torch.softmax(logits + bias, dim=-1) @ v
    return F.linear(y.transpose(1, 2).reshape(b, n, width), out.weight, out.bias)


def _pixels():
    torch.manual_seed(1)
    tokens = torch.randint(1, 256, (3, 12))
    tokens[:, 3:9] = 0          # black pixels
    tokens[1, 0] = 0            # a black first pixel: the reference then masks its CLS token too
    tokens[2, :] = 0            # an all-black image
    return tokens


@pytest.mark.parametrize("variant", ["full", "flash"])
def test_zero_pixels_change_attention_exactly_as_the_lra_reference(variant):
    tokens = _pixels()
    enc = Encoder(EncoderConfig(vocab_size=256, num_classes=10, max_length=12, d_model=16, qkv_dim=8, heads=2,
                                mlp_dim=32, layers=1, dropout=0.0, pooling="cls", attention=variant,
                                mask_zero_tokens=True, masked_queries="uniform", cls_mask="first_token",
                                init="reference", qkv_bias=False)).eval()
    seen = {}
    enc.blocks[0].attn.register_forward_hook(lambda mod, args, out: seen.update(x=args[0], y=out))
    enc(tokens)
    real = tokens > 0
    mask = torch.cat([real[:, :1], real], dim=1)   # CLS inherits token 0's mask
    attn = enc.blocks[0].attn
    want = _flax_attention_f32(seen["x"], attn.qkv, attn.out, 2, mask, mask)
    # sequences with at least one lit pixel: every query, real or masked, as the reference computes it
    torch.testing.assert_close(seen["y"][:2], want[:2], atol=2e-6, rtol=1e-5)
    # the all-black image: every query is masked, so every row is uniform (the reference's -1e10 on
    # all entries); only its keys-only fallback differs from a NaN
    torch.testing.assert_close(seen["y"][2], want[2], atol=2e-6, rtol=1e-5)
    # without the zero-token mask (this suite's earlier pipeline) the same pixels attend everywhere
    enc.cfg.mask_zero_tokens = False
    enc(tokens)
    assert not torch.allclose(seen["y"][:2], want[:2], atol=1e-3)


@av.register("needs_a_real_key")
class NeedsARealKey(FullAttention):
    """Test-only variant that fails when a sequence has no real key at all."""

    def forward(self, q, k, v, key_padding_mask=None):
        assert key_padding_mask is None or bool(key_padding_mask.any(-1).all()), "a row without real keys"
        return super().forward(q, k, v, key_padding_mask)


def test_an_all_black_image_is_never_handed_to_a_variant_without_real_keys():
    enc = Encoder(EncoderConfig(vocab_size=256, num_classes=10, max_length=12, d_model=16, heads=2, mlp_dim=32,
                                layers=1, pooling="mean", attention="needs_a_real_key", mask_zero_tokens=True))
    enc(_pixels()).sum().backward()   # row 2 is all black


@pytest.mark.parametrize("variant", ["linear", "performer", "nystrom"])
def test_masked_queries_get_the_same_uniform_output_in_every_variant(variant):
    from conftest import SMALL_KNOBS

    tokens = _pixels()[:2]
    enc = Encoder(EncoderConfig(vocab_size=256, num_classes=10, max_length=12, d_model=16, heads=2, mlp_dim=32,
                                layers=1, dropout=0.0, pooling="mean", attention=variant,
                                attention_cfg=SMALL_KNOBS[variant], mask_zero_tokens=True,
                                masked_queries="uniform")).eval()
    seen = {}
    enc.blocks[0].attn.register_forward_hook(lambda mod, args, out: seen.update(x=args[0], y=out))
    enc(tokens)
    attn = enc.blocks[0].attn
    v = F.linear(seen["x"], attn.qkv.weight, attn.qkv.bias)[..., 2 * 16:]
    uniform = F.linear(v.mean(dim=1, keepdim=True), attn.out.weight, attn.out.bias)   # mean of all values
    masked = tokens == 0
    torch.testing.assert_close(seen["y"][masked], uniform.expand_as(seen["y"])[masked], atol=1e-5, rtol=1e-5)


def test_mean_pooling_over_masked_positions():
    tokens = torch.tensor([[5, 0, 7, 0], [3, 4, 0, 0]])
    common = dict(vocab_size=10, num_classes=2, max_length=4, d_model=8, heads=2, mlp_dim=16, layers=1, dropout=0.0,
                  pooling="mean", attention="full", mask_zero_tokens=True)
    pooled = {}
    for how in ("exclude", "include", "zero"):
        torch.manual_seed(0)
        enc = Encoder(EncoderConfig(pool_masked=how, **common)).eval()
        hidden = {}
        enc.norm.register_forward_hook(lambda mod, args, out: hidden.update(h=out))
        enc.head.register_forward_hook(lambda mod, args, out: pooled.update({how: args[0]}))
        enc(tokens)
    h, m = hidden["h"], (tokens > 0).float()[..., None]
    torch.testing.assert_close(pooled["include"], h.mean(1))                       # LRA: jnp.mean over all
    torch.testing.assert_close(pooled["zero"], (h * m).sum(1) / 4)                 # Nystromformer
    torch.testing.assert_close(pooled["exclude"], (h * m).sum(1) / m.sum(1))       # real positions only


# ------------------------------------------------------------------ attention dropout
@pytest.mark.parametrize("variant", ["full", "flash"])
def test_attention_dropout_drops_weights_and_never_reveals_padded_keys(variant):
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig(vocab_size=10, num_classes=2, max_length=8, d_model=8, heads=2, mlp_dim=16,
                                layers=1, dropout=0.0, attention=variant, attention_dropout=0.5))
    attn = enc.blocks[0].attn
    assert enc.attention_dropout_applies
    b, h, n, dh = 2, 2, 8, 4
    q, k = torch.randn(b, h, n, dh), torch.randn(b, h, n, dh)
    v = torch.randn(b, h, n, dh)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[:, 5:] = False
    v[:, :, 5:] = 1e6                                   # any weight on a padded key would show
    attn.train()
    outs = [attn._dropout_attention(q, k, v, mask) for _ in range(2)]
    assert not torch.equal(outs[0], outs[1])            # random: weights are dropped
    assert all(o.abs().max() < 1e3 for o in outs)       # padded keys keep zero weight
    # the expectation over dropout masks is the exact attention (dropout rescales by 1 / (1 - p))
    mean = torch.stack([attn._dropout_attention(q, k, v, mask) for _ in range(2000)]).mean(0)
    exact = attn.attention(q, k, v, key_padding_mask=mask)
    torch.testing.assert_close(mean, exact, atol=0.08, rtol=0.05)
    attn.eval()   # evaluation: the variant itself, no dropout
    x = torch.randn(b, n, 8)
    torch.testing.assert_close(attn(x, mask), attn(x, mask))


def test_variants_without_an_attention_matrix_say_so():
    enc = Encoder(EncoderConfig(vocab_size=10, num_classes=2, max_length=8, d_model=8, heads=2, mlp_dim=16,
                                layers=1, attention="linear", attention_dropout=0.1))
    assert not enc.attention_dropout_applies
    assert Encoder(EncoderConfig(vocab_size=10, num_classes=2, max_length=8, d_model=8, heads=2, mlp_dim=16,
                                 layers=1, attention="linear")).attention_dropout_applies   # p = 0: nothing missing


# ------------------------------------------------------------------ heads
def test_retrieval_heads():
    kw = dict(vocab_size=10, num_classes=2, max_length=6, d_model=8, heads=2, mlp_dim=16, layers=1, dual=True,
              attention="full", head_activation="relu")
    concat = Encoder(EncoderConfig(dual_head="concat", **kw))   # LRA: [u, v] -> 16 -> 8 -> 2, ReLU
    assert [l.weight.shape for l in concat.head if isinstance(l, torch.nn.Linear)] == \
        [(16, 16), (8, 16), (2, 8)]
    assert sum(isinstance(l, torch.nn.ReLU) for l in concat.head) == 2
    nli = Encoder(EncoderConfig(dual_head="nli", **kw))         # [u, v, u*v, u-v] -> 16 -> 2
    assert [l.weight.shape for l in nli.head if isinstance(l, torch.nn.Linear)] == [(16, 32), (2, 16)]
    tokens = torch.randint(1, 10, (3, 2, 6))
    assert concat(tokens).shape == nli(tokens).shape == (3, 2)


def test_qkv_dim_sets_the_head_width():
    enc = Encoder(EncoderConfig(vocab_size=10, num_classes=2, max_length=8, d_model=128, qkv_dim=64, heads=4,
                                mlp_dim=128, layers=1, attention="full"))
    assert enc.blocks[0].attn.qkv.weight.shape == (192, 128) and enc.blocks[0].attn.out.weight.shape == (128, 64)
    assert enc.blocks[0].attn.attention.config.head_dim == 16
    assert enc(torch.randint(1, 10, (2, 8))).shape == (2, 2)
    with pytest.raises(ValueError, match="qkv_dim=30 is not divisible by model.heads=4"):
        EncoderConfig(vocab_size=10, num_classes=2, max_length=8, d_model=128, qkv_dim=30, heads=4)


# ------------------------------------------------------------------ optimizer and schedules
def _lrs(opt, sched, steps):
    out = []
    for _ in range(steps):
        out.append((opt.param_groups[0]["lr"], opt.param_groups[0]["betas"][0]))
        opt.step()
        sched.step()
    return out


def test_lra_schedules_are_the_reference_factors_at_step_zero_based():
    f = lr_factor("rsqrt", 1000, 5000)
    assert f(0) == 0.0                                            # flax: the first update has lr 0
    assert f(500) == pytest.approx(0.5 / math.sqrt(1000))
    assert f(1000) == pytest.approx(1 / math.sqrt(1000)) and f(4000) == pytest.approx(1 / math.sqrt(4000))
    c = lr_factor("cosine", 175, 35000)                            # steps_per_cycle = num_train_steps
    assert c(0) == 0.0 and c(175) == pytest.approx(1.0)
    s = 20000
    assert c(s) == pytest.approx(0.5 * (1 + math.cos(math.pi * (s - 175) / 35000)))


def test_optimizer_knobs():
    enc = _encoder(d_model=16, qkv_dim=None, heads=2, mlp_dim=32, pos_emb="learned")
    tr = dict(lr=1e-3, schedule="rsqrt", warmup=10, steps=100, weight_decay=0.1)
    opt, _ = make_optimizer(enc, {**tr, "weight_decay_params": "all", "eps": 1e-9, "betas": [0.9, 0.98]})
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 0.1
    assert opt.param_groups[0]["eps"] == 1e-9 and opt.param_groups[0]["betas"] == (0.9, 0.98)
    assert len(opt.param_groups[0]["params"]) == len(list(enc.parameters()))
    opt, _ = make_optimizer(enc, {**tr, "weight_decay_params": "matrices"})
    decayed = {id(p) for p in opt.param_groups[0]["params"]}
    assert id(enc.pos) not in decayed and id(enc.norm.weight) not in decayed and id(enc.embed.weight) in decayed
    assert opt.param_groups[1]["weight_decay"] == 0.0 and opt.param_groups[0]["eps"] == 1e-8


def test_onecycle_is_the_nystromformer_schedule():
    enc = _encoder(d_model=16, qkv_dim=None, heads=2, mlp_dim=32)
    opt, sched = make_optimizer(enc, dict(lr=1e-4, schedule="onecycle", warmup=10, steps=100, weight_decay=0.0,
                                          betas=[0.9, 0.999], eps=1e-6))
    trace = _lrs(opt, sched, 100)
    assert trace[0] == (pytest.approx(1e-4 / 25), pytest.approx(0.95))     # OneCycleLR: max_lr / div_factor
    assert trace[9] == (pytest.approx(1e-4), pytest.approx(0.85))          # peak lr at the end of warm-up
    assert trace[99][0] == pytest.approx(1e-4 / 25 / 1e4, rel=1e-3)         # final_div_factor
    assert trace[99][1] == pytest.approx(0.95)
    with pytest.raises(ConfigError, match="onecycle needs trainer.warmup >= 2"):
        resolve(compose_train("recipe=small", "trainer.warmup=1"))



def test_onecycle_warmup_longer_than_the_run_peaks_before_the_end(capsys):
    """recipe=small's ListOps warm-up (1,000) in a shorter run (a quick or shared-budget SPT
    fine-tuning): torch's OneCycleLR would divide by a zero-length anneal phase at the last step."""
    enc = _encoder(d_model=16, qkv_dim=None, heads=2, mlp_dim=32)
    opt, sched = make_optimizer(enc, dict(lr=1e-4, schedule="onecycle", warmup=1000, steps=20, weight_decay=0.0,
                                          betas=[0.9, 0.999], eps=1e-6))
    trace = _lrs(opt, sched, 20)                                            # every step, no ZeroDivisionError
    assert max(lr for lr, _ in trace) == pytest.approx(1e-4) and trace[18][0] == pytest.approx(1e-4)
    assert trace[19][0] == pytest.approx(1e-4 / 25 / 1e4, rel=1e-3)
    assert "peaks at step 19" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="onecycle needs trainer.steps >= 3"):
        resolve(compose_train("recipe=small", "trainer.steps=2"))

# ------------------------------------------------------------------ CUDA paths (device sessions)
@pytest.mark.gpu
def test_attention_dropout_on_cuda_in_bf16_with_padding():
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig(vocab_size=20, num_classes=3, max_length=64, d_model=64, heads=4, mlp_dim=64,
                                layers=1, attention="flash", attention_dropout=0.1, mask_zero_tokens=True,
                                masked_queries="uniform", init="reference")).cuda().train()
    tokens = torch.randint(1, 20, (4, 64), device="cuda")
    tokens[:, 40:] = 0
    with torch.autocast("cuda", dtype=torch.bfloat16):
        a, b = enc(tokens), enc(tokens)
    assert torch.isfinite(a).all() and not torch.equal(a, b)   # a fused kernel with dropout ran
    a.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in enc.parameters() if p.grad is not None)


@pytest.mark.gpu
def test_onecycle_with_fused_adamw_on_cuda():
    enc = _encoder(d_model=16, qkv_dim=None, heads=2, mlp_dim=32).cuda()
    opt, sched = make_optimizer(enc, dict(lr=1e-4, schedule="onecycle", warmup=10, steps=20, weight_decay=0.0,
                                          betas=[0.9, 0.999], eps=1e-6))
    for p in enc.parameters():
        p.grad = torch.zeros_like(p)
    trace = _lrs(opt, sched, 20)
    assert trace[9] == (pytest.approx(1e-4), pytest.approx(0.85))
