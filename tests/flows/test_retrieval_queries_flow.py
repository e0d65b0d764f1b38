"""Proves the retrieval-queries flow end to end with real components: the embedded SmolLM2 model (via
transformers) in a Ray actor writes queries for 10 real SciFact documents, the fine-tuned MiniLM
round-trip filter judges every parsed query over the whole (here 300-document) corpus, rows land in
Parquet and DuckDB, and the Prefect API gets the counts artifact. A rerun through the CLI adds no
rows, and `datagen sql` answers from the same table."""
from __future__ import annotations

import asyncio
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from flows.retrieval_queries import RetrievalQueriesSettings, retrieval_queries
from schemas.catalog import CATALOG_FILE

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def scifact_slice(tmp_path_factory, shared_data) -> tuple[Path, Path]:
    """A 300-document SciFact corpus and 2 few-shot examples (real train queries and their documents)."""
    sci = shared_data / "scifact"
    folder = tmp_path_factory.mktemp("scifact")
    lines = (sci / "corpus.jsonl").read_text().splitlines()
    by_id = {json.loads(line)["_id"]: line for line in lines}
    queries = {json.loads(line)["_id"]: json.loads(line)["text"] for line in (sci / "queries.jsonl").read_text().splitlines()}
    with open(sci / "qrels" / "train.tsv") as fh:
        qrels = [r for r in list(csv.reader(fh, delimiter="\t"))[1:] if r[1] in by_id][:2]
    corpus = folder / "corpus.jsonl"
    corpus.write_text("".join(line + "\n" for line in lines[:298]) + "".join(by_id[d] + "\n" for _, d, _ in qrels))
    examples = folder / "examples.jsonl"
    examples.write_text("".join(json.dumps({"query": queries[q], "doc_id": d}) + "\n" for q, d, _ in qrels))
    return corpus, examples


def _settings(corpus, examples, data_dir) -> RetrievalQueriesSettings:
    # Short prompts and outputs keep the CPU run to about a minute; the budget also exercises truncation.
    return RetrievalQueriesSettings(corpus=str(corpus), examples=str(examples), task="scifact", limit=10, samples=2,
                                    max_tokens=32, max_prompt_tokens=400, example_doc_tokens=48, finetune_batch_size=8,
                                    data_dir=str(data_dir), batch_size=5)


def _rows(data_dir) -> list[dict]:
    con = duckdb.connect(str(Path(data_dir) / CATALOG_FILE), read_only=True)
    try:
        rel = con.sql("SELECT * FROM retrieval_queries")
        return [dict(zip(rel.columns, row)) for row in rel.fetchall()]
    finally:
        con.close()


def test_flow_end_to_end_then_cli_rerun_adds_nothing(ray_cluster, prefect_harness, scifact_slice, tmp_path):
    corpus, examples = scifact_slice
    data_dir = tmp_path / "datasets"
    summary = retrieval_queries(_settings(corpus, examples, data_dir))
    rows = _rows(data_dir)
    assert summary["status"] == "completed" and summary["rows_in"] == 10 and summary["rows_skipped"] == 0
    assert summary["rows_out"] == len(rows) == 20 and summary["tokens_generated"] > 0
    assert len({r["record_id"] for r in rows}) == 20
    assert {(r["doc_id"], r["sample"]) for r in rows} == {(r["doc_id"], s) for r in rows for s in (0, 1)}
    for r in rows:
        assert r["drop_reason"] != "pending_filter" and r["kept"] is not None, r  # every row judged
        assert r["kept"] == (r["drop_reason"] is None)
        assert r["drop_reason"] in (None, "empty_output", "no_query", "too_long", "duplicate", "copied_span", "round_trip")
        assert len(r["example_ids"]) + r["examples_dropped"] == 2  # over budget, examples go first
        assert r["prefix_id"] == "scifact" and r["engine"] == "transformers"
        if r["query"] is not None and r["drop_reason"] not in ("duplicate", "copied_span", "too_long", "no_query"):
            assert r["filter_retriever"] == "finetuned" and r["filter_rank"] >= 1
            assert r["doc_id"] not in r["negatives"] and len(r["negatives"]) == 4
            assert (r["filter_rank"] <= 1) == r["kept"]
        if r["completion_tokens"]:
            assert r["mean_logprob"] < 0
    assert any(r["example_ids"] for r in rows) and any(r["examples_dropped"] or r["doc_truncated"] for r in rows)
    counts = summary["counts"]
    assert counts["documents"] == 10 and counts.get("filter_filtered", 0) == sum(r["filter_rank"] is not None for r in rows)
    assert counts["example_documents"] == 0  # the examples' documents are the corpus's last two, past --limit
    assert counts.get("queries_parsed", 0) == counts["filter_filtered"]  # every parsed query was judged in this run
    assert counts.get("queries_kept", 0) == sum(r["kept"] for r in rows)

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def _artifacts():
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["retrieval-queries-counts"])))

    assert any(summary["run_id"] in (a.description or "") for a in asyncio.run(_artifacts()))

    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_API_URL": prefect_harness}
    cmd = [sys.executable, "-m", "flows.cli", "run", "retrieval-queries", "--corpus", str(corpus), "--examples", str(examples),
           "--task", "scifact", "--limit", "10", "--samples", "2", "--max-tokens", "32", "--max-prompt-tokens", "400",
           "--example-doc-tokens", "48", "--finetune-batch-size", "8", "--batch-size", "5", "--data-dir", str(data_dir),
           "--ray-address", ray_cluster]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "10 source rows, 10 already done, 0 records written" in done.stdout
    assert sorted(r["record_id"] for r in _rows(data_dir)) == sorted(r["record_id"] for r in rows)

    out = subprocess.run([sys.executable, "-m", "flows.cli", "sql", "--data-dir", str(data_dir),
                          "SELECT count(*) FILTER (kept) AS kept_pairs, count(*) AS samples FROM retrieval_queries"],
                         capture_output=True, text=True, env=env, timeout=120, check=True).stdout
    assert "kept_pairs" in out and "20" in out
