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

That is at most 2 + ceil(log2 k) probes of N continuations each, instead of k + 1. All searches of a
batch advance in lock step, so each round is one engine call.

Example:
    search = FirstErrorSearch(n_steps=8)
    while (p := search.next_probe()) is not None:
        search.record(p, value_of_prefix(p))
    search.first_error_step, search.status, search.values
Run its tests: .venv/bin/python -m pytest tests/tasks/generators/cot_rewrites/test_step_labels.py -q
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

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


def run_searches(searches: Sequence[FirstErrorSearch],
                 estimate: Callable[[list[tuple[int, int]]], list[float]]) -> int:
    """Advance all searches together; `estimate([(search index, prefix), ...])` returns one value per
    probe. Returns the number of probes made."""
    probes = 0
    while True:
        todo = [(i, p) for i, s in enumerate(searches) if (p := s.next_probe()) is not None]
        if not todo:
            return probes
        for (i, prefix), value in zip(todo, estimate(todo)):
            searches[i].record(prefix, value)
        probes += len(todo)


def monte_carlo_estimator(engine: Engine, params: SamplingParams, problems: Sequence[dict],
                          messages_for: Callable[[dict, int], list[dict]]):
    """estimate() for run_searches: N continuations per probe in one engine call per round; a
    continuation succeeds when the pre-filled prefix plus its text ends on the gold answer.
    `problems[i]` has `gold_answer`; `messages_for(problem, prefix)` builds the pre-filled prompt."""
    def estimate(todo: list[tuple[int, int]]) -> list[float]:
        conversations = [messages_for(problems[i], p) for i, p in todo]
        groups = engine.generate(conversations, params)
        values = []
        for conversation, (i, _), group in zip(conversations, todo, groups):
            prefill = conversation[-1]["content"]
            hits = sum(answer_reached(prefill + c.text, problems[i]["gold_answer"]) for c in group)
            values.append(hits / len(group))
        return values

    return estimate


def label_rewrites(items: list[dict], engine: Engine, config) -> None:
    """Label every rewrite of `items` in place with root_value, step_values, first_error_step,
    label_status and label_continuations (config: a CotRewritesConfig)."""
    targets, searches = [], []
    for item in items:
        for rewrite in item["rewrites"]:
            targets.append({"item": item, "rewrite": rewrite, "gold_answer": item["gold_answer"]})
            searches.append(FirstErrorSearch(n_steps=len(rewrite["steps"])))

    def messages_for(target: dict, prefix: int) -> list[dict]:
        item = target["item"]
        return solve_messages(item["question"], item["task_family"], target["rewrite"]["steps"][:prefix],
                              config.templates)

    params = config.label_sampling()
    run_searches(searches, monte_carlo_estimator(engine, params, targets, messages_for))
    for target, search in zip(targets, searches):
        target["rewrite"].update(
            root_value=search.values.get(0), step_values=search.step_values(),
            first_error_step=search.first_error_step, label_status=search.status,
            label_continuations=len(search.values) * params.n)
