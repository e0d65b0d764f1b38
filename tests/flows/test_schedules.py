"""Schedules against a real Prefect server on 127.0.0.1 (temporary PREFECT_HOME): `datagen serve` with
a short interval schedule runs math-programs with the real model; a scheduled run with no new input
writes nothing; after input rows are appended a run writes only those; a manual
`prefect deployment run --watch` works; and `prefect deploy` accepts the shipped deploy/prefect.yaml."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from schemas.tables import MATH_PROGRAMS, RUNS
from schemas.store import TableStore

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen, sig=signal.SIGINT, timeout=30) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """`prefect server start` on a free local port; yields (api_url, env for clients)."""
    home = tmp_path_factory.mktemp("prefect-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false",
               PREFECT_LOGGING_LEVEL="WARNING", PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2",
               PREFECT_API_SERVICES_SCHEDULER_LOOP_SECONDS="2")
    port = _free_port()
    log = open(home / "server.log", "w")
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            pytest.fail(f"prefect server did not start: {(home / 'server.log').read_text()[-2000:]}")
        time.sleep(1)
    yield url, {**env, "PREFECT_API_URL": url}
    _stop(proc, signal.SIGTERM)
    log.close()


def _runs(data_dir: Path) -> list[dict]:
    rows = TableStore(data_dir, RUNS).read().to_pylist()
    return sorted((r for r in rows if r["status"] == "completed"), key=lambda r: r["started_at"])


def _wait_for(predicate, what: str, timeout: float, serve: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (found := predicate()):
            return found
        if serve.poll() is not None:
            pytest.fail(f"datagen serve exited while waiting for {what}: {log.read_text()[-3000:]}")
        time.sleep(1)
    pytest.fail(f"timed out waiting for {what}: {log.read_text()[-3000:]}")


def test_served_schedule_is_incremental(prefect_server, ray_cluster, shared_data, tmp_path):
    url, env = prefect_server
    gsm8k = (shared_data / "gsm8k" / "train.jsonl").read_text().splitlines()
    problems = tmp_path / "problems.jsonl"
    problems.write_text("\n".join(gsm8k[:2]) + "\n")
    data_dir = tmp_path / "datasets"
    deployment = {
        "name": "every-10s",
        "entrypoint": "flows/math_programs.py:math_programs",
        "parameters": {"settings": {"input": str(problems), "data_dir": str(data_dir), "samples": 1,
                                    "exemplars": 1, "max_tokens": 48, "dynamic": False, "batch_size": 2,
                                    "device": "cpu", "ray_address": ray_cluster}},
        "schedules": [{"interval": 10}],
        "concurrency_limit": 1,
    }
    spec = tmp_path / "prefect.yaml"
    spec.write_text(yaml.safe_dump({"name": "test", "deployments": [deployment]}))
    log = tmp_path / "serve.log"
    serve = subprocess.Popen([str(BIN / "datagen"), "serve", "--file", str(spec)], cwd=tmp_path,
                             env={**env, "PREFECT_RUNNER_POLL_FREQUENCY": "1"},
                             stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        first = _wait_for(lambda: _runs(data_dir), "the first scheduled run", 240, serve, log)[0]
        assert (first["rows_in"], first["rows_skipped"], first["rows_out"]) == (2, 0, 2)
        second = _wait_for(lambda: _runs(data_dir)[1:], "a second scheduled run", 240, serve, log)[0]
        assert (second["rows_in"], second["rows_skipped"], second["rows_out"]) == (2, 2, 0)

        with problems.open("a") as fh:  # the input grows
            fh.write(gsm8k[2] + "\n")
        grown = _wait_for(lambda: [r for r in _runs(data_dir) if r["rows_in"] == 3], "a run over the grown input",
                          240, serve, log)[0]
        assert (grown["rows_skipped"], grown["rows_out"]) == (2, 1)
        # a run that started before the append saw 2 rows and wrote nothing; none wrote a problem twice
        records = TableStore(data_dir, MATH_PROGRAMS).read(columns=["record_id", "source_id"]).to_pylist()
        assert len(records) == len({r["record_id"] for r in records}) == 3

        # a manual run of the same deployment, watched to its end
        before = len(_runs(data_dir))
        manual = subprocess.run([str(BIN / "prefect"), "deployment", "run", "math-programs/every-10s", "--watch",
                                 "--watch-timeout", "240"], env=env, capture_output=True, text=True, timeout=300)
        assert manual.returncode == 0, manual.stdout + manual.stderr
        assert "Completed" in manual.stdout + manual.stderr
        assert len(_runs(data_dir)) > before
        assert TableStore(data_dir, MATH_PROGRAMS).read(columns=["record_id"]).num_rows == 3
    finally:
        _stop(serve)
    for run in _runs(data_dir):  # every run was a Prefect flow run of the served deployment
        assert run["prefect_flow_run_id"]


def _deploy_and_inspect(prefect: str, env: dict, name: str, flow: str) -> dict:
    """`prefect deploy --name NAME` from deploy/prefect.yaml, then the server's view of it."""
    deploy = subprocess.run([prefect, "--no-prompt", "deploy", "--prefect-file", "deploy/prefect.yaml",
                             "--name", name], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    shown = subprocess.run([prefect, "deployment", "inspect", f"{flow}/{name}", "--output", "json"],
                           env=env, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    return json.loads(shown.stdout[shown.stdout.index("{"):])


def test_prefect_deploy_accepts_the_shipped_file(prefect_server):
    """`prefect deploy` (the server + workers path) reads deploy/prefect.yaml: pool, schedule, parameters."""
    url, env = prefect_server
    env = {**env, "DATAGEN_HOME": str(REPO)}
    prefect = str(BIN / "prefect")
    pool = subprocess.run([prefect, "work-pool", "create", "datagen-cpu", "--type", "process"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert pool.returncode == 0, pool.stdout + pool.stderr
    info = _deploy_and_inspect(prefect, env, "gsm8k-nightly", "math-programs")
    assert info["work_pool_name"] == "datagen-cpu"
    assert [s["schedule"]["cron"] for s in info["schedules"]] == ["0 2 * * *"]
    assert info["parameters"]["settings"]["samples"] == 4

    # a generator of the user's own deploys through the generic flow, named by its reference
    info = _deploy_and_inspect(prefect, env, "passage-qa-nightly", "generate")
    assert info["parameters"]["generator"] == "examples/passage_qa/generator.py:PassageQA"
    assert info["parameters"]["settings"]["input"] == "examples/passage_qa/passages.jsonl"
