"""Proves the labelling step with the real embedded SmolLM2 (transformers, fp32, greedy): swapping A
and B in the input gives the mirrored label and the same strength; the verdict comes from the choice
tokens (they carry almost all the probability after the pre-fill); and over 4 real hh-rlhf pairs that
share 2 prompts, exactly one reference is generated per prompt in one batched call (engine calls
counted through a wrapper around the real engine)."""
from __future__ import annotations

import pytest

from tasks.engines import EngineSpec, make_engine
from tasks.generators.preference_labels import program as pl
from tasks.generators.preference_labels import sources

pytestmark = pytest.mark.integration

# Real hh-rlhf harmless-base test rows (1-based lines): two prompts, each with two pairs.
SHARED_PROMPT_ROWS = (251, 1484, 1263, 1453)
CONFIG = pl.PreferenceConfig(temperature=0.0, samples_per_order=1, max_tokens=40)


class CountingEngine:
    """The real engine, with every call recorded (what the step asked for, not what it reports)."""

    def __init__(self, engine):
        self.engine, self.generate_calls, self.score_calls = engine, [], []

    def generate(self, conversations, params):
        self.generate_calls.append((len(conversations), params))
        return self.engine.generate(conversations, params)

    def score_continuations(self, conversations, continuations):
        self.score_calls.append(len(conversations))
        return self.engine.score_continuations(conversations, continuations)


@pytest.fixture(scope="module")
def engine():
    # fp32: bit-for-bit repeatable, so "the same strength" can be checked exactly, not just within bf16 noise.
    engine = make_engine(EngineSpec(backend="transformers", device="cpu", dtype="float32", threads=1))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def hh_pairs(shared_data):
    pairs, _ = sources.load_pairs(shared_data / "hh_rlhf" / "harmless-base" / "test.jsonl.gz")
    by_row = {p["source_row"]: p for p in pairs}
    return [by_row[row] for row in SHARED_PROMPT_ROWS]


def test_swapping_a_and_b_mirrors_the_label_with_the_same_strength(engine, hh_pairs):
    pair = hh_pairs[0]
    swapped = {**pair, "response_a": pair["response_b"], "response_b": pair["response_a"]}
    [forward] = pl.label_groups(sources.group_by_prompt([dict(pair)]), engine, CONFIG)
    [mirrored] = pl.label_groups(sources.group_by_prompt([swapped]), engine, CONFIG)
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
    groups = pl.label_groups(sources.group_by_prompt(hh_pairs), counting, CONFIG)
    assert [len(g["pairs"]) for g in groups] == [2, 2]
    # One reference call for the 2 prompts, one critique call for 4 pairs x 2 orders, one scoring call.
    assert [(n, p.max_tokens) for n, p in counting.generate_calls] == [(2, 40), (8, 40)]
    assert counting.score_calls == [8]
    for group in groups:
        assert group["reference"]  # shared by both pairs of the prompt
        assert [p["usage"]["requests"] for p in group["pairs"]] == [5, 4]  # 1 reference + 2 critiques + 2 verdicts
        for pair in group["pairs"]:
            assert pair["chosen"] in ("a", "b", "tie") and len(pair["judgments"]) == 2
