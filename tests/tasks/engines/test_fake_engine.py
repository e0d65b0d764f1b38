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
