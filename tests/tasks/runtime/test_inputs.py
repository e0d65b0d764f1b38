"""Proves tasks/runtime/inputs.py: every unreadable input is one InputError naming the file (and the row
where there is one), never a UnicodeDecodeError, a zlib error, a pyarrow traceback or an IsADirectoryError
that a flow would retry as if the network had failed."""
from __future__ import annotations

import gzip

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.runtime.inputs import InputError, read_rows


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


CASES = {
    "non-utf8-byte": ("in.jsonl", b'{"q": "a"}\n{"q": "caf\xe9"}\n', r"in\.jsonl: row 2: not UTF-8 text \(byte 0xe9 at byte 11\)"),
    "invalid-json": ("in.jsonl", b'{"q": "a"}\n{"q": \n', r"in\.jsonl: row 2: invalid JSON"),
    "not-an-object": ("in.jsonl", b'[1, 2]\n', r"in\.jsonl: row 1: expected a JSON object, got list"),
    "corrupt-gzip": ("in.jsonl.gz", b"this is not gzip at all\n", r"in\.jsonl\.gz: row 1: corrupt gzip file"),
    "truncated-gzip": ("in.jsonl.gz", gzip.compress(b'{"q": "a"}\n' * 1000)[:-40], r"in\.jsonl\.gz: row \d+: corrupt gzip file"),
    "corrupt-parquet": ("in.parquet", b"PAR1 not really", r"in\.parquet: not a readable Parquet file"),
    "unsupported": ("in.csv", b"a,b\n", r"in\.csv: unsupported format"),
}


@pytest.mark.parametrize(("name", "data", "message"), CASES.values(), ids=CASES.keys())
def test_unreadable_inputs_are_one_clear_error(tmp_path, name, data, message):
    path = _write(tmp_path / name, data)
    with pytest.raises(InputError, match=message):
        list(read_rows(path))


def test_a_folder_is_not_retried_as_a_file(tmp_path):
    (tmp_path / "in.jsonl").mkdir()
    with pytest.raises(InputError, match=r"in\.jsonl: is a folder, not a file"):
        list(read_rows(tmp_path / "in.jsonl"))


def test_good_inputs_read_with_their_row_numbers(tmp_path):
    plain = _write(tmp_path / "a.jsonl", b'{"q": "caf\xc3\xa9"}\n\n{"q": "b"}\r\n')
    packed = _write(tmp_path / "a.jsonl.gz", gzip.compress(plain.read_bytes()))
    for path in (plain, packed):
        assert list(read_rows(path)) == [(1, {"q": "café"}), (3, {"q": "b"})]
    pq.write_table(pa.table({"q": ["x", "y"]}), tmp_path / "a.parquet")
    assert list(read_rows(tmp_path / "a.parquet")) == [(1, {"q": "x"}), (2, {"q": "y"})]
