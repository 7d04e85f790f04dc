""""Did not learn", stated by the run: the binomial test against the majority class, the flag on a run
that cannot learn and not on one that does, and the warning printed once."""
import math
from fractions import Fraction

import pytest
import torch

from lra.training import verdict
from lra.training.job import run
from conftest import compose_train, tiny_train_overrides


def _exact_tail(correct, n, p):
    p = Fraction(p)
    return float(sum(math.comb(n, k) * p**k * (1 - p)**(n - k) for k in range(correct, n + 1)))


@pytest.mark.parametrize("correct,n,p", [(0, 10, 0.5), (7, 10, 0.5), (10, 10, 0.5), (3, 20, 0.1), (1, 20, 0.1),
                                         (60, 100, 0.5), (45, 100, 0.5), (30, 200, 0.187), (5, 5, 0.999)])
def test_binomial_tail_is_the_exact_upper_tail(correct, n, p):
    assert verdict.binomial_tail(correct, n, p) == pytest.approx(_exact_tail(correct, n, p), rel=1e-9, abs=1e-15)


def test_binomial_test_decides_at_the_stated_level():
    # 500 examples, majority 0.187: the one-sided 1% critical count is the smallest c with P(X >= c) < 0.01
    n, p = 500, 0.187
    critical = next(c for c in range(n + 1) if _exact_tail(c, n, p) < 0.01)
    assert not verdict.learned(verdict.binomial_test(critical - 1, n, p, "test"))
    assert verdict.learned(verdict.binomial_test(critical, n, p, "test"))
    test = verdict.binomial_test(critical, n, p, "test")
    assert set(test) == {"split", "majority_rate", "n", "correct", "p_value", "alpha", "test"}
    assert (test["alpha"], test["test"], test["split"]) == (0.01, "binomial one-sided", "test")
    # the majority class itself is no evidence of learning, even on a huge split
    assert not verdict.learned(verdict.binomial_test(round(0.5 * 100_000), 100_000, 0.5, "val"))


def test_majority_rate_counts_the_most_frequent_label_and_skips_unlabelled_positions():
    assert verdict.majority_rate(torch.tensor([0, 1, 1, 2, 1, 0])) == 0.5
    assert verdict.majority_rate(torch.tensor([[3, -100], [3, 1]])) == pytest.approx(2 / 3)


def test_the_warning_is_printed_once_after_a_quarter_of_the_steps():
    lines = []
    w = verdict.ChanceWarning("listops", steps=100)
    at_chance = verdict.binomial_test(18, 100, 0.187, "val")
    assert w.check(20, at_chance, lines.append) is None            # before 25% of the steps
    assert "trainer.lr=0.01" in w.check(25, at_chance, lines.append)  # ListOps: LRA issue 15's lower lr
    assert w.check(50, at_chance, lines.append) is None            # once
    assert len(lines) == 1 and "docs/recipes.md#did-not-learn" in lines[0]
    learned = verdict.binomial_test(60, 100, 0.187, "val")
    assert verdict.ChanceWarning("pathfinder", 100).check(50, learned, lines.append) is None
    assert "model.pos_emb=learned" in verdict.ChanceWarning("pathfinder", 100).message(50, at_chance)


def _run(tmp_path, name, *extra):
    overrides = tiny_train_overrides(tmp_path / "cache", "attention=full", "trainer.steps=16",
                                     "trainer.eval_every=4", "trainer.checkpoint_every=8", *extra)
    return run(compose_train(*overrides), tmp_path / name)


def test_a_run_that_cannot_learn_is_flagged_and_warned_about_once(tmp_path, capsys):
    # trainer.lr must be > 0 (tests/test_records.py): 1e-12 moves no weight measurably in 16 steps
    rec = _run(tmp_path, "frozen", "trainer.lr=1e-12")
    out = capsys.readouterr().out
    m = rec["metrics"]
    assert rec["status"] == "ok"
    assert m["learned"] is False and m["val_learned"] is False
    test = m["learned_test"]
    assert test["split"] == "test" and test["n"] == 16 and test["p_value"] >= test["alpha"]
    assert test["correct"] == round(m["accuracy"] * 16)
    assert out.count("WARNING: still at chance") == 1 and "ListOps collapsing" in out
    assert "[lra] learned: no (test" in out and "docs/recipes.md#did-not-learn" in out


#: ListOps at 32 tokens: a width-32 model leaves its majority class (about 16%) for about 30% within 60 steps;
#: 256 validation and test examples make that a clear verdict (p ~ 1e-6), not a borderline one
LEARNS = ["trainer.steps=60", "trainer.eval_every=20", "trainer.checkpoint_every=20", "trainer.batch_size=16",
          "trainer.lr=5e-3", "trainer.warmup=5", "trainer.task_overrides.num_train=512",
          "trainer.task_overrides.num_val=256", "trainer.task_overrides.num_test=256", "trainer.model_overrides.d_model=32",
          "trainer.model_overrides.mlp_dim=64", "trainer.model_overrides.dropout=0.0"]


def test_a_run_that_learns_is_not_flagged(tmp_path, capsys):
    rec = _run(tmp_path, "learns", *LEARNS)
    out = capsys.readouterr().out
    m = rec["metrics"]
    assert rec["status"] == "ok" and m["learned"] is True and m["val_learned"] is True, m
    assert m["learned_test"]["p_value"] < 0.01 and m["accuracy"] > m["learned_test"]["majority_rate"]
    assert "[lra] learned: yes (test" in out and "did-not-learn" not in out.split("[lra] learned: yes")[1]
