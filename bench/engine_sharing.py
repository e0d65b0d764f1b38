"""Benchmark: memory of two generator stages that run at the same time with the same model,
(a) each with its own engine actor (two model copies) vs (b) both on one shared EngineServer.

The two stages are the math-programs prompts over the same GSM8K questions with 0 and with 2 few-shot
exemplars (so the prompts differ), greedy. While each mode runs, a sampler thread reads every 0.2 s
the resident memory of the node's Ray worker processes (psutil) and, on a GPU, the GPU memory in use
(NVML); the figures are the peaks minus the idle baseline taken once before the first mode (Ray
started, no engine loaded). Run it on a warm model cache (a first run converts the embedded model). Wall times are
printed too, side by side.

    python bench/engine_sharing.py                                 # CPU: transformers, embedded SmolLM2
    python bench/engine_sharing.py --device cuda --prompts 256     # one GPU
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from functools import partial
from pathlib import Path

for _key, _value in {"RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_key, _value)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from llm_stage import generate_text, load_prompts  # noqa: E402

from tasks.generators.math_programs import program as mp  # noqa: E402
from tasks.engines.base import EngineSpec, SamplingParams  # noqa: E402


class MemorySampler(threading.Thread):
    """Peak RSS of Ray worker processes (ray::*) and peak GPU memory used, sampled every 0.2 s."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stop_event = threading.Event()
        self.peak_rss = 0
        self.peak_gpu = 0
        self._nvml = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = (pynvml, pynvml.nvmlDeviceGetHandleByIndex(0))
        except Exception:  # noqa: BLE001 - no GPU / no NVML: CPU figures only
            pass

    def sample(self) -> tuple[int, int]:
        import psutil

        rss = 0
        for proc in psutil.process_iter(["cmdline", "memory_info"]):
            cmd = proc.info["cmdline"] or []
            if cmd and cmd[0].startswith("ray::") and proc.info["memory_info"] is not None:
                rss += proc.info["memory_info"].rss
        gpu = 0
        if self._nvml:
            pynvml, handle = self._nvml
            gpu = pynvml.nvmlDeviceGetMemoryInfo(handle).used
        return rss, gpu

    def run(self) -> None:
        while not self.stop_event.is_set():
            rss, gpu = self.sample()
            self.peak_rss, self.peak_gpu = max(self.peak_rss, rss), max(self.peak_gpu, gpu)
            time.sleep(0.2)


def wait_for_engines_to_exit(base_gpu: int, timeout_s: float = 60) -> None:
    """Until no engine actor process is left and the GPU memory is back to the idle baseline (the
    driver frees a dead process's GPU memory a little after the process is gone)."""
    import psutil

    sampler = MemorySampler()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        names = [" ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])]
        engines_left = any(n.startswith(("ray::MapWorker", "ray::EngineServer")) for n in names)
        if not engines_left and sampler.sample()[1] <= base_gpu + 64 * 2**20:
            return
        time.sleep(0.5)


def run_mode(prompt_sets: list[list[dict]], spec: EngineSpec, program, batch_size: int, share: bool,
             base_rss: int, base_gpu: int) -> dict:
    """Both modes subtract the same idle baseline, taken once before the first mode."""
    from tasks.runtime.ray_stage import iter_row_batches, llm_stage, release_shared_engines, rows_dataset

    sampler = MemorySampler()
    sampler.start()
    counts, errors = [0] * len(prompt_sets), []

    def run(i: int) -> None:
        try:
            # Separate engines on one GPU: each takes a fraction, else the second waits for the first.
            gpus = None if share or spec.device != "cuda" else 1 / len(prompt_sets)
            ds = llm_stage(rows_dataset(prompt_sets[i], rows_per_block=batch_size), spec, program,
                           batch_size=batch_size, share_engine=share, num_gpus=gpus)
            counts[i] = sum(len(b) for b in iter_row_batches(ds))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompt_sets))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if share:
        release_shared_engines()
    sampler.stop_event.set()
    sampler.join()
    if errors:
        raise errors[0]
    assert counts == [len(p) for p in prompt_sets], counts
    return {"wall_s": round(wall, 2), "peak_worker_rss_gib": round((sampler.peak_rss - base_rss) / 2**30, 3),
            "peak_gpu_used_gib": round((sampler.peak_gpu - base_gpu) / 2**30, 3) if sampler._nvml else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=16, help="prompts per generator")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--engine", default="transformers", choices=["transformers", "vllm"])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "gsm8k" / "train.jsonl"))
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()

    import ray

    from tasks.runtime.ray_stage import configure_data_context

    spec = EngineSpec(backend=args.engine, model=args.model, device=args.device)
    program = partial(generate_text, params=SamplingParams(max_tokens=args.max_tokens, stop=mp.STOP))
    prompt_sets = [load_prompts(args.prompts, Path(args.data), exemplars) for exemplars in (0, 2)]
    ray.init(include_dashboard=False, logging_level="WARNING")
    configure_data_context()
    base_rss, base_gpu = MemorySampler().sample()  # Ray idle, no engine yet
    separate = run_mode(prompt_sets, spec, program, args.batch_size, False, base_rss, base_gpu)
    wait_for_engines_to_exit(base_gpu)  # else the next mode's peak counts the last mode's dying actors
    shared = run_mode(prompt_sets, spec, program, args.batch_size, True, base_rss, base_gpu)
    ray.shutdown()
    figures = {"engine": args.engine, "device": args.device, "model": spec.model_id, "generators": 2,
               "prompts_per_generator": args.prompts, "separate_engines": separate, "shared_engine": shared}
    print(json.dumps(figures, indent=2))
    print(f"\nworker RSS peak: separate {separate['peak_worker_rss_gib']} GiB vs shared {shared['peak_worker_rss_gib']} GiB"
          + (f"; GPU used peak: separate {separate['peak_gpu_used_gib']} GiB vs shared {shared['peak_gpu_used_gib']} GiB"
             if separate["peak_gpu_used_gib"] is not None else "")
          + f"; wall {separate['wall_s']} s vs {shared['wall_s']} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
