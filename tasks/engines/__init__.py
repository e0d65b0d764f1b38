"""LLM engines behind one small interface (see base.py): transformers, vLLM, and a scripted fake."""
from .base import Completion, Engine, EngineSpec, SamplingParams, make_engine

__all__ = ["Completion", "Engine", "EngineSpec", "SamplingParams", "make_engine"]
