"""Proves the Monte-Carlo step labels: the binary search finds the first bad step at every position
with at most 2 + ceil(log2 k) probes (vs k + 1 to score every prefix), reports "no_error" and
"unsolved" when there is nothing to locate; many searches run at once, each probing at its own pace;
and — with a scripted engine whose continuations reach the gold only from prefixes without a wrong
step — labels real rewrites: per-step values where probed, the first error index, and the
continuations it cost (one request of N continuations per probe)."""
from __future__ import annotations

import asyncio
import math

import pytest

from tasks.engines.fake import FakeEngine
from tasks.generators.cot_rewrites import program as cr
from tasks.generators.cot_rewrites.step_labels import FirstErrorSearch, label_rewrite, run_search


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


def test_searches_run_at_once_each_at_its_own_pace():
    truth = {4: 2, 9: 7, 1: 1}  # steps -> first bad step
    events = []

    def value_for(k):
        async def value(prefix):
            events.append(("start", k, prefix))
            await asyncio.sleep(0)  # an engine request: the other searches run meanwhile
            events.append(("end", k, prefix))
            return 0.0 if prefix >= truth[k] else 1.0
        return value

    async def run_all():
        return await asyncio.gather(*(run_search(FirstErrorSearch(n_steps=k), value_for(k)) for k in truth))

    searches = asyncio.run(run_all())
    assert [s.first_error_step for s in searches] == [2, 7, 1]
    assert sum(e[0] == "start" for e in events) == sum(len(s.values) for s in searches)
    assert [e[:2] for e in events[:3]] == [("start", 4), ("start", 9), ("start", 1)]  # all first probes in flight
    for k in truth:  # one probe at a time per search: a probe starts only after its previous one ended
        own = [e[0] for e in events if e[1] == k]
        assert own == ["start", "end"] * (len(own) // 2)


def _proofreader(conversation, params) -> str:
    """A scripted model: a continuation reaches the gold (5) unless its pre-filled prefix holds a step
    marked WRONG."""
    return f" so we finish.\nFinal answer: {'0' if 'WRONG' in conversation[-1]['content'] else '5'}"


def test_label_rewrite_with_a_scripted_engine():
    steps_ok = ["Add 2 and 3.", "That makes 5."]
    steps_bad = ["Take 2.", "Add 3 to get 5.", "WRONG: double it to 10.", "Subtract nothing.", "Still 10.",
                 "Write it down.", "Check it.", "Done."]
    item = {"source_id": "s", "question": "What is 2+3?", "gold_answer": "5", "task_family": "arithmetic",
            "rewrites": [{"steps": steps_ok}, {"steps": steps_bad}, {"steps": []}]}
    engine = FakeEngine(reply=_proofreader)
    config = cr.CotRewritesConfig(step_labels=True, continuations=3)

    async def label_all():
        await asyncio.gather(*(label_rewrite(item, rewrite, engine, config) for rewrite in item["rewrites"]))

    asyncio.run(label_all())
    ok, bad, empty = item["rewrites"]
    assert (ok["label_status"], ok["first_error_step"], ok["step_values"], ok["label_continuations"]) == (
        "no_error", None, [None, 1.0], 3)
    assert (bad["label_status"], bad["first_error_step"], bad["root_value"]) == ("error_found", 3, 1.0)
    assert bad["step_values"][2] == 0.0 and bad["step_values"][1] == 1.0
    assert bad["label_continuations"] <= 3 * (2 + math.ceil(math.log2(8))) < 3 * 9
    assert (empty["label_status"], empty["label_continuations"]) == ("no_steps", 0)
    # one request of n = 3 continuations per probe, nothing for a rewrite without steps
    assert len(engine.calls) * 3 == ok["label_continuations"] + bad["label_continuations"]
    assert {params.n for _, params in engine.calls} == {3}
