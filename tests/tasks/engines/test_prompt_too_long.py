"""Proves a prompt that does not fit the model's context is one failed request, never a dead engine or
run: the engines answer it with empty `prompt_too_long` completions (and -inf scores) instead of
running it, and every generator's per-row program reads that as it reads any bad model output — the
row ends with its usual drop reason (no_program, a rejected rewrite, empty_output, no verdict,
no_question) while the other requests of the same engine go on. Pure logic on the FakeEngine, whose
word count is its token count; the real transformers engine does the same
(tests/tasks/engines/test_transformers_engine.py, vllm: test_vllm_engine.py)."""
from __future__ import annotations

import asyncio
import math
import sys
from pathlib import Path

import pytest

from tasks.engines import EngineSpec, SamplingParams
from tasks.engines.base import fits_context, prompt_too_long
from tasks.engines.fake import FakeEngine
from tasks.generators import load_generator

REPO = Path(__file__).resolve().parents[3]


def _engine(context: int) -> FakeEngine:
    return FakeEngine(EngineSpec(backend="fake", model="fake", max_model_len=context), replies=["four words of output"])


def test_the_context_counts_the_prompt_and_the_tokens_asked_for():
    assert fits_context(100, 28, 128) and not fits_context(101, 28, 128)
    [c, d] = prompt_too_long(7, SamplingParams(n=2))
    assert (c.text, c.prompt_tokens, c.completion_tokens, c.finish_reason) == ("", 7, 0, "prompt_too_long") and d == c


def test_the_fake_engine_fails_only_the_long_request():
    engine = _engine(context=20)
    short, long = [{"role": "user", "content": "two words"}], [{"role": "user", "content": "w " * 30}]
    params = SamplingParams(n=3, max_tokens=8)

    async def both():
        return await asyncio.gather(engine.generate(short, params), engine.generate(long, params),
                                    engine.score(long, [" A", " B"]), engine.score(short, [" A", " B"]))

    ok, failed, unscored, scored = asyncio.run(both())
    assert [c.finish_reason for c in ok] == ["stop"] * 3 and ok[0].text == "four words of output"
    assert [(c.text, c.finish_reason, c.prompt_tokens) for c in failed] == [("", "prompt_too_long", 30)] * 3
    assert unscored.logprobs == [-math.inf, -math.inf] and unscored.prompt_tokens == 30
    assert all(math.isfinite(x) for x in scored.logprobs)


def _math():
    from tasks.generators.math_programs import program as mp

    config = mp.MathProgramsConfig(samples=2)
    row = {"source_id": "p", "question": "What is 2+2?", "gold_answer": 4.0, "pass": "fixed",
           "exemplars": list(mp.fixed_exemplars()[:1])}

    async def run(engine):
        return mp.execute_attempts([await mp.write_programs(row, engine, config)], config)[0]

    return run, lambda row: {a["exec_status"] for a in row["attempts"]} == {"no_program"}


def _cot():
    from tasks.generators.cot_rewrites import program as cr

    config = cr.CotRewritesConfig()
    item = {"source_id": "s", "question": "2+3?", "gold_answer": "5", "source_solution": "2+3=5",
            "source_type": "symbolic", "route": "unify", "route_forced": False, "task_family": "arithmetic"}
    return (lambda engine: cr.rewrite_item(item, engine, config),
            lambda row: [(r["kept"], r["finish_reason"]) for r in row["rewrites"]] == [(False, "prompt_too_long")]
            and row["rewrites"][0]["rejection_reason"] is not None)


def _retrieval():
    from tasks.generators.retrieval_queries import program as rq

    config = rq.RetrievalQueriesConfig(samples=2)
    doc = {"source_id": "d", "text": "Yeast makes dough rise.", "examples": []}
    return (lambda engine: rq.write_queries(doc, engine, config),
            lambda row: {s["drop_reason"] for s in row["samples"]} == {"empty_output"})


def _preference():
    from tasks.generators.preference_labels import program as pl
    from tasks.generators.preference_labels.sources import group_by_prompt

    config = pl.PreferenceConfig()
    pair = {"source_id": "p", "source_file": "f", "source_row": 1, "conversation": [{"role": "user", "content": "Hi?"}],
            "response_a": "Hello.", "response_b": "Go away.", "human_choice": None, "policy_model": None}
    [group] = group_by_prompt([pair])
    return (lambda engine: pl.label_group(group, engine, config),
            lambda row: {j["verdict_source"] for p in row["pairs"] for j in p["judgments"]} == {"none"})


def _passage():
    qa = sys.modules[load_generator(str(REPO / "examples/passage_qa/generator.py:PassageQA")).__module__]
    options = {"samples": 2, "temperature": 0.7, "max_tokens": 16, "seed": 0, "max_answer_words": 8}
    return (lambda engine: qa.write_pairs({"source_id": "p", "passage": "Fuji is 3,776 metres high."}, engine, options),
            lambda row: {s["drop_reason"] for s in row["samples"]} == {"no_question"})


@pytest.mark.parametrize("program", [_math, _cot, _retrieval, _preference, _passage],
                         ids=["math-programs", "cot-rewrites", "retrieval-queries", "preference-labels", "passage-qa"])
def test_every_program_reads_a_prompt_too_long_as_bad_output(program):
    run, dropped = program()
    engine = _engine(context=1)  # nothing fits
    row = asyncio.run(run(engine))
    assert dropped(row), row
    assert engine.calls  # it asked, and got its answer back instead of an exception
