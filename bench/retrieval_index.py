"""Benchmark: the round-trip filter over a large corpus, before and with the stored index, side by side.

BM25 over N passages (default 100,000: the SciFact abstracts, then copies with their sentences
shuffled and one word in three made the copy's own) judging Q queries (each a passage's first sentence). Sides,
alternated in every round:
  (old)    the index built in the driver for this run, as before: BM25Scorer(texts) + judge_pairs;
  (build)  corpus_scorer("bm25") with an empty cache: build, save, judge;
  (reuse)  corpus_scorer("bm25") with the cache (build) left: load (mmap), judge.
With --dense D: the pretrained MiniLM over the first D SciFact abstracts, the vectors encoded by the Ray
Data stage (build) and then read back (reuse), both judging Q queries through FAISS.
Every round is printed and appended to bench/results/retrieval_index.jsonl; verdicts of all sides
must agree (checked).

    python bench/retrieval_index.py --corpus ../shared/data/scifact/corpus.jsonl --passages 100000 \
        --queries 1000 --rounds 2 [--dense 5183]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from schemas.index_cache import IndexCache  # noqa: E402
from tasks.generators.retrieval_queries import filter as rf  # noqa: E402
from tasks.generators.retrieval_queries.corpus_index import corpus_scorer  # noqa: E402
from tasks.generators.retrieval_queries.program import load_corpus  # noqa: E402


def passages(corpus: list[dict], n: int) -> tuple[list[str], list[str]]:
    """n passages: the corpus, then copies of it whose sentences are shuffled and whose words are, one
    in three, made the copy's own (`cells` -> `cellsx3`), so copies share vocabulary but are not ties."""
    rng = random.Random(0)
    ids, texts = [], []
    copy = 0
    while len(texts) < n:
        for d in corpus:
            if len(texts) == n:
                break
            text = d["text"]
            if copy:
                sentences = [s for s in text.split(". ") if s]
                rng.shuffle(sentences)
                text = " ".join(w + f"x{copy}" if rng.random() < 1 / 3 else w for w in ". ".join(sentences).split())
            ids.append(f"{d['source_id']}-{copy}")
            texts.append(text)
        copy += 1
    return ids, texts


def queries_for(ids, texts, q: int) -> tuple[list[str], list[int]]:
    rng = random.Random(1)
    sources = rng.sample(range(len(texts)), min(q, len(texts)))
    return [texts[i].split(". ")[0][:200] for i in sources], sources


def timed(fn):
    t0 = time.monotonic()
    out = fn()
    return out, round(time.monotonic() - t0, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", required=True, help="a corpus JSONL (e.g. SciFact's corpus.jsonl)")
    ap.add_argument("--passages", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--dense", type=int, default=0, help="also the dense side over this many documents")
    args = ap.parse_args()
    corpus = load_corpus(args.corpus).rows
    ids, texts = passages(corpus, args.passages)
    queries, sources = queries_for(ids, texts, args.queries)
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    run_id = f"{int(time.time())}"

    def judge(scorer):
        return rf.judge_pairs(scorer, queries, sources, ids, k=1, negatives=3)

    with tempfile.TemporaryDirectory(prefix="datagen-bench-index-") as tmp:
        for r in range(1, args.rounds + 1):
            row = {"run_id": run_id, "kind": "bm25", "round": r, "passages": len(texts), "queries": len(queries)}
            cache = IndexCache(Path(tmp) / f"round{r}")
            order = ["old", "build", "reuse"] if r % 2 else ["build", "reuse", "old"]
            verdicts = {}
            for side in order:
                if side == "old":
                    scorer, row["old_index_s"] = timed(lambda: rf.BM25Scorer(texts))
                else:
                    (scorer, counts), row[f"{side}_index_s"] = timed(lambda: corpus_scorer("bm25", ids, texts, cache=cache))
                    assert counts["filter_index_built"] == (side == "build")
                verdicts[side], row[f"{side}_judge_s"] = timed(lambda: judge(scorer))
                row[f"{side}_total_s"] = round(row[f"{side}_index_s"] + row[f"{side}_judge_s"], 2)
                del scorer
            assert verdicts["old"] == verdicts["build"] == verdicts["reuse"], "the sides disagree"
            row["kept"] = sum(v["kept"] for v in verdicts["old"])
            row["old_over_reuse"] = round(row["old_total_s"] / row["reuse_total_s"], 2)
            row["load_average"] = list(os.getloadavg())
            print(json.dumps(row), flush=True)
            with open(out / "retrieval_index.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
        if args.dense:
            import ray

            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
            d_ids, d_texts = [d["source_id"] for d in corpus[: args.dense]], [d["text"] for d in corpus[: args.dense]]
            d_queries, d_sources = queries_for(d_ids, d_texts, args.queries)
            cache = IndexCache(Path(tmp) / "dense")
            got = {}
            for r, side in enumerate(["build", "reuse", "reuse"], 1):
                (scorer, counts), index_s = timed(lambda: corpus_scorer("dense", d_ids, d_texts, cache=cache))
                assert counts["filter_index_built"] == (side == "build")
                got[r], judge_s = timed(lambda: rf.judge_pairs(scorer, d_queries, d_sources, d_ids, k=1, negatives=3))
                row = {"run_id": run_id, "kind": "dense", "round": r, "side": side, "documents": len(d_texts),
                       "queries": len(d_queries), "index_s": index_s, "judge_s": judge_s,
                       "kept": sum(v["kept"] for v in got[r]), "load_average": list(os.getloadavg())}
                print(json.dumps(row), flush=True)
                with open(out / "retrieval_index.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
            assert got[1] == got[2] == got[3]
            ray.shutdown()
    print(json.dumps({"run_id": run_id, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}))


if __name__ == "__main__":
    main()
