"""`datagen export retrieval-queries`: the kept queries as retriever training triples in
sentence-transformers' format (anchor, positive, negative: MultipleNegativesRankingLoss, TripletLoss).

    datagen export retrieval-queries --data-dir ./datasets --out triples.jsonl [--corpus FILE] [--run RUN_ID]
    -> {"anchor": "what do mice eat?", "positive": "Mouse diet. Mice eat seeds ...",
        "negative": "Rat diet. Rats eat almost anything ..."}

The positive is the document the query was written for; the hard negatives are the top-ranked other
documents of the corpus for the query, by BM25 (filter.BM25Scorer, the filter's own ranking code) or,
with `--negatives-from filter`, the ones the round-trip filter stored (`negatives`: ranked by the
filter's retriever). `--negatives N` > 1 writes negative_1 .. negative_N. A query with fewer than N
negatives, or whose document is not in the corpus, is counted and left out. The corpus is the one the
rows were generated from (their source_file) unless `--corpus` names it, loaded as eval.py does.

sentence-transformers trains on every column that is not a label, in order, as text: so by default
the file holds only the text columns; `--lineage` adds record_id, doc_id, run_id, config_hash and
negative_ids (drop them before training). Written atomically; no kept query: one line, exit code 2.
"""
from __future__ import annotations

import argparse
import sys

import pyarrow as pa
import pyarrow.compute as pc

from schemas.datadir import DataDir
from schemas.flags import flagged_records
from schemas.index_cache import IndexCache
from schemas.store import TableStore, only_runs
from schemas.tables import RETRIEVAL_QUERIES
from tasks.runtime.exports import deliver

from . import filter as rf
from .corpus_index import corpus_scorer
from .eval import corpus_of

LINEAGE = ("record_id", "doc_id", "run_id", "config_hash")


def add_arguments(p) -> None:
    p.add_argument("--data-dir", default="./datasets")
    p.add_argument("--corpus", help="the corpus (default: the one the kept rows were generated from)")
    p.add_argument("--run", action="append", help="only these runs (repeatable; default: all)")
    p.add_argument("--config-hash", action="append", help="only rows of this config hash (repeatable; default: all)")
    p.add_argument("--negatives", type=_at_least_one, default=1, help="hard negatives per query (default 1)")
    p.add_argument("--negatives-from", choices=("bm25", "filter"), default="bm25",
                   help="bm25: mined now over the corpus (default); filter: those the round-trip filter stored")
    p.add_argument("--lineage", action="store_true",
                   help="add lineage columns (sentence-transformers would read them as texts: drop them to train)")
    p.add_argument("--include-flagged", action="store_true",
                   help="keep records a `datagen clean` step flagged (contaminated, or a duplicate's copy)")


def _at_least_one(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return int(text)


def negative_columns(n: int) -> list[str]:
    return ["negative"] if n == 1 else [f"negative_{i}" for i in range(1, n + 1)]


def kept_queries(data_dir: str, run_ids: list[str] | None = None, config_hashes: list[str] | None = None,
                 include_flagged: bool = False) -> list[dict]:
    """The kept rows (query, doc_id, stored negatives, source_file, lineage), each (doc_id, query) once,
    in (doc_id, query) order; records a cleaning step flagged left out unless `include_flagged`."""
    condition = (pc.field("kept") == True) & pc.field("query").is_valid()  # noqa: E712 - Arrow expression
    flagged = None if include_flagged else flagged_records(data_dir, RETRIEVAL_QUERIES.name)
    condition = only_runs(condition, run_ids, config_hashes, flagged)
    rows = TableStore(data_dir, RETRIEVAL_QUERIES).read(
        columns=[*LINEAGE, "query", "negatives", "source_file", "created_at"], filter=condition).to_pylist()
    rows.sort(key=lambda r: (r["doc_id"], r["query"], r["created_at"], r["record_id"]))
    seen, out = set(), []
    for r in rows:
        if (r["doc_id"], r["query"]) not in seen:
            seen.add((r["doc_id"], r["query"]))
            out.append(r)
    return out


def export_rows(data_dir: str, corpus_path: str | None = None, run_ids: list[str] | None = None,
                config_hashes: list[str] | None = None, negatives: int = 1, negatives_from: str = "bm25",
                lineage: bool = False, include_flagged: bool = False) -> tuple[list[dict], dict[str, int]]:
    """Triples (anchor, positive, negative[_i]) of the kept queries, and the counts of those left out
    ({"no_document": n, "too_few_negatives": n})."""
    if negatives < 1:
        raise ValueError("--negatives must be at least 1")
    rows = kept_queries(data_dir, run_ids, config_hashes, include_flagged)
    if not rows:
        return [], {}
    corpus, _ = corpus_of(data_dir, {r["source_file"] for r in rows}, corpus_path)
    doc_ids = [d["source_id"] for d in corpus]
    position = {d: i for i, d in enumerate(doc_ids)}
    left_out = {"no_document": sum(r["doc_id"] not in position for r in rows), "too_few_negatives": 0}
    rows = [r for r in rows if r["doc_id"] in position]
    if negatives_from == "bm25":
        scorer, _ = corpus_scorer("bm25", doc_ids, [d["text"] for d in corpus], cache=IndexCache.for_data_dir(data_dir))
        verdicts = rf.judge_pairs(scorer, [r["query"] for r in rows],
                                  [position[r["doc_id"]] for r in rows], doc_ids, k=1, negatives=negatives)
        mined = [v["negatives"] for v in verdicts]
    else:
        mined = [[n for n in (r["negatives"] or []) if n in position and n != r["doc_id"]][:negatives] for r in rows]
    out = []
    for r, hard in zip(rows, mined):
        if len(hard) < negatives:
            left_out["too_few_negatives"] += 1
            continue
        triple = {"anchor": r["query"], "positive": corpus[position[r["doc_id"]]]["text"],
                  **{col: corpus[position[n]]["text"] for col, n in zip(negative_columns(negatives), hard)}}
        if lineage:
            triple.update({c: r[c] for c in LINEAGE}, negative_ids=list(hard))
        out.append(triple)
    return out, left_out


def schema(negatives: int, lineage: bool) -> pa.Schema:
    fields = [pa.field(c, pa.string()) for c in ("anchor", "positive", *negative_columns(negatives))]
    if lineage:
        fields += [pa.field(c, pa.string()) for c in LINEAGE] + [pa.field("negative_ids", pa.list_(pa.string()))]
    return pa.schema(fields)


def main(args) -> int:
    """`datagen export retrieval-queries --data-dir D --out FILE(.jsonl|.parquet)`."""
    rows, left_out = export_rows(args.data_dir, args.corpus, args.run, args.config_hash, args.negatives,
                                 args.negatives_from, args.lineage, args.include_flagged)
    if not rows:
        where = DataDir(args.data_dir).url(TableStore(args.data_dir, RETRIEVAL_QUERIES).root)
        why = f" (left out: {left_out})" if left_out else ""
        print(f"datagen export retrieval-queries: no kept queries to export in {where}"
              f"{' for the given --run / --config-hash' if args.run or args.config_hash else ''}{why}", file=sys.stderr)
        return 2
    skipped = ", ".join(f"{n} {k}" for k, n in left_out.items() if n) or "none"
    print(f"{len(rows)} training triples ({args.negatives} {args.negatives_from} negative(s) each; left out: {skipped}) "
          f"-> {', '.join(deliver(rows, args, schema(args.negatives, args.lineage), 'training triples'))}")
    return 0
