"""`datagen export cot-rewrites` and `datagen export step-labels`: from a real cot_rewrites table
(rows committed through TableStore with the table's schema), only kept rewrites become SFT
conversations, and the step-labelled rewrites become TRL PRM rows (prompt, completions, one bool per
step: true before the first bad step, false on it, cut after it unless --all-steps), unlabelled and
unsolved rows counted and left out; `datasets` reads both files back with the features TRL's
SFTTrainer and PRMTrainer take; an empty selection is one line and exit code 2."""
from __future__ import annotations

from datetime import datetime, timezone

import datasets
import pytest

from flows.cli import main as cli_main

from schemas.store import TableStore
from schemas.tables import COT_REWRITES

T0 = datetime(2026, 12, 1, tzinfo=timezone.utc)
STEPS = ["12 * 6 = 70.", "So the answer is 70.", "Final answer: 70"]


def _row(source_id, attempt, kept, steps=None, label_status=None, first_error_step=None, run_id="r1"):
    steps = steps or ["12 * 6 = 72.", "Final answer: 72"]
    return {"record_id": f"{source_id}-{run_id}-{attempt}", "source_id": source_id, "run_id": run_id,
            "generator": "cot_rewrites", "model": "m", "engine": "fake", "prompt_version": "cot-rewrites/v1",
            "config_hash": "h1", "created_at": T0, "question": f"What is {source_id}?", "gold_answer": "72",
            "source_type": "none", "route": "expand", "route_forced": False, "task_family": "arithmetic",
            "template_id": "arithmetic@v1", "attempt": attempt,
            "rewritten_text": "\n".join(f"Step {i}: {s}" for i, s in enumerate(steps, 1)), "steps": steps,
            "kept": kept, "rejection_reason": None if kept else "answer_mismatch",
            "label_status": label_status, "first_error_step": first_error_step}


@pytest.fixture
def data_dir(tmp_path):
    TableStore(tmp_path / "data", COT_REWRITES).commit([
        _row("q1", 0, True, label_status="no_error"),
        _row("q1", 1, False, steps=STEPS, label_status="error_found", first_error_step=1),
        _row("q2", 0, False, steps=STEPS, label_status="error_found", first_error_step=2),
        _row("q3", 0, True, label_status="unsolved"),
        _row("q4", 0, True),  # no --step-labels
    ], run_id="r1")
    return str(tmp_path / "data")


def _main(command: str, *argv) -> int:
    return cli_main(["export", command, *argv])  # the real CLI parser


def _load(path, tmp_path):
    kind = "parquet" if str(path).endswith(".parquet") else "json"
    return datasets.load_dataset(kind, data_files=str(path), split="train", cache_dir=str(tmp_path / "hf"))


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_kept_rewrites_read_back_by_datasets_as_sft_messages(data_dir, tmp_path, capsys, suffix):
    out = tmp_path / f"sft.{suffix}"
    assert _main("cot-rewrites", "--data-dir", data_dir, "--out", str(out)) == 0
    assert capsys.readouterr().out.strip() == f"3 SFT conversations (kept rewrites) -> {out}"
    ds = _load(out, tmp_path)
    assert ds.features["messages"] == datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")})
    assert {"source_id", "record_id", "run_id", "config_hash"} <= set(ds.column_names)
    assert sorted(r["source_id"] for r in ds) == ["q1", "q3", "q4"]  # the rejected rewrites are not exported
    q1 = next(r for r in ds if r["source_id"] == "q1")
    assert q1["messages"] == [{"role": "user", "content": "What is q1?"},
                              {"role": "assistant", "content": "Step 1: 12 * 6 = 72.\nStep 2: Final answer: 72"}]


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_step_labels_read_back_by_datasets_as_prm_rows(data_dir, tmp_path, capsys, suffix):
    out = tmp_path / f"prm.{suffix}"
    assert _main("step-labels", "--data-dir", data_dir, "--out", str(out)) == 0
    assert capsys.readouterr().out.strip() == (
        f"3 PRM rows (2 with a first bad step, 1 without; left out: 1 unsolved) -> {out}")
    ds = _load(out, tmp_path)
    # what TRL's PRMTrainer reads: a prompt, its steps, and one bool label per step
    assert ds.features["prompt"] == datasets.Value("string")
    assert ds.features["completions"] == datasets.List(datasets.Value("string"))
    assert ds.features["labels"] == datasets.List(datasets.Value("bool"))
    got = {r["record_id"]: (r["completions"], r["labels"]) for r in ds}
    assert got == {"q1-r1-0": (["12 * 6 = 72.", "Final answer: 72"], [True, True]),
                   "q1-r1-1": (STEPS[:1], [False]),
                   "q2-r1-0": (STEPS[:2], [True, False])}
    assert all(len(r["completions"]) == len(r["labels"]) for r in ds)


def test_all_steps_keeps_the_steps_after_the_first_bad_one(data_dir, tmp_path):
    out = tmp_path / "prm.jsonl"
    assert _main("step-labels", "--data-dir", data_dir, "--out", str(out),
                 "--all-steps") == 0
    q2 = next(r for r in _load(out, tmp_path) if r["source_id"] == "q2")
    assert q2["completions"] == STEPS and q2["labels"] == [True, False, False]


def test_nothing_to_export_is_one_line_and_exit_2(data_dir, tmp_path, capsys):
    out = tmp_path / "none.jsonl"
    assert _main("cot-rewrites", "--data-dir", data_dir, "--out", str(out), "--run", "nope") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no kept rewrites" in err
    assert _main("step-labels",
                 "--data-dir", str(tmp_path / "empty"), "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no step-labelled rewrites" in err
    assert not out.exists()
