"""LLM engines behind one small interface (see base.py): transformers, vLLM, and a scripted fake."""
from .base import Completion, ContinuationScores, Engine, EngineSpec, SamplingParams, make_engine

__all__ = ["Completion", "ContinuationScores", "Engine", "EngineSpec", "SamplingParams", "make_engine"]
