"""Benchmark: peak memory (RSS) and time of `datagen clean decontaminate` and `datagen clean dedup` on
a `math_programs` table of 10k, 100k and 1M rows: memory must stay flat as the table grows.

The table is synthetic but shaped like the real one: a GSM8K-like question (~45 words) and a program
(~40 words) per row, words drawn from a Zipf-distributed vocabulary with random numbers, written as
Parquet parts through the TableStore (the real writer and schema). 1% of the rows copy an item of the
evaluation set into the question, and 1% repeat another row (half exactly, half with a word changed),
so both steps have real work. The evaluation set is MATH-500 from your `data/` folder (or the folder
in DATAGEN_DATA; `--eval FILE` names another).

Each measurement runs in a fresh process (`--child`), whose peak RSS (VmHWM: Python, Arrow and DuckDB
together) and wall time are reported; the previous results of that step are removed
first, so every round checks the whole table. Sizes alternate within a round (10k, 100k, 1M, 10k, ...);
each round is printed and appended as a JSON line to --out; the last line is the summary (median per
size and step over the rounds).

    python bench/clean.py                                  # 10k, 100k, 1M rows, 2 rounds (~15 minutes here)
    python bench/clean.py --sizes 10000,100000 --rounds 3
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATA = Path(os.environ.get("DATAGEN_DATA", REPO / "data"))


def make_table(data_dir: Path, rows: int, eval_texts: list[str], seed: int = 0) -> None:
    """`rows` synthetic math_programs records under data_dir, committed in parts of 50,000."""
    import numpy as np
    import pyarrow as pa

    from schemas.store import TableStore
    from schemas.tables import MATH_PROGRAMS

    rng = np.random.default_rng(seed)
    vocabulary = np.array([f"w{i}" for i in range(20_000)])
    store = TableStore(data_dir, MATH_PROGRAMS)
    run_id = "20261204T000000-bench0"
    created = datetime(2026, 12, 4, tzinfo=timezone.utc)
    part = 50_000
    for start in range(0, rows, part):
        n = min(part, rows - start)
        words = vocabulary[np.minimum(rng.zipf(1.3, size=(n, 85)) - 1, len(vocabulary) - 1)]
        numbers = rng.integers(0, 10_000, size=(n, 85)).astype(str)
        mixed = np.where(rng.random((n, 85)) < 0.15, numbers, words)
        questions = [" ".join(r[:45]) + "?" for r in mixed]
        programs = ["def solution():\n    " + "\n    ".join(" ".join(r[45 + i:45 + i + 8]) for i in range(0, 40, 8))
                    for r in mixed]
        for i in range(n):
            k = start + i
            if k % 100 == 7:  # an evaluation item copied into the question
                questions[i] = "Please solve: " + eval_texts[k % len(eval_texts)]
            elif k % 100 == 13 and i >= 1:  # a repeat of the row before (every other one with a word changed)
                questions[i] = questions[i - 1]
                programs[i] = programs[i - 1] if k % 200 == 13 else programs[i - 1].replace("\n", "\n    x = 1\n", 1)
        ids = [f"bench-{start + i:08d}" for i in range(n)]
        table = pa.table({
            "record_id": ids, "source_id": ids, "run_id": [run_id] * n, "generator": ["math_programs"] * n,
            "model": ["m"] * n, "engine": ["bench"] * n, "prompt_version": ["v"] * n, "config_hash": ["h"] * n,
            "created_at": pa.array([created] * n, pa.timestamp("us", tz="UTC")), "question": questions,
            "gold_answer": [1.0] * n, "pass": ["fixed"] * n, "attempt": pa.array([0] * n, pa.int32()),
            "program": programs, "exec_status": ["wrong"] * n, "correct": [False] * n,
        })
        missing = [f for f in MATH_PROGRAMS.arrow.names if f not in table.column_names]
        for name in missing:
            table = table.append_column(MATH_PROGRAMS.arrow.field(name), pa.nulls(n, MATH_PROGRAMS.arrow.field(name).type))
        store.commit(table.select(MATH_PROGRAMS.arrow.names), run_id)


def child(step: str, data_dir: str, eval_file: str) -> None:
    """One step in this process; prints its summary with the process's peak RSS."""
    from tasks.clean.decontaminate import DecontaminationSettings, decontaminate
    from tasks.clean.dedup import DedupSettings, dedup

    t0 = time.perf_counter()
    if step == "decontaminate":
        out = decontaminate(data_dir, "math_programs", [eval_file], DecontaminationSettings(), "bench", log=lambda _: None)
        found = {"checked": out["checks"][0]["checked"], "flagged": out["checks"][0]["contaminated"]}
    else:
        out = dedup(data_dir, "math_programs", DedupSettings(), "bench", log=lambda _: None)
        found = {"checked": out["checked"], "flagged": out["duplicates"]}
    wall = time.perf_counter() - t0
    peak_mib = _peak_rss_kib() / 1024
    print(json.dumps({**found, "wall_s": round(wall, 2), "peak_rss_mib": round(peak_mib, 1)}))


def _peak_rss_kib() -> int:
    """This process's peak RSS: VmHWM, which exec resets (getrusage's ru_maxrss carries the peak of the
    process that forked it, here the parent that wrote the 1M-row table)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def measure(step: str, data_dir: Path, eval_file: str) -> dict:
    shutil.rmtree(data_dir / ("contamination" if step == "decontaminate" else "duplicates"), ignore_errors=True)
    done = subprocess.run([sys.executable, __file__, "--child", step, "--data-dir", str(data_dir), "--eval", eval_file],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--eval", default=str(DATA / "math500" / "test500.jsonl"))
    ap.add_argument("--work", default=None, help="where the tables go (default: a temporary folder)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "clean.jsonl"))
    ap.add_argument("--child", choices=("decontaminate", "dedup"), help=argparse.SUPPRESS)
    ap.add_argument("--data-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.data_dir, args.eval)
        return 0
    import tempfile

    from tasks.clean.decontaminate import read_eval_items

    eval_texts = read_eval_items(args.eval).texts
    work = Path(args.work or tempfile.mkdtemp(prefix="datagen-bench-clean-"))
    sizes = [int(s) for s in args.sizes.split(",")]
    for size in sizes:
        done = work / f"rows-{size}" / ".complete"  # --work keeps the tables for the next invocation
        if not done.exists():
            t0 = time.perf_counter()
            make_table(work / f"rows-{size}", size, eval_texts)
            done.write_text("")
            print(f"table of {size:,} rows written in {time.perf_counter() - t0:.1f} s", flush=True)
    bench_id = uuid.uuid4().hex[:8]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    results = []
    with open(args.out, "a") as out:
        for round_ in range(1, args.rounds + 1):
            for size in sizes:
                for step in ("decontaminate", "dedup"):
                    line = {"bench": "clean", "id": bench_id, "round": round_, "rows": size, "step": step,
                            **measure(step, work / f"rows-{size}", args.eval)}
                    results.append(line)
                    print(json.dumps(line), flush=True)
                    out.write(json.dumps(line) + "\n")
        summary = {"bench": "clean", "id": bench_id, "summary": True, "rounds": args.rounds, "median": {
            f"{step} {size}": {k: statistics.median(r[k] for r in results if r["rows"] == size and r["step"] == step)
                               for k in ("peak_rss_mib", "wall_s")}
            for size in sizes for step in ("decontaminate", "dedup")}}
        print(json.dumps(summary))
        out.write(json.dumps(summary) + "\n")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
