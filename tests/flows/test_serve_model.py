"""Proves `datagen serve-model`: the embedded SmolLM2 deployed with Ray Serve LLM (`ray.serve.llm`, vLLM
replicas behind an OpenAI-compatible ingress) on its own local Ray cluster in a subprocess, on this
2-core CPU machine (the ingress takes no CPU: tasks/runtime/serve_model.py), answers the OpenAI engine:
generators' requests with n samples, log-probabilities and usage, and choice scoring; SIGTERM removes
the deployment and the process ends. The recipe and CLI wiring are checked without a cluster."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from endpoint_servers import free_port, stop_group
from tasks.engines import EngineSpec, SamplingParams

# A judge's prefill whose choice tokens are among the top 20 next tokens: Ray Serve LLM's ingress has no
# /tokenize, so continuations outside them cannot be scored through it (the engine says so).
JUDGE = [{"role": "user", "content": "Which letter comes first in the alphabet, A or B?"},
         {"role": "assistant", "content": "The answer is"}]

REPO = Path(__file__).resolve().parents[2]


def test_serve_model_settings_and_recipe_engine_are_checked():
    from tasks.recipes import Recipe
    from tasks.runtime.serve_model import ServeModel

    assert ServeModel(host="0.0.0.0", port=9000).base_url() == "http://127.0.0.1:9000/v1"
    with pytest.raises(ValueError):
        ServeModel(min_replicas=0)
    recipe = Recipe(name="r", engines={"served": {"backend": "openai", "model": "smol",
                                                  "serve": {"model": "smollm2-135m", "max_replicas": 2}}},
                    generators=[{"name": "p", "flow": "math-programs", "engine": "served", "params": {"input": "x"}}])
    assert recipe.engines["served"].serve.max_replicas == 2
    with pytest.raises(ValueError, match="serve"):
        Recipe(name="r", engines={"e": {"backend": "vllm", "serve": {}}},
               generators=[{"name": "p", "flow": "math-programs", "engine": "e", "params": {"input": "x"}}])


@pytest.mark.vllm
def test_serve_model_answers_the_openai_engine(tmp_path):
    pytest.importorskip("vllm")
    from tasks.engines.openai_engine import OpenAIEngine

    port = free_port()
    log = tmp_path / "serve-model.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve-model", "--name", "smol", "--port", str(port),
                                   "--kv-cache-gib", "1"], stdout=out, stderr=subprocess.STDOUT, env=env,
                                  start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 500
        while "serving smollm2-135m" not in log.read_text():
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(2)
        assert f"--base-url {url} --model smol" in log.read_text()
        engine = OpenAIEngine(EngineSpec(backend="openai", base_url=url, model="smol"))
        conv = [{"role": "user", "content": "What is 2+2?"}]

        async def ask():
            return await asyncio.gather(
                engine.generate(conv, SamplingParams(n=2, temperature=1.0, seed=3, max_tokens=12, logprobs=True)),
                engine.generate(conv, SamplingParams(max_tokens=12)),
                engine.score(JUDGE, [" A", " B"]))

        sampled, [greedy], scores = asyncio.run(ask())
        assert len(sampled) == 2 and all(len(c.token_logprobs) == c.completion_tokens > 0 for c in sampled)
        assert greedy.text.strip() and greedy.prompt_tokens > 0
        assert all(lp < 0 for lp in scores.logprobs)
        assert engine.stats.prompt_tokens > 0 and engine.stats.completion_tokens > 0 and engine.stats.failed == 0
    finally:
        stop_group(server, timeout=90)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}/models", timeout=5)
