"""Prefect tasks of the preference-labels flow: load -> plan (skip committed pairs) -> [sample
candidates] -> label -> write -> summarize. Each task wires the pure logic in
tasks/preference_labels.py to Ray and the table store; the flow only calls them in order.

The Ray rows are prompt groups (a prompt with all its pairs), so a prompt's reference is generated
once, in one batch, and reused by all its pairs. `write_records` commits each finished block of
groups atomically: a crash loses at most the batches in flight, and a rerun labels only what is missing.
"""
from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone
from functools import partial

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from schemas.tables import PREFERENCE_LABELS

from . import preference_labels as pl
from .datadir import DataDir
from .engines.base import Engine, EngineSpec
from .math_programs_tasks import _transient_io_error
from .ray_stage import iter_row_batches, llm_stage, rows_dataset
from .runs import RunState, write_run
from .store import TableStore


@task(retries=2, retry_delay_seconds=2, retry_condition_fn=_transient_io_error, cache_policy=NO_CACHE)
def load_pairs(path: str, limit: int | None) -> tuple[list[dict], list[dict]]:
    return pl.load_pairs(path, limit)


@task(retries=2, retry_delay_seconds=2, retry_condition_fn=_transient_io_error, cache_policy=NO_CACHE)
def load_prompts(path: str, limit: int | None) -> list[dict]:
    return pl.load_prompts(path, limit)


@task(cache_policy=NO_CACHE)
def plan_pairs(pairs: list[dict], data_dir: str, config_hash: str) -> list[dict]:
    """Prompt groups of the pairs with no committed record under this config."""
    done = TableStore(data_dir, PREFERENCE_LABELS).committed_keys(["source_id"], config_hash=config_hash)
    return pl.group_by_prompt([p for p in pairs if (p["source_id"],) not in done])


@task(cache_policy=NO_CACHE)
def plan_prompts(prompts: list[dict], data_dir: str, config_hash: str) -> list[dict]:
    """Prompts none of whose candidate pairs (ids `<prompt id>/c<i>-c<j>`) is committed under this config."""
    done = TableStore(data_dir, PREFERENCE_LABELS).committed_keys(["source_id"], config_hash=config_hash)
    done_prompts = {sid.rsplit("/", 1)[0] for (sid,) in done}
    return [p for p in prompts if p["source_id"] not in done_prompts]


def sample_then_label(prompts: list[dict], engine: Engine, candidates: pl.CandidateConfig,
                      config: pl.PreferenceConfig) -> list[dict]:
    """One actor, one engine: the policy is the annotator's own model, so sample and label in place."""
    return pl.label_groups(pl.generate_candidates(prompts, engine, candidates), engine, config)


@task(cache_policy=NO_CACHE)
def label_stage(groups: list[dict], engine_spec: EngineSpec, config: pl.PreferenceConfig,
                batch_size: int, pool_size: int):
    """Lazy LLM stage over prompt groups: reference, critiques and verdicts."""
    ds = rows_dataset(groups, rows_per_block=batch_size)
    return llm_stage(ds, engine_spec, partial(pl.label_groups, config=config),
                     batch_size=batch_size, pool_size=pool_size)


@task(cache_policy=NO_CACHE)
def candidates_and_label_stage(prompts: list[dict], engine_spec: EngineSpec, policy_spec: EngineSpec,
                               candidates: pl.CandidateConfig, config: pl.PreferenceConfig,
                               batch_size: int, pool_size: int):
    """Lazy stages for `--prompts`: k candidates per prompt from the policy model, then labels. When the
    policy model is the annotator's, one actor does both with one engine; else two actor pools."""
    ds = rows_dataset(prompts, rows_per_block=batch_size)
    if policy_spec == engine_spec:
        return llm_stage(ds, engine_spec, partial(sample_then_label, candidates=candidates, config=config),
                         batch_size=batch_size, pool_size=pool_size)
    ds = llm_stage(ds, policy_spec, partial(pl.generate_candidates, config=candidates),
                   batch_size=batch_size, pool_size=pool_size)
    return llm_stage(ds, engine_spec, partial(pl.label_groups, config=config), batch_size=batch_size,
                     pool_size=pool_size)


@task(cache_policy=NO_CACHE)
def write_records(ds, data_dir: str, run: RunState, config: pl.PreferenceConfig, config_hash: str) -> dict:
    """Run the stream; commit each finished block of prompt groups as one Parquet file."""
    store = TableStore(data_dir, PREFERENCE_LABELS)
    stats, calls = Counter(), 0.0
    lineage = {"run_id": run.run_id, "model": run.model, "engine": run.engine, "config_hash": config_hash}
    for groups in iter_row_batches(ds):
        created_at = datetime.now(timezone.utc)
        records = [r for g in groups for r in pl.to_records(g, {**lineage, "created_at": created_at}, config)]
        store.commit(records, run.run_id)
        stats["prompts"] += len(groups)
        stats["references"] += sum(g.get("reference") is not None for g in groups)
        stats["candidate_tokens"] += sum(g.get("candidate_tokens", 0) for g in groups)
        stats["records"] += len(records)
        for r in records:
            stats[f"chosen_{r['chosen']}"] += 1
            stats["consistent"] += r["consistent"]
            stats["engine_requests"] += r["engine_requests"]
            stats["prompt_tokens"] += r["prompt_tokens"]
            stats["tokens"] += r["completion_tokens"]
            stats["truncated"] += bool(r["truncated"])
            calls += r["engine_calls_share"]
            for j in r["judgments"]:
                stats["judgments"] += 1
                stats[f"verdict_{j['verdict_source']}"] += 1
    stats["engine_calls"] = round(calls)
    return dict(stats)


@task(cache_policy=NO_CACHE)
def summarize(run: RunState, data_dir: str, stats: dict, rejects: list[dict]) -> dict:
    """Fold the counts into the run row, write it, publish a Prefect table artifact (with the rejects)."""
    run.rows_out += stats.get("records", 0)
    run.tokens_generated += stats.get("tokens", 0) + stats.get("candidate_tokens", 0)
    for key, value in stats.items():
        if key not in ("records", "tokens"):
            run.counts[key] += value
    for reject in rejects:
        run.dropped[reject["reason"]] += 1
    run.counts["verdicts_not_from_probs"] = stats.get("verdict_free_text", 0) + stats.get("verdict_none", 0)
    write_run(data_dir, run.finish("completed"))
    rows = [{"metric": k, "value": v} for k, v in
            [("run_id", run.run_id), ("rows_in", run.rows_in), ("rows_skipped", run.rows_skipped),
             ("rows_out", run.rows_out), ("tokens_generated", run.tokens_generated),
             *sorted(run.counts.items()), *[(f"dropped_{k}", v) for k, v in sorted(run.dropped.items())]]]
    rows += [{"metric": f"rejected {r['source_file']}: row {r['source_row']}", "value": r["reason"]} for r in rejects]
    create_table_artifact(key="preference-labels-counts", table=rows,
                          description=f"preference-labels run {run.run_id} ({DataDir(data_dir)})")
    return run.to_row()
