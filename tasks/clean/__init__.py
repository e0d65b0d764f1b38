"""Clean data: decontamination against evaluation sets and near-duplicate removal, for every table.

    normalize.py      normalised text, hashed words and n-grams (pure, vectorised)
    scan.py           what each table's text fields are, and the records a check has not seen yet
                      (streamed from DuckDB in batches: memory stays flat)
    decontaminate.py  n-gram overlap (13-grams) with evaluation items, plus an optional MiniLM pass
                      for paraphrases -> the `contamination` table
    dedup.py          exact hashes and MinHash LSH clusters, one representative each -> `duplicates`

Nothing here rewrites a generator's files: results go to their own tables (schemas/tables.py), one
row per checked record and check, committed atomically per batch; a rerun checks only records no
row names yet. `<table>_clean` views (schemas/catalog.py) and the exports leave flagged records out.

    datagen clean decontaminate --data-dir ./datasets --table cot_rewrites --against data/math500/test500.jsonl
    datagen clean dedup --data-dir ./datasets --table math_programs
"""
