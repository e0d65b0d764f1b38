"""Proves the Monte-Carlo step labels: the binary search finds the first bad step at every position
with at most 2 + ceil(log2 k) probes (vs k + 1 to score every prefix), reports "no_error" and
"unsolved" when there is nothing to locate, and — with a scripted engine whose continuations reach
the gold only from prefixes without a wrong step — labels real rewrites: per-step values where
probed, the first error index, and the continuations it cost, all searches of a batch in lock step."""
from __future__ import annotations

import math

import pytest

from tasks.engines.base import Completion, EngineSpec
from tasks.generators.cot_rewrites import program as cr
from tasks.generators.cot_rewrites.step_labels import FirstErrorSearch, run_searches


def _search(k: int, first_bad: int | None, solvable: bool = True) -> tuple[FirstErrorSearch, list[int]]:
    """Run a search where a prefix of p steps succeeds iff it holds no bad step (and the root is solvable)."""
    search, probed = FirstErrorSearch(n_steps=k), []

    def value(p: int) -> float:
        if not solvable:
            return 0.0
        return 0.0 if first_bad is not None and p >= first_bad else 0.75

    while (p := search.next_probe()) is not None:
        probed.append(p)
        search.record(p, value(p))
    return search, probed


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8, 13, 32, 100])
def test_binary_search_finds_every_first_error_in_log_probes(k):
    bound = 2 + math.ceil(math.log2(k)) if k > 1 else 2
    for first_bad in range(1, k + 1):
        search, probed = _search(k, first_bad)
        assert (search.status, search.first_error_step) == ("error_found", first_bad)
        assert len(probed) == len(set(probed)) <= bound, (k, first_bad, probed)
        # the search located the boundary itself: it probed both the bad step and the prefix before it
        assert {first_bad - 1, first_bad} <= set(probed)
        assert search.values[first_bad] == 0.0 and search.values[first_bad - 1] == 0.75
    if k >= 8:
        assert bound < k + 1  # fewer probes than scoring every prefix


def test_no_error_and_unsolved_need_at_most_two_probes():
    search, probed = _search(10, None)
    assert (search.status, search.first_error_step, probed) == ("no_error", None, [10])
    search, probed = _search(10, 4, solvable=False)
    assert (search.status, search.first_error_step, probed) == ("unsolved", None, [10, 0])
    assert FirstErrorSearch(n_steps=0).status == "no_steps" and FirstErrorSearch(n_steps=0).next_probe() is None


def test_step_values_are_null_where_not_probed():
    search, probed = _search(8, 6)
    values = search.step_values()
    assert len(values) == 8 and values[8 - 1] == 0.0
    assert [i + 1 for i, v in enumerate(values) if v is not None] == sorted(p for p in probed if p > 0)


def test_run_searches_batches_probes_in_rounds():
    searches = [FirstErrorSearch(n_steps=k) for k in (4, 9, 1)]
    truth = {0: 2, 1: 7, 2: 1}
    rounds = []

    def estimate(todo):
        rounds.append(len(todo))
        return [0.0 if p >= truth[i] else 1.0 for i, p in todo]

    probes = run_searches(searches, estimate)
    assert [s.first_error_step for s in searches] == [2, 7, 1]
    assert probes == sum(rounds) and len(rounds) <= 2 + math.ceil(math.log2(9))


class ProofReader:
    """A scripted engine: a continuation reaches the gold unless its pre-filled prefix holds a step
    marked WRONG. Counts calls and continuations (the scripted stand-in for sampling)."""

    spec = EngineSpec(backend="fake", model="proofreader")

    def __init__(self, gold: str):
        self.gold, self.calls, self.continuations = gold, 0, 0

    def generate(self, conversations, params):
        self.calls += 1
        out = []
        for conversation in conversations:
            prefix = conversation[-1]["content"]
            answer = "0" if "WRONG" in prefix else self.gold
            self.continuations += params.n
            out.append([Completion(text=f" so we finish.\nFinal answer: {answer}", prompt_tokens=10,
                                   completion_tokens=5, finish_reason="stop")] * params.n)
        return out

    def close(self):
        pass


def test_label_rewrites_with_a_scripted_engine():
    steps_ok = ["Add 2 and 3.", "That makes 5."]
    steps_bad = ["Take 2.", "Add 3 to get 5.", "WRONG: double it to 10.", "Subtract nothing.", "Still 10.",
                 "Write it down.", "Check it.", "Done."]
    item = {"source_id": "s", "question": "What is 2+3?", "gold_answer": "5", "task_family": "arithmetic",
            "rewrites": [{"steps": steps_ok}, {"steps": steps_bad}, {"steps": []}]}
    engine = ProofReader(gold="5")
    config = cr.CotRewritesConfig(step_labels=True, continuations=3)
    from tasks.generators.cot_rewrites.step_labels import label_rewrites

    label_rewrites([item], engine, config)
    ok, bad, empty = item["rewrites"]
    assert (ok["label_status"], ok["first_error_step"], ok["step_values"], ok["label_continuations"]) == (
        "no_error", None, [None, 1.0], 3)
    assert (bad["label_status"], bad["first_error_step"], bad["root_value"]) == ("error_found", 3, 1.0)
    assert bad["step_values"][2] == 0.0 and bad["step_values"][1] == 1.0
    assert bad["label_continuations"] <= 3 * (2 + math.ceil(math.log2(8))) < 3 * 9
    assert (empty["label_status"], empty["label_continuations"]) == ("no_steps", 0)
    assert engine.continuations == ok["label_continuations"] + bad["label_continuations"]
    assert engine.calls <= 2 + math.ceil(math.log2(8))  # one engine call per round for the whole batch
