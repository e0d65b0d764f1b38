"""Lexical similarity search with BM25 (`bm25s`), used to pick dynamic few-shot exemplars.

Why BM25 and not the MiniLM embedder: word problems that share their situation words ("per hour",
"discount", "ages") tend to share their program shape; BM25 finds those in milliseconds in the
driver, with no second model to load next to the LLM. (A dense retriever can be swapped in behind
`top_k_similar` without touching the generators.)

Example: top_k_similar(["How fast is the train?"], ["A train goes 60 km/h", "Apples cost $2"], k=1) -> [[0]]
"""
from __future__ import annotations

from typing import Sequence


def top_k_similar(queries: Sequence[str], corpus: Sequence[str], k: int) -> list[list[int]]:
    """Indices into `corpus` of the k best BM25 matches per query, best first (k capped at len(corpus))."""
    if not queries:
        return []
    k = min(k, len(corpus))
    if k == 0:
        return [[] for _ in queries]
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(list(corpus), stopwords="en", show_progress=False), show_progress=False)
    indices, _scores = retriever.retrieve(
        bm25s.tokenize(list(queries), stopwords="en", show_progress=False), k=k, show_progress=False,
        # numpy, not the numba backend "auto" picks: numba's llvmlite, once imported, breaks a vLLM
        # engine started later in the same process (vLLM's kernel-override scan of sys.modules).
        backend_selection="numpy",
    )
    return [[int(i) for i in row] for row in indices]
