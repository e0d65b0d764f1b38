"""Built-once artifacts keyed by their content: the retrieval filter's BM25 indexes and corpus vectors.

An entry is a folder `<root>/<kind>/<key>/` whose `manifest.json` (written last) lists every file with
its size and sha256. It is built in a temporary folder beside it and renamed into place, so a reader
sees a whole entry or none; an entry whose manifest is missing, unreadable or disagrees with its files
(a crash mid-copy, a disk error, a hand edit) is moved aside and rebuilt, never used.

The key is the caller's: a hash of everything the artifact depends on (`content_key`), e.g. the
corpus's ids and texts in order, the model and the library version. Change any of them and the entry
is a different folder; old entries stay until removed (`rm -r <root>/<kind>`).

Where: `<data_dir>/indexes` for a local data dir; for an object-store data dir (s3://, gs://, ...)
the machine's cache, `$DATAGEN_CACHE` or `~/.cache/datagen/indexes` (indexes are read with mmap and
numpy, which want local files; a cluster's driver builds its own once).

    cache = IndexCache.for_data_dir("./datasets")
    key = content_key("bm25", "bm25s 0.3.16", ids, texts)
    folder, built = cache.get_or_build("bm25", key, lambda out: retriever.save(out))
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Callable, Iterable

MANIFEST = "manifest.json"


def content_key(*parts: str | Iterable[str]) -> str:
    """sha256 over the parts in order (strings, or iterables of strings), each item length-prefixed so
    that ("ab", "c") and ("a", "bc") differ."""
    digest = hashlib.sha256()
    for part in parts:
        for item in ([part] if isinstance(part, str) else part):
            data = item.encode("utf-8", "surrogatepass")
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
        digest.update(b"\x00part")
    return digest.hexdigest()[:32]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class IndexCache:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    @classmethod
    def for_data_dir(cls, data_dir) -> "IndexCache":
        from .datadir import DataDir

        where = DataDir(data_dir)
        if where.local:
            return cls(Path(where.root) / "indexes")
        return cls(Path(os.environ.get("DATAGEN_CACHE") or Path.home() / ".cache" / "datagen") / "indexes")

    def folder(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def get(self, kind: str, key: str) -> Path | None:
        """The entry's folder when it is whole (every file in its manifest, same size and sha256), else
        None; a damaged entry is moved aside (`.damaged-*`) so the next build can take its place."""
        folder = self.folder(kind, key)
        if not folder.is_dir():
            return None
        if self._valid(folder):
            return folder
        folder.rename(folder.with_name(f".damaged-{key}-{uuid.uuid4().hex[:8]}"))
        return None

    def get_or_build(self, kind: str, key: str, build: Callable[[Path], None]) -> tuple[Path, bool]:
        """(the entry's folder, whether it was built now). `build(folder)` writes the files into an
        empty temporary folder; the manifest and the rename are done here."""
        if (found := self.get(kind, key)) is not None:
            return found, False
        final = self.folder(kind, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".tmp-{key}-{uuid.uuid4().hex[:8]}")
        tmp.mkdir()
        try:
            build(tmp)
            files = {str(p.relative_to(tmp)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
                     for p in sorted(tmp.rglob("*")) if p.is_file()}
            manifest = {"kind": kind, "key": key, "created_at": time.time(), "files": files}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
            try:
                tmp.rename(final)
            except OSError:  # another process built it first: theirs is as good as ours
                if self._valid(final):
                    shutil.rmtree(tmp, ignore_errors=True)
                    return final, False
                raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final, True

    @staticmethod
    def _valid(folder: Path) -> bool:
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
            for name, meta in manifest["files"].items():
                path = folder / name
                if path.stat().st_size != meta["bytes"] or _sha256(path) != meta["sha256"]:
                    return False
            return True
        except (OSError, ValueError, KeyError, TypeError):
            return False
