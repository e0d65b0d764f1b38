"""Proves every bad input is handled the same way, for every input option of every generator
(math-programs --input; cot-rewrites --input; preference-labels --pairs and --prompts;
retrieval-queries --corpus, --examples and its --id-column / --text-column / --title-column; the
passage-qa example's --input): the generator's load() raises one InputError, one line, naming the file
and (where the problem is in a row) the row and the column — or, for the documented drops, the row is
a counted reject (`duplicate_id` with --drop-duplicates, `input_too_long` over --max-input-chars) and the
other rows still load. Nothing is written to the data dir. Real files under tmp_path, no mocks, no
model, no Ray: the whole module runs in a few seconds.

The cases: every unreadable file (missing, a folder, an unsupported format, empty, blank lines only,
not UTF-8, invalid JSON, a row that is not an object, corrupt or truncated gzip, corrupt or empty
Parquet) for each of the seven file options, then each option's own row rules (missing columns, texts
that are numbers, lists, objects, bools, nulls or NaN, ids that are not ids, repeated ids, ...).
The CLI-level cases (model, data dir, one line on stderr, no Ray / Prefect / model started) are in
tests/flows/test_cli_preflight.py."""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.generators import load_generator
from tasks.runtime.inputs import InputError, Source

REPO = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class Option:
    """One input option: the generator, the settings field that takes the file, a good row, and the
    other files and settings the generator needs beside it."""

    generator: str
    field: str
    good: dict
    files: dict = field(default_factory=dict)  # settings field -> rows written to <field>.jsonl
    settings: dict = field(default_factory=dict)


CORPUS = [{"_id": "d1", "title": "Bread", "text": "Yeast makes dough rise."},
          {"_id": "d2", "title": "Chains", "text": "A bicycle chain stretches."}]
OPTIONS = {
    "math-programs --input": Option("math-programs", "input", {"question": "What is 2+2?", "answer": "4"}),
    "cot-rewrites --input": Option("cot-rewrites", "input", {"question": "What is 2+2?", "answer": "4"}),
    "preference-labels --pairs": Option("preference-labels", "pairs",
                                        {"prompt": "Hi?", "response_a": "Hello.", "response_b": "Go away."}),
    "preference-labels --prompts": Option("preference-labels", "prompts", {"prompt": "Name a prime."}),
    "retrieval-queries --corpus": Option("retrieval-queries", "corpus", CORPUS[0]),
    "retrieval-queries --examples": Option("retrieval-queries", "examples", {"query": "why does dough rise", "doc_id": "d1"},
                                           files={"corpus": CORPUS}),
    "passage-qa --input": Option(str(REPO / "examples/passage_qa/generator.py:PassageQA"), "input",
                                 {"id": "p1", "text": "The lighthouse was built in 1871."}),
}


def _load(option: Option, tmp_path: Path, path: Path, **settings) -> Source:
    """The generator's load() with `path` at the option; asserts the data dir was not touched."""
    values = {option.field: str(path), "data_dir": str(tmp_path / "data"), **option.settings, **settings}
    for name, rows in option.files.items():
        values[name] = str(_jsonl(tmp_path / f"{name}.jsonl", rows))
    try:
        return load_generator(option.generator)(values).load()
    finally:
        assert not (tmp_path / "data").exists(), "load() wrote to the data dir"


def _jsonl(path: Path, rows: list) -> Path:
    """Rows as JSONL; a str row is written as is (raw JSON, or not JSON at all)."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _expect(option: Option, tmp_path: Path, path: Path, row: int | None, message: str, **settings) -> None:
    with pytest.raises(InputError) as info:
        _load(option, tmp_path, path, **settings)
    text = str(info.value)
    where = f"{path}: row {row}: " if row is not None else f"{path}: "
    assert text.startswith(where), text
    assert message in text, text
    assert "\n" not in text, text


# ---------------------------------------------------------------- unreadable files, for every file option

def _file_cases(good: dict) -> dict:
    """name -> (file name, writer(path), row, message)."""
    line = json.dumps(good).encode() + b"\n"
    return {
        "missing": ("in.jsonl", lambda p: None, None, "file not found"),
        "folder": ("in.jsonl", lambda p: p.mkdir(), None, "is a folder, not a file"),
        "unsupported": ("in.csv", lambda p: p.write_bytes(b"a,b\n1,2\n"), None, "unsupported format"),
        "empty": ("in.jsonl", lambda p: p.write_bytes(b""), None, "no rows"),
        "blank-lines": ("in.jsonl", lambda p: p.write_bytes(b"\n  \n\t\n"), None, "no rows"),
        "not-utf8": ("in.jsonl", lambda p: p.write_bytes(line + b'{"x": "caf\xe9"}\n'), 2, "not UTF-8 text"),
        "invalid-json": ("in.jsonl", lambda p: p.write_bytes(line + b'{"x": \n'), 2, "invalid JSON"),
        "array-row": ("in.jsonl", lambda p: p.write_bytes(line + b"[1, 2]\n"), 2, "expected a JSON object, got list"),
        "scalar-row": ("in.jsonl", lambda p: p.write_bytes(line + b"42\n"), 2, "expected a JSON object, got int"),
        "corrupt-gzip": ("in.jsonl.gz", lambda p: p.write_bytes(b"not gzip at all\n"), 1, "corrupt gzip file"),
        "truncated-gzip": ("in.jsonl.gz", lambda p: p.write_bytes(gzip.compress(line + b"\n" * 200_000)[:-64]), None,
                           "corrupt gzip file"),
        "corrupt-parquet": ("in.parquet", lambda p: p.write_bytes(b"PAR1 not really parquet"), None,
                            "not a readable Parquet file"),
        "empty-parquet": ("in.parquet", lambda p: pq.write_table(pa.Table.from_pylist([good]).slice(0, 0), p), None,
                          "no rows"),
    }


FILE_CASES = [(opt, case) for opt in OPTIONS for case in _file_cases({})]


@pytest.mark.parametrize(("option", "case"), FILE_CASES, ids=[f"{o}:{c}" for o, c in FILE_CASES])
def test_unreadable_files_are_one_error_naming_the_file(tmp_path, option, case):
    spec = OPTIONS[option]
    name, write, row, message = _file_cases(spec.good)[case]
    path = tmp_path / name
    write(path)
    if case == "truncated-gzip":  # the row is where the stream broke: any, but named
        with pytest.raises(InputError, match=rf"^{path}: row \d+: corrupt gzip file"):
            _load(spec, tmp_path, path)
        return
    _expect(spec, tmp_path, path, row, message)


# ---------------------------------------------------------------- each option's own row rules

G = {  # the good row of each option, for building bad ones
    "math": OPTIONS["math-programs --input"].good, "cot": OPTIONS["cot-rewrites --input"].good,
    "pairs": OPTIONS["preference-labels --pairs"].good, "prompts": OPTIONS["preference-labels --prompts"].good,
    "corpus": CORPUS[1], "examples": OPTIONS["retrieval-queries --examples"].good,
    "passage": OPTIONS["passage-qa --input"].good,
}
NAN = '{"question": NaN, "answer": "4"}'  # Python's json reads NaN; so does every JSONL reader here

ROW_CASES = {
    # option, rows (the bad one last), row named, message, extra settings
    "math-programs --input": {
        "no-question-column": ([{"text": "2+2?", "answer": "4"}], 1, "missing column: expected one of ['question', 'problem']"),
        "no-answer-column": ([{"question": "2+2?"}], 1, "missing column: expected one of ['answer'"),
        "question-number": ([G["math"], {"question": 12345, "answer": "4"}], 2, "column 'question' must be text, got a number (12345)"),
        "question-list": ([{"question": [1, 2], "answer": "4"}], 1, "column 'question' must be text, got a list"),
        "question-object": ([{"question": {"q": "x"}, "answer": "4"}], 1, "column 'question' must be text, got an object"),
        "question-bool": ([{"question": True, "answer": "4"}], 1, "column 'question' must be text, got a bool"),
        "question-null": ([{"question": None, "answer": "4"}], 1, "column 'question' must be text, got null"),
        "question-nan": ([NAN], 1, "column 'question' must be text, got NaN"),
        "question-blank": ([{"question": "   ", "answer": "4"}], 1, "column 'question' is empty"),
        "problem-number": ([{"problem": 7, "answer": "4"}], 1, "column 'problem' must be text, got a number"),
        "answer-words": ([{"question": "2+2?", "answer": "four-ish"}], 1, "column 'answer': gold answer has no '####' line"),
        "answer-list": ([{"question": "2+2?", "answer": [4]}], 1, "column 'answer': gold answer has type list"),
        "answer-bool": ([{"question": "2+2?", "answer": False}], 1, "column 'answer': gold answer is a bool"),
        "answer-nan": (['{"question": "2+2?", "answer": NaN}'], 1, "column 'answer': gold answer nan is not a finite number"),
        "answer-null": ([{"question": "2+2?", "answer": None}], 1, "column 'answer': gold answer has type NoneType"),
        "answer-empty-after-hashes": ([{"question": "2+2?", "answer": "so #### "}], 1, "no number after '####'"),
        "id-float": ([{"id": 3.5, "question": "2+2?", "answer": "4"}], 1, "column 'id' must be text or an integer id, got a number (3.5)"),
        "id-list": ([{"id": ["a"], "question": "2+2?", "answer": "4"}], 1, "column 'id' must be text or an integer id, got a list"),
        "id-nan": (['{"id": NaN, "question": "2+2?", "answer": "4"}'], 1, "column 'id' must be text or an integer id, got NaN"),
        "duplicate-id": ([{"id": "a", **G["math"]}, {"id": "a", "question": "3+3?", "answer": "6"}], 2, "id 'a' repeats row 1"),
        "duplicate-int-and-text-id": ([{"id": 7, **G["math"]}, {"id": "7", "question": "3+3?", "answer": "6"}], 2, "id '7' repeats row 1"),
        "duplicate-question-no-ids": ([G["math"], "", G["math"]], 3, "repeats row 1"),
    },
    "cot-rewrites --input": {
        "no-question-column": ([{"answer": "4"}], 1, "missing column: expected one of ['question', 'problem', 'input']"),
        "question-number": ([G["cot"], {"question": 12345, "answer": "4"}], 2, "column 'question' must be text, got a number"),
        "question-list": ([{"problem": [1, 2], "answer": "4"}], 1, "column 'problem' must be text, got a list"),
        "question-null": ([{"question": None, "answer": "4"}], 1, "column 'question' must be text, got null"),
        "question-nan": ([NAN], 1, "column 'question' must be text, got NaN"),
        "question-blank": ([{"question": "", "answer": "4"}], 1, "column 'question' is empty"),
        "solution-number": ([{"question": "2+2?", "solution": 4, "answer": "4"}], 1, "column 'solution' must be text, got a number"),
        "solution-list": ([{"question": "2+2?", "solution": ["add"], "answer": "4"}], 1, "column 'solution' must be text, got a list"),
        "rationale-object": ([{"question": "2+2?", "rationale": {"s": 1}, "answer": "4"}], 1, "column 'rationale' must be text, got an object"),
        "answer-nan": (['{"question": "2+2?", "answer": NaN}'], 1, "column 'answer' must be text or a number, got NaN"),
        "answer-list": ([{"question": "2+2?", "answer": ["4"]}], 1, "column 'answer' must be text or a number, got a list"),
        "answer-bool": ([{"question": "2+2?", "answer": True}], 1, "column 'answer' must be text or a number, got a bool"),
        "no-gold": ([{"question": "2+2?", "solution": "It is four."}], 1, "no gold answer"),
        "nothing-after-hashes": ([{"question": "2+2?", "answer": "add them ####"}], 1, "nothing after '####'"),
        "unknown-route": ([{**G["cot"], "route": "summarize"}], 1, "route 'summarize' is not one of"),
        "route-without-solution": ([{**G["cot"], "route": "unify"}], 1, "route 'unify' needs a source solution"),
        "unique-id-float": ([{"unique_id": 1.5, **G["cot"]}], 1, "column 'unique_id' must be text or an integer id"),
        "duplicate-id": ([{"id": "x", **G["cot"]}, {"id": "x", "question": "3+3?", "answer": "6"}], 2, "id 'x' repeats row 1"),
        "duplicate-question-no-ids": ([G["cot"], G["cot"]], 2, "repeats row 1"),
    },
    "preference-labels --pairs": {
        "no-columns": ([{"question": "q", "answer": "a"}], 1, "expected prompt/response_a/response_b or chosen/rejected"),
        "missing-response-b": ([{"prompt": "q", "response_a": "a"}], 1, "needs prompt, response_a, response_b"),
        "prompt-number": ([G["pairs"], {**G["pairs"], "prompt": 12345}], 2, "column 'prompt' must be text or a list of {role, content} messages, got a number"),
        "prompt-null": ([{**G["pairs"], "prompt": None}], 1, "column 'prompt' must be text or a list of {role, content} messages, got null"),
        "prompt-blank": ([{**G["pairs"], "prompt": " "}], 1, "column 'prompt' is empty"),
        "prompt-bad-message": ([{**G["pairs"], "prompt": [{"role": "user", "content": 5}]}], 1, "column 'prompt': message"),
        "prompt-ends-with-assistant": ([{**G["pairs"], "prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}],
                                       1, "must end with a user message"),
        "response-a-number": ([{**G["pairs"], "response_a": 42}], 1, "column 'response_a' must be text, got a number"),
        "response-b-list": ([{**G["pairs"], "response_b": ["a", "b"]}], 1, "column 'response_b' must be text, got a list"),
        "chosen-object": ([{"prompt": "q", "chosen": {"text": "a"}, "rejected": "b"}], 1, "column 'chosen' must be text, got an object"),
        "rejected-nan": (['{"chosen": "\\n\\nHuman: hi\\n\\nAssistant: a", "rejected": NaN}'], 1, "column 'rejected' must be text, got NaN"),
        "id-object": ([{**G["pairs"], "id": {"k": 1}}], 1, "column 'id' must be text or an integer id, got an object"),
        "duplicate-id": ([{**G["pairs"], "id": "p"}, {**G["pairs"], "id": "p", "response_b": "Hi."}], 2, "id 'p' repeats row 1"),
        "duplicate-pair-no-ids": ([G["pairs"], {**G["pairs"], "response_a": "Go away.", "response_b": "Hello."}], 2, "repeats row 1"),
    },
    "preference-labels --prompts": {
        "no-prompt-column": ([{"text": "q"}], 1, "missing column: expected one of ['prompt', 'question', 'instruction', 'turns', 'messages']"),
        "prompt-number": ([G["prompts"], {"prompt": 12345}], 2, "column 'prompt' must be text or a list of {role, content} messages, got a number (12345)"),
        "question-nan": (['{"question": NaN}'], 1, "column 'question' must be text or a list of {role, content} messages, got NaN"),
        "instruction-object": ([{"instruction": {"x": 1}}], 1, "column 'instruction' must be text or a list of {role, content} messages, got an object"),
        "prompt-bool": ([{"prompt": False}], 1, "got a bool"),
        "prompt-blank": ([{"prompt": "\t"}], 1, "column 'prompt' is empty"),
        "messages-end-with-assistant": ([{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}],
                                        1, "column 'messages': the conversation must end with a user message"),
        "turns-text": ([{"turns": "just one"}], 1, "column 'turns' must be a non-empty list of text, got str"),
        "turns-empty": ([{"turns": []}], 1, "column 'turns' must be a non-empty list of text, got []"),
        "turns-numbers": ([{"turns": [1, 2]}], 1, "column 'turns' must be a non-empty list of text, got [1, 2]"),
        "question-id-float": ([{"question_id": 81.0, "turns": ["q"]}], 1, "column 'question_id' must be text or an integer id"),
        "duplicate-question-id": ([{"question_id": 81, "turns": ["a"]}, {"question_id": 81, "turns": ["b"]}], 2, "id '81' repeats row 1"),
        "duplicate-prompt-no-ids": ([G["prompts"], G["prompts"]], 2, "repeats row 1"),
    },
    "retrieval-queries --corpus": {
        "no-id-column": ([{"title": "T", "text": "x"}], 1, "missing column: expected one of ['_id', 'id', 'doc_id', 'docid']"),
        "no-text-column": ([{"_id": "1", "title": "T"}], 1, "missing column: expected one of ['text', 'document'"),
        "text-list": ([CORPUS[0], {"_id": "2", "text": [1, 2]}], 2, "column 'text' must be text, got a list"),
        "text-number": ([{"_id": "2", "text": 12345}], 1, "column 'text' must be text, got a number (12345)"),
        "text-nan": (['{"_id": "2", "text": NaN}'], 1, "column 'text' must be text, got NaN"),
        "text-object": ([{"_id": "2", "text": {"p": "x"}}], 1, "column 'text' must be text, got an object"),
        "text-bool": ([{"_id": "2", "text": True}], 1, "column 'text' must be text, got a bool"),
        "title-number": ([{"_id": "2", "title": 3, "text": "x"}], 1, "column 'title' must be text, got a number"),
        "no-text-at-all": ([{"_id": "2", "title": "", "text": "  "}], 1, "document '2' has no text"),
        "id-blank": ([{"_id": " ", "text": "x"}], 1, "column '_id' is empty"),
        "id-list": ([{"_id": [1], "text": "x"}], 1, "column '_id' must be text or an integer id, got a list"),
        "id-nan": (['{"_id": NaN, "text": "x"}'], 1, "column '_id' must be text or an integer id, got NaN"),
        "duplicate-id": ([CORPUS[0], {**CORPUS[1], "_id": "d1"}], 2, "id 'd1' repeats row 1"),
        "duplicate-int-and-text-id": ([{"_id": 5, "text": "a"}, {"_id": "5", "text": "b"}], 2, "id '5' repeats row 1"),
    },
    "retrieval-queries --examples": {
        "no-query-column": ([{"doc_id": "d1"}], 1, "missing column 'query'"),
        "query-number": ([G["examples"], {"query": 7, "doc_id": "d2"}], 2, "column 'query' must be text, got a number (7)"),
        "query-nan": (['{"query": NaN, "doc_id": "d1"}'], 1, "column 'query' must be text, got NaN"),
        "query-blank": ([{"query": "", "doc_id": "d1"}], 1, "column 'query' is empty"),
        "document-list": ([{"query": "q", "document": ["a"]}], 1, "column 'document' must be text, got a list"),
        "doc-id-unknown": ([{"query": "q", "doc_id": "nope"}], 1, "doc_id 'nope' is not in the corpus"),
        "doc-id-float": ([{"query": "q", "doc_id": 1.0}], 1, "column 'doc_id' must be text or an integer id"),
        "neither": ([{"query": "q"}], 1, "each example needs 'doc_id' (a corpus id) or 'document'"),
        "duplicate-example": ([G["examples"], {"query": "dough?", "doc_id": "d1"}], 2, "example 'd1' repeats row 1"),
        "nine-examples": ([{"query": f"q{i}", "document": f"doc {i}"} for i in range(9)], 9, "at most 8 examples"),
    },
    "passage-qa --input": {
        "no-text-column": ([{"id": "p1", "body": "x"}], 1, "missing column: expected one of ['text', 'passage']"),
        "text-number": ([G["passage"], {"id": "p2", "text": 12345}], 2, "column 'text' must be text, got a number (12345)"),
        "passage-list": ([{"passage": [1, 2]}], 1, "column 'passage' must be text, got a list"),
        "text-null": ([{"text": None}], 1, "column 'text' must be text, got null"),
        "text-nan": (['{"text": NaN}'], 1, "column 'text' must be text, got NaN"),
        "text-blank": ([{"text": ""}], 1, "column 'text' is empty"),
        "title-list": ([{"text": "x", "title": ["a"]}], 1, "column 'title' must be text, got a list"),
        "id-float": ([{"id": 2.5, "text": "x"}], 1, "column 'id' must be text or an integer id"),
        "duplicate-id": ([G["passage"], {"id": "p1", "text": "Another passage."}], 2, "id 'p1' repeats row 1"),
    },
}
# Named columns of retrieval-queries: the option names the column, the row must have it and hold text there.
COLUMN_OPTION_CASES = {
    "id-column-absent": ({"id_column": "pid"}, [{"_id": "1", "text": "x"}], 1, "missing column 'pid'"),
    "text-column-absent": ({"text_column": "body"}, [{"_id": "1", "text": "x"}], 1, "missing column 'body'"),
    "text-column-list": ({"text_column": "body"}, [{"_id": "1", "body": [1, 2]}], 1, "column 'body' must be text, got a list"),
    "text-column-number": ({"text_column": "body"}, [{"_id": "1", "body": 12345}], 1, "column 'body' must be text, got a number"),
    "title-column-number": ({"title_column": "headline"}, [{"_id": "1", "headline": 9, "text": "x"}], 1,
                            "column 'headline' must be text, got a number"),
    "id-column-float": ({"id_column": "pid"}, [{"pid": 1.5, "text": "x"}], 1, "column 'pid' must be text or an integer id"),
}

ROWS = [(opt, case) for opt, cases in ROW_CASES.items() for case in cases]


@pytest.mark.parametrize(("option", "case"), ROWS, ids=[f"{o}:{c}" for o, c in ROWS])
def test_bad_rows_are_one_error_naming_file_row_and_column(tmp_path, option, case):
    rows, row, message = ROW_CASES[option][case]
    _expect(OPTIONS[option], tmp_path, _jsonl(tmp_path / "in.jsonl", rows), row, message)


@pytest.mark.parametrize("case", COLUMN_OPTION_CASES)
def test_retrieval_column_options_name_their_column(tmp_path, case):
    settings, rows, row, message = COLUMN_OPTION_CASES[case]
    _expect(OPTIONS["retrieval-queries --corpus"], tmp_path, _jsonl(tmp_path / "in.jsonl", rows), row, message, **settings)


def test_a_bad_row_in_parquet_is_named_like_one_in_jsonl(tmp_path):
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"_id": ["1", "2"], "text": [[1, 2], None]}), path)  # a list column: not text
    _expect(OPTIONS["retrieval-queries --corpus"], tmp_path, path, 1, "column 'text' must be text, got a list")
    pq.write_table(pa.table({"question": [1.5, float("nan")], "answer": ["1", "2"]}), path)
    _expect(OPTIONS["math-programs --input"], tmp_path, path, 1, "column 'question' must be text, got a number (1.5)")


# ---------------------------------------------------------------- the documented drops

LONG = "word " * 5_000  # 25,000 characters: over the default --max-input-chars (20,000)
DROP_CASES = {  # option -> (a good row, an over-long row, a row repeating the good row's id, another good row)
    "math-programs --input": ({"id": "a", **G["math"]}, {"id": "b", "question": LONG, "answer": "1"},
                              {"id": "a", "question": "3+3?", "answer": "6"}, {"id": "c", "question": "1+1?", "answer": "2"}),
    "cot-rewrites --input": ({"id": "a", **G["cot"]}, {"id": "b", "question": "2+2?", "solution": LONG, "answer": "4"},
                             {"id": "a", "question": "3+3?", "answer": "6"}, {"id": "c", "question": "1+1?", "answer": "2"}),
    "preference-labels --pairs": ({**G["pairs"], "id": "a"}, {**G["pairs"], "id": "b", "response_b": LONG},
                                  {**G["pairs"], "id": "a", "response_b": "Hi."}, {**G["pairs"], "id": "c"}),
    "preference-labels --prompts": ({"id": "a", "prompt": "Name a prime."}, {"id": "b", "prompt": LONG},
                                    {"id": "a", "prompt": "Name two."}, {"id": "c", "prompt": "Name three."}),
    "retrieval-queries --corpus": (CORPUS[0], {"_id": "d9", "title": "Long", "text": LONG}, {**CORPUS[1], "_id": "d1"},
                                   CORPUS[1]),
    "passage-qa --input": (G["passage"], {"id": "p2", "text": LONG}, {"id": "p1", "text": "Another passage."},
                           {"id": "p3", "text": "A third passage."}),
}


@pytest.mark.parametrize("option", DROP_CASES)
def test_an_over_long_row_is_a_counted_drop_and_the_rest_load(tmp_path, option):
    good, long, _, other = DROP_CASES[option]
    path = _jsonl(tmp_path / "in.jsonl", [good, long, other])
    source = _load(OPTIONS[option], tmp_path, path)
    assert source.rejects == [{"source_file": str(path), "source_row": 2, "reason": "input_too_long"}]
    assert [r["source_row"] for r in source.rows] == [1, 3]
    tight = _load(OPTIONS[option], tmp_path, path, max_input_chars=3)  # the option sets the limit
    assert [r["source_row"] for r in tight.rejects] == [1, 2, 3] and tight.rows == []


@pytest.mark.parametrize("option", DROP_CASES)
def test_a_repeated_id_is_dropped_and_counted_only_when_asked(tmp_path, option):
    good, _, repeat, _ = DROP_CASES[option]
    path = _jsonl(tmp_path / "in.jsonl", [good, repeat])
    _expect(OPTIONS[option], tmp_path, path, 2, "repeats row 1 (ids must be unique; --drop-duplicates drops the repeats)")
    source = _load(OPTIONS[option], tmp_path, path, drop_duplicates=True)
    assert source.rejects == [{"source_file": str(path), "source_row": 2, "reason": "duplicate_id"}]
    assert [r["source_row"] for r in source.rows] == [1]


def test_a_rejected_corpus_document_is_left_out_of_everything(tmp_path):
    good, long, _, other = DROP_CASES["retrieval-queries --corpus"]
    path = _jsonl(tmp_path / "in.jsonl", [good, long, other])
    source = _load(OPTIONS["retrieval-queries --corpus"], tmp_path, path)
    assert [d["source_id"] for d in source.context["corpus"]] == ["d1", "d2"]  # not in the filter's index
    assert [r["reason"] for r in source.rejects] == ["input_too_long"]
    examples = _jsonl(tmp_path / "ex.jsonl", [{"query": "q", "doc_id": "d9"}])
    _expect(Option("retrieval-queries", "examples", {}, settings={"corpus": str(path)}), tmp_path, examples, 1,
            "doc_id 'd9' is not in the corpus")


def test_limit_counts_used_rows_and_reads_no_further(tmp_path):
    option = OPTIONS["math-programs --input"]
    rows = [{"id": "a", **G["math"]}, {"id": "b", "question": LONG, "answer": "1"}, {"id": "c", **G["math"]},
            "{this row is never read"]
    source = _load(option, tmp_path, _jsonl(tmp_path / "in.jsonl", rows), limit=2)
    assert [r["source_id"] for r in source.rows] == ["a", "c"] and len(source.rejects) == 1


def test_a_byte_order_mark_is_not_part_of_the_first_row(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(G["math"]).encode() + b"\n")
    assert [r["question"] for r in _load(OPTIONS["math-programs --input"], tmp_path, path).rows] == ["What is 2+2?"]


def test_input_errors_are_not_retried_as_transient_io(tmp_path):
    """Prefect retries the load step on OSError (a flaky network filesystem), never on bad input: a
    folder passed as a file is an InputError, not the IsADirectoryError a retry would repeat."""
    from prefect.states import Failed

    from tasks.runtime.pipeline import transient_io_error

    (tmp_path / "in.jsonl").mkdir()
    with pytest.raises(InputError) as info:
        _load(OPTIONS["math-programs --input"], tmp_path, tmp_path / "in.jsonl")
    assert transient_io_error(None, None, Failed(data=info.value)) is False
    assert transient_io_error(None, None, Failed(data=ConnectionResetError("flaky"))) is True


def test_the_suite_covers_every_input_option_with_over_a_hundred_cases():
    cases = len(FILE_CASES) + len(ROWS) + len(COLUMN_OPTION_CASES) + 2 * len(DROP_CASES)
    assert cases >= 100, cases
    own_files = {(g, f) for g, f in ((o.generator, o.field) for o in OPTIONS.values())}
    assert {("math-programs", "input"), ("cot-rewrites", "input"), ("preference-labels", "pairs"),
            ("preference-labels", "prompts"), ("retrieval-queries", "corpus"), ("retrieval-queries", "examples")} <= own_files
