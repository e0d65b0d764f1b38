"""Proves the table store: commits are atomic files with the explicit schema (version in the
metadata), no temporary file survives, a bad row fails before anything is written, and
committed_keys finds exactly what was committed (the checkpoint reruns rely on)."""
from __future__ import annotations

from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute.field)
import pyarrow.parquet as pq
import pytest

from schemas.tables import RUNS
from tasks.runtime.runs import RunState, write_run
from schemas.store import TableStore


def test_run_row_is_replaced_atomically(tmp_path):
    run = RunState.start("math-programs", {"limit": 3}, model="m", engine="fake")
    first = write_run(tmp_path, run)
    run.rows_out = 7
    run.dropped["wrong"] += 2
    second = write_run(tmp_path, run.finish("completed"))
    assert first == second  # same file name: replaced, not duplicated
    store = TableStore(tmp_path, RUNS)
    rows = store.read().to_pylist()
    assert len(rows) == 1 and rows[0]["status"] == "completed" and rows[0]["rows_out"] == 7
    assert dict(rows[0]["dropped_by_reason"]) == {"wrong": 2}
    assert pq.read_schema(second).metadata[b"datagen.schema_version"] == str(RUNS.version).encode()
    assert not list(tmp_path.rglob(".*.tmp"))


def test_a_runs_file_of_an_older_schema_still_reads(tmp_path):
    """runs v1 had no engine columns: its rows read with those as nulls beside v2 rows."""
    old = RunState.start("math-programs", {}, model="m", engine="vllm").finish("completed").to_row()
    v1 = pa.schema([f for f in RUNS.schema if not f.name.startswith("engine_")])
    path = tmp_path / "runs" / "run_id=old" / "run.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{k: old[k] for k in v1.names}], schema=v1), path)
    new = RunState.start("math-programs", {}, model="m", engine="vllm", engine_choice="auto: because")
    write_run(tmp_path, new.finish("completed"))
    rows = {r["run_id"]: r for r in TableStore(tmp_path, RUNS).read().to_pylist()}
    assert rows[old["run_id"]]["engine_choice"] is None and rows[old["run_id"]]["engine_requests"] is None
    assert rows[new.run_id]["engine_choice"] == "auto: because" and rows[new.run_id]["engine_requests"] == 0


def test_commit_validates_before_writing(tmp_path):
    store = TableStore(tmp_path, RUNS)
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError, KeyError, TypeError)):
        store.commit([{"run_id": "r", "flow": "f", "status": "x", "started_at": "not a time"}], "r")
    assert store.files() == []
    assert store.commit([], "r") is None


def test_committed_keys_filters(tmp_path):
    store = TableStore(tmp_path, RUNS)
    now = datetime.now(timezone.utc)
    for run_id, flow in [("r1", "a"), ("r2", "b"), ("r3", "a")]:
        store.commit([{"run_id": run_id, "flow": flow, "status": "completed", "started_at": now}], run_id)
    assert store.committed_keys(["run_id"], flow="a") == {("r1",), ("r3",)}
    assert store.committed_keys(["run_id", "flow"]) == {("r1", "a"), ("r2", "b"), ("r3", "a")}
    assert TableStore(tmp_path / "empty", RUNS).committed_keys(["run_id"]) == set()


def _runs_rows(store: TableStore, run_ids) -> None:
    now = datetime.now(timezone.utc)
    for run_id in run_ids:
        store.commit([{"run_id": run_id, "flow": "f", "status": "completed", "started_at": now}], run_id)


def test_a_truncated_part_is_quarantined_and_the_rest_still_reads(tmp_path):
    store = TableStore(tmp_path, RUNS)
    _runs_rows(store, ["r1", "r2", "r3"])
    victim = store.files()[1]
    with open(victim, "r+b") as fh:  # a crash or a full disk mid-write on a filesystem without atomic rename
        fh.truncate(fh.seek(0, 2) // 2)
    assert set(store.damaged()) == {victim} and "magic bytes" in store.damaged()[victim]
    assert store.committed_keys(["run_id"]) == {("r1",), ("r3",)}  # r2's rows are missing: a rerun redoes them
    [moved] = store.quarantined
    assert moved["file"] == victim and moved["moved_to"].startswith(f"{store.root}/_quarantine/run_id=r2/")
    assert "magic bytes" in moved["why"]
    assert victim not in store.files() and store.damaged() == {}
    assert (tmp_path / "runs" / "_quarantine" / "run_id=r2" / victim.rsplit("/", 1)[1]).is_file()  # kept to look at


def test_an_empty_part_is_damaged_too_and_other_read_errors_are_not_quarantined(tmp_path):
    store = TableStore(tmp_path, RUNS)
    _runs_rows(store, ["r1"])
    empty = tmp_path / "runs" / "run_id=r9" / "part-empty.parquet"
    empty.parent.mkdir()
    empty.write_bytes(b"")
    assert set(store.damaged()) == {str(empty)}
    # A filter on a column the table does not have is the caller's error: nothing is moved.
    good = TableStore(tmp_path / "other", RUNS)
    _runs_rows(good, ["r1"])
    with pytest.raises(pa.ArrowInvalid):
        good.read(filter=pa.compute.field("no_such_column") == 1)
    assert good.quarantined == [] and len(good.files()) == 1
    assert store.read(columns=["run_id"]).column("run_id").to_pylist() == ["r1"]
    assert [m["file"] for m in store.quarantined] == [str(empty)]
