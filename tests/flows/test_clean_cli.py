"""Proves `datagen clean decontaminate` and `datagen clean dedup` end to end through the CLI on a real
Parquet table: the flagged records leave the `<table>_clean` view (real DuckDB), the exports skip them
unless --include-flagged, both steps are rows of `runs`, the generator run's data card gains a Cleaning
section with the counts; a bad table or a bad evaluation file is one line and exit 2; a recipe's
`clean:` steps parse, refuse unknown keys and read their evaluation files before anything starts."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.cli import main
from tasks.runtime.runs import RunState, write_run


def _helpers():
    """tests/tasks/clean/conftest.py's table helpers (loaded by path: conftest is not importable by name)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "clean_test_helpers", Path(__file__).resolve().parents[1] / "tasks" / "clean" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


program_rows = _helpers().program_rows

SAMPLES = "samples/math_word_problems.jsonl"


def _table(tmp_path):
    from schemas.store import TableStore
    from schemas.tables import MATH_PROGRAMS

    samples = [json.loads(line) for line in open(SAMPLES)]
    pairs = [(samples[0]["question"], "def solution():\n    return 210"),  # contaminated
             (samples[1]["question"], "def solution():\n    return 11"),  # contaminated
             (samples[2]["question"], "def solution():\n    buses = 180 / 45\n    return buses"),
             (samples[2]["question"], "def solution():\n    buses = 180 / 45\n    return buses"),  # its duplicate
             (samples[3]["question"], "def solution():\n    return 90")]
    rows = program_rows(pairs, correct=[True] * 5)
    data_dir = tmp_path / "data"
    TableStore(data_dir, MATH_PROGRAMS).commit(rows, rows[0]["run_id"])
    run = RunState.start("math-programs", {"input": SAMPLES, "data_dir": str(data_dir)}, model="m", engine="fake")
    run.run_id = rows[0]["run_id"]
    write_run(data_dir, run.finish("completed"))
    evals = tmp_path / "eval.jsonl"
    evals.write_text("".join(json.dumps(s) + "\n" for s in samples[:2]))
    return str(data_dir), rows, str(evals)


def _count(data_dir, sql, capsys) -> int:
    assert main(["sql", "--data-dir", data_dir, sql]) == 0
    return int(next(line.strip("│ ") for line in capsys.readouterr().out.splitlines() if line.strip("│ ").isdigit()))


def test_clean_commands_views_exports_runs_and_card(tmp_path, capsys):
    data_dir, rows, evals = _table(tmp_path)
    assert main(["clean", "decontaminate", "--data-dir", data_dir, "--table", "math_programs", "--against", evals,
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["checks"][0]["contaminated"] == 2 and summary["source_runs"] == [rows[0]["run_id"]]
    assert main(["clean", "dedup", "--data-dir", data_dir, "--table", "math_programs", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["exact"] == 1
    assert _count(data_dir, "SELECT count(*) FROM math_programs_clean", capsys) == 2
    assert _count(data_dir, "SELECT count(*) FROM runs WHERE flow LIKE 'clean-%' AND status = 'completed'", capsys) == 2

    out = tmp_path / "sft.jsonl"
    assert main(["export", "math-programs", "--data-dir", data_dir, "--out", str(out)]) == 0
    exported = {json.loads(line)["record_id"] for line in out.read_text().splitlines()}
    assert exported == {rows[2]["record_id"], rows[4]["record_id"]}
    assert main(["export", "math-programs", "--data-dir", data_dir, "--out", str(out), "--include-flagged"]) == 0
    assert len(out.read_text().splitlines()) == 5

    card = (Path(data_dir) / "reports" / f"{rows[0]['run_id']}.html").read_text()
    assert "<h2>Cleaning</h2>" in card
    assert "contaminated: eval.jsonl (ngram)</th><td>2 of 5 checked" in card
    assert "near-duplicates left out</th><td>1 of 5 checked (1 exact, 0 near)" in card

    # a rerun checks nothing again
    capsys.readouterr()
    assert main(["clean", "decontaminate", "--data-dir", data_dir, "--table", "math_programs", "--against", evals,
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["checks"][0]["checked"] == 0


def test_bad_table_and_bad_eval_file_are_one_line(tmp_path, capsys):
    data_dir, _, evals = _table(tmp_path)
    assert main(["clean", "dedup", "--data-dir", data_dir, "--table", "nope"]) == 2
    assert capsys.readouterr().err.strip() == f"datagen clean dedup: table 'nope' has no committed rows in {data_dir}"
    assert main(["clean", "decontaminate", "--data-dir", data_dir, "--table", "math_programs", "--against", evals,
                 "--fields", "question,nope"]) == 2
    assert "has no column 'nope'" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "fine"}\n{"question": ["a", 1]}\n')
    assert main(["clean", "decontaminate", "--data-dir", data_dir, "--table", "math_programs", "--against", str(bad)]) == 2
    assert capsys.readouterr().err.strip() == f"datagen: bad input: {bad}: row 2: column 'question' must be text, got a list"


def test_recipe_clean_steps_parse_refuse_unknown_keys_and_check_eval_files(tmp_path):
    import yaml

    from flows.clean import preflight_step, recipe_steps
    from tasks.recipes import load_recipe
    from tasks.runtime.inputs import InputError

    spec = {"name": "r", "generators": [{"name": "p", "flow": "math-programs", "params": {"input": SAMPLES},
                                         "clean": {"decontaminate": {"against": [SAMPLES], "embedding": True},
                                                   "dedup": {"threshold": 0.9}}}]}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(spec))
    step = load_recipe(path).generators[0]
    steps = recipe_steps(step.clean)
    assert [(kind, against) for kind, _, against in steps] == [("decontaminate", [SAMPLES]), ("dedup", None)]
    assert steps[0][1].embedding and steps[1][1].threshold == 0.9
    preflight_step(step.clean)  # the bundled file reads
    spec["generators"][0]["clean"]["dedup"]["treshold"] = 0.9
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError, match="treshold"):
        load_recipe(path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": 3}\n')
    del spec["generators"][0]["clean"]["dedup"]["treshold"]
    spec["generators"][0]["clean"]["decontaminate"]["against"] = [str(bad)]
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(InputError, match="row 1: column 'question' must be text"):
        preflight_step(load_recipe(path).generators[0].clean)
