"""Proves a user's own generator (examples/passage_qa/generator.py) runs like a built-in one: its pure
parts behave (prompt pinned, parser never raises, verifier's every drop reason), and from a fresh
process `datagen run --generator examples/passage_qa/generator.py:PassageQA` runs it end to end on the
real embedded model through the same runtime — Ray actor, Parquet table with lineage, the runs row
with its drop counts, a rerun that adds nothing, `datagen sql` over its table, and a recipe that
names it."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from tasks.engines.fake import FakeEngine
from tasks.generators import load_generator

REPO = Path(__file__).resolve().parents[2]
REF = "examples/passage_qa/generator.py:PassageQA"
PASSAGE = "Mount Fuji is the highest mountain in Japan, at 3,776 metres. It last erupted in 1707."


@pytest.fixture(scope="module")
def qa():
    return sys.modules[load_generator(str(REPO / REF)).__module__]


def test_the_reference_loads_a_generator_with_its_table_and_settings(qa):
    cls = load_generator(str(REPO / REF))
    assert cls.name == "passage-qa" and cls.table.name == "passage_qa"
    assert {"input", "samples", "max_answer_words", "engine", "data_dir"} <= set(cls.Settings.model_fields)
    with pytest.raises(ValueError, match="not found"):
        load_generator("examples/nope.py:PassageQA")
    with pytest.raises(ValueError, match="not a Generator subclass"):
        load_generator(str(REPO / "examples/passage_qa/generator.py:parse_line"))


def test_prompt_is_pinned(qa):
    messages = qa.build_messages("P.", question="Why?")
    assert messages[1] == {"role": "assistant", "content": "Question: Why?\nAnswer:"}
    assert messages[0]["content"].endswith("Answer: 1889\n\nPassage:\nP.\n")
    assert messages[0]["content"].startswith("Write one question that the passage answers, and its answer")
    assert qa.build_messages("P.")[1] == {"role": "assistant", "content": "Question:"}


@pytest.mark.parametrize("text, expected", [
    (None, None), ("", None), ("\n\n  \n", None), (' "How high is it?"\nmore', "How high is it?"), ("x" * 10_000, "x" * 10_000),
])
def test_parse_line_never_raises(qa, text, expected):
    assert qa.parse_line(text) == expected


@pytest.mark.parametrize("question, answer, reason", [
    ("How high is Mount Fuji?", "3,776 metres", None),
    ("When did it last erupt?", "1707", None),
    ("How high is Mount Fuji", "3,776 metres", "no_question"),
    (None, "1707", "no_question"),
    ("When did it last erupt?", None, "no_answer"),
    ("When did it last erupt?", "it last erupted in the year 1707 as the passage says", "answer_too_long"),
    ("When did it last erupt?", "1930", "answer_not_in_passage"),
    ("When did it last erupt?", "170", "answer_not_in_passage"),  # a span is whole words, not a substring
    ("Did Fuji erupt in 1707?", "1707", "answer_in_question"),
])
def test_verifier(qa, question, answer, reason):
    assert qa.verify(question, answer, PASSAGE, max_answer_words=8) == reason


def test_the_program_asks_then_answers_and_keeps_every_sample(qa):
    engine = FakeEngine(replies=["How high is Mount Fuji?", "", " 3,776 metres."])  # 2 questions, then 1 answer
    row = asyncio.run(qa.write_pairs({"source_id": "p", "passage": PASSAGE}, engine,
                                     {"samples": 2, "temperature": 0.7, "max_tokens": 32, "seed": 0,
                                      "max_answer_words": 8}))
    assert [(s["question"], s["answer"], s["drop_reason"]) for s in row["samples"]] == [
        ("How high is Mount Fuji?", "3,776 metres", None), (None, None, "no_question")]
    (first, ask), (second, answer) = engine.calls
    assert ask.n == 2 and answer.n == 1 and answer.temperature == 0.0
    assert second == qa.build_messages(PASSAGE, "How high is Mount Fuji?")  # only the sample that asked


def _datagen(*args, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=900)


@pytest.mark.integration
def test_datagen_runs_the_example_end_to_end_on_the_embedded_model(tmp_path):
    data_dir = tmp_path / "datasets"
    args = ["run", "--generator", REF, "--input", "examples/passage_qa/passages.jsonl", "--limit", "2",
            "--samples", "2", "--max-tokens", "32", "--data-dir", str(data_dir)]
    first = _datagen(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "2 source rows, 0 already done, 4 records written" in first.stdout

    rows = duckdb.sql(f"SELECT * FROM read_parquet('{data_dir}/passage_qa/**/*.parquet')").to_arrow_table().to_pylist()
    assert len(rows) == len({r["record_id"] for r in rows}) == 4
    assert {r["source_id"] for r in rows} == {"p01", "p02"} and sorted(r["attempt"] for r in rows) == [0, 0, 1, 1]
    for r in rows:
        assert r["generator"] == "passage-qa" and r["engine"] == "transformers" and r["model"]
        assert r["source_file"] == "examples/passage_qa/passages.jsonl" and r["raw_output"] is not None
        assert r["kept"] == (r["drop_reason"] is None)
        assert r["drop_reason"] in (None, "no_question", "no_answer", "answer_too_long", "answer_not_in_passage",
                                    "answer_in_question")
    [run] = duckdb.sql(f"SELECT * FROM read_parquet('{data_dir}/runs/**/*.parquet')").to_arrow_table().to_pylist()
    assert run["flow"] == "passage-qa" and run["status"] == "completed" and run["rows_out"] == 4
    dropped = dict(run["dropped_by_reason"])
    assert sum(dropped.values()) + dict(run["counts"]).get("kept", 0) == 4
    assert dropped == {k: v for k, v in json.loads(json.dumps(dropped)).items() if v}

    again = _datagen(*args)
    assert again.returncode == 0 and "2 source rows, 2 already done, 0 records written" in again.stdout

    sql = _datagen("sql", "--data-dir", str(data_dir), "SELECT count(*) AS n FROM passage_qa")
    assert sql.returncode == 0 and "│ 4 │" in sql.stdout.replace(" ", "").replace("│4│", "│ 4 │")


def test_a_recipe_can_name_the_example(tmp_path):
    from tasks.recipes import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text(f"name: mine\ngenerators:\n  - name: qa\n    flow: {REPO / REF}\n    params: {{input: x.jsonl}}\n")
    assert load_recipe(path).generators[0].flow.endswith("PassageQA")
    path.write_text("name: mine\ngenerators:\n  - name: qa\n    flow: examples/missing.py:X\n")
    with pytest.raises(ValueError, match="qa.*not found"):
        load_recipe(path)
