"""A scripted engine for unit tests of pure logic: replies are taken in order and cycled.

Example: FakeEngine(EngineSpec(backend="fake", fake_replies=("return 4",))).generate([[msg]], params)
It records every call in `.calls` so tests can count engine calls and inspect rendered prompts.

Scoring: `score_continuations` returns the scripted `fake_scores` (one tuple per conversation, cycled;
uniform when none), or asks `scorer(conversation, continuations) -> logprobs` when one is given, so a
test can script a judge that reads the prompt (e.g. one that prefers whichever response is shown
first). Score calls are recorded in `.score_calls`.
"""
from __future__ import annotations

import math
from itertools import cycle
from typing import Callable, Sequence

from .base import Completion, ContinuationScores, EngineSpec, Message, SamplingParams, truncate_at_stop

Scorer = Callable[[list[Message], Sequence[str]], Sequence[float]]


class FakeEngine:
    def __init__(self, spec: EngineSpec | None = None, replies: Sequence[str] | None = None,
                 scorer: Scorer | None = None):
        self.spec = spec or EngineSpec(backend="fake", model="fake")
        replies = tuple(replies if replies is not None else self.spec.fake_replies) or ("",)
        self._replies = cycle(replies)
        self._scores = cycle(self.spec.fake_scores) if self.spec.fake_scores else None
        self._scorer = scorer
        self.calls: list[tuple[list[list[Message]], SamplingParams]] = []
        self.score_calls: list[tuple[list[list[Message]], tuple[str, ...]]] = []

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

    def score_continuations(self, conversations: Sequence[list[Message]],
                            continuations: Sequence[str]) -> list[ContinuationScores]:
        self.score_calls.append(([list(c) for c in conversations], tuple(continuations)))
        out = []
        for conv in conversations:
            if self._scorer is not None:
                logprobs = list(self._scorer(conv, continuations))
            elif self._scores is not None:
                logprobs = list(next(self._scores))
            else:
                logprobs = [math.log(1 / len(continuations))] * len(continuations)
            if len(logprobs) != len(continuations):
                raise ValueError(f"scripted scores {logprobs} do not match continuations {list(continuations)}")
            out.append(ContinuationScores(logprobs=logprobs, prompt_tokens=sum(len(m["content"].split()) for m in conv)))
        return out

    def close(self) -> None:
        pass
