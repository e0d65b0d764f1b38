"""`datagen eval retrieval`: does the kept synthetic data train a better retriever?

Fine-tunes MiniLM (the paper's recipe, filter.fine_tune) on the kept
(query, document) pairs of a retrieval_queries run and reports nDCG@10 and Recall@100 on real
queries and relevance judgments, next to BM25 and the pretrained MiniLM, over the whole corpus.

    datagen eval retrieval --data-dir ./datasets --qrels data/scifact/qrels/train.tsv \
        --queries data/scifact/queries.jsonl [--corpus FILE] [--run RUN_ID]

Metrics (computed here, as trec_eval / BEIR do): nDCG@10 with linear gains (the qrels grade) and
log2 discounts, ideal ranking from the judged documents; Recall@100 = judged relevant documents in
the top 100 / all judged relevant documents. Averaged over the queries that have judgments.
Example output (SciFact train judgments, after a 200-document SmolLM2 run):
    retriever                              nDCG@10  Recall@100  queries  seconds
    bm25                                    0.6668      0.9062      809      1.5
    minilm (pretrained)                     0.6593      0.9324      809    254.5
    minilm fine-tuned on 185 kept pairs     0.6543      0.9182      809    181.2
"""
from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Sequence

import pyarrow.compute as pc

from schemas.datadir import DataDir
from schemas.index_cache import IndexCache
from schemas.store import TableStore
from schemas.tables import RETRIEVAL_QUERIES
from tasks.runtime.inputs import InputError, read_rows

from . import filter as rf
from .corpus_index import corpus_scorer
from .program import load_corpus


def ndcg_at_k(ranked: Sequence[str], relevant: dict[str, int], k: int = 10) -> float:
    gains = [relevant.get(d, 0) for d in ranked[:k]]
    dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains) if g > 0)
    ideal = sorted((g for g in relevant.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def recall_at_k(ranked: Sequence[str], relevant: dict[str, int], k: int = 100) -> float:
    wanted = {d for d, g in relevant.items() if g > 0}
    return len(wanted & set(ranked[:k])) / len(wanted) if wanted else 0.0


def load_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """BEIR qrels TSV (`query-id corpus-id score`, header optional) -> {query id: {doc id: grade}}."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, None, "file not found")
    qrels: dict[str, dict[str, int]] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for line_number, fields in enumerate(csv.reader(fh, delimiter="\t"), start=1):
            if not fields or (line_number == 1 and fields[0] == "query-id"):
                continue
            if len(fields) < 3:
                raise InputError(path, line_number, f"expected 'query-id corpus-id score', got {fields}")
            try:
                grade = int(float(fields[2]))
            except ValueError:
                raise InputError(path, line_number, f"score {fields[2]!r} is not a number") from None
            if grade > 0:
                qrels.setdefault(fields[0], {})[fields[1]] = grade
    if not qrels:
        raise InputError(path, None, "no relevance judgments with score > 0")
    return qrels


def load_queries(path: str | Path) -> dict[str, str]:
    """BEIR queries JSONL (`_id`, `text`; also `id` / `query`)."""
    queries = {}
    for row_number, row in read_rows(path):
        qid, text = row.get("_id", row.get("id")), row.get("text", row.get("query"))
        if qid is None or not isinstance(text, str) or not text.strip():
            raise InputError(path, row_number, "each query needs '_id' and 'text'")
        queries[str(qid)] = text.strip()
    return queries


def evaluate(scorer: rf.Scorer, queries: dict[str, str], qrels: dict[str, dict[str, int]],
             doc_ids: Sequence[str], chunk: int = 256) -> dict:
    """Mean nDCG@10 and Recall@100 of `scorer` over the judged queries."""
    qids = [q for q in qrels if q in queries]
    ndcg, recall = [], []
    for start in range(0, len(qids), chunk):
        block = qids[start:start + chunk]
        top = rf.top_k(scorer.scores([queries[q] for q in block]), 100)
        for qid, row in zip(block, top):
            ranked = [doc_ids[int(i)] for i in row]
            ndcg.append(ndcg_at_k(ranked, qrels[qid], 10))
            recall.append(recall_at_k(ranked, qrels[qid], 100))
    n = len(qids)
    return {"ndcg@10": sum(ndcg) / n if n else 0.0, "recall@100": sum(recall) / n if n else 0.0, "queries": n}


def kept_pairs(data_dir: str | Path, run_id: str | None = None) -> tuple[list[tuple[str, str]], set[str], str]:
    """(query, doc id) pairs kept by the filter: those of `run_id`, or by default every kept pair
    under the config hash of the latest run that kept any. Also the source files and the hash."""
    store = TableStore(data_dir, RETRIEVAL_QUERIES)
    condition = pc.field("kept") == True  # noqa: E712 - an Arrow expression, not a Python comparison
    if run_id:
        condition = condition & (pc.field("run_id") == run_id)
    rows = store.read(columns=["query", "doc_id", "source_file", "config_hash", "created_at"], filter=condition).to_pylist()
    if not rows:
        where = f"run {run_id}" if run_id else store.data_dir.url(store.root)
        raise InputError(where, None, "no kept retrieval queries to train on")
    config_hash = max(rows, key=lambda r: r["created_at"])["config_hash"]
    rows = [r for r in rows if r["config_hash"] == config_hash]
    return [(r["query"], r["doc_id"]) for r in rows], {r["source_file"] for r in rows}, config_hash


def corpus_of(data_dir: str | Path, sources: set[str], corpus_path: str | None = None) -> tuple[list[dict], str]:
    """The documents (load_corpus rows) of `corpus_path`, or by default of the one corpus the rows
    named in `sources` (their source_file) were generated from; and the path read."""
    if corpus_path is None:
        if len(sources) != 1:
            raise InputError(data_dir, None, f"kept rows come from several corpora {sorted(sources)}: pass --corpus")
        corpus_path = next(iter(sources))
    return load_corpus(corpus_path).rows, corpus_path


def run_eval(data_dir: str, qrels_path: str, queries_path: str, corpus_path: str | None = None,
             run_id: str | None = None, epochs: int = 1, batch_size: int = 32, seed: int = 0,
             max_seq_length: int = 256) -> list[dict]:
    """The three rows of the report table."""
    pairs, sources, config_hash = kept_pairs(data_dir, run_id)
    corpus, corpus_path = corpus_of(data_dir, sources, corpus_path)
    texts, doc_ids = [d["text"] for d in corpus], [d["source_id"] for d in corpus]
    by_id = dict(zip(doc_ids, texts))
    train = [(q, by_id[d]) for q, d in pairs if d in by_id]
    if not train:
        raise InputError(corpus_path, None, "none of the kept pairs' documents is in this corpus")
    queries, qrels = load_queries(queries_path), load_qrels(qrels_path)
    results = []
    cache = IndexCache.for_data_dir(data_dir)  # the filter's stored BM25 index and vectors, when it made them
    for label, build in (
        ("bm25", lambda: corpus_scorer("bm25", doc_ids, texts, cache=cache)[0]),
        ("minilm (pretrained)", lambda: corpus_scorer("dense", doc_ids, texts, cache=cache)[0]),
        (f"minilm fine-tuned on {len(train)} kept pairs", lambda: rf.DenseScorer(
            rf.fine_tune(train, epochs=epochs, batch_size=batch_size, seed=seed, max_seq_length=max_seq_length),
            texts, name="finetuned")),
    ):
        t0 = time.monotonic()
        metrics = evaluate(build(), queries, qrels, doc_ids)
        results.append({"retriever": label, **{k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()},
                        "seconds": round(time.monotonic() - t0, 1), "config_hash": config_hash})
    return results


def format_table(rows: list[dict]) -> str:
    width = max(len(r["retriever"]) for r in rows) + 2
    lines = [f"{'retriever':<{width}}{'nDCG@10':>9}{'Recall@100':>12}{'queries':>9}{'seconds':>9}"]
    for r in rows:
        lines.append(f"{r['retriever']:<{width}}{r['ndcg@10']:>9.4f}{r['recall@100']:>12.4f}{r['queries']:>9}{r['seconds']:>9.1f}")
    return "\n".join(lines)


def add_arguments(p) -> None:
    """The options of `datagen eval retrieval` (the CLI calls this with the command's parser)."""
    p.add_argument("--data-dir", default="./datasets")
    p.add_argument("--qrels", required=True, help="BEIR qrels TSV (query-id, corpus-id, score)")
    p.add_argument("--queries", required=True, help="BEIR queries JSONL (_id, text)")
    p.add_argument("--corpus", help="the corpus (default: the one the kept rows were generated from)")
    p.add_argument("--run", help="train on this run's kept rows (default: the latest config's kept rows)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)


def main(args) -> int:
    """`datagen eval retrieval`: print the table; inside a Prefect flow run, also publish it as an artifact."""
    rows = run_eval(args.data_dir, args.qrels, args.queries, args.corpus, args.run, epochs=args.epochs,
                    batch_size=args.batch_size, seed=args.seed)
    print(format_table(rows))
    publish_artifact(rows, args.data_dir)
    return 0


def publish_artifact(rows: list[dict], data_dir: str) -> bool:
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is None:
        return False
    from prefect.artifacts import create_table_artifact

    create_table_artifact(key="retrieval-eval", table=rows,
                          description=f"datagen eval retrieval ({DataDir(data_dir)})")
    return True
