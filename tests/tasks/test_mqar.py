"""MQAR (lra.tasks.mqar): the generator's properties, its bad-input errors, the token head that
computes logits only at labelled positions, exact attention learning a tiny MQAR, and the
learning-rate sweep's skip rule (lra.training.lr_sweep)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import lra
from conftest import compose_train
from lra.model import Encoder, EncoderConfig, TokenPredictor
from lra.schema import ConfigError
from lra.tasks import IGNORE, mqar
from lra.training import lr_sweep, token_task
from lra.training.config import validate
from lra.training.job import run

N, P, V = 64, 6, 80


def examples(random_non_queries: bool, n: int = 300, seed=0, power_a: float = 0.01, seq_len=N, pairs=P, vocab=V):
    x, y = mqar.generate(n, seq_len, pairs, vocab, power_a, random_non_queries, seed)
    return x.long(), y.long()


@pytest.mark.parametrize("random_non_queries", [True, False])
def test_generator_follows_the_definition(random_non_queries):
    raw_x, raw_y = mqar.generate(300, N, P, V, 0.01, random_non_queries, 0)
    assert raw_x.shape == raw_y.shape == (300, N) and raw_x.dtype == raw_y.dtype == torch.int16   # compact
    x, y = raw_x.long(), raw_y.long()
    keys, values = x[:, 0:2 * P:2], x[:, 1:2 * P:2]
    assert ((keys >= 1) & (keys < V // 2)).all() and ((values >= V // 2) & (values < V)).all()
    for i in range(len(x)):
        k, v = keys[i].tolist(), values[i].tolist()
        assert len(set(k)) == P and len(set(v)) == P               # no key or value twice in the context
        region, labels = x[i, 2 * P:].tolist(), y[i].tolist()
        assert all(region.count(key) == 1 for key in k)           # each key asked exactly once
        queries = [2 * P + region.index(key) for key in k]
        assert all((q - 2 * P) % 2 == 0 for q in queries)         # at even offsets of the query region
        assert sorted(j for j, t in enumerate(labels) if t != IGNORE) == sorted(queries)  # labels there only
        for key, value, q in zip(k, v, queries):
            assert labels[q] == value                              # a query's label is its key's value
            assert q + 1 == N or x[i, q + 1] != value              # the value never follows its query
        assert not set(v) & set(region)                            # no value anywhere after the context
        others = [t for j, t in enumerate(region) if 2 * P + j not in queries]
        if random_non_queries:
            assert not set(others) & set(k)                        # no spurious query
        else:
            assert set(others) == {0}


def test_query_order_is_not_the_context_order_and_gaps_follow_the_power_law():
    x, _ = examples(True, n=2000)
    first_asked = []
    for i in range(len(x)):
        region = x[i, 2 * P:].tolist()
        positions = [region.index(k) for k in x[i, 0:2 * P:2].tolist()]
        first_asked.append(int(np.argmin(positions)))
    counts = np.bincount(first_asked, minlength=P)
    assert counts.min() > 2000 / P * 0.7                          # every context slot is asked first about as often
    _, near = examples(True, n=2000, power_a=0.01)
    _, flat = examples(True, n=2000, power_a=1.0)

    def mean_gap(labels):  # queries sit at 2P + 2 gap
        return float(((labels != IGNORE).nonzero()[:, 1].float() - 2 * P).mean() / 2)
    space = (N - 2 * P) // 2
    assert abs(mean_gap(flat) - (space - 1) / 2) < 0.3           # power_a 1: uniform over 0 .. space - 1
    assert mean_gap(near) < mean_gap(flat) - 3                    # power_a 0.01: short gaps likelier


def test_same_seed_same_data_other_seed_other_data(tmp_path):
    a, b, c = examples(True, seed=3), examples(True, seed=3), examples(True, seed=4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    cfg = OmegaConf.merge(OmegaConf.load(lra.conf_dir() / "task" / "mqar.yaml"),
                          {"cache_dir": str(tmp_path), "num_train": 50, "num_val": 10, "num_test": 10})
    first = mqar.prepare(cfg)
    assert len(list(tmp_path.glob("mqar-*.pt"))) == 1                   # cached like the other generated tasks
    again = mqar.prepare(cfg)
    other = mqar.prepare(OmegaConf.merge(cfg, {"data_seed": 1}))
    for split in ("train", "val", "test"):
        assert torch.equal(first.splits[split][0], again.splits[split][0])
        assert not torch.equal(first.splits[split][0], other.splits[split][0])
    assert not torch.equal(first.splits["val"][0], first.splits["test"][0])   # splits from their own streams
    assert first.target == "token" and first.pad_id is None and first.vocab_size == 8192
    info = first.describe()
    assert info["train"]["labelled_positions"] == {"total": 50 * 4, "mean_per_example": 4.0}


@pytest.mark.parametrize("overrides,message", [
    (["task.seq_len=64", "task.num_kv_pairs=17"], r"num_kv_pairs=17 is too large for task.seq_len=64: .*4 x num_kv_pairs"
                                                   r" <= seq_len \(68 > 64\)"),
    (["task.seq_len=63", "task.num_kv_pairs=4"], r"task.seq_len=63 is odd: MQAR needs an even seq_len"),
    (["task.seq_len=64", "task.vocab_size=64"], r"task.vocab_size=64 must be above task.seq_len=64"),
    (["task.seq_len=16", "task.num_kv_pairs=4", "task.vocab_size=8"],
     r"task.vocab_size=8 is too small for 4 distinct keys \(drawn from \[1, 4\): 3 tokens\) and 4 distinct values"),
    (["task.power_a=0"], r"task.power_a=0 is invalid: it must be a number > 0"),
    (["task.power_a=-1"], r"task.power_a=-1 is invalid: it must be a number > 0"),
])
def test_bad_settings_fail_before_any_work(tmp_path, overrides, message):
    cfg = compose_train("task=mqar", "attention=full", f"task.cache_dir={tmp_path / 'cache'}", *overrides)
    with pytest.raises(ConfigError, match=message):
        run(cfg, tmp_path / "job")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "job" / "record.json").exists()


def test_generator_names_every_broken_constraint():
    with pytest.raises(ValueError) as err:
        mqar.generate(4, seq_len=15, num_kv_pairs=4, vocab_size=10, power_a=0.0)
    text = str(err.value)
    for part in ("task.seq_len=15 is odd", "4 x num_kv_pairs <= seq_len", "task.vocab_size=10 must be above",
                 "task.power_a=0.0 must be > 0"):
        assert part in text


def test_token_head_computes_logits_only_at_labelled_positions():
    torch.manual_seed(0)
    encoder = Encoder(EncoderConfig(vocab_size=V, num_classes=V, max_length=N, d_model=16, heads=2, mlp_dim=16,
                                    layers=1, pooling="mean", attention="full", attention_cfg={"causal": True}))
    model = token_task.predictor(encoder).eval()
    x, y = examples(True, n=5)
    rows = []
    model.head.register_forward_hook(lambda _m, inputs, _out: rows.append(inputs[0].shape[:-1].numel()))
    logits, targets = token_task.outputs(model, x, None, y)
    assert logits.shape == (5 * P, V) and targets.shape == (5 * P,) and rows == [5 * P]   # K rows, never B x N
    full = TokenPredictor.forward(model, x, None)                                         # every position
    assert rows[-1] == 5 * N
    assert torch.allclose(logits, full[y != IGNORE], atol=1e-6)
    assert torch.equal(targets, y[y != IGNORE])
    assert isinstance(encoder.head, torch.nn.Identity)                                    # no classifier


def tiny_mqar(tmp_path, *extra):
    """Length 32, 2 pairs, 64 tokens: values are 32 of them, so guessing one is right 1 time in 32 and
    copying one of the two context values 1 time in 2."""
    return compose_train("task=mqar", "attention=full", "task.seq_len=32", "task.num_kv_pairs=2", "task.vocab_size=64",
                         "task.num_train=4000", "task.num_val=200", "task.num_test=200", f"task.cache_dir={tmp_path}/c",
                         "model.d_model=64", "model.mlp_dim=64", "model.heads=2", "trainer.lr=1e-2",
                         "trainer.batch_size=64", "trainer.steps=300", "trainer.warmup=60", "trainer.eval_every=50",
                         "trainer.log_every=50", "trainer.checkpoint_every=50", "trainer.progress=false", "threads=1",
                         *extra)


def test_exact_attention_learns_a_tiny_mqar_and_the_record_says_how(tmp_path):
    rec = run(tiny_mqar(tmp_path, "trainer.stop_at_val_accuracy=0.95"), tmp_path / "job")
    assert rec["status"] == "ok", rec["message"]
    m = rec["metrics"]
    assert m["query_accuracy"] > 0.9                       # chance 1/32; copying a context value: 1/2
    assert m["accuracy"] == m["query_accuracy"] and m["val_accuracy"] == m["val_query_accuracy"]
    assert 0 <= m["all_queries_correct"] <= 1 and m["val_all_queries_correct"] >= 0.8
    assert m["test_tokens"] == 200 * 2
    stop = rec["case"]["early_stop"]
    assert stop["reached"] and stop["step"] == m["steps"] < 300 and rec["config"]["trainer"]["stop_at_val_accuracy"] == 0.95
    assert rec["case"]["history"][-1]["val_accuracy"] >= 0.95 > max(h["val_accuracy"] for h in rec["case"]["history"][:-1])
    assert rec["case"]["attention_causal"] is True and rec["variant_config"]["causal"] is True
    assert rec["config"]["task"]["num_kv_pairs"] == 2 and rec["config"]["model"]["d_model"] == 64
    assert rec["case"]["bucketing"]["on"] is False
    # the KV cache of 2 layers of full attention at length 32, width 64, fp32: 2 x (2 x 32 x 64) x 4 bytes
    assert m["state_bytes"] == rec["case"]["state"]["bytes"] == 2 * 2 * 32 * 64 * 4
    # resumable: without its record the job resumes from the checkpoint it stopped at and trains no further
    (tmp_path / "job" / "record.json").unlink()
    again = run(tiny_mqar(tmp_path, "trainer.stop_at_val_accuracy=0.95"), tmp_path / "job")
    assert again["metrics"]["steps"] == m["steps"] and again["metrics"]["query_accuracy"] == m["query_accuracy"]


def test_a_variant_that_cannot_be_causal_runs_bidirectionally_and_says_so(tmp_path):
    rec = run(tiny_mqar(tmp_path, "attention=linformer", "attention.k=16", "trainer.steps=4", "trainer.warmup=2"), tmp_path / "job")
    assert rec["status"] == "ok", rec["message"]
    assert rec["case"]["attention_causal"] is False and rec["variant_config"]["causal"] is False


def test_token_tasks_refuse_pretraining_and_a_compiled_step(tmp_path):
    with pytest.raises(ConfigError, match=r"pretrain=mlm is for the classification tasks; task=mqar"):
        validate(tiny_mqar(tmp_path, "pretrain=mlm"))
    with pytest.raises(ConfigError, match=r"trainer.compile=true is not supported for task=mqar"):
        validate(tiny_mqar(tmp_path, "trainer.compile=true"))
    with pytest.raises(ConfigError, match=r"trainer.lr_sweep_skip=true .* fix: trainer.stop_at_val_accuracy=0.99"):
        validate(tiny_mqar(tmp_path, "trainer.lr_sweep_skip=true"))


# ----------------------------------------------------------------------------- the learning-rate sweep's rule

def fake_record(path, lr, best, status="ok", cell=("task=mqar", "attention=full")):
    path.mkdir(parents=True)
    record = {"schema": 1, "kind": "train", "status": status, "metrics": {"best_val_accuracy": best},
              "config": {"trainer": {"lr": lr}, "command_line": [*cell, f"trainer.lr={lr}"]}}
    (path / "record.json").write_text(json.dumps(record))


def test_solved_by_finds_the_rate_that_reached_the_target_in_the_same_cell(tmp_path):
    me = tmp_path / "2_job"
    fake_record(tmp_path / "0_job", 0.003, 0.97)                                   # same cell, below the target
    fake_record(tmp_path / "1_job", 0.01, 0.995, cell=("task=mqar", "attention=linear"))   # another cell
    assert lr_sweep.solved_by(me, ["task=mqar", "attention=full", "trainer.lr=0.001"], 0.99) is None
    fake_record(tmp_path / "3_job", 0.01, 0.992, status="error")                  # not a finished run
    assert lr_sweep.solved_by(me, ["task=mqar", "attention=full", "trainer.lr=0.001"], 0.99) is None
    fake_record(tmp_path / "4_job", 0.01, 0.993)
    found = lr_sweep.solved_by(me, ["attention=full", "trainer.lr=0.001", "task=mqar"], 0.99)
    assert found is not None and found["config"]["trainer"]["lr"] == 0.01
    assert "trainer.lr=0.01 reached trainer.stop_at_val_accuracy=0.99" in lr_sweep.skip_message(found, 0.99)


def test_a_solved_cell_skips_its_other_rates_without_training(tmp_path):
    overrides = ["task=mqar", "attention=full", "trainer.stop_at_val_accuracy=0.99", "trainer.lr_sweep_skip=true"]
    fake_record(tmp_path / "0_job", 0.01, 0.995, cell=tuple(overrides))
    cfg = tiny_mqar(tmp_path, *overrides[2:], "trainer.lr=0.003")
    rec = run(cfg, tmp_path / "1_job", raise_config_errors=False, cli_overrides=[*overrides, "trainer.lr=0.003"])
    assert rec["status"] == "skipped" and "trainer.lr=0.01 reached" in rec["message"]
    assert not (tmp_path / "1_job" / "checkpoint.pt").exists() and not (tmp_path / "c").exists()
    assert json.loads((tmp_path / "1_job" / "record.json").read_text())["status"] == "skipped"
