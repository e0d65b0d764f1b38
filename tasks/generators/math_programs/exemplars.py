"""Dynamic few-shot exemplars: for each unsolved problem, the verified programs of the most similar
already-solved problems, found with BM25 (`bm25s`) over the question text.

Why BM25 and not the MiniLM embedder: word problems that share their situation words ("per hour",
"discount", "ages") tend to share their program shape; BM25 finds those in milliseconds in the
driver, with no second model to load next to the LLM. (A dense retriever can be swapped in behind
`top_k_similar` without touching the generator.)

Example:
    top_k_similar(["How fast is the train?"], ["A train goes 60 km/h", "Apples cost $2"], k=1)  # [[0]]
    pool = verified_pool(rows)            # one {"id", "question", "program"} per verified problem
    pick_exemplars(["How far does a train go?"], pool, k=2)   # [[<2nd best>, <best>]]: best last
"""
from __future__ import annotations

from typing import Iterable, Sequence


def verified_pool(rows: Iterable[dict]) -> list[dict]:
    """One exemplar per verified problem, from committed correct rows (source_id, question, program,
    pass, attempt): its fixed-pass program before a dynamic one, the lowest attempt (greedy) first."""
    pool: dict[str, dict] = {}
    for row in sorted(rows, key=lambda r: (r["pass"] != "fixed", r["attempt"])):
        pool.setdefault(row["source_id"],
                        {"id": row["source_id"], "question": row["question"], "program": row["program"]})
    return list(pool.values())


def pick_exemplars(questions: Sequence[str], pool: Sequence[dict], k: int) -> list[list[dict]]:
    """The k exemplars of `pool` most similar to each question, the most similar LAST (right before
    the question in the prompt)."""
    ranked = top_k_similar(questions, [e["question"] for e in pool], k)
    return [[pool[i] for i in reversed(idx)] for idx in ranked]


def top_k_similar(queries: Sequence[str], corpus: Sequence[str], k: int) -> list[list[int]]:
    """Indices into `corpus` of the k best BM25 matches per query, best first (k capped at len(corpus))."""
    if not queries:
        return []
    k = min(k, len(corpus))
    if k == 0:
        return [[] for _ in queries]
    import logging

    import bm25s

    logging.getLogger("bm25s").setLevel(logging.WARNING)  # it sets itself to DEBUG on import

    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(list(corpus), stopwords="en", show_progress=False), show_progress=False)
    indices, _scores = retriever.retrieve(
        bm25s.tokenize(list(queries), stopwords="en", show_progress=False), k=k, show_progress=False,
        # numpy, not the numba backend "auto" picks: numba's llvmlite, once imported, breaks a vLLM
        # engine started later in the same process (vLLM's kernel-override scan of sys.modules).
        backend_selection="numpy",
    )
    return [[int(i) for i in row] for row in indices]
