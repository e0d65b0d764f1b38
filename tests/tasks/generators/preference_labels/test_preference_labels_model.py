"""Proves the labelling program with the real embedded SmolLM2 (transformers, fp32, greedy): swapping A
and B in the input gives the mirrored label and the same strength; the verdict comes from the choice
tokens (they carry almost all the probability after the pre-fill); and over 4 real hh-rlhf pairs that
share 2 prompts, both prompt groups labelled at once, exactly one reference is requested per prompt
(requests counted through a wrapper around the real engine)."""
from __future__ import annotations

import asyncio

import pytest

from tasks.engines import EngineSpec, make_engine
from tasks.generators.preference_labels import program as pl
from tasks.generators.preference_labels import sources

pytestmark = pytest.mark.integration

# Real hh-rlhf harmless-base test rows (1-based lines): two prompts, each with two pairs.
SHARED_PROMPT_ROWS = (251, 1484, 1263, 1453)
CONFIG = pl.PreferenceConfig(temperature=0.0, samples_per_order=1, max_tokens=40)


class CountingEngine:
    """The real engine, with every request recorded (what the program asked for, not what it reports)."""

    def __init__(self, engine):
        self.engine, self.generate_calls, self.score_calls = engine, [], []

    async def generate(self, conversation, params):
        self.generate_calls.append((conversation, params))
        return await self.engine.generate(conversation, params)

    async def score(self, conversation, continuations):
        self.score_calls.append(conversation)
        return await self.engine.score(conversation, continuations)


def _label(groups, engine) -> list[dict]:
    async def run_all():
        return await asyncio.gather(*(pl.label_group(g, engine, CONFIG) for g in groups))

    return asyncio.run(run_all())


@pytest.fixture(scope="module")
def engine():
    # fp32: bit-for-bit repeatable, so "the same strength" can be checked exactly, not just within bf16 noise.
    engine = make_engine(EngineSpec(backend="transformers", device="cpu", dtype="float32", threads=1))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def hh_pairs(shared_data):
    pairs = sources.load_pairs(shared_data / "hh_rlhf" / "harmless-base" / "test.jsonl.gz").rows
    by_row = {p["source_row"]: p for p in pairs}
    return [by_row[row] for row in SHARED_PROMPT_ROWS]


def test_swapping_a_and_b_mirrors_the_label_with_the_same_strength(engine, hh_pairs):
    pair = hh_pairs[0]
    swapped = {**pair, "response_a": pair["response_b"], "response_b": pair["response_a"]}
    [forward] = _label(sources.group_by_prompt([dict(pair)]), engine)
    [mirrored] = _label(sources.group_by_prompt([swapped]), engine)
    f, m = forward["pairs"][0], mirrored["pairs"][0]
    assert m["chosen"] == {"a": "b", "b": "a", "tie": "tie"}[f["chosen"]]
    assert m["consistent"] == f["consistent"]
    assert m["strength"] == pytest.approx(f["strength"], abs=1e-9)
    assert m["p_a"] == pytest.approx(1 - f["p_a"], abs=1e-9)
    for j in f["judgments"]:
        assert j["verdict_source"] == "probs" and j["choice_mass"] > 0.5  # the pre-fill leads to " A" / " B"
        assert 0 < j["p_first"] < 1 and j["critique"]


def test_one_reference_per_prompt_on_real_pairs(engine, hh_pairs):
    counting = CountingEngine(engine)
    groups = _label(sources.group_by_prompt(hh_pairs), counting)
    assert [len(g["pairs"]) for g in groups] == [2, 2]
    # One reference request per prompt, one critique request per pair and order, one scoring per critique.
    references = [params for conv, params in counting.generate_calls if "[Response A]" not in conv[-1]["content"]]
    critiques = [params for conv, params in counting.generate_calls if "[Response A]" in conv[-1]["content"]]
    assert [(p.n, p.max_tokens) for p in references] == [(1, 40)] * 2
    assert [(p.n, p.max_tokens) for p in critiques] == [(1, 40)] * 8
    assert len(counting.score_calls) == 8
    for group in groups:
        assert group["reference"]  # shared by both pairs of the prompt
        assert [p["usage"]["requests"] for p in group["pairs"]] == [5, 4]  # 1 reference + 2 critiques + 2 verdicts
        assert group["engine_calls"] == 9
        for pair in group["pairs"]:
            assert pair["chosen"] in ("a", "b", "tie") and len(pair["judgments"]) == 2
