"""Proves planning by DuckDB anti-join (tasks/runtime/planning.py) on real Parquet written by TableStore:
a rerun plans exactly the rows that are not committed, per config hash and (math-programs) per pass and
solved; a damaged part is quarantined and its rows planned again; staged sources read back as they were
written; and a plan streams into Ray through read_parquet with its extra fields."""
from __future__ import annotations

from datetime import datetime, timezone

import pyarrow.parquet as pq
import pytest

from schemas.store import TableStore
from schemas.tables import MATH_PROGRAMS
from tasks.runtime.generator import Plan, plan_todo
from tasks.runtime.inputs import Source
from tasks.runtime.planning import CHUNK_ROWS, anti_join, count_matching, read_staged, stage_rows

NOW = datetime.now(timezone.utc)


def _record(source_id: str, config_hash: str = "h1", pass_name: str = "fixed", correct: bool = False,
            attempt: int = 0) -> dict:
    return {"record_id": f"{source_id}|{config_hash}|{pass_name}|{attempt}", "source_id": source_id,
            "run_id": "r1", "generator": "math-programs", "model": "m", "engine": "fake",
            "prompt_version": "v1", "config_hash": config_hash, "created_at": NOW, "question": "q",
            "gold_answer": 1.0, "pass": pass_name, "attempt": attempt,
            "exec_status": "ok" if correct else "wrong", "correct": correct}


def _problems(n: int) -> list[dict]:
    return [{"source_id": f"p{i}", "source_row": i + 1, "question": f"question {i}", "nested": {"k": [i]}}
            for i in range(n)]


def _ids(plan: Plan) -> set[str]:
    return {row["source_id"] for row in plan.rows}


def test_staged_rows_read_back_in_order_in_chunks(tmp_path):
    rows = _problems(CHUNK_ROWS + 5)
    staged = stage_rows(rows, str(tmp_path))
    assert staged.count == len(rows)
    meta = pq.ParquetFile(staged.files[0]).metadata
    assert meta.num_row_groups == 2 and meta.row_group(0).num_rows == CHUNK_ROWS
    batches = list(read_staged(staged.files))
    assert [len(b) for b in batches] == [CHUNK_ROWS, 5]
    assert [r for b in batches for r in b] == rows


def test_a_rerun_plans_exactly_what_is_not_committed(tmp_path):
    store = TableStore(tmp_path / "data", MATH_PROGRAMS)
    source = Source(_problems(10))
    first = plan_todo(source, store, [{"config_hash": "h1"}])
    assert _ids(first) == {f"p{i}" for i in range(10)} and first.skipped == 0
    store.commit([_record("p1"), _record("p1", attempt=1), _record("p4")], "r1")
    store.commit([_record("p7")], "r2")
    second = plan_todo(source, store, [{"config_hash": "h1"}])
    assert _ids(second) == {f"p{i}" for i in range(10)} - {"p1", "p4", "p7"}
    assert second.skipped == 3 and len(second) == 7
    assert [r["source_id"] for r in second.rows] == sorted(_ids(second), key=lambda s: int(s[1:]))  # source order
    assert second.rows[0]["nested"] == {"k": [0]}  # rows come back whole


def test_config_hashes_are_planned_apart(tmp_path):
    store = TableStore(tmp_path / "data", MATH_PROGRAMS)
    store.commit([_record("p0", config_hash="h1"), _record("p1", config_hash="h2")], "r1")
    source = Source(_problems(3))
    assert _ids(plan_todo(source, store, [{"config_hash": "h1"}])) == {"p1", "p2"}
    assert _ids(plan_todo(source, store, [{"config_hash": "h2"}])) == {"p0", "p2"}
    assert _ids(plan_todo(source, store, [{"config_hash": "h3"}])) == {"p0", "p1", "p2"}


def test_math_passes_and_solved(tmp_path):
    """fixed: not yet done in the fixed pass; dynamic: neither solved nor done in the dynamic pass,
    skipped counting only the dynamic-pass ones."""
    store = TableStore(tmp_path / "data", MATH_PROGRAMS)
    store.commit([_record("p0", correct=True), _record("p1"), _record("p2"),
                  _record("p3", pass_name="dynamic"), _record("p5", config_hash="other", correct=True)], "r1")
    source = Source(_problems(6))
    fixed = plan_todo(source, store, [{"config_hash": "h1", "pass": "fixed"}])
    assert _ids(fixed) == {"p3", "p4", "p5"}
    folder, files = source.staging_folder(), source.staged_files()
    dynamic_done = {"config_hash": "h1", "pass": "dynamic"}
    unsolved = anti_join(files, store, folder, [{"config_hash": "h1", "correct": True}, dynamic_done])
    assert {r["source_id"] for b in read_staged(unsolved.files) for r in b} == {"p1", "p2", "p4", "p5"}
    assert count_matching(files, store, folder, [dynamic_done]) == 1


def test_a_damaged_part_is_quarantined_and_its_rows_planned_again(tmp_path):
    store = TableStore(tmp_path / "data", MATH_PROGRAMS)
    store.commit([_record("p0")], "r1")
    store.commit([_record("p1")], "r2")
    victim = [f for f in store.files() if "run_id=r2" in f][0]
    with open(victim, "r+b") as fh:
        fh.truncate(fh.seek(0, 2) // 2)
    plan = plan_todo(Source(_problems(3)), store, [{"config_hash": "h1"}])
    assert _ids(plan) == {"p1", "p2"}
    [moved] = store.quarantined
    assert moved["file"] == victim and "_quarantine" in moved["moved_to"]


def test_staged_source_is_not_read_into_the_driver_until_asked(tmp_path):
    staged = stage_rows(_problems(5), str(tmp_path))
    source = Source(staged=staged)
    assert len(source) == 5 and source._rows is None
    store = TableStore(tmp_path / "data", MATH_PROGRAMS)
    store.commit([_record("p2")], "r1")
    plan = plan_todo(source, store, [{"config_hash": "h1"}], extra={"pass": "fixed"})
    assert source._rows is None and plan._rows is None and len(plan) == 4
    assert all(r["pass"] == "fixed" for r in plan.rows)


@pytest.mark.usefixtures("ray_cluster")
def test_a_staged_plan_streams_into_ray_with_its_extra_fields(tmp_path):
    from tasks.runtime.ray_stage import iter_row_batches, plan_dataset

    store = TableStore(tmp_path / "data", MATH_PROGRAMS)
    store.commit([_record("p3")], "r1")
    plan = plan_todo(Source(_problems(20)), store, [{"config_hash": "h1"}], extra={"pass": "fixed", "k": [1]})
    rows = [r for batch in iter_row_batches(plan_dataset(plan, rows_per_block=4)) for r in batch]
    assert {r["source_id"] for r in rows} == {f"p{i}" for i in range(20)} - {"p3"}
    assert all(r["pass"] == "fixed" and r["k"] == [1] and r["question"] for r in rows)


def _parsed(ids: list[str], long_rows: tuple[int, ...] = ()) -> list[dict]:
    return [{"source_id": sid, "source_row": n, "question": "x" * (50 if n in long_rows else 5)}
            for n, sid in enumerate(ids, start=1)]


def test_load_finds_repeated_ids_with_duckdb_naming_both_rows(tmp_path):
    from tasks.runtime.inputs import InputError, RowChecks, select_rows

    with pytest.raises(InputError, match=r"f.jsonl: row 5: id 'b' repeats row 2"):
        select_rows("f.jsonl", _parsed(["a", "b", "c", "d", "b", "a"]), folder=str(tmp_path))


def test_load_counts_every_reject_and_lists_the_first_thousand(tmp_path):
    from tasks.runtime.inputs import MAX_LISTED_REJECTS, RowChecks, select_rows

    ids = [f"u{i}" for i in range(100)] + ["u0"] * 1_500  # 1,500 repeats of the first row's id
    checks = RowChecks(max_chars=20, drop_duplicates=True)
    source = select_rows("f.jsonl", _parsed(ids, long_rows=(3, 4)), checks=checks, folder=str(tmp_path))
    assert source.reject_counts == {"duplicate_id": 1_500, "input_too_long": 2}
    assert len(source.rejects) == MAX_LISTED_REJECTS and source.rejected == 1_502
    assert {r["source_row"] for r in source.rejects if r["reason"] == "input_too_long"} == {3, 4}
    assert len(source) == 98 and source._rows is None
    assert [r["source_id"] for r in source.rows] == [f"u{i}" for i in range(100) if i not in (2, 3)]


def test_load_with_a_limit_counts_used_rows(tmp_path):
    from tasks.runtime.inputs import RowChecks, select_rows

    source = select_rows("f.jsonl", _parsed(["a", "a", "b", "c", "d"], long_rows=(3,)), limit=2,
                         checks=RowChecks(max_chars=20, drop_duplicates=True), folder=str(tmp_path))
    assert [r["source_id"] for r in source.rows] == ["a", "c"]
    assert source.reject_counts == {"duplicate_id": 1, "input_too_long": 1}


def test_a_large_plan_keeps_the_input_order(tmp_path):
    """Many row groups, two DuckDB threads: the todo rows come out in the source's order, unsorted."""
    store = TableStore(tmp_path / "data", MATH_PROGRAMS)
    store.commit([_record(f"p{i}") for i in range(0, 30_000, 3)], "r1")
    plan = plan_todo(Source(staged=stage_rows(_problems(30_000), str(tmp_path))), store, [{"config_hash": "h1"}])
    assert [int(r["source_id"][1:]) for r in plan.rows] == [i for i in range(30_000) if i % 3]


def test_an_input_whose_every_row_is_rejected_plans_nothing(tmp_path):
    from tasks.runtime.inputs import RowChecks, select_rows

    source = select_rows("f.jsonl", _parsed(["a", "b"], long_rows=(1, 2)), checks=RowChecks(max_chars=20),
                         folder=str(tmp_path))
    assert len(source) == 0 and source.reject_counts == {"input_too_long": 2}
    plan = plan_todo(source, TableStore(tmp_path / "data", MATH_PROGRAMS), [{"config_hash": "h1"}])
    assert len(plan) == 0 and plan.rows == [] and plan.skipped == 0
