"""Proves pass planning against committed tables: the fixed pass skips problems already committed
under the same config, and the dynamic pass takes exactly the unsolved problems, with verified
programs of the most similar problems as exemplars (most similar last), and skips when there is
nothing verified to learn from."""
from __future__ import annotations

from datetime import datetime, timezone

from schemas.tables import MATH_PROGRAMS
from tasks import math_programs as mp
from tasks.math_programs_tasks import plan_dynamic_pass, plan_fixed_pass
from tasks.store import TableStore

CONFIG = mp.MathProgramsConfig(samples=1, n_exemplars=2)
PROBLEMS = [
    {"source_id": sid, "source_file": "f.jsonl", "source_row": i, "question": q, "gold_answer": 1.0}
    for i, (sid, q) in enumerate([
        ("train", "A train travels 60 km per hour for 3 hours. How far does the train go?"),
        ("apples", "Apples cost 2 dollars each. How much do 5 apples cost?"),
        ("train2", "A fast train travels 90 km per hour for 2 hours. How far does it travel?"),
        ("pears", "Pears cost 3 dollars each. How much do 4 pears cost?"),
    ], start=1)
]


def _commit(data_dir, problem, correct, pass_name="fixed", config_hash="h"):
    attempt = {"attempt": 0, "temperature": 0.0, "top_p": 1.0, "seed": None, "raw_output": "x",
               "program": "def solution():\n    return 1", "parse_error": None,
               "exec_status": "ok" if correct else "wrong", "exec_result": "1", "exec_value": 1.0,
               "exec_error": None, "exec_seconds": 0.01, "correct": correct, "prompt_tokens": 1,
               "completion_tokens": 1, "finish_reason": "stop", "mean_logprob": -0.1}
    row = {**problem, "pass": pass_name, "exemplars": [], "attempts": [attempt]}
    lineage = {"run_id": "r", "model": "m", "engine": "fake", "config_hash": config_hash, "max_tokens": 8,
               "created_at": datetime.now(timezone.utc)}
    TableStore(data_dir, MATH_PROGRAMS).commit(mp.to_records(row, lineage), "r")


def test_fixed_pass_skips_committed_under_same_config(tmp_path):
    _commit(tmp_path, PROBLEMS[0], correct=True)
    _commit(tmp_path, PROBLEMS[1], correct=False, config_hash="other")
    planned = plan_fixed_pass.fn(PROBLEMS, str(tmp_path), CONFIG, "h")
    assert {p["source_id"] for p in planned} == {"apples", "train2", "pears"}
    assert all(p["pass"] == "fixed" and [e["id"] for e in p["exemplars"]] == ["ex-bakery", "ex-train"] for p in planned)


def test_dynamic_pass_retrieves_similar_verified_problems(tmp_path):
    _commit(tmp_path, PROBLEMS[0], correct=True)   # train: verified
    _commit(tmp_path, PROBLEMS[1], correct=True)   # apples: verified
    _commit(tmp_path, PROBLEMS[2], correct=False)  # train2: unsolved
    _commit(tmp_path, PROBLEMS[3], correct=False)  # pears: unsolved
    _commit(tmp_path, PROBLEMS[3], correct=False, pass_name="dynamic")  # ...but already had its dynamic pass
    planned, skipped = plan_dynamic_pass.fn(PROBLEMS, str(tmp_path), CONFIG, "h")
    assert skipped == 0
    assert [p["source_id"] for p in planned] == ["train2"]
    assert planned[0]["pass"] == "dynamic"
    assert [e["id"] for e in planned[0]["exemplars"]] == ["apples", "train"]  # most similar last


def test_dynamic_pass_skips_without_verified_exemplars(tmp_path):
    _commit(tmp_path, PROBLEMS[0], correct=False)
    planned, skipped = plan_dynamic_pass.fn(PROBLEMS[:1], str(tmp_path), CONFIG, "h")
    assert planned == [] and skipped == 1
