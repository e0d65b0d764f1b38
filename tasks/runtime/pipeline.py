"""The one runtime under every generator: load → plan → Ray stages → commit → counts → summary.

`run_generator(MathPrograms, settings)` is the whole body of a generator's Prefect flow. Each step
is a Prefect task, so the UI's task timings show where a run's time goes:

    load-<generator>        read and check the input (retried on I/O errors, never on bad input)
    plan-<pass>             what is not committed yet under this config (the table is the checkpoint)
    generate-<pass>         the Ray stages, streamed; each finished batch committed as one Parquet file
    finish-<generator>      the generator's last step over the table, if it has one
    summarize-<generator>   the `runs` row and a Prefect table artifact of every count
then the run's data card, <data_dir>/reports/<run_id>.html (tasks/runtime/report.py).

A crash loses at most the batches in flight; a rerun does only what is missing. Counts follow one
vocabulary (tasks/runtime/generator.py): `dropped_<reason>` → the run's `dropped_by_reason`,
`records` → rows_out, `tokens` → tokens_generated, anything else → `counts`.
"""
from __future__ import annotations

import re
import sys
from collections import Counter
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from schemas.catalog import refresh_catalog
from schemas.store import CompactionUnsupported, TableStore

from .generator import CPUStage, Generator, LLMStage, Plan, Source
from .inputs import InputError
from .progress import PassProgress
from .report import write_report
from .ray_stage import (cpu_stage, iter_row_batches, llm_stage, log_folder, pop_occupancy, plan_dataset, ray_session,
                        verbose)
from .runs import RunState, recorded_run, write_run
from .settings import RunSettings


def transient_io_error(task, task_run, state) -> bool:
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


@task(retries=2, retry_delay_seconds=2, retry_condition_fn=transient_io_error, cache_policy=NO_CACHE,
      task_run_name="load-{generator.name}")
def load_source(generator: Generator) -> Source:
    source = generator.load()
    if source.staged is None:  # a generator's own list (staged rows were checked when staged)
        ids = [row["source_id"] for row in source.rows]
        if len(ids) != len(set(ids)):
            raise ValueError(f"{generator.name}: load() returned rows with the same source_id")
    for reject in source.rejects:
        print(f"not used: {reject['source_file']}: row {reject['source_row']}: {reject['reason']}")
    if source.rejected > len(source.rejects):
        print(f"not used: {source.rejected - len(source.rejects)} more rows (counted; the first "
              f"{len(source.rejects)} are listed)")
    return source


@task(cache_policy=NO_CACHE, task_run_name="plan-{pass_name}")
def plan_pass(generator: Generator, source: Source, store: TableStore, pass_name: str) -> Plan:
    plan = generator.plan(source, store, pass_name)
    plan.counts = Counter(plan.counts)
    plan.counts.update(report_quarantined(store))
    return plan


@task(cache_policy=NO_CACHE, task_run_name="generate-{pass_name}")
def generate_pass(generator: Generator, plan: Plan, store: TableStore, run: RunState, pass_name: str) -> Counter:
    """Run the pass's stages over its rows as one Ray Data stream and commit each finished batch;
    the engines' occupancy snapshots that ride on the rows go to `run.occupancy`."""
    settings = generator.settings
    ds = plan_dataset(plan, rows_per_block=settings.batch_size, cluster=settings.ray_address is not None)
    for index, stage in enumerate(generator.stages(pass_name)):
        if isinstance(stage, LLMStage):
            ds = llm_stage(ds, stage.engine or generator.engine_spec, stage.program,
                           batch_size=settings.batch_size, pool_size=settings.pool_size,
                           rows_in_flight=settings.rows_in_flight, stage=f"{pass_name}-{index}")
        elif isinstance(stage, CPUStage):
            ds = cpu_stage(ds, stage.step, batch_size=settings.batch_size, num_cpus=stage.num_cpus)
        else:
            raise TypeError(f"{generator.name}: a stage must be an LLMStage or a CPUStage, not {stage!r}")
    counts = Counter()
    lineage = {"run_id": run.run_id, "model": run.model, "engine": run.engine,
               "config_hash": generator.config_hash()}
    occupancy = run.occupancy.setdefault(pass_name, {})
    with PassProgress(f"{generator.name} {pass_name}", planned=len(plan), log=get_run_logger().info) as progress:
        for rows in iter_row_batches(ds):
            pop_occupancy(rows, occupancy)
            created_at = datetime.now(timezone.utc)
            batch = [(row, generator.to_records(row, {**lineage, "created_at": created_at})) for row in rows]
            store.commit([r for _, records in batch for r in records], run.run_id)
            done = Counter()
            for row, records in batch:
                done["records"] += len(records)
                done["tokens"] += generator.tokens(row, records)
                done.update(generator.row_counts(row, records))
                for record in records:
                    done.update(generator.record_counts(record))
            counts.update(done)
            progress.advance(len(rows), kept=done["kept"], tokens=done["tokens"],
                             dropped=sum(v for k, v in done.items() if k.startswith("dropped_")),
                             requests=sum(s["requests"] for s in occupancy.values()))
    return counts


@task(cache_policy=NO_CACHE, task_run_name="finish-{generator.name}")
def finish_run(generator: Generator, source: Source, store: TableStore) -> Counter:
    counts = Counter(generator.finish(source, store))
    counts.update(report_quarantined(store))
    return counts


@task(cache_policy=NO_CACHE, task_run_name="summarize-{generator.name}")
def summarize(generator: Generator, run: RunState, store: TableStore, counts: Counter,
              rejects: list[dict]) -> dict:
    """Fold the counts into the run row, write it, publish a Prefect table artifact."""
    fold_counts(run, counts)
    write_run(store.data_dir, run.finish("completed"))
    engine = run.engine_summary()
    rows = [{"metric": k, "value": v} for k, v in
            [("run_id", run.run_id), ("rows_in", run.rows_in), ("rows_skipped", run.rows_skipped),
             ("rows_out", run.rows_out), ("tokens_generated", run.tokens_generated),
             ("engine", f"{run.engine} ({run.engine_choice})"), ("engine_requests", engine["requests"]),
             ("engine_mean_in_flight", engine["mean_in_flight"]), ("engine_busy_fraction", engine["busy_fraction"]),
             *[(k, v) for k, v in run.endpoint_summary().items() if v is not None],
             *sorted(run.counts.items()), *[(f"dropped_{k}", v) for k, v in sorted(run.dropped.items())]]]
    rows += [{"metric": f"not used: {r['source_file']}: row {r['source_row']}", "value": r["reason"]}
             for r in rejects]
    create_table_artifact(key=artifact_key(generator.name), table=rows,
                          description=f"{generator.name} run {run.run_id} ({store.data_dir})")
    return run.to_row()


def fold_counts(run: RunState, counts: Counter) -> None:
    for key, value in counts.items():
        if key.startswith("dropped_"):
            run.dropped[key.removeprefix("dropped_")] += value
        elif key == "records":
            run.rows_out += value
        elif key == "tokens":
            run.tokens_generated += value
        else:
            run.counts[key] += value
    run.dropped = +run.dropped  # no zero entries


def artifact_key(name: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{name}-counts".lower())


def run_generator(generator_cls: type[Generator], settings: RunSettings | dict) -> dict:
    """A generator's whole run, inside its Prefect flow; returns the `runs` row. From planning to the
    last commit it holds the table's lease for its config (schemas/lease.py): a second run of the same
    config waits, then does only what this one left."""
    generator = generator_cls(settings)
    settings = generator.settings
    store = TableStore(settings.data_dir, generator.table)
    with recorded_run(generator.name, settings, generator.engine_spec) as run:  # a failure is recorded, then raised
        source = load_source(generator)
        run.rows_in = len(source) + source.rejected
        counts = Counter({f"dropped_{reason}": n for reason, n in source.reject_counts.items()})
        holder = {"run_id": run.run_id, "flow": generator.name}
        with store.lease(generator.config_hash(), holder, on_wait=get_run_logger().warning), ExitStack() as stack:
            stack.callback(source.cleanup)  # the run's staged copies of its input and plans
            ray_started = False  # Ray starts only once a pass has work
            for i, pass_name in enumerate(generator.passes()):
                plan = plan_pass(generator, source, store, pass_name)
                if i == 0:
                    run.rows_skipped = plan.skipped
                counts.update(plan.counts)
                if len(plan):
                    if not ray_started:
                        stack.enter_context(ray_session(settings.ray_address))
                        ray_started = True
                        if not verbose() and (logs := log_folder()):
                            logs = link_logs(settings.data_dir, run.run_id, logs)
                            sys.stderr.write(f"engine and Ray logs: {logs} (datagen -v shows them here)\n")
                    counts.update(generate_pass(generator, plan, store, run, pass_name))
            counts.update(finish_run(generator, source, store))
            compact_run(store, run.run_id)
        summary = summarize(generator, run, store, counts, source.rejects)
    refresh_catalog(settings.data_dir)
    try:  # the run's data card; a card that cannot be drawn never fails a run that committed its records
        summary["report"] = write_report(settings.data_dir, run.run_id, generator, publish=True)
    except Exception as exc:  # noqa: BLE001
        get_run_logger().warning(f"no data card for run {run.run_id}: {type(exc).__name__}: {exc}")
    return summary


def link_logs(data_dir: str, run_id: str, folder: str) -> str:
    """The run's log folder as the user finds it: `<data_dir>/logs/<run_id>`, a link to the Ray session's
    log folder (where Ray and the engines write); that folder itself where the data dir cannot hold a
    link (an object store)."""
    from schemas.datadir import DataDir

    d = DataDir(data_dir)
    if not d.local:
        return folder
    link = Path(d.root) / "logs" / run_id
    try:
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(folder, target_is_directory=True)
    except OSError:
        return folder
    return str(link)


def compact_run(store: TableStore, run_id: str) -> None:
    """The run's part files (one per committed batch) merged into one, atomically (TableStore.compact);
    a data dir that cannot (an object store) keeps them, and so does a failed compaction: the records
    are committed either way."""
    try:
        done = store.compact([run_id])
    except CompactionUnsupported:
        return
    except (OSError, RuntimeError, pa.ArrowException) as exc:
        get_run_logger().warning(f"the run's part files were not compacted ({exc}); `datagen compact` can do it later")
        return
    if run_id in done:
        get_run_logger().info(f"compacted {done[run_id][0]} part files of {store.table.name} into {done[run_id][1]}")


def report_quarantined(store: TableStore) -> Counter:
    """Warn which damaged parts the store moved aside (their rows are redone by this run); count them."""
    moved, store.quarantined = store.quarantined, []
    for entry in moved:
        get_run_logger().warning(f"damaged file {entry['file']} ({entry['why']}): moved to {entry['moved_to']}; its rows are redone")
    return Counter({"quarantined_files": len(moved)} if moved else {})
