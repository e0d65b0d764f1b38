"""A scripted engine for unit tests of pure logic: replies are taken in order and cycled.

Example: FakeEngine(EngineSpec(backend="fake", fake_replies=("return 4",))).generate([[msg]], params)
It records every call in `.calls` so tests can count engine calls and inspect rendered prompts.
"""
from __future__ import annotations

from itertools import cycle
from typing import Sequence

from .base import Completion, EngineSpec, Message, SamplingParams, truncate_at_stop


class FakeEngine:
    def __init__(self, spec: EngineSpec | None = None, replies: Sequence[str] | None = None):
        self.spec = spec or EngineSpec(backend="fake", model="fake")
        replies = tuple(replies if replies is not None else self.spec.fake_replies) or ("",)
        self._replies = cycle(replies)
        self.calls: list[tuple[list[list[Message]], SamplingParams]] = []

    def generate(self, conversations: Sequence[list[Message]], params: SamplingParams) -> list[list[Completion]]:
        self.calls.append(([list(c) for c in conversations], params))
        out = []
        for conv in conversations:
            prompt_tokens = sum(len(m["content"].split()) for m in conv)
            group = []
            for _ in range(params.n):
                text, stopped = truncate_at_stop(next(self._replies), params.stop)
                tokens = len(text.split())
                group.append(
                    Completion(
                        text=text,
                        prompt_tokens=prompt_tokens,
                        completion_tokens=tokens,
                        finish_reason="stop" if stopped or tokens < params.max_tokens else "length",
                        token_logprobs=[-0.5] * tokens if params.logprobs else None,
                    )
                )
            out.append(group)
        return out

    def close(self) -> None:
        pass
