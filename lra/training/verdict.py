"""Did the run learn? A stated test of its accuracy against always answering the majority class.

A run that never leaves chance (Pathfinder stuck at 50%, ListOps collapsing to its majority
class: LRA issues 15, 37, 60; state-spaces/s4 issues 22, 82) looks like any other run until
someone reads its numbers. Here the run says so itself:

* **The baseline** (:func:`majority_rate`): the share of the most frequent class among the
  *training* labels, the accuracy of a model that ignores its input and answers that class.
* **The test** (:func:`binomial_test`): exact binomial, one-sided. With ``n`` evaluated examples of
  which ``correct`` were right, the p-value is ``P(X >= correct)`` for ``X ~ Binomial(n,
  majority_rate)``: the chance that a model no better than the majority rate scores at least as
  well. The run **learned** when ``p_value < alpha``, with ``alpha = 0.01`` (:data:`ALPHA`).
  It is run on the validation split at every evaluation (``metrics.val_learned``: the last one)
  and on the test split for the verdict (``metrics.learned``, ``metrics.learned_test``).
* **The warning** (:class:`ChanceWarning`): once :data:`WARN_AFTER` (25%) of the run's steps
  are done, the first validation still at chance prints one warning line with the likely causes
  for the task (:data:`CAUSES`) and the docs section to read; it prints once per job (the flag is
  kept in the checkpoint, so a resumed run does not repeat it).

Cost: :func:`binomial_test` sums at most ``n + 1`` log-probabilities (``math.lgamma``), O(n) on
the host, microseconds per thousand examples. Standard library only.
"""
from __future__ import annotations

import math
from typing import Any

#: significance level of the one-sided binomial test
ALPHA = 0.01
#: share of the planned steps after which a run still at chance is warned about
WARN_AFTER = 0.25
#: the test's name as records state it
TEST_NAME = "binomial one-sided"
#: where the docs list what to try
DOCS = "docs/recipes.md#did-not-learn"

#: likely causes of a run at chance, per task (the docs' "Did not learn?" section explains each)
CAUSES = {
    "listops": "ListOps collapsing to its majority class is known (LRA issue 15): a lower peak learning rate "
               "(trainer.lr=0.01 under recipe=lra, 5x lower) or a larger batch (trainer.accumulate=k) helped there",
    "pathfinder": "Pathfinder often sits at 50% for thousands of steps or for good (LRA issues 37, 60; s4 issues 22, "
                  "82): learned positions (model.pos_emb=learned) are reported to rescue it; train longer",
    "pathx": "no model of the LRA paper beat chance on Path-X; learned positions (model.pos_emb=learned) and a "
             "long run are the first things to try",
}
#: causes that apply to every task
COMMON_CAUSES = ("task.mask_zero_tokens=true treats every zero token as padding (black pixels on the image tasks); "
                 "trainer.lr and trainer.steps")


def majority_rate(labels) -> float:
    """Share of the most frequent class among ``labels`` (a tensor of class ids, any shape;
    negative entries, e.g. the -100 of unlabelled positions, are left out). O(n)."""
    flat = labels.flatten()
    flat = flat[flat >= 0]
    if flat.numel() == 0:
        raise ValueError("majority_rate: no labels")
    return float(flat.bincount().max()) / flat.numel()


def binomial_tail(correct: int, n: int, p: float) -> float:
    """``P(X >= correct)`` for ``X ~ Binomial(n, p)``, exact (log-space sum of the pmf; O(n))."""
    if correct <= 0:
        return 1.0
    if correct > n:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    lg_n = math.lgamma(n + 1)

    def log_pmf(k: int) -> float:
        return lg_n - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * log_p + (n - k) * log_q

    # sum the shorter side: the upper tail itself, or 1 minus the lower one
    upper = correct > n * p
    ks = range(correct, n + 1) if upper else range(0, correct)
    logs = [log_pmf(k) for k in ks]
    top = max(logs)
    total = math.exp(top) * sum(math.exp(x - top) for x in logs)
    return min(1.0, total) if upper else max(0.0, 1.0 - total)


def binomial_test(correct: int, n: int, majority: float, split: str, alpha: float = ALPHA) -> dict[str, Any]:
    """The record's learned test: ``{"split", "majority_rate", "n", "correct", "p_value", "alpha",
    "test"}``; learned when ``p_value < alpha`` (:func:`learned`)."""
    return {"split": split, "majority_rate": round(float(majority), 6), "n": int(n), "correct": int(correct),
            "p_value": float(f"{binomial_tail(int(correct), int(n), float(majority)):.4g}"), "alpha": alpha,
            "test": TEST_NAME}


def learned(test: dict[str, Any]) -> bool:
    """Whether :func:`binomial_test`'s result rejects "no better than the majority class"."""
    return test["p_value"] < test["alpha"]


def correct_count(accuracy: float, n: int) -> int:
    """The number of right answers behind an ``accuracy`` over ``n`` examples."""
    return int(round(accuracy * n))


def verdict_line(test: dict[str, Any]) -> str:
    """``[lra] learned: yes (test 0.351 vs majority 0.187, p = 1.2e-30 < 0.01)`` or the ``no`` line
    with where to read on."""
    acc = test["correct"] / max(1, test["n"])
    yes = learned(test)
    line = (f"[lra] learned: {'yes' if yes else 'no'} ({test['split']} {acc:.3f} vs majority "
            f"{test['majority_rate']:.3f}, p = {test['p_value']:.3g} {'<' if yes else '>='} {test['alpha']}, "
            f"one-sided binomial test, n = {test['n']})")
    return line if yes else f"{line}: the run did not beat always answering the majority class; see {DOCS}"


class ChanceWarning:
    """The one warning of a run still at chance after :data:`WARN_AFTER` of its ``steps``.

    ``check(step, test)`` after each validation: prints (and returns) the warning the first time
    ``step >= WARN_AFTER * steps`` and ``test`` did not learn; later calls print nothing.
    ``warned`` is kept in the run's checkpoint."""

    def __init__(self, task: str, steps: int, warned: bool = False, share: float = WARN_AFTER):
        self.task, self.steps, self.warned, self.share = task, int(steps), bool(warned), share

    def message(self, step: int, test: dict[str, Any]) -> str:
        acc = test["correct"] / max(1, test["n"])
        causes = "; ".join(c for c in (CAUSES.get(self.task), COMMON_CAUSES) if c)
        return (f"[lra] WARNING: still at chance after {step} of {self.steps} steps ({self.share:.0%} or more): "
                f"{test['split']} accuracy {acc:.3f} vs majority class {test['majority_rate']:.3f} "
                f"(p = {test['p_value']:.3g} >= {test['alpha']}). Likely causes for {self.task}: {causes}. "
                f"See {DOCS}")

    def check(self, step: int, test: dict[str, Any], write=print) -> str | None:
        if self.warned or step < self.share * self.steps or learned(test):
            return None
        self.warned = True
        text = self.message(step, test)
        write(text)
        return text
