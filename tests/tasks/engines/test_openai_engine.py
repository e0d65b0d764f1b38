"""Proves the OpenAI engine against a real OpenAI-compatible server: `vllm serve` of the CPU build with
the embedded SmolLM2, started on 127.0.0.1 by the session (conftest.vllm_server). Every generator's
per-row program, greedy, writes the same records through the endpoint as through the in-process vLLM
engine; n > 1 samples come back (reproducible with a seed) with one log-probability per counted token;
continuation scores equal the in-process engine's, from the top log-probabilities and, for continuations
outside them, from vLLM's prompt_logprobs; the usage tokens are counted; a prompt over the context is
prompt_too_long."""
from __future__ import annotations

import asyncio
import json
import math
from datetime import datetime, timezone

import pytest

from engine_prompts import CONVS, JUDGE
from tasks.engines import EngineSpec, SamplingParams

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

LINEAGE = {"run_id": "r", "model": "m", "engine": "e", "config_hash": "h",
           "created_at": datetime(2026, 12, 4, tzinfo=timezone.utc)}


@pytest.fixture(scope="module")
def local():
    """The in-process vLLM engine, configured as the server is (float32, one compute thread)."""
    from tasks.engines.vllm_engine import VLLMEngine

    engine = VLLMEngine(EngineSpec(backend="vllm", device="auto", dtype="float32", threads=1))
    yield engine
    engine.close()


@pytest.fixture()
def remote(vllm_server):
    from tasks.engines.openai_engine import OpenAIEngine

    engine = OpenAIEngine(EngineSpec(backend="openai", base_url=vllm_server, model="smol", requests_in_flight=32))
    yield engine
    engine.close()


def gather(*coros):
    async def all_at_once():
        return await asyncio.gather(*coros)

    return asyncio.run(all_at_once())


def same_records(a: list[dict], b: list[dict]) -> None:
    """Equal records, keyed by record_id: every text, token count, verdict and id exactly; floats (mean
    log-probabilities, strengths) to 1e-4 (float32 sums in another order: batches differ; measured up to 8e-6)."""
    def norm(records):
        return {r["record_id"]: json.loads(json.dumps(r, default=str, sort_keys=True)) for r in records}

    def same(x, y):
        if isinstance(x, float) and isinstance(y, float):
            return math.isclose(x, y, rel_tol=1e-4, abs_tol=1e-4)
        if isinstance(x, list) and isinstance(y, list):
            return len(x) == len(y) and all(same(p, q) for p, q in zip(x, y))
        if isinstance(x, dict) and isinstance(y, dict):
            return x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
        return x == y

    a, b = norm(a), norm(b)
    assert a.keys() == b.keys() and a
    for record_id in a:
        diff = [k for k in a[record_id] if k != "exec_seconds" and not same(a[record_id][k], b[record_id].get(k))]
        assert not diff, [(k, a[record_id][k], b[record_id].get(k)) for k in diff]


def test_greedy_text_tokens_and_logprobs_equal_the_in_process_engine(local, remote):
    params = SamplingParams(max_tokens=24, logprobs=True)
    mine = gather(*(local.generate(c, params) for c in CONVS + [JUDGE]))
    theirs = gather(*(remote.generate(c, params) for c in CONVS + [JUDGE]))
    for [a], [b] in zip(mine, theirs):
        assert (b.text, b.prompt_tokens, b.completion_tokens, b.finish_reason) == \
            (a.text, a.prompt_tokens, a.completion_tokens, a.finish_reason)
        assert b.token_logprobs == pytest.approx(a.token_logprobs, abs=1e-4)  # float32 sums in another order
    stats = remote.stats.snapshot()
    assert stats["prompt_tokens"] == sum(g[0].prompt_tokens for g in mine)
    assert stats["completion_tokens"] == sum(g[0].completion_tokens for g in mine)


def test_n_samples_with_logprobs_are_reproducible_with_a_seed(remote):
    params = SamplingParams(n=4, temperature=1.0, seed=7, max_tokens=16, logprobs=True)
    [first], [again] = gather(remote.generate(CONVS[1], params)), gather(remote.generate(CONVS[1], params))
    assert len(first) == 4 and len({c.text for c in first}) > 1
    assert [c.text for c in first] == [c.text for c in again]
    for c in first:
        assert len(c.token_logprobs) == c.completion_tokens and all(lp <= 0 for lp in c.token_logprobs)
    greedy = gather(remote.generate(CONVS[0], SamplingParams(n=3, max_tokens=8)))[0]
    assert len(greedy) == 3 and len({c.text for c in greedy}) == 1


def test_scores_equal_the_in_process_engine(local, remote):
    for continuations in ([" A", " B"], [" A", " Zebra crossing"]):  # top log-probs; prompt_logprobs
        [a], [b] = gather(local.score(JUDGE, continuations)), gather(remote.score(JUDGE, continuations))
        assert b.logprobs == pytest.approx(a.logprobs, abs=1e-5) and b.prompt_tokens == a.prompt_tokens
    assert b.logprobs[1] < -10  # the multi-token continuation was scored, not guessed


def test_a_prompt_over_the_context_is_prompt_too_long(remote):
    [group] = gather(remote.generate([{"role": "user", "content": "word " * 2500}], SamplingParams(n=2, temperature=0.5)))
    assert [c.finish_reason for c in group] == ["prompt_too_long"] * 2 and group[0].prompt_tokens > 2048
    assert remote.stats.failed == 0 and remote.stats.retries == 0


# ---------------------------------------------------------------- every generator, greedy, both engines

def _math(engine):
    from tasks.generators.math_programs import program as mp

    config = mp.MathProgramsConfig(samples=2, exemplars=4, max_tokens=96, temperature=0.0)
    problems = [{**p, "pass": "fixed", "exemplars": list(mp.fixed_exemplars()[:4])}
                for p in mp.load_problems("samples/math_word_problems.jsonl", 3).rows]
    done = mp.execute_attempts(gather(*(mp.write_programs(p, engine, config) for p in problems)), config)
    return [r for p in done for r in mp.to_records(p, {**LINEAGE, "max_tokens": 96})]


def _cot(engine):
    from tasks.generators.cot_rewrites import program as cr

    config = cr.CotRewritesConfig(max_tokens=96, step_labels=True, continuations=2, label_temperature=0,
                                  label_max_tokens=32)
    items = cr.load_items("samples/math_word_problems.jsonl", config, 2).rows
    return [r for item in gather(*(cr.rewrite_item(i, engine, config) for i in items))
            for r in cr.to_records(item, {**LINEAGE, "max_tokens": 96})]


def _retrieval(engine):
    from tasks.generators.retrieval_queries import program as rq

    config = rq.RetrievalQueriesConfig(task="generic", samples=2, temperature=0.0, max_tokens=32)
    corpus = rq.load_corpus("samples/retrieval_corpus.jsonl").rows
    examples = rq.load_examples("samples/retrieval_examples.jsonl", corpus)
    docs = [{**d, "examples": examples} for d in corpus if d["source_id"] not in {e["id"] for e in examples}][:3]
    return [r for d in gather(*(rq.write_queries(d, engine, config) for d in docs)) for r in rq.to_records(d, LINEAGE, config)]


def _preference(engine):
    from tasks.generators.preference_labels import program as pl
    from tasks.generators.preference_labels import sources

    config = pl.PreferenceConfig(temperature=0, samples_per_order=1, max_tokens=48)
    groups = sources.group_by_prompt(sources.load_pairs("tests/golden/pairs.jsonl").rows)
    return [r for g in gather(*(pl.label_group(g, engine, config) for g in groups)) for r in pl.to_records(g, LINEAGE, config)]


@pytest.mark.parametrize("generator", [_math, _cot, _retrieval, _preference],
                         ids=["math-programs", "cot-rewrites", "retrieval-queries", "preference-labels"])
def test_every_generator_writes_the_in_process_engines_records(local, remote, generator):
    same_records(generator(local), generator(remote))
