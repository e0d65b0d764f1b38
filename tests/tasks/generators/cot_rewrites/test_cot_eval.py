"""Proves the step-label evaluation harness on the real BIG-Bench Mistake file: traces load with the
human first-mistake index (1-based, None for none), and the agreement report — agreement, chance
rate, majority rate, probe and continuation counts — is computed right, using a scripted engine that
knows where the human mistake is (so agreement must be 100% on the traces it can locate), with every
trace's search in flight at once."""
from __future__ import annotations

import asyncio
import math

from tasks.engines.fake import FakeEngine
from tasks.generators.cot_rewrites.eval import agreement_report, label_traces, load_mistake_traces


def oracle(traces) -> FakeEngine:
    """Continuations reach the gold unless the prefix holds the trace's human-marked mistake step."""
    by_question = {t["question"]: t for t in traces}

    def reply(conversation, params):
        trace = by_question[conversation[1]["content"].removeprefix("Problem: ").split("\n\nSolve it")[0]]
        given = conversation[-1]["content"].count("\nStep ")  # steps pre-filled before "Step p+1:"
        bad = trace["human_first_error"] is not None and given >= trace["human_first_error"]
        return f" done.\nFinal answer: {'nonsense' if bad else trace['gold_answer']}"

    return FakeEngine(reply=reply)


def test_mistake_traces_load_with_human_index(shared_data):
    traces = load_mistake_traces(shared_data / "big_bench_mistake" / "multistep_arithmetic.jsonl", limit=None)
    assert len(traces) == 300
    first = next(t for t in traces if t["id"] == "multistep_arithmetic-1")
    assert first["human_first_error"] == 4 and first["gold_answer"] == "-2116" and len(first["steps"]) == 5
    assert sum(t["human_first_error"] is None for t in traces) == 62
    sample = load_mistake_traces(shared_data / "big_bench_mistake" / "multistep_arithmetic.jsonl", limit=20, seed=1)
    assert len(sample) == 20 and sample == load_mistake_traces(
        shared_data / "big_bench_mistake" / "multistep_arithmetic.jsonl", limit=20, seed=1)


def test_agreement_report_with_an_oracle_engine(shared_data):
    traces = load_mistake_traces(shared_data / "big_bench_mistake" / "multistep_arithmetic.jsonl", limit=40)
    engine = oracle(traces)
    results = asyncio.run(label_traces(traces, engine, continuations=2, max_tokens=16, seed=0, family="arithmetic"))
    assert [r["id"] for r in results] == [t["id"] for t in traces]
    report = agreement_report(results)
    assert report["n"] == 40 and report["agreement"] == 1.0 and report["agreement_informative"] == 1.0
    assert report["chance"] == sum(1 / (len(t["steps"]) + 1) for t in traces) / 40
    assert report["continuations"] == 2 * report["probes"]
    assert report["probes"] <= sum(2 + math.ceil(math.log2(max(2, len(t["steps"])))) for t in traces)
    assert set(report["statuses"]) <= {"no_error", "error_found"}
    assert len(engine.calls) == report["probes"]  # one request (n = 2 continuations) per probe
