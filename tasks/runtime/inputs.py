"""Read seed rows from JSONL or Parquet, with errors that name the file and the row.

Inputs may be local paths or URIs (`s3://bucket/problems.jsonl`, see schemas/datadir.py).

Example:
    for row_number, row in read_rows("samples/math_word_problems.jsonl"):
        ...   # row_number is 1-based: the JSONL line, or the Parquet row index + 1

Ids: a row's `id` column (or the one named) is its source id; rows without one get a content hash
(`<prefix>-<sha1 of the key text>[:16]`), which stays stable when the file grows or is reordered.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterator


class InputError(ValueError):
    """Bad input: the message names the file and the row."""

    def __init__(self, path: str | Path, row: int | None, message: str):
        where = f"{path}: row {row}" if row is not None else str(path)
        super().__init__(f"{where}: {message}")
        self.path, self.row = str(path), row


def read_rows(path: str | Path) -> Iterator[tuple[int, dict]]:
    from schemas.datadir import DataDir

    where = DataDir(path)  # its root is the file
    path = Path(path) if where.local else where.url()
    if not where.exists():
        raise InputError(path, None, "file not found")
    import pyarrow.fs as pafs

    if where.fs.get_file_info(where.root).type == pafs.FileType.Directory:
        raise InputError(path, None, "is a folder, not a file")
    name = where.root.rsplit("/", 1)[-1].lower()
    if name.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(where.root, filesystem=where.fs)
        except (pa.ArrowException, OSError) as exc:
            raise InputError(path, None, f"not a readable Parquet file ({str(exc).splitlines()[0][:200]})") from None
        for index, row in enumerate(table.to_pylist(), start=1):
            yield index, row
    elif name.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz")):
        yield from _read_jsonl(where, path, gzipped=name.endswith(".gz"))
    else:
        raise InputError(path, None, "unsupported format (use .jsonl, .jsonl.gz or .parquet)")


def _read_jsonl(where, path, gzipped: bool) -> Iterator[tuple[int, dict]]:
    import gzip
    import io
    import zlib

    line_number = 0
    with where.fs.open_input_file(where.root) as raw:
        stream = gzip.open(raw) if gzipped else io.BufferedReader(raw)
        try:
            for line_number, data in enumerate(stream, start=1):
                try:
                    line = data.decode("utf-8")
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


def content_id(prefix: str, text: str) -> str:
    return f"{prefix}-{hashlib.sha1(text.encode('utf-8')).hexdigest()[:16]}"
