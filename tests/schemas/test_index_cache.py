"""Proves the index cache: an entry is built once and then reused, keys follow the content (a changed
text, a reordered corpus, a moved boundary between parts are different keys), a damaged entry (a
changed file, a missing manifest, a half-built folder) is never used but set aside and rebuilt, and a
failed build leaves nothing behind."""
from __future__ import annotations

import json

import pytest

from schemas.index_cache import MANIFEST, IndexCache, content_key


def _writer(calls):
    def build(folder):
        calls.append(folder)
        (folder / "data.bin").write_bytes(b"x" * 1000)
        (folder / "sub").mkdir()
        (folder / "sub" / "vocab.json").write_text('{"a": 1}')
    return build


def test_built_once_then_reused(tmp_path):
    cache, calls = IndexCache(tmp_path), []
    folder, built = cache.get_or_build("bm25", "k1", _writer(calls))
    assert built and folder == tmp_path / "bm25" / "k1" and len(calls) == 1
    manifest = json.loads((folder / MANIFEST).read_text())
    assert set(manifest["files"]) == {"data.bin", "sub/vocab.json"} and manifest["files"]["data.bin"]["bytes"] == 1000
    again, built = cache.get_or_build("bm25", "k1", _writer(calls))
    assert again == folder and not built and len(calls) == 1
    assert sorted(p.name for p in (tmp_path / "bm25").iterdir()) == ["k1"]  # no temporary folder left


def test_keys_follow_the_content():
    ids, texts = ["a", "b"], ["first text", "second text"]
    key = content_key("bm25", "bm25s 0.3", ids, texts)
    assert key == content_key("bm25", "bm25s 0.3", list(ids), list(texts))
    assert key != content_key("bm25", "bm25s 0.3", ids, ["first text", "second text!"])
    assert key != content_key("bm25", "bm25s 0.3", ids[::-1], texts[::-1])
    assert key != content_key("bm25", "bm25s 0.4", ids, texts)
    assert content_key(["ab", "c"]) != content_key(["a", "bc"])
    assert content_key("x", ["a"]) != content_key(["x", "a"])


@pytest.mark.parametrize("damage", ["changed file", "truncated file", "no manifest", "bad manifest", "missing file"])
def test_a_damaged_entry_is_set_aside_and_rebuilt(tmp_path, damage):
    cache, calls = IndexCache(tmp_path), []
    folder, _ = cache.get_or_build("dense", "k", _writer(calls))
    if damage == "changed file":
        (folder / "data.bin").write_bytes(b"y" * 1000)
    elif damage == "truncated file":
        (folder / "data.bin").write_bytes(b"x" * 10)
    elif damage == "no manifest":
        (folder / MANIFEST).unlink()
    elif damage == "bad manifest":
        (folder / MANIFEST).write_text("{not json")
    else:
        (folder / "sub" / "vocab.json").unlink()
    assert cache.get("dense", "k") is None
    folder, built = cache.get_or_build("dense", "k", _writer(calls))
    assert built and len(calls) == 2 and (folder / "data.bin").read_bytes() == b"x" * 1000
    assert cache.get("dense", "k") == folder
    assert len([p for p in (tmp_path / "dense").iterdir() if p.name.startswith(".damaged-")]) == 1


def test_a_failed_build_leaves_nothing(tmp_path):
    cache = IndexCache(tmp_path)

    def broken(folder):
        (folder / "half.bin").write_bytes(b"1")
        raise RuntimeError("encoder crashed")

    with pytest.raises(RuntimeError, match="encoder crashed"):
        cache.get_or_build("bm25", "k", broken)
    assert list((tmp_path / "bm25").iterdir()) == []
    assert cache.get("bm25", "k") is None


def test_where_the_cache_lives(tmp_path, monkeypatch):
    assert IndexCache.for_data_dir(tmp_path / "datasets").root == (tmp_path / "datasets" / "indexes").resolve()
    monkeypatch.setenv("DATAGEN_CACHE", str(tmp_path / "cache"))
    assert IndexCache.for_data_dir("memory://bucket/datasets").root == tmp_path / "cache" / "indexes"
