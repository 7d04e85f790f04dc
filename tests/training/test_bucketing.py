"""Length bucketing (lra.bucketing, lra.data.DeviceBatches): reproducible and resumable plans, every
real token kept, fewer padded tokens, evaluation unchanged, every variant runs bucketed, and `auto`
buckets exactly the variants whose output does not depend on the padded length."""
import pytest
import torch

import attention_variants as av
from lra import bucketing
from lra.data import DeviceBatches
from lra.model import Encoder, EncoderConfig
from lra.training.job import run
from lra.training.step import evaluate
from conftest import IN_TREE, SMALL_KNOBS, compose_bench, compose_train, tiny_train_overrides


def padded_tokens(lengths, seq_len, pad=0, vocab=17, seed=0, dual=False):
    """Right-padded random tokens with the given real lengths: (n, L) or, dual, (n, 2, L) (second doc shorter)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.as_tensor(lengths)
    x = torch.randint(1, vocab, (len(lengths), seq_len), generator=g)
    x[torch.arange(seq_len)[None, :] >= lengths[:, None]] = pad
    if dual:
        y = x.clone()
        y[torch.arange(seq_len)[None, :] >= (lengths // 2)[:, None]] = pad
        x = torch.stack([x, y], dim=1)
    return x.to(torch.uint8)


def listops_like_lengths(n, seed=0, lo=500, hi=2000):
    return torch.randint(lo, hi + 1, (n,), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ lengths and plans
def test_example_lengths_are_one_past_the_last_real_token():
    x = torch.tensor([[3, 0, 4, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])   # a zero inside stays inside
    lengths, real = bucketing.example_lengths(x, pad_id=0, chunk=2)
    assert lengths.tolist() == [3, 5, 0] and real.tolist() == [2, 5, 0]
    dual = torch.stack([x, x.flip(0)], dim=1)                                 # (3, 2, 5)
    lengths, real = bucketing.example_lengths(dual, pad_id=0)
    assert lengths.tolist() == [3, 5, 3] and real.tolist() == [2, 10, 2]


def test_train_plan_is_reproducible_and_keeps_the_epochs_examples():
    lengths = listops_like_lengths(3000)
    kw = dict(lengths=lengths, multiple=128, window=8, seq_len=2000)
    a = bucketing.train_plan(3000, 32, seed=3, epoch=1, **kw)
    b = bucketing.train_plan(3000, 32, seed=3, epoch=1, **kw)
    assert torch.equal(a.index, b.index) and a.lengths == b.lengths
    assert not torch.equal(a.index, bucketing.train_plan(3000, 32, seed=4, epoch=1, **kw).index)
    assert not torch.equal(a.index, bucketing.train_plan(3000, 32, seed=3, epoch=2, **kw).index)
    plain = bucketing.train_plan(3000, 32, seed=3, epoch=1, seq_len=2000)
    assert a.index.shape == plain.index.shape == (93, 32)
    assert sorted(a.index.flatten().tolist()) == sorted(plain.index.flatten().tolist())  # the same examples
    longest = lengths[a.index].amax(dim=1)
    cut = torch.tensor(a.lengths)
    assert (cut >= longest).all() and (cut - longest < 128).all()       # nothing real is cut, < 1 bucket wasted
    assert set(a.lengths) <= {*range(512, 2000, 128), 2000}            # few shapes: multiples of 128, or seq_len
    assert len(set(a.lengths)) > 5 and a.lengths != sorted(a.lengths)  # several lengths, in shuffled order


def test_one_bucket_gives_exactly_the_unbucketed_batches():
    lengths = torch.randint(10, 33, (200,))
    plain = bucketing.train_plan(200, 8, seed=0, epoch=0, seq_len=32)
    one = bucketing.train_plan(200, 8, seed=0, epoch=0, lengths=lengths, multiple=128, seq_len=32)
    assert torch.equal(plain.index, one.index) and one.lengths == [32] * 25


def test_one_batch_length_gives_the_unbucketed_batches_though_examples_differ():
    """Every batch pads to the task length (each holds a long example) while a few examples alone
    would bucket shorter: still the unbucketed (shuffled) batches, not length-sorted ones."""
    lengths = torch.full((640,), 200)
    lengths[:5] = 10
    plain = bucketing.train_plan(640, 32, seed=0, epoch=0, seq_len=256)
    one = bucketing.train_plan(640, 32, seed=0, epoch=0, lengths=lengths, multiple=128, seq_len=256)
    assert torch.equal(plain.index, one.index) and one.lengths == [256] * 20


def test_bucketing_cuts_the_padded_tokens_of_listops_lengths():
    lengths = listops_like_lengths(20000)
    stats = bucketing.epoch_padding(lengths, lengths, batch_size=32, seq_len=2000)
    assert 0.35 < stats["padded_fraction"] < 0.40          # uniform 500..2000 in 2000: 37.5% padding
    assert stats["padded_fraction_bucketed"] < 0.06       # about half a bucket (64 of ~1,250 tokens) per example
    assert stats["shapes_bucketed"] <= 13


def test_eval_plan_reads_each_example_once_and_the_same_subset():
    lengths = torch.randint(1, 65, (50,))
    plan = bucketing.eval_plan(50, 8, lengths=lengths, multiple=16, seq_len=64, limit=20)
    seen = torch.cat(plan.index)
    assert sorted(seen.tolist()) == list(range(20))        # the first 20, as an unbucketed capped pass reads them
    assert all(cut >= int(lengths[i].max()) for i, cut in zip(plan.index, plan.lengths))


# ------------------------------------------------------------------ DeviceBatches
@pytest.mark.parametrize("dual", [False, True])
def test_bucketed_batches_keep_every_real_token(dual):
    lengths = torch.randint(1, 97, (120,))
    x = padded_tokens(lengths, 96, dual=dual)
    y = torch.randint(0, 3, (120,))
    db = DeviceBatches(x, y, 16, "cpu", pad_id=0, shuffle=True, seed=1, bucket_multiple=16, bucket_window=2)
    seen, cuts = [], set()
    for step in range(2 * db.steps_per_epoch):
        tokens, mask, labels = db.batch(step)
        epoch, i = divmod(step, db.steps_per_epoch)
        idx = db.plan(epoch).index[i]
        n = tokens.shape[-1]
        cuts.add(n)
        assert n % 16 == 0 and torch.equal(tokens, x[idx][..., :n].long()) and torch.equal(labels, y[idx])
        assert (x[idx][..., n:] == 0).all() and torch.equal(mask, tokens != 0)
        seen.append(idx)
    assert len(cuts) > 2
    positions, real, shapes = db.token_counts(2 * db.steps_per_epoch)
    assert shapes == cuts and real == int(db.real[torch.cat(seen)].sum())
    assert positions == sum(16 * n * (2 if dual else 1) for n in [db.plan(e).lengths[i] for e in (0, 1)
                                                                  for i in range(db.steps_per_epoch)])


def test_bucketed_evaluation_gives_the_unbucketed_accuracy_and_loss():
    torch.manual_seed(0)
    lengths = torch.randint(4, 65, (90,))
    x, y = padded_tokens(lengths, 64), torch.randint(0, 3, (90,))
    model = Encoder(EncoderConfig(vocab_size=17, num_classes=3, max_length=64, d_model=16, heads=2, mlp_dim=32,
                                  layers=2, attention="full", mask_zero_tokens=True, pooling="mean",
                                  pool_masked="zero"))
    plain = DeviceBatches(x, y, 16, "cpu", pad_id=0, shuffle=False)
    bucketed = DeviceBatches(x, y, 16, "cpu", pad_id=0, shuffle=False, bucket_multiple=8)
    for cap in (None, 3):
        acc_a, loss_a = evaluate(model, plain, None, cap)
        acc_b, loss_b = evaluate(model, bucketed, None, cap)
        assert acc_a == acc_b and loss_b == pytest.approx(loss_a, rel=1e-5, abs=1e-6)


# ------------------------------------------------------------------ which variants bucket
def _real_outputs(module, q, k, v, real: int, length: int):
    mask = (torch.arange(length)[None, :] < real).expand(q.shape[0], length)
    with torch.no_grad():
        return module(q[:, :, :length], k[:, :, :length], v[:, :, :length], key_padding_mask=mask)[:, :, :real]


def test_padding_invariant_list_matches_what_every_variant_computes():
    """PADDING_INVARIANT holds exactly the in-tree variants whose real queries' outputs are the same
    at two padded lengths (a new variant must be classified, and the list must not claim too much)."""
    assert set(IN_TREE) == bucketing.PADDING_INVARIANT | set(bucketing.LENGTH_DEPENDENT)
    knobs = {**SMALL_KNOBS, "bigbird": {"block_size": 4}, "nystrom": {"landmarks": 8}}
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 128, 16, dtype=torch.float64) for _ in range(3))
    for name in IN_TREE:
        module = av.build(name, heads=2, head_dim=16, max_length=128, **knobs.get(name, {})).double().eval()
        short, long = _real_outputs(module, q, k, v, 20, 48), _real_outputs(module, q, k, v, 20, 128)
        same = torch.allclose(short, long, rtol=1e-9, atol=1e-9)
        assert same == (name in bucketing.PADDING_INVARIANT), f"{name}: same output at both lengths = {same}"


def test_auto_buckets_only_where_the_padded_length_changes_nothing():
    full = bucketing.choose("auto", pad_id=0, variant="full")
    assert full[0] and "auto" in full[1]
    for name in ("nystrom", "reformer", "bigbird"):
        on, why = bucketing.choose("auto", pad_id=0, variant=name)
        assert not on and bucketing.LENGTH_DEPENDENT[name] in why
    assert not bucketing.choose("auto", pad_id=0, variant="full", pooling="mean", pool_masked="include")[0]
    assert not bucketing.choose("auto", pad_id=0, variant="random_feature", cls_last=True)[0]
    assert bucketing.choose("auto", pad_id=0, variant="full", pooling="mean", pool_masked="zero")[0]
    assert not bucketing.choose(True, pad_id=None, variant="full")[0]              # pixels: nothing to bucket
    on, why = bucketing.choose(True, pad_id=0, variant="nystrom")
    assert on and "changes what the model computes" in why
    assert not bucketing.choose(False, pad_id=0, variant="full")[0]


@pytest.mark.parametrize("name", IN_TREE)
def test_every_variant_trains_on_bucketed_batches(name):
    """Forward and backward at every bucket length (multiples of 8, not of any block size)."""
    torch.manual_seed(0)
    x, y = padded_tokens(torch.randint(3, 61, (48,)), 60), torch.randint(0, 3, (48,))
    model = Encoder(EncoderConfig(vocab_size=17, num_classes=3, max_length=60, d_model=32, heads=2, mlp_dim=32,
                                  layers=1, attention=name, attention_cfg=SMALL_KNOBS.get(name, {}),
                                  mask_zero_tokens=True))
    db = DeviceBatches(x, y, 8, "cpu", pad_id=0, shuffle=True, bucket_multiple=8, bucket_window=1)
    cuts = set()
    for step in range(db.steps_per_epoch):
        tokens, mask, labels = db.batch(step)
        cuts.add(tokens.shape[-1])
        loss = torch.nn.functional.cross_entropy(model(tokens, mask), labels)
        loss.backward()
        assert torch.isfinite(loss)
    assert len(cuts) >= 3


# ------------------------------------------------------------------ lra-train
def _bucketed_overrides(cache, *extra):
    """Tiny ListOps at length 64 (real lengths 16..64) in buckets of 8: several lengths per epoch."""
    return [o for o in tiny_train_overrides(cache, *extra) if "seq_len" not in o] + [
        "trainer.task_overrides.seq_len=64", "trainer.bucket_multiple=8", "trainer.bucket_window=2"]


def test_bucketed_run_killed_mid_epoch_resumes_bit_identically(tmp_path):
    """SIGKILL after a checkpoint in the middle of an epoch (8 steps per epoch, checkpoints every 10),
    then resume: the same record as an uninterrupted run (tests/training/test_faults.py's machinery)."""
    from test_faults import _train_cli, _wait_for_checkpoint

    overrides = _bucketed_overrides(tmp_path / "cache", "attention=full", "trainer.steps=40",
                                    "trainer.checkpoint_every=10", "trainer.eval_every=1000", "trainer.log_every=5")
    whole = run(compose_train(*overrides), tmp_path / "a")
    assert whole["status"] == "ok", whole["message"]
    b = whole["case"]["bucketing"]
    assert b["on"] and whole["config"]["trainer"]["bucketing"] is True and len(b["lengths"]) > 1
    assert b["padded_fraction_unbucketed"] > whole["metrics"]["padded_fraction"]
    assert whole["metrics"]["real_tokens_per_s"] < whole["metrics"]["tokens_per_s"]
    p = _train_cli(tmp_path / "b", overrides)
    _wait_for_checkpoint(tmp_path / "b", p, 10)
    p.kill()
    p.wait(timeout=60)
    step = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["step"]
    assert 0 < step < 40 and step % 8, step                              # killed mid-epoch, before the end
    resumed = run(compose_train(*overrides), tmp_path / "b")
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    for key in ("accuracy", "loss", "val_accuracy", "padded_fraction"):
        assert resumed["metrics"][key] == whole["metrics"][key], key
    assert resumed["case"]["bucketing"] == whole["case"]["bucketing"]


def test_auto_leaves_length_dependent_variants_unbucketed(tmp_path):
    rec = run(compose_train(*_bucketed_overrides(tmp_path / "cache", "attention=nystrom", "attention.landmarks=8",
                                                 "trainer.steps=2")), tmp_path / "job")
    assert rec["status"] == "ok" and rec["config"]["trainer"]["bucketing"] is False
    assert "landmarks" in rec["case"]["bucketing"]["reason"] and rec["case"]["bucketing"]["lengths"] == [64]


def test_train_overhead_times_bucketed_and_unbucketed_steps_interleaved(tmp_path):
    from lra import bench

    cfg = compose_bench(
        "variants=[full]", "modes=[train_overhead]", "device=cpu", "train_overhead.lengths=[64]",
        "train_overhead.layers=1", "train_overhead.d_model=16", "train_overhead.heads=2",
        "train_overhead.mlp_dim=32", "train_overhead.batch_size=4", "train_overhead.steps_per_call=4",
        "train_overhead.warmup=1", "train_overhead.repeats=2", "train_overhead.bucketing=true",
        "train_overhead.bucket_multiple=8", "min_time_s=0", "progress=false")
    rec = bench.run(cfg, tmp_path / "job")[0]
    assert rec["status"] == "ok", rec["message"]
    m = rec["metrics"]
    assert m["ms_train_step_bucketed"] > 0 and m["padded_fraction_bucketed"] < m["padded_fraction"]
    assert m["bucketing_speedup"] == pytest.approx(m["real_tokens_per_s_bucketed"] / m["real_tokens_per_s"], rel=1e-3)
    assert rec["case"]["bucketing"] and len(rec["case"]["bucket_lengths"]) > 1
