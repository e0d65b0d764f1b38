"""Prefect tasks of the retrieval-queries flow: load corpus and examples -> plan -> generate (Ray LLM
stage) -> write candidates -> round-trip filter (driver) -> summarize. Each task is small and wires
the pure logic of tasks/retrieval_queries.py and tasks/retrieval_filter.py to Ray and the table store;
the flow (flows/retrieval_queries.py) only calls them in order.

Two phases, both rerun-safe:
1. Generation commits every finished batch of documents at once; parsed queries are stored with
   `kept = NULL, drop_reason = 'pending_filter'`. A document with records under the config hash is
   never generated again.
2. The filter needs the whole corpus index and (for the fine-tuned recipe) every synthetic pair, so
   it runs once per run in the driver after generation: it trains on all parsed pairs under the
   config hash (every run so far), judges the rows still pending (this run's, or those of a run
   killed between the phases) and rewrites the files holding them in place, atomically. Rows judged
   by an earlier run keep their verdict.
"""
from __future__ import annotations

import time
from collections import Counter
from datetime import datetime, timezone
from functools import partial

import pyarrow.compute as pc
from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from schemas.tables import RETRIEVAL_QUERIES

from . import retrieval_filter as rf
from . import retrieval_queries as rq
from .datadir import DataDir
from .engines.base import EngineSpec
from .math_programs_tasks import _transient_io_error
from .ray_stage import iter_row_batches, llm_stage, rows_dataset
from .runs import RunState, write_run
from .store import TableStore


@task(retries=2, retry_delay_seconds=2, retry_condition_fn=_transient_io_error, cache_policy=NO_CACHE)
def load_corpus(path: str, id_column: str | None, text_column: str | None, title_column: str | None) -> list[dict]:
    return rq.load_corpus(path, id_column, text_column, title_column)


@task(retries=2, retry_delay_seconds=2, retry_condition_fn=_transient_io_error, cache_policy=NO_CACHE)
def load_examples(path: str | None, corpus: list[dict]) -> list[dict]:
    """The few-shot examples, or [] for the paper's zero-shot prompt."""
    return rq.load_examples(path, corpus) if path else []


@task(cache_policy=NO_CACHE)
def plan_documents(docs: list[dict], examples: list[dict], data_dir: str, config_hash: str) -> list[dict]:
    """Documents with no committed records under the config hash, each carrying the examples.
    An example's own document gets no queries: its query is already real."""
    done = TableStore(data_dir, RETRIEVAL_QUERIES).committed_keys(["doc_id"], config_hash=config_hash)
    example_ids = {e["id"] for e in examples}
    return [{**d, "examples": examples} for d in docs
            if (d["source_id"],) not in done and d["source_id"] not in example_ids]


@task(cache_policy=NO_CACHE)
def generate_queries(docs: list[dict], engine_spec: EngineSpec, config: rq.RetrievalQueriesConfig,
                     batch_size: int, pool_size: int):
    """Lazy LLM stage: a pool of engine actors writes n queries per document."""
    ds = rows_dataset(docs, rows_per_block=batch_size)
    return llm_stage(ds, engine_spec, partial(rq.generate_queries, config=config),
                     batch_size=batch_size, pool_size=pool_size)


@task(cache_policy=NO_CACHE)
def write_candidates(ds, data_dir: str, run: RunState, config: rq.RetrievalQueriesConfig, config_hash: str) -> dict:
    """Run the stream; commit each finished batch of documents as one Parquet file."""
    store = TableStore(data_dir, RETRIEVAL_QUERIES)
    stats = Counter()
    lineage = {"run_id": run.run_id, "model": run.model, "engine": run.engine, "config_hash": config_hash}
    for docs in iter_row_batches(ds):
        created_at = datetime.now(timezone.utc)
        records = [r for d in docs for r in rq.to_records(d, {**lineage, "created_at": created_at}, config)]
        store.commit(records, run.run_id)
        stats["documents"] += len(docs)
        stats["documents_truncated"] += sum(d["doc_truncated"] for d in docs)
        stats["examples_dropped"] += sum(d["examples_dropped"] for d in docs)
        stats["records"] += len(records)
        stats["tokens"] += sum(r["completion_tokens"] or 0 for r in records)
        for r in records:
            stats[f"reason_{r['drop_reason']}"] += 1
    return dict(stats)


@task(cache_policy=NO_CACHE)
def filter_pending(corpus: list[dict], data_dir: str, config: rq.RetrievalQueriesConfig, config_hash: str) -> dict:
    """The round-trip filter over the whole corpus for every row still pending under the config hash."""
    store = TableStore(data_dir, RETRIEVAL_QUERIES)
    rows = store.read(columns=["record_id", "doc_id", "query", "drop_reason"],
                      filter=pc.field("config_hash") == config_hash).to_pylist()
    index = {d["source_id"]: i for i, d in enumerate(corpus)}
    pending = [r for r in rows if r["drop_reason"] == rq.PENDING and r["doc_id"] in index]
    if not pending:
        return {}
    t0 = time.monotonic()
    texts, doc_ids = [d["text"] for d in corpus], [d["source_id"] for d in corpus]
    # Every parsed pair so far (kept, dropped by the filter, or pending) trains the fine-tuned recipe.
    pairs = [(r["query"], corpus[index[r["doc_id"]]]["text"]) for r in rows
             if r["drop_reason"] in (None, rq.PENDING, "round_trip") and r["doc_id"] in index]
    finetune = dict(epochs=config.finetune_epochs, batch_size=config.finetune_batch_size, lr=config.finetune_lr,
                    max_seq_length=config.finetune_max_seq_length, seed=config.seed)
    scorer = rf.make_scorer(config.filter_retriever, texts, pairs, **finetune)
    verdicts = rf.judge_pairs(scorer, [r["query"] for r in pending], [index[r["doc_id"]] for r in pending],
                              doc_ids, k=config.filter_k, negatives=config.negatives)
    by_record = {r["record_id"]: v for r, v in zip(pending, verdicts)}
    rewritten = _rewrite_with_verdicts(store, by_record, config)
    kept = sum(v["kept"] for v in verdicts)
    return {"filtered": len(verdicts), "kept": kept, "dropped_round_trip": len(verdicts) - kept,
            "training_pairs": len(pairs) if config.filter_retriever == "finetuned" else 0,
            "files_rewritten": rewritten, "filter_seconds": round(time.monotonic() - t0)}


def _rewrite_with_verdicts(store: TableStore, verdicts: dict[str, dict], config: rq.RetrievalQueriesConfig) -> int:
    """Replace each file holding judged rows by a copy with the verdicts (same name: atomic rename)."""
    rewritten = 0
    for path in store.files():
        ids = store.dataset([path]).to_table(columns=["record_id"]).column("record_id").to_pylist()
        if not verdicts.keys() & set(ids):
            continue
        rows = store.dataset([path]).to_table().to_pylist()
        for row in rows:
            v = verdicts.get(row["record_id"])
            if v is None:
                continue
            row.update(filter_retriever=config.filter_retriever, filter_k=config.filter_k, filter_rank=v["rank"],
                       filter_score=v["score"], kept=v["kept"], drop_reason=None if v["kept"] else "round_trip",
                       negatives=v["negatives"])
        run_dir, name = path.rsplit("/", 1)
        store.commit(rows, run_dir.rsplit("/run_id=", 1)[1], name=name)
        rewritten += 1
    return rewritten


@task(cache_policy=NO_CACHE)
def summarize(run: RunState, data_dir: str, generation: dict, filtering: dict) -> dict:
    """Fold the counts into the run row, write it, publish a Prefect table artifact."""
    run.rows_out += generation.get("records", 0)
    run.tokens_generated += generation.get("tokens", 0)
    for key in ("documents", "documents_truncated", "examples_dropped"):
        run.counts[key] += generation.get(key, 0)
    for key, value in generation.items():
        if key.startswith("reason_"):
            reason = key.removeprefix("reason_")
            if reason == rq.PENDING:
                run.counts["queries_parsed"] += value
            else:
                run.dropped[reason] += value
    for key in ("filtered", "kept", "training_pairs", "files_rewritten", "filter_seconds"):
        run.counts[f"filter_{key}" if key != "kept" else "queries_kept"] += filtering.get(key, 0)
    run.dropped["round_trip"] += filtering.get("dropped_round_trip", 0)
    run.dropped = +run.dropped  # no zero entries
    write_run(data_dir, run.finish("completed"))
    rows = [{"metric": k, "value": v} for k, v in
            [("run_id", run.run_id), ("rows_in", run.rows_in), ("rows_skipped", run.rows_skipped),
             ("rows_out", run.rows_out), ("tokens_generated", run.tokens_generated),
             *sorted(run.counts.items()), *[(f"dropped_{k}", v) for k, v in sorted(run.dropped.items())]]]
    create_table_artifact(key="retrieval-queries-counts", table=rows,
                          description=f"retrieval-queries run {run.run_id} ({DataDir(data_dir)})")
    return run.to_row()
