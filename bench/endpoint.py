"""Benchmark: the same workload on the in-process vLLM engine and through a local OpenAI-compatible
server (`vllm serve` of the same model, same settings), side by side, in alternating rounds.

Workload: the math-programs prompt (system line + `--exemplars` few-shot programs) of every problem of
`--input`, repeated to `--prompts` requests, greedy, `--max-tokens`, every request in flight at once,
as a generator's per-row programs put them. Side `inprocess` is tasks/engines/vllm_engine.VLLMEngine;
side `endpoint` is tasks/engines/openai_engine.OpenAIEngine against `vllm serve` started here on
127.0.0.1 (and stopped at the end). Both engines are loaded first (their load times are reported
apart) and stay loaded; rounds alternate which side goes first, and every round is a JSON line.

    python bench/endpoint.py                                   # 64 prompts x 3 rounds, embedded SmolLM2
    python bench/endpoint.py --prompts 128 --rounds 4 --json bench/results/endpoint.jsonl

One line per round: {"round": 1, "side": "endpoint", "seconds": ..., "completion_tokens": ...,
"tok_per_s": ..., "http_requests": ...}; then a summary line with the median tok/s per side and their ratio.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

for _key, _value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_key, _value)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tasks.engines import EngineSpec, SamplingParams  # noqa: E402
from tasks.generators.math_programs import program as mp  # noqa: E402


def start_server(model_dir: str, threads: int, dtype: str, log: Path) -> tuple[subprocess.Popen, str]:
    """`vllm serve` configured as the in-process engine is (eager, no chunked prefill, 2048 context)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
           "OMP_NUM_THREADS": str(threads), "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
               "--served-model-name", "bench", "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "2048",
               "--dtype", dtype, "--enforce-eager", "--no-enable-chunked-prefill", "--max-num-batched-tokens", "8192",
               "--disable-log-stats"]
    with open(log, "w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 600
    while True:
        try:
            urllib.request.urlopen(f"{url}/models", timeout=5).close()
            return server, url
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                stop_server(server)
                raise SystemExit(f"vllm serve did not start (log: {log})")
            time.sleep(1)


def stop_server(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def prompts(path: Path, n: int, exemplars: int) -> list[list[dict]]:
    problems = mp.load_problems(path).rows
    chosen = list(mp.fixed_exemplars()[:exemplars])
    convs = [mp.build_messages(p["question"], chosen) for p in problems]
    return [convs[i % len(convs)] for i in range(n)]


def one_round(engine, convs, params) -> tuple[float, list]:
    async def all_at_once():
        return await asyncio.gather(*(engine.generate(c, params) for c in convs))

    t0 = time.perf_counter()
    out = asyncio.run(all_at_once())
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", default=str(REPO / "samples" / "math_word_problems.jsonl"))
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--exemplars", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="compute threads of each engine")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--json", help="also append the JSON lines to this file")
    args = ap.parse_args()

    from tasks.engines.model_files import resolve_model_dir
    from tasks.engines.openai_engine import OpenAIEngine
    from tasks.engines.vllm_engine import VLLMEngine

    lines = []

    def emit(record: dict) -> None:
        lines.append(record)
        print(json.dumps(record), flush=True)

    convs = prompts(Path(args.input), args.prompts, args.exemplars)
    params = SamplingParams(max_tokens=args.max_tokens, stop=mp.STOP)
    log = Path(tempfile.mkdtemp(prefix="datagen-bench-endpoint-")) / "server.log"
    t0 = time.perf_counter()
    server, url = start_server(str(resolve_model_dir("smollm2-135m")), args.threads, args.dtype, log)
    server_start = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        local = VLLMEngine(EngineSpec(backend="vllm", dtype=args.dtype, threads=args.threads))
        local_load = time.perf_counter() - t0
        remote = OpenAIEngine(EngineSpec(backend="openai", base_url=url, model="bench",
                                         requests_in_flight=args.prompts, max_requests_in_flight=max(256, args.prompts)))
        emit({"setup": True, "prompts": args.prompts, "max_tokens": args.max_tokens, "exemplars": args.exemplars,
              "threads": args.threads, "dtype": args.dtype, "cpus": os.cpu_count(),
              "server_start_s": round(server_start, 1), "inprocess_load_s": round(local_load, 1)})
        one_round(local, convs[:4], params), one_round(remote, convs[:4], params)  # warm both (prefix caches)
        sides = {"inprocess": local, "endpoint": remote}
        rates = {name: [] for name in sides}
        for round_no in range(1, args.rounds + 1):
            order = ["inprocess", "endpoint"] if round_no % 2 else ["endpoint", "inprocess"]
            for side in order:
                before = remote.stats.http_requests
                seconds, out = one_round(sides[side], convs, params)
                tokens = sum(c.completion_tokens for group in out for c in group)
                rates[side].append(tokens / seconds)
                emit({"round": round_no, "side": side, "seconds": round(seconds, 2), "completion_tokens": tokens,
                      "tok_per_s": round(tokens / seconds, 1), "requests": len(out),
                      "http_requests": remote.stats.http_requests - before if side == "endpoint" else None})
        medians = {side: statistics.median(r) for side, r in rates.items()}
        emit({"summary": True, "median_tok_per_s": {k: round(v, 1) for k, v in medians.items()},
              "endpoint_over_inprocess": round(medians["endpoint"] / medians["inprocess"], 3)})
        local.close()
        remote.close()
    finally:
        stop_server(server)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "a") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in lines)


if __name__ == "__main__":
    main()
