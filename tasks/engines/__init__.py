"""LLM engines behind one small interface (base.py: types only), one module per backend, and
`make_engine`, which imports a backend only when a spec asks for it.

Example: make_engine(EngineSpec(backend="vllm")).generate([[{"role": "user", "content": "2+2?"}]], SamplingParams())
"""
from .base import (
    BACKENDS, DEFAULT_BACKEND, DEFAULT_MODEL, DEVICES, Completion, ContinuationScores, Engine, EngineSpec,
    SamplingParams,
)


def make_engine(spec: EngineSpec) -> Engine:
    """Build the engine a spec names. Heavy imports happen here, not at module import."""
    if spec.backend == "transformers":
        from .transformers_engine import TransformersEngine

        return TransformersEngine(spec)
    if spec.backend == "vllm":
        from .vllm_engine import VLLMEngine

        return VLLMEngine(spec)
    if spec.backend == "fake":
        from .fake import FakeEngine

        return FakeEngine(spec)
    raise ValueError(f"unknown engine backend {spec.backend!r} (transformers, vllm, fake)")


__all__ = ["BACKENDS", "DEFAULT_BACKEND", "DEFAULT_MODEL", "DEVICES", "Completion", "ContinuationScores", "Engine",
           "EngineSpec", "SamplingParams", "make_engine"]
