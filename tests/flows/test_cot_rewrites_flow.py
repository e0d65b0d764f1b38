"""Proves the cot-rewrites flow end to end with real components: 5 MATH-500 and 5 GSM8K items in one
input file, the embedded SmolLM2 in a Ray actor (transformers; the vLLM CPU engine with step labels
through the CLI), a real Prefect API, Parquet and DuckDB. Every item gets its rewrite row with a
route, a template and a verdict with a reason; a rerun adds no rows; step labels are stored."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from flows.cot_rewrites import CotRewritesSettings, cot_rewrites
from schemas.catalog import CATALOG_FILE
from tasks.generators.cot_rewrites.verify import REJECTION_REASONS

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def mixed_input(tmp_path_factory, shared_data) -> Path:
    """The first 5 MATH-500 rows (problem, solution, LaTeX answer) and 5 GSM8K rows (question, '#### N')."""
    math_rows = (shared_data / "math500" / "test500.jsonl").read_text().splitlines()[:5]
    gsm_rows = (shared_data / "gsm8k" / "train.jsonl").read_text().splitlines()[:5]
    path = tmp_path_factory.mktemp("input") / "mixed.jsonl"
    path.write_text("\n".join(math_rows + gsm_rows) + "\n")
    return path


def _rows(data_dir, columns="*") -> list[dict]:
    con = duckdb.connect(str(Path(data_dir) / CATALOG_FILE), read_only=True)
    try:
        rel = con.sql(f"SELECT {columns} FROM cot_rewrites")
        return [dict(zip(rel.columns, row)) for row in rel.fetchall()]
    finally:
        con.close()


def test_flow_end_to_end_and_rerun(ray_cluster, prefect_harness, mixed_input, tmp_path):
    data_dir = tmp_path / "datasets"
    settings = CotRewritesSettings(input=str(mixed_input), data_dir=str(data_dir), max_tokens=48, batch_size=5)
    first = cot_rewrites(settings)
    rows = _rows(data_dir)
    assert first["status"] == "completed" and first["rows_in"] == 10 and first["rows_out"] == len(rows) == 10
    assert first["tokens_generated"] > 0
    assert len({r["record_id"] for r in rows}) == 10 and len({r["source_id"] for r in rows}) == 10
    math_ids = {json.loads(line)["unique_id"] for line in mixed_input.read_text().splitlines()[:5]}
    assert {r["source_id"] for r in rows} >= math_ids
    for r in rows:
        assert r["route"] in ("rewrite", "unify") and r["source_solution"]
        assert r["raw_output"] is not None and r["engine"] == "transformers"
        assert r["kept"] == (r["rejection_reason"] is None)
        assert r["rejection_reason"] in (None, *REJECTION_REASONS)
        assert r["template_id"].split("@")[0] in ("arithmetic", "algebra", "geometry", "generic")
        assert r["label_status"] is None  # no --step-labels
    gsm = [r for r in rows if r["source_id"] not in math_ids]
    assert {r["task_family"] for r in gsm} == {"arithmetic"} and {r["gold_answer"] for r in gsm} >= {"72"}

    second = cot_rewrites(settings)
    assert second["rows_out"] == 0 and second["rows_skipped"] == 10
    assert sorted(r["record_id"] for r in _rows(data_dir)) == sorted(r["record_id"] for r in rows)
    con = duckdb.connect(str(data_dir / CATALOG_FILE), read_only=True)
    runs = con.sql("SELECT status, rows_out, dropped_by_reason FROM runs WHERE flow = 'cot-rewrites' ORDER BY started_at").fetchall()
    con.close()
    assert [(s, n) for s, n, _ in runs] == [("completed", 10), ("completed", 0)]
    assert sum(dict(runs[0][2]).values()) == sum(not r["kept"] for r in rows)  # every rejection counted by reason


@pytest.mark.vllm
def test_cli_with_step_labels_on_vllm(ray_cluster, prefect_harness, mixed_input, tmp_path):
    pytest.importorskip("vllm")
    data_dir = tmp_path / "datasets"
    two = tmp_path / "two.jsonl"
    lines = mixed_input.read_text().splitlines()
    two.write_text(lines[0] + "\n" + lines[5] + "\n")  # one MATH-500, one GSM8K
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_API_URL": prefect_harness}
    cmd = [sys.executable, "-m", "flows.cli", "run", "cot-rewrites", "--input", str(two), "--engine", "vllm",
           "--max-tokens", "64", "--step-labels", "--continuations", "2", "--label-max-tokens", "32",
           "--data-dir", str(data_dir), "--ray-address", ray_cluster]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "route" in done.stdout and "outcome" in done.stdout  # the summary query
    rows = _rows(data_dir, "source_id, steps, kept, label_status, step_values, first_error_step, "
                           "root_value, label_continuations, engine")
    assert len(rows) == 2 and {r["engine"] for r in rows} == {"vllm"}
    for r in rows:
        assert r["label_status"] in ("no_error", "error_found", "unsolved", "no_steps")
        if r["label_status"] != "no_steps":
            assert len(r["step_values"]) == len(r["steps"]) and r["label_continuations"] % 2 == 0
            assert 2 <= r["label_continuations"] <= 2 * (2 + max(1, len(r["steps"])).bit_length())
        if r["label_status"] == "error_found":
            assert 1 <= r["first_error_step"] <= len(r["steps"]) and r["step_values"][r["first_error_step"] - 1] == 0
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0 and len(_rows(data_dir, "record_id")) == 2
