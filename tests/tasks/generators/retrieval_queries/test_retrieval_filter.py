"""Proves the round-trip filter: ranks count ties against the source document, hard negatives never
include it, fine-tuning batches never hold a document twice, and fine-tuning on pairs pulls their
documents up. On real data (100 SciFact train queries with their relevant documents, as if they
were generated), BM25 over the whole 5,183-document corpus and the pretrained MiniLM over 1,000 of
its documents (the 100 relevant ones and 900 others: encoding all takes minutes on CPU) keep far
more true pairs than (query, random document) pairs, which they nearly never keep: at K = 1 (the
paper's) and most true pairs at K = 10. The rates are printed (pytest -s) for the README. Tests that
load the real MiniLM (pretrained or fine-tuned) are marked `integration`."""
from __future__ import annotations

import csv
import json
import random

import numpy as np
import pytest

from tasks.generators.retrieval_queries import filter as rf
from tasks.generators.retrieval_queries.program import load_corpus


def test_judge_row_ranks_ties_against_the_source():
    ids = ["a", "b", "c", "d"]
    assert rf.judge_row(np.array([0.1, 0.9, 0.5, 0.2]), 1, 1, 2, ids) == {"rank": 1, "score": 0.9, "kept": True, "negatives": ["c", "d"]}
    tied = rf.judge_row(np.array([0.0, 0.0, 0.0, 0.0]), 2, 1, 4, ids)  # BM25 with no shared term
    assert tied["rank"] == 4 and not tied["kept"] and "c" not in tied["negatives"] and len(tied["negatives"]) == 3
    assert rf.judge_row(np.array([0.3, 0.9, 0.5, 0.2]), 2, 2, 1, ids)["kept"]  # rank 2 within K = 2


def test_bm25_round_trip_on_a_toy_corpus():
    corpus = ["Aspirin lowers colorectal cancer risk.", "Mice lacking TLR4 resist sepsis.", "Vitamin D in adults."]
    scorer = rf.BM25Scorer(corpus)
    verdicts = rf.judge_pairs(scorer, ["TLR4 sepsis mice", "TLR4 sepsis mice", "unrelated words"], [1, 0, 2],
                              ["x", "y", "z"], k=1, negatives=1)
    assert [v["kept"] for v in verdicts] == [True, False, False]
    assert verdicts[0]["negatives"] == ["x"] or verdicts[0]["negatives"] == ["z"]
    assert rf.top_k(np.array([[0.1, 0.7, 0.3]]), 2).tolist() == [[1, 2]]


def test_batches_never_repeat_a_document():
    pairs = [(f"q{i}", f"doc{i % 5}") for i in range(40)]  # 8 queries per document
    batches = rf.batches_without_repeated_documents(pairs, 4, seed=0)
    assert all(len({pairs[i][1] for i in b}) == len(b) for b in batches)
    assert all(2 <= len(b) <= 4 for b in batches)
    used = [i for b in batches for i in b]
    assert len(used) == len(set(used)) and len(used) >= 36


def _scifact_pairs(shared_data, n=100):
    queries = {}
    for line in (shared_data / "scifact" / "queries.jsonl").read_text().splitlines():
        row = json.loads(line)
        queries[row["_id"]] = row["text"]
    pairs, seen = [], set()
    with open(shared_data / "scifact" / "qrels" / "train.tsv") as fh:
        for qid, doc_id, _ in list(csv.reader(fh, delimiter="\t"))[1:]:
            if qid not in seen:
                seen.add(qid)
                pairs.append((queries[qid], doc_id))
    return pairs[:n]


@pytest.fixture(scope="module")
def scifact(shared_data):
    corpus = load_corpus(shared_data / "scifact" / "corpus.jsonl").rows
    index = {d["source_id"]: i for i, d in enumerate(corpus)}
    pairs = [(q, index[d]) for q, d in _scifact_pairs(shared_data) if d in index]
    rng = random.Random(0)
    randoms = [rng.choice([j for j in rng.sample(range(len(corpus)), 3) if j != i]) for _, i in pairs]
    return corpus, pairs, randoms


def _keep_rates(name, scorer, corpus, pairs, randoms) -> dict:
    """{K: (true pairs kept, random pairs kept)} for K = 1 and 10."""
    ids = [d["source_id"] for d in corpus]
    queries = [q for q, _ in pairs]
    true = rf.judge_pairs(scorer, queries, [i for _, i in pairs], ids, k=1, negatives=4)
    fake = rf.judge_pairs(scorer, queries, randoms, ids, k=1, negatives=4)
    rates = {k: (sum(v["rank"] <= k for v in true) / len(true), sum(v["rank"] <= k for v in fake) / len(fake))
             for k in (1, 10)}
    for k, (t, r) in rates.items():
        print(f"\n{name} round trip over {len(corpus)} documents, K={k}: true pairs kept {t:.2f}, random pairs kept {r:.2f}")
    return rates


def _assert_far_from_chance(rates):
    # A random document ranks in the top 10 of 1,000+ by chance ~1% of the time.
    (true1, random1), (true10, random10) = rates[1], rates[10]
    assert true1 >= 0.3 and random1 <= 0.02
    assert true10 >= 0.6 and random10 <= 0.05


def test_bm25_filter_keeps_real_pairs_and_drops_random_ones(scifact):
    corpus, pairs, randoms = scifact
    assert len(pairs) == 100
    _assert_far_from_chance(_keep_rates("BM25", rf.BM25Scorer([d["text"] for d in corpus]), corpus, pairs, randoms))


@pytest.mark.integration
def test_dense_filter_keeps_real_pairs_and_drops_random_ones(scifact):
    corpus, pairs, randoms = scifact
    keep = sorted({i for _, i in pairs} | set(randoms))
    keep += [j for j in range(len(corpus)) if j not in set(keep)][: 1000 - len(keep)]
    sub = [corpus[j] for j in keep]
    where = {j: n for n, j in enumerate(keep)}
    pairs = [(q, where[i]) for q, i in pairs]
    randoms = [where[j] for j in randoms]
    scorer = rf.DenseScorer(rf.load_minilm(), [d["text"] for d in sub])
    _assert_far_from_chance(_keep_rates("pretrained MiniLM", scorer, sub, pairs, randoms))


@pytest.mark.integration  # the real MiniLM, fine-tuned
def test_fine_tuning_pulls_trained_documents_up(shared_data, scifact):
    corpus, pairs, _ = scifact
    distinct = list({i: (q, i) for q, i in pairs}.values())[:24]  # one query per document
    docs = [corpus[i]["text"] for _, i in distinct]
    train = [(q, corpus[i]["text"]) for q, i in distinct]
    queries = [q for q, _ in train]

    def margin(model):  # mean of (own document's score - best other document's score)
        s = rf.DenseScorer(model, docs, batch_size=32).scores(queries)
        own = np.diag(s).copy()
        np.fill_diagonal(s, -np.inf)
        return float(np.mean(own - s.max(axis=1)))

    before = margin(rf.load_minilm())
    tuned = rf.fine_tune(train, epochs=3, batch_size=8, lr=5e-5, max_seq_length=96, seed=0)
    after = margin(tuned)
    assert after > before + 0.02, (before, after)
