"""Text normalisation and hashed word n-grams, vectorised over a batch of texts (pure functions).

Normalised text: Unicode NFKC, lowercase, every run of characters that are not letters or digits
(punctuation, LaTeX backslashes and braces, newlines, tabs, spaces) folded into one space; numbers are
kept as words. So an item split over short lines, re-indented, re-cased or re-punctuated reads the
same (marin #6852: per-line n-gram checks miss contamination split across short lines).

    normalize("Natalia sold clips\\nto 48 of her friends, in April!")  # 'natalia sold clips to 48 of her friends in april'
    normalize(r"Compute $\\dbinom{31}{28}$.")                            # 'compute dbinom 31 28'

Words are hashed to 64 bits (blake2b, stable across processes and machines) and an n-gram is a
polynomial hash of its n word hashes, mixed with its length, so n-grams of different lengths do not
collide. Everything works on a whole batch at once (Arrow string kernels, numpy), so a million-row
table is hashed in seconds per batch, not per row:

    grams = ngram_hashes(token_hashes(["a b c d", "e f"]), 3)
    grams.values, grams.rows      # uint64 hashes of "a b c", "b c d"; their text index [0, 0]
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Not a letter or a digit (RE2 classes, as Arrow's kernels take them): folded into one space.
_FOLD = r"[^\p{L}\p{N}]+"
_MULTIPLIER = np.uint64(0x100000001B3)  # FNV-64 prime: the polynomial's base


def normalize_array(texts) -> pa.Array:
    """Normalised strings of an Arrow / Python sequence of texts (null stays null)."""
    array = texts if isinstance(texts, (pa.Array, pa.ChunkedArray)) else pa.array(list(texts), pa.string())
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if pa.types.is_large_string(array.type):
        array = array.cast(pa.string())
    array = pc.utf8_normalize(array, "NFKC")
    array = pc.replace_substring_regex(pc.utf8_lower(array), _FOLD, " ")
    return pc.utf8_trim_whitespace(array)


def normalize(text: str) -> str:
    """One text, normalised as `normalize_array` does it."""
    return normalize_array([text])[0].as_py()


def words(text: str) -> list[str]:
    return normalize(text).split()


@dataclass
class Hashed:
    """Hashed words (or n-grams) of a batch of texts, flat: `values[i]` belongs to text `rows[i]`;
    `offsets[t]:offsets[t+1]` are text t's entries (in order, for words)."""

    values: np.ndarray  # uint64
    rows: np.ndarray  # int64, the text index of each value
    offsets: np.ndarray  # int64, len = texts + 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def token_hashes(texts) -> Hashed:
    """64-bit hashes of the normalised words of each text (a null or blank text has none)."""
    normal = normalize_array(texts)
    normal = pc.if_else(pc.equal(normal, ""), pa.scalar(None, pa.string()), normal)
    split = pc.utf8_split_whitespace(normal)
    lengths = pc.fill_null(pc.list_value_length(split), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = pc.list_flatten(split)
    if len(flat) == 0:
        return Hashed(np.zeros(0, np.uint64), np.zeros(0, np.int64), offsets)
    encoded = flat.dictionary_encode()  # hash each distinct word once per batch
    vocabulary = encoded.dictionary.to_pylist()
    table = np.fromiter((_word_hash(w) for w in vocabulary), dtype=np.uint64, count=len(vocabulary))
    values = table[encoded.indices.to_numpy(zero_copy_only=False)]
    rows = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    return Hashed(values, rows, offsets)


def _word_hash(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads the polynomial's bits (uint64, wrapping)."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def ngram_hashes(tokens: Hashed, n: int) -> Hashed:
    """Hashes of every run of `n` consecutive words inside each text (none for a text shorter than n)."""
    total = len(tokens.values)
    if total < n:
        return Hashed(np.zeros(0, np.uint64), np.zeros(0, np.int64), np.zeros(len(tokens.offsets), np.int64))
    starts = total - n + 1
    acc = np.zeros(starts, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            acc = acc * _MULTIPLIER + tokens.values[j:j + starts]
    acc = _mix(acc ^ np.uint64(n))
    row = tokens.rows[:starts]
    valid = np.arange(starts, dtype=np.int64) + n <= tokens.offsets[row + 1]
    values, rows = acc[valid], row[valid]
    counts = np.bincount(rows, minlength=len(tokens.offsets) - 1)
    return Hashed(values, rows, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))


def whole_hashes(tokens: Hashed) -> np.ndarray:
    """One hash per text of all its words in order (0 for a text with none): what `ngram_hashes` gives
    with n = the text's length, i.e. the one n-gram a short eval item is matched by. One numpy pass per
    distinct length: for short texts (NgramIndex gets the same values from `ngram_hashes`)."""
    out = np.zeros(len(tokens.offsets) - 1, dtype=np.uint64)
    lengths = tokens.lengths
    for length in np.unique(lengths[lengths > 0]):
        texts = np.flatnonzero(lengths == length)
        acc = np.zeros(len(texts), dtype=np.uint64)
        with np.errstate(over="ignore"):
            for j in range(int(length)):
                acc = acc * _MULTIPLIER + tokens.values[tokens.offsets[texts] + j]
        out[texts] = _mix(acc ^ np.uint64(length))
    return out
