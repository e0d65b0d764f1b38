"""Proves dedup finds planted duplicates — exact copies, copies re-cased and re-spaced, copies with a word
changed — each in the cluster of its original, which stays the representative, with no false positive
among real rows (the same program under another question is no duplicate); that a kept row is preferred
as representative; that a later run's duplicate joins the existing cluster (its representative stays)
and a rerun checks nothing twice. Real Parquet, real DuckDB (the LSH band join), real GSM8K rows."""
from __future__ import annotations

import json

from schemas.store import TableStore
from schemas.tables import DUPLICATES
from tasks.clean.dedup import DedupSettings, dedup
from tasks.clean.normalize import words

SAMPLES = "samples/math_word_problems.jsonl"


def _jsonl(path):
    return [json.loads(line) for line in open(path)]


def _ledger(data_dir) -> dict[str, dict]:
    return {r["record_id"]: r for r in TableStore(data_dir, DUPLICATES).read().to_pylist()}


def _variants(question: str, program: str, middle: bool) -> list[tuple[str, str]]:
    """An exact copy, a re-cased and re-spaced copy, and a copy with one plain word of the program changed
    in the middle — or, for a short program (a change in the middle of 25 words falls below Jaccard 0.8),
    one word added at its end."""
    parts = program.split(" ")
    if middle:
        parts[next(i for i, p in enumerate(parts) if p.isalpha() and i >= len(parts) // 2)] = "banana"
    else:
        parts.append("banana")
    return [(question, program),
            ("  " + question.upper().replace(" ", "\n "), program.replace("\n", "\n\n").lower() + " "),
            (question, " ".join(parts))]


def _plant(originals: list[tuple[str, str]], middle: bool = True):
    """(pairs, copy index -> (original index, expected match))."""
    pairs = list(originals)
    expected = {}
    for i, (q, p) in enumerate(originals):
        for kind, pair in zip(("exact", "exact", "near"), _variants(q, p, middle)):
            expected[len(pairs)] = (i, kind)
            pairs.append(pair)
    return pairs, expected


def _check_planted(data_dir, rows, expected):
    ledger = _ledger(data_dir)
    copies = {rows[i]["record_id"] for i in expected}
    assert {r for r, row in ledger.items() if not row["representative"]} == copies
    for i, (original, kind) in expected.items():
        row = ledger[rows[i]["record_id"]]
        assert row["cluster_id"] == rows[original]["record_id"] and row["match"] == kind
    assert len(ledger) == len(rows)


def test_planted_duplicates_of_bundled_problems_are_found_and_nothing_else(write_programs):
    samples = _jsonl(SAMPLES)
    originals = [(r["question"], r["answer"]) for r in samples[:4]]
    pairs, expected = _plant(originals, middle=False)  # 20-30 words
    pairs += [(r["question"], r["answer"]) for r in samples[4:]]
    pairs += [(samples[5]["question"], samples[0]["answer"])]  # a program under another question: no duplicate
    data_dir, rows = write_programs(pairs)
    summary = dedup(data_dir, "math_programs", DedupSettings(), "d1", log=lambda _: None)
    _check_planted(data_dir, rows, expected)
    assert (summary["exact"], summary["near"], summary["checked"]) == (8, 4, len(rows))


def test_planted_duplicates_among_real_gsm8k_rows_none_false(write_programs, shared_data):
    """40 GSM8K train rows (worked answers of at least 40 words: one word changed keeps Jaccard >= 0.85)
    planted three times each among 1,000 real ones (question + worked answer as the output): all 120
    copies found in their original's cluster, none of the 1,000 flagged."""
    gsm8k = _jsonl(shared_data / "gsm8k" / "train.jsonl")[:1040]
    originals = [(r["question"], r["answer"]) for r in gsm8k if len(words(r["answer"])) >= 40][:40]
    gsm8k = [r for r in gsm8k if (r["question"], r["answer"]) not in originals][:1000]
    pairs, expected = _plant(originals)
    data_dir, rows = write_programs(pairs + [(r["question"], r["answer"]) for r in gsm8k])
    summary = dedup(data_dir, "math_programs", DedupSettings(), "d1", log=lambda _: None)
    _check_planted(data_dir, rows, expected)
    assert summary["duplicates"] == 120


def test_a_kept_row_is_the_representative_and_later_runs_join_existing_clusters(write_programs):
    samples = _jsonl(SAMPLES)
    q, p = samples[0]["question"], samples[0]["answer"]
    data_dir, first = write_programs([(q, p), (q, p), (samples[1]["question"], samples[1]["answer"])],
                                     correct=[False, True, False])
    dedup(data_dir, "math_programs", DedupSettings(), "d1", log=lambda _: None)
    ledger = _ledger(data_dir)
    assert ledger[first[1]["record_id"]]["representative"]  # the correct program, though written later
    assert ledger[first[0]["record_id"]]["cluster_id"] == first[1]["record_id"]
    again = dedup(data_dir, "math_programs", DedupSettings(), "d2", log=lambda _: None)
    assert again["checked"] == 0 and again["already_checked"] == 3
    # a later run: a correct copy of the first problem joins the old cluster, whose representative stays
    _, later = write_programs([(q, p), (samples[2]["question"], samples[2]["answer"])], run_id="20261205T000000-bbbbbb",
                              start=10, correct=[True, True], minutes=60)
    third = dedup(data_dir, "math_programs", DedupSettings(), "d3", log=lambda _: None)
    assert third["checked"] == 2 and third["duplicates"] == 1
    ledger = _ledger(data_dir)
    assert ledger[later[0]["record_id"]]["cluster_id"] == first[1]["record_id"]
    assert not ledger[later[0]["record_id"]]["representative"] and ledger[later[1]["record_id"]]["representative"]
    assert sum(not r["representative"] for r in ledger.values()) == 2
