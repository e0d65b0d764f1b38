"""Proves the normalisation and hashing the cleaning steps share: case, punctuation, LaTeX markup,
newlines and indentation fold away while numbers stay; n-grams never cross from one text into the
next; the same words hash the same in any batch; an item shorter than n is one n-gram of its length;
the LSH bands for 0.8 are datasketch's 9 x 13 with equal weights, 14 x 9 weighting a miss 9 to 1."""
from __future__ import annotations

import numpy as np

from tasks.clean.dedup import lsh_params
from tasks.clean.normalize import ngram_hashes, normalize, token_hashes, whole_hashes


def test_normalize_folds_case_punctuation_markup_and_lines_but_keeps_numbers():
    assert normalize("Natalia sold clips\nto 48 of her\n\n   friends, in April!") == \
        "natalia sold clips to 48 of her friends in april"
    assert normalize(r"Compute $\dbinom{31}{28}$.") == "compute dbinom 31 28"
    assert normalize("# A farmer\n# collects 24 eggs") == normalize("a FARMER collects 24 eggs")
    assert normalize("3.5 and 35") == "3 5 and 35"  # digits are words: 3.5 is not 35
    assert normalize("Ｃａｆé") == "café"  # NFKC: full-width letters are letters


def test_ngrams_stay_inside_their_text_and_hash_the_same_in_any_batch():
    texts = ["a b c d", "e f", None, "", "x a b c"]
    grams = ngram_hashes(token_hashes(texts), 3)
    assert grams.rows.tolist() == [0, 0, 4, 4]  # none spans texts 0 and 1, none for short or empty texts
    assert grams.offsets.tolist() == [0, 2, 2, 2, 2, 4]
    assert grams.values[0] == grams.values[3]  # "a b c" in text 0 and in text 4
    again = ngram_hashes(token_hashes(["zz a b c"]), 3)
    assert grams.values[0] in again.values  # another batch, another vocabulary: same hash
    assert len(set(grams.values.tolist())) == 3


def test_an_item_shorter_than_n_is_one_gram_of_its_own_length():
    tokens = token_hashes(["x y z", "p x y z q"])
    whole = whole_hashes(tokens)
    assert whole[0] in ngram_hashes(tokens, 3).values[ngram_hashes(tokens, 3).rows == 1]
    assert whole[0] != whole[1]
    # a 3-gram and a 4-gram over the same words do not collide (the length is mixed in)
    assert not np.intersect1d(ngram_hashes(tokens, 3).values, ngram_hashes(tokens, 4).values).size


def test_lsh_bands_for_the_documented_threshold():
    assert lsh_params(0.8, 128, fn_weight=0.5) == (9, 13)  # datasketch's MinHashLSH(threshold=0.8)
    assert lsh_params(0.8, 128) == (14, 9)
    bands, rows = lsh_params(0.5, 128)
    assert bands * rows <= 128 and bands > 9
