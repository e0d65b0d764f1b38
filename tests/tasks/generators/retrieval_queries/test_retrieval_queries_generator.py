"""Proves the RetrievalQueries generator against real files and committed tables: load() reads the
whole corpus and the examples and leaves the examples' own documents out of the work (counted as
`example_documents`, not as skipped); plan() skips documents already committed under the same config
hash and hands each document the examples; the generator's config hash is the one the code before the
generator folder gave; finish() (the round-trip filter) judges exactly the pending rows, rewrites their
files in place (no duplicate, no lost row), leaves rows judged earlier alone, and does nothing on a
second call; the counts use one vocabulary (pending queries are `queries_parsed`, not drops). A whole
run through the runtime with a scripted engine shows the summary: example documents are neither
source rows nor "already done", and a rerun skips every document. Also the eval's metrics against
hand-computed values, its qrels errors, its options, and `datagen eval retrieval` on a small real
SciFact slice (the real MiniLM: integration)."""
from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from prefect import flow

from schemas.store import TableStore
from schemas.tables import RETRIEVAL_QUERIES
from tasks.engines.base import EngineSpec
from tasks.generators.retrieval_queries import RetrievalQueries, RetrievalQueriesSettings
from tasks.generators.retrieval_queries import eval as ev
from tasks.generators.retrieval_queries import program as rq
from tasks.runtime.inputs import InputError
from tasks.runtime.pipeline import run_generator

REPO = Path(__file__).resolve().parents[4]
CORPUS = [
    {"_id": "aspirin", "text": "Aspirin lowered the risk of colorectal cancer in a large cohort."},
    {"_id": "tlr4", "text": "Mice lacking TLR4 resisted sepsis after infection."},
    {"_id": "vitd", "text": "Vitamin D levels were low in most elderly adults."},
]
OPTIONS = dict(samples=2, filter_retriever="bm25", negatives=1)


@pytest.fixture
def files(tmp_path) -> tuple[Path, Path]:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in CORPUS))
    examples = tmp_path / "examples.jsonl"
    examples.write_text(json.dumps({"query": "vitamin D", "doc_id": "vitd"}) + "\n")
    return corpus, examples


def _generator(corpus, examples=None, data_dir="unused", **options) -> RetrievalQueries:
    return RetrievalQueries(RetrievalQueriesSettings(
        corpus=str(corpus), examples=str(examples) if examples else None, data_dir=str(data_dir), **{**OPTIONS, **options}))


def _commit(store, generator, doc_id, outputs, run_id="r1", config_hash=None):
    doc = next(d for d in generator.inputs[0].rows if d["source_id"] == doc_id)
    samples = [{"sample": i, "raw_output": o, "finish_reason": "stop", "prompt_tokens": 10,
                "completion_tokens": 5, "mean_logprob": -1.0} for i, o in enumerate(outputs)]
    row = {**doc, "example_ids": [], "examples_dropped": 0, "doc_truncated": False,
           "samples": rq.apply_drop_rules(samples, doc["text"], generator.config)}
    lineage = {"run_id": run_id, "model": "m", "engine": "fake", "config_hash": config_hash or generator.config_hash(),
               "created_at": datetime.now(timezone.utc)}
    records = generator.to_records(row, lineage)
    store.commit(records, run_id)
    return records


def test_load_leaves_example_documents_out_and_plan_skips_committed(files, tmp_path):
    corpus, examples = files
    generator = _generator(corpus, examples)
    source = generator.load()
    assert [d["source_id"] for d in source.rows] == ["aspirin", "tlr4"]  # vitd is an example's document
    assert [d["source_id"] for d in source.context["corpus"]] == ["aspirin", "tlr4", "vitd"]  # the filter's index
    assert source.context["examples"] == [{"id": "vitd", "document": CORPUS[2]["text"], "query": "vitamin D"}]
    assert source.context["example_documents"] == 1 and source.rejects == []

    store = TableStore(tmp_path / "d", RETRIEVAL_QUERIES)
    _commit(store, generator, "aspirin", [" aspirin colorectal cancer", " x"])
    _commit(store, generator, "tlr4", [" sepsis mice"], config_hash="other")
    plan = generator.plan(source, store, "main")
    assert [d["source_id"] for d in plan.rows] == ["tlr4"] and plan.rows[0]["examples"] == source.context["examples"]
    assert plan.skipped == 1 and plan.counts == {"example_documents": 1}  # the example document is not "done"

    # --limit takes the first N documents of the corpus; an example among them is still not work.
    limited = _generator(corpus, examples, limit=1).load()
    assert [d["source_id"] for d in limited.rows] == ["aspirin"] and limited.context["example_documents"] == 0
    assert len(limited.context["corpus"]) == 3
    zero_shot = _generator(corpus).load()
    assert len(zero_shot.rows) == 3 and zero_shot.context["examples"] == [] and zero_shot.context["example_documents"] == 0


def test_generator_config_hash_is_the_one_existing_data_dirs_have(tmp_path):
    """Pinned to the code before the generator folder (tasks/retrieval_queries.py at b1f4d51): default
    options, the default model, examples d1 and d2 -> RetrievalQueriesConfig().config_hash(model_id, ["d1", "d2"])."""
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "text": f"Document number {i}."}) + "\n" for i in range(1, 4)))
    examples = tmp_path / "examples.jsonl"
    examples.write_text(json.dumps({"query": "one", "doc_id": "d1"}) + "\n" + json.dumps({"query": "two", "doc_id": "d2"}) + "\n")
    generator = RetrievalQueries(RetrievalQueriesSettings(corpus=str(corpus), examples=str(examples)))
    assert generator.config_hash() == "34a1a325f4d2d14c"
    assert RetrievalQueries(RetrievalQueriesSettings(corpus=str(corpus))).config_hash() == "8b0d870987059af3"


def test_counts_pending_queries_are_parsed_not_dropped(files):
    generator = _generator(*files)
    records = _commit(TableStore(files[0].parent / "d", RETRIEVAL_QUERIES), generator, "aspirin",
                      [" aspirin colorectal cancer", " aspirin colorectal cancer"])
    assert [r["drop_reason"] for r in records] == [rq.PENDING, "duplicate"]
    assert [generator.record_counts(r) for r in records] == [{"queries_parsed": 1}, {"dropped_duplicate": 1}]
    assert [generator.drop_reason(r) for r in records] == [None, "duplicate"]
    row = {"doc_truncated": True, "examples_dropped": 2}
    assert generator.row_counts(row, records) == {"documents": 1, "documents_truncated": 1, "examples_dropped": 2}
    assert generator.tokens(row, records) == 10


def test_finish_judges_pending_rows_in_place(files, tmp_path):
    generator = _generator(*files)
    source = generator.load()
    store = TableStore(tmp_path / "d", RETRIEVAL_QUERIES)
    _commit(store, generator, "aspirin", [" aspirin colorectal cancer risk", " vitamin D elderly adults"], run_id="r1")
    _commit(store, generator, "tlr4", [" TLR4 sepsis mice", ""], run_id="r2")
    before = store.read().to_pylist()
    assert sum(r["drop_reason"] == rq.PENDING for r in before) == 3

    counts = generator.finish(source, store)
    assert counts["filter_filtered"] == 3 and counts["queries_kept"] == 2 and counts["dropped_round_trip"] == 1
    assert counts["filter_files_rewritten"] == 2 and counts["filter_training_pairs"] == 0  # bm25 trains nothing
    assert counts["filter_index_built"] == 1 and len(list((tmp_path / "d" / "indexes" / "bm25").iterdir())) == 1
    rows = {(r["doc_id"], r["sample"]): r for r in store.read().to_pylist()}
    assert len(rows) == len(before) == 4
    assert sorted(f.rsplit("/", 2)[1] for f in store.files()) == ["run_id=r1", "run_id=r2"]
    kept = rows[("aspirin", 0)]
    assert kept["kept"] and kept["drop_reason"] is None and kept["filter_rank"] == 1 and kept["filter_retriever"] == "bm25"
    assert kept["negatives"] and "aspirin" not in kept["negatives"] and kept["filter_score"] > 0
    wrong = rows[("aspirin", 1)]  # a query about another document
    assert wrong["kept"] is False and wrong["drop_reason"] == "round_trip" and wrong["filter_rank"] > 1
    assert wrong["negatives"][0] == "vitd"
    assert rows[("tlr4", 1)]["drop_reason"] == "empty_output" and rows[("tlr4", 1)]["filter_rank"] is None

    # A later run: new pending rows are judged; earlier verdicts stay; nothing pending -> no work.
    _commit(store, generator, "vitd", [" vitamin D elderly"], run_id="r3")
    assert generator.finish(source, store)["filter_filtered"] == 1
    after = {(r["doc_id"], r["sample"]): r for r in store.read().to_pylist()}
    assert len(after) == 5 and after[("aspirin", 1)]["drop_reason"] == "round_trip"
    files_before = {f: store.dataset([f]).to_table().to_pylist() for f in store.files()}
    assert +generator.finish(source, store) == {}  # every count zero
    assert {f: store.dataset([f]).to_table().to_pylist() for f in store.files()} == files_before


class ScriptedSettings(RetrievalQueriesSettings):
    """The scripted engine instead of a model: each document's two samples are a query and nothing."""

    def engine_spec(self) -> EngineSpec:
        return EngineSpec(backend="fake", model="fake", fake_replies=(" colorectal cancer aspirin risk", ""))


class ScriptedQueries(RetrievalQueries):
    Settings = ScriptedSettings


@flow(name="retrieval-queries-scripted")
def scripted_flow(settings: dict) -> dict:
    return run_generator(ScriptedQueries, settings)


def test_a_run_counts_example_documents_apart_and_a_rerun_skips_all(ray_cluster, prefect_harness, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    docs = CORPUS + [{"_id": "bread", "text": "Warm kitchens make dough rise faster."},
                     {"_id": "chain", "text": "A worn bicycle chain stretches and skips."},
                     {"_id": "tides", "text": "Spring tides follow the new and full moon."}]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in docs))
    examples = tmp_path / "examples.jsonl"
    examples.write_text(json.dumps({"query": "vitamin D", "doc_id": "vitd"}) + "\n"
                        + json.dumps({"query": "why does dough rise", "doc_id": "bread"}) + "\n")
    settings = {"corpus": str(corpus), "examples": str(examples), "limit": 5, "data_dir": str(tmp_path / "d"),
                "batch_size": 2, **OPTIONS}

    first = scripted_flow(settings)
    # 5 target documents, 2 of them examples' documents: 3 source rows, none already done.
    assert (first["status"], first["rows_in"], first["rows_skipped"], first["rows_out"]) == ("completed", 3, 0, 6)
    counts, dropped = first["counts"], first["dropped_by_reason"]
    assert counts["example_documents"] == 2 and counts["documents"] == 3 and counts["queries_parsed"] == 3
    # BM25 over the corpus: the query is about aspirin, so only the aspirin document's pair survives.
    assert counts["filter_filtered"] == 3 and counts["queries_kept"] == 1
    assert dropped == {"empty_output": 3, "round_trip": 2}
    assert first["tokens_generated"] == 3 * 4  # "colorectal cancer aspirin risk": 4 words per document
    rows = TableStore(tmp_path / "d", RETRIEVAL_QUERIES).read().to_pylist()
    assert sorted({r["doc_id"] for r in rows}) == ["aspirin", "chain", "tlr4"]
    assert {r["doc_id"] for r in rows if r["kept"]} == {"aspirin"}
    assert all(r["drop_reason"] != rq.PENDING and r["kept"] == (r["drop_reason"] is None) for r in rows)
    assert {r["example_ids"] == ["vitd", "bread"] for r in rows} == {True}

    again = scripted_flow(settings)
    assert (again["rows_in"], again["rows_skipped"], again["rows_out"]) == (3, 3, 0)
    assert again["counts"]["example_documents"] == 2 and again["counts"]["filter_filtered"] == 0
    assert "documents" not in again["counts"] and again["dropped_by_reason"] == {}
    assert len(TableStore(tmp_path / "d", RETRIEVAL_QUERIES).read().to_pylist()) == 6


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


def test_eval_command_keeps_its_options():
    [command] = RetrievalQueries.evals
    assert (command.name, command.main) == ("retrieval", "tasks.generators.retrieval_queries.eval:main")
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["--qrels", "q.tsv", "--queries", "q.jsonl"])
    assert vars(args) == {"data_dir": "./datasets", "qrels": "q.tsv", "queries": "q.jsonl", "corpus": None, "run": None,
                          "epochs": 1, "batch_size": 32, "seed": 0}
    with pytest.raises(SystemExit):
        parser.parse_args(["--queries", "q.jsonl"])  # --qrels is required


@pytest.mark.integration  # the real MiniLM, pretrained and fine-tuned
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
    corpus = rq.load_corpus(corpus_path).rows
    config = rq.RetrievalQueriesConfig(**OPTIONS)
    data_dir = tmp_path / "datasets"
    rows = []
    for n, (qid, doc_id, _) in enumerate(train):
        doc = next(d for d in corpus if d["source_id"] == doc_id)
        row = {**doc, "source_file": str(corpus_path), "example_ids": [], "examples_dropped": 0, "doc_truncated": False,
               "samples": [{"sample": n, "raw_output": queries[qid], "query": queries[qid], "drop_reason": None,
                            "copied_span": 0, "finish_reason": "stop", "prompt_tokens": 1, "completion_tokens": 1,
                            "mean_logprob": -1.0}]}
        lineage = {"run_id": "r1", "model": "m", "engine": "fake", "config_hash": "h", "created_at": datetime.now(timezone.utc)}
        for r in rq.to_records(row, lineage, config):
            rows.append({**r, "kept": True, "drop_reason": None})
    TableStore(data_dir, RETRIEVAL_QUERIES).commit(rows, "r1")

    results = ev.run_eval(str(data_dir), str(qrels_path), str(sci / "queries.jsonl"), batch_size=8, max_seq_length=128)
    assert [r["retriever"] for r in results] == ["bm25", "minilm (pretrained)", "minilm fine-tuned on 40 kept pairs"]
    for r in results:
        assert 0.2 < r["ndcg@10"] <= 1 and 0.5 < r["recall@100"] <= 1 and r["queries"] >= 50
    assert "nDCG@10" in ev.format_table(results)
    # BM25's index and the pretrained vectors are stored for the next eval (and the filter) to reuse
    assert sorted(p.parent.parent.name for p in (data_dir / "indexes").glob("*/*/manifest.json")) == ["bm25", "dense"]

    # The CLI: no kept rows is a clear error (exit 2).
    env_cmd = [sys.executable, "-m", "flows.cli", "eval", "retrieval", "--qrels", str(qrels_path),
               "--queries", str(sci / "queries.jsonl")]
    done = subprocess.run(env_cmd + ["--data-dir", str(tmp_path / "empty")], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert done.returncode == 2 and "no kept retrieval queries" in done.stderr
