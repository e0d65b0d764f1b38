"""Where the tables live: a local path, a shared filesystem, or an object-store / fsspec URI.

A data dir is what `--data-dir` names: `./datasets`, `/mnt/shared/datasets`, `s3://bucket/datasets`,
`gs://bucket/datasets`, or any URI an installed fsspec implementation knows (`memory://`, `az://`,
...). S3, GCS, HDFS and Azure go through pyarrow's native filesystems (credentials and endpoint from
the usual environment: AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, GOOGLE_APPLICATION_CREDENTIALS, ...);
other schemes through fsspec wrapped as a pyarrow filesystem. Everything that reads or writes a data
dir (TableStore, the runs table, the DuckDB catalog, a recipe's pairs files) goes through this class.

Writes are atomic everywhere: on a POSIX filesystem a hidden temporary file is renamed into place;
an object store makes an object visible only once its upload completes, so it is written in place.

Example:
    d = DataDir("s3://my-bucket/datasets")
    d.write_parquet(table, d.join("math_programs", "run_id=r1", "part-0.parquet"))
    d.list_files(d.join("math_programs"))      # ['my-bucket/datasets/math_programs/run_id=r1/part-0.parquet']
    d.url(d.join("math_programs"))             # 's3://my-bucket/datasets/math_programs'
    write_rows(rows, "exports/sft.jsonl")         # an export file (JSONL, or Parquet by suffix), atomically
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

# Schemes pyarrow implements itself; the rest go through fsspec.
_NATIVE_SCHEMES = {"s3", "gs", "gcs", "hdfs", "abfs", "abfss"}
# Filesystems where an object appears whole or not at all: no temp-and-rename needed.
_OBJECT_STORES = {"s3", "gcs", "abfs", "memory"}


def is_uri(where: str | os.PathLike) -> bool:
    text = os.fspath(where)
    return "://" in text and not text.startswith("file://")


class DataDir:
    def __init__(self, where: str | os.PathLike | "DataDir"):
        if isinstance(where, DataDir):
            self.__dict__.update(where.__dict__)
            return
        text = os.fspath(where)
        self.uri = text
        if not is_uri(text):
            self.scheme, self.fs = "", pafs.LocalFileSystem()
            self.root = str(Path(text.removeprefix("file://")).expanduser().resolve())
            return
        self.scheme = text.split("://", 1)[0].lower()
        self.fs, root = _filesystem(text, self.scheme)
        self.root = root.rstrip("/")

    @property
    def local(self) -> bool:
        return not self.scheme

    @property
    def fsspec(self):
        """The fsspec filesystem behind a data dir that is not native to pyarrow, else None."""
        return self.fs.handler.fs if isinstance(self.fs, pafs.PyFileSystem) else None

    def join(self, *parts: str) -> str:
        return "/".join([self.root, *(p.strip("/") for p in parts)])

    def url(self, path: str | None = None) -> str:
        """`path` (default: the root) as the user would write it: a local path or `scheme://...`."""
        path = self.root if path is None else path
        return path if self.local else f"{self.scheme}://{path}"

    def __str__(self) -> str:
        return self.url()

    def exists(self, path: str | None = None) -> bool:
        return self.fs.get_file_info(self.root if path is None else path).type != pafs.FileType.NotFound

    def list_files(self, under: str, suffix: str = ".parquet") -> list[str]:
        """Committed files below `under`, sorted; hidden names (temporary files) are not committed."""
        info = self.fs.get_file_info(under)
        if info.type != pafs.FileType.Directory:
            return []
        found = self.fs.get_file_info(pafs.FileSelector(under, recursive=True, allow_not_found=True))
        return sorted(f.path for f in found if f.type == pafs.FileType.File and f.base_name.endswith(suffix)
                      and not f.base_name.startswith("."))

    def list_dirs(self, under: str | None = None) -> list[str]:
        """Names of the folders directly below `under` (default: the root), sorted; hidden ones left out."""
        under = self.root if under is None else under
        if self.fs.get_file_info(under).type != pafs.FileType.Directory:
            return []
        found = self.fs.get_file_info(pafs.FileSelector(under, recursive=False, allow_not_found=True))
        return sorted(f.base_name for f in found if f.type == pafs.FileType.Directory and not f.base_name.startswith((".", "_")))

    def write_bytes(self, data: bytes, path: str) -> str:
        self._atomic(path, lambda target: self._put(target, data))
        return path

    def write_parquet(self, table: pa.Table, path: str) -> str:
        self._atomic(path, lambda target: pq.write_table(table, target, filesystem=self.fs, compression="zstd"))
        return path

    def read_bytes(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as fh:
            return fh.read()

    def _put(self, target: str, data: bytes) -> None:
        with self.fs.open_output_stream(target) as fh:
            fh.write(data)

    def _atomic(self, path: str, write) -> None:
        parent = path.rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)
        if self._kind() in _OBJECT_STORES:
            write(path)
            return
        name = path.rsplit("/", 1)[1]
        tmp = f"{parent}/.{name}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            write(tmp)
            if self.local:
                with open(tmp, "rb") as fh:
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
            else:
                self.fs.move(tmp, path)
        finally:
            if self.fs.get_file_info(tmp).type != pafs.FileType.NotFound:
                self.fs.delete_file(tmp)

    def _kind(self) -> str:
        if self.fsspec is not None:
            protocol = getattr(self.fsspec, "protocol", "")
            protocol = protocol[0] if isinstance(protocol, (tuple, list)) else protocol
            return {"s3a": "s3", "gs": "gcs", "az": "abfs", "abfss": "abfs"}.get(protocol, protocol)
        return self.fs.type_name


def _filesystem(uri: str, scheme: str) -> tuple[pafs.FileSystem, str]:
    if scheme in _NATIVE_SCHEMES:
        try:
            return pafs.FileSystem.from_uri(uri)
        except (pa.ArrowNotImplementedError, ImportError):  # pyarrow built without it: try fsspec
            pass
    try:
        import fsspec
    except ImportError:
        raise ValueError(f"data dir {uri}: scheme {scheme}:// needs fsspec (pip install fsspec)") from None
    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as exc:
        raise ValueError(f"data dir {uri}: no filesystem for {scheme}:// ({exc})") from None
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def write_rows(rows: list[dict], out: str, schema: pa.Schema | None = None) -> str:
    """`rows` to the file `out` (a path or a URI): JSONL, or Parquet (with `schema`, else inferred) when
    it ends in .parquet; written atomically. Returns the path as the user would write it."""
    parent, _, name = str(out).rpartition("/")
    d = DataDir(parent or ".")
    path = d.join(name)
    if name.endswith(".parquet"):
        d.write_parquet(pa.Table.from_pylist(rows, schema=schema), path)
    else:
        d.write_bytes("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode(), path)
    return d.url(path)
