"""Proves every export can become a Hugging Face dataset: `--hub-folder DIR` writes the Parquet rows and
a README card whose YAML the `datasets` library reads (`load_dataset(DIR)` returns the same rows as
`--out`, with the features the card declares, which equal datasets' own reading of the export's Arrow
schema), and the card says how the rows were made (generator, model, engine, every run and its
settings). `--push-to-hub` runs the real huggingface_hub upload (create_repo + upload_folder) against a
hub served on 127.0.0.1 (tests/hub_server.py): the repo receives exactly the folder's files, private
when asked, and the token never appears in output or files. A missing destination is one line, exit 2."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import datasets
import pyarrow as pa
import pytest
import yaml

from flows.cli import main as cli_main
from hub_server import hub_server
from schemas.store import TableStore
from schemas.tables import MATH_PROGRAMS
from tasks.generators.cot_rewrites.export import PRM_SCHEMA, SFT_SCHEMA as COT_SFT
from tasks.generators.math_programs.export import SFT_SCHEMA
from tasks.generators.retrieval_queries.export import schema as triples_schema
from tasks.runtime.exports import DATA_FILE, hub_features
from tasks.runtime.runs import RunState, write_run

REPO = Path(__file__).resolve().parents[3]
T0 = datetime(2026, 12, 1, tzinfo=timezone.utc)
PREFERENCES = pa.Table.from_pylist([{  # the preference export has no fixed schema: this is what it infers
    "prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}],
    "rejected": [{"role": "assistant", "content": "b"}], "margin": 1.5}]).schema


@pytest.mark.parametrize("schema", [SFT_SCHEMA, COT_SFT, PRM_SCHEMA, triples_schema(1, False),
                                    triples_schema(3, True), PREFERENCES],
                         ids=["math-sft", "cot-sft", "prm", "triples", "triples-lineage", "preferences"])
def test_card_features_are_what_datasets_reads_from_the_schema(schema):
    assert hub_features(schema) == datasets.Features.from_arrow_schema(schema)._to_yaml_list()


def test_a_map_column_has_no_hub_feature():
    with pytest.raises(ValueError, match="no Hugging Face feature for Arrow type map<string, int64>"):
        hub_features(pa.schema([("counts", pa.map_(pa.string(), pa.int64()))]))


def _program(source_id: str, run_id: str, program: str, correct: bool = True) -> dict:
    return {"record_id": f"{source_id}-{run_id}", "source_id": source_id, "run_id": run_id,
            "generator": "math_programs", "model": "smollm2-135m", "engine": "vllm", "prompt_version": "v1",
            "config_hash": "h1", "created_at": T0, "question": f"question {source_id}?", "gold_answer": 7.0,
            "pass": "fixed", "attempt": 0, "program": program, "exec_status": "ok", "correct": correct}


@pytest.fixture
def data_dir(tmp_path) -> str:
    """math_programs rows from two runs, each with its `runs` row, and a third run whose rows failed."""
    data = str(tmp_path / "data")
    for run_id, rows in {"r1": [_program("p1", "r1", "def solution():\n    return 7"),
                                _program("p2", "r1", "def solution():\n    return 3 + 4")],
                         "r2": [_program("p3", "r2", "def solution():\n    return 14 / 2")],
                         "r3": [_program("p4", "r3", "def solution():\n    return 8", correct=False)]}.items():
        TableStore(data, MATH_PROGRAMS).commit(rows, run_id=run_id)
        run = RunState.start("math-programs", {"input": "problems.jsonl", "samples": 4, "limit": None},
                             model="smollm2-135m", engine="vllm")
        run.run_id, run.rows_out = run_id, len(rows)
        write_run(data, run.finish("completed"))
    return data


def test_hub_folder_loads_with_datasets_and_says_how_it_was_made(data_dir, tmp_path, capsys):
    folder, out = tmp_path / "hub", tmp_path / "sft.jsonl"
    assert cli_main(["export", "math-programs", "--data-dir", data_dir, "--out", str(out),
                     "--hub-folder", str(folder)]) == 0
    assert capsys.readouterr().out.strip() == f"3 SFT conversations (verified programs) -> {out}, {folder}"
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == ["README.md", DATA_FILE]

    train = datasets.load_dataset(str(folder))["train"]
    assert train.to_list() == [json.loads(line) for line in out.read_text().splitlines()]
    assert train.features == datasets.Features.from_arrow_schema(SFT_SCHEMA)

    card = (folder / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["dataset_info"]["splits"] == [{"name": "train", "num_examples": 3}]
    assert meta["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*.parquet"}]}]
    assert meta["tags"] == ["synthetic", "datagen", "math-programs"] and meta["size_categories"] == ["n<1K"]
    assert "- Model: `smollm2-135m`; engine: vllm" in card
    assert "- Runs: 2," in card  # r3 wrote no verified program: not behind these rows
    for run_id in ("r1", "r2"):
        assert f"| `{run_id}` | 2026-" in card
    assert '`{"input": "problems.jsonl", "limit": null, "samples": 4}`' in card
    assert "- Lineage: `source_id`, `record_id`, `run_id`, `config_hash`." in card


def test_an_export_needs_a_destination(data_dir, capsys):
    assert cli_main(["export", "math-programs", "--data-dir", data_dir]) == 2
    assert capsys.readouterr().err.strip() == (
        "datagen export math-programs: say where the rows go: --out FILE, --hub-folder DIR and/or --push-to-hub REPO")
    assert cli_main(["export", "math-programs", "--data-dir", data_dir, "--out", "x.jsonl", "--private"]) == 2
    assert capsys.readouterr().err.strip() == "datagen export math-programs: --private goes with --push-to-hub"


def test_push_to_hub_uploads_the_folder_with_the_real_client(data_dir, tmp_path):
    folder, uploads, token = tmp_path / "hub", tmp_path / "uploads", "hf_secretTOKEN123"
    with hub_server({}, uploads=uploads) as endpoint:
        done = subprocess.run(
            [sys.executable, "-m", "flows.cli", "export", "math-programs", "--data-dir", data_dir,
             "--hub-folder", str(folder), "--push-to-hub", "acme/gsm8k-programs", "--private"],
            env={**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0", "HF_TOKEN": token,
                 "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONPATH": str(REPO)},
            capture_output=True, text=True, timeout=180, cwd=REPO)
    assert done.returncode == 0, done.stderr
    repo = uploads / "datasets" / "acme" / "gsm8k-programs"
    assert done.stdout.strip() == (f"3 SFT conversations (verified programs) -> {folder}, "
                                   f"{endpoint}/datasets/acme/gsm8k-programs/commit/{'0' * 39}1")
    for name in ("README.md", DATA_FILE):
        assert (repo / name).read_bytes() == (folder / name).read_bytes()
    assert (repo.parent / "gsm8k-programs.visibility").read_text() == "private"
    assert 'load_dataset("acme/gsm8k-programs")' in (repo / "README.md").read_text()
    leaked = [p for p in (*folder.rglob("*"), *repo.rglob("*")) if p.is_file() and token.encode() in p.read_bytes()]
    assert token not in done.stdout + done.stderr and not leaked
