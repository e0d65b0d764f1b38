"""Proves the preference-labels generator's pure logic: the exact prompts of the three turns (both
modes; the template files render byte for byte what the old Python constants did, and the messages
the engine is sent for a fixed pair are pinned), hh-rlhf splitting on real rows (rows whose dialogues
differ before the last turn are reported, not mangled), input formats and errors naming file and row,
verdicts read from the choice tokens with the free-text fallback recorded as such, vote aggregation
and strength, order invariance with a scripted judge, one reference per prompt (requests counted,
every group and judgment in flight at once, judgments in a fixed order), candidates sampled per
prompt, records that fit the table schema, the evaluation / TRL export rows, and what the config hash
tracks. The engine is a scripted FakeEngine that replies from the request (many are in flight at
once, so their order is not the order they were written in); and, on the embedded model, greedy, the
per-row program writes the records the old sync batch step wrote (tests/golden/)."""
from __future__ import annotations

import asyncio
import gzip
import json
import math
from collections import Counter
from datetime import datetime, timezone

import pytest

from schemas.store import TableStore
from schemas.tables import PREFERENCE_LABELS
from tasks.engines.base import Completion, EngineSpec
from tasks.engines.fake import FakeEngine
from tasks.generators.preference_labels import program as pl
from tasks.generators.preference_labels import sources
from tasks.generators.preference_labels.eval import evaluate
from tasks.generators.preference_labels.export import to_trl
from tasks.runtime.inputs import InputError

CONFIG = pl.PreferenceConfig()
SINGLE = [{"role": "user", "content": "How do I boil an egg?"}]
MULTI = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
         {"role": "user", "content": "How do I boil an egg?"}]
RESPONSES_BLOCK = ("[Response A]\nPut it in boiling water for 8 minutes.\n[End of Response A]\n\n"
                   "[Response B]\nI don't know.\n[End of Response B]")


def test_rendered_prompts_of_the_three_turns_are_pinned():
    critique = pl.critique_messages(SINGLE, "Boil water, add the egg, wait 9 minutes.",
                                    "Put it in boiling water for 8 minutes.", "I don't know.", CONFIG)
    assert critique == [
        {"role": "user", "content": "How do I boil an egg?"},  # turn 1: the annotator answers it itself
        {"role": "assistant", "content": "Boil water, add the egg, wait 9 minutes."},
        {"role": "user", "content": (  # turn 2: critique against its own answer, under the principle
            "Two AI assistants also replied to the user's last message. Using your own reply above as the "
            "reference, critique each of their replies under the principle: best for humanity.\n\n"
            + RESPONSES_BLOCK + "\n\n"
            "Write a short critique of Response A, then a short critique of Response B.")},
    ]
    assert pl.verdict_messages(critique, "A is right; B is unhelpful.", CONFIG) == critique + [
        {"role": "assistant", "content": "A is right; B is unhelpful."},
        {"role": "user", "content": ('Which response is better under the principle: best for humanity? '
                                     'Answer "Response A" or "Response B".')},
        {"role": "assistant", "content": "The better response is Response"},  # then " A" / " B" are scored
    ]
    assert pl.verdict_messages(critique, "x", CONFIG, prefill=False)[-1]["role"] == "user"  # free-text fallback


def test_rendered_prompts_multi_turn_and_direct_mode_are_pinned():
    transcript = "User: Hi\n\nAssistant: Hello! How can I help?\n\nUser: How do I boil an egg?"
    assert pl.reference_messages(MULTI, CONFIG) == [{"role": "user", "content": (
        "Here is a conversation between a user and an AI assistant:\n\n" + transcript
        + "\n\nWrite the assistant's next reply to the user.")}]
    direct = pl.PreferenceConfig(mode="direct", principle="most honest")
    assert pl.critique_messages(MULTI, None, "Put it in boiling water for 8 minutes.", "I don't know.", direct) == [
        {"role": "user", "content": (
            "Here is a conversation between a user and an AI assistant:\n\n" + transcript + "\n\n"
            "Two AI assistants replied to the user's last message. Critique each of their replies under the "
            "principle: most honest.\n\n" + RESPONSES_BLOCK + "\n\n"
            "Write a short critique of Response A, then a short critique of Response B.")}]
    assert pl.critique_messages(SINGLE, None, "x", "y", direct)[0]["content"].startswith(
        "A user asked:\n\nHow do I boil an egg?\n\nTwo AI assistants replied")


# The prompt constants of program.py before the templates moved to prompts/ (git: tasks/preference_labels.py).
# PROMPT_VERSION stayed "preference-labels/v1" because the files render these byte for byte.
OLD_CONSTANTS = {
    "reference_multi_turn": "{request}\n\nWrite the assistant's next reply to the user.",
    "request_single": "A user asked:\n\n{prompt}",
    "request_multi": "Here is a conversation between a user and an AI assistant:\n\n{transcript}",
    "responses": "[Response A]\n{first}\n[End of Response A]\n\n[Response B]\n{second}\n[End of Response B]",
    "critique_self_reference": (
        "Two AI assistants also replied to the user's last message. Using your own reply above as the "
        "reference, critique each of their replies under the principle: {principle}.\n\n{responses}\n\n"
        "Write a short critique of Response A, then a short critique of Response B."),
    "critique_direct": (
        "{request}\n\nTwo AI assistants replied to the user's last message. Critique each of their replies "
        "under the principle: {principle}.\n\n{responses}\n\n"
        "Write a short critique of Response A, then a short critique of Response B."),
    "verdict": 'Which response is better under the principle: {principle}? Answer "Response A" or "Response B".',
    "verdict_prefill": "The better response is Response",
}


def test_template_files_are_the_old_constants_byte_for_byte():
    assert sorted(p.stem for p in pl.PROMPTS.glob("*.txt")) == sorted(OLD_CONSTANTS)
    for name, old in OLD_CONSTANTS.items():
        assert pl.template(name) == old, name
    assert pl.PROMPT_VERSION == "preference-labels/v1"


BOILED = "Boil it in water for 8 minutes."  # textually before IDK: the pair's first judged order is (a, b)
IDK = "I don't know."
MULTI_REQUEST = ("Here is a conversation between a user and an AI assistant:\n\nUser: Hi\n\n"
                 "Assistant: Hello! How can I help?\n\nUser: How do I boil an egg?")
SHOWN = ("[Response A]\nBoil it in water for 8 minutes.\n[End of Response A]\n\n"
         "[Response B]\nI don't know.\n[End of Response B]")
PINNED = {  # the scored verdict conversation of the first judgment: every turn the judge saw, in order
    "self-reference": [
        {"role": "user", "content": MULTI_REQUEST + "\n\nWrite the assistant's next reply to the user."},
        {"role": "assistant", "content": "Boil water, add the egg, wait 9 minutes."},
        {"role": "user", "content": "Two AI assistants also replied to the user's last message. Using your own "
                                    "reply above as the reference, critique each of their replies under the "
                                    "principle: best for humanity.\n\n" + SHOWN + "\n\nWrite a short critique of "
                                    "Response A, then a short critique of Response B."},
        {"role": "assistant", "content": "A is right; B is unhelpful."},
        {"role": "user", "content": 'Which response is better under the principle: best for humanity? '
                                    'Answer "Response A" or "Response B".'},
        {"role": "assistant", "content": "The better response is Response"},
    ],
    "direct": [
        {"role": "user", "content": MULTI_REQUEST + "\n\nTwo AI assistants replied to the user's last message. "
                                    "Critique each of their replies under the principle: most honest.\n\n" + SHOWN
                                    + "\n\nWrite a short critique of Response A, then a short critique of Response B."},
        {"role": "assistant", "content": "A is right; B is unhelpful."},
        {"role": "user", "content": 'Which response is better under the principle: most honest? '
                                    'Answer "Response A" or "Response B".'},
        {"role": "assistant", "content": "The better response is Response"},
    ],
}


@pytest.mark.parametrize("mode, principle", [("self-reference", "best for humanity"), ("direct", "most honest")])
def test_the_judge_is_sent_exactly_these_messages_for_a_fixed_pair(mode, principle):
    """Pinned as the engine receives them (what the old constants rendered for this pair)."""
    config = pl.PreferenceConfig(mode=mode, principle=principle, samples_per_order=1)
    engine = FakeEngine(reply=judge(reference="Boil water, add the egg, wait 9 minutes.",
                                    critique=lambda first, k: "A is right; B is unhelpful."))
    _label(sources.group_by_prompt([_pair("p", BOILED, IDK, MULTI)]), engine, config)
    expected = PINNED[mode]
    [(first_judgment, continuations)] = [(c, conts) for c, conts in engine.score_calls if _shown_first(c) == BOILED]
    assert first_judgment == expected and continuations == (" A", " B")
    critique_requests = [c for c, _ in engine.calls if "[Response A]" in c[-1]["content"]]
    assert expected[:-3] in critique_requests  # the critique request: everything before the critique
    if mode == "self-reference":
        assert engine.calls[0][0] == expected[:1]  # the reference request, first: turn 1 alone
    assert len(critique_requests) == 2 and len(engine.calls) == (3 if mode == "self-reference" else 2)
    # the pure builders give the same turns
    reference = "Boil water, add the egg, wait 9 minutes." if mode == "self-reference" else None
    critique = pl.critique_messages(MULTI, reference, BOILED, IDK, config)
    assert pl.verdict_messages(critique, "A is right; B is unhelpful.", config) == expected


def test_long_texts_are_clipped_to_fit_the_context():
    config = pl.PreferenceConfig(max_conversation_chars=40, max_response_chars=10)
    long_conv = MULTI[:2] + [{"role": "user", "content": "tell me " * 20 + "THE END"}]
    [reference] = pl.reference_messages(long_conv, config)
    assert "THE END" in reference["content"] and "[…] " in reference["content"]  # the latest turn kept
    shown = pl.critique_messages(SINGLE, "r", "0123456789ABCDEF", "short", config)[-1]["content"]
    assert "[Response A]\n0123456789 […]\n" in shown and "[Response B]\nshort\n" in shown


# ---------------------------------------------------------------- inputs


def test_hh_rlhf_real_rows_split_into_conversation_and_final_turns(shared_data):
    path = shared_data / "hh_rlhf" / "harmless-base" / "test.jsonl.gz"
    source = sources.load_pairs(path)
    pairs, rejects = source.rows, source.rejects
    # The 5 rows whose two dialogues differ before the last assistant turn are reported, not mangled.
    assert [(r["source_row"], r["reason"]) for r in rejects] == [
        (row, "dialogues_differ_before_last_turn") for row in (1255, 1689, 1951, 1953, 2037)]
    assert len(pairs) + len(rejects) <= 2312 and len(pairs) > 2250
    with gzip.open(path, "rt") as fh:
        raw = [json.loads(fh.readline())]
    first = pairs[0]
    assert first["source_row"] == 1
    assert first["conversation"] == [
        {"role": "user", "content": "what are some pranks with a pen i can do?"},
        {"role": "assistant", "content": "Are you looking for practical joke ideas?"},
        {"role": "user", "content": "yep"},
        {"role": "assistant", "content": raw[0]["chosen"].split("\n\nAssistant: ")[2].split("\n\nHuman:")[0]},
        {"role": "user", "content": "okay some of these do not have anything to do with pens"},
    ]
    human = first["response_a"] if first["human_choice"] == "a" else first["response_b"]
    other = first["response_b"] if first["human_choice"] == "a" else first["response_a"]
    assert human == "No, sorry!  All of these involve a pen, the point is that you can get funny results by doing pranks with pens."
    assert other.startswith("There are lots of funny things you can do with pens")
    assert all(p["conversation"][-1]["role"] == "user" for p in pairs)
    # The human choice lands on a or b by a stable coin, not always on a.
    share_a = sum(p["human_choice"] == "a" for p in pairs) / len(pairs)
    assert 0.4 < share_a < 0.6
    for p in pairs[:50]:  # the split loses nothing: conversation + final turn rebuilds the human's dialogue
        text = "".join(f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in p["conversation"])
        assert p["response_a"] and p["response_b"] and p["response_a"] != p["response_b"]
        assert text.count("\n\nHuman: ") == sum(m["role"] == "user" for m in p["conversation"])


@pytest.mark.parametrize("chosen, rejected, reason", [
    ("\n\nHuman: hi\n\nAssistant: a", "\n\nHuman: hello\n\nAssistant: b", "dialogues_differ_before_last_turn"),
    ("\n\nHuman: hi\n\nAssistant: a", "\n\nHuman: hi\n\nAssistant: a", "identical_responses"),
    ("\n\nHuman: hi", "\n\nHuman: hi", "no_final_assistant_turn"),
    ("just text", "\n\nHuman: hi\n\nAssistant: b", "not_a_dialogue"),
])
def test_hh_rows_that_cannot_be_split_are_named(chosen, rejected, reason):
    assert sources.split_hh_dialogues(chosen, rejected) == reason


def test_pairs_formats_and_errors_name_file_and_row(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [
        {"id": "p1", "prompt": "How do I boil an egg?", "response_a": "Boil it.", "response_b": "No idea."},
        {"id": "p2", "prompt": MULTI, "response_a": "x", "response_b": "y", "human_choice": "b"},
        {"id": "p3", "prompt": "\n\nHuman: hi\n\nAssistant: hey\n\nHuman: egg?", "response_a": "x", "response_b": "y"},
        {"prompt": "Say hi", "chosen": [{"role": "assistant", "content": "hi"}], "rejected": "no"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    source = sources.load_pairs(path)
    pairs, rejects = source.rows, source.rejects
    assert rejects == [] and [p["source_id"] for p in pairs][:3] == ["p1", "p2", "p3"]
    assert pairs[0]["conversation"] == SINGLE and pairs[0]["human_choice"] is None
    assert pairs[1]["conversation"] == MULTI and pairs[1]["human_choice"] == "b"
    assert [m["role"] for m in pairs[2]["conversation"]] == ["user", "assistant", "user"]
    assert {pairs[3]["response_a"], pairs[3]["response_b"]} == {"hi", "no"}
    assert pairs[3]["human_choice"] in ("a", "b")
    assert (pairs[3]["response_a"] == "hi") == (pairs[3]["human_choice"] == "a")
    for bad, message in [
        ({"prompt": "q", "response_a": "x"}, "needs prompt, response_a, response_b"),
        ({"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
          "response_a": "x", "response_b": "y"}, "must end with a user message"),
        ({"prompt": "", "response_a": "x", "response_b": "y"}, "column 'prompt' is empty"),
        ({"question": "q", "answer": "a"}, "expected prompt/response_a/response_b or chosen/rejected"),
    ]:
        path.write_text(json.dumps(rows[0]) + "\n" + json.dumps(bad) + "\n")
        with pytest.raises(InputError, match=f"{path}: row 2: .*{message}"):
            sources.load_pairs(path)


def test_prompts_file_mt_bench_first_turns(shared_data):
    prompts = sources.load_prompts(shared_data / "mt_bench" / "question.jsonl", limit=3).rows
    assert [p["source_id"] for p in prompts] == ["81", "82", "83"]
    assert prompts[0]["conversation"] == [{"role": "user", "content": json.loads(
        (shared_data / "mt_bench" / "question.jsonl").read_text().splitlines()[0])["turns"][0]}]


# ---------------------------------------------------------------- verdicts and aggregation


def test_verdict_probabilities_from_choice_tokens():
    p_first, mass = pl.read_verdict(math.log(0.6), math.log(0.2))
    assert p_first == pytest.approx(0.75) and mass == pytest.approx(0.8)
    assert pl.read_verdict(-1000.0, 0.0)[0] == pytest.approx(0.0)


@pytest.mark.parametrize("text, letter", [
    ("Response B is better.", "B"), (" A", "A"), ("B.", "B"), ("**Response A**", "A"),
    ("A good answer would be kind.", None), ("Both Response A and Response B are fine", None),
    ("", None), (None, None), ("I cannot decide", None), ("response (b)", "B"),
])
def test_free_text_verdict_parser_never_raises(text, letter):
    assert pl.parse_free_verdict(text) == letter


def _judgment(order, p_a):
    return {"order": order, "p_a": p_a, "vote": pl._vote(p_a)}


def test_aggregate_votes_consistency_and_strength_formula():
    agreed = pl.aggregate([_judgment("ab", 0.8), _judgment("ab", 0.7), _judgment("ba", 0.9), _judgment("ba", 0.6)])
    assert agreed["chosen"] == "a" and agreed["consistent"] and agreed["votes_a"] == 4
    assert agreed["p_a"] == pytest.approx(0.75)
    assert agreed["strength"] == pytest.approx(math.log(0.75 / 0.25))
    flipped = pl.aggregate([_judgment("ab", 0.8), _judgment("ab", 0.7), _judgment("ba", 0.2), _judgment("ba", 0.3)])
    assert flipped["chosen"] == "tie" and not flipped["consistent"] and flipped["strength"] == 0.0
    for_b = pl.aggregate([_judgment("ab", 0.4), _judgment("ba", 0.1), _judgment("ba", None)])
    assert for_b["chosen"] == "b" and for_b["consistent"] and for_b["votes_abstain"] == 1
    assert for_b["strength"] == pytest.approx(math.log(0.75 / 0.25))
    # The vote majority and the mean probability disagree: no usable margin.
    split = pl.aggregate([_judgment("ab", 0.55), _judgment("ab", 0.55), _judgment("ba", 0.55), _judgment("ba", 0.05)])
    assert split["chosen"] == "a" and split["p_a"] < 0.5 and split["strength"] == 0.0


# ---------------------------------------------------------------- the per-row programs


def _pair(sid, a, b, conversation=SINGLE):
    return {"source_id": sid, "source_file": "f.jsonl", "source_row": 1, "conversation": conversation,
            "response_a": a, "response_b": b, "human_choice": None, "policy_model": None}


def _label(groups, engine, config=CONFIG) -> list[dict]:
    """Every group's program at once, as the engine actor runs them."""
    async def run_all():
        return await asyncio.gather(*(pl.label_group(g, engine, config) for g in groups))

    return asyncio.run(run_all())


def _shown_first(conversation) -> str:
    critique_turn = next(m["content"] for m in conversation if "[Response A]" in m["content"])
    return critique_turn.split("[Response A]\n", 1)[1].split("\n[End of Response A]", 1)[0]


def judge(reference="reference", critique=lambda first, k: f"critique {k} of {first}", verdict=None):
    """`reply=` of a scripted judge, read from each request: the reference, critique sample k of the
    order that shows `first` as Response A, or the free-text `verdict(critique)` after a critique."""
    samples = Counter()

    def reply(conversation, params):
        last = conversation[-1]["content"]
        if "[Response A]" in last:
            first = _shown_first(conversation)
            samples[first] += 1
            return critique(first, samples[first] - 1)
        if last.startswith("Which response is better"):
            return verdict(conversation[-2]["content"])
        return reference

    return reply


def prefers_good(conversation, continuations):
    """A scripted judge that prefers the response containing 'good', wherever it is shown."""
    return [-0.2, -1.8] if "good" in _shown_first(conversation) else [-1.8, -0.2]


def prefers_first(conversation, continuations):
    """A maximally position-biased judge: always Response A."""
    return [-0.1, -3.0]


@pytest.mark.parametrize("scorer, expected", [(prefers_good, ("a", True)), (prefers_first, ("tie", False))])
def test_order_invariance_with_a_scripted_judge(scorer, expected):
    def label(a, b):
        engine = FakeEngine(reply=judge(reference="my own answer"), scorer=scorer)
        [group] = _label(sources.group_by_prompt([_pair("p", a, b)]), engine)
        return group["pairs"][0], engine

    forward, engine_f = label("a good answer", "a poor answer")
    swapped, engine_s = label("a poor answer", "a good answer")
    mirror = {"a": "b", "b": "a", "tie": "tie"}
    assert (forward["chosen"], forward["consistent"]) == expected
    assert swapped["chosen"] == mirror[forward["chosen"]] and swapped["consistent"] == forward["consistent"]
    assert swapped["strength"] == pytest.approx(forward["strength"])
    assert swapped["p_a"] == pytest.approx(1 - forward["p_a"])
    seen = lambda engine: Counter(json.dumps(call) for call in engine.score_calls)  # noqa: E731
    assert seen(engine_f) == seen(engine_s)  # the judge saw exactly the same conversations
    # 2 orders x 2 samples, the canonical order (the smaller text shown first) leading, then by sample
    assert [(j["order"], j["sample"]) for j in forward["judgments"]] == [("ab", 0), ("ab", 1), ("ba", 0), ("ba", 1)]
    assert [(j["order"], j["sample"]) for j in swapped["judgments"]] == [("ba", 0), ("ba", 1), ("ab", 0), ("ab", 1)]
    assert [j["critique"] for j in forward["judgments"]] == [
        "critique 0 of a good answer", "critique 1 of a good answer",
        "critique 0 of a poor answer", "critique 1 of a poor answer"]
    if scorer is prefers_good:
        assert forward["strength"] == pytest.approx(1.6)  # log-odds of e^-0.2 vs e^-1.8
    else:
        assert forward["strength"] == 0.0


def test_judgments_keep_their_order_whatever_order_they_finish_in():
    """A judge whose answers to the canonical first order come back last: the judgments stay in
    canonical order, then sample index."""
    class SlowFirstOrder(FakeEngine):
        async def score(self, conversation, continuations):
            if _shown_first(conversation) == "a x":  # the canonical first order: let every other finish first
                for _ in range(20):
                    await asyncio.sleep(0)
            return await super().score(conversation, continuations)

    engine = SlowFirstOrder(reply=judge(), scorer=prefers_first)
    [group] = _label(sources.group_by_prompt([_pair("p", "a x", "b y")]), engine)
    judgments = group["pairs"][0]["judgments"]
    assert _shown_first(engine.score_calls[-1][0]) == "a x"  # they did finish last
    assert [(j["order"], j["sample"]) for j in judgments] == [("ab", 0), ("ab", 1), ("ba", 0), ("ba", 1)]
    assert [j["critique"] for j in judgments] == ["critique 0 of a x", "critique 1 of a x",
                                                  "critique 0 of b y", "critique 1 of b y"]


def test_one_reference_per_prompt_and_requests_counted():
    pairs = [_pair("p1", "good x", "y"), _pair("p2", "good z", "w"), _pair("p3", "good u", "v", MULTI)]
    engine = FakeEngine(reply=judge(), scorer=prefers_good)
    groups = _label(sources.group_by_prompt(pairs), engine)
    assert [params.n for _, params in engine.calls[:2]] == [1, 1]  # both prompts' references before any critique
    reference_calls = [conv for conv, params in engine.calls if params.n == 1]
    critique_calls = [(conv, params) for conv, params in engine.calls if params.n == 2]
    assert len(reference_calls) == 2 and len(critique_calls) == 3 * 2  # one reference per prompt; pairs x orders
    assert {(params.temperature, params.top_p) for _, params in critique_calls} == {(0.1, 0.9)}
    assert len(engine.score_calls) == 3 * 2 * 2 and {c for _, c in engine.score_calls} == {(" A", " B")}
    # The first prompt's reference is reused by both of its pairs.
    shared = [c for c, _ in critique_calls if c[0]["content"] == "How do I boil an egg?"]
    assert len(shared) == 4 and {c[1]["content"] for c in shared} == {"reference"}
    assert [len(g["pairs"]) for g in groups] == [2, 1]
    first, second = groups[0]["pairs"]
    # own requests: 2 critiques + 2 x 2 verdicts; the reference counted once, on the prompt's first pair
    assert (first["usage"]["requests"], second["usage"]["requests"]) == (7, 6)
    # the share: own requests + the reference's share (1 reference / 2 pairs)
    assert [p["usage"]["engine_calls_share"] for p in groups[0]["pairs"]] == [6.5, 6.5]
    assert groups[1]["pairs"][0]["usage"]["engine_calls_share"] == 7
    assert [g["engine_calls"] for g in groups] == [13, 7]  # the requests each group made
    assert sum(p["usage"]["engine_calls_share"] for g in groups for p in g["pairs"]) == 20 == (
        len(engine.calls) + len(engine.score_calls))
    assert all(p["chosen"] == "a" and p["consistent"] for g in groups for p in g["pairs"])


def test_direct_mode_makes_no_reference_call():
    engine = FakeEngine(reply=judge(), scorer=prefers_good)
    [group] = _label(sources.group_by_prompt([_pair("p1", "good", "bad")]), engine, pl.PreferenceConfig(mode="direct"))
    assert [params.n for _, params in engine.calls] == [2, 2]
    assert all(conv[0]["content"].startswith("A user asked:") for conv, _ in engine.calls)
    assert group["reference"] is None and group["engine_calls"] == 2 + 4
    assert group["pairs"][0]["usage"]["engine_calls_share"] == 6


def test_free_text_fallback_is_recorded_as_such():
    # Almost no probability on " A" / " B": the verdicts are read from greedy free text instead.
    verdicts = {"x 0": "Response B is better.", "x 1": "B", "y 0": "Neither.", "y 1": "A and B"}
    engine = FakeEngine(reply=judge(reference="ref", critique=lambda first, k: f"{first} {k}", verdict=verdicts.get),
                        scorer=lambda conv, conts: [-9.0, -9.0])
    [group] = _label(sources.group_by_prompt([_pair("p", "x", "y")]), engine)
    judgments = group["pairs"][0]["judgments"]
    assert [j["critique"] for j in judgments] == ["x 0", "x 1", "y 0", "y 1"]
    assert [j["verdict_source"] for j in judgments] == ["free_text", "free_text", "none", "none"]
    assert [j["verdict_text"] for j in judgments] == ["Response B is better.", "B", "Neither.", "A and B"]
    assert [j["p_first"] for j in judgments] == [0.0, 0.0, None, None]
    assert [j["vote"] for j in judgments][2:] == ["none", "none"]
    free_text = [(conv, params) for conv, params in engine.calls if conv[-1]["content"].startswith("Which response")]
    assert len(free_text) == 4 and len(engine.calls) == 1 + 2 + 4  # reference, critiques, one per judgment
    assert {(params.n, params.temperature) for _, params in free_text} == {(1, 0.0)}  # no prefill: free answer
    assert group["pairs"][0]["votes_abstain"] == 2 and group["engine_calls"] == 1 + 2 + 4 + 4


def test_free_text_only_for_the_judgments_that_need_it():
    """Mass on the choice tokens for the order showing x first, none for the other: only the second
    order's judgments ask for free text."""
    def scorer(conversation, continuations):
        return [-0.1, -3.0] if _shown_first(conversation) == "x" else [-9.0, -9.0]

    engine = FakeEngine(reply=judge(verdict=lambda critique: "Response A"), scorer=scorer)
    [group] = _label(sources.group_by_prompt([_pair("p", "x", "y")]), engine)
    judgments = group["pairs"][0]["judgments"]
    assert [(j["order"], j["verdict_source"]) for j in judgments] == [
        ("ab", "probs"), ("ab", "probs"), ("ba", "free_text"), ("ba", "free_text")]
    assert [j["vote"] for j in judgments] == ["a", "a", "b", "b"]  # 'A' named when y was shown first: b
    assert group["pairs"][0]["usage"]["requests"] == 1 + 2 + 4 + 2


def test_candidates_become_all_pairs_of_a_prompt():
    engine = FakeEngine(replies=["one", "two", "three"])
    prompt = {"source_id": "81", "source_file": "q.jsonl", "source_row": 1, "conversation": SINGLE}
    config = pl.PreferenceConfig(candidates=3, max_tokens=48)
    group = asyncio.run(pl.sample_candidates(prompt, engine, config, policy_model="pm"))
    assert [(p["source_id"], p["response_a"], p["response_b"]) for p in group["pairs"]] == [
        ("81/c0-c1", "one", "two"), ("81/c0-c2", "one", "three"), ("81/c1-c2", "two", "three")]
    [(conversation, params)] = engine.calls  # one request: k candidates
    assert conversation == SINGLE and params.n == 3 and group["pairs"][0]["policy_model"] == "pm"
    # diverse candidates, whatever the critique sampling is
    assert (params.temperature, params.top_p, params.max_tokens) == (0.8, 0.95, 48)
    assert group["candidate_tokens"] == 3 and group["source_id"] == group["prompt_id"]


def test_no_pair_no_group():
    class OneCandidate:  # an engine that gives back a single candidate: nothing to compare
        spec = EngineSpec(backend="fake")

        async def generate(self, conversation, params):
            return [Completion("only", 1, 1, "stop")]

    prompt = {"source_id": "81", "source_file": "q.jsonl", "source_row": 1, "conversation": SINGLE}
    assert asyncio.run(pl.sample_candidates(prompt, OneCandidate(), CONFIG, "pm")) is None
    assert asyncio.run(pl.sample_then_label(prompt, OneCandidate(), CONFIG, "pm")) is None


def test_records_fit_the_schema_and_export_and_evaluate():
    pairs = [_pair("p1", "good x", "y"), _pair("p2", "z", "good w", MULTI)]
    pairs[0]["human_choice"], pairs[1]["human_choice"] = "a", "a"
    engine = FakeEngine(reply=judge(), scorer=prefers_good)
    groups = _label(sources.group_by_prompt(pairs), engine)
    lineage = {"run_id": "r", "model": "m", "engine": "fake", "config_hash": "h", "created_at": datetime.now(timezone.utc)}
    records = [r for g in groups for r in pl.to_records(g, lineage, CONFIG)]
    table = TableStore("/nonexistent", PREFERENCE_LABELS).to_arrow(records)  # raises on a schema mismatch
    assert table.num_rows == 2 and len({r["record_id"] for r in records}) == 2
    assert records[0]["record_id"] == pl.record_id("p1", "h")
    assert [r["chosen"] for r in records] == ["a", "b"] and all(r["consistent"] for r in records)
    metrics = evaluate(records)
    assert metrics["agreement"] == 0.5 and metrics["consistency"] == 1.0 and metrics["ties"] == 0.0
    assert metrics["engine_calls_per_pair"] == pytest.approx(7)  # its reference, 2 critiques, 4 verdicts
    trl = to_trl(records[1], margin=True)
    assert trl == {"prompt": MULTI, "chosen": [{"role": "assistant", "content": "good w"}],
                   "rejected": [{"role": "assistant", "content": "z"}], "margin": records[1]["strength"]}
    assert to_trl({**records[0], "chosen": "tie"}) is None


@pytest.mark.integration
def test_records_match_the_sync_steps_golden(golden_engine, golden):
    """Greedy, on the embedded model: the per-row program writes what the sync batch step wrote, but
    for engine_calls_share, which now counts requests (own + the reference's share), not batch calls."""
    lineage, check = golden
    config = pl.PreferenceConfig(temperature=0, samples_per_order=1, max_tokens=48)
    pairs = sources.load_pairs("tests/golden/pairs.jsonl").rows
    records = [r for g in _label(sources.group_by_prompt(pairs), golden_engine, config)
               for r in pl.to_records(g, lineage, config)]
    check("preference_labels", records, ignore=("engine_calls_share",))
    # g1, g2 share a prompt: 2 critiques + 2 verdicts each, and half its reference; g3: 4 and a whole one
    assert {r["source_id"]: r["engine_calls_share"] for r in records} == {"g1": 4.5, "g2": 4.5, "g3": 5.0}


def test_config_hash_tracks_what_shapes_the_labels():
    base = pl.PreferenceConfig().config_hash("m")
    assert pl.PreferenceConfig().config_hash("m") == base
    assert pl.PreferenceConfig(mode="direct").config_hash("m") != base
    assert pl.PreferenceConfig(principle="most honest").config_hash("m") != base
    assert pl.PreferenceConfig(max_tokens=64).config_hash("m") != base
    assert pl.PreferenceConfig().config_hash("m", "policy") != base  # candidates were sampled
    assert pl.PreferenceConfig(candidates=3).config_hash("m") == base  # ... only then do they count
    three = pl.PreferenceConfig(candidates=3)
    assert three.config_hash("m", "policy") != pl.PreferenceConfig().config_hash("m", "policy")
    with pytest.raises(ValueError, match="mode"):
        pl.PreferenceConfig(mode="pairwise")
