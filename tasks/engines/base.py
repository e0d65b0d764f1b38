"""The engine interface every generator talks to: one conversation in, n completions out, awaited.

Example:
    engine = make_engine(EngineSpec(backend="transformers"))          # embedded SmolLM2
    [c] = await engine.generate([{"role": "user", "content": "2+2?"}], SamplingParams(max_tokens=8))
    c.text, c.completion_tokens, c.token_logprobs

Every call is one request; a caller keeps many in flight at once (a per-row program per source row,
all awaited together) and the engine batches them: vLLM's async engine continuously, the transformers
backend by gathering what is waiting (tasks/engines/batching.py). `Occupancy` measures how full the
engine was kept: the mean number of requests in flight and the fraction of wall time it had work.

A conversation whose last message has role "assistant" is *continued* (prefill): the engine renders
the chat template without a generation prompt and the completion carries on that message's text.
The returned text is only the newly generated part; stop strings are not included in it.

Scoring instead of generating (a judge reading the probabilities of its choice tokens):
    s = await engine.score(conv + [{"role": "assistant", "content": "Answer:"}], [" A", " B"])
    s.logprobs   # [log P(" A" | prompt), log P(" B" | prompt)], from the raw logits
Every backend computes the same thing: the conversation is rendered as for `generate` and tokenized,
each continuation is tokenized on its own (no special tokens) and appended, and its score is the sum
of the log-probabilities of its tokens. Single-token continuations (" A", " B") are the next-token
log-probabilities of those tokens.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Literal, Protocol, Sequence

Message = dict  # {"role": "system"|"user"|"assistant", "content": str}

# The engine choices a user picks from, and the defaults every settings model, recipe and command takes
# from here. "auto": vLLM when it is installed and can run the model, else transformers (choose_backend).
# Not listed: "fake" (scripted replies, unit tests) and "sim" (a GPU simulated in time, benchmarks).
BACKENDS = ("auto", "transformers", "vllm", "openai")
DEVICES = ("auto", "cpu", "cuda")
DEFAULT_BACKEND = "auto"
DEFAULT_MODEL = "smollm2-135m"  # the embedded GGUF; any local Hugging Face model folder works too


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None  # same seed + same prompt + same backend -> same samples
    logprobs: bool = False  # return the log-probability of each generated token

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        object.__setattr__(self, "stop", tuple(self.stop))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    # "prompt_too_long": the prompt did not fit the model's context and nothing was generated (prompt_too_long())
    # "request_failed": an endpoint gave no answer after its retries (request_failed()); nothing was generated
    finish_reason: Literal["stop", "length", "prompt_too_long", "request_failed"]
    token_logprobs: list[float] | None = None  # one per generated token, when asked


@dataclass
class ContinuationScores:
    logprobs: list[float]  # one per continuation, in the order asked
    prompt_tokens: int  # tokens of the rendered conversation (the scored prefix)


@dataclass(frozen=True)
class EngineSpec:
    """Which engine to build. Picklable, so it travels to Ray actors; the engine itself does not."""

    backend: Literal["auto", "transformers", "vllm", "openai", "fake", "sim"] = DEFAULT_BACKEND
    model: str = DEFAULT_MODEL
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    threads: int | None = None  # torch/OMP threads on CPU; None = all cores of the node
    max_model_len: int = 2048
    # OpenAI backend only (tasks/engines/openai_engine.py): `model` is then the served model name.
    base_url: str | None = None  # e.g. http://127.0.0.1:8000/v1
    api_key_env: str | None = None  # the *name* of the environment variable holding the key, never the key
    price_in: float | None = None  # price per million prompt tokens (the runs table's cost); None = no cost
    price_out: float | None = None  # price per million completion tokens
    requests_in_flight: int = 16  # where the adaptive limit starts (AIMD: tasks/engines/limiter.py)
    max_requests_in_flight: int = 256  # and the most it grows to
    request_timeout: float = 600.0  # seconds for one HTTP request (a timeout is retried)
    max_retries: int = 5  # retries of a request after a 429, 5xx, timeout or lost connection
    # Fake backend only: scripted replies, cycled in order (unit tests of pure logic).
    fake_replies: tuple[str, ...] = field(default=())
    # Fake backend only: scripted continuation log-probabilities, one tuple per scored conversation, cycled.
    fake_scores: tuple[tuple[float, ...], ...] = field(default=())
    # Sim backend only (tasks/engines/sim.py: one vLLM GPU simulated in time; defaults ≈ an 8B model on
    # one H100, an order-of-magnitude calibration whose sources that module's docstring gives).
    # Output lengths to draw from: a Parquet file or folder (its `completion_tokens` column), a .json
    # file or an inline JSON list of ints, or the ints themselves; None = a small built-in sample.
    sim_lengths: str | tuple[int, ...] | None = None
    sim_seed: int = 0  # same seed + same requests -> same lengths, whatever the arrival order
    sim_speed: float = 1.0  # simulated seconds per wall second: 4 runs a 4-minute GPU job in 1 minute
    sim_max_num_seqs: int = 256  # vLLM's max_num_seqs: sequences decoded together
    sim_step_base_s: float = 0.008  # one decode step's fixed cost (reading the weights)
    sim_step_per_seq_s: float = 0.00005  # and its cost per running sequence
    sim_prefill_tok_s: float = 50_000.0  # prompt tokens per second, charged in the step that admits them
    sim_log: str | None = None  # append each request's prompt tokens and lengths here (SimEngine.replay)

    @property
    def model_id(self) -> str:
        """The name recorded in every row's lineage (an endpoint's model: the name it serves)."""
        if self.backend == "openai":
            return self.model
        from .model_files import model_id

        return model_id(self.model)


class Engine(Protocol):
    """What a per-row program awaits. Safe to call from many coroutines of one event loop at once."""

    spec: EngineSpec

    async def generate(self, conversation: list[Message], params: SamplingParams) -> list[Completion]:
        """`params.n` completions of one conversation."""
        ...

    async def score(self, conversation: list[Message], continuations: Sequence[str]) -> ContinuationScores:
        """log P(continuation | rendered conversation) of every continuation."""
        ...

    def close(self) -> None: ...


class Occupancy:
    """How full a caller kept an engine: requests in flight integrated over time.

    `window_seconds` runs from the first request's start to the last event; `mean_in_flight` =
    ∫ in-flight dt / window; `busy_fraction` = time with at least one request in flight / window.
    Snapshots are cumulative, so the latest one of each engine is its whole run (`combine`).

        occupancy = Occupancy()
        with occupancy.track():
            await engine.generate(...)
        Occupancy.combine([occupancy.snapshot()])   # {"requests": 1, "mean_in_flight": 1.0, ...}
    """

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._in_flight = 0
        self._first: float | None = None
        self._last: float | None = None
        self._started_at: float | None = None  # wall clock (epoch) of the first request
        self.requests = 0
        self.in_flight_seconds = 0.0
        self.busy_seconds = 0.0

    def _advance(self) -> float:
        now = self._clock()
        if self._last is not None:
            elapsed = now - self._last
            self.in_flight_seconds += self._in_flight * elapsed
            self.busy_seconds += elapsed if self._in_flight else 0.0
        self._last = now
        return now

    def begin(self) -> None:
        now = self._advance()
        if self._first is None:
            self._first, self._started_at = now, time.time()
        self._in_flight += 1
        self.requests += 1

    def end(self) -> None:
        self._advance()
        self._in_flight -= 1

    @contextmanager
    def track(self):
        self.begin()
        try:
            yield
        finally:
            self.end()

    def snapshot(self) -> dict:
        window = (self._last - self._first) if self._first is not None else 0.0
        return {"requests": self.requests, "in_flight_seconds": self.in_flight_seconds,
                "busy_seconds": self.busy_seconds, "window_seconds": window, "started_at": self._started_at}

    @staticmethod
    def combine(snapshots: Sequence[dict]) -> dict:
        """Several engines' snapshots -> requests, mean requests in flight per engine, busy fraction."""
        window = sum(s["window_seconds"] for s in snapshots)
        return {
            "requests": sum(s["requests"] for s in snapshots),
            "mean_in_flight": sum(s["in_flight_seconds"] for s in snapshots) / window if window else None,
            "busy_fraction": sum(s["busy_seconds"] for s in snapshots) / window if window else None,
        }


class TrackedEngine:
    """An engine whose requests are counted in an `Occupancy` (the runtime wraps every engine in one)."""

    def __init__(self, engine: Engine, occupancy: Occupancy | None = None):
        self.engine = engine
        self.spec = engine.spec
        self.occupancy = occupancy or Occupancy()

    @property
    def tokenizer(self):
        return getattr(self.engine, "tokenizer", None)

    async def generate(self, conversation: list[Message], params: SamplingParams) -> list[Completion]:
        with self.occupancy.track():
            return await self.engine.generate(conversation, params)

    async def score(self, conversation: list[Message], continuations: Sequence[str]) -> ContinuationScores:
        with self.occupancy.track():
            return await self.engine.score(conversation, continuations)

    def snapshot(self) -> dict:
        """The occupancy snapshot, with the endpoint's own counters under "endpoint" when the engine has
        them (the openai backend: retries, throttling, usage tokens)."""
        snapshot = self.occupancy.snapshot()
        endpoint_stats = getattr(self.engine, "endpoint_stats", None)
        if endpoint_stats is not None:
            snapshot["endpoint"] = endpoint_stats()
        return snapshot

    def close(self) -> None:
        self.engine.close()


def split_prefill(messages: list[Message]) -> tuple[list[Message], str | None]:
    """(messages, prefill) where prefill is the text of a trailing assistant message to continue."""
    if messages and messages[-1].get("role") == "assistant":
        return list(messages), messages[-1].get("content", "")
    return list(messages), None


def continuation_ids(tokenizer, continuations: Sequence[str]) -> list[list[int]]:
    """Token ids of each continuation, tokenized on its own; an empty one is an error (nothing to score)."""
    ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations]
    for text, tokens in zip(continuations, ids):
        if not tokens:
            raise ValueError(f"continuation {text!r} has no tokens to score")
    return ids


def fits_context(prompt_tokens: int, new_tokens: int, context: int) -> bool:
    """Whether a request fits the model: its prompt and the tokens it asks for within the context."""
    return prompt_tokens + new_tokens <= context


def prompt_too_long(prompt_tokens: int, params: SamplingParams) -> list[Completion]:
    """An engine's answer to a prompt that does not fit its context (`fits_context`): `params.n` empty
    completions, finish_reason "prompt_too_long". A per-row program reads them as any empty output (no
    program, no answer, no query), so one over-long prompt is one failed request, never a dead engine or
    run (a 5 MB question once made the transformers engine try to allocate terabytes)."""
    return [Completion(text="", prompt_tokens=prompt_tokens, completion_tokens=0, finish_reason="prompt_too_long")
            for _ in range(params.n)]


def request_failed(params: SamplingParams) -> list[Completion]:
    """An endpoint's answer to a request that failed after its retries (tasks/engines/openai_engine.py):
    `params.n` empty completions, finish_reason "request_failed". The per-row program reads them as it
    reads a prompt_too_long (any empty output), so the row ends with its generator's drop reason and
    keeps "request_failed" where it records a finish reason: the run goes on, the row stays for audit."""
    return [Completion(text="", prompt_tokens=0, completion_tokens=0, finish_reason="request_failed")
            for _ in range(params.n)]


def unscorable(prompt_tokens: int, continuations: Sequence[str]) -> ContinuationScores:
    """The scores of continuations after a prompt that does not fit the context: log P = -inf for
    each (no probability on any choice), so a judge falls back as it does when no choice is likely."""
    return ContinuationScores(logprobs=[-math.inf] * len(continuations), prompt_tokens=prompt_tokens)


def truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut text at the earliest stop string; (text, stopped)."""
    cut = min((i for s in stop if s and (i := text.find(s)) >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
