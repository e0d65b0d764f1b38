"""`datagen export retrieval-queries`: from a real retrieval_queries table (rows committed through
TableStore with the table's schema) and a BEIR corpus file, only kept queries become
(anchor, positive, negative) triples: the positive is the query's own document, the negatives the
top BM25 documents that are not it (or the filter's stored ones); queries whose document is not in
the corpus are counted and left out. `datasets` reads the file back, and sentence-transformers' own
data collator (the one SentenceTransformerTrainer uses, with a stand-in tokenizer: no model is
loaded) takes exactly the anchor / positive / negative columns as its texts; an empty selection is one
line and exit code 2."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import datasets
import pytest

from flows.cli import main as cli_main
from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator

from schemas.store import TableStore
from schemas.tables import RETRIEVAL_QUERIES

T0 = datetime(2026, 12, 1, tzinfo=timezone.utc)
CORPUS = [
    {"_id": "mice", "title": "Mouse diet", "text": "Mice eat seeds, grain and fruit."},
    {"_id": "rats", "title": "Rat diet", "text": "Rats eat seeds, meat and almost anything."},
    {"_id": "owls", "title": "Owls", "text": "Owls hunt mice and rats at night."},
    {"_id": "tides", "title": "Tides", "text": "The moon pulls the oceans into tides."},
]


def _row(doc_id, query, kept, sample=0, negatives=None, source_file=None):
    return {"record_id": f"{doc_id}-{sample}", "source_id": doc_id, "source_file": source_file, "run_id": "r1",
            "generator": "retrieval_queries", "model": "m", "engine": "fake", "prompt_version": "retrieval-queries/v1",
            "config_hash": "h1", "created_at": T0, "doc_id": doc_id, "task": "generic", "prefix_id": "generic",
            "sample": sample, "query": query, "kept": kept, "drop_reason": None if kept else "not_retrieved",
            "negatives": negatives}


@pytest.fixture
def data_dir(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in CORPUS))
    TableStore(tmp_path / "data", RETRIEVAL_QUERIES).commit([
        _row("mice", "what do mice eat seeds grain", True, negatives=["tides", "owls"], source_file=str(corpus)),
        _row("mice", "what do mice eat seeds grain", True, sample=1, source_file=str(corpus)),  # a repeat
        _row("tides", "why does the ocean have tides", True, negatives=["mice"], source_file=str(corpus)),
        _row("owls", "night birds", False, source_file=str(corpus)),
        _row("gone", "a document not in the corpus", True, source_file=str(corpus)),
    ], run_id="r1")
    return str(tmp_path / "data")


def _main(*argv) -> int:
    return cli_main(["export", "retrieval-queries", *argv])  # the real CLI parser


def _collate_columns(ds) -> list[str]:
    """The columns sentence-transformers' training collator tokenizes as texts, in order."""
    seen = []

    def tokenize(texts, prompt=None, task=None):
        seen.append(list(texts))
        return {"input_ids": [[len(t)] for t in texts]}

    batch = SentenceTransformerDataCollator(preprocess_fn=tokenize)(list(ds))
    assert seen == [[r[c] for r in ds] for c in ds.column_names]
    return [k.removesuffix("_input_ids") for k in batch if k.endswith("_input_ids")]


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_kept_queries_become_bm25_triples_sentence_transformers_reads(data_dir, tmp_path, capsys, suffix):
    out = tmp_path / f"triples.{suffix}"
    assert _main("--data-dir", data_dir, "--out", str(out)) == 0
    assert capsys.readouterr().out.strip() == (
        f"2 training triples (1 bm25 negative(s) each; left out: 1 no_document) -> {out}")
    ds = datasets.load_dataset("json" if suffix == "jsonl" else "parquet", data_files=str(out), split="train",
                               cache_dir=str(tmp_path / "hf"))
    assert ds.column_names == ["anchor", "positive", "negative"]
    assert _collate_columns(ds) == ["anchor", "positive", "negative"]
    got = {r["anchor"]: (r["positive"], r["negative"]) for r in ds}
    assert got["what do mice eat seeds grain"] == ("Mouse diet. Mice eat seeds, grain and fruit.",
                                                   "Rat diet. Rats eat seeds, meat and almost anything.")  # BM25's next best
    assert got["why does the ocean have tides"][0] == "Tides. The moon pulls the oceans into tides."
    assert "Tides" not in got["why does the ocean have tides"][1]


def test_stored_negatives_several_per_query_and_lineage(data_dir, tmp_path, capsys):
    out = tmp_path / "triples.jsonl"
    assert _main("--data-dir", data_dir, "--out", str(out), "--negatives-from", "filter", "--negatives", "2") == 0
    assert "1 training triples" in capsys.readouterr().out  # tides has one stored negative: too few
    ds = datasets.Dataset.from_json(str(out), cache_dir=str(tmp_path / "hf"))
    assert ds.column_names == ["anchor", "positive", "negative_1", "negative_2"]
    assert (ds[0]["negative_1"], ds[0]["negative_2"]) == ("Tides. The moon pulls the oceans into tides.",
                                                          "Owls. Owls hunt mice and rats at night.")
    assert _main("--data-dir", data_dir, "--out", str(out), "--lineage") == 0
    row = json.loads(out.read_text().splitlines()[0])
    assert {"record_id", "doc_id", "run_id", "config_hash", "negative_ids"} <= set(row)


def test_nothing_to_export_is_one_line_and_exit_2(data_dir, tmp_path, capsys):
    out = tmp_path / "none.jsonl"
    assert _main("--data-dir", data_dir, "--out", str(out), "--run", "nope") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no kept queries" in err
    assert not out.exists()
