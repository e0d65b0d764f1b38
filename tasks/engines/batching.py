"""Requests in, batches out: the async engine interface over a backend that computes whole batches.

The transformers backend computes a batch of conversations per call (`generate_batch`,
`score_batch`). `BatchingEngine` puts every awaited request in a queue; one worker takes what is
waiting — after at most `max_wait_s` for more to arrive, up to `max_batch_seqs` sequences of the same
kind and sampling parameters, oldest request first — and runs the batch in a worker thread, so the
event loop keeps running the rows' programs (parsing, verifying, building the next turn) meanwhile.
A request that arrives during a batch joins the next one: no row waits for another row's later turns.

    engine = BatchingEngine(TransformersEngine(spec), max_batch_seqs=32)
    [c] = await engine.generate(conversation, SamplingParams())

Sampling is seeded per batch on this backend (one torch generator per call): the same seed gives the
same samples for the same batch, not for a prompt whatever its batch (vLLM seeds per request).
Run its tests: .venv/bin/python -m pytest tests/tasks/engines/test_batching.py
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, Sequence

from .base import Completion, ContinuationScores, EngineSpec, Message, SamplingParams


class BatchBackend(Protocol):
    spec: EngineSpec

    def generate_batch(self, conversations: Sequence[list[Message]], params: SamplingParams) -> list[list[Completion]]: ...

    def score_batch(self, conversations: Sequence[list[Message]], continuations: Sequence[str]) -> list[ContinuationScores]: ...

    def close(self) -> None: ...


@dataclass
class _Request:
    key: tuple  # ("generate", params) or ("score", continuations): requests batch with their own key
    conversation: list[Message]
    future: asyncio.Future
    sequences: int  # what it adds to a batch
    arrived: float = field(default_factory=time.monotonic)


class BatchingEngine:
    def __init__(self, backend: BatchBackend, max_batch_seqs: int = 32, max_wait_s: float = 0.005):
        self.backend = backend
        self.spec = backend.spec
        self.max_batch_seqs = max_batch_seqs
        self.max_wait_s = max_wait_s
        self.batches = 0  # batch calls made (tests and benchmarks read it)
        self._queue: list[_Request] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine-batch")

    @property
    def tokenizer(self):
        return getattr(self.backend, "tokenizer", None)

    async def generate(self, conversation: list[Message], params: SamplingParams) -> list[Completion]:
        sequences = 1 if params.temperature == 0 else params.n  # greedy samples are copies of one
        return await self._submit(("generate", params), conversation, sequences)

    async def score(self, conversation: list[Message], continuations: Sequence[str]) -> ContinuationScores:
        return await self._submit(("score", tuple(continuations)), conversation, 1)

    async def _submit(self, key: tuple, conversation: list[Message], sequences: int):
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first call, or a new event loop (a test's second asyncio.run)
            self._loop, self._queue, self._worker = loop, [], None
        request = _Request(key, list(conversation), loop.create_future(), sequences)
        self._queue.append(request)
        # The worker lives while there is work: an idle engine leaves no pending task behind (which
        # the interpreter would report at exit).
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._run())
        return await request.future

    def _take_batch(self) -> list[_Request]:
        """The oldest request's kind: as many of its requests, in arrival order, as fit one batch."""
        key = self._queue[0].key
        batch, rest, seqs = [], [], 0
        for request in self._queue:
            if request.key == key and (not batch or seqs + request.sequences <= self.max_batch_seqs):
                batch.append(request)
                seqs += request.sequences
            else:
                rest.append(request)
        self._queue = rest
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            if sum(r.sequences for r in self._queue) < self.max_batch_seqs and self.max_wait_s > 0:
                await asyncio.sleep(self.max_wait_s)  # let the rows whose turn just ended ask too
            batch = self._take_batch()
            kind, arg = batch[0].key
            conversations = [r.conversation for r in batch]
            call = self.backend.generate_batch if kind == "generate" else self.backend.score_batch
            try:
                results = await loop.run_in_executor(self._executor, call, conversations, arg)
                if len(results) != len(batch):  # zip would leave the unmatched requests waiting forever
                    raise RuntimeError(f"{kind}_batch returned {len(results)} results for {len(batch)} requests")
            except Exception as exc:  # noqa: BLE001 - the requests fail, the worker goes on
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(exc)
            else:
                for request, result in zip(batch, results):
                    if not request.future.done():
                        request.future.set_result(result)
            self.batches += 1

    def close(self) -> None:
        if self._worker is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._worker.cancel)
        self._executor.shutdown(wait=False)
        self.backend.close()
