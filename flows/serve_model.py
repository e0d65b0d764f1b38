"""`datagen serve-model`: one model served on the Ray cluster as a Ray Serve LLM deployment, with an
OpenAI-compatible endpoint that any generator on any node reaches with `--engine openai`
(tasks/runtime/serve_model.py). It prints the endpoint and the command to use it, and serves until
Ctrl-C or SIGTERM, then removes the deployment.

    datagen serve-model --model smollm2-135m --name smol --port 8000 --max-replicas 2
    datagen run math-programs --input problems.jsonl --engine openai --base-url http://127.0.0.1:8000/v1 --model smol
"""
from __future__ import annotations

import argparse
import signal
import threading


def serve_model(args: argparse.Namespace) -> int:
    from tasks.runtime.ray_stage import ray_session
    from tasks.runtime.serve_model import ServeModel, start, stop

    spec = ServeModel(**{k: v for k, v in vars(args).items() if k in ServeModel.model_fields})
    done = threading.Event()
    with ray_session(args.ray_address):
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: done.set())
        url = start(spec)
        print(f"serving {spec.model} as {spec.name!r} at {url} ({spec.min_replicas}-{spec.max_replicas} replicas)\n"
              f"  datagen run <generator> ... --engine openai --base-url {url} --model {spec.name}", flush=True)
        try:
            done.wait()
        finally:
            stop()
    return 0
