"""Prefect tasks of the cot-rewrites flow: load -> plan -> generate/verify/label -> write -> summarize.
Thin: they wire the pure logic of tasks/cot_rewrites.py to Ray and the table store.

`generate_rewrites` adds a lazy Ray Data LLM stage (generate, parse, verify and — with step labels —
label, all in the engine actor); `write_records` runs the stream and commits each finished batch
atomically, so a crash loses at most the batches in flight and a rerun does only what is missing.
"""
from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone
from functools import partial

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from schemas.tables import COT_REWRITES

from . import cot_rewrites as cr
from .datadir import DataDir
from .engines.base import EngineSpec
from .math_programs_tasks import _transient_io_error
from .ray_stage import iter_row_batches, llm_stage, rows_dataset
from .runs import RunState, write_run
from .store import TableStore


@task(retries=2, retry_delay_seconds=2, retry_condition_fn=_transient_io_error, cache_policy=NO_CACHE)
def load_items(path: str, config: cr.CotRewritesConfig, limit: int | None) -> list[dict]:
    return cr.load_items(path, config, limit)


@task(cache_policy=NO_CACHE)
def plan_items(items: list[dict], data_dir: str, config_hash: str) -> list[dict]:
    """Items with no committed records under this config yet."""
    done = TableStore(data_dir, COT_REWRITES).committed_keys(["source_id"], config_hash=config_hash)
    return [item for item in items if (item["source_id"],) not in done]


@task(cache_policy=NO_CACHE)
def generate_rewrites(items: list[dict], engine_spec: EngineSpec, config: cr.CotRewritesConfig,
                      batch_size: int, pool_size: int):
    """Lazy LLM stage: rewrites per item, verified (and labelled) inside the engine actor."""
    ds = rows_dataset(items, rows_per_block=batch_size)
    return llm_stage(ds, engine_spec, partial(cr.generate_rewrites, config=config),
                     batch_size=batch_size, pool_size=pool_size)


@task(cache_policy=NO_CACHE)
def write_records(ds, data_dir: str, run: RunState, config: cr.CotRewritesConfig, config_hash: str) -> Counter:
    """Run the stream; commit each finished batch of items as one Parquet file; count outcomes."""
    store = TableStore(data_dir, COT_REWRITES)
    stats = Counter()
    lineage = {"run_id": run.run_id, "model": run.model, "engine": run.engine,
               "config_hash": config_hash, "max_tokens": config.max_tokens}
    for items in iter_row_batches(ds):
        created_at = datetime.now(timezone.utc)
        records = [r for item in items for r in cr.to_records(item, {**lineage, "created_at": created_at},
                                                              config.templates)]
        store.commit(records, run.run_id)
        stats["items"] += len(items)
        stats["items_with_kept"] += sum(any(r["kept"] for r in item["rewrites"]) for item in items)
        stats["records"] += len(records)
        for r in records:
            stats["tokens"] += r["completion_tokens"] or 0
            stats["kept" if r["kept"] else f"rejected_{r['rejection_reason']}"] += 1
            stats[f"route_{r['route']}"] += 1
            if r["label_status"]:
                stats[f"label_{r['label_status']}"] += 1
                stats["label_continuations"] += r["label_continuations"] or 0
    return stats


@task(cache_policy=NO_CACHE)
def summarize(run: RunState, data_dir: str, stats: Counter) -> dict:
    """Fold the counts into the run row, write it, publish a Prefect table artifact."""
    run.rows_out += stats.get("records", 0)
    run.tokens_generated += stats.get("tokens", 0)
    for key, value in stats.items():
        if key.startswith("rejected_"):
            run.dropped[key.removeprefix("rejected_")] += value
        elif key not in ("records", "tokens"):
            run.counts[key] += value
    write_run(data_dir, run.finish("completed"))
    rows = [{"metric": k, "value": v} for k, v in
            [("run_id", run.run_id), ("rows_in", run.rows_in), ("rows_skipped", run.rows_skipped),
             ("rows_out", run.rows_out), ("tokens_generated", run.tokens_generated),
             *sorted(run.counts.items()), *[(f"rejected_{k}", v) for k, v in sorted(run.dropped.items())]]]
    create_table_artifact(key="cot-rewrites-counts", table=rows,
                          description=f"cot-rewrites run {run.run_id} ({DataDir(data_dir)})")
    return run.to_row()
