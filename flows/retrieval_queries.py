"""The retrieval-queries flow (Promptagator): few-shot queries for every document of a corpus, the
drop rules, then the round-trip consistency filter over the whole corpus. Thin: it only wires tasks.

Run it:
    datagen run retrieval-queries --corpus ../shared/data/scifact/corpus.jsonl --examples FILE \
        --task scifact --limit 200 --data-dir ./datasets
or from Python:
    from flows.retrieval_queries import retrieval_queries, RetrievalQueriesSettings
    retrieval_queries(RetrievalQueriesSettings(corpus="samples/retrieval_corpus.jsonl", task="generic"))
"""
from __future__ import annotations

from typing import Literal

from prefect import flow
from pydantic import Field

from flows.common import EngineSettings
from schemas.catalog import refresh_catalog
from tasks.ray_stage import ray_session
from tasks.retrieval_queries import RetrievalQueriesConfig
from tasks.retrieval_queries_tasks import (
    filter_pending, generate_queries, load_corpus, load_examples, plan_documents, summarize, write_candidates,
)
from tasks.runs import recorded_run


class RetrievalQueriesSettings(EngineSettings):
    corpus: str = Field(description="BEIR JSONL (_id, title, text) or JSONL/Parquet with named columns")
    examples: str | None = Field(None, description="JSONL of <= 8 rows: query + doc_id (in the corpus) or document; none = zero-shot")
    task: str = Field("scifact", description="BEIR task whose prefixes to use (tasks/retrieval_queries.TASK_PREFIXES)")
    doc_prefix: str | None = Field(None, description="custom document prefix (overrides the task's)")
    query_prefix: str | None = Field(None, description="custom query prefix (overrides the task's)")
    id_column: str | None = Field(None, description="corpus id column (default: _id, id, doc_id or docid)")
    text_column: str | None = Field(None, description="corpus text column (default: text, document, passage, ...)")
    title_column: str | None = Field("title", description="corpus title column, prepended to the text when present")
    data_dir: str = "./datasets"
    limit: int | None = Field(None, ge=1, description="write queries for the first N documents only (the filter still indexes all)")
    samples: int = Field(8, ge=1, le=64, description="queries sampled per document")
    temperature: float = Field(0.7, ge=0)
    max_tokens: int = Field(64, ge=8)
    max_prompt_tokens: int = Field(1536, ge=64, description="prompt budget: examples are dropped first, then the document is cut")
    example_doc_tokens: int = Field(128, ge=8, description="each example document is cut to this many tokens")
    copy_span_words: int = Field(10, ge=3, description="drop a query that copies this many consecutive document words")
    filter_retriever: Literal["finetuned", "dense", "bm25"] = Field("finetuned", description="round-trip retriever")
    filter_k: int = Field(1, ge=1, description="keep a pair when its document ranks in the top K")
    negatives: int = Field(4, ge=0, description="hard negatives stored per filtered query")
    finetune_epochs: int = Field(1, ge=1)
    finetune_batch_size: int = Field(32, ge=2)
    seed: int = 0

    def generator_config(self) -> RetrievalQueriesConfig:
        return RetrievalQueriesConfig(
            task=self.task, doc_prefix=self.doc_prefix, query_prefix=self.query_prefix, samples=self.samples,
            temperature=self.temperature, max_tokens=self.max_tokens, seed=self.seed,
            max_prompt_tokens=self.max_prompt_tokens, example_doc_tokens=self.example_doc_tokens,
            copy_span_words=self.copy_span_words, filter_retriever=self.filter_retriever, filter_k=self.filter_k,
            negatives=self.negatives, finetune_epochs=self.finetune_epochs,
            finetune_batch_size=self.finetune_batch_size,
        )


@flow(name="retrieval-queries", log_prints=True)
def retrieval_queries(settings: RetrievalQueriesSettings) -> dict:
    spec, config = settings.engine_spec(), settings.generator_config()
    with recorded_run("retrieval-queries", settings, spec) as run:  # failures are recorded, then re-raised
        corpus = load_corpus(settings.corpus, settings.id_column, settings.text_column, settings.title_column)
        examples = load_examples(settings.examples, corpus)
        config_hash = config.config_hash(spec.model_id, [e["id"] for e in examples])
        targets = corpus[: settings.limit] if settings.limit else corpus
        run.rows_in = len(targets)
        generation = {}
        with ray_session(settings.ray_address):
            todo = plan_documents(targets, examples, settings.data_dir, config_hash)
            run.rows_skipped = len(targets) - len(todo)
            if todo:
                ds = generate_queries(todo, spec, config, settings.batch_size, settings.pool_size)
                generation = write_candidates(ds, settings.data_dir, run, config, config_hash)
        filtering = filter_pending(corpus, settings.data_dir, config, config_hash)
        summary = summarize(run, settings.data_dir, generation, filtering)
    refresh_catalog(settings.data_dir)
    return summary


__all__ = ["RetrievalQueriesConfig", "RetrievalQueriesSettings", "retrieval_queries"]
