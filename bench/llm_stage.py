"""Benchmark: the pipeline's Ray Data actor stage vs. the engine called directly, side by side.

The same N prompts (math-programs prompts over GSM8K questions, greedy) go through
  (a) the engine built and called in this process, every request in flight at once, and
  (b) rows_dataset -> llm_stage (ProgramActor in an ActorPool) -> iter_row_batches, as the flows run it,
with the same model, dtype, batch size and max tokens. Both timings include building the engine
(model load); (b) also includes the actor start. Ray's own start is reported apart (a pipeline pays
it once per process). Prints both times, tokens/s and the ratio b/a (goal <= 1.15).

    python bench/llm_stage.py                       # 128 prompts, transformers, embedded SmolLM2
    python bench/llm_stage.py --prompts 32 --engine vllm --json bench/results/vllm.json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from functools import partial
from pathlib import Path

for _key, _value in {"RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_key, _value)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tasks.generators.math_programs import program as mp  # noqa: E402
from tasks.engines import EngineSpec, SamplingParams, make_engine  # noqa: E402


async def generate_text(row: dict, engine, params: SamplingParams) -> dict:
    """The benchmark's per-row program: one request, like the simplest generator."""
    [completion] = await engine.generate(row["messages"], params)
    row["completion_tokens"] = completion.completion_tokens
    row["prompt_tokens"] = completion.prompt_tokens
    return row


async def generate_all(rows: list[dict], engine, params: SamplingParams) -> list[dict]:
    """Every row's program at once, in this process (side a)."""
    return list(await asyncio.gather(*(generate_text(r, engine, params) for r in rows)))


def load_prompts(n: int, data: Path, exemplars: int) -> list[dict]:
    """The math-programs prompt of the first n GSM8K questions, with `exemplars` few-shot exemplars
    (0 by default: ~110 prompt tokens; the full 8-exemplar prompt is ~800 tokens and makes the
    transformers run on 2 CPU cores take over 10 minutes per side)."""
    problems = mp.load_problems(data, limit=n).rows
    chosen = list(mp.fixed_exemplars()[:exemplars])
    return [{"source_id": p["source_id"], "messages": mp.build_messages(p["question"], chosen)} for p in problems]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--exemplars", type=int, default=0, help="few-shot exemplars in each prompt (0-8)")
    ap.add_argument("--engine", default="transformers", choices=["transformers", "vllm"])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "gsm8k" / "train.jsonl"))
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()

    spec = EngineSpec(backend=args.engine, model=args.model, device=args.device)
    params = SamplingParams(max_tokens=args.max_tokens, stop=mp.STOP)
    rows = load_prompts(args.prompts, Path(args.data), args.exemplars)
    program = partial(generate_text, params=params)

    # (a) direct
    t0 = time.perf_counter()
    engine = make_engine(spec)
    load_a = time.perf_counter() - t0
    out_a = asyncio.run(generate_all([dict(r) for r in rows], engine, params))
    direct_s = time.perf_counter() - t0
    engine.close()
    del engine
    tokens_a = sum(r["completion_tokens"] for r in out_a)

    # (b) the pipeline's Ray Data actor stage
    import ray

    from tasks.runtime.ray_stage import configure_data_context, iter_row_batches, llm_stage, rows_dataset

    t_ray = time.perf_counter()
    ray.init(include_dashboard=False, logging_level="WARNING")
    configure_data_context()
    ray_start_s = time.perf_counter() - t_ray
    t0 = time.perf_counter()
    ds = llm_stage(rows_dataset(rows, rows_per_block=args.batch_size), spec, program, batch_size=args.batch_size,
                   rows_in_flight=len(rows))
    out_b = [r for batch in iter_row_batches(ds) for r in batch]
    stage_s = time.perf_counter() - t0
    ray.shutdown()
    tokens_b = sum(r["completion_tokens"] for r in out_b)
    assert len(out_b) == len(rows), (len(out_b), len(rows))

    figures = {
        "engine": args.engine, "model": spec.model_id, "prompts": len(rows), "batch_size": args.batch_size,
        "max_tokens": args.max_tokens, "exemplars": args.exemplars, "cpus": os.cpu_count(),
        "mean_prompt_tokens": round(sum(r["prompt_tokens"] for r in out_a) / len(out_a), 1),
        "direct_s": round(direct_s, 2), "direct_load_s": round(load_a, 2), "direct_tokens": tokens_a,
        "direct_tok_per_s": round(tokens_a / direct_s, 1),
        "stage_s": round(stage_s, 2), "stage_tokens": tokens_b, "stage_tok_per_s": round(tokens_b / stage_s, 1),
        "ray_init_s": round(ray_start_s, 2), "ratio_stage_over_direct": round(stage_s / direct_s, 3),
    }
    print(json.dumps(figures, indent=2))
    print(f"\n(a) direct {direct_s:.1f} s   (b) Ray Data actor stage {stage_s:.1f} s   ratio b/a = {stage_s / direct_s:.3f}"
          f"   (goal <= 1.15; Ray start {ray_start_s:.1f} s not included)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
