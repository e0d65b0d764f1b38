"""Proves a flow runs on a multi-node Ray cluster through `--ray-address`: a head node and three worker
nodes on this machine (ray.cluster_utils.Cluster, in its own process: tests/flows/node_kill_scenario.py),
the math-programs flow with two engine actors and the real embedded model. The engine actors spread
over two worker nodes; one of those nodes is killed (raylet and workers, no drain) after the first
batch was committed; the run still ends with every record committed exactly once."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SAMPLES = 2
PROBLEMS = 10


def test_worker_node_killed_mid_run_loses_and_duplicates_nothing(prefect_harness, shared_data, tmp_path):
    # Enough problems that the second engine actor (loading its model while the first already works
    # through the batches queued on it) gets work before the run ends.
    problems = tmp_path / f"gsm8k{PROBLEMS}.jsonl"
    problems.write_text("\n".join((shared_data / "gsm8k" / "train.jsonl").read_text().splitlines()[:PROBLEMS]) + "\n")
    data_dir = tmp_path / "datasets"
    report_path = tmp_path / "report.json"
    # One problem at a time per engine actor: batches commit one after another, so the kill lands mid-run.
    cli_args = ["--input", str(problems), "--samples", str(SAMPLES), "--max-tokens", "160", "--batch-size", "1",
                "--rows-in-flight", "1", "--pool-size", "2", "--no-dynamic", "--data-dir", str(data_dir)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_API_URL": prefect_harness}
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("node_kill_scenario.py")), str(report_path),
                           "--", *cli_args], env=env, cwd=REPO, capture_output=True, text=True, timeout=1500)
    assert report_path.exists(), done.stderr[-4000:]
    report = json.loads(report_path.read_text())
    print(json.dumps({k: v for k, v in report.items() if not k.endswith("tail")}, indent=1))
    assert "error" not in report, report["error"]
    assert report["nodes"] == 4
    assert len(report["engine_actor_nodes_before"]) == 2, "the two engine actors share a node"
    assert report["killed_node"] in report["engine_actor_nodes_before"]
    assert 1 <= report["parts_before_kill"] < PROBLEMS, "the node was not killed mid-run"
    assert report["rc"] == 0 or report.get("rerun_rc") == 0, report.get("rerun_tail") or report["output_tail"]
    if report["rc"] == 0:  # the run survived the node: its lost actor came back on a surviving worker
        assert any(a["restarts"] >= 1 and a["node_id"] != report["killed_node"] for a in report["engine_actors_after"])

    con = duckdb.connect(str(data_dir / "catalog.duckdb"), read_only=True)
    rows = con.execute("SELECT record_id, source_id, attempt FROM math_programs").fetchall()
    assert len({r[0] for r in rows}) == len(rows), "a record was committed twice"
    assert {(r[1], r[2]) for r in rows} == {(s, a) for s in {r[1] for r in rows} for a in range(SAMPLES)}
    assert len({r[1] for r in rows}) == PROBLEMS, "a problem's records were lost"
    assert len(rows) == PROBLEMS * SAMPLES
