"""Proves a generator flow end to end through `--engine openai`: math-programs in Ray actors and a real
Prefect API, sending its requests to the real `vllm serve` (conftest.vllm_server) through a proxy that
injects 429s (with Retry-After), 500s and responses slower than the client's timeout. The run retries,
backs off and completes; its records are exactly those of a run against the server without faults (none
lost, none duplicated, every sample the same); records and the runs row say engine = openai and model =
the served name; the runs row has the endpoint's counts, the usage tokens and the cost from the given
prices; and the API key is in no record, no runs row, no Parquet file and no log line."""
from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from endpoint_servers import FaultProxy
from flows.math_programs import MathProgramsSettings, math_programs
from schemas.catalog import CATALOG_FILE

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

REPO = Path(__file__).resolve().parents[2]
SECRET = "sk-datagen-test-4d1c8e-not-for-logs"


def _run(base_url: str, data_dir: Path) -> dict:
    return math_programs(MathProgramsSettings(
        input=str(REPO / "samples" / "math_word_problems.jsonl"), limit=4, samples=2, max_tokens=96, exemplars=4,
        dynamic=False, batch_size=2, data_dir=str(data_dir), engine="openai", base_url=base_url, model="smol",
        api_key_env="DATAGEN_TEST_ENDPOINT_KEY", price_in=0.15, price_out=0.6, request_timeout=20.0,
        requests_in_flight=4))


def _records(data_dir: Path) -> dict:
    con = duckdb.connect(str(data_dir / CATALOG_FILE), read_only=True)
    try:
        rel = con.sql("SELECT * FROM math_programs")
        return {(r["source_id"], r["attempt"]): r for r in (dict(zip(rel.columns, row)) for row in rel.fetchall())}
    finally:
        con.close()


def _runs(data_dir: Path) -> list[dict]:
    con = duckdb.connect(str(data_dir / CATALOG_FILE), read_only=True)
    try:
        rel = con.sql("SELECT * FROM runs")
        return [dict(zip(rel.columns, row)) for row in rel.fetchall()]
    finally:
        con.close()


def test_faults_are_retried_and_lose_or_duplicate_nothing(vllm_server, ray_cluster, prefect_harness, tmp_path,
                                                          monkeypatch, capfd, caplog):
    monkeypatch.setenv("DATAGEN_TEST_ENDPOINT_KEY", SECRET)
    upstream = vllm_server.removesuffix("/v1")
    clean = _run(vllm_server, tmp_path / "clean")
    # "slow" answers after 21 s, past the client's 20 s timeout (an ordinary answer takes 1-5 s here, and
    # over 10 s when the 2 cores are shared with another test run: those are timeouts too, retried alike)
    with FaultProxy(upstream, faults=["ok", "429", "ok", "500", "slow", "ok", "ok"], retry_after=1.0,
                    slow_s=21.0) as proxy:
        faulty = _run(proxy.url + "/v1", tmp_path / "faulty")
    want, got = _records(tmp_path / "clean"), _records(tmp_path / "faulty")
    print("runs:", _runs(tmp_path / "clean"), _runs(tmp_path / "faulty"))
    assert len(want) == 8 and got.keys() == want.keys()  # 4 problems x 2 samples, each once
    for key, record in want.items():
        assert (got[key]["raw_output"], got[key]["exec_status"], got[key]["record_id"]) == \
            (record["raw_output"], record["exec_status"], record["record_id"])
        assert (got[key]["engine"], got[key]["model"]) == ("openai", "smol")
        assert got[key]["finish_reason"] in ("stop", "length")
    assert {s["fault"] for s in proxy.seen} >= {"429", "500", "slow"}
    assert all(s["headers"].get("Authorization") == f"Bearer {SECRET}" for s in proxy.seen)

    [run] = _runs(tmp_path / "faulty")
    assert (run["engine"], run["model"], run["status"]) == ("openai", "smol", "completed")
    assert run["endpoint_throttled"] >= 1 and run["endpoint_server_errors"] >= 1 and run["endpoint_timeouts"] >= 1
    assert run["endpoint_retries"] == run["endpoint_throttled"] + run["endpoint_server_errors"] + run["endpoint_timeouts"]
    assert run["endpoint_failed_requests"] == 0 and run["endpoint_max_in_flight"] >= 1
    completions = sum(r["completion_tokens"] for r in got.values())
    assert run["usage_completion_tokens"] == completions and run["usage_prompt_tokens"] > 0
    assert run["cost"] == pytest.approx((run["usage_prompt_tokens"] * 0.15 + completions * 0.6) / 1e6)
    kept = sum(r["correct"] for r in got.values())
    assert run["cost_per_kept_record"] == (pytest.approx(run["cost"] / kept) if kept else None)
    [clean_run] = _runs(tmp_path / "clean")
    assert clean_run["endpoint_failed_requests"] == 0 and clean_run["usage_completion_tokens"] == completions
    assert faulty["rows_out"] == clean["rows_out"] == 8

    # the key: nowhere in the tables, the runs rows, the files, or what was logged
    assert "DATAGEN_TEST_ENDPOINT_KEY" in run["parameters"] and SECRET not in json.dumps(run, default=str)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    out, err = capfd.readouterr()
    assert SECRET not in out + err + caplog.text
    from tasks.runtime.ray_stage import log_folder

    for path in Path(log_folder()).rglob("*"):  # every Ray process's log, the engine actors' included
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
