"""The retrieval-queries generator (Promptagator): few-shot queries for the documents of a corpus, the
drop rules, then the round-trip consistency filter over the whole corpus. The runtime
(tasks/runtime/pipeline.py) runs it: load -> plan -> generate (one LLM stage) -> commit -> finish.

Two phases, both rerun-safe:
1. Generation (`stages`): each finished batch of documents is committed at once; parsed queries are
   stored with `kept = NULL, drop_reason = 'pending_filter'`. A document with records under the
   config hash is never generated again.
2. The filter (`finish`) needs the whole corpus index and (for the fine-tuned recipe) every synthetic
   pair, so it runs once per run in the driver after generation: it trains on all parsed pairs under
   the config hash (every run so far), judges the rows still pending (this run's, or those of a run
   killed between the phases) and rewrites the files holding them in place, atomically. Rows judged
   by an earlier run keep their verdict.

Counts: `documents`, `documents_truncated`, `examples_dropped` per generated document;
`example_documents` (target documents that are few-shot examples: no queries, not work, not skipped);
`queries_parsed` (waiting for the filter: not a drop); `dropped_<reason>` for each drop rule and for
`round_trip`; the filter's `filter_filtered`, `queries_kept`, `filter_training_pairs`,
`filter_files_rewritten`, `filter_seconds`, and `filter_index_built` (1: the corpus's BM25 index or
vectors were built this run; 0: reused from the data dir's `indexes/`) with `filter_index_seconds`.

Run: `datagen run retrieval-queries --corpus samples/retrieval_corpus.jsonl --examples
samples/retrieval_examples.jsonl --task generic --samples 4 --filter bm25 --data-dir ./datasets`
"""
from __future__ import annotations

import time
from collections import Counter
from functools import cached_property, partial

import pyarrow.compute as pc
from pydantic import Field

from schemas.index_cache import IndexCache
from schemas.store import TableStore
from schemas.tables import RETRIEVAL_QUERIES
from tasks.runtime.generator import Command, Generator, LLMStage, Plan, Source, plan_todo
from tasks.runtime.settings import RunSettings

from . import eval as retrieval_eval
from . import export as retrieval_export
from . import filter as rf
from . import program as rq
from .corpus_index import corpus_scorer


class RetrievalQueriesSettings(RunSettings, rq.RetrievalQueriesConfig):
    corpus: str = Field(description="BEIR JSONL (_id, title, text) or JSONL/Parquet with named columns")
    examples: str | None = Field(
        None, description="JSONL of <= 8 rows: query + doc_id (in the corpus) or document; none = zero-shot")
    id_column: str | None = Field(None, description="corpus id column (default: _id, id, doc_id or docid)")
    text_column: str | None = Field(None, description="corpus text column (default: text, document, passage, ...)")
    title_column: str | None = Field("title", description="corpus title column, prepended to the text when present")
    limit: int | None = Field(
        None, ge=1, description="write queries for the first N documents only (the filter still indexes all)")

    def config(self) -> rq.RetrievalQueriesConfig:
        """The options that shape the records, alone (what the engine step and the records need)."""
        return rq.RetrievalQueriesConfig(**self.model_dump(include=set(rq.RetrievalQueriesConfig.model_fields)))


class RetrievalQueries(Generator):
    name = "retrieval-queries"
    description = "Promptagator few-shot queries per document + round-trip filter"
    table = RETRIEVAL_QUERIES
    Settings = RetrievalQueriesSettings
    drop_reasons = rq.DROP_REASONS
    key_column = "doc_id"
    prompt_version = rq.PROMPT_VERSION
    card_columns = {  # charted on the data card
        "filter_rank": "rank of the source document for its query (1 = top)",
        "filter_score": "retriever score of the source document",
        "copied_span": "longest run of words copied from the document",
    }
    summary_sql = (
        "SELECT coalesce(drop_reason, 'kept') AS outcome, count(*) AS queries, count(DISTINCT doc_id) AS documents "
        "FROM retrieval_queries WHERE run_id = '{run_id}' GROUP BY ALL ORDER BY queries DESC"
    )
    evals = (
        Command("retrieval", "fine-tune MiniLM on kept queries; nDCG@10 / Recall@100 vs BM25 and MiniLM",
                retrieval_eval.add_arguments, "tasks.generators.retrieval_queries.eval:main"),
    )
    exports = (
        Command("retrieval-queries", "kept queries as sentence-transformers (anchor, positive, negative) "
                "triples, BM25 hard negatives", retrieval_export.add_arguments,
                "tasks.generators.retrieval_queries.export:main"),
    )

    def __init__(self, settings):
        super().__init__(settings)
        self.config = self.settings.config()

    @cached_property
    def inputs(self) -> tuple[Source, list[dict]]:
        """(the corpus, the few-shot examples), read once. The examples are part of the config hash, so
        whichever of load() and config_hash() comes first reads them. A document the corpus rejects
        (a repeat with --drop-duplicates, over --max-input-chars) is left out of everything: no
        queries, not in the filter's index, not an example."""
        s = self.settings
        corpus = rq.load_corpus(s.corpus, s.id_column, s.text_column, s.title_column, s.row_checks())
        examples = rq.load_examples(s.examples, corpus.rows) if s.examples else []  # none: the zero-shot prompt
        return corpus, examples

    def config_hash(self) -> str:
        """The hash the records have always had: model, prompt version, the examples' ids and the options."""
        _, examples = self.inputs
        return self.config.config_hash(self.engine_spec.model_id, [e["id"] for e in examples])

    def load(self) -> Source:
        """Rows: the first --limit documents, less the examples' own documents (their query is already
        real: they get none, and are counted as `example_documents`, neither work nor skipped).
        Context: the whole corpus (the filter indexes all of it) and the examples. Rejects: the corpus's
        (they count against the whole run, whatever --limit: no step uses them)."""
        corpus, examples = self.inputs
        targets = corpus.rows[: self.settings.limit] if self.settings.limit else corpus.rows
        example_ids = {e["id"] for e in examples}
        rows = [d for d in targets if d["source_id"] not in example_ids]
        return Source(rows, rejects=corpus.rejects, context={"corpus": corpus.rows, "examples": examples,
                                                             "example_documents": len(targets) - len(rows)})

    def plan(self, source: Source, store: TableStore, pass_name: str) -> Plan:
        """Documents with no committed records under the config hash, each carrying the examples."""
        return plan_todo(source, store, [{"config_hash": self.config_hash()}], key_column=self.key_column,
                         extra={"examples": source.context["examples"]},
                         counts={"example_documents": source.context["example_documents"]})

    def stages(self, pass_name: str) -> list[LLMStage]:
        return [LLMStage(partial(rq.write_queries, config=self.config))]

    def to_records(self, row: dict, lineage: dict) -> list[dict]:
        return rq.to_records(row, lineage, self.config)

    def drop_reason(self, record: dict) -> str | None:
        """A pending query is not dropped (the filter has yet to judge it)."""
        reason = record["drop_reason"]
        return None if reason == rq.PENDING else reason

    def record_counts(self, record: dict) -> Counter:
        if record["drop_reason"] == rq.PENDING:
            return Counter(queries_parsed=1)
        reason = self.drop_reason(record)
        return Counter({"queries_kept" if reason is None else f"dropped_{reason}": 1})

    def row_counts(self, row: dict, records: list[dict]) -> Counter:
        return Counter(documents=1, documents_truncated=int(row["doc_truncated"]),
                       examples_dropped=row["examples_dropped"])

    def finish(self, source: Source, store: TableStore) -> Counter:
        """The round-trip filter over the whole corpus for every row still pending under the config hash."""
        return filter_pending(source.context["corpus"], store, self.config, self.config_hash(),
                              cache=IndexCache.for_data_dir(store.data_dir),
                              ray_address=self.settings.ray_address)


def filter_pending(corpus: list[dict], store: TableStore, config: rq.RetrievalQueriesConfig,
                   config_hash: str, *, cache: IndexCache | None = None, ray_address: str | None = None) -> Counter:
    """Judge the pending rows under `config_hash` and write their verdicts into their files. With a
    `cache`, the corpus's index is built once and reused (corpus_index.py)."""
    counts = Counter(filter_filtered=0, queries_kept=0, dropped_round_trip=0, filter_training_pairs=0,
                     filter_files_rewritten=0, filter_seconds=0, filter_index_built=0, filter_index_seconds=0)
    rows = store.read(columns=["record_id", "doc_id", "query", "drop_reason"],
                      filter=pc.field("config_hash") == config_hash).to_pylist()
    index = {d["source_id"]: i for i, d in enumerate(corpus)}
    pending = [r for r in rows if r["drop_reason"] == rq.PENDING and r["doc_id"] in index]
    if not pending:
        return counts
    t0 = time.monotonic()
    texts, doc_ids = [d["text"] for d in corpus], [d["source_id"] for d in corpus]
    # Every parsed pair so far (kept, dropped by the filter, or pending) trains the fine-tuned recipe.
    pairs = [(r["query"], corpus[index[r["doc_id"]]]["text"]) for r in rows
             if r["drop_reason"] in (None, rq.PENDING, "round_trip") and r["doc_id"] in index]
    scorer, index_counts = corpus_scorer(config.filter_retriever, doc_ids, texts, pairs, cache=cache,
                                         ray_address=ray_address, **config.filter_options())
    counts.update(index_counts)
    verdicts = rf.judge_pairs(scorer, [r["query"] for r in pending], [index[r["doc_id"]] for r in pending],
                              doc_ids, k=config.filter_k, negatives=config.negatives)
    rewritten = rewrite_with_verdicts(store, {r["record_id"]: v for r, v in zip(pending, verdicts)}, config)
    kept = sum(v["kept"] for v in verdicts)
    counts.update(filter_filtered=len(verdicts), queries_kept=kept, dropped_round_trip=len(verdicts) - kept,
                  filter_training_pairs=len(pairs) if config.filter_retriever == "finetuned" else 0,
                  filter_files_rewritten=rewritten, filter_seconds=round(time.monotonic() - t0))
    return counts


def rewrite_with_verdicts(store: TableStore, verdicts: dict[str, dict], config: rq.RetrievalQueriesConfig) -> int:
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
