"""Read seed rows from JSONL or Parquet, and check them, with errors that name the file and the row.

Inputs may be local paths or URIs (`s3://bucket/problems.jsonl`, see schemas/datadir.py).

Example:
    for row_number, row in read_rows("samples/math_word_problems.jsonl"):
        ...   # row_number is 1-based: the JSONL line, or the Parquet row index + 1
    source = select_rows(path, parse(path), limit=20, checks=RowChecks(max_chars=20_000))
    source.rows      # [{"source_id": "q-3f2a...", "source_file": path, "source_row": 1, "question": ...}]
    source.rejects   # [{"source_file": path, "source_row": 7, "reason": "input_too_long"}]

Every input is checked the same way, for every generator:
- a file that cannot be read (missing, a folder, corrupt gzip or Parquet, not UTF-8, not JSON, no
  rows at all) is an InputError naming the file, and the row where there is one;
- a text a generator reads (a question, a solution, a document, a response) must be a string:
  a number, list, object, bool, null or NaN where text belongs is an InputError naming the column
  (`column_text`), never stringified into a prompt;
- ids are unique: a row whose id repeats an earlier row's is an InputError naming both rows, or, with
  `RowChecks(drop_duplicates=True)`, a reject counted as `dropped_duplicate_id`;
- a row whose texts are longer than `RowChecks.max_chars` is a reject counted as
  `dropped_input_too_long`: it never reaches the engine, and the run's other rows still run.
A generator parses its rows one by one (yielding each source row, or `Rejected` for a well-formed row
it cannot use) and hands them to `select_rows`, which applies the last two checks and the limit.

Ids: a row's `id` column (or the one named) is its source id; rows without one get a content hash
(`<prefix>-<sha1 of the key text>[:16]`), which stays stable when the file grows or is reordered.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

# Why an input row is not used, whatever the generator: counted as `dropped_<reason>`.
DUPLICATE_ID = "duplicate_id"
INPUT_TOO_LONG = "input_too_long"
LINEAGE_KEYS = ("source_id", "source_file", "source_row")  # not text: not counted against max_chars


class InputError(ValueError):
    """Bad input: the message names the file and the row."""

    def __init__(self, path: str | Path, row: int | None, message: str):
        where = f"{path}: row {row}" if row is not None else str(path)
        super().__init__(f"{where}: {message}")
        self.path, self.row = str(path), row


class Source:
    """What `load()` read. `rows`: the source rows to generate from (each with a unique `source_id`,
    and `source_file` / `source_row` for lineage). `rejects`: input rows not used, each
    {"source_file", "source_row", "reason"}: counted as `dropped_<reason>` and listed in the run's
    artifact (the first `MAX_LISTED_REJECTS` only; `reject_counts` counts them all). `context`: anything
    plan / finish need beside the rows (a whole corpus, examples).

    A large input is staged: `Source(staged=Staged(files, count))` holds Parquet file paths
    (tasks/runtime/planning.py) and `rows` reads them back only when asked (small runs, tests). A
    `Source(rows)` of a list stages itself on the first `staged_files()`."""

    def __init__(self, rows: list[dict] | None = None, rejects: list[dict] | None = None,
                 context: dict | None = None, staged=None, reject_counts: dict | None = None):
        if rows is None and staged is None:
            raise ValueError("a Source needs rows or staged files")
        self._rows, self.staged = rows, staged
        self.rejects = list(rejects or [])
        self.reject_counts = dict(reject_counts) if reject_counts is not None else \
            dict(Counter(r["reason"] for r in self.rejects))
        self.context = dict(context or {})
        self.folder: str | None = None  # where its staged files live (made on first staging)

    @property
    def rows(self) -> list[dict]:
        if self._rows is None:
            from .planning import read_staged

            self._rows = [row for batch in read_staged(self.staged.files) for row in batch]
        return self._rows

    def __len__(self) -> int:
        return len(self._rows) if self._rows is not None else self.staged.count

    @property
    def rejected(self) -> int:
        return sum(self.reject_counts.values())

    def staging_folder(self) -> str:
        if self.folder is None:
            from .planning import StagingFolder

            self.folder = StagingFolder()
        return self.folder

    def staged_files(self) -> list[str]:
        """Its rows as staged Parquet files (written now for a Source made from a list)."""
        if self.staged is None:
            from .planning import stage_rows

            self.staged = stage_rows(self._rows, self.staging_folder())
        return self.staged.files

    def cleanup(self) -> None:
        """Delete the staged files (the run's own copies of its input and plans)."""
        if self.folder is not None and hasattr(self.folder, "cleanup"):
            self.folder.cleanup()


@dataclass(frozen=True)
class RowChecks:
    """The checks `select_rows` applies to parsed rows (a run's `max_input_chars` and
    `drop_duplicates`, tasks/runtime/settings.py). The defaults, for reading outside a run (evals,
    benchmarks): no length limit, and a repeated id is an error."""

    max_chars: int | None = None
    drop_duplicates: bool = False


@dataclass(frozen=True)
class Rejected:
    """A parser's verdict on a well-formed row it cannot use (e.g. hh-rlhf dialogues that do not
    split): a counted drop with `reason`, not an error."""

    row: int
    reason: str


def read_rows(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(row number, row) of every row; an InputError for anything unreadable, and for a file with
    no rows at all (an empty run is a mistake, not a success with nothing to do).

    `path`: a local file, or a URI any installed fsspec filesystem reads: `s3://bucket/q.jsonl`,
    `hf://datasets/<owner>/<repo>/<file>` (a Hugging Face dataset repo, through huggingface_hub's
    HfFileSystem; `<repo>@<revision>` pins a revision, HF_TOKEN reads private repos). A remote store
    that cannot be reached is a ConnectionError naming the file (an OSError: a run's load retries it)."""
    from schemas.datadir import DataDir

    where = DataDir(path)  # its root is the file
    if where.local:
        yield from _read_file(where, Path(path))
        return
    try:
        yield from _read_file(where, where.url())
    except (InputError, OSError):
        raise
    except Exception as exc:  # noqa: BLE001 - a remote client's own errors (HTTP, network): said in one line
        message = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise ConnectionError(f"{where.url()}: cannot be read ({type(exc).__name__}: {message})") from exc


def _read_file(where, path) -> Iterator[tuple[int, dict]]:
    if not where.exists():
        raise InputError(path, None, "file not found")
    import pyarrow.fs as pafs

    if where.fs.get_file_info(where.root).type == pafs.FileType.Directory:
        raise InputError(path, None, "is a folder, not a file")
    name = where.root.rsplit("/", 1)[-1].lower()
    if name.endswith(".parquet"):
        rows = _read_parquet(where, path)
    elif name.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz")):
        rows = _read_jsonl(where, path, gzipped=name.endswith(".gz"))
    else:
        raise InputError(path, None, "unsupported format (use .jsonl, .jsonl.gz or .parquet)")
    empty = True
    for row_number, row in rows:
        empty = False
        yield row_number, row
    if empty:
        raise InputError(path, None, "no rows (the file is empty or holds only blank lines)")


def _read_parquet(where, path) -> Iterator[tuple[int, dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def unreadable(exc) -> InputError:
        return InputError(path, None, f"not a readable Parquet file ({str(exc).splitlines()[0][:200]})")

    try:
        if where.fsspec is not None:  # hf://, memory://, ...: read whole through fsspec, in this thread.
            # pyarrow reading through a Python filesystem calls back into Python from its I/O threads, which
            # aborted the interpreter at exit ("terminate called without an active exception") 1 time in 4.
            # Read whole, then decoded without pyarrow's thread pool: with it, the process still aborted
            # at exit 2 times in 15 (0 in 15 without).
            file = pq.ParquetFile(pa.BufferReader(where.fsspec.cat_file(where.root)))
        else:  # read 4,096 rows at a time: a large file is never whole in memory
            file = pq.ParquetFile(where.fs.open_input_file(where.root))
    except PermissionError:
        raise InputError(path, None, "cannot be read (permission denied)") from None
    except (pa.ArrowException, OSError) as exc:
        raise unreadable(exc) from None
    row_number = 0
    with file:
        batches = file.iter_batches(batch_size=4_096, use_threads=where.fsspec is None)
        while True:
            try:
                batch = next(batches, None)
            except (pa.ArrowException, OSError) as exc:
                raise unreadable(exc) from None
            if batch is None:
                return
            for row in batch.to_pylist():
                row_number += 1
                yield row_number, row


def _read_jsonl(where, path, gzipped: bool) -> Iterator[tuple[int, dict]]:
    import gzip
    import io
    import zlib

    line_number = 0
    try:
        raw = where.fs.open_input_file(where.root)
    except PermissionError:  # not transient: a retry would fail the same way
        raise InputError(path, None, "cannot be read (permission denied)") from None
    with raw:
        stream = gzip.open(raw) if gzipped else io.BufferedReader(raw)
        try:
            for line_number, data in enumerate(stream, start=1):
                try:
                    # utf-8-sig on the first line: a byte-order mark (Windows editors) is not part of the row
                    line = data.decode("utf-8-sig" if line_number == 1 else "utf-8")
                except UnicodeDecodeError as exc:
                    raise InputError(path, line_number, f"not UTF-8 text (byte 0x{data[exc.start]:02x} at byte {exc.start + 1})") from None
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(path, line_number, f"invalid JSON ({exc.msg} at column {exc.colno})") from None
                if not isinstance(row, dict):
                    raise InputError(path, line_number, f"expected a JSON object, got {type(row).__name__}")
                yield line_number, row
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise InputError(path, line_number + 1, f"corrupt gzip file ({exc or type(exc).__name__})") from None


def pick_column(path: str | Path, row_number: int, row: dict, candidates: tuple[str, ...]) -> str:
    """The first of `candidates` present in `row`, or an InputError listing what the row has."""
    for name in candidates:
        if name in row:
            return name
    raise InputError(path, row_number, f"missing column: expected one of {list(candidates)}, row has {sorted(row)}")


def column_text(path: str | Path, row_number: int, row: dict, column: str, required: bool = True) -> str | None:
    """The text in `column`, stripped. Anything but a string there (a number, list, object, bool, NaN)
    is an InputError naming the column: it would otherwise be stringified into a prompt. Required: the
    column must be there and hold non-blank text (null is an error too); not required: absent, null or
    blank gives None."""
    if column not in row:
        if required:
            raise InputError(path, row_number, f"missing column {column!r}, row has {sorted(row)}")
        return None
    value = row[column]
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise InputError(path, row_number, f"column {column!r} must be text, got {describe(value)}")
    if required and not value.strip():
        raise InputError(path, row_number, f"column {column!r} is empty")
    return value.strip() or None


def column_id(path: str | Path, row_number: int, row: dict, columns: tuple[str, ...]) -> str | None:
    """The row's id: the first of `columns` holding a value (absent, null or blank ones are skipped),
    as a string. An id must be text or an integer: a float, bool, list or object is an InputError (a
    NaN or a 3.0 is a damaged column, not an id)."""
    for column in columns:
        value = row.get(column)
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
            return str(value)
        raise InputError(path, row_number, f"column {column!r} must be text or an integer id, got {describe(value)}")
    return None


def describe(value) -> str:
    """What a value is, for an error message: 'null', 'NaN', 'a number (12345)', 'a list', ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a bool ({value})"
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def text_chars(value) -> int:
    """Characters of every text in a parsed row (nested messages included), lineage keys left out:
    what `RowChecks.max_chars` limits."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(text_chars(v) for k, v in value.items() if k not in LINEAGE_KEYS)
    if isinstance(value, (list, tuple)):
        return sum(text_chars(v) for v in value)
    return 0


MAX_LISTED_REJECTS = 1_000  # rejects listed by name (the run's artifact, the log); all are counted


def select_rows(path: str | Path, parsed: Iterable[dict | Rejected], limit: int | None = None,
                checks: RowChecks = RowChecks(), folder: str | None = None) -> Source:
    """The Source of one input file from a generator's parsed rows (each with `source_id` and
    `source_row`), in file order: a repeated id is an InputError naming both rows, or with
    `checks.drop_duplicates` a `duplicate_id` reject; a row whose texts are longer than
    `checks.max_chars` an `input_too_long` reject. `limit` counts the rows used, and no row after
    the limit is parsed (so a bad row there does not stop the run).

    The rows are staged to Parquet under `folder` (a new temporary folder by default) as they are
    parsed, 4,096 at a time, never held as a list: without a limit the repeated ids are found by DuckDB
    over the staged file, with one the ids seen so far (at most the limit's worth and the repeats)."""
    from .planning import stage_rows

    source = Source(rows=[], rejects=[])  # rows replaced by the staged files below
    if folder is not None:
        source.folder = folder
    folder = source.staging_folder()
    rejects, counts = [], Counter()

    def note(row_number: int | None, reason: str, n: int = 1) -> None:
        counts[reason] += n
        if row_number is not None and len(rejects) < 2 * MAX_LISTED_REJECTS:  # the parser's, then DuckDB's
            rejects.append(_reject(path, row_number, reason))

    def too_long(item: dict) -> bool:
        return checks.max_chars is not None and text_chars(item) > checks.max_chars

    if limit is None:  # every row is staged, with its verdicts; DuckDB finds the repeats afterwards
        def checked():
            for item in parsed:
                if isinstance(item, Rejected):
                    note(item.row, item.reason)
                else:
                    yield {**item, "_too_long": too_long(item)}

        everything = stage_rows(checked(), folder, name="parsed", flag="_too_long")
        staged = _drop_repeats(path, everything.files, folder, checks, note)
    else:
        first_row: dict[str, int] = {}
        used = 0

        def checked():
            nonlocal used
            items = iter(parsed)
            while used < limit:
                item = next(items, None)
                if item is None:
                    return
                if isinstance(item, Rejected):
                    note(item.row, item.reason)
                    continue
                row_number, source_id = item["source_row"], item["source_id"]
                if source_id in first_row:
                    if not checks.drop_duplicates:
                        raise InputError(path, row_number, _repeat_message(source_id, first_row[source_id]))
                    note(row_number, DUPLICATE_ID)
                    continue
                first_row[source_id] = row_number
                if too_long(item):
                    note(row_number, INPUT_TOO_LONG)
                    continue
                used += 1
                yield item

        staged = stage_rows(checked(), folder)
    rejects = sorted(rejects, key=lambda r: r["source_row"])[:MAX_LISTED_REJECTS]
    source._rows, source.staged = None, staged
    source.rejects, source.reject_counts = rejects, +counts
    return source


def _repeat_message(source_id: str, first: int) -> str:
    return f"id {source_id!r} repeats row {first} (ids must be unique; --drop-duplicates drops the repeats)"


def _drop_repeats(path, files: list[str], folder: str, checks: RowChecks, note):
    """The staged rows less the repeated ids (an InputError at the first repeat, or counted rejects)
    and the over-long rows (counted), as a new staged file. DuckDB finds the repeated ids from the ids
    and verdicts on disk (a hash aggregate, spilled past its memory limit); the rows themselves are
    copied through Arrow 4,096 at a time."""
    import numpy as np

    from .planning import connect, copy_without, files_sql

    scan = f"read_parquet({files_sql(files)})"
    con = connect(folder)
    try:
        con.execute(f"CREATE TEMP TABLE repeated AS SELECT source_id, min(seq) AS first_seq FROM {scan} "
                    f"GROUP BY source_id HAVING count(*) > 1")
        con.execute(f"CREATE TEMP TABLE dropped AS SELECT s.seq, s.source_id, "
                    f"CAST(json_extract(s.payload, '$.source_row') AS BIGINT) AS source_row, "
                    f"CASE WHEN r.first_seq IS NOT NULL AND s.seq > r.first_seq THEN 'duplicate_id' "
                    f"ELSE 'input_too_long' END AS reason, r.first_seq FROM {scan} s "
                    f"LEFT JOIN repeated r ON s.source_id = r.source_id "
                    f"WHERE (r.first_seq IS NOT NULL AND s.seq > r.first_seq) OR s.flag")
        first = con.execute("SELECT d.source_id, d.source_row, d.first_seq FROM dropped d "
                            "WHERE reason = 'duplicate_id' ORDER BY seq LIMIT 1").fetchone()
        if first and not checks.drop_duplicates:
            source_id, row_number, first_seq = first
            first_row = con.execute(f"SELECT CAST(json_extract(payload, '$.source_row') AS BIGINT) FROM {scan} "
                                    f"WHERE seq = {int(first_seq)}").fetchone()[0]
            raise InputError(path, row_number, _repeat_message(source_id, first_row))
        for reason, total in con.execute("SELECT reason, count(*) FROM dropped GROUP BY ALL").fetchall():
            note(None, reason, total)
        for row_number, reason in con.execute(f"SELECT source_row, reason FROM dropped ORDER BY seq "
                                              f"LIMIT {MAX_LISTED_REJECTS}").fetchall():
            note(row_number, reason, 0)  # listed (counted above)
        dropped_seqs = con.execute("SELECT seq FROM dropped ORDER BY seq").fetchnumpy()["seq"]
    finally:
        con.close()
    staged = copy_without(files, np.asarray(dropped_seqs, dtype=np.int64), f"{folder}/source-{uuid.uuid4().hex[:12]}",
                          folder)
    for f in files:
        os.remove(f)
    return staged


def _reject(path: str | Path, row_number: int, reason: str) -> dict:
    return {"source_file": str(path), "source_row": row_number, "reason": reason}


def content_id(prefix: str, text: str) -> str:
    return f"{prefix}-{hashlib.sha1(text.encode('utf-8')).hexdigest()[:16]}"
