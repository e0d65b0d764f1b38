"""Near-duplicate removal: clusters of records that repeat each other, one representative kept each.

    datagen clean dedup --data-dir ./datasets --table math_programs [--threshold 0.8]

A record is its prompt (the question, the prompt: scan.PROFILES) and its output (the program, the
rewrite, the query, both responses), normalised (normalize.py). Two records are
- **exact** duplicates when their normalised prompts and outputs are equal (a 64-bit hash), and
- **near** duplicates when their normalised prompts are equal and the Jaccard similarity of their
  outputs' sets of word 3-gram shingles is at least `threshold` (0.8). Candidates come from MinHash
  (128 permutations) cut into LSH bands, each band key mixed with the prompt's hash (b bands of r rows,
  chosen as datasketch does but weighting a missed duplicate 9 to 1: 0.8 gives 14 x 9); DuckDB joins
  records that share a band key or the exact hash; then each candidate pair is verified on its texts
  (exact Jaccard of the shingle sets, and equal prompts), so a band collision never flags a record.
  A cluster is a connected group of verified links (star links to each key's best record). So
  samples of one problem cluster only when their programs are nearly the same (the shared question
  does not count towards their similarity), and the same program under two different questions is no
  duplicate. A table without a prompt (retrieval queries, `--fields`) compares outputs alone. An
  output shorter than 3 words is one shingle: only exact copies match.

The representative of a new cluster is its best record: one the generator kept (a correct program, a
kept rewrite) before one it dropped, then the earliest written, then the lowest record id. Clusters
are decided once: a later run links its new records to the existing clusters (an old representative
stays), so exports do not change under a user's feet.

Memory stays flat in the table's size: signatures are computed batch by batch (numpy over the whole
batch) into a temporary Parquet file; DuckDB joins the band keys (new with new, new with the ones
already in `duplicates`; it spills past its memory limit); Python only holds the candidate pairs and
their texts (the near-duplicates), never the table. One `duplicates` row per record checked, committed per batch; a rerun
checks only records with no row under the same settings.

Example `duplicates` row:
    {"record_id": "9a0b...", "source_table": "math_programs", "check_id": "41c7...", "method": "minhash",
     "cluster_id": "5c1f...", "representative": false, "match": "near", "exact_hash": -7239..., "bands": [...]}
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from schemas.store import TableStore
from schemas.tables import DUPLICATES

from . import scan
from .normalize import _mix, ngram_hashes, normalize_array, token_hashes

_PRIME = (1 << 61) - 1


@dataclass(frozen=True)
class DedupSettings:
    threshold: float = 0.8  # Jaccard similarity of word-3-gram shingle sets (NeMo Curator's fuzzy dedup uses 0.8)
    shingle: int = 3  # words per shingle
    num_perm: int = 128  # MinHash permutations
    seed: int = 1
    fields: tuple[str, ...] | None = None  # the table's text columns (default: its Profile)
    batch_rows: int = scan.BATCH_ROWS

    def __post_init__(self):
        if not 0.0 < self.threshold < 1.0:
            raise ValueError("the Jaccard threshold must be in (0, 1)")
        if self.shingle < 1 or self.num_perm < 2:
            raise ValueError("shingle must be at least 1 and num_perm at least 2")


def lsh_params(threshold: float, num_perm: int, fn_weight: float = 0.9) -> tuple[int, int]:
    """(bands, rows per band) with the least weighted false-positive plus false-negative probability
    mass around `threshold` (the S-curve 1 - (1 - s^r)^b; datasketch's `_optimal_param`). A missed
    duplicate is weighted 0.9, a spurious candidate 0.1, since every candidate pair is then verified on
    its texts: 0.8 gives 14 bands of 9 (a pair at Jaccard 0.8 is a candidate with p = 0.87, at 0.9
    with 0.999, at 0.5 with 0.03)."""
    def area(lo, hi, b, r, above):
        s = np.linspace(lo, hi, 201)
        p = 1.0 - (1.0 - s ** r) ** b
        return float(np.trapezoid(1.0 - p if above else p, s))

    best = None
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            error = (1 - fn_weight) * area(0.0, threshold, b, r, False) + fn_weight * area(threshold, 1.0, b, r, True)
            if best is None or error < best[0]:
                best = (error, b, r)
    return best[1], best[2]


class Signer:
    """Exact hash, MinHash signature and LSH band keys of a batch of texts."""

    def __init__(self, settings: DedupSettings):
        self.settings = settings
        self.bands, self.rows = lsh_params(settings.threshold, settings.num_perm)
        rng = np.random.default_rng(settings.seed)
        self.a = rng.integers(1, _PRIME, settings.num_perm, dtype=np.uint64) | np.uint64(1)
        self.b = rng.integers(0, _PRIME, settings.num_perm, dtype=np.uint64)

    def sign(self, texts: pa.Array, prompts: pa.Array | None = None) -> tuple[np.ndarray, list[list[int]]]:
        """(exact hash of prompt and output per record as int64 — 0 for an empty output —, band keys of
        the output mixed with the prompt's hash — none for an empty output)."""
        normal = normalize_array(texts)
        prompt = normalize_array(prompts).to_pylist() if prompts is not None else [""] * len(normal)
        output = normal.to_pylist()
        exact = np.array([_text_hash(f"{p}\x00{t}") if t else 0 for p, t in zip(prompt, output)], dtype=np.int64)
        salt = np.array([_text_hash(p) for p in prompt], dtype=np.int64).view(np.uint64)
        own = np.array([_text_hash(t) for t in output], dtype=np.int64)
        tokens = token_hashes(normal)
        k = self.settings.shingle
        grams = ngram_hashes(tokens, k)
        # A text shorter than one shingle is one shingle: all its words.
        short = np.flatnonzero((tokens.lengths > 0) & (tokens.lengths < k))
        values, owners = grams.values, grams.rows
        if len(short):
            values = np.concatenate([values, own[short].view(np.uint64)])
            owners = np.concatenate([owners, short])
            order = np.argsort(owners, kind="stable")
            values, owners = values[order], owners[order]
        size = len(normal)
        counts = np.bincount(owners, minlength=size)
        has = counts > 0
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[has]
        signature = np.empty((int(has.sum()), self.settings.num_perm), dtype=np.uint64)
        with np.errstate(over="ignore"):
            for p in range(self.settings.num_perm):
                signature[:, p] = np.minimum.reduceat(_mix(values * self.a[p] + self.b[p]), starts) if len(starts) else []
        keys = np.empty((len(signature), self.bands), dtype=np.uint64)
        with np.errstate(over="ignore"):
            for band in range(self.bands):
                acc = salt[has] ^ np.uint64(band + 1)
                for j in range(band * self.rows, (band + 1) * self.rows):
                    acc = acc * np.uint64(0x100000001B3) + signature[:, j]
                keys[:, band] = _mix(acc)
        bands: list[list[int]] = [[] for _ in range(size)]
        for i, row in zip(np.flatnonzero(has).tolist(), keys.view(np.int64).tolist()):
            bands[i] = row
        return exact, bands


def _text_hash(text: str | None) -> int:
    if not text:
        return 0
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little", signed=True) or 1


def check_id(table: str, settings: DedupSettings, profile: scan.Profile) -> tuple[str, dict]:
    own = {"method": "minhash", "threshold": settings.threshold, "shingle": settings.shingle,
           "num_perm": settings.num_perm, "seed": settings.seed, "prompt": list(profile.prompt),
           "output": list(profile.output)}
    blob = json.dumps({"table": table, **own}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16], own


SIGNATURES = pa.schema([("record_id", pa.string()), ("exact_hash", pa.int64()), ("bands", pa.list_(pa.int64())),
                        ("rank", pa.string()), ("source_run", pa.string())])


def dedup(data_dir, table: str, settings: DedupSettings, run_id: str, log=print) -> dict:
    """Cluster `table`'s records not yet checked under `settings` with each other and with the clusters
    already in `duplicates`; commit one `duplicates` row per record. Returns counts."""
    con = scan.connect(data_dir)
    profile = scan.profile_for(con, data_dir, table, list(settings.fields) if settings.fields else None)
    cid, own = check_id(table, settings, profile)
    signer = Signer(settings)
    own = {**own, "bands": signer.bands, "rows": signer.rows}
    store = TableStore(data_dir, DUPLICATES)
    total = con.execute(f'SELECT count(*) FROM "{table}"').fetchall()[0][0]
    joined = lambda columns: " || chr(10) || ".join(f"coalesce(t.{f}, '')" for f in columns) or "''"  # noqa: E731
    # The representative's order: kept first, then the earliest written, then the lowest record id.
    rank = ("(CASE WHEN coalesce(" + profile.kept + ", false) THEN '0' ELSE '1' END) || '|' || "
            "strftime(t.created_at, '%Y-%m-%dT%H:%M:%S.%f') || '|' || t.record_id")
    with store.lease(cid, {"run_id": run_id}, on_wait=log), tempfile.TemporaryDirectory(prefix="datagen-dedup-") as tmp:
        signatures = Path(tmp) / "signatures.parquet"
        checked, source_runs = 0, set()
        reader = scan.unchecked(scan.connect(data_dir), table, [f"{joined(profile.output)} AS text",
                                                              f"{joined(profile.prompt)} AS prompt", f"{rank} AS rank",
                                                              "t.run_id AS source_run"],
                                "duplicates", cid, settings.batch_rows)
        with pq.ParquetWriter(signatures, SIGNATURES) as writer:
            for batch in reader:
                exact, bands = signer.sign(batch.column("text"), batch.column("prompt"))
                writer.write_table(pa.table({"record_id": batch.column("record_id"), "exact_hash": exact,
                                             "bands": pa.array(bands, pa.list_(pa.int64())),
                                             "rank": batch.column("rank"), "source_run": batch.column("source_run")},
                                            schema=SIGNATURES))
                checked += batch.num_rows
                source_runs.update(batch.column("source_run").unique().to_pylist())
        assign, exact_of = (_clusters(scan.connect(data_dir), signatures, cid, table, joined(profile.output),
                                      joined(profile.prompt), settings) if checked else ({}, {}))
        counts = Counter()
        created_at = datetime.now(timezone.utc)
        for batch in pq.ParquetFile(signatures).iter_batches(settings.batch_rows) if checked else []:
            out = _rows(batch, assign, exact_of, table, cid, own, run_id, created_at)
            store.commit(out, run_id)
            counts.update(m or "representative" for m in out.column("match").to_pylist())
    duplicates = counts.get("exact", 0) + counts.get("near", 0)
    summary = {"table": table, "check_id": cid, "records": total, "checked": checked, "already_checked": total - checked,
               "duplicates": duplicates, "exact": counts.get("exact", 0), "near": counts.get("near", 0),
               "bands": signer.bands, "rows_per_band": signer.rows, "source_runs": sorted(source_runs)}
    log(f"{table} dedup: {checked} checked, {duplicates} duplicates ({summary['exact']} exact, {summary['near']} near), "
        f"{total - checked} already checked")
    return summary


def _clusters(con, signatures: Path, cid: str, table: str, text_sql: str, prompt_sql: str,
              settings: DedupSettings) -> tuple[dict[str, tuple[str, bool]], dict[str, int]]:
    """record_id -> (cluster_id, representative) for every new record linked to another (the rest are
    clusters of one), and the exact hash of every record named there. Candidates are records sharing a
    band key or the exact hash (DuckDB joins them: new with new, new with the records already checked);
    a candidate pair is a link only when its prompts are equal and its outputs' shingle sets' Jaccard
    similarity, computed on the texts, is at least the threshold."""
    path = "'" + str(signatures).replace("'", "''") + "'"
    con.execute(f"CREATE TEMP VIEW new_sig AS SELECT * FROM read_parquet({path})")
    keys = "unnest(list_append(bands, exact_hash))"
    old = "duplicates" in scan.views(con)
    # new record, the best record (by rank) sharing one of its keys; with each the rank
    pairs = con.sql(
        f"WITH k AS (SELECT record_id, rank, {keys} AS key FROM new_sig WHERE exact_hash <> 0), "
        "g AS (SELECT key, min(rank) AS head FROM k GROUP BY key HAVING count(*) > 1) "
        "SELECT DISTINCT k.record_id, k.rank, g.head FROM k JOIN g USING (key) WHERE k.rank <> g.head").fetchall()
    old_pairs = []  # new record, an already checked record sharing a key, its cluster
    if old:
        old_pairs = con.sql(
            f"WITH n AS (SELECT record_id, {keys} AS key FROM new_sig WHERE exact_hash <> 0), "
            f"o AS (SELECT record_id, cluster_id, {keys} AS key FROM duplicates WHERE check_id = $c AND exact_hash <> 0) "
            "SELECT DISTINCT n.record_id, o.record_id, o.cluster_id FROM n JOIN o USING (key)",
            params={"c": cid}).fetchall()
    record_of = lambda rank: rank.rsplit("|", 1)[1]  # noqa: E731
    rank_of = {r: rank for r, rank, _ in pairs} | {record_of(h): h for _, _, h in pairs}
    candidates = [(r, record_of(h)) for r, _, h in pairs] + [(n, o) for n, o, _ in old_pairs]
    similar = _verify(con, table, text_sql, prompt_sql, candidates, settings)
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for record, head in candidates[:len(pairs)]:
        if (record, head) in similar:
            a, b = find(record), find(head)
            if a != b:
                parent[a] = b
    links_old: dict[str, set[str]] = {}
    for record, other, cluster in old_pairs:
        if (record, other) in similar:
            links_old.setdefault(record, set()).add(cluster)
            find(record)
    groups: dict[str, list[str]] = {}
    for record in list(parent):
        groups.setdefault(find(record), []).append(record)
    assign: dict[str, tuple[str, bool]] = {}
    for members in groups.values():
        olds = set().union(*(links_old.get(r, set()) for r in members))
        if olds:  # joins an existing cluster: its representative stays
            assign.update({r: (min(olds), False) for r in members})
        else:
            head = min(members, key=lambda r: rank_of[r])
            assign.update({r: (head, r == head) for r in members})
    named = sorted(set(assign) | {c for c, _ in assign.values()})
    exact_of: dict[str, int] = {}
    if named:
        union = "SELECT record_id, exact_hash FROM new_sig"
        if old:
            union += " UNION ALL SELECT record_id, exact_hash FROM duplicates WHERE check_id = $c"
        exact_of = dict(con.sql(f"SELECT record_id, any_value(exact_hash) FROM ({union}) "
                                "JOIN (SELECT unnest($ids) AS record_id) USING (record_id) GROUP BY record_id",
                                params={"ids": named, **({"c": cid} if old else {})}).fetchall())
    return assign, exact_of


def _verify(con, table: str, text_sql: str, prompt_sql: str, candidates: list[tuple[str, str]],
            settings: DedupSettings) -> set[tuple[str, str]]:
    """The candidate pairs whose normalised prompts are equal and whose outputs' shingle sets have a
    Jaccard similarity of at least the threshold (texts read back for the candidates only)."""
    ids = sorted({r for pair in candidates for r in pair})
    if not ids:
        return set()
    found = con.sql(f'SELECT t.record_id, {text_sql} AS text, {prompt_sql} AS prompt FROM "{table}" t '
                    "JOIN (SELECT unnest($ids) AS record_id) USING (record_id)", params={"ids": ids}).to_arrow_table()
    records = found.column("record_id").to_pylist()
    prompts = dict(zip(records, normalize_array(found.column("prompt")).to_pylist()))
    tokens = token_hashes(found.column("text"))
    grams = ngram_hashes(tokens, settings.shingle)
    shingles: dict[str, set[int]] = {}
    for i, record in enumerate(records):
        own = grams.values[grams.offsets[i]:grams.offsets[i + 1]]
        if not len(own) and tokens.lengths[i]:  # shorter than one shingle: all its words are one
            own = tokens.values[tokens.offsets[i]:tokens.offsets[i + 1]]
            own = [hash(tuple(own.tolist()))]
        shingles[record] = set(np.asarray(own).tolist())
    similar = set()
    for a, b in candidates:
        sa, sb = shingles.get(a), shingles.get(b)
        if sa and sb and prompts[a] == prompts[b] and len(sa & sb) >= settings.threshold * len(sa | sb):
            similar.add((a, b))
    return similar


def _rows(batch: pa.RecordBatch, assign: dict, exact_of: dict, table: str, cid: str, own: dict, run_id: str,
          created_at: datetime) -> pa.Table:
    records = batch.column("record_id").to_pylist()
    exact = batch.column("exact_hash").to_pylist()
    cluster, representative, match = [], [], []
    for record, h in zip(records, exact):
        c, rep = assign.get(record, (record, True))
        cluster.append(c)
        representative.append(rep)
        match.append(None if rep else ("exact" if h != 0 and exact_of.get(c) == h else "near"))
    size = len(records)
    columns = {
        "record_id": batch.column("record_id"), "source_table": pa.array([table] * size),
        "check_id": pa.array([cid] * size), "method": pa.array(["minhash"] * size),
        "settings": pa.array([json.dumps(own, sort_keys=True)] * size), "run_id": pa.array([run_id] * size),
        "created_at": pa.array([created_at] * size, pa.timestamp("us", tz="UTC")),
        "cluster_id": pa.array(cluster, pa.string()), "representative": pa.array(representative),
        "match": pa.array(match, pa.string()), "exact_hash": batch.column("exact_hash"), "bands": batch.column("bands"),
    }
    return pa.table(columns).select(DUPLICATES.arrow.names)
