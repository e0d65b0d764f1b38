"""Proves the math-programs flow end to end with real components: the embedded SmolLM2 model (via
transformers, and via the vLLM CPU engine) in Ray actors, a real Prefect API, Parquet files and
DuckDB. A rerun adds no rows; a driver killed with SIGKILL mid-run and then rerun leaves every
record exactly once; the run's counts and `datagen eval math-programs` agree with the table; the
CLI's `datagen sql` answers from the same tables. With the input and the data dir on S3 (a real S3
API server on 127.0.0.1) the same CLI run, rerun and SQL work unchanged."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import duckdb
import pytest

from flows.math_programs import MathProgramsSettings, math_programs
from schemas.catalog import CATALOG_FILE, connect
from schemas.datadir import DataDir
from tasks.generators.math_programs.eval import evaluation_table

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gsm8k(tmp_path_factory, shared_data) -> Path:
    """The first 4 GSM8K train problems, as the user's input file."""
    path = tmp_path_factory.mktemp("input") / "gsm8k4.jsonl"
    lines = (shared_data / "gsm8k" / "train.jsonl").read_text().splitlines()[:4]
    path.write_text("\n".join(lines) + "\n")
    return path


def _settings(input_path, data_dir, **overrides) -> MathProgramsSettings:
    return MathProgramsSettings(input=str(input_path), data_dir=str(data_dir), samples=2, max_tokens=160,
                                batch_size=2, **overrides)


def _table(data_dir) -> list[dict]:
    con = duckdb.connect(str(Path(data_dir) / CATALOG_FILE), read_only=True)
    try:
        rel = con.sql("SELECT record_id, source_id, pass, attempt, exec_status, correct, engine, run_id FROM math_programs")
        return [dict(zip(rel.columns, row)) for row in rel.fetchall()]
    finally:
        con.close()


def _check_invariants(rows, n_problems, samples):
    assert len({r["record_id"] for r in rows}) == len(rows), "duplicate records"
    fixed = [(r["source_id"], r["attempt"]) for r in rows if r["pass"] == "fixed"]
    assert len(fixed) == len(set(fixed)) == n_problems * samples
    solved = {r["source_id"] for r in rows if r["correct"]}
    dynamic = {(r["source_id"], r["attempt"]) for r in rows if r["pass"] == "dynamic"}
    # dynamic attempts only for problems the fixed pass left unsolved, k per problem
    assert {s for s, _ in dynamic}.isdisjoint({r["source_id"] for r in rows if r["pass"] == "fixed" and r["correct"]})
    assert len(dynamic) % samples == 0
    for r in rows:
        assert r["exec_status"] in ("ok", "wrong", "error", "timeout", "no_program")
        assert r["correct"] == (r["exec_status"] == "ok")
    return solved


def test_transformers_flow_end_to_end_and_rerun(ray_cluster, prefect_harness, gsm8k, tmp_path):
    data_dir = tmp_path / "datasets"
    first = math_programs(_settings(gsm8k, data_dir))
    rows = _table(data_dir)
    _check_invariants(rows, n_problems=4, samples=2)
    assert first["status"] == "completed" and first["rows_in"] == 4 and first["rows_skipped"] == 0
    assert first["rows_out"] == len(rows) and first["tokens_generated"] > 0
    assert {r["engine"] for r in rows} == {"transformers"}
    # the run's counts agree with the table: problems and solved per pass, drops by exec status
    counts, fixed_solved = first["counts"], {r["source_id"] for r in rows if r["pass"] == "fixed" and r["correct"]}
    assert counts["fixed_problems"] == 4 and counts["fixed_solved"] == len(fixed_solved)
    assert counts["dynamic_problems"] == len({r["source_id"] for r in rows if r["pass"] == "dynamic"})
    assert counts["dynamic_problems"] + counts["dynamic_skipped_no_exemplars"] == 4 - len(fixed_solved)
    assert counts["verified_programs"] == counts.get("kept", 0) == sum(r["correct"] for r in rows)
    assert first["dropped_by_reason"] == dict(Counter(r["exec_status"] for r in rows if r["exec_status"] != "ok"))
    # ... and so does `datagen eval math-programs` on the same table
    table = evaluation_table(str(data_dir))
    assert [(t["run_id"], t["pass"]) for t in table][0] == (first["run_id"], "fixed")
    assert table[0]["problems"] == 4 and table[0]["solved"] == len(fixed_solved)
    assert sum(t["verified_programs"] for t in table) == counts["verified_programs"]

    second = math_programs(_settings(gsm8k, data_dir))
    assert second["rows_out"] == 0 and second["rows_skipped"] == 4
    assert second["counts"]["fixed_problems"] == 0 and second["counts"]["dynamic_problems"] == 0
    assert sorted(r["record_id"] for r in _table(data_dir)) == sorted(r["record_id"] for r in rows)

    con = duckdb.connect(str(data_dir / CATALOG_FILE), read_only=True)
    runs = con.sql("SELECT run_id, status, rows_out FROM runs ORDER BY started_at").fetchall()
    con.close()
    assert [(s, n) for _, s, n in runs] == [("completed", len(rows)), ("completed", 0)]

    # The run's counts are published as a Prefect table artifact.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def _artifacts():
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["math-programs-counts"])))

    import asyncio

    artifacts = asyncio.run(_artifacts())
    assert any(first["run_id"] in (a.description or "") for a in artifacts)

    # datagen sql, one-shot and interactive, on the same data dir
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "flows.cli", "sql", "--data-dir", str(data_dir),
                          "SELECT exec_status, count(*) AS n FROM math_programs GROUP BY 1 ORDER BY 1"],
                         capture_output=True, text=True, env=env, timeout=120, check=True).stdout
    assert "exec_status" in out and all(r["exec_status"] in out for r in rows)
    out = subprocess.run([sys.executable, "-m", "flows.cli", "sql", "--data-dir", str(data_dir)],
                         input="SELECT count(*) AS total\nFROM math_programs;\n.quit\n",
                         capture_output=True, text=True, env=env, timeout=120, check=True).stdout
    assert "math_programs" in out and str(len(rows)) in out


def test_killed_driver_then_rerun_loses_and_duplicates_nothing(ray_cluster, prefect_harness, gsm8k, tmp_path):
    data_dir = tmp_path / "datasets"
    # One problem at a time, so that batches commit one after another and the kill lands between them
    # (with rows in flight together, they all finish together).
    cmd = [sys.executable, "-m", "flows.cli", "run", "math-programs", "--input", str(gsm8k), "--samples", "2",
           "--max-tokens", "160", "--batch-size", "1", "--rows-in-flight", "1", "--no-dynamic",
           "--data-dir", str(data_dir), "--ray-address", ray_cluster]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_API_URL": prefect_harness}
    driver = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    parts = []
    while time.monotonic() < deadline and driver.poll() is None:
        parts = list((data_dir / "math_programs").glob("run_id=*/part-*.parquet"))
        if parts:
            break
        time.sleep(0.2)
    assert driver.poll() is None, f"driver ended before it could be killed: {driver.stderr.read()[-3000:]}"
    assert parts, "no batch was committed within 240 s"
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)
    committed_before = len(list((data_dir / "math_programs").glob("run_id=*/part-*.parquet")))
    assert 1 <= committed_before < 4  # killed mid-run: some batches committed, not all
    assert not any(p.name.endswith(".parquet") and p.name.startswith(".") for p in data_dir.rglob("*"))

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _table(data_dir)
    _check_invariants(rows, n_problems=4, samples=2)
    assert len({r["run_id"] for r in rows}) == 2  # the killed run's batches were kept, the rest redone
    runs = {r[0]: r[1] for r in duckdb.connect(str(data_dir / CATALOG_FILE), read_only=True)
            .sql("SELECT run_id, status FROM runs").fetchall()}
    assert sorted(runs.values()) == ["completed", "interrupted"]  # the rerun found the killed driver gone


def test_object_store_input_and_data_dir_through_the_cli(ray_cluster, prefect_harness, s3_server, gsm8k):
    prefix = f"s3://datagen-test/{uuid.uuid4().hex[:8]}"
    bucket = DataDir(prefix)
    bucket.write_bytes(gsm8k.read_bytes(), bucket.join("gsm8k4.jsonl"))
    data_dir = f"{prefix}/datasets"
    cmd = [sys.executable, "-m", "flows.cli", "run", "math-programs", "--input", f"{prefix}/gsm8k4.jsonl",
           "--limit", "2", "--samples", "2", "--max-tokens", "160", "--no-dynamic", "--data-dir", data_dir,
           "--ray-address", ray_cluster]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_API_URL": prefect_harness}
    counts = []
    for _ in range(2):
        done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "no lease" not in done.stderr  # the run held its lease on S3 (a conditional PUT)
        found = re.search(r"(\d+) source rows, (\d+) already done, (\d+) records written", done.stdout)
        assert found, done.stdout[-2000:]
        counts.append(tuple(map(int, found.groups())))
    assert counts == [(2, 0, 4), (2, 2, 0)]  # the rerun found its committed rows on S3
    assert f"table:   {data_dir}/math_programs" in done.stdout

    rel = connect(data_dir).sql("SELECT record_id, source_id, pass, attempt, exec_status, correct FROM math_programs")
    _check_invariants([dict(zip(rel.columns, row)) for row in rel.fetchall()], n_problems=2, samples=2)
    d = DataDir(data_dir)
    assert d.exists(d.join(CATALOG_FILE)) and d.list_files(d.join("runs")) != []
    out = subprocess.run([sys.executable, "-m", "flows.cli", "sql", "--data-dir", data_dir,
                          "SELECT count(*) AS records, count(DISTINCT record_id) AS ids FROM math_programs"],
                         capture_output=True, text=True, env=env, timeout=120, check=True).stdout
    assert re.search(r"│\s+4 │\s+4 │", out), out


@pytest.mark.vllm
def test_vllm_engine_flow(ray_cluster, prefect_harness, gsm8k, tmp_path):
    pytest.importorskip("vllm")
    data_dir = tmp_path / "datasets"
    summary = math_programs(_settings(gsm8k, data_dir, engine="vllm", limit=2))
    rows = _table(data_dir)
    _check_invariants(rows, n_problems=2, samples=2)
    assert {r["engine"] for r in rows} == {"vllm"} and summary["rows_out"] == len(rows)
    assert math_programs(_settings(gsm8k, data_dir, engine="vllm", limit=2))["rows_out"] == 0


def test_bad_input_is_a_clear_cli_error(prefect_harness, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q?", "answer": "#### 3"}) + "\n{oops\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_API_URL": prefect_harness}
    done = subprocess.run([sys.executable, "-m", "flows.cli", "run", "math-programs", "--input", str(bad),
                           "--data-dir", str(tmp_path / "d")], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2
    assert f"{bad}: row 2: invalid JSON" in done.stderr
