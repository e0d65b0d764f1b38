"""retrieval-queries: Promptagator few-shot queries per document and the round-trip filter (Dai et al. 2022).

    prompts/      task_prefixes.json (document / query prefix per BEIR task), zero_shot.txt
    program.py    options, corpus and examples loading, the prompt, parser, drop rules, the engine step, records
    filter.py     the round-trip filter's retrievers (BM25, MiniLM, MiniLM fine-tuned) and verdicts
    eval.py       `datagen eval retrieval`: nDCG@10 / Recall@100 of a retriever trained on the kept pairs
    generator.py  the Generator the runtime runs (load, plan, the LLM stage, records, the filter as finish)
"""
from .generator import RetrievalQueries, RetrievalQueriesSettings

__all__ = ["RetrievalQueries", "RetrievalQueriesSettings"]
