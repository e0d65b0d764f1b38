"""BatchingEngine over a scripted batch backend (pure logic): concurrent requests are served in batches
of at most `max_batch_seqs` sequences, each request gets its own result, requests with different
sampling parameters (or continuations) never share a batch, a request arriving while a batch runs joins
the next batch, a failing batch fails only its own requests and the worker goes on, and one engine
serves two separate `asyncio.run`s. One integration test: 12 concurrent greedy requests through the
real transformers engine give the texts each gives alone."""
import asyncio
import threading

import pytest

from tasks.engines import EngineSpec, SamplingParams, make_engine
from tasks.engines.base import Completion, ContinuationScores
from tasks.engines.batching import BatchingEngine


def conv(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


class ScriptedBackend:
    """A sync batch backend: completion k of a conversation is "<its text>#k"; records every batch as
    (kind, params or continuations, [texts]). `hold` (a threading.Event) keeps a batch running until set;
    a conversation whose text contains "boom" makes its whole batch raise."""

    spec = EngineSpec(backend="fake")

    def __init__(self, hold: threading.Event | None = None):
        self.batches: list[tuple] = []
        self.hold = hold
        self.started = threading.Event()  # set when a batch begins
        self.closed = False

    def _record(self, kind, arg, conversations) -> list[str]:
        texts = [c[-1]["content"] for c in conversations]
        self.batches.append((kind, arg, texts))
        self.started.set()
        if self.hold is not None:
            assert self.hold.wait(10), "test never released the batch"
        if any("boom" in t for t in texts):
            raise RuntimeError("boom")
        return texts

    def generate_batch(self, conversations, params):
        texts = self._record("generate", params, conversations)
        return [[Completion(text=f"{t}#{k}", prompt_tokens=len(t), completion_tokens=1, finish_reason="stop")
                 for k in range(params.n)] for t in texts]

    def score_batch(self, conversations, continuations):
        texts = self._record("score", tuple(continuations), conversations)
        return [ContinuationScores(logprobs=[-float(len(t) + len(c)) for c in continuations], prompt_tokens=len(t))
                for t in texts]

    def close(self):
        self.closed = True


def texts_of(batch) -> list[str]:
    return batch[2]


def test_40_concurrent_requests_are_served_in_batches_of_at_most_max():
    backend = ScriptedBackend()
    engine = BatchingEngine(backend, max_batch_seqs=8)
    greedy, sampled = SamplingParams(n=3), SamplingParams(n=3, temperature=0.7, seed=1)

    async def main():
        return await asyncio.gather(*[engine.generate(conv(f"q{i}"), greedy) for i in range(40)],
                                    *[engine.generate(conv(f"s{i}"), sampled) for i in range(10)])

    out = asyncio.run(main())
    assert [[c.text for c in group] for group in out[:40]] == [[f"q{i}#{k}" for k in range(3)] for i in range(40)]
    assert [[c.text for c in group] for group in out[40:]] == [[f"s{i}#{k}" for k in range(3)] for i in range(10)]
    greedy_batches = [texts_of(b) for b in backend.batches if b[1] == greedy]
    sampled_batches = [texts_of(b) for b in backend.batches if b[1] == sampled]
    # Greedy: one sequence per request whatever n (its samples are copies), so 8 requests a batch.
    assert [len(b) for b in greedy_batches] == [8] * 5
    # Sampled n=3: three sequences per request, so 2 requests (6 sequences) fit in 8.
    assert [len(b) for b in sampled_batches] == [2] * 5
    assert sorted(t for b in greedy_batches for t in b) == sorted(f"q{i}" for i in range(40))
    assert engine.batches == len(backend.batches) == 10


def test_requests_with_different_params_never_share_a_batch():
    backend = ScriptedBackend()
    engine = BatchingEngine(backend, max_batch_seqs=32)
    kinds = [SamplingParams(max_tokens=8), SamplingParams(max_tokens=16), SamplingParams(temperature=0.5, seed=1),
             SamplingParams(temperature=0.5, seed=2), SamplingParams(max_tokens=8, stop=("```",))]

    async def main():
        calls = []
        for i in range(30):  # interleaved: every kind waits in the queue at once
            if i % 6 == 5:
                calls.append(engine.score(conv(f"j{i}"), [" A", " B"] if i % 12 == 5 else [" yes", " no", " maybe"]))
            else:
                calls.append(engine.generate(conv(f"r{i}"), kinds[i % 6]))
        return await asyncio.gather(*calls)

    out = asyncio.run(main())
    for i, result in enumerate(out):
        if i % 6 == 5:
            conts = [" A", " B"] if i % 12 == 5 else [" yes", " no", " maybe"]
            assert result.logprobs == [-float(len(f"j{i}") + len(c)) for c in conts]
        else:
            assert [c.text for c in result] == [f"r{i}#0"]
    # Each batch holds one kind only, and every kind was asked for in one batch (all waited together).
    by_kind: dict = {}
    for kind, arg, texts in backend.batches:
        by_kind.setdefault((kind, arg), []).append(texts)
    assert len(by_kind) == len(backend.batches) == 7
    for (kind, arg), [texts] in by_kind.items():
        if kind == "generate":
            assert texts == [f"r{i}" for i in range(30) if i % 6 != 5 and kinds[i % 6] == arg]
        else:
            assert texts == [f"j{i}" for i in range(30) if i % 6 == 5 and
                             tuple([" A", " B"] if i % 12 == 5 else [" yes", " no", " maybe"]) == arg]


def test_a_request_arriving_during_a_batch_joins_the_next_batch():
    hold = threading.Event()
    backend = ScriptedBackend(hold=hold)
    engine = BatchingEngine(backend, max_batch_seqs=4)
    params = SamplingParams()

    async def main():
        first = [asyncio.ensure_future(engine.generate(conv(f"a{i}"), params)) for i in range(6)]
        while not backend.started.is_set():  # batch 1 (a0..a3) is running in the worker thread
            await asyncio.sleep(0.001)
        late = asyncio.ensure_future(engine.generate(conv("x"), params))
        await asyncio.sleep(0.02)
        hold.set()
        await asyncio.gather(*first, late)
        after = await engine.generate(conv("y"), params)  # and the engine still serves requests afterwards
        return late.result(), after

    late, after = asyncio.run(main())
    assert late[0].text == "x#0" and after[0].text == "y#0"
    # x waited only for the batch that was running, then went with the two requests already waiting.
    assert [texts_of(b) for b in backend.batches] == [["a0", "a1", "a2", "a3"], ["a4", "a5", "x"], ["y"]]


def test_a_failing_batch_fails_only_its_requests_and_the_worker_goes_on():
    backend = ScriptedBackend()
    engine = BatchingEngine(backend, max_batch_seqs=2)
    params = SamplingParams()

    async def main():
        out = await asyncio.gather(*[engine.generate(conv(t), params) for t in ("ok0", "boom", "ok1", "ok2", "ok3")],
                                   return_exceptions=True)
        return out, await engine.generate(conv("later"), params)

    out, later = asyncio.run(main())
    assert [type(r).__name__ for r in out[:2]] == ["RuntimeError", "RuntimeError"]  # the batch [ok0, boom]
    assert [r[0].text for r in out[2:]] == ["ok1#0", "ok2#0", "ok3#0"]
    assert later[0].text == "later#0"
    assert [texts_of(b) for b in backend.batches] == [["ok0", "boom"], ["ok1", "ok2"], ["ok3"], ["later"]]


def test_a_backend_returning_too_few_results_fails_the_batch_instead_of_hanging():
    backend = ScriptedBackend()
    backend.generate_batch = lambda conversations, params: []  # a broken backend
    engine = BatchingEngine(backend, max_batch_seqs=4)

    async def main():
        return await asyncio.wait_for(asyncio.gather(engine.generate(conv("a"), SamplingParams()),
                                                     return_exceptions=True), timeout=5)

    [error] = asyncio.run(main())
    assert isinstance(error, RuntimeError) and "0 results for 1 requests" in str(error)


def test_one_engine_serves_two_asyncio_runs():
    backend = ScriptedBackend()
    engine = BatchingEngine(backend, max_batch_seqs=4)
    params = SamplingParams()

    async def ask(prefix: str):
        return await asyncio.gather(*[engine.generate(conv(f"{prefix}{i}"), params) for i in range(6)])

    first = asyncio.run(ask("a"))
    second = asyncio.run(ask("b"))
    assert [g[0].text for g in first] == [f"a{i}#0" for i in range(6)]
    assert [g[0].text for g in second] == [f"b{i}#0" for i in range(6)]
    assert [len(b[2]) for b in backend.batches] == [4, 2, 4, 2]
    engine.close()
    assert backend.closed


@pytest.mark.integration
def test_concurrent_greedy_requests_match_each_alone():
    """12 requests in flight at once through make_engine's transformers engine (one left-padded batch)
    give the texts each request gives on its own. float32: in bf16 padded shapes round differently
    and greedy texts may part late (test_transformers_engine allows for that); here they must not."""
    questions = ["What is 2+2?", "Name a color.", "Name a fruit.", "What is the capital of France?",
                 "Write one word that rhymes with cat.", "Count from one to five.", "Say hello in Spanish.",
                 "What do bees make?", "Name a planet in our solar system, please, and say one fact about it.",
                 "What is 10 minus 3?", "Give a synonym for happy.", "Which animal says moo?"]
    engine = make_engine(EngineSpec(backend="transformers", device="cpu", dtype="float32", threads=1))
    params = SamplingParams(max_tokens=12)
    try:
        async def together():
            return await asyncio.gather(*[engine.generate(conv(q), params) for q in questions])

        async def alone():
            return [await engine.generate(conv(q), params) for q in questions]

        batches = engine.batches
        concurrent = asyncio.run(together())
        assert engine.batches - batches == 1  # all twelve waited together: one batch
        single = asyncio.run(alone())
        assert engine.batches - batches == 1 + len(questions)
    finally:
        engine.close()
    assert [g[0].text for g in concurrent] == [g[0].text for g in single]
    assert [g[0].completion_tokens for g in concurrent] == [g[0].completion_tokens for g in single]
