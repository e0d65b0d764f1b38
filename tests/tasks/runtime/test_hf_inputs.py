"""Proves inputs can be Hugging Face dataset files (`hf://datasets/<owner>/<repo>/<file>`), read by the
real huggingface_hub client (HfFileSystem) from a hub that serves a local repo-shaped folder
(tests/hub_server.py; this machine reaches no hub): JSONL, gzipped JSONL and Parquet rows arrive as
from a local file, a pinned revision works, a missing file / repo / revision is one InputError naming
the path, an unreachable hub is a ConnectionError naming the file (retried by a run's load), and
`datagen run` generates from an hf:// input end to end with the real embedded model, each record's
lineage naming the hf:// file.

Each case runs in a fresh process: huggingface_hub reads HF_ENDPOINT when it is imported, and fsspec
keeps one HfFileSystem per process."""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hub_server import SHA, hub_server

REPO = Path(__file__).resolve().parents[3]
ROWS = [{"id": f"p{i}", "question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(1, 6)]
READ = """
import json, sys
from tasks.runtime.inputs import read_rows
try:
    print(json.dumps({"rows": [[n, r] for n, r in read_rows(sys.argv[1])]}))
except Exception as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
"""


@pytest.fixture
def dataset_repo(tmp_path) -> Path:
    """A dataset repo as the hub lays it out: data files under data/, a README card."""
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "README.md").write_text("---\nlicense: mit\n---\n# problems\n")
    (repo / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    with gzip.open(repo / "data" / "train.jsonl.gz", "wt") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in ROWS))
    pq.write_table(pa.Table.from_pylist(ROWS), repo / "data" / "train-00000-of-00001.parquet")
    (repo / "data" / "broken.jsonl").write_text(json.dumps(ROWS[0]) + "\n{not json\n")
    return repo


def _env(endpoint: str, home: Path) -> dict:
    """A fresh shell's environment, not the test session's: twice in full-suite runs (never alone, 0 in 69
    runs) a Parquet read's process aborted at exit ("terminate called without an active exception")
    after printing its rows, with what earlier tests had left in os.environ."""
    keep = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR", "PREFECT_HOME") if k in os.environ}
    return {**keep, "HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0", "HF_HOME": str(home),
            "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONPATH": str(REPO), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "RAY_AUTH_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false", "PYTHONFAULTHANDLER": "1"}


def _read(url: str, endpoint: str, home: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", READ, url], env=_env(endpoint, home), capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("file", ["data/train.jsonl", "data/train.jsonl.gz", "data/train-00000-of-00001.parquet"])
def test_rows_of_an_hf_file_equal_the_local_file(dataset_repo, tmp_path, file):
    with hub_server({"datasets/acme/problems": dataset_repo}) as endpoint:
        got = _read(f"hf://datasets/acme/problems/{file}", endpoint, tmp_path / "hf")
    assert got.get("rows") == [[n, r] for n, r in enumerate(ROWS, start=1)], got


def test_a_pinned_revision_reads_that_revision(dataset_repo, tmp_path):
    with hub_server({"datasets/acme/problems": dataset_repo}) as endpoint:
        pinned = _read(f"hf://datasets/acme/problems@{SHA}/data/train.jsonl", endpoint, tmp_path / "hf")
        unknown = _read("hf://datasets/acme/problems@v9/data/train.jsonl", endpoint, tmp_path / "hf")
    assert len(pinned["rows"]) == len(ROWS)
    assert unknown == {"error": "InputError",
                       "message": "hf://datasets/acme/problems@v9/data/train.jsonl: file not found"}


@pytest.mark.parametrize("url, message", [
    ("hf://datasets/acme/problems/data/nope.jsonl", "file not found"),
    ("hf://datasets/acme/elsewhere/data/train.jsonl", "file not found"),
    ("hf://datasets/acme/problems/data", "is a folder, not a file"),
    ("hf://datasets/acme/problems/README.md", "unsupported format (use .jsonl, .jsonl.gz or .parquet)"),
    ("hf://datasets/acme/problems/data/broken.jsonl", "row 2: invalid JSON (Expecting property name enclosed in "
                                                      "double quotes at column 2)"),
])
def test_bad_hf_inputs_are_one_input_error_naming_the_file(dataset_repo, tmp_path, url, message):
    with hub_server({"datasets/acme/problems": dataset_repo}) as endpoint:
        got = _read(url, endpoint, tmp_path / "hf")
    assert got == {"error": "InputError", "message": f"{url}: {message}"}


def test_an_unreachable_hub_is_a_connection_error_naming_the_file(tmp_path):
    url = "hf://datasets/acme/problems/data/train.jsonl"
    got = _read(url, "http://127.0.0.1:9", tmp_path / "hf")  # nothing listens on port 9
    assert got["error"] == "ConnectionError"  # an OSError: a run's load retries it (pipeline.transient_io_error)
    assert got["message"].startswith(f"{url}: cannot be read (") and "Connect" in got["message"]


@pytest.mark.integration
def test_datagen_run_generates_from_an_hf_input(dataset_repo, tmp_path):
    data = tmp_path / "data"
    with hub_server({"datasets/acme/problems": dataset_repo}) as endpoint:
        url = "hf://datasets/acme/problems/data/train.jsonl"
        done = subprocess.run(
            [sys.executable, "-m", "flows.cli", "run", "math-programs", "--input", url, "--limit", "2",
             "--samples", "1", "--engine", "transformers", "--data-dir", str(data)],
            env={**_env(endpoint, tmp_path / "hf"), "PREFECT_HOME": str(tmp_path / "prefect")},
            capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = duckdb.sql(f"SELECT DISTINCT source_id, source_file, source_row FROM read_parquet('{data}/math_programs/**/*.parquet') "
                      "ORDER BY source_row").fetchall()
    assert rows == [("p1", url, 1), ("p2", url, 2)]
