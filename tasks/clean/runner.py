"""A cleaning step as a run: its row in `runs` (flow `clean-decontaminate` / `clean-dedup`, its settings,
counts and status), the check itself, the DuckDB catalog refreshed (so `<table>_clean` views appear).

    summary = clean_table("./datasets", "decontaminate", "cot_rewrites",
                          DecontaminationSettings(), against=["data/math500/test500.jsonl"])
    summary["run_id"], summary["counts"]   # {"ngram_checked": 30, "ngram_contaminated": 30}
    summary["source_runs"]                 # the generator runs whose records were checked (their cards change)
"""
from __future__ import annotations

import dataclasses
from collections import Counter

from schemas.catalog import refresh_catalog
from tasks.runtime.runs import RunState, write_run

from .decontaminate import DecontaminationSettings, decontaminate
from .dedup import DedupSettings, dedup

KINDS = ("decontaminate", "dedup")


def clean_table(data_dir, kind: str, table: str, settings: DecontaminationSettings | DedupSettings,
                against: list[str] | None = None, log=print) -> dict:
    """Run one cleaning step on `table`, recorded as a run; a failure is recorded, then raised."""
    if kind not in KINDS:
        raise ValueError(f"unknown cleaning step {kind!r} (one of {', '.join(KINDS)})")
    parameters = {"data_dir": str(data_dir), "table": table, **dataclasses.asdict(settings)}
    if against is not None:
        parameters["against"] = list(against)
    embedding = kind == "decontaminate" and settings.embedding
    run = RunState.start(f"clean-{kind}", parameters, model="all-MiniLM-L6-v2" if embedding else "none", engine="cpu")
    try:
        if kind == "decontaminate":
            if not against:
                raise ValueError("decontaminate needs at least one evaluation file (--against)")
            summary = decontaminate(data_dir, table, list(against), settings, run.run_id, log=log)
            run.rows_skipped = min((c["already_checked"] for c in summary["checks"]), default=0)
            run.counts = Counter(summary["counts"])
            run.rows_out = sum(c["checked"] for c in summary["checks"])
        else:
            summary = dedup(data_dir, table, settings, run.run_id, log=log)
            run.rows_skipped = summary["already_checked"]
            run.counts = Counter({k: summary[k] for k in ("checked", "duplicates", "exact", "near")})
            run.rows_out = summary["checked"]
        run.rows_in = summary["records"]
    except BaseException as exc:
        write_run(data_dir, run.finish("failed", f"{type(exc).__name__}: {exc}"))
        raise
    write_run(data_dir, run.finish("completed"))
    _compact(data_dir, kind, run.run_id)
    refresh_catalog(data_dir)
    return {**summary, "run_id": run.run_id, "kind": kind}


def _compact(data_dir, kind: str, run_id: str) -> None:
    """The step's parts (one per checked batch) merged into one, as a generator's run does at its end; on
    an object store, or if it fails, they stay as they are (`datagen compact` can do it later)."""
    from schemas.store import CompactionUnsupported, TableStore
    from schemas.tables import CONTAMINATION, DUPLICATES

    try:
        TableStore(data_dir, CONTAMINATION if kind == "decontaminate" else DUPLICATES).compact([run_id])
    except (CompactionUnsupported, OSError, RuntimeError):
        pass
