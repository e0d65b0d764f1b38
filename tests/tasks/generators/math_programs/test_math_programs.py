"""Proves the math-programs generator's pure logic (program.py, exemplars.py): the exact prompt, the
parser over messy model output, classification, the sampling plan, the options' validation, input
errors that name file and row, the dynamic exemplar pool and its BM25 pick, and that records fit the
table schema with deterministic, unique ids. The engine is a scripted FakeEngine; programs run in
the real sandbox."""
from __future__ import annotations

import asyncio

import json
from datetime import datetime, timezone

import pytest

from schemas.store import TableStore
from schemas.tables import MATH_PROGRAMS
from tasks.engines.fake import FakeEngine
from tasks.generators.math_programs import exemplars as ex
from tasks.generators.math_programs import program as mp
from tasks.runtime.inputs import InputError
from tasks.sandbox import ExecResult

EXEMPLARS = [
    {"id": "e1", "question": "What is 2 plus 3?", "program": "def solution():\n    return 2 + 3"},
    {"id": "e2", "question": "Half of 10?", "program": "def solution():\n    return 10 / 2"},
]


def test_rendered_prompt_is_pinned():
    assert mp.build_messages("How many legs do 3 cats have?", EXEMPLARS) == [
        {"role": "system", "content": (
            "You solve math word problems by writing a Python function `solution()` that computes the "
            "answer step by step with named variables and returns it as a number. Write only the code block.")},
        {"role": "user", "content": "What is 2 plus 3?"},
        {"role": "assistant", "content": "```python\ndef solution():\n    return 2 + 3\n```"},
        {"role": "user", "content": "Half of 10?"},
        {"role": "assistant", "content": "```python\ndef solution():\n    return 10 / 2\n```"},
        {"role": "user", "content": "How many legs do 3 cats have?"},
        {"role": "assistant", "content": "```python\n"},
    ]


def test_fixed_exemplars_are_eight_and_each_verifies_in_the_sandbox():
    from tasks.sandbox import run_programs

    rows = [json.loads(line) for line in (mp.PROMPTS / "exemplars.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and len({r["id"] for r in rows}) == 8
    results = run_programs([r["program"] for r in rows])
    assert [mp.classify(res, r["answer"]) for res, r in zip(results, rows)] == [("ok", True)] * 8


@pytest.mark.parametrize(
    "text, continued, program, error",
    [
        ("def solution():\n    x = 3\n    return x * 2\n```\nThat's it.", True, "def solution():\n    x = 3\n    return x * 2", None),
        ("def solution():\n    return 4\n", True, "def solution():\n    return 4", None),  # stop string ate the fence
        ("", True, None, "empty_output"),
        ("   \n ", True, None, "empty_output"),
        (None, True, None, "empty_output"),
        ("The answer is 42.", False, None, "no_solution_function"),  # prose only
        ("The answer is 42.", True, None, "no_solution_function"),  # prose inside the pre-filled fence
        ("def solution():\n```", True, None, "empty_function_body"),
        ("def solution():\nThe answer is 4", True, None, "not_code"),
        ("def solution():\n    x = 3\n    y = x *", True, "def solution():\n    x = 3\n    y = x *", "no_return"),  # truncated
        ("def total(a):\n    return a\n", True, None, "no_solution_function"),  # wrong function name
        # several blocks: the first one defining solution() wins
        ("Sure!\n```python\nprint('hi')\n```\n```python\ndef solution():\n    return 1\n```\n```python\ndef solution():\n    return 2\n```",
         False, "def solution():\n    return 1", None),
        ("noise #$%^ def solution(): ...", False, None, "no_solution_function"),
        ("junk\ndef solution():\n    return 7\nmore prose", False, "def solution():\n    return 7\nmore prose", None),
    ],
)
def test_parse_never_raises(text, continued, program, error):
    assert mp.parse(text, continued=continued) == {"program": program, "parse_error": error}


def test_classify_statuses():
    ok = ExecResult(status="ok", value=5.0, result_repr="5", error=None, stdout="", wall_s=0.01)
    assert mp.classify(ok, 5.004) == ("ok", True)
    assert mp.classify(ok, 6) == ("wrong", False)
    assert mp.classify(ExecResult("ok", None, "'five'", None, "", 0.01), 5) == ("wrong", False)
    assert mp.classify(ExecResult("error", None, None, "ZeroDivisionError", "", 0.01), 5) == ("error", False)
    assert mp.classify(ExecResult("timeout", None, None, "timeout", "", 5.0), 5) == ("timeout", False)
    assert mp.classify(None, 5) == ("no_program", False)


def test_sampling_plan_is_one_greedy_then_k_minus_one_sampled():
    plan = mp.MathProgramsConfig(samples=4, temperature=0.5).sampling_plan()
    assert [(first, p.n, p.temperature) for first, p in plan] == [(0, 1, 0.0), (1, 3, 0.5)]
    assert all(p.stop == ("```",) and p.logprobs for _, p in plan)
    assert [(f, p.n) for f, p in mp.MathProgramsConfig(samples=1).sampling_plan()] == [(0, 1)]


def test_config_hash_tracks_what_shapes_output_only():
    base = mp.MathProgramsConfig()
    assert base.config_hash("m") == mp.MathProgramsConfig().config_hash("m")
    assert base.config_hash("m") != mp.MathProgramsConfig(samples=2).config_hash("m")
    assert base.config_hash("m") != base.config_hash("other-model")
    assert base.config_hash("m") == mp.MathProgramsConfig(timeout_s=9).config_hash("m")


@pytest.mark.parametrize("bad", [{"samples": 0}, {"samples": 65}, {"exemplars": 9}, {"exemplars": 0},
                                 {"timeout_s": 0}, {"temperature": -0.1}, {"max_tokens": 8}, {"n_exemplars": 2}])
def test_config_validates(bad):
    with pytest.raises(ValueError):
        mp.MathProgramsConfig(**bad)


def test_config_gives_sandbox_limits():
    limits = mp.MathProgramsConfig(timeout_s=2.5).limits()
    assert (limits.timeout_s, limits.memory_mb) == (2.5, 512)


def test_verified_pool_prefers_the_fixed_pass_and_the_greedy_attempt():
    rows = [
        {"source_id": "a", "question": "qa", "program": "dynamic-0", "pass": "dynamic", "attempt": 0},
        {"source_id": "a", "question": "qa", "program": "fixed-2", "pass": "fixed", "attempt": 2},
        {"source_id": "a", "question": "qa", "program": "fixed-1", "pass": "fixed", "attempt": 1},
        {"source_id": "b", "question": "qb", "program": "dynamic-3", "pass": "dynamic", "attempt": 3},
    ]
    assert sorted(ex.verified_pool(rows), key=lambda e: e["id"]) == [
        {"id": "a", "question": "qa", "program": "fixed-1"},
        {"id": "b", "question": "qb", "program": "dynamic-3"},
    ]


def test_pick_exemplars_puts_the_most_similar_last():
    pool = [{"id": "apples", "question": "Apples cost 2 dollars each. How much do 5 apples cost?", "program": "a"},
            {"id": "train", "question": "A train travels 60 km per hour for 3 hours. How far does the train go?",
             "program": "t"},
            {"id": "ages", "question": "Tom is twice as old as Ann. Ann is 4. How old is Tom?", "program": "g"}]
    picked = ex.pick_exemplars(["A fast train travels 90 km per hour. How far does the train go in 2 hours?",
                                "Pears cost 3 dollars each. How much do 4 pears cost?"], pool, k=2)
    assert [e["id"] for e in picked[0]][-1] == "train" and len(picked[0]) == 2
    assert [e["id"] for e in picked[1]][-1] == "apples"
    assert ex.pick_exemplars(["anything"], [], k=2) == [[]] and ex.pick_exemplars([], pool, k=2) == []


def _problem(source_id="p1", gold=6.0):
    return {"source_id": source_id, "source_file": "x.jsonl", "source_row": 1, "question": "2*3?",
            "gold_answer": gold, "pass": "fixed", "exemplars": EXEMPLARS}


def test_generate_execute_and_records_with_a_scripted_engine(tmp_path):
    replies = ["def solution():\n    return 2 * 3\n```", "def solution():\n    return 1 / 0\n```", "I don't know",
               "def solution():\n    while True:\n        pass\n```"]
    engine = FakeEngine(replies=replies)
    config = mp.MathProgramsConfig(samples=4, timeout_s=1.0)
    problems = [asyncio.run(mp.write_programs(_problem(), engine, config))]
    # one greedy request, one sampled request with n=3, same conversation
    assert [(p.n, p.temperature) for _, p in engine.calls] == [(1, 0.0), (3, 0.5)]
    assert engine.calls[0][0] == engine.calls[1][0] == mp.build_messages("2*3?", EXEMPLARS)
    problems = mp.execute_attempts(problems, config)
    statuses = [(a["attempt"], a["exec_status"], a["correct"]) for a in problems[0]["attempts"]]
    assert statuses == [(0, "ok", True), (1, "error", False), (2, "no_program", False), (3, "timeout", False)]

    lineage = {"run_id": "r1", "model": "fake", "engine": "fake", "config_hash": "h", "max_tokens": 256,
               "created_at": datetime.now(timezone.utc)}
    records = mp.to_records(problems[0], lineage)
    table = TableStore(tmp_path, MATH_PROGRAMS).to_arrow(records)  # raises if a column is off
    assert table.num_rows == 4 and table.schema.equals(MATH_PROGRAMS.arrow)
    assert len({r["record_id"] for r in records}) == 4
    assert records[0]["record_id"] == mp.record_id("p1", "h", "fixed", 0)
    assert records[2]["raw_output"] == "I don't know" and records[2]["program"] is None
    assert records[0]["exemplar_ids"] == ["e1", "e2"]


@pytest.mark.integration
def test_records_match_the_sync_steps_golden(golden_engine, golden):
    """Greedy, on the embedded model: the per-row program writes what the sync batch steps wrote."""
    lineage, check = golden
    config = mp.MathProgramsConfig(samples=1, exemplars=4, max_tokens=128)
    problems = [{**p, "pass": "fixed", "exemplars": list(mp.fixed_exemplars()[:4])}
                for p in mp.load_problems("samples/math_word_problems.jsonl", 3).rows]

    async def run_all():
        return await asyncio.gather(*(mp.write_programs(p, golden_engine, config) for p in problems))

    problems = mp.execute_attempts(asyncio.run(run_all()), config)
    records = [r for p in problems for r in mp.to_records(p, {**lineage, "max_tokens": 128})]
    check("math_programs", records, ignore=("exec_seconds",))  # a measured wall time


def test_load_problems_gsm8k_format_and_ids(tmp_path, shared_data):
    problems = mp.load_problems(shared_data / "gsm8k" / "train.jsonl", limit=5).rows
    assert len(problems) == 5 and problems[0]["gold_answer"] == 72  # Natalia's clips
    assert len({p["source_id"] for p in problems}) == 5
    # content ids are stable across reads
    assert [p["source_id"] for p in problems] == [p["source_id"] for p in mp.load_problems(shared_data / "gsm8k" / "train.jsonl", limit=5).rows]


@pytest.mark.parametrize(
    "lines, row, message",
    [
        (['{"question": "a?", "answer": "#### 1"}', "{not json"], 2, "invalid JSON"),
        (['{"question": "a?", "answer": "#### 1"}', '{"text": "b?", "answer": "2"}'], 2, "missing column"),
        (['{"question": "a?", "answer": "no number here"}'], 1, "'answer'"),
        (['{"question": "", "answer": "3"}'], 1, "empty"),
        (['[1, 2]'], 1, "expected a JSON object"),
    ],
)
def test_bad_input_names_file_and_row(tmp_path, lines, row, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError) as info:
        mp.load_problems(path)
    assert f"{path}: row {row}:" in str(info.value) and message in str(info.value)
