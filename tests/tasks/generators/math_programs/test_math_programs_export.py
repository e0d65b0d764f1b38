"""`datagen export math-programs`: from a real math_programs table (rows committed through TableStore
with the table's schema), only verified programs become SFT conversations, deduplicated per problem
and program (or one per problem), filtered by run and config hash, with their lineage; the file is
what `datasets` reads and what TRL's SFTTrainer takes (a `messages` list of role/content); JSONL and
Parquet; an empty selection is one line and exit code 2."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import datasets
import pytest

from flows.cli import main as cli_main

from schemas.store import TableStore
from schemas.tables import MATH_PROGRAMS

T0 = datetime(2026, 12, 1, tzinfo=timezone.utc)


def _row(source_id, attempt, program, correct, run_id="r1", config_hash="h1", pass_="fixed", minutes=0):
    return {"record_id": f"{source_id}-{run_id}-{pass_}-{attempt}", "source_id": source_id, "run_id": run_id,
            "generator": "math_programs", "model": "m", "engine": "fake", "prompt_version": "math-programs/v1",
            "config_hash": config_hash, "created_at": T0 + timedelta(minutes=minutes),
            "question": f"question {source_id}?", "gold_answer": 7.0, "pass": pass_, "attempt": attempt,
            "program": program, "exec_status": "ok" if correct else "wrong", "correct": correct}


@pytest.fixture
def data_dir(tmp_path):
    store = TableStore(tmp_path / "data", MATH_PROGRAMS)
    store.commit([_row("p1", 0, "def solution():\n    return 7", True),
                  _row("p1", 1, "def solution():\n    return 3 + 4", True),
                  _row("p1", 2, "def solution():\n    return 8", False),
                  _row("p2", 0, None, False),
                  _row("p2", 1, "def solution():\n    return 9 - 2", True, pass_="dynamic", minutes=5)], run_id="r1")
    store.commit([_row("p1", 0, "def solution():\n    return 7", True, run_id="r2", config_hash="h2", minutes=9),
                  _row("p3", 0, "def solution():\n    return 14 / 2", True, run_id="r2", config_hash="h2", minutes=9)],
                 run_id="r2")
    return str(tmp_path / "data")


def _main(*argv) -> int:
    return cli_main(["export", "math-programs", *argv])  # the real CLI parser


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_verified_programs_read_back_by_datasets_as_sft_messages(data_dir, tmp_path, capsys, suffix):
    out = tmp_path / "out" / f"sft.{suffix}"
    assert _main("--data-dir", data_dir, "--out", str(out)) == 0
    assert capsys.readouterr().out.strip() == f"4 SFT conversations (verified programs) -> {out}"
    ds = datasets.load_dataset("json" if suffix == "jsonl" else "parquet", data_files=str(out), split="train",
                               cache_dir=str(tmp_path / "hf"))
    # what TRL's SFTTrainer reads as a conversational dataset: `messages`, a list of {role, content}
    assert ds.features["messages"] == datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")})
    assert {"source_id", "record_id", "run_id", "config_hash"} <= set(ds.column_names)
    rows = {(r["source_id"], r["messages"][1]["content"]): r for r in ds}
    assert set(rows) == {("p1", "def solution():\n    return 7"), ("p1", "def solution():\n    return 3 + 4"),
                         ("p2", "def solution():\n    return 9 - 2"), ("p3", "def solution():\n    return 14 / 2")}
    first = rows[("p1", "def solution():\n    return 7")]
    assert first["messages"][0] == {"role": "user", "content": "question p1?"}
    assert [m["role"] for m in first["messages"]] == ["user", "assistant"]
    assert (first["run_id"], first["config_hash"], first["record_id"]) == ("r1", "h1", "p1-r1-fixed-0")  # the earlier copy
    assert not list(out.parent.glob(".*"))  # no temporary file left beside it


def test_one_per_problem_filters_and_system_message(data_dir, tmp_path, capsys):
    out = tmp_path / "one.jsonl"
    assert _main("--data-dir", data_dir, "--out", str(out), "--one-per-problem", "--run", "r1",
                 "--system", "Write a Python program.") == 0
    ds = datasets.load_dataset("json", data_files=str(out), split="train", cache_dir=str(tmp_path / "hf"))
    assert sorted((r["source_id"], r["messages"][2]["content"]) for r in ds) == [
        ("p1", "def solution():\n    return 7"), ("p2", "def solution():\n    return 9 - 2")]
    assert all(r["messages"][0] == {"role": "system", "content": "Write a Python program."} for r in ds)
    assert _main("--data-dir", data_dir, "--out", str(out), "--config-hash", "h2") == 0
    assert "2 SFT conversations" in capsys.readouterr().out


def test_nothing_to_export_is_one_line_and_exit_2(data_dir, tmp_path, capsys):
    out = tmp_path / "none.jsonl"
    assert _main("--data-dir", data_dir, "--out", str(out), "--run", "nope") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no verified programs" in err and "--run" in err
    assert _main("--data-dir", str(tmp_path / "empty"), "--out", str(out)) == 2
    assert not out.exists()
