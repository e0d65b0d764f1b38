"""Proves the retrieval-queries tasks against committed tables: planning skips documents already
committed under the same config hash (and the examples' own documents); the filter task judges
exactly the pending rows, rewrites their files in place (no duplicate, no lost row), leaves rows
judged earlier alone, and is a no-op on a second call. Also the eval's metrics against hand-computed
values, its qrels errors, and `datagen eval retrieval` end to end on a small real SciFact slice."""
from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from schemas.tables import RETRIEVAL_QUERIES
from tasks import retrieval_eval as ev
from tasks import retrieval_queries as rq
from tasks.inputs import InputError
from tasks.retrieval_queries_tasks import filter_pending, plan_documents
from tasks.store import TableStore

REPO = Path(__file__).resolve().parents[2]
CORPUS = [
    {"source_id": "aspirin", "source_file": "c.jsonl", "source_row": 1,
     "text": "Aspirin lowered the risk of colorectal cancer in a large cohort."},
    {"source_id": "tlr4", "source_file": "c.jsonl", "source_row": 2, "text": "Mice lacking TLR4 resisted sepsis after infection."},
    {"source_id": "vitd", "source_file": "c.jsonl", "source_row": 3, "text": "Vitamin D levels were low in most elderly adults."},
]
CONFIG = rq.RetrievalQueriesConfig(samples=2, filter_retriever="bm25", negatives=1)


def _commit(data_dir, doc, outputs, run_id="r1", config_hash="h"):
    samples = [{"sample": i, "raw_output": o, "finish_reason": "stop", "prompt_tokens": 10,
                "completion_tokens": 5, "mean_logprob": -1.0} for i, o in enumerate(outputs)]
    row = {**doc, "example_ids": [], "examples_dropped": 0, "doc_truncated": False,
           "samples": rq.apply_drop_rules(samples, doc["text"], CONFIG)}
    lineage = {"run_id": run_id, "model": "m", "engine": "fake", "config_hash": config_hash,
               "created_at": datetime.now(timezone.utc)}
    TableStore(data_dir, RETRIEVAL_QUERIES).commit(rq.to_records(row, lineage, CONFIG), run_id)


def _rows(data_dir):
    return TableStore(data_dir, RETRIEVAL_QUERIES).read().to_pylist()


def test_plan_skips_committed_documents_and_example_documents(tmp_path):
    _commit(tmp_path, CORPUS[0], [" aspirin colorectal cancer", " x"])
    _commit(tmp_path, CORPUS[1], [" sepsis mice"], config_hash="other")
    examples = [{"id": "vitd", "document": CORPUS[2]["text"], "query": "vitamin D"}]
    planned = plan_documents.fn(CORPUS, examples, str(tmp_path), "h")
    assert [d["source_id"] for d in planned] == ["tlr4"] and planned[0]["examples"] == examples


def test_filter_judges_pending_rows_in_place(tmp_path):
    _commit(tmp_path, CORPUS[0], [" aspirin colorectal cancer risk", " vitamin D elderly adults"], run_id="r1")
    _commit(tmp_path, CORPUS[1], [" TLR4 sepsis mice", ""], run_id="r2")
    before = _rows(tmp_path)
    assert sum(r["drop_reason"] == rq.PENDING for r in before) == 3

    stats = filter_pending.fn(CORPUS, str(tmp_path), CONFIG, "h")
    assert stats["filtered"] == 3 and stats["kept"] == 2 and stats["dropped_round_trip"] == 1 and stats["files_rewritten"] == 2
    rows = {(r["doc_id"], r["sample"]): r for r in _rows(tmp_path)}
    assert len(rows) == len(before) == 4
    assert sorted(f.rsplit("/", 2)[1] for f in TableStore(tmp_path, RETRIEVAL_QUERIES).files()) == ["run_id=r1", "run_id=r2"]
    kept = rows[("aspirin", 0)]
    assert kept["kept"] and kept["drop_reason"] is None and kept["filter_rank"] == 1 and kept["filter_retriever"] == "bm25"
    assert kept["negatives"] and "aspirin" not in kept["negatives"] and kept["filter_score"] > 0
    wrong = rows[("aspirin", 1)]  # a query about another document
    assert wrong["kept"] is False and wrong["drop_reason"] == "round_trip" and wrong["filter_rank"] > 1
    assert wrong["negatives"][0] == "vitd"
    assert rows[("tlr4", 1)]["drop_reason"] == "empty_output" and rows[("tlr4", 1)]["filter_rank"] is None

    # A later run: new pending rows are judged; earlier verdicts stay; nothing pending -> no-op.
    _commit(tmp_path, CORPUS[2], [" vitamin D elderly"], run_id="r3")
    assert filter_pending.fn(CORPUS, str(tmp_path), CONFIG, "h")["filtered"] == 1
    after = {(r["doc_id"], r["sample"]): r for r in _rows(tmp_path)}
    assert len(after) == 5 and after[("aspirin", 1)]["drop_reason"] == "round_trip"
    assert filter_pending.fn(CORPUS, str(tmp_path), CONFIG, "h") == {}


def test_metrics_against_hand_computed_values():
    rel = {"a": 1, "b": 2}
    # b at rank 1 (gain 2), a at rank 3 (gain 1 / log2 4); ideal: 2 + 1 / log2 3
    assert ev.ndcg_at_k(["b", "x", "a"], rel, 10) == pytest.approx((2 + 0.5) / (2 + 1 / math.log2(3)))
    assert ev.ndcg_at_k(["b", "a"], rel, 10) == pytest.approx(1.0)
    assert ev.ndcg_at_k(["x", "y"], rel, 10) == 0.0
    assert ev.ndcg_at_k(["x", "b"], rel, 1) == 0.0
    assert ev.recall_at_k(["a", "x"], rel, 100) == 0.5 and ev.recall_at_k(["x", "a", "b"], rel, 2) == 0.5


def test_qrels_errors_name_file_and_row(tmp_path):
    path = tmp_path / "qrels.tsv"
    path.write_text("query-id\tcorpus-id\tscore\n1\td1\t1\n2\td2\n")
    with pytest.raises(InputError, match=r"qrels.tsv: row 3: expected"):
        ev.load_qrels(path)
    path.write_text("1\td1\t1\n1\td2\t0\n2\td3\t2\n")
    assert ev.load_qrels(path) == {"1": {"d1": 1}, "2": {"d3": 2}}


def test_eval_cli_on_a_scifact_slice(shared_data, tmp_path):
    """Kept pairs = 40 real train queries; corpus = their documents and 160 others."""
    sci = shared_data / "scifact"
    with open(sci / "qrels" / "train.tsv") as fh:
        qrels = list(csv.reader(fh, delimiter="\t"))[1:]
    queries = {json.loads(line)["_id"]: json.loads(line)["text"] for line in (sci / "queries.jsonl").read_text().splitlines()}
    lines = (sci / "corpus.jsonl").read_text().splitlines()
    by_id = {json.loads(line)["_id"]: line for line in lines}
    train, test = qrels[:40], qrels[200:260]
    wanted = [d for _, d, _ in train + test if d in by_id]
    wanted += [json.loads(line)["_id"] for line in lines[:160]]
    corpus_path = tmp_path / "corpus.jsonl"
    corpus_path.write_text("".join(by_id[d] + "\n" for d in dict.fromkeys(wanted)))
    qrels_path = tmp_path / "qrels.tsv"
    qrels_path.write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in test if d in by_id))
    corpus = rq.load_corpus(corpus_path)
    data_dir = tmp_path / "datasets"
    rows = []
    for n, (qid, doc_id, _) in enumerate(train):
        doc = next(d for d in corpus if d["source_id"] == doc_id)
        row = {**doc, "source_file": str(corpus_path), "example_ids": [], "examples_dropped": 0, "doc_truncated": False,
               "samples": [{"sample": n, "raw_output": queries[qid], "query": queries[qid], "drop_reason": None,
                            "copied_span": 0, "finish_reason": "stop", "prompt_tokens": 1, "completion_tokens": 1,
                            "mean_logprob": -1.0}]}
        lineage = {"run_id": "r1", "model": "m", "engine": "fake", "config_hash": "h", "created_at": datetime.now(timezone.utc)}
        for r in rq.to_records(row, lineage, CONFIG):
            rows.append({**r, "kept": True, "drop_reason": None})
    TableStore(data_dir, RETRIEVAL_QUERIES).commit(rows, "r1")

    results = ev.run_eval(str(data_dir), str(qrels_path), str(sci / "queries.jsonl"), batch_size=8, max_seq_length=128)
    assert [r["retriever"] for r in results] == ["bm25", "minilm (pretrained)", "minilm fine-tuned on 40 kept pairs"]
    for r in results:
        assert 0.2 < r["ndcg@10"] <= 1 and 0.5 < r["recall@100"] <= 1 and r["queries"] >= 50
    assert "nDCG@10" in ev.format_table(results)

    # The CLI: no kept rows is a clear error (exit 2).
    env_cmd = [sys.executable, "-m", "flows.cli", "eval", "retrieval", "--qrels", str(qrels_path),
               "--queries", str(sci / "queries.jsonl")]
    done = subprocess.run(env_cmd + ["--data-dir", str(tmp_path / "empty")], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert done.returncode == 2 and "no kept retrieval queries" in done.stderr
