"""Step-level labels by Monte Carlo (OmegaPRM, Luo et al. 2024; URSA 2025), first bad step by binary search.

The value of a prefix (the question plus steps 1..p) is the fraction of N sampled continuations from
it that reach the gold answer. A step is *bad* when the prefix ending on it has value 0 while the
prefix before it had value > 0: from there on the model can no longer reach the answer. Values fall
as errors pile up, so the first bad step is found by binary search over prefixes instead of scoring
every step:

    probe p = k (all steps)  -> value > 0: no error ("no_error")
    probe p = 0 (question)   -> value = 0: the model cannot solve it at all ("unsolved", no index)
    lo, hi = 0, k            -> while hi - lo > 1: probe mid; value > 0 ? lo = mid : hi = mid
    first_error_step = hi    ("error_found"; 1-based, like the `Step k:` lines and DuckDB lists)

That is at most 2 + ceil(log2 k) probes of N continuations each, instead of k + 1. A probe is one
engine request (n = N continuations of the pre-filled prefix); each rewrite's search runs in its own
coroutine, probing one prefix at a time, so a search's next probe starts as soon as its last one is
answered, while the searches of every other rewrite and row are in flight beside it.

Example:
    search = FirstErrorSearch(n_steps=8)                 # pure: what to probe next, what it found
    while (p := search.next_probe()) is not None:
        search.record(p, value_of_prefix(p))
    search.first_error_step, search.status, search.values
    await label_rewrite(item, rewrite, engine, config)   # the same search with Monte-Carlo values
Run its tests: .venv/bin/python -m pytest tests/tasks/generators/cot_rewrites/test_step_labels.py -q
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from tasks.engines.base import Engine, SamplingParams

from .messages import solve_messages
from .verify import answer_reached

STATUSES = ("no_error", "error_found", "unsolved", "no_steps")


@dataclass
class FirstErrorSearch:
    n_steps: int
    values: dict[int, float] = field(default_factory=dict)  # prefix length -> estimated success
    status: str | None = None
    first_error_step: int | None = None
    _lo: int = 0
    _hi: int = 0

    def __post_init__(self):
        if self.n_steps == 0:
            self.status = "no_steps"
        self._hi = self.n_steps

    @property
    def done(self) -> bool:
        return self.status is not None

    def next_probe(self) -> int | None:
        """The prefix length to estimate next, or None when the search is over."""
        if self.done:
            return None
        if self.n_steps not in self.values:
            return self.n_steps
        if 0 not in self.values:
            return 0
        return (self._lo + self._hi) // 2

    def record(self, prefix: int, value: float) -> None:
        self.values[prefix] = value
        if prefix == self.n_steps and value > 0:
            self.status = "no_error"
        elif prefix == 0 and value == 0:
            self.status = "unsolved"
        elif prefix not in (0, self.n_steps):
            if value > 0:
                self._lo = prefix
            else:
                self._hi = prefix
        if not self.done and self.n_steps in self.values and 0 in self.values and self._hi - self._lo <= 1:
            self.status, self.first_error_step = "error_found", self._hi

    def step_values(self) -> list[float | None]:
        """Per step i = 1..k: the value of the prefix ending on step i, None where not probed."""
        return [self.values.get(i) for i in range(1, self.n_steps + 1)]


async def run_search(search: FirstErrorSearch, value: Callable[[int], Awaitable[float]]) -> FirstErrorSearch:
    """Probe one prefix at a time until the search is over; `value(prefix)` awaits its estimate."""
    while (prefix := search.next_probe()) is not None:
        search.record(prefix, await value(prefix))
    return search


def monte_carlo_value(engine: Engine, params: SamplingParams, gold_answer: str,
                      messages_for: Callable[[int], list[dict]]) -> Callable[[int], Awaitable[float]]:
    """value() for run_search: one request of `params.n` continuations of the pre-filled prompt
    `messages_for(prefix)`; a continuation succeeds when the prefix plus its text ends on the gold
    answer (checked off the event loop: math-verify can take a while)."""
    async def value(prefix: int) -> float:
        conversation = messages_for(prefix)
        group = await engine.generate(conversation, params)
        prefill = conversation[-1]["content"]
        hits = await asyncio.to_thread(lambda: sum(answer_reached(prefill + c.text, gold_answer) for c in group))
        return hits / len(group)

    return value


async def label_rewrite(item: dict, rewrite: dict, engine: Engine, config) -> dict:
    """Label one rewrite of `item` in place with root_value, step_values, first_error_step,
    label_status and label_continuations (config: a CotRewritesConfig)."""
    params = config.label_sampling()
    steps = rewrite["steps"]

    def messages_for(prefix: int) -> list[dict]:
        return solve_messages(item["question"], item["task_family"], steps[:prefix], config.templates)

    search = await run_search(FirstErrorSearch(n_steps=len(steps)),
                              monte_carlo_value(engine, params, item["gold_answer"], messages_for))
    rewrite.update(root_value=search.values.get(0), step_values=search.step_values(),
                   first_error_step=search.first_error_step, label_status=search.status,
                   label_continuations=len(search.values) * params.n)
    return rewrite
