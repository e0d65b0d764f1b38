"""A scripted engine for unit tests of pure logic: replies are taken in order and cycled.

Example:
    engine = FakeEngine(EngineSpec(backend="fake", fake_replies=("return 4",)))
    [c] = await engine.generate([msg], SamplingParams())
It records every request in `.calls` (conversation, params) so tests can count engine requests and
inspect rendered prompts. With many rows in flight the order of requests is the order the rows reach
them; give `reply(conversation, params) -> str` for replies that depend on the prompt instead.

Context: a word counts as a token, and a prompt longer than `spec.max_model_len` (less max_tokens) gets
what the real engines give it: empty "prompt_too_long" completions, -inf scores.

Scoring: `score` returns the scripted `fake_scores` (one tuple per request, cycled; uniform when
none), or asks `scorer(conversation, continuations) -> logprobs` when one is given, so a test can
script a judge that reads the prompt (e.g. one that prefers whichever response is shown first). Score
requests are recorded in `.score_calls`.
"""
from __future__ import annotations

import asyncio
import math
from itertools import cycle
from typing import Callable, Sequence

from .base import (
    Completion, ContinuationScores, EngineSpec, Message, SamplingParams, fits_context, prompt_too_long, truncate_at_stop,
    unscorable,
)

Scorer = Callable[[list[Message], Sequence[str]], Sequence[float]]
Replier = Callable[[list[Message], SamplingParams], str]


class Script:
    """Scripted text and scores, as the fake and sim engines give them: `reply(conversation, params)`
    or the replies cycled; `scorer(conversation, continuations)`, the spec's `fake_scores` cycled, or
    uniform."""

    def __init__(self, spec: EngineSpec, replies: Sequence[str] | None = None, scorer: Scorer | None = None,
                 reply: Replier | None = None):
        self._replies = cycle(tuple(replies if replies is not None else spec.fake_replies) or ("",))
        self._scores = cycle(spec.fake_scores) if spec.fake_scores else None
        self._scorer, self._reply = scorer, reply

    def text(self, conversation: list[Message], params: SamplingParams) -> str:
        return self._reply(conversation, params) if self._reply else next(self._replies)

    def logprobs(self, conversation: list[Message], continuations: Sequence[str]) -> list[float]:
        if self._scorer is not None:
            logprobs = list(self._scorer(conversation, continuations))
        elif self._scores is not None:
            logprobs = list(next(self._scores))
        else:
            logprobs = [math.log(1 / len(continuations))] * len(continuations)
        if len(logprobs) != len(continuations):
            raise ValueError(f"scripted scores {logprobs} do not match continuations {list(continuations)}")
        return logprobs


class FakeEngine:
    def __init__(self, spec: EngineSpec | None = None, replies: Sequence[str] | None = None,
                 scorer: Scorer | None = None, reply: Replier | None = None):
        self.spec = spec or EngineSpec(backend="fake", model="fake")
        self.script = Script(self.spec, replies, scorer, reply)
        self.calls: list[tuple[list[Message], SamplingParams]] = []
        self.score_calls: list[tuple[list[Message], tuple[str, ...]]] = []

    async def generate(self, conversation: list[Message], params: SamplingParams) -> list[Completion]:
        self.calls.append((list(conversation), params))
        await asyncio.sleep(0)  # a real engine yields to the loop: other rows' requests interleave
        prompt_tokens = _words(conversation)
        if not fits_context(prompt_tokens, params.max_tokens, self.spec.max_model_len):
            return prompt_too_long(prompt_tokens, params)
        group = []
        for _ in range(params.n):
            text, stopped = truncate_at_stop(self.script.text(conversation, params), params.stop)
            tokens = len(text.split())
            group.append(Completion(
                text=text, prompt_tokens=prompt_tokens, completion_tokens=tokens,
                finish_reason="stop" if stopped or tokens < params.max_tokens else "length",
                token_logprobs=[-0.5] * tokens if params.logprobs else None,
            ))
        return group

    async def score(self, conversation: list[Message], continuations: Sequence[str]) -> ContinuationScores:
        self.score_calls.append((list(conversation), tuple(continuations)))
        await asyncio.sleep(0)
        if not fits_context(_words(conversation), 1, self.spec.max_model_len):
            return unscorable(_words(conversation), continuations)
        return ContinuationScores(logprobs=self.script.logprobs(conversation, continuations),
                                  prompt_tokens=_words(conversation))

    def close(self) -> None:
        pass


def _words(conversation: list[Message]) -> int:
    return sum(len(m["content"].split()) for m in conversation)
