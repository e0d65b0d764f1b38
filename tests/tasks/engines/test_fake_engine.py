"""FakeEngine honours the Engine contract: n completions per conversation in order, scripted replies
cycled, stop strings cut, logprobs only when asked, every call recorded; make_engine builds it."""
from tasks.engines import EngineSpec, SamplingParams, make_engine
from tasks.engines.fake import FakeEngine

USER = [{"role": "user", "content": "two plus two"}]


def test_make_engine_builds_the_fake_and_cycles_replies():
    engine = make_engine(EngineSpec(backend="fake", model="fake", fake_replies=("a b", "c")))
    assert isinstance(engine, FakeEngine)
    out = engine.generate([USER, USER], SamplingParams(n=2))
    assert [[c.text for c in group] for group in out] == [["a b", "c"], ["a b", "c"]]
    assert out[0][0].completion_tokens == 2 and out[0][0].prompt_tokens == 3
    assert out[0][0].token_logprobs is None


def test_stop_strings_logprobs_and_call_log():
    engine = FakeEngine(replies=["x = 4\nprint(x)"])
    params = SamplingParams(stop=("\n",), logprobs=True)
    [[c]] = engine.generate([USER], params)
    assert c.text == "x = 4" and c.finish_reason == "stop"
    assert len(c.token_logprobs) == c.completion_tokens == 3
    assert engine.calls == [([USER], params)]


def test_scores_scripted_cycled_uniform_or_from_a_scorer():
    import math

    scripted = FakeEngine(EngineSpec(backend="fake", model="fake", fake_scores=((-0.1, -2.0), (-3.0, -0.2))))
    out = scripted.score_continuations([USER, USER, USER], [" A", " B"])
    assert [s.logprobs for s in out] == [[-0.1, -2.0], [-3.0, -0.2], [-0.1, -2.0]]
    assert out[0].prompt_tokens == 3
    assert scripted.score_calls == [([USER, USER, USER], (" A", " B"))]
    uniform = FakeEngine().score_continuations([USER], ["x", "y", "z"])
    assert uniform[0].logprobs == [math.log(1 / 3)] * 3
    by_content = FakeEngine(scorer=lambda conv, conts: [-len(conv[-1]["content"]), -1.0])
    assert by_content.score_continuations([USER], ["a", "b"])[0].logprobs == [-12, -1.0]
    import pytest

    with pytest.raises(ValueError, match="do not match"):
        scripted.score_continuations([USER], ["only one"])
