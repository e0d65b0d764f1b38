"""Proves compaction: a run's many part files become one (or one per `max_rows`) holding exactly the same
rows and record ids; readers running all the while — TableStore.read and DuckDB's views, each listing
again when a file it listed vanished, as `datagen sql` does — always see every row exactly once (the
folder swap is atomic); a failure before the swap leaves the run as it was
with no staging folder; old parts wait out their grace period under _compacted/ and the next compaction
deletes them; an object-store data dir is refused with a clear error; `datagen compact` compacts
finished runs and leaves a running one alone; a real run compacts its own parts when it ends."""
from __future__ import annotations

import os
import threading
from datetime import datetime, timezone

import pytest

import schemas.store as store_module
from flows.cli import main as cli_main
from schemas.catalog import connect
from schemas.store import CompactionUnsupported, TableStore, retry_vanished
from schemas.tables import MATH_PROGRAMS, RUNS
from tasks.runtime.runs import RunState, write_run

T0 = datetime(2026, 12, 1, tzinfo=timezone.utc)


def _rows(run_id: str, start: int, count: int) -> list[dict]:
    return [{"record_id": f"{run_id}-{i}", "source_id": f"p{i}", "run_id": run_id, "generator": "math_programs",
             "model": "m", "engine": "fake", "prompt_version": "v1", "config_hash": "h1", "created_at": T0,
             "question": f"q{i}", "gold_answer": float(i), "pass": "fixed", "attempt": 0,
             "program": f"def solution():\n    return {i}", "exec_status": "ok", "correct": True}
            for i in range(start, start + count)]


def _committed(store: TableStore, run_id: str, parts: int, per_part: int) -> set[str]:
    for k in range(parts):
        store.commit(_rows(run_id, k * per_part, per_part), run_id=run_id)
    return {f"{run_id}-{i}" for i in range(parts * per_part)}


def _ids(store: TableStore) -> list[str]:
    return store.read(columns=["record_id"]).column("record_id").to_pylist()


def test_compaction_keeps_every_row_in_fewer_files(tmp_path):
    store = TableStore(tmp_path, MATH_PROGRAMS)
    r1, r2 = _committed(store, "r1", parts=12, per_part=5), _committed(store, "r2", parts=3, per_part=4)
    before = sorted(store.read().to_pylist(), key=lambda r: r["record_id"])
    assert store.compact(["r1"], max_rows=25) == {"r1": (12, 3)}  # 60 rows in files of at most 25 rows
    assert sorted(store.read().to_pylist(), key=lambda r: r["record_id"]) == before
    assert sorted(_ids(store)) == sorted(r1 | r2)
    assert len([f for f in store.files() if "/run_id=r1/" in f]) == 3
    assert len([f for f in store.files() if "/run_id=r2/" in f]) == 3  # not asked
    assert store.compact(max_rows=25) == {"r2": (3, 1)}  # r1's 60 rows already fill 3 files of 25
    assert store.compact(max_rows=25) == {}  # nothing left to merge
    leftovers = [n for n in os.listdir(store.root) if n.startswith(".")]
    assert leftovers == [] and len(os.listdir(f"{store.root}/_compacted")) == 2  # old parts, for readers mid-scan


def test_readers_see_every_row_once_while_compaction_swaps(tmp_path):
    store = TableStore(tmp_path, MATH_PROGRAMS)
    first = _committed(store, "r1", parts=40, per_part=3)
    seen, stop = [], threading.Event()

    def read_all():
        while not stop.is_set():
            ids = TableStore(tmp_path, MATH_PROGRAMS).read(columns=["record_id"]).column(0).to_pylist()
            query = "SELECT count(*), count(DISTINCT record_id) FROM math_programs"  # as `datagen sql` runs it:
            [(n, distinct)] = retry_vanished(lambda: connect(tmp_path).sql(query).fetchall())  # again if a file vanished
            seen.append((ids, n, distinct))

    reader = threading.Thread(target=read_all)
    reader.start()
    rounds = 0
    try:  # a new part, then a compaction that swaps it in with the rest, ... until the readers looked 20 times
        while len(seen) < 20 and rounds < 60:
            store.commit(_rows("r1", 1_000 + 3 * rounds, 3), run_id="r1")
            assert store.compact(["r1"]) == {"r1": (2 if rounds else 41, 1)}
            rounds += 1
    finally:
        stop.set()
        reader.join()
    assert len(seen) >= 20 and rounds > 2
    for ids, n, distinct in seen:
        assert len(ids) == len(set(ids)) and n == distinct  # never the old parts and the new file together
        assert first <= set(ids) and n >= len(first)  # never neither
    assert len(_ids(store)) == len(first) + 3 * rounds


def test_a_failed_swap_leaves_the_run_as_it_was(tmp_path, monkeypatch):
    store = TableStore(tmp_path, MATH_PROGRAMS)
    ids = _committed(store, "r1", parts=4, per_part=2)
    files = store.files()

    def broken(a, b):
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(store_module, "_exchange", broken)
    with pytest.raises(OSError, match="Invalid argument"):
        store.compact()
    assert store.files() == files and set(_ids(store)) == ids
    assert [n for n in os.listdir(store.root) if n.startswith(".")] == []  # the staging folder is gone


def test_old_parts_are_deleted_after_their_grace_period(tmp_path, monkeypatch):
    store = TableStore(tmp_path, MATH_PROGRAMS)
    _committed(store, "r1", parts=3, per_part=2)
    store.compact()
    assert len(os.listdir(f"{store.root}/_compacted")) == 1
    os.makedirs(f"{store.root}/.compact-crashed")  # what a crash before the swap leaves
    monkeypatch.setattr(store_module, "COMPACTED_GRACE_S", -1)
    _committed(store, "r2", parts=2, per_part=1)
    store.compact()  # sweeps what is past its grace first
    assert len(os.listdir(f"{store.root}/_compacted")) == 1  # only r2's, just moved there
    assert not os.path.exists(f"{store.root}/.compact-crashed")


def test_an_object_store_data_dir_is_refused(tmp_path):
    store = TableStore("memory://datagen-compaction-test", MATH_PROGRAMS)
    store.commit(_rows("r1", 0, 2), run_id="r1")
    with pytest.raises(CompactionUnsupported, match="datagen-compaction-test/math_programs: compaction needs a local or shared POSIX data dir"):
        store.compact()


def test_cli_compacts_finished_runs_and_leaves_a_running_one(tmp_path, capsys):
    store = TableStore(tmp_path, MATH_PROGRAMS)
    _committed(store, "done", parts=5, per_part=2)
    _committed(store, "live", parts=3, per_part=2)
    for run_id, status in (("done", "completed"), ("live", "running")):
        run = RunState.start("math-programs", {}, model="m", engine="fake")
        run.run_id, run.status = run_id, status
        write_run(tmp_path, run)  # `live` has this process as its driver: alive, so not marked stale
    assert cli_main(["compact", "--data-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines() == ["math_programs: 1 runs, 5 part files -> 1",
                                                    "left alone (still running): live"]
    assert len([f for f in store.files() if "/run_id=live/" in f]) == 3
    assert len(TableStore(tmp_path, RUNS).files()) == 2
    assert cli_main(["compact", "--data-dir", str(tmp_path), "--table", "nope"]) == 2
    assert capsys.readouterr().err.startswith("datagen compact: no table nope (tables: ")
