"""Proves `datagen run` checks a run before anything starts: a missing or invalid --model (or
--policy-model) folder, a data dir that is a file or cannot be written, and any bad input each end in
one line on stderr and exit code 2, with the model checked first, nothing written to the data dir, and
— checked in a fresh process, from the modules it imported — no Ray, no Prefect and no model started.
The embedded default model passes without being loaded. (Every bad input, case by case, through each
generator's load(): tests/tasks/runtime/test_bad_inputs.py.)"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import main
from tasks.engines.model_files import EMBEDDED, model_problem

REPO = Path(__file__).resolve().parents[2]
GOOD_PROBLEM = {"question": "What is 2+2?", "answer": "4"}


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _model_folder(path: Path, config: str | None = "{}", weights: bool = True) -> Path:
    path.mkdir()
    if config is not None:
        (path / "config.json").write_text(config)
    if weights:
        (path / "model.safetensors").write_bytes(b"")
    return path


def _one_line(capsys) -> str:
    captured = capsys.readouterr()
    assert captured.out == ""  # not even "engine: ...": the run never got that far
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


def _cases(tmp: Path) -> dict:
    """name -> (argv, the start of the one stderr line)."""
    good = _jsonl(tmp / "good.jsonl", [GOOD_PROBLEM])
    dup = _jsonl(tmp / "dup.jsonl", [{"id": "a", **GOOD_PROBLEM}, {"id": "a", "question": "3+3?", "answer": "6"}])
    empty = _jsonl(tmp / "empty.jsonl", [])
    corpus = _jsonl(tmp / "corpus.jsonl", [{"_id": "d1", "text": [1, 2]}])
    prompts = _jsonl(tmp / "prompts.jsonl", ['{"prompt": NaN}'])
    (tmp / "a-file").write_text("x")
    data = str(tmp / "data")
    no_config = _model_folder(tmp / "no-config", config=None)
    bad_config = _model_folder(tmp / "bad-config", config="{not json")
    list_config = _model_folder(tmp / "list-config", config="[1]")
    no_weights = _model_folder(tmp / "no-weights", weights=False)
    run = ["run", "math-programs", "--input", str(good), "--data-dir", data]
    return {
        "duplicate-id": (["run", "math-programs", "--input", str(dup), "--data-dir", data],
                         f"datagen: bad input: {dup}: row 2: id 'a' repeats row 1 (ids must be unique; --drop-duplicates"),
        "empty-input": (["run", "cot-rewrites", "--input", str(empty), "--data-dir", data],
                        f"datagen: bad input: {empty}: no rows"),
        "text-not-a-string": (["run", "retrieval-queries", "--corpus", str(corpus), "--data-dir", data],
                              f"datagen: bad input: {corpus}: row 1: column 'text' must be text, got a list"),
        "prompt-nan": (["run", "preference-labels", "--prompts", str(prompts), "--data-dir", data],
                       f"datagen: bad input: {prompts}: row 1: column 'prompt' must be text or a list"),
        "own-generator-missing-input": (["run", "--generator", "examples/passage_qa/generator.py:PassageQA", "--input",
                                         str(tmp / "nope.jsonl"), "--data-dir", data],
                                        f"datagen: bad input: {tmp / 'nope.jsonl'}: file not found"),
        "model-missing": ([*run, "--model", str(tmp / "nope")], f"datagen run math-programs: --model {tmp / 'nope'}: no such folder"),
        "model-is-a-file": ([*run, "--model", str(tmp / "a-file")], "datagen run math-programs: --model "),
        "model-no-config": ([*run, "--model", str(no_config)], f"datagen run math-programs: --model {no_config}: not a model folder"),
        "model-bad-config": ([*run, "--model", str(bad_config)], f"datagen run math-programs: --model {bad_config}: config.json cannot be read"),
        "model-config-not-object": ([*run, "--model", str(list_config)], f"datagen run math-programs: --model {list_config}: config.json is not a JSON object"),
        "model-no-weights": ([*run, "--model", str(no_weights)], f"datagen run math-programs: --model {no_weights}: no weights"),
        "policy-model-missing": (["run", "preference-labels", "--prompts", str(_jsonl(tmp / "p.jsonl", [{"prompt": "hi"}])),
                                  "--policy-model", str(tmp / "nope"), "--data-dir", data],
                                 f"datagen run preference-labels: --policy-model {tmp / 'nope'}: no such folder"),
        "model-checked-before-input": (["run", "math-programs", "--input", str(empty), "--model", str(tmp / "nope"),
                                        "--data-dir", data], "datagen run math-programs: --model"),
        "data-dir-is-a-file": (["run", "math-programs", "--input", str(good), "--data-dir", str(tmp / "a-file")],
                               f"datagen run math-programs: --data-dir {tmp / 'a-file'}: is a file, not a folder"),
        "data-dir-under-a-file": (["run", "math-programs", "--input", str(good), "--data-dir", str(tmp / "a-file" / "d")],
                                  f"datagen run math-programs: --data-dir {tmp / 'a-file' / 'd'}: {tmp / 'a-file'} is a file"),
        "templates-missing": (["run", "cot-rewrites", "--input", str(good), "--templates", str(tmp / "t.json"), "--data-dir", data],
                              f"datagen run cot-rewrites: bad options: options: Value error, templates file not found: {tmp / 't.json'}"),
    }


NAMES = ("duplicate-id", "empty-input", "text-not-a-string", "prompt-nan", "own-generator-missing-input",
         "model-missing", "model-is-a-file", "model-no-config", "model-bad-config", "model-config-not-object",
         "model-no-weights", "policy-model-missing", "model-checked-before-input", "data-dir-is-a-file",
         "data-dir-under-a-file", "templates-missing")


@pytest.mark.parametrize("name", NAMES)
def test_a_run_that_cannot_start_is_one_line_and_exit_2(tmp_path, capsys, name):
    cases = _cases(tmp_path)
    assert set(cases) == set(NAMES)
    argv, start = cases[name]
    assert main(argv) == 2
    line = _one_line(capsys)
    assert line.startswith(start), line
    assert not (tmp_path / "data").exists()  # nothing written: not even a failed `runs` row


def test_model_check_reads_files_only_and_passes_real_models(tmp_path):
    assert model_problem(EMBEDDED) is None  # the embedded default, not loaded
    assert model_problem(str(_model_folder(tmp_path / "m", config='{"model_type": "llama"}'))) is None
    (tmp_path / "sharded").mkdir()
    (tmp_path / "sharded" / "config.json").write_text("{}")
    (tmp_path / "sharded" / "pytorch_model-00001-of-00002.bin").write_bytes(b"")
    assert model_problem(str(tmp_path / "sharded")) is None


def test_nothing_heavy_starts_before_the_checks_fail(tmp_path):
    """In a fresh process: every failing run returns 2 with one line, and neither Ray, Prefect, torch,
    transformers nor vLLM was even imported. As root the permission cases run without capabilities
    (bwrap --cap-drop ALL: root then obeys file modes), and a read-only bind mount stands for a
    read-only file system."""
    as_root = os.geteuid() == 0
    assert not as_root or shutil.which("bwrap"), "as root this test drops capabilities with bwrap (make setup installs it)"
    good = _jsonl(tmp_path / "good.jsonl", [GOOD_PROBLEM])
    unreadable = _jsonl(tmp_path / "unreadable.jsonl", [GOOD_PROBLEM])
    unreadable.chmod(0)
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    argvs = {
        "read-only folder": (["run", "math-programs", "--input", str(good), "--data-dir", str(read_only)],
                             f"datagen run math-programs: --data-dir {read_only}: not writable"),
        "read-only folder above": (["run", "math-programs", "--input", str(good), "--data-dir", str(read_only / "new")],
                                   f"datagen run math-programs: --data-dir {read_only / 'new'}: cannot be created: "
                                   f"{read_only} is not writable"),
        "unreadable input": (["run", "math-programs", "--input", str(unreadable), "--data-dir", str(tmp_path / "d")],
                             f"datagen: bad input: {unreadable}: cannot be read (permission denied)"),
        "missing model": (["run", "math-programs", "--input", str(good), "--model", str(tmp_path / "nope"),
                           "--data-dir", str(tmp_path / "d")], "datagen run math-programs: --model"),
        "duplicate id": (["run", "math-programs", "--input", str(_jsonl(tmp_path / "dup.jsonl", [GOOD_PROBLEM, GOOD_PROBLEM])),
                          "--data-dir", str(tmp_path / "d")], "datagen: bad input:"),
    }
    prefix = []
    if as_root:
        prefix = ["bwrap", "--cap-drop", "ALL", "--dev-bind", "/", "/", "--ro-bind", str(mounted), str(mounted)]
        argvs["read-only file system"] = (["run", "math-programs", "--input", str(good), "--data-dir", str(mounted)],
                                          f"datagen run math-programs: --data-dir {mounted}: not writable")
    script = (
        "import contextlib, io, json, sys\n"
        "from flows.cli import main\n"
        "out = {}\n"
        "for name, argv in json.loads(sys.argv[1]).items():\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        "        out[name] = [main(argv), err.getvalue()]\n"
        "heavy = sorted(m for m in ('ray', 'prefect', 'torch', 'transformers', 'vllm') if m in sys.modules)\n"
        "print(json.dumps({'runs': out, 'heavy': heavy}))\n"
    )
    proc = subprocess.run([*prefix, sys.executable, "-c", script, json.dumps({k: v[0] for k, v in argvs.items()})],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, (_, start) in argvs.items():
        code, err = report["runs"][name]
        assert code == 2 and len(err.splitlines()) == 1 and err.startswith(start), (name, err)
    assert report["heavy"] == []
    assert not (tmp_path / "d").exists() and list(read_only.iterdir()) == []


def _recipe(tmp_path: Path, programs: dict, rewrites_model: str = "smollm2-135m") -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps({  # YAML is a superset of JSON
        "name": "t", "data_dir": str(tmp_path / "d"),
        "engines": {"small": {"backend": "transformers", "model": "smollm2-135m", "device": "cpu"},
                    "other": {"backend": "transformers", "model": rewrites_model, "device": "cpu"}},
        "generators": [
            {"name": "programs", "flow": "math-programs", "engine": "small", "params": programs},
            {"name": "rewrites", "flow": "cot-rewrites", "engine": "other", "params": {"input": programs["input"]}},
            {"name": "prefs", "flow": "preference-labels", "engine": "small",
             "pairs_from": {"generator": "rewrites", "kept_only": False, "max_pairs_per_item": 1}, "params": {}},
        ]}))
    return path


def test_a_recipe_is_checked_step_by_step_before_anything_starts(tmp_path, capsys):
    good = _jsonl(tmp_path / "good.jsonl", [GOOD_PROBLEM])
    dup = _jsonl(tmp_path / "dup.jsonl", [GOOD_PROBLEM, GOOD_PROBLEM])
    assert main(["run", "build", "--recipe", str(_recipe(tmp_path, {"input": str(dup)}))]) == 2
    assert _one_line(capsys).startswith(f"datagen: bad input: {dup}: row 2: ")
    missing = tmp_path / "no-model"
    assert main(["run", "build", "--recipe", str(_recipe(tmp_path, {"input": str(good)}, rewrites_model=str(missing)))]) == 2
    assert _one_line(capsys).startswith(f"datagen: recipe {tmp_path / 'recipe.yaml'}: generator rewrites: --model {missing}: ")
    assert not (tmp_path / "d").exists()
