"""Proves decontamination finds planted evaluation items — copied verbatim, copied into a longer text,
split over short lines, lightly reworded, and items shorter than 13 words — naming the right item,
with no false positive on a clean sample of real rows; that a rerun checks nothing twice and a new run's
records are the only ones checked next; that a bad evaluation file is one error naming file and row;
and (integration) that the MiniLM pass catches paraphrases no 13-gram survives, again with no false
positive. Real Parquet through the TableStore, real DuckDB, real MATH-500 / GSM8K rows."""
from __future__ import annotations

import json

import pytest

from schemas.store import TableStore
from schemas.tables import CONTAMINATION
from tasks.clean.decontaminate import DecontaminationSettings, decontaminate
from tasks.clean.normalize import words
from tasks.runtime.inputs import InputError

SAMPLES = "samples/math_word_problems.jsonl"


def _jsonl(path):
    return [json.loads(line) for line in open(path)]


def _split_lines(text: str, per_line: int = 3) -> str:
    """The item as short comment lines, as a program would quote it (marin #6852)."""
    parts = text.split()
    return "\n".join("# " + " ".join(parts[i:i + per_line]) for i in range(0, len(parts), per_line))


def _reword(text: str, middle: bool = True) -> str:
    """One word replaced (in the middle, or the second to last), the first letter's case and the last
    punctuation changed. (A change every 13 words leaves no 13-gram: that is the embedding pass's job.)"""
    parts = text.split()
    parts[len(parts) // 2 if middle else -2] = "banana"
    out = " ".join(parts)
    return out[0].swapcase() + out[1:].rstrip(".?") + " ."


def _flagged(data_dir) -> dict[str, dict]:
    rows = TableStore(data_dir, CONTAMINATION).read().to_pylist()
    return {r["record_id"]: r for r in rows if r["contaminated"]}


def _plant(items: list[dict], key: str, middle: bool = True):
    """(pairs, planted record index -> eval item id): copies, copies inside a program, split over lines,
    reworded, from disjoint items."""
    pairs, planted = [], {}
    ways = [lambda t: (t, "def solution():\n    return 0"),
            lambda t: ("How much is it?", "def solution():\n    # " + t + "\n    x = 3\n    return x"),
            lambda t: ("Solve it.", "def solution():\n" + _split_lines(t) + "\n    return 1"),
            lambda t: (_reword(t, middle), "def solution():\n    return 2")]
    for n, item in enumerate(items):
        way = ways[n % len(ways)]
        planted[len(pairs)] = item["_id"]
        pairs.append(way(item[key]))
    return pairs, planted


def test_planted_copies_of_bundled_problems_are_found_and_nothing_else(write_programs):
    items = [{**r, "_id": r["id"]} for r in _jsonl(SAMPLES)]
    evals, clean_items = items[:8], items[8:]
    pairs, planted = _plant(evals, "question", middle=False)  # 12-29 words: reworded near the end
    clean = [(r["question"], "def solution():\n    return 7") for r in clean_items]  # not in the eval set
    clean += [(line["text"], "def solution():\n    return 1") for line in _jsonl("samples/retrieval_corpus.jsonl")]
    data_dir, rows = write_programs(pairs + clean)
    eval_path = f"{data_dir}/../eval.jsonl"
    with open(eval_path, "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in evals)
    summary = decontaminate(data_dir, "math_programs", [eval_path], DecontaminationSettings(), "clean-run-1", log=lambda _: None)
    flagged = _flagged(data_dir)
    assert {rows[i]["record_id"] for i in planted} == set(flagged)
    for i, item_id in planted.items():
        assert flagged[rows[i]["record_id"]]["eval_item_id"] == item_id
    assert summary["checks"][0]["checked"] == len(rows) and summary["checks"][0]["contaminated"] == len(planted)


def test_rerun_checks_nothing_twice_and_then_only_the_new_run(write_programs, tmp_path):
    items = _jsonl(SAMPLES)
    data_dir, rows = write_programs([(r["question"], "def solution():\n    return 1") for r in items[:6]])
    settings = DecontaminationSettings()
    first = decontaminate(data_dir, "math_programs", [SAMPLES], settings, "c1", log=lambda _: None)
    again = decontaminate(data_dir, "math_programs", [SAMPLES], settings, "c2", log=lambda _: None)
    assert (first["checks"][0]["checked"], again["checks"][0]["checked"]) == (6, 0)
    assert again["checks"][0]["already_checked"] == 6
    _, new = write_programs([("Something else entirely, nothing to do with eggs.", "pass")] + [(items[7]["question"], "x")],
                            run_id="20261205T000000-bbbbbb", start=100)
    third = decontaminate(data_dir, "math_programs", [SAMPLES], settings, "c3", log=lambda _: None)
    assert third["checks"][0]["checked"] == 2 and third["source_runs"] == ["20261205T000000-bbbbbb"]
    ledger = TableStore(data_dir, CONTAMINATION).read().to_pylist()
    assert len(ledger) == 8 and len({r["record_id"] for r in ledger}) == 8  # one row per record and check
    assert {r["record_id"] for r in ledger if r["contaminated"]} == {r["record_id"] for r in rows} | {new[1]["record_id"]}
    # other settings are another check: every record is checked again under it
    other = decontaminate(data_dir, "math_programs", [SAMPLES], DecontaminationSettings(n=8), "c4", log=lambda _: None)
    assert other["checks"][0]["checked"] == 8


@pytest.mark.parametrize("line, where", [
    ('{"id": "a", "text": "fine"}\n{"id": "b", "question": 12}\n', "row 2: column 'question' must be text"),
    ('{"id": "a", "question": "fine"}\n{"id": "b", "title": "no text here"}\n', "row 2: missing column"),
    ('{"id": "a", "question": "fine"}\nnot json\n', "row 2: invalid JSON"),
    ('', "no rows"),
])
def test_a_bad_evaluation_file_is_one_error_naming_file_and_row(write_programs, tmp_path, line, where):
    data_dir, _ = write_programs([("q", "p")])
    bad = tmp_path / "eval.jsonl"
    bad.write_text(line)
    with pytest.raises(InputError) as caught:
        decontaminate(data_dir, "math_programs", [str(bad)], DecontaminationSettings(), "c", log=lambda _: None)
    assert str(bad) in str(caught.value) and where in str(caught.value)


def test_planted_math500_contamination_in_gsm8k_rows_all_found_none_false(write_programs, shared_data):
    """MATH-500 items planted among 400 real GSM8K train rows (question + worked answer): every planted
    row found, with its item; no GSM8K row flagged."""
    math500 = [{**r, "_id": r["unique_id"]} for r in _jsonl(shared_data / "math500" / "test500.jsonl")]
    long_items = [r for r in math500 if len(words(r["problem"])) >= 30][:40]  # reworded: a 13-gram survives
    short_items = [r for r in math500 if 3 <= len(words(r["problem"])) < 13][:8]
    pairs, planted = _plant(long_items, "problem")
    for r in short_items:  # shorter than one 13-gram: matched as a whole
        planted[len(pairs)] = r["_id"]
        pairs.append(("Help: " + r["problem"] + " Thanks", "def solution():\n    return 0"))
    gsm8k = _jsonl(shared_data / "gsm8k" / "train.jsonl")[:400]
    data_dir, rows = write_programs(pairs + [(r["question"], r["answer"]) for r in gsm8k])
    decontaminate(data_dir, "math_programs", [str(shared_data / "math500" / "test500.jsonl")],
                  DecontaminationSettings(), "clean-run", log=lambda _: None)
    flagged = _flagged(data_dir)
    assert {rows[i]["record_id"] for i in planted} == set(flagged)
    assert all(flagged[rows[i]["record_id"]]["eval_item_id"] == item for i, item in planted.items())


PARAPHRASES = {  # MATH-500 row -> a rewording that keeps no 13-word run (measured: cosine 0.86-0.96)
    1: r"Express the rectangular point $(0,3)$ in polar form, giving $(r,\theta)$ with $r>0$ and $0 \le \theta < 2\pi$.",
    3: r"Let $f(x)=\frac{3x-2}{x-2}$. Compute $f(-2)+f(-1)+f(0)$ and give the result as a common fraction.",
    4: "Find the number of positive divisors of 196.",
    6: "Six equilateral triangles make up a regular hexagon. One triangle has a perimeter of 21 inches. "
       "Find the hexagon's perimeter in inches.",
    7: "Find the least positive perfect cube that equals the sum of three consecutive integers.",
    9: "Find the distance between $(2,-6)$ and $(-4,3)$ in simplest radical form.",
    11: "Find the smallest positive multiple of 30 whose digits are all 0s and 2s.",
    12: r"A degree-5 polynomial $p(x)$ satisfies $p(n)=\frac{n}{n^2-1}$ for n = 2 through 7. What is $p(8)$?",
}


@pytest.mark.integration
def test_embedding_pass_catches_paraphrases_the_ngram_pass_misses(write_programs, shared_data):
    math500 = _jsonl(shared_data / "math500" / "test500.jsonl")
    gsm8k = _jsonl(shared_data / "gsm8k" / "train.jsonl")[:200]
    pairs = [(text, "def solution():\n    return 0") for text in PARAPHRASES.values()]
    data_dir, rows = write_programs(pairs + [(r["question"], "def solution():\n    return 0") for r in gsm8k])
    summary = decontaminate(data_dir, "math_programs", [str(shared_data / "math500" / "test500.jsonl")],
                            DecontaminationSettings(embedding=True), "clean-run", log=lambda _: None)
    by_method = {c["method"]: c for c in summary["checks"]}
    assert by_method["ngram"]["contaminated"] == 0  # real paraphrases: no 13-gram survives
    ledger = TableStore(data_dir, CONTAMINATION).read().to_pylist()
    found = {r["record_id"]: r for r in ledger if r["method"] == "embedding" and r["contaminated"]}
    assert set(found) == {rows[i]["record_id"] for i in range(len(PARAPHRASES))}  # and no GSM8K question
    for i, line in enumerate(PARAPHRASES):
        assert found[rows[i]["record_id"]]["eval_item_id"] == math500[line - 1]["unique_id"]
        assert found[rows[i]["record_id"]]["similarity"] >= 0.85
