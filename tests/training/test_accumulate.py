"""Gradient accumulation (trainer.accumulate): k micro-batches make the update of one k-times batch, in
float64, also with micro-batches of unequal size and padding; the loop draws micro-batches in order,
records the effective batch, resumes bit-identically, and runs with bucketing, compile, distillation and
self-pretraining."""
import copy

import pytest
import torch

from lra.data import DeviceBatches
from lra.model import Encoder, EncoderConfig
from lra.training.job import run
from lra.training.optim import make_optimizer
from lra.training.step import TrainStep
from conftest import compose_train, tiny_train_overrides

PAD = 0
TRAINER = dict(lr=1e-2, steps=10, warmup=0, schedule="constant", weight_decay=0.1, betas=(0.9, 0.98), eps=1e-9)


class FixedBatches:
    """What TrainStep reads from DeviceBatches: ``labels`` (for the device) and ``batch(i)``."""

    def __init__(self, batches):
        self._batches = batches
        self.labels = torch.cat([y for _, _, y in batches])
        self.drawn = []

    def batch(self, i):
        self.drawn.append(i)
        return self._batches[i]


def _padded(tokens: list[list[int]], length: int):
    x = torch.full((len(tokens), length), PAD, dtype=torch.long)
    for row, t in zip(x, tokens):
        row[:len(t)] = torch.tensor(t)
    return x, x != PAD


def _examples(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 9, (n,), generator=g).tolist()
    tokens = [torch.randint(1, 20, (k,), generator=g).tolist() for k in lengths]
    labels = torch.randint(0, 3, (n,), generator=g)
    return tokens, labels


def _model():
    torch.manual_seed(0)
    cfg = EncoderConfig(vocab_size=20, num_classes=3, max_length=16, d_model=16, heads=2, mlp_dim=32, layers=2,
                        attention="full", dropout=0.0, attention_dropout=0.0, pooling="mean", pool_masked="exclude",
                        masked_queries="variant", pos_emb="learned")
    return Encoder(cfg).double()


def _sgd(model):
    """Plain SGD: the update is the gradient times the lr (Adam would blow the ~1e-17 rounding noise of
    gradients that are 0 in exact arithmetic, such as the key bias's, up to a full step)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)


def _step(model, batches, k):
    opt, sched = _sgd(model)
    ts = TrainStep(model, model, opt, sched, batches, None, grad_clip=1.0, accumulate=k)
    ts(0)
    return ts


def test_k_micro_batches_give_the_update_of_one_k_times_batch_in_float64():
    tokens, labels = _examples(8)
    # one batch of 8 padded to 16; micro-batches of 3 and 5 examples padded to 8 and 16 (unequal size and padding)
    whole = FixedBatches([(*_padded(tokens, 16), labels)])
    micro = FixedBatches([(*_padded(tokens[:3], 8), labels[:3]), (*_padded(tokens[3:], 16), labels[3:])])
    reference = _model()
    # precondition: the model's output for an example does not depend on how much padding follows it
    x8, m8 = _padded(tokens[:3], 8)
    x16, m16 = _padded(tokens[:3], 16)
    assert torch.allclose(reference(x8, m8), reference(x16, m16), rtol=0, atol=1e-12)

    one, accumulated = copy.deepcopy(reference), copy.deepcopy(reference)
    ts_one = _step(one, whole, 1)
    ts_acc = _step(accumulated, micro, 2)
    assert micro.drawn == [0, 1] and whole.drawn == [0]
    assert any(not torch.equal(a, b) for a, b in zip(one.parameters(), reference.parameters()))  # a real update
    for (name, a), b in zip(one.named_parameters(), accumulated.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-10, atol=1e-14), name   # the step's (clipped) gradient
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14), name             # and the update
    # the step's recorded loss is the mean over its 8 examples in both cases
    assert float(ts_acc.loss_sum) == pytest.approx(float(ts_one.loss_sum), rel=1e-6)  # a float32 running sum
    assert ts_acc.seen == ts_one.seen == 8

    # the test can fail: averaging the two micro-batch means with equal weights is not the batch's update
    naive = copy.deepcopy(reference)
    opt, _ = _sgd(naive)
    opt.zero_grad()
    for x, mask, y in micro._batches:
        (torch.nn.functional.cross_entropy(naive(x, mask), y) / 2).backward()
    torch.nn.utils.clip_grad_norm_(naive.parameters(), 1.0)
    opt.step()
    assert any(not torch.allclose(a, b, rtol=1e-6, atol=1e-9) for a, b in zip(one.parameters(), naive.parameters()))


def test_optimizer_step_s_reads_micro_batches_s_k_to_s_k_plus_k_minus_1():
    tokens, labels = _examples(12, seed=1)
    batches = FixedBatches([(*_padded(tokens[i:i + 2], 8), labels[i:i + 2]) for i in range(0, 12, 2)])
    model = _model()
    opt, sched = make_optimizer(model, TRAINER)
    ts = TrainStep(model, model, opt, sched, batches, None, grad_clip=None, accumulate=3)
    ts(0), ts(1)
    assert batches.drawn == [0, 1, 2, 3, 4, 5]
    assert sched.last_epoch == 2 and opt.state_dict()["state"][0]["step"] == 2  # two optimizer steps
    with pytest.raises(ValueError, match="accumulate=0"):
        TrainStep(model, model, opt, sched, batches, None, grad_clip=None, accumulate=0)


def _tiny(tmp_path, *extra):
    attention = [] if any(e.startswith("attention=") for e in extra) else ["attention=full"]
    return tiny_train_overrides(tmp_path / "cache", *attention, "trainer.batch_size=4", "trainer.accumulate=2", *extra)


def test_the_record_states_the_effective_batch_and_counts_optimizer_steps(tmp_path):
    rec = run(compose_train(*_tiny(tmp_path)), tmp_path / "job")
    assert rec["status"] == "ok", rec["message"]
    trainer = rec["config"]["trainer"]
    assert (trainer["batch_size"], trainer["accumulate"], trainer["effective_batch_size"]) == (4, 2, 8)
    assert rec["metrics"]["steps"] == 8
    assert rec["case"]["bucketing"]["padded_fraction_unbucketed"] >= rec["metrics"]["padded_fraction"]


def test_resume_with_accumulation_is_bit_identical(tmp_path, monkeypatch):
    # validations at 5 and 10: the one at 5 reads the log window closed at 3, before the checkpoint at 4
    overrides = _tiny(tmp_path, "trainer.bucketing=true", "trainer.bucket_multiple=8", "trainer.log_every=3",
                      "trainer.steps=12", "trainer.eval_every=5")
    full = run(compose_train(*overrides), tmp_path / "a")
    real_batch = DeviceBatches.batch

    def dying_batch(self, i):  # micro-batch 13: the second half of optimizer step 6, after the checkpoint of step 4
        if i == 13 and self.shuffle:
            raise KeyboardInterrupt
        return real_batch(self, i)

    monkeypatch.setattr(DeviceBatches, "batch", dying_batch)
    with pytest.raises(KeyboardInterrupt):
        run(compose_train(*overrides), tmp_path / "b")
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["step"] == 4
    monkeypatch.setattr(DeviceBatches, "batch", real_batch)
    resumed = run(compose_train(*overrides), tmp_path / "b")
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    assert [h["step"] for h in full["case"]["history"]] == [5, 10] and "train_loss" in full["case"]["history"][0]
    assert resumed["case"]["history"] == full["case"]["history"]   # the loss windows too (log_every 3, checkpoint 4)
    for key in ("accuracy", "loss", "val_accuracy", "accuracy_final", "accuracy_best_val"):
        assert resumed["metrics"][key] == full["metrics"][key], key
    strip = [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in a["curves"]]
    assert strip == [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in b["curves"]]


@pytest.mark.parametrize("extra", [
    ["attention=performer", "attention.num_features=8", "attention.distill=0.5"],            # distillation
    ["pretrain=mlm", "pretrain.steps=4", "pretrain.eval_every=2", "pretrain.batch_size=8"],   # self-pretraining first
    ["trainer.compile=true", "trainer.compile_backend=aot_eager"],                            # a compiled step
], ids=["distill", "pretrain", "compile"])
def test_accumulation_runs_with_distillation_pretraining_and_compile(tmp_path, extra):
    rec = run(compose_train(*_tiny(tmp_path, *extra)), tmp_path / "job")
    assert rec["status"] == "ok", rec["message"]
    assert rec["config"]["trainer"]["effective_batch_size"] == 8 and rec["metrics"]["steps"] == 8
    if "attention.distill=0.5" in extra:
        assert rec["metrics"]["distill_loss"] >= 0
    if "pretrain=mlm" in extra:
        assert rec["case"]["pretrain"]["status"] == "ok" and rec["metrics"]["pretrain_steps"] == 4
    if "trainer.compile=true" in extra:
        assert rec["case"]["compile"]["status"] == "compiled"
        eager = run(compose_train(*_tiny(tmp_path)), tmp_path / "eager")
        assert [h["train_loss"] for h in rec["case"]["history"]] == pytest.approx(
            [h["train_loss"] for h in eager["case"]["history"]], rel=1e-4, abs=1e-5)


class _PerPosition(torch.nn.Module):
    """A token-level model for :func:`lra.training.token_task.outputs`: logits (K, V) at the K labelled
    positions ``where`` of a batch (an embedding, a position mix and a linear head)."""

    def __init__(self, vocab=20, width=8):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.mix, self.head = (torch.nn.Embedding(vocab, width), torch.nn.Linear(width, width),
                                         torch.nn.Linear(width, vocab))

    def forward(self, x, mask, where):
        h = self.emb(x)
        h = h + torch.tanh(self.mix(h.mean(1, keepdim=True)))
        return self.head(h)[where]


def test_token_tasks_average_over_labelled_positions_across_micro_batches():
    from lra.training.token_task import IGNORE, outputs

    g = torch.Generator().manual_seed(2)
    x = torch.randint(1, 20, (6, 10), generator=g)
    y = torch.full((6, 10), IGNORE)
    for row, k in zip(y, (1, 1, 2, 6, 7, 9)):          # 4 labelled positions in the first micro-batch, 22 in the second
        row[-k:] = torch.randint(0, 20, (k,), generator=g)
    whole = FixedBatches([(x, None, y)])
    micro = FixedBatches([(x[:3], None, y[:3]), (x[3:], None, y[3:])])
    reference = _PerPosition().double()
    one, accumulated = copy.deepcopy(reference), copy.deepcopy(reference)
    for model, batches, k in ((one, whole, 1), (accumulated, micro, 2)):
        opt, sched = _sgd(model)
        ts = TrainStep(model, model, opt, sched, batches, None, grad_clip=None, outputs=outputs, accumulate=k)
        ts(0)
        assert ts.seen == 26                            # the running accuracy counts labelled positions
    for (name, a), b in zip(one.named_parameters(), accumulated.parameters()):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14), name
    # weighting each micro-batch by its examples (3 and 3) instead would give another update
    naive = copy.deepcopy(reference)
    opt, _ = _sgd(naive)
    for xs, _, ys in micro._batches:
        logits, targets = outputs(naive, xs, None, ys)
        (torch.nn.functional.cross_entropy(logits, targets) / 2).backward()
    opt.step()
    assert any(not torch.allclose(a, b, rtol=1e-6, atol=1e-9) for a, b in zip(one.parameters(), naive.parameters()))
