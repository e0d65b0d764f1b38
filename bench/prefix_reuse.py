"""Benchmark: n sampled completions per prompt with and without prefix reuse in the transformers engine.

(a) plain: `model.generate(num_return_sequences=n)` prefills every prompt n times;
(b) reuse: each prompt is prefilled once and its KV cache copied n times (TransformersEngine.reuse_prefix).
One engine (one model load) serves both sides; the same batch of prompts — the 8-exemplar math-programs
prompt (~800 tokens) over the first --prompts questions — goes through `generate_batch` in rounds
alternating a, b, a, b, each round seeded with its round number on both sides (so both draw the same
random numbers). Every round is printed and appended as a JSON line to --out with a run id; the last line
is the summary: median wall seconds and output tok/s per side, and the median over rounds of the ratio
reuse / plain (wall < 1 and tok/s > 1 mean reuse is faster).

    python bench/prefix_reuse.py                                      # 8 prompts, n=4, 3 rounds, CPU
    python bench/prefix_reuse.py --input data/gsm8k/train.jsonl --prompts 16 --device cuda
    python bench/prefix_reuse.py --prompts 4 --rounds 3 --threads 2   # ~5 minutes on 2 CPU cores
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

for _key, _value in {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_WAIT_POLICY": "PASSIVE"}.items():
    os.environ.setdefault(_key, _value)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tasks.engines import EngineSpec, SamplingParams  # noqa: E402
from tasks.engines.transformers_engine import TransformersEngine  # noqa: E402
from tasks.generators.math_programs import program as mp  # noqa: E402

SIDES = {"a": ("plain", False), "b": ("reuse", True)}


def load_conversations(path: Path, prompts: int, exemplars: int) -> list[list[dict]]:
    problems = mp.load_problems(path, limit=prompts).rows
    if len(problems) < prompts:
        raise SystemExit(f"{path} has {len(problems)} problems, --prompts asks for {prompts}")
    chosen = mp.fixed_exemplars()[:exemplars]
    return [mp.build_messages(p["question"], chosen) for p in problems]


def run_side(engine: TransformersEngine, conversations, params: SamplingParams, reuse: bool) -> dict:
    engine.reuse_prefix = reuse
    start = time.perf_counter()
    groups = engine.generate_batch(conversations, params)
    wall = time.perf_counter() - start
    assert [len(g) for g in groups] == [params.n] * len(conversations)
    tokens = sum(c.completion_tokens for g in groups for c in g)
    return {"wall_s": round(wall, 2), "output_tokens": tokens, "tok_per_s": round(tokens / wall, 1),
            "stopped": sum(c.finish_reason == "stop" for g in groups for c in g)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", default=str(REPO / "samples" / "math_word_problems.jsonl"),
                    help="questions (JSONL/Parquet with question + answer), e.g. a GSM8K jsonl")
    ap.add_argument("--prompts", type=int, default=8, help="prompts in the batch")
    ap.add_argument("--exemplars", type=int, default=8)
    ap.add_argument("--n", type=int, default=4, help="samples per prompt")
    ap.add_argument("--temperature", type=float, default=0.5)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3, help="rounds per side, alternating a, b")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "prefix_reuse.jsonl"))
    args = ap.parse_args()

    conversations = load_conversations(Path(args.input), args.prompts, args.exemplars)
    t0 = time.perf_counter()
    engine = TransformersEngine(EngineSpec(backend="transformers", model=args.model, device=args.device,
                                           dtype=args.dtype, threads=args.threads))
    load_s = time.perf_counter() - t0
    if args.prompts * args.n > engine.micro_batch_rows:
        print(f"note: {args.prompts} prompts x n={args.n} exceeds micro_batch_rows={engine.micro_batch_rows}: "
              f"several generate calls per round")
    prompt_tokens = [len(engine.tokenizer(engine.render(c), add_special_tokens=False)["input_ids"])
                     for c in conversations]
    # Warm-up, both paths, not timed: first calls allocate and pick kernels.
    for reuse in (False, True):
        run_side(engine, conversations[:2], SamplingParams(n=2, temperature=args.temperature, max_tokens=4, seed=0),
                 reuse)

    run_id = uuid.uuid4().hex[:12]
    common = {"bench": "prefix_reuse", "run_id": run_id, "model": engine.spec.model_id, "device": engine.device,
              "dtype": str(engine.dtype).removeprefix("torch."), "cpus": os.cpu_count(), "threads": args.threads,
              "input": Path(args.input).name, "prompts": args.prompts, "exemplars": args.exemplars, "n": args.n,
              "temperature": args.temperature, "max_tokens": args.max_tokens,
              "mean_prompt_tokens": round(sum(prompt_tokens) / len(prompt_tokens), 1)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"run {run_id}: load {load_s:.1f} s, {args.prompts} prompts x n={args.n}, "
          f"mean prompt {common['mean_prompt_tokens']} tokens, {engine.device} {common['dtype']}")
    rows = []
    with out.open("a") as f:
        for r in range(args.rounds):
            params = SamplingParams(n=args.n, temperature=args.temperature, max_tokens=args.max_tokens,
                                    stop=mp.STOP, seed=r)
            for side, (name, reuse) in SIDES.items():
                row = {**common, "round": r, "side": side, "mode": name, **run_side(engine, conversations, params, reuse)}
                rows.append(row)
                f.write(json.dumps(row) + "\n")
                f.flush()
                print(f"round {r} {side} {name:5s}  {row['wall_s']:7.2f} s  {row['output_tokens']:5d} tokens  "
                      f"{row['tok_per_s']:6.1f} tok/s")
        by = {s: [x for x in rows if x["side"] == s] for s in SIDES}
        wall_ratios = [b["wall_s"] / a["wall_s"] for a, b in zip(by["a"], by["b"])]
        tps_ratios = [b["tok_per_s"] / a["tok_per_s"] for a, b in zip(by["a"], by["b"])]
        summary = {**common, "summary": True, "rounds": args.rounds, "load_s": round(load_s, 1),
                   **{f"median_wall_s_{SIDES[s][0]}": statistics.median(x["wall_s"] for x in by[s]) for s in SIDES},
                   **{f"median_tok_per_s_{SIDES[s][0]}": statistics.median(x["tok_per_s"] for x in by[s]) for s in SIDES},
                   "wall_ratios_reuse_over_plain": [round(x, 3) for x in wall_ratios],
                   "median_wall_ratio_reuse_over_plain": round(statistics.median(wall_ratios), 3),
                   "median_tok_per_s_ratio_reuse_over_plain": round(statistics.median(tps_ratios), 3)}
        f.write(json.dumps(summary) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"\nreuse / plain: wall x{summary['median_wall_ratio_reuse_over_plain']}, "
          f"tok/s x{summary['median_tok_per_s_ratio_reuse_over_plain']} (median of {args.rounds} round pairs)  -> {out}")
    engine.close()


if __name__ == "__main__":
    main()
