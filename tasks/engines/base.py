"""The engine interface every generator talks to: chat messages in, n completions out.

Example:
    engine = make_engine(EngineSpec(backend="transformers"))          # embedded SmolLM2
    [[c]] = engine.generate([[{"role": "user", "content": "2+2?"}]], SamplingParams(max_tokens=8))
    c.text, c.completion_tokens, c.token_logprobs

A conversation whose last message has role "assistant" is *continued* (prefill): the engine renders
the chat template without a generation prompt and the completion carries on that message's text.
The returned text is only the newly generated part; stop strings are not included in it.

Scoring instead of generating (a judge reading the probabilities of its choice tokens):
    [s] = engine.score_continuations([conv + [{"role": "assistant", "content": "Answer:"}]], [" A", " B"])
    s.logprobs   # [log P(" A" | prompt), log P(" B" | prompt)], from the raw logits
Every backend computes the same thing: the conversation is rendered as for `generate` and tokenized,
each continuation is tokenized on its own (no special tokens) and appended, and its score is the sum
of the log-probabilities of its tokens. Single-token continuations (" A", " B") are the next-token
log-probabilities of those tokens.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal, Protocol, Sequence

Message = dict  # {"role": "system"|"user"|"assistant", "content": str}

# The engine choices a user picks from (the fake backend is for tests only), and the defaults every
# settings model, recipe and command takes from here.
BACKENDS = ("transformers", "vllm")
DEVICES = ("auto", "cpu", "cuda")
DEFAULT_BACKEND = "transformers"
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
    finish_reason: Literal["stop", "length"]
    token_logprobs: list[float] | None = None  # one per generated token, when asked


@dataclass
class ContinuationScores:
    logprobs: list[float]  # one per continuation, in the order asked
    prompt_tokens: int  # tokens of the rendered conversation (the scored prefix)


@dataclass(frozen=True)
class EngineSpec:
    """Which engine to build. Picklable, so it travels to Ray actors; the engine itself does not."""

    backend: Literal["transformers", "vllm", "fake"] = DEFAULT_BACKEND
    model: str = DEFAULT_MODEL
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    threads: int | None = None  # torch/OMP threads on CPU; None = all cores of the node
    max_model_len: int = 2048
    # Fake backend only: scripted replies, cycled in order (unit tests of pure logic).
    fake_replies: tuple[str, ...] = field(default=())
    # Fake backend only: scripted continuation log-probabilities, one tuple per scored conversation, cycled.
    fake_scores: tuple[tuple[float, ...], ...] = field(default=())

    @property
    def model_id(self) -> str:
        """The name recorded in every row's lineage."""
        from .model_files import model_id

        return model_id(self.model)


class Engine(Protocol):
    spec: EngineSpec

    def generate(
        self, conversations: Sequence[list[Message]], params: SamplingParams
    ) -> list[list[Completion]]:
        """One list of `params.n` completions per conversation, in input order."""
        ...

    def score_continuations(
        self, conversations: Sequence[list[Message]], continuations: Sequence[str]
    ) -> list[ContinuationScores]:
        """For each conversation, log P(continuation | rendered conversation) of every continuation."""
        ...

    def close(self) -> None: ...


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


def truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut text at the earliest stop string; (text, stopped)."""
    cut = min((i for s in stop if s and (i := text.find(s)) >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
