"""Benchmark: large inputs — driver memory and planning time at 10k vs 1M rows, and wall time per 10× rows.

Inputs are generated from the shipped samples (samples/*.jsonl), the rows cycled with varied ids
(`sample-01` ... then `sample-01-1`, ...), so any size reads like the samples. Every measurement runs in
a fresh process (`python bench/scale.py one ...`), sizes alternated round by round (10k, 1M, 10k, 1M),
and prints one JSON line:

  memory   math-programs over N rows, execution skipped: load (staged), plan (DuckDB anti-join), and the
           plan streamed through Ray Data (read_parquet, blocks of --block rows, rows decoded in the
           driver as a run does) with no engine stage; the driver's peak RSS (ru_maxrss) is taken there,
           and its private (RssAnon) and shared (RssShmem: Ray object-store pages it mapped) peaks apart.
           Then every row is committed as a record (fake records, written in 65k-row parts), the
           generator's plan runs again, and its time is the rerun's planning time (everything skipped).
  wall     a whole generator run without Prefect — load, plan, the generate pass with the simulated
           GPU engine (tasks/engines/sim.py, speed --speed), commits, finish — at N and 10N rows:
           math-programs with its programs run in the real sandbox, retrieval-queries with the BM25
           round-trip filter over the whole corpus. ratio = wall(10N) / wall(N).

    python bench/scale.py memory --rows 10000 1000000 --rounds 2
    python bench/scale.py wall --generator math-programs --rows 200 2000 --rounds 2
    python bench/scale.py wall --generator retrieval-queries --rows 1000 10000 --rounds 2
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

for _key, _value in {"RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                     "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}.items():
    os.environ.setdefault(_key, _value)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SAMPLES = REPO / "samples"
REPLIES = {
    "math-programs": ("def solution():\n    return 42\n```",),
    "retrieval-queries": (" what is the effect of the treatment on the outcome",),
}


def make_input(kind: str, rows: int, folder: Path) -> Path:
    """`rows` rows cycled from the shipped sample, ids varied (the first copy keeps the sample's ids, so
    retrieval's examples still name corpus documents)."""
    source, id_key = {"math": ("math_word_problems.jsonl", "id"), "corpus": ("retrieval_corpus.jsonl", "_id")}[kind]
    path = folder / f"{kind}-{rows}.jsonl"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    seeds = [json.loads(line) for line in (SAMPLES / source).read_text().splitlines() if line.strip()]
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as f:
        for i in range(rows):
            row = dict(seeds[i % len(seeds)])
            copy = i // len(seeds)
            if copy:
                row[id_key] = f"{row[id_key]}-{copy}"
                if kind == "corpus":  # distinct texts, so the filter's index is not all repeats
                    row["text"] = f"{row['text']} (variant {copy})"
            f.write(json.dumps(row) + "\n")
    tmp.rename(path)
    return path


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class MemorySampler:
    """Peaks of the driver's private (RssAnon) and shared (RssShmem: pages of Ray's object store the
    driver has mapped while reading blocks) resident memory, sampled every 50 ms from /proc."""

    def __init__(self):
        import threading

        self.peak = {"RssAnon": 0, "RssShmem": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.05):
            for line in Path("/proc/self/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in self.peak:
                    self.peak[key] = max(self.peak[key], int(value.split()[0]))

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        return {"peak_anon_mb": round(self.peak["RssAnon"] / 1024), "peak_shmem_mb": round(self.peak["RssShmem"] / 1024)}


def fake_commit_all(generator, plan_files: list[str], store) -> int:
    """A fixed-pass record for every planned row (what a finished run leaves), in 65k-row parts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from schemas.tables import MATH_PROGRAMS

    schema, now, done = MATH_PROGRAMS.arrow, pa.scalar(time.time_ns() // 1000, pa.timestamp("us", tz="UTC")), 0
    values = {"run_id": "bench", "generator": generator.name, "model": "sim", "engine": "sim", "prompt_version": "v",
              "config_hash": generator.config_hash(), "question": "q", "gold_answer": 0.0, "pass": "fixed",
              "attempt": 0, "exec_status": "not_run", "correct": False}
    for path in plan_files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=65_536, columns=["source_id"]):
            n = batch.num_rows
            ids = batch.column(0)
            columns = {}
            for field in schema:
                if field.name in ("record_id", "source_id"):
                    columns[field.name] = ids.cast(field.type)
                elif field.name == "created_at":
                    columns[field.name] = pa.array([now.value] * n, pa.int64()).cast(field.type)
                elif field.name in values:
                    columns[field.name] = pa.array([values[field.name]] * n, field.type)
                else:
                    columns[field.name] = pa.nulls(n, field.type)
            store.commit(pa.table(columns, schema=schema), "bench")
            done += n
    return done


def one_memory(rows: int, folder: Path, block: int) -> dict:
    import ray

    from schemas.store import TableStore
    from tasks.generators import load_generator
    from tasks.runtime.ray_stage import configure_data_context, iter_row_batches, plan_dataset

    path = make_input("math", rows, folder)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        os.environ["DATAGEN_STAGING"] = tmp
        generator = load_generator("math-programs")({"input": str(path), "data_dir": f"{tmp}/data", "dynamic": False,
                                                     "engine": "transformers"})
        store = TableStore(generator.settings.data_dir, generator.table)
        figures = {"bench": "scale-memory", "rows": rows, "block_rows": block, "rss_start_mb": round(rss_mb())}
        sampler = MemorySampler()
        t0 = time.perf_counter()
        source = generator.load()
        figures.update(load_s=round(time.perf_counter() - t0, 2), rss_after_load_mb=round(rss_mb()))
        t1 = time.perf_counter()
        plan = generator.plan(source, store, "fixed")
        figures.update(plan_s=round(time.perf_counter() - t1, 2), planned=len(plan), rss_after_plan_mb=round(rss_mb()))
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
        configure_data_context()
        t2 = time.perf_counter()
        streamed = sum(len(b) for b in iter_row_batches(plan_dataset(plan, rows_per_block=block)))
        figures.update(stream_s=round(time.perf_counter() - t2, 2), streamed=streamed,
                       peak_rss_mb=round(rss_mb()))  # the driver's peak over load, plan and stream
        figures.update(sampler.stop())
        ray.shutdown()
        committed = fake_commit_all(generator, plan.staged.files, store)
        t3 = time.perf_counter()
        rerun = generator.plan(source, store, "fixed")
        figures.update(committed=committed, rerun_plan_s=round(time.perf_counter() - t3, 2),
                       rerun_planned=len(rerun), rerun_skipped=rerun.skipped)
    return figures


def one_wall(name: str, rows: int, folder: Path, speed: float) -> dict:
    from dataclasses import replace  # noqa: F401

    import ray

    from schemas.store import TableStore
    from tasks.engines.base import EngineSpec
    from tasks.generators import load_generator
    from tasks.runtime.pipeline import generate_pass
    from tasks.runtime.ray_stage import configure_data_context
    from tasks.runtime.runs import RunState

    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        os.environ["DATAGEN_STAGING"] = tmp
        common = {"data_dir": f"{tmp}/data", "engine": "transformers"}
        if name == "math-programs":
            settings = {"input": str(make_input("math", rows, folder)), "dynamic": False}
        else:
            settings = {"corpus": str(make_input("corpus", rows, folder)), "examples": str(SAMPLES / "retrieval_examples.jsonl"),
                        "task": "generic", "samples": 4, "filter_retriever": "bm25"}
        generator = load_generator(name)(settings | common)
        generator.engine_spec = EngineSpec(backend="sim", model="sim", device="cpu", fake_replies=REPLIES[name],
                                           sim_speed=speed)
        store = TableStore(generator.settings.data_dir, generator.table)
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
        configure_data_context()
        run = RunState.start(name, {}, model="sim", engine="sim")
        from prefect.logging import disable_run_logger

        t0 = time.perf_counter()
        with disable_run_logger():  # the pass outside a flow: its log lines go nowhere
            source = generator.load()
            counts = {}
            for pass_name in generator.passes():
                plan = generator.plan(source, store, pass_name)
                if len(plan):
                    counts.update(generate_pass.fn(generator, plan, store, run, pass_name))
            counts.update(generator.finish(source, store))
        wall = time.perf_counter() - t0
        ray.shutdown()
    return {"bench": "scale-wall", "generator": name, "rows": rows, "speed": speed, "wall_s": round(wall, 2),
            "records": counts.get("records", 0), "kept": counts.get("kept", 0),
            "filter_filtered": counts.get("filter_filtered"), "queries_kept": counts.get("queries_kept")}


def run_one(args_list: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "one", *args_list], capture_output=True, text=True, cwd=REPO)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode or not lines:
        raise RuntimeError(f"bench/scale.py one {' '.join(args_list)} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="what", required=True)
    memory = sub.add_parser("memory")
    memory.add_argument("--rows", type=int, nargs="+", default=[10_000, 1_000_000])
    memory.add_argument("--block", type=int, default=1_024, help="rows per Ray block while streaming")
    wall = sub.add_parser("wall")
    wall.add_argument("--generator", choices=list(REPLIES), default="math-programs")
    wall.add_argument("--rows", type=int, nargs="+", default=[200, 2_000])
    wall.add_argument("--speed", type=float, default=2.0)
    for p in (memory, wall):
        p.add_argument("--rounds", type=int, default=2)
        p.add_argument("--folder", default=str(Path(tempfile.gettempdir()) / "datagen-scale"))
        p.add_argument("--json", default=str(REPO / "bench" / "results" / "scale.jsonl"))
    one = sub.add_parser("one")
    one.add_argument("kind")
    one.add_argument("rest", nargs="+")
    args = ap.parse_args()
    if args.what == "one":
        folder = Path(args.rest[-1])
        if args.kind == "memory":
            print(json.dumps(one_memory(int(args.rest[0]), folder, int(args.rest[1]))), flush=True)
        else:
            print(json.dumps(one_wall(args.kind, int(args.rest[0]), folder, float(args.rest[1]))), flush=True)
        return
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    results: dict[int, list[dict]] = {}
    for round_index in range(args.rounds):
        for rows in args.rows:  # alternated: small, large, small, large
            extra = [str(args.block)] if args.what == "memory" else [str(args.speed)]
            kind = "memory" if args.what == "memory" else args.generator
            figures = run_one([kind, str(rows), *extra, str(folder)]) | {"round": round_index + 1}
            print(json.dumps(figures), flush=True)
            with out.open("a") as f:
                f.write(json.dumps(figures) + "\n")
            results.setdefault(rows, []).append(figures)
    small, large = min(results), max(results)
    key = "peak_rss_mb" if args.what == "memory" else "wall_s"
    ratios = [b[key] / a[key] for a, b in zip(results[small], results[large])]
    print(f"== {args.what} {getattr(args, 'generator', '')} {small} -> {large} rows: {key} ratio per round "
          f"{[round(r, 2) for r in ratios]}, median {statistics.median(ratios):.2f}", flush=True)


if __name__ == "__main__":
    main()
