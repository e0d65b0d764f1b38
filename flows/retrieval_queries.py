"""The retrieval-queries flow (Promptagator): few-shot queries for every document of a corpus, the
drop rules, then the round-trip consistency filter over the whole corpus. The generator is
tasks/generators/retrieval_queries/; the runtime (tasks/runtime/pipeline.py) runs it.

Run it:
    datagen run retrieval-queries --corpus samples/retrieval_corpus.jsonl \
        --examples samples/retrieval_examples.jsonl --task generic --filter bm25 --data-dir ./datasets
or from Python:
    from flows.retrieval_queries import retrieval_queries, RetrievalQueriesSettings
    retrieval_queries(RetrievalQueriesSettings(corpus="samples/retrieval_corpus.jsonl", task="generic"))
"""
from __future__ import annotations

from prefect import flow

from tasks.generators.retrieval_queries import RetrievalQueries, RetrievalQueriesSettings
from tasks.runtime.pipeline import run_generator


@flow(name="retrieval-queries", log_prints=True)
def retrieval_queries(settings: RetrievalQueriesSettings) -> dict:
    """Queries for the corpus's documents, judged by the round-trip filter; returns the `runs` row."""
    return run_generator(RetrievalQueries, settings)


__all__ = ["RetrievalQueriesSettings", "retrieval_queries"]
