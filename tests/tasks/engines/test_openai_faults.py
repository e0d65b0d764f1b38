"""Proves the OpenAI engine's failure handling against real HTTP on 127.0.0.1 (a scripted OpenAI-shaped
server, tests/endpoint_servers.py): 429 waits for Retry-After and cuts the window, 5xx and timeouts
are retried with back-off, a request still failing after its retries is one `request_failed` answer
(never an exception), a context overflow is `prompt_too_long`, a wrong key or model fails at once with
a clear error, the key travels only in the Authorization header (never in the spec, stats or log), and
every generator's per-row program turns `request_failed` into a dropped row with that reason. The real
server (`vllm serve`) and a fault proxy in front of it: test_openai_engine.py, tests/flows/test_openai_flow.py."""
from __future__ import annotations

import asyncio
import logging
import math
import time

import pytest

from endpoint_servers import ScriptedServer, chat_answer
from tasks.engines import EngineSpec, SamplingParams
from tasks.engines.base import request_failed, unscorable
from tasks.engines.fake import FakeEngine
from tasks.engines.openai_engine import EndpointError, OpenAIEngine, endpoint_problem

CONV = [{"role": "user", "content": "2+2?"}]


def engine_for(server, **spec) -> OpenAIEngine:
    return OpenAIEngine(EngineSpec(backend="openai", base_url=server.url + "/v1", model="m", **spec))


def run(coro):
    return asyncio.run(coro)


def test_429_waits_for_retry_after_and_cuts_the_window():
    def script(body, i):
        if i == 0:
            return 429, {"error": {"message": "slow down"}}, {"Retry-After": "1"}
        return 200, chat_answer(["four"]), {}

    with ScriptedServer(script) as server:
        engine = engine_for(server, requests_in_flight=8)
        t0 = time.monotonic()
        [c] = run(engine.generate(CONV, SamplingParams(max_tokens=4)))
        waited = time.monotonic() - t0
    assert c.text == "four" and c.finish_reason == "stop" and c.completion_tokens == 1
    stats = engine.stats.snapshot()
    assert (stats["http_requests"], stats["retries"], stats["throttled"], stats["failed"]) == (2, 1, 1, 0)
    assert waited >= 1.0 and server.seen[1]["at"] - server.seen[0]["at"] >= 1.0
    assert engine.gate.limiter.cuts == 1 and stats["limit"] < 8


def test_server_errors_and_timeouts_are_retried_then_answered():
    def script(body, i):
        if i in (0, 1):
            return 500, {"error": {"message": "boom"}}, {}
        if i == 2:
            time.sleep(1.5)  # past the client's 1 s timeout
        return 200, chat_answer(["ok"]), {}

    with ScriptedServer(script) as server:
        engine = engine_for(server, request_timeout=1.0)
        [c] = run(engine.generate(CONV, SamplingParams(max_tokens=4)))
    assert c.text == "ok"
    stats = engine.stats.snapshot()
    assert (stats["server_errors"], stats["timeouts"], stats["retries"], stats["failed"]) == (2, 1, 3, 0)


def test_a_request_failing_after_its_retries_is_a_request_failed_answer(caplog):
    with ScriptedServer(lambda body, i: (503, {"error": {"message": "down"}}, {})) as server:
        engine = engine_for(server, max_retries=2)
        with caplog.at_level(logging.WARNING):
            group = run(engine.generate(CONV, SamplingParams(n=3, temperature=0.7, max_tokens=4)))
            scores = run(engine.score(CONV, [" A", " B"]))
    assert [(c.text, c.finish_reason) for c in group] == [("", "request_failed")] * 3
    assert scores.logprobs == [-math.inf, -math.inf]
    stats = engine.stats.snapshot()
    assert (stats["http_requests"], stats["retries"], stats["failed"]) == (6, 4, 2)
    assert "HTTP 503" in caplog.text


def test_a_context_overflow_is_prompt_too_long_and_not_retried():
    message = {"error": {"message": "This model's maximum context length is 2048 tokens. However, you requested "
                                    "4000 tokens (3900 in the messages, 100 in the completion)."}}
    with ScriptedServer(lambda body, i: (400, message, {})) as server:
        engine = engine_for(server)
        group = run(engine.generate(CONV, SamplingParams(n=2, temperature=0.5, max_tokens=100)))
    assert [(c.finish_reason, c.prompt_tokens) for c in group] == [("prompt_too_long", 3900)] * 2
    assert engine.stats.retries == 0 and engine.stats.failed == 0


@pytest.mark.parametrize("status", [401, 403, 404])
def test_a_wrong_key_url_or_model_fails_at_once(status):
    with ScriptedServer(lambda body, i: (status, {"error": {"message": "no"}}, {})) as server:
        engine = engine_for(server)
        with pytest.raises(EndpointError, match=f"HTTP {status}"):
            run(engine.generate(CONV, SamplingParams()))
    assert engine.stats.retries == 0


def test_the_key_goes_only_into_the_authorization_header(monkeypatch, caplog):
    secret = "sk-test-7f3a9c-never-logged"
    monkeypatch.setenv("DATAGEN_TEST_KEY", secret)
    with ScriptedServer(lambda body, i: (500 if i == 0 else 200, chat_answer(["hi"]), {})) as server:
        engine = engine_for(server, api_key_env="DATAGEN_TEST_KEY")
        with caplog.at_level(logging.DEBUG):
            run(engine.generate(CONV, SamplingParams()))
    assert {e["headers"].get("Authorization") for e in server.seen} == {f"Bearer {secret}"}
    assert secret not in repr(engine.spec) and secret not in repr(engine.stats.snapshot())
    assert secret not in caplog.text and all(secret not in e["body"].decode() for e in server.seen)


def test_a_missing_key_variable_fails_before_any_request(monkeypatch):
    monkeypatch.delenv("DATAGEN_TEST_NO_KEY", raising=False)
    with pytest.raises(EndpointError, match="DATAGEN_TEST_NO_KEY"):
        OpenAIEngine(EngineSpec(backend="openai", base_url="http://127.0.0.1:9/v1", model="m",
                                api_key_env="DATAGEN_TEST_NO_KEY"))


def test_greedy_n_asks_once_and_a_short_answer_is_a_failed_request():
    with ScriptedServer(lambda body, i: (200, chat_answer(["same"] * body["n"]), {})) as server:
        engine = engine_for(server)
        greedy = run(engine.generate(CONV, SamplingParams(n=3, max_tokens=4, logprobs=True)))
    assert [c.text for c in greedy] == ["same"] * 3 and greedy[0].token_logprobs == [-0.5]
    assert greedy[0] is not greedy[1]
    with ScriptedServer(lambda body, i: (200, chat_answer(["only one"]), {})) as server:
        engine = engine_for(server)
        short = run(engine.generate(CONV, SamplingParams(n=2, temperature=1.0, max_tokens=4)))
    assert [c.finish_reason for c in short] == ["request_failed"] * 2


def test_a_prefill_is_sent_as_a_continued_final_message():
    with ScriptedServer(lambda body, i: (200, chat_answer(["x"]), {})) as server:
        engine = engine_for(server)
        run(engine.generate(CONV + [{"role": "assistant", "content": "The answer is"}], SamplingParams()))
        run(engine.generate(CONV, SamplingParams()))
    import json

    first, second = (json.loads(e["body"]) for e in server.seen)
    assert first["continue_final_message"] is True and first["add_generation_prompt"] is False
    assert first["messages"][-1] == {"role": "assistant", "content": "The answer is"}
    assert "continue_final_message" not in second


def test_scoring_reads_top_logprobs_or_says_it_cannot():
    def script(body, i):
        top = [{"token": " A", "logprob": -0.2}, {"token": " B", "logprob": -1.9}]
        answer = chat_answer(["A"])
        answer["choices"][0]["logprobs"]["content"] = [{"token": " A", "logprob": -0.2, "top_logprobs": top}]
        return 200, answer, {}

    with ScriptedServer(script) as server:  # not vLLM: it has no /version or /tokenize
        engine = engine_for(server)
        scores = run(engine.score(CONV, [" A", " B"]))
        assert scores.logprobs == [-0.2, -1.9]
        with pytest.raises(EndpointError, match="prompt_logprobs"):
            run(engine.score(CONV, [" A", " C"]))


def test_endpoint_problem_names_what_is_wrong(monkeypatch):
    with ScriptedServer(lambda body, i: (200, {}, {}), models=("smol",)) as server:
        assert endpoint_problem(server.url + "/v1", "smol", None) is None
        assert "does not serve model 'big'" in endpoint_problem(server.url + "/v1", "big", None)
        monkeypatch.delenv("DATAGEN_TEST_NO_KEY", raising=False)
        assert "not set" in endpoint_problem(server.url + "/v1", "smol", "DATAGEN_TEST_NO_KEY")
    assert "no answer" in endpoint_problem(server.url + "/v1", "smol", None, timeout=2)  # closed now


class FailingEngine(FakeEngine):
    """Every request fails as an endpoint's does after its retries."""

    async def generate(self, conversation, params):
        self.calls.append((list(conversation), params))
        return request_failed(params)

    async def score(self, conversation, continuations):
        return unscorable(0, continuations)


def _programs():
    import test_prompt_too_long as ptl

    return {"math-programs": (ptl._math, lambda row: {(a["exec_status"], a["parse_error"], a["finish_reason"])
                                                      for a in row["attempts"]}
                              == {("no_program", "request_failed", "request_failed")}),
            "cot-rewrites": (ptl._cot, lambda row: [(r["kept"], r["rejection_reason"]) for r in row["rewrites"]]
                             == [(False, "request_failed")]),
            "retrieval-queries": (ptl._retrieval, lambda row: {s["drop_reason"] for s in row["samples"]} == {"request_failed"}),
            "preference-labels": (ptl._preference, None)}


@pytest.mark.parametrize("name", ["math-programs", "cot-rewrites", "retrieval-queries", "preference-labels"])
def test_every_program_drops_a_request_failed_row_with_its_reason(name):
    make, check = _programs()[name]
    program, dropped = make()
    row = asyncio.run(program(FailingEngine(EngineSpec(backend="fake", model="fake"))))
    if name == "math-programs":  # the sandbox step classifies; a failed request has no program to run
        from tasks.generators.math_programs import program as mp

        row = mp.execute_attempts([row], mp.MathProgramsConfig(samples=2))[0]
    assert (check or dropped)(row), row
