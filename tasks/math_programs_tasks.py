"""Prefect tasks of the math-programs flow: load -> plan a pass -> generate -> execute/verify ->
write -> summarize. Each task is small and wires the pure logic in tasks/math_programs.py to Ray
and the table store; the flow (flows/math_programs.py) only calls them in order.

`generate_programs` and `execute_programs` add lazy Ray Data stages; `write_records` runs the
stream and commits each finished batch atomically, so a crash loses at most the batches in flight.
"""
from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone
from functools import partial

import pyarrow.dataset as pads
from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from schemas.tables import MATH_PROGRAMS

from . import math_programs as mp
from .datadir import DataDir
from .engines.base import EngineSpec
from .inputs import InputError
from .ray_stage import cpu_stage, iter_row_batches, llm_stage, rows_dataset
from .retrieval import top_k_similar
from .runs import RunState, write_run
from .store import TableStore


def _transient_io_error(task, task_run, state) -> bool:
    """Retry reads that failed on I/O (a flaky network filesystem), never on bad input."""
    try:
        state.result()
    except InputError:
        return False
    except OSError:
        return True
    except Exception:  # noqa: BLE001 - anything else is not transient
        return False
    return False


@task(retries=2, retry_delay_seconds=2, retry_condition_fn=_transient_io_error, cache_policy=NO_CACHE)
def load_problems(path: str, limit: int | None) -> list[dict]:
    return mp.load_problems(path, limit)


@task(cache_policy=NO_CACHE)
def plan_fixed_pass(problems: list[dict], data_dir: str, config: mp.MathProgramsConfig,
                    config_hash: str) -> list[dict]:
    """Problems with no committed fixed-pass records yet, with the fixed exemplars attached."""
    done = TableStore(data_dir, MATH_PROGRAMS).committed_keys(["source_id"], config_hash=config_hash, **{"pass": "fixed"})
    exemplars = list(mp.fixed_exemplars()[: config.n_exemplars])
    return [{**p, "pass": "fixed", "exemplars": exemplars} for p in problems if (p["source_id"],) not in done]


@task(cache_policy=NO_CACHE)
def plan_dynamic_pass(problems: list[dict], data_dir: str, config: mp.MathProgramsConfig,
                      config_hash: str) -> tuple[list[dict], int]:
    """Problems still unsolved after the fixed pass and without dynamic records, each with the
    top-k most similar verified problems (BM25 over their questions) as exemplars.
    Returns (planned problems, unsolved problems skipped for want of any verified exemplar)."""
    store = TableStore(data_dir, MATH_PROGRAMS)
    solved = store.committed_keys(["source_id"], config_hash=config_hash, correct=True)
    dynamic_done = store.committed_keys(["source_id"], config_hash=config_hash, **{"pass": "dynamic"})
    unsolved = [p for p in problems if (p["source_id"],) not in solved | dynamic_done]
    if not unsolved:
        return [], 0
    verified = store.read(columns=["source_id", "question", "program", "pass", "attempt"],
                          filter=pads.field("correct"))
    pool: dict[str, dict] = {}
    for row in sorted(verified.to_pylist(), key=lambda r: (r["pass"] != "fixed", r["attempt"])):
        pool.setdefault(row["source_id"], {"id": row["source_id"], "question": row["question"], "program": row["program"]})
    pool_rows = list(pool.values())
    if not pool_rows:
        return [], len(unsolved)
    ranked = top_k_similar([p["question"] for p in unsolved], [e["question"] for e in pool_rows], config.n_exemplars)
    # Most similar exemplar last, right before the question.
    return [{**p, "pass": "dynamic", "exemplars": [pool_rows[i] for i in reversed(idx)]}
            for p, idx in zip(unsolved, ranked)], 0


@task(cache_policy=NO_CACHE)
def generate_programs(problems: list[dict], engine_spec: EngineSpec, config: mp.MathProgramsConfig,
                      batch_size: int, pool_size: int):
    """Lazy LLM stage: a pool of engine actors writes k programs per problem."""
    ds = rows_dataset(problems, rows_per_block=batch_size)
    return llm_stage(ds, engine_spec, partial(mp.generate_attempts, config=config),
                     batch_size=batch_size, pool_size=pool_size)


@task(cache_policy=NO_CACHE)
def execute_programs(ds, config: mp.MathProgramsConfig, batch_size: int):
    """Lazy CPU stage: every program runs in the sandbox and is checked against the gold answer."""
    return cpu_stage(ds, partial(mp.execute_attempts, config=config), batch_size=batch_size)


@task(cache_policy=NO_CACHE)
def write_records(ds, data_dir: str, run: RunState, config: mp.MathProgramsConfig, config_hash: str) -> dict:
    """Run the stream; commit each finished batch of problems as one Parquet file."""
    store = TableStore(data_dir, MATH_PROGRAMS)
    stats = Counter()
    lineage = {"run_id": run.run_id, "model": run.model, "engine": run.engine,
               "config_hash": config_hash, "max_tokens": config.max_tokens}
    for problems in iter_row_batches(ds):
        created_at = datetime.now(timezone.utc)
        records = [r for p in problems for r in mp.to_records(p, {**lineage, "created_at": created_at})]
        store.commit(records, run.run_id)
        stats["problems"] += len(problems)
        stats["problems_solved"] += sum(any(a["correct"] for a in p["attempts"]) for p in problems)
        stats["records"] += len(records)
        stats["tokens"] += sum(r["completion_tokens"] or 0 for r in records)
        for r in records:
            stats[f"status_{r['exec_status']}"] += 1
    return dict(stats)


@task(cache_policy=NO_CACHE)
def summarize(run: RunState, data_dir: str, pass_stats: dict[str, dict]) -> dict:
    """Fold the passes' counts into the run row, write it, publish a Prefect table artifact."""
    for pass_name, stats in pass_stats.items():
        run.rows_out += stats.get("records", 0)
        run.tokens_generated += stats.get("tokens", 0)
        run.counts[f"{pass_name}_problems"] += stats.get("problems", 0)
        run.counts[f"{pass_name}_solved"] += stats.get("problems_solved", 0)
        for key, value in stats.items():
            if key.startswith("status_"):
                status = key.removeprefix("status_")
                run.counts[f"attempts_{status}"] += value
                if status != "ok":
                    run.dropped[status] += value
    run.counts["verified_programs"] = run.counts.get("attempts_ok", 0)
    write_run(data_dir, run.finish("completed"))
    rows = [{"metric": k, "value": v} for k, v in
            [("run_id", run.run_id), ("rows_in", run.rows_in), ("rows_skipped", run.rows_skipped),
             ("rows_out", run.rows_out), ("tokens_generated", run.tokens_generated),
             *sorted(run.counts.items()), *[(f"dropped_{k}", v) for k, v in sorted(run.dropped.items())]]]
    create_table_artifact(key="math-programs-counts", table=rows,
                          description=f"math-programs run {run.run_id} ({DataDir(data_dir)})")
    return run.to_row()
