"""Proves the MathPrograms generator's hooks without Ray or Prefect: its config hash is byte-identical
to the one the first version computed (pinned values), the fixed pass skips problems already
committed under the same config, the dynamic pass takes exactly the unsolved problems with verified
programs of the most similar problems as exemplars (most similar last) and counts the ones it skips
for want of any, and one pass run in-process through its two stages (scripted FakeEngine, real
sandbox) gives records with their lineage and the counts the run reports."""
from __future__ import annotations

import asyncio
import json
import pickle
from collections import Counter
from datetime import datetime, timezone

import pytest

from schemas.store import TableStore
from schemas.tables import MATH_PROGRAMS
from tasks.engines.fake import FakeEngine
from tasks.generators.math_programs import MathPrograms, MathProgramsSettings
from tasks.generators.math_programs import program as mp
from tasks.runtime.generator import CPUStage, LLMStage, Source
from tasks.runtime.inputs import InputError

PROBLEMS = [
    {"source_id": sid, "source_file": "f.jsonl", "source_row": i, "question": q, "gold_answer": 1.0}
    for i, (sid, q) in enumerate([
        ("train", "A train travels 60 km per hour for 3 hours. How far does the train go?"),
        ("apples", "Apples cost 2 dollars each. How much do 5 apples cost?"),
        ("train2", "A fast train travels 90 km per hour for 2 hours. How far does it travel?"),
        ("pears", "Pears cost 3 dollars each. How much do 4 pears cost?"),
    ], start=1)
]


def _generator(data_dir, **options) -> MathPrograms:
    return MathPrograms(MathProgramsSettings(input="unused.jsonl", data_dir=str(data_dir), **options))


def _commit(gen, problem, correct, pass_name="fixed", config_hash=None):
    attempt = {"attempt": 0, "temperature": 0.0, "top_p": 1.0, "seed": None, "raw_output": "x",
               "program": "def solution():\n    return 1", "parse_error": None,
               "exec_status": "ok" if correct else "wrong", "exec_result": "1", "exec_value": 1.0,
               "exec_error": None, "exec_seconds": 0.01, "correct": correct, "prompt_tokens": 1,
               "completion_tokens": 1, "finish_reason": "stop", "mean_logprob": -0.1}
    row = {**problem, "pass": pass_name, "exemplars": [], "attempts": [attempt]}
    lineage = {"run_id": "r", "model": "m", "engine": "fake", "config_hash": config_hash or gen.config_hash(),
               "created_at": datetime.now(timezone.utc)}
    TableStore(gen.settings.data_dir, MATH_PROGRAMS).commit(gen.to_records(row, lineage), "r")


def _plan(gen, problems, pass_name):
    return gen.plan(Source(problems), TableStore(gen.settings.data_dir, MATH_PROGRAMS), pass_name)


# Computed with the first version (git show b1f4d51:tasks/math_programs.py,
# MathProgramsConfig(...).config_hash(EngineSpec().model_id)) for the embedded default model.
OLD_DEFAULT_HASH = "51361d7e243e0780"
OLD_CUSTOM_HASH = "8e4a4c2300682e55"  # samples=2, temperature=0.7, max_tokens=160, seed=3, n_exemplars=2


def test_config_hash_is_the_first_versions():
    assert _generator(".").config_hash() == OLD_DEFAULT_HASH
    custom = dict(samples=2, temperature=0.7, max_tokens=160, seed=3, exemplars=2)
    assert _generator(".", **custom).config_hash() == OLD_CUSTOM_HASH
    # what does not shape the records leaves it alone: the sandbox timeout, the passes, limits, resources
    assert _generator("elsewhere", **custom, timeout_s=9, dynamic=False, limit=2, batch_size=1,
                      pool_size=2).config_hash() == OLD_CUSTOM_HASH
    assert _generator(".", temperature=1).config_hash() == _generator(".", temperature=1.0).config_hash()


def test_passes_follow_the_dynamic_option():
    assert tuple(_generator(".").passes()) == ("fixed", "dynamic")
    assert tuple(_generator(".", dynamic=False).passes()) == ("fixed",)


def test_fixed_pass_skips_committed_under_same_config(tmp_path):
    gen = _generator(tmp_path, samples=1, exemplars=2)
    _commit(gen, PROBLEMS[0], correct=True)
    _commit(gen, PROBLEMS[1], correct=False, config_hash="other")
    plan = _plan(gen, PROBLEMS, "fixed")
    assert {p["source_id"] for p in plan.rows} == {"apples", "train2", "pears"}
    assert plan.skipped == 1
    assert all(p["pass"] == "fixed" and [e["id"] for e in p["exemplars"]] == ["ex-bakery", "ex-train"]
               for p in plan.rows)


def test_dynamic_pass_retrieves_similar_verified_problems(tmp_path):
    gen = _generator(tmp_path, samples=1, exemplars=2)
    _commit(gen, PROBLEMS[0], correct=True)   # train: verified
    _commit(gen, PROBLEMS[1], correct=True)   # apples: verified
    _commit(gen, PROBLEMS[2], correct=False)  # train2: unsolved
    _commit(gen, PROBLEMS[3], correct=False)  # pears: unsolved
    _commit(gen, PROBLEMS[3], correct=False, pass_name="dynamic")  # ...but already had its dynamic pass
    plan = _plan(gen, PROBLEMS, "dynamic")
    assert plan.counts["dynamic_skipped_no_exemplars"] == 0
    assert [p["source_id"] for p in plan.rows] == ["train2"]
    assert plan.rows[0]["pass"] == "dynamic"
    assert [e["id"] for e in plan.rows[0]["exemplars"]] == ["apples", "train"]  # most similar last
    assert plan.rows[0]["exemplars"][-1] == {"id": "train", "question": PROBLEMS[0]["question"],
                                             "program": "def solution():\n    return 1"}


def test_dynamic_pass_skips_without_verified_exemplars(tmp_path):
    gen = _generator(tmp_path, samples=1, exemplars=2)
    _commit(gen, PROBLEMS[0], correct=False)
    plan = _plan(gen, PROBLEMS[:1], "dynamic")
    assert plan.rows == [] and plan.counts["dynamic_skipped_no_exemplars"] == 1


def test_stages_are_an_llm_then_a_cpu_stage_that_pickle():
    gen = _generator(".", samples=2, timeout_s=2.0)
    llm, cpu = gen.stages("fixed")
    assert isinstance(llm, LLMStage) and llm.engine is None and isinstance(cpu, CPUStage)
    assert llm.program.func is mp.write_programs and cpu.step.func is mp.execute_attempts
    # the steps carry the generator's options only (not the run's), and travel to Ray workers
    assert llm.program.keywords["config"] == mp.MathProgramsConfig(samples=2, timeout_s=2.0)
    assert type(llm.program.keywords["config"]) is mp.MathProgramsConfig
    assert pickle.loads(pickle.dumps(cpu.step)).keywords == cpu.step.keywords


def test_load_reads_problems_with_the_limit(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "question": f"{i} + 1?", "answer": f"#### {i + 1}"}) + "\n"
                            for i in range(3)))
    source = MathPrograms(MathProgramsSettings(input=str(path), data_dir=str(tmp_path), limit=2)).load()
    assert [r["source_id"] for r in source.rows] == ["q0", "q1"] and source.rejects == []
    assert source.rows[1] == {"source_id": "q1", "source_file": str(path), "source_row": 2,
                              "question": "1 + 1?", "gold_answer": 2.0}
    path.write_text('{"question": "a?", "answer": "#### 1"}\n{oops\n')
    with pytest.raises(InputError, match="row 2: invalid JSON"):
        MathPrograms(MathProgramsSettings(input=str(path))).load()


def test_rendered_prompt_of_a_planned_row_is_pinned(tmp_path):
    """The fixed pass's prompt from the files in prompts/ (system.txt, exemplars.jsonl), exactly."""
    gen = _generator(tmp_path, exemplars=1)
    row = _plan(gen, PROBLEMS[:1], "fixed").rows[0]
    assert mp.build_messages(row["question"], row["exemplars"]) == [
        {"role": "system", "content": (
            "You solve math word problems by writing a Python function `solution()` that computes the "
            "answer step by step with named variables and returns it as a number. Write only the code block.")},
        {"role": "user", "content": "A bakery sells muffins for $3 each and cookies for $1.50 each. Dana buys "
                                    "4 muffins and 6 cookies. How much does she spend in dollars?"},
        {"role": "assistant", "content": "```python\ndef solution():\n    muffin_price = 3\n    cookie_price = 1.5\n"
                                         "    muffins = 4\n    cookies = 6\n"
                                         "    total = muffins * muffin_price + cookies * cookie_price\n"
                                         "    return total\n```"},
        {"role": "user", "content": "A train travels 60 km per hour for 3 hours. How far does the train go?"},
        {"role": "assistant", "content": "```python\n"},
    ]


def test_one_pass_through_both_stages_gives_records_and_counts(tmp_path):
    gen = _generator(tmp_path, samples=3, timeout_s=2.0, max_tokens=64)
    problems = [{**PROBLEMS[0], "gold_answer": 180.0}, {**PROBLEMS[1], "gold_answer": 10.0}]
    rows = _plan(gen, problems, "fixed").rows
    # replies per problem: the greedy one, then the 2 sampled ones, whatever order the requests come in
    script = {("train", True): iter(["def solution():\n    return 60 * 3\n```"]),
              ("train", False): iter(["no idea", "def solution():\n    return 1 / 0\n```"]),
              ("apples", True): iter(["def solution():\n    return 2 + 5\n```"]),
              ("apples", False): iter(["def solution():\n    return 2 * 5\n```", "def solution():\n    return 11\n```"])}

    def reply(conversation, params):
        problem = "train" if "train" in conversation[-2]["content"] else "apples"
        return next(script[(problem, params.temperature == 0)])

    llm, cpu = gen.stages("fixed")

    async def run_all(rows):
        return await asyncio.gather(*(llm.program(row, FakeEngine(reply=reply)) for row in rows))

    rows = cpu.step(asyncio.run(run_all(rows)))
    created = datetime.now(timezone.utc)
    lineage = {"run_id": "r1", "model": "fake", "engine": "fake", "config_hash": gen.config_hash(),
               "created_at": created}
    counts, records_of = Counter(), {}
    for row in rows:
        records = gen.to_records(row, lineage)
        records_of[row["source_id"]] = records
        counts.update(gen.row_counts(row, records))
        for record in records:
            counts.update(gen.record_counts(record))
    assert [(r["attempt"], r["exec_status"]) for r in records_of["train"]] == [(0, "ok"), (1, "no_program"),
                                                                              (2, "error")]
    assert [(r["attempt"], r["exec_status"]) for r in records_of["apples"]] == [(0, "wrong"), (1, "ok"), (2, "wrong")]
    records = records_of["train"] + records_of["apples"]
    assert TableStore(tmp_path, MATH_PROGRAMS).to_arrow(records).num_rows == 6  # fits the schema
    assert all(r["max_tokens"] == 64 and r["config_hash"] == gen.config_hash()
               and r["generator"] == "math_programs" and r["prompt_version"] == "math-programs/v1" for r in records)
    assert [gen.drop_reason(r) for r in records] == [None, "no_program", "error", "wrong", None, "wrong"]
    assert counts == Counter({"fixed_problems": 2, "fixed_solved": 2, "kept": 2, "verified_programs": 2,
                              "dropped_wrong": 2, "dropped_error": 1, "dropped_no_program": 1})
    assert set(gen.drop_reasons) == {"wrong", "error", "timeout", "no_program"}
