"""Benchmark: how full the pipeline keeps one GPU, simulated — pipeline throughput ÷ the engine's
saturated throughput, for each generator, over ≥ 2,000 source rows.

The engine is the `sim` backend (tasks/engines/sim.py): vLLM's continuous batching on one GPU in time
only (≈ an 8B model on one H100), scripted text, output lengths from a real run. Per generator and
round, side by side:
  (a) pipeline:  the generator's real generate pass (`generate_pass`: Ray Data, the engine actor, the
                 CPU stages, the commits) over the source rows; the sim engine logs every request
                 (prompt tokens and sequence lengths; every turn of every row);
  (b) saturated: a fresh sim engine in this process given that very log at once, as independent
                 requests — the most the engine can do with the same work.
ratio = throughput(a) / throughput(b) = wall(b) / wall(a) (same tokens); `steady_ratio` times (a) from
the engine's first request to the last commit, leaving out the engine actor's start (on a GPU: the
model load, a fixed cost the whole-flow benchmark counts). Sides alternate a, b, a, b;
every round is reported (JSON lines) with the median ratio. math-programs runs twice: with the real
sandbox, and with execution skipped (a stub CPU stage), so that the engine limit and the sandbox
limit are both visible.

    python bench/sim_gpu.py                                  # 2,000 rows each, 2 rounds, speed 2
    python bench/sim_gpu.py --generators math-programs --rows 500 --rounds 3
The baseline (the synchronous batch design before issue 12) is measured with the same script on that
commit: bench/sim_baseline.sh.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

for _key, _value in {"RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                     "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}.items():
    os.environ.setdefault(_key, _value)

REPO = Path(os.environ.get("DATAGEN_REPO", Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(REPO))
# The public inputs (GSM8K, SciFact, hh-rlhf), read-only; bench/sim_baseline.sh passes them on.
DATA = Path(os.environ.get("DATAGEN_DATA") or REPO / "data")  # your copies of the public datasets

# Scripted replies per generator: text the parsers accept (the lengths are drawn, not these).
REPLIES = {
    "math-programs": ("def solution():\n    return 42\n```",),
    "cot-rewrites": ("Step 1: Read the numbers.\nStep 2: Combine them.\nStep 3: Check the result.\nFinal answer: 42",),
    "retrieval-queries": (" what is the effect of the treatment on the outcome",),
    "preference-labels": ("Response A answers the request; Response B does not.",),
}


def settings_for(name: str, rows: int, data_dir: str) -> dict:
    common = {"limit": rows, "data_dir": data_dir, "engine": "transformers"}  # the engine is replaced below
    return {
        "math-programs": {"input": str(DATA / "gsm8k" / "train.jsonl"), "dynamic": False},
        "cot-rewrites": {"input": str(DATA / "gsm8k" / "train.jsonl"), "step_labels": True},
        "retrieval-queries": {"corpus": str(DATA / "scifact" / "corpus.jsonl"), "task": "scifact"},
        "preference-labels": {"pairs": str(DATA / "hh_rlhf" / "harmless-base" / "test.jsonl.gz")},
    }[name] | common


def skip_execution(problems: list[dict]) -> list[dict]:
    """The sandbox stage's stand-in: every attempt marked not run (the records keep their shape)."""
    for problem in problems:
        for attempt in problem["attempts"]:
            attempt.update(exec_status="not_run", correct=False, exec_result=None, exec_value=None,
                           exec_error=None, exec_seconds=None)
    return problems


def pipeline_side(name: str, args, spec, skip: bool) -> dict:
    from schemas.store import TableStore
    from tasks.generators import load_generator
    from tasks.runtime.generator import CPUStage
    from tasks.runtime.pipeline import generate_pass
    from tasks.runtime.runs import RunState

    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "requests.jsonl"
        cls = load_generator(name)
        generator = cls(settings_for(name, args.rows, str(Path(tmp) / "data")))
        generator.engine_spec = replace(spec, sim_log=str(log))
        if skip:
            stages = generator.stages
            generator.stages = lambda p: [CPUStage(skip_execution) if isinstance(s, CPUStage) else s for s in stages(p)]
        source = generator.load()
        store = TableStore(generator.settings.data_dir, generator.table)
        run = RunState.start(name, {}, model="sim", engine="sim")
        pass_name = generator.passes()[0]
        plan = generator.plan(source, store, pass_name)
        t0 = time.perf_counter()
        counts = generate_pass.fn(generator, plan, store, run, pass_name)
        wall, ended = time.perf_counter() - t0, time.time()
        requests = [json.loads(line) for line in log.read_text().splitlines()]
    snapshots = [s for actors in getattr(run, "occupancy", {}).values() for s in actors.values()]
    first_request = min((s["started_at"] for s in snapshots), default=None)
    occupancy = run.engine_summary() if snapshots else {}
    return {"wall_s": wall, "requests": requests, "records": counts.get("records", 0), "source_rows": len(plan.rows),
            "mean_in_flight": occupancy.get("mean_in_flight"),
            # from the engine's first request to the last commit: the pass without the actor's start-up
            "steady_wall_s": ended - first_request if first_request else None}


def saturated_side(spec, requests: list[dict]) -> dict:
    from tasks.engines.sim import SimEngine

    engine = SimEngine(spec)
    t0 = time.perf_counter()
    asyncio.run(engine.replay(requests))
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "sim": engine.stats.snapshot()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--generators", nargs="*", default=["math-programs", "cot-rewrites", "retrieval-queries",
                                                          "preference-labels"])
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--speed", type=float, default=2.0, help="simulated seconds per wall second")
    ap.add_argument("--sandbox", choices=["both", "real", "skipped"], default="both",
                    help="math-programs: run its programs in the real sandbox, skip them, or both")
    ap.add_argument("--lengths", help="completion_tokens source (Parquet file/folder); default: sim's built-in")
    ap.add_argument("--design", default="per-row programs", help="label written with the figures")
    ap.add_argument("--json", default=str(Path(__file__).resolve().parent / "results" / "sim_gpu.jsonl"))
    args = ap.parse_args()

    import ray

    from tasks.engines.base import EngineSpec
    from tasks.runtime.ray_stage import configure_data_context

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING")
    configure_data_context()
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    cases = []
    for name in args.generators:
        if name == "math-programs":
            cases += [(name, skip) for skip in {"both": (False, True), "real": (False,), "skipped": (True,)}[args.sandbox]]
        else:
            cases.append((name, False))
    for name, skip in cases:
        spec = EngineSpec(backend="sim", model="sim", device="cpu", fake_replies=REPLIES[name], sim_speed=args.speed,
                          sim_lengths=args.lengths)
        label = f"{name}{' (execution skipped)' if skip else ''}"
        ratios = []
        for round_index in range(args.rounds):
            a = pipeline_side(name, args, spec, skip)
            b = saturated_side(spec, a["requests"])
            tokens = sum(sum(r["lengths"]) for r in a["requests"])
            ratio = b["wall_s"] / a["wall_s"]
            steady = b["wall_s"] / a["steady_wall_s"] if a["steady_wall_s"] else None
            ratios.append(steady or ratio)
            figures = {
                "bench": "sim_gpu", "design": args.design, "generator": label, "round": round_index + 1,
                "source_rows": a["source_rows"], "records": a["records"], "requests": len(a["requests"]),
                "sequences": sum(len(r["lengths"]) for r in a["requests"]), "tokens": tokens, "speed": args.speed,
                "pipeline_wall_s": round(a["wall_s"], 2), "pipeline_tok_s_simulated": round(tokens / a["wall_s"] / args.speed),
                "saturated_wall_s": round(b["wall_s"], 2), "saturated_tok_s_simulated": round(tokens / b["wall_s"] / args.speed),
                "ratio": round(ratio, 3), "steady_wall_s": a["steady_wall_s"] and round(a["steady_wall_s"], 2),
                "steady_ratio": steady and round(steady, 3), "pipeline_mean_in_flight": a["mean_in_flight"] and round(a["mean_in_flight"], 1),
                "saturated_mean_running": round(b["sim"]["mean_running"], 1),
            }
            print(json.dumps(figures), flush=True)
            with out.open("a") as f:
                f.write(json.dumps(figures) + "\n")
        print(f"== {args.design}: {label}: median {'steady ' if steady else ''}ratio "
              f"{statistics.median(ratios):.3f} over rounds "
              f"{[round(r, 3) for r in ratios]}", flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
