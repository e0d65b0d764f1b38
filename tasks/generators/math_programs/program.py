"""Program-annotated math solutions (PAL, Gao et al. 2022; Jie & Lu 2023): the generator's logic.

For each problem the model writes `def solution(): ... return answer` programs: one greedy, then
k-1 sampled at temperature 0.5. Every program runs in the sandbox (never in this process) and is
kept as a row, correct when its result matches the gold answer. A second, *dynamic* pass prompts
the still-unsolved problems with the most similar already-verified problems as exemplars
(exemplars.py picks them).

Pure parts (no I/O): `build_messages`, `parse`, `classify`, `to_records`.
The per-row program: `await write_programs(problem, engine, config)` (in the engine actor, many problems
at once). Sandbox-driven: `execute_attempts(problems, config)` (in Ray CPU tasks, spread over the
cluster's cores: the sandbox is CPU work, not the engine's).

Example record (abridged; schemas/tables.py MATH_PROGRAMS has every column):
    {"source_id": "gsm8k-17", "pass": "fixed", "attempt": 0, "exemplar_ids": ["ex-bakery", ...],
     "program": "def solution():\n    clips = 48 / 2\n    return 48 + clips", "exec_status": "ok",
     "exec_value": 72.0, "gold_answer": 72.0, "correct": true}
Run: `datagen run math-programs --input samples/math_word_problems.jsonl --data-dir ./datasets`
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Sequence

from pydantic import BaseModel, ConfigDict, Field

from tasks.answers import answers_match, parse_gold
from tasks.engines.base import Engine, SamplingParams
from tasks.runtime.inputs import (
    InputError, RowChecks, Source, column_id, column_text, content_id, pick_column, read_rows, select_rows,
)
from tasks.sandbox import ExecResult, SandboxLimits, run_programs

# The `generator` column and part of every record id: kept with its underscore (the CLI name is
# math-programs) so that existing tables keep their ids.
GENERATOR = "math_programs"
PROMPT_VERSION = "math-programs/v1"
PROMPTS = Path(__file__).parent / "prompts"
# The assistant turn is pre-filled with the opening code fence: without it the embedded model
# mostly ends its turn at once or writes prose; with it, it writes a `def solution()` program and
# generation stops at the closing fence. (Pre-filling the `def solution():` header as well made it
# end the turn immediately.) The parser reads the output as the continuation of this fence.
PREFILL = "```python\n"
STOP = ("```",)
EXEC_STATUSES = ("ok", "wrong", "error", "timeout", "no_program")
TOP_P = 1.0  # of the sampled programs; not an option, but part of every record and of the config hash
MEMORY_MB = 512  # sandbox address-space cap per program


class MathProgramsConfig(BaseModel):
    """The generator's options, declared once: `datagen run math-programs --<option>`, recipe params
    and deployment parameters all name these fields (MathProgramsSettings adds input and dynamic)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    samples: int = Field(4, ge=1, le=64, description="programs per problem and pass: 1 greedy + k-1 sampled")
    # 0.5 as in Jie & Lu (2023)
    temperature: float = Field(0.5, ge=0, description="temperature of the k-1 sampled programs")
    # a PAL program is ~60-150 tokens; longer outputs are rambling
    max_tokens: int = Field(256, ge=16, description="token budget of one program")
    exemplars: int = Field(8, ge=1, le=8, description="few-shot exemplars per prompt, 1..8: the first of the fixed "
                                                      "ones, or as many retrieved in the dynamic pass")
    seed: int = Field(0, description="sampling seed of the k-1 sampled programs")
    timeout_s: float = Field(5.0, gt=0, description="sandbox seconds per program",
                             json_schema_extra={"cli": ["--timeout"]})

    def sampling_plan(self) -> list[tuple[int, SamplingParams]]:
        """(first attempt index, params) for each engine call: greedy first, then the sampled rest."""
        greedy = SamplingParams(n=1, temperature=0.0, max_tokens=self.max_tokens, stop=STOP, logprobs=True)
        plan = [(0, greedy)]
        if self.samples > 1:
            sampled = SamplingParams(
                n=self.samples - 1, temperature=self.temperature, top_p=TOP_P,
                max_tokens=self.max_tokens, stop=STOP, seed=self.seed, logprobs=True,
            )
            plan.append((1, sampled))
        return plan

    def config_hash(self, model_id: str) -> str:
        """Hash of everything that shapes the records (not limits or resources). The dict is the one
        the first version hashed (its field names: `n_exemplars`, `top_p`), so existing data dirs and
        record ids stay valid: tests pin the value."""
        shaping = {"samples": self.samples, "temperature": float(self.temperature), "top_p": TOP_P,
                   "max_tokens": self.max_tokens, "seed": self.seed, "n_exemplars": self.exemplars}
        blob = json.dumps({"model": model_id, "prompt": PROMPT_VERSION, **shaping}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def limits(self) -> SandboxLimits:
        return SandboxLimits(timeout_s=self.timeout_s, memory_mb=MEMORY_MB)


# ---------------------------------------------------------------- inputs


@lru_cache(maxsize=1)
def fixed_exemplars() -> tuple[dict, ...]:
    """The 8 hand-written PAL exemplars (prompts/exemplars.jsonl)."""
    rows = [row for _, row in read_rows(PROMPTS / "exemplars.jsonl")]
    return tuple({"id": r["id"], "question": r["question"], "program": r["program"]} for r in rows)


@lru_cache(maxsize=1)
def system_prompt() -> str:
    return (PROMPTS / "system.txt").read_text().strip()


QUESTION_COLUMNS = ("question", "problem")
ANSWER_COLUMNS = ("answer", "gold", "gold_answer", "final_answer")


def load_problems(path: str | Path, limit: int | None = None, checks: RowChecks = RowChecks()) -> Source:
    """Problems from JSONL/Parquet: `question` (or `problem`), `answer` (GSM8K `... #### N` or a
    number), optional `id`. A bad row raises InputError naming the file and row; a repeated id and an
    over-long question follow `checks` (tasks/runtime/inputs.py: an error, or a counted reject)."""
    return select_rows(path, _problems(path), limit, checks)


def _problems(path: str | Path) -> Iterator[dict]:
    for row_number, row in read_rows(path):
        question_col = pick_column(path, row_number, row, QUESTION_COLUMNS)
        answer_col = pick_column(path, row_number, row, ANSWER_COLUMNS)
        question = column_text(path, row_number, row, question_col)
        try:
            gold = parse_gold(row[answer_col])
        except ValueError as exc:
            raise InputError(path, row_number, f"column {answer_col!r}: {exc}") from None
        yield {"source_id": column_id(path, row_number, row, ("id",)) or content_id("q", question),
               "source_file": str(path), "source_row": row_number, "question": question, "gold_answer": gold}


# ---------------------------------------------------------------- prompt and parser (pure)


def build_messages(question: str, exemplars: Sequence[dict]) -> list[dict]:
    """System line, one user/assistant turn per exemplar, the question, and the pre-filled header."""
    messages = [{"role": "system", "content": system_prompt()}]
    for ex in exemplars:
        messages.append({"role": "user", "content": ex["question"]})
        messages.append({"role": "assistant", "content": f"```python\n{ex['program'].strip()}\n```"})
    messages.append({"role": "user", "content": question})
    messages.append({"role": "assistant", "content": PREFILL})
    return messages


_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)(?:```|\Z)", re.S)
_DEF = re.compile(r"^def solution\s*\(", re.M)


def parse(text: str | None, continued: bool = True) -> dict:
    """Extract the `solution()` program from model output. Never raises.

    `continued`: the text continues PREFILL (the normal case); otherwise it is a free answer.
    Returns {"program": str | None, "parse_error": str | None}.
    """
    if text is None or not text.strip():
        return {"program": None, "parse_error": "empty_output"}
    full = PREFILL + text if continued else text
    blocks = [b for b in _FENCE.findall(full) if _DEF.search(b)]
    candidate = blocks[0] if blocks else None
    if candidate is None:
        match = _DEF.search(full)
        if match is None:
            return {"program": None, "parse_error": "no_solution_function"}
        candidate = full[match.start():]
    program = candidate[_DEF.search(candidate).start():].rstrip()
    body = program.split("\n", 1)[1] if "\n" in program else ""
    if not body.strip():
        return {"program": None, "parse_error": "empty_function_body"}
    first_line = next(line for line in body.splitlines() if line.strip())
    if not first_line[:1].isspace():  # prose after the header, not an indented function body
        return {"program": None, "parse_error": "not_code"}
    if not re.search(r"^\s+return\b", body, re.M):
        return {"program": program, "parse_error": "no_return"}
    return {"program": program, "parse_error": None}


def classify(result: ExecResult | None, gold: float) -> tuple[str, bool]:
    """(exec_status, correct) for one attempt; result None means there was no program to run."""
    if result is None:
        return "no_program", False
    if result.status != "ok":
        return result.status, False
    if answers_match(result.value, gold):
        return "ok", True
    return "wrong", False


# ---------------------------------------------------------------- the per-row program and the sandbox step


async def write_programs(problem: dict, engine: Engine, config: MathProgramsConfig) -> dict:
    """The per-row program (runs in the engine actor beside many others): the problem gets `attempts`,
    generated and parsed, not yet run. The greedy and the sampled requests go in together."""
    conversation = build_messages(problem["question"], problem["exemplars"])
    plan = config.sampling_plan()
    groups = await asyncio.gather(*(engine.generate(conversation, params) for _, params in plan))
    problem["attempts"] = [
        attempt_of(first_attempt + offset, params, completion)
        for (first_attempt, params), group in zip(plan, groups)
        for offset, completion in enumerate(group)
    ]
    return problem


def attempt_of(index: int, params: SamplingParams, completion) -> dict:
    logprobs = completion.token_logprobs or []
    return {
        "attempt": index,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "seed": params.seed,
        "raw_output": completion.text,
        # no answer from the endpoint (--engine openai): no_program, and the parse error says why
        **(parse(completion.text) if completion.finish_reason != "request_failed"
           else {"program": None, "parse_error": "request_failed"}),
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "finish_reason": completion.finish_reason,
        "mean_logprob": (sum(logprobs) / len(logprobs)) if logprobs else None,
    }


def execute_attempts(problems: list[dict], config: MathProgramsConfig) -> list[dict]:
    """Runs in a Ray CPU task: every parsed program goes through the sandbox and is classified."""
    todo = [(p, a) for p in problems for a in p["attempts"] if a["program"] is not None]
    results = run_programs([a["program"] for _, a in todo], limits=config.limits())
    by_id = {id(a): r for (_, a), r in zip(todo, results)}
    for problem in problems:
        for attempt in problem["attempts"]:
            result = by_id.get(id(attempt))
            status, correct = classify(result, problem["gold_answer"])
            attempt.update(
                exec_status=status,
                correct=correct,
                exec_result=result.result_repr if result else None,
                exec_value=result.value if result and result.value is not None and math.isfinite(result.value) else None,
                exec_error=result.error if result else None,
                exec_seconds=result.wall_s if result else None,
            )
    return problems


def record_id(source_id: str, config_hash: str, pass_name: str, attempt: int) -> str:
    key = f"{source_id}|{GENERATOR}|{config_hash}|{pass_name}|{attempt}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def to_records(problem: dict, lineage: dict) -> list[dict]:
    """One table row per attempt. `lineage`: run_id, model, engine, config_hash, max_tokens, created_at."""
    rows = []
    for a in problem["attempts"]:
        rows.append(
            {
                "record_id": record_id(problem["source_id"], lineage["config_hash"], problem["pass"], a["attempt"]),
                "source_id": problem["source_id"],
                "source_file": problem["source_file"],
                "source_row": problem["source_row"],
                "generator": GENERATOR,
                "prompt_version": PROMPT_VERSION,
                **lineage,
                "temperature": a["temperature"],
                "top_p": a["top_p"],
                "seed": a["seed"],
                "question": problem["question"],
                "gold_answer": problem["gold_answer"],
                "pass": problem["pass"],
                "attempt": a["attempt"],
                "exemplar_ids": [e["id"] for e in problem["exemplars"]],
                **{k: a[k] for k in (
                    "raw_output", "program", "parse_error", "exec_status", "exec_result", "exec_value",
                    "exec_error", "exec_seconds", "correct", "prompt_tokens", "completion_tokens",
                    "finish_reason", "mean_logprob",
                )},
            }
        )
    return rows
