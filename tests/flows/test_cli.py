"""Proves the CLI is built from the generators' settings models, so an option is declared once: each
field becomes `--field-name` with its type, choices, default and help (or the flags the field names),
a bool becomes --x/--no-x, a field without default is required, bad values get one clear error line,
every registered generator and its eval/export commands appear, `datagen run --generator` takes
a generator of the user's own or says why it cannot, `datagen sandbox-check` runs the hostile checks,
and `datagen sql` refuses a COPY over a committed part."""
from __future__ import annotations

import argparse
from typing import Literal

import pytest
from pydantic import Field

from flows.cli import add_settings_arguments, main, parser
from tasks.generators import BUILTIN
from tasks.runtime.settings import RunSettings


class DemoSettings(RunSettings):
    input: str = Field(description="the input file")
    samples: int = Field(4, ge=1, description="how many")
    mode: Literal["fast", "slow"] = "fast"
    timeout_s: float = Field(5.0, json_schema_extra={"cli": ["--timeout"]}, description="seconds")
    dynamic: bool = Field(True, description="second pass")
    note: str | None = None


def _parse(*argv) -> dict:
    p = argparse.ArgumentParser()
    add_settings_arguments(p, DemoSettings)
    return vars(p.parse_args(list(argv)))


def test_fields_become_options_and_only_given_ones_are_set():
    assert _parse("--input", "x") == {"input": "x"}  # defaults stay the model's
    args = _parse("--input", "x", "--samples", "3", "--mode", "slow", "--timeout", "2.5", "--no-dynamic",
                  "--note", "n", "--engine", "vllm", "--batch-size", "4")
    assert args == {"input": "x", "samples": 3, "mode": "slow", "timeout_s": 2.5, "dynamic": False, "note": "n",
                    "engine": "vllm", "batch_size": 4}
    assert DemoSettings(**args).samples == 3


@pytest.mark.parametrize("argv", [[], ["--input", "x", "--mode", "medium"], ["--input", "x", "--samples", "many"],
                                  ["--input", "x", "--timeout-s", "2"], ["--input", "x", "--engine", "fake"]])
def test_bad_command_lines_are_refused(argv, capsys):
    with pytest.raises(SystemExit):
        _parse(*argv)


def test_help_comes_from_the_descriptions_with_the_defaults():
    p = argparse.ArgumentParser()
    add_settings_arguments(p, DemoSettings)
    text = p.format_help()
    assert "how many (default 4)" in text and "--timeout TIMEOUT" in text and "--dynamic, --no-dynamic" in text
    body = text[text.index("generator options"):]  # after the usage line
    assert body.index("--input") < body.index("run options (every generator)") < body.index("--engine")


def test_every_generator_is_a_run_command_with_its_evals_and_exports(capsys):
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    run = next(a for a in sub.choices["run"]._actions if isinstance(a, argparse._SubParsersAction))
    assert set(BUILTIN) | {"build"} <= set(run.choices)
    evals = next(a for a in sub.choices["eval"]._actions if isinstance(a, argparse._SubParsersAction))
    assert {"math-programs", "retrieval", "cot-answers", "step-labels", "preferences"} <= set(evals.choices)
    exports = next(a for a in sub.choices["export"]._actions if isinstance(a, argparse._SubParsersAction))
    assert {"preferences", "math-programs", "cot-rewrites", "step-labels", "retrieval-queries"} <= set(exports.choices)
    assert "not available" not in capsys.readouterr().err  # every built-in generator imported


def test_bad_options_get_one_line_and_exit_2(capsys):
    assert main(["run", "cot-rewrites", "--input", "x.jsonl", "--rewrites", "0"]) == 2
    assert "datagen run cot-rewrites: bad options: rewrites: Input should be greater than or equal to 1" in capsys.readouterr().err


def test_run_generator_reference_errors_are_clear(capsys):
    assert main(["run", "--generator", "nowhere/gen.py:Gen", "--input", "x"]) == 2
    assert "generator file not found: nowhere/gen.py" in capsys.readouterr().err
    assert main(["run", "--generator", "no-colon-here"]) == 2
    assert "unknown generator 'no-colon-here'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the example's own options are parsed: --input is required
        main(["run", "--generator", "examples/passage_qa/generator.py:PassageQA"])


def test_sandbox_check_prints_the_isolation_report_and_every_hostile_verdict(capsys):
    from tasks.sandbox.checks import HOSTILE

    assert main(["sandbox-check"]) == 0
    out = capsys.readouterr().out
    assert "isolation:\n  bwrap: " in out and "  seccomp: True" in out
    assert f"{len(HOSTILE)} of {len(HOSTILE)} hostile programs got the right verdict" in out
    assert out.rstrip().endswith("sandbox check: PASSED")
    assert main(["sandbox-check", "--json"]) == 0
    assert '"passed": true' in capsys.readouterr().out


def test_sql_is_read_only(tmp_path, capsys):
    from datetime import datetime, timezone

    from schemas.store import TableStore
    from schemas.tables import RUNS

    store = TableStore(tmp_path, RUNS)
    store.commit([{"run_id": "r1", "flow": "f", "status": "completed", "started_at": datetime.now(timezone.utc)}], "r1")
    part = store.files()[0]
    before = open(part, "rb").read()
    assert main(["sql", "--data-dir", str(tmp_path), f"COPY (SELECT 1 AS x) TO '{part}' (FORMAT parquet)"]) == 1
    assert "error: datagen sql is read-only: COPY statements are refused" in capsys.readouterr().err
    assert open(part, "rb").read() == before
    assert main(["sql", "--data-dir", str(tmp_path), "SELECT count(*) AS n FROM runs"]) == 0
    assert any(line.strip("│ ") == "1" for line in capsys.readouterr().out.splitlines())


def test_runs_lists_the_latest_runs_and_marks_dead_drivers(tmp_path, capsys):
    import subprocess
    import sys

    from tasks.runtime.lifecycle import driver_token
    from tasks.runtime.runs import RunState, write_run

    assert main(["runs", "--data-dir", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    dead = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    token = driver_token(dead.pid)
    dead.kill()
    dead.wait()
    orphaned = RunState.start("math-programs", {}, model="m", engine="fake")
    orphaned.driver = token
    write_run(tmp_path, orphaned)
    write_run(tmp_path, RunState.start("cot-rewrites", {}, model="m", engine="fake").finish("completed"))
    assert main(["runs", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"run {orphaned.run_id}: its driver died; marked interrupted" in out
    assert "interrupted" in out and "completed" in out and "cot-rewrites" in out


def test_diff_shows_only_what_differs_between_two_runs(tmp_path, capsys):
    from tasks.runtime.runs import RunState, write_run

    a = RunState.start("math-programs", {"samples": 8, "temperature": 0.7, "limit": None}, model="m", engine="vllm")
    a.rows_out, a.counts["kept"], a.dropped["wrong"] = 40, 10, 30
    b = RunState.start("math-programs", {"samples": 4, "temperature": 0.7, "limit": None}, model="m", engine="vllm")
    b.rows_out, b.counts["kept"], b.dropped["wrong"], b.dropped["timeout"] = 20, 10, 8, 2
    for run in (a, b):
        write_run(tmp_path, run.finish("completed"))
    assert main(["diff", a.run_id, b.run_id, "--data-dir", str(tmp_path)]) == 0
    import re

    lines = {key: sides for key, *sides in (re.split(r"\s{2,}", line.strip()) for line in capsys.readouterr().out.splitlines()[1:])}
    assert lines["setting samples"] == ["8", "4"] and lines["dropped wrong"] == ["30", "8"]
    assert lines["dropped timeout"] == ["-", "2"] and lines["rows_out"] == ["40", "20"]
    assert not {"setting temperature", "setting limit", "count kept", "flow", "model"} & set(lines)
    assert main(["diff", a.run_id, "nope", "--data-dir", str(tmp_path)]) == 2
    assert "no run nope" in capsys.readouterr().err
