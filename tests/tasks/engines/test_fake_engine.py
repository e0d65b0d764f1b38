"""FakeEngine honours the async Engine contract: n completions per request, scripted replies cycled (or
written by a reply function from the prompt), stop strings cut, logprobs only when asked, every
request recorded; make_engine builds it."""
import asyncio
import math

import pytest

from tasks.engines import EngineSpec, SamplingParams, make_engine
from tasks.engines.fake import FakeEngine

USER = [{"role": "user", "content": "two plus two"}]


def test_make_engine_builds_the_fake_and_cycles_replies():
    engine = make_engine(EngineSpec(backend="fake", model="fake", fake_replies=("a b", "c")))
    assert isinstance(engine, FakeEngine)
    first, second = asyncio.run(_both(engine.generate(USER, SamplingParams(n=2)), engine.generate(USER, SamplingParams(n=2))))
    assert [c.text for c in first] == [c.text for c in second] == ["a b", "c"]
    assert first[0].completion_tokens == 2 and first[0].prompt_tokens == 3
    assert first[0].token_logprobs is None


async def _both(a, b):
    return await asyncio.gather(a, b)


def test_stop_strings_logprobs_and_call_log():
    engine = FakeEngine(replies=["x = 4\nprint(x)"])
    params = SamplingParams(stop=("\n",), logprobs=True)
    [c] = asyncio.run(engine.generate(USER, params))
    assert c.text == "x = 4" and c.finish_reason == "stop"
    assert len(c.token_logprobs) == c.completion_tokens == 3
    assert engine.calls == [(USER, params)]


def test_a_reply_function_answers_from_the_prompt():
    engine = FakeEngine(reply=lambda conversation, params: conversation[-1]["content"].upper())
    texts = asyncio.run(_both(engine.generate([{"role": "user", "content": "a"}], SamplingParams()),
                              engine.generate([{"role": "user", "content": "b"}], SamplingParams())))
    assert [[c.text for c in group] for group in texts] == [["A"], ["B"]]


def test_scores_scripted_cycled_uniform_or_from_a_scorer():
    scripted = FakeEngine(EngineSpec(backend="fake", model="fake", fake_scores=((-0.1, -2.0), (-3.0, -0.2))))
    out = [asyncio.run(scripted.score(USER, [" A", " B"])) for _ in range(3)]
    assert [s.logprobs for s in out] == [[-0.1, -2.0], [-3.0, -0.2], [-0.1, -2.0]]
    assert out[0].prompt_tokens == 3
    assert scripted.score_calls == [(USER, (" A", " B"))] * 3
    uniform = asyncio.run(FakeEngine().score(USER, ["x", "y", "z"]))
    assert uniform.logprobs == [math.log(1 / 3)] * 3
    by_content = FakeEngine(scorer=lambda conv, conts: [-len(conv[-1]["content"]), -1.0])
    assert asyncio.run(by_content.score(USER, ["a", "b"])).logprobs == [-12, -1.0]
    with pytest.raises(ValueError, match="do not match"):
        asyncio.run(scripted.score(USER, ["only one"]))
