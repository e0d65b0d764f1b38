"""Answer-preserving chain-of-thought rewrites (URSA 2025; Supervised Chain of Thought): the logic.

Each item is routed by what its source solution is — none (answer only) -> `expand` into a trajectory
that reaches the given answer; an informal analysis -> `rewrite` into strict steps; a terse or symbolic
chain -> `unify` into natural-language steps — and gets a step template chosen by its task family
(arithmetic, algebra, geometry, generic; prompts/templates.json). The model writes
`Step 1: ... Step k: ...` and a `Final answer:` line (the assistant turn is pre-filled with `Step 1:`).
Every rewrite is verified (verify.py) and kept as a row, with its rejection reason when
it changed the answer, hedged, looped, or ended without a readable answer. With step labels on,
step_labels.py estimates per-prefix success by Monte Carlo and finds the first bad step.

Pure parts (no I/O but the prompt files): `load_items`, `detect_source_type`, `detect_family`,
`build_messages`, `parse_steps`, `to_records`. The per-row program: `await rewrite_item(item, engine,
config)` (run in the Ray LLM actor beside many other items: generate the n rewrites in one request ->
parse -> verify off the event loop -> mark duplicates -> with step labels, label every rewrite
concurrently).

Example record (abridged): {"source_id": "test/algebra/1004.json", "route": "rewrite",
  "template_id": "algebra@cot-templates/v1", "steps": ["Let $x$ be ...", "..."], "extracted_answer": "4",
  "answer_match": true, "kept": true, "rejection_reason": null, "first_error_step": null}
Run: `datagen run cot-rewrites --input data/math500/test500.jsonl --limit 50 --data-dir ./datasets`
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tasks.engines.base import Engine, SamplingParams
from tasks.runtime.inputs import (
    InputError, RowChecks, Source, column_id, column_text, content_id, describe, pick_column, read_rows, select_rows,
)

from .messages import (
    _ASY, _CALCULATOR, PREFILL, build_messages, detect_family, load_templates, prompt_files_hash, solve_messages,
    template_id,
)
from .step_labels import label_rewrite
from .verify import last_boxed, verify_parsed

GENERATOR = "cot_rewrites"
PROMPT_VERSION = "cot-rewrites/v1"
ROUTES = ("expand", "rewrite", "unify")
SOURCE_TYPES = {"none": "expand", "informal": "rewrite", "symbolic": "unify"}


class CotRewritesConfig(BaseModel):
    """The generator's options, declared once: `datagen run cot-rewrites --<option>`, recipe params and
    deployment parameters all name these fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rewrites: int = Field(1, ge=1, le=32, description="rewrites per item: 1 greedy, or n sampled (distinct kept)")
    temperature: float = Field(0.8, ge=0, description="temperature of the n sampled rewrites (n > 1)")
    top_p: float = Field(0.95, gt=0, le=1, description="top-p of the n sampled rewrites (n > 1)")
    # a MATH-500 solution in steps is ~100-300 tokens
    max_tokens: int = Field(384, ge=16, description="token budget of one rewrite")
    seed: int = 0
    route: Literal["expand", "rewrite", "unify"] | None = Field(None, description="force one route for every item")
    route_column: str = Field("route", description="input column that forces the route per row when set")
    templates: str | None = Field(None, description="a step-templates JSON of your own (shape of "
                                                    "tasks/generators/cot_rewrites/prompts/templates.json)")
    # Source-type detection: a solution is a terse/symbolic chain when its lines carry fewer than
    # `terse_words_per_line` prose words on average (GSM8K: median 8; MATH-500: median 12) or when
    # prose words are under `terse_prose_ratio` of its tokens (math spans counted as tokens).
    terse_words_per_line: float = Field(7.0, gt=0, description="a solution with fewer prose words per line is terse (unify)")
    terse_prose_ratio: float = Field(0.35, ge=0, le=1, description="a solution with a smaller share of prose words is terse (unify)")
    step_labels: bool = Field(False, description="Monte-Carlo step values and the first bad step (binary search)")
    continuations: int = Field(4, ge=1, le=64, description="continuations per probed prefix (step labels)")
    label_temperature: float = Field(0.7, ge=0, description="temperature of the continuations (step labels)")
    label_max_tokens: int = Field(256, ge=16, description="max tokens per continuation (step labels)")

    @model_validator(mode="after")
    def _templates_load(self):
        if self.templates is not None and not Path(self.templates).is_file():
            raise ValueError(f"templates file not found: {self.templates}")
        load_templates(self.templates)  # a bad templates file fails here, before any work
        return self

    def sampling(self) -> SamplingParams:
        if self.rewrites == 1:
            return SamplingParams(n=1, temperature=0.0, max_tokens=self.max_tokens)
        return SamplingParams(n=self.rewrites, temperature=self.temperature, top_p=self.top_p,
                              max_tokens=self.max_tokens, seed=self.seed)

    def label_sampling(self) -> SamplingParams:
        return SamplingParams(n=self.continuations, temperature=self.label_temperature,
                              max_tokens=self.label_max_tokens, seed=self.seed)

    def config_hash(self, model_id: str) -> str:
        """Hash of everything that shapes the records: settings, model, prompt files, templates."""
        shaping = self.model_dump(exclude={"templates"})
        blob = json.dumps({"model": model_id, "prompt": PROMPT_VERSION, "prompt_files": prompt_files_hash(),
                           "templates": load_templates(self.templates), **shaping}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- inputs

QUESTION_COLUMNS = ("question", "problem", "input")
SOLUTION_COLUMNS = ("solution", "rationale", "explanation")
GOLD_COLUMNS = ("answer", "gold", "gold_answer", "final_answer", "target")
SUBJECT_COLUMNS = ("subject", "type", "category", "family")
ID_COLUMNS = ("id", "unique_id")


def _text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:g}" if isinstance(value, float) else str(value)
    return value.strip() if isinstance(value, str) and value.strip() else None


def load_items(path: str | Path, config: CotRewritesConfig, limit: int | None = None,
               checks: RowChecks = RowChecks()) -> Source:
    """Items from JSONL/Parquet. MATH-style rows: `problem`, `solution`, `answer` (LaTeX gold).
    GSM8K-style rows: `question`, `answer` = worked solution ending `#### N`. Answer-only rows:
    `question`, `answer`. Optional: `id`/`unique_id`, `subject`, and the route column. A bad row raises
    InputError naming the file and row; a repeated id and an over-long item follow `checks`
    (tasks/runtime/inputs.py: an error, or a counted reject)."""
    return select_rows(path, _items(path, config), limit, checks)


def _items(path: str | Path, config: CotRewritesConfig) -> Iterator[dict]:
    for row_number, row in read_rows(path):
        question = column_text(path, row_number, row, pick_column(path, row_number, row, QUESTION_COLUMNS))
        solutions = (column_text(path, row_number, row, c, required=False) for c in SOLUTION_COLUMNS)
        solution = next((text for text in solutions if text), None)
        gold_col = next((c for c in GOLD_COLUMNS if c in row), None)
        gold_raw = _gold_text(path, row_number, row, gold_col) if gold_col else None
        if gold_raw and "####" in gold_raw:  # GSM8K: the worked solution and its gold in one column
            worked, _, final = gold_raw.rpartition("####")
            gold = final.strip()
            if not gold:
                raise InputError(path, row_number, f"column {gold_col!r}: nothing after '####'")
            solution = solution or _text(_CALCULATOR.sub("", worked))
        elif gold_raw:
            gold = gold_raw
        elif solution and last_boxed(solution):
            gold = last_boxed(solution)
        else:
            raise InputError(path, row_number, f"no gold answer: expected one of {list(GOLD_COLUMNS)} "
                                               f"or a \\boxed{{}} in the solution; row has {sorted(row)}")
        forced = _forced_route(path, row_number, row, config)
        source_type = detect_source_type(solution, config)
        route = forced or SOURCE_TYPES[source_type]
        if route != "expand" and not solution:
            raise InputError(path, row_number, f"route {route!r} needs a source solution, the row has none")
        subject = next((_text(row[c]) for c in SUBJECT_COLUMNS if _text(row.get(c))), None)
        family = detect_family(question, subject, gsm8k=bool(gold_raw and "####" in gold_raw),
                               templates=config.templates)
        yield {
            "source_id": column_id(path, row_number, row, ID_COLUMNS) or content_id("cot", question),
            "source_file": str(path), "source_row": row_number,
            "question": question, "gold_answer": gold, "source_solution": solution,
            "source_type": source_type, "route": route, "route_forced": forced is not None,
            "task_family": family,
        }


def _gold_text(path, row_number: int, row: dict, column: str) -> str | None:
    """A gold answer: text, or a finite number written as text ("18", "0.5"); None when null or blank.
    Anything else (NaN, a bool, a list) is an InputError naming the column."""
    value = row[column]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return _text(value)
    if value is None or isinstance(value, str):
        return _text(value)
    raise InputError(path, row_number, f"column {column!r} must be text or a number, got {describe(value)}")


def _forced_route(path, row_number: int, row: dict, config: CotRewritesConfig) -> str | None:
    if config.route:
        return config.route
    value = _text(row.get(config.route_column)) if config.route_column else None
    if value is None:
        return None
    if value not in ROUTES:
        raise InputError(path, row_number, f"column {config.route_column!r}: route {value!r} is not one of {list(ROUTES)}")
    return value


# ---------------------------------------------------------------- routing and families (pure)

_MATH_SPAN = re.compile(
    r"\$\$.*?\$\$|\$.*?\$|\\\[.*?\\\]|\\\(.*?\\\)|\\begin\{(align|equation|eqnarray|gather)\*?\}.*?\\end\{\1\*?\}",
    re.S)


def source_stats(solution: str) -> tuple[float, float]:
    """(prose words per line, prose words / all tokens) of a solution; math spans are not prose."""
    text = _ASY.sub(" ", solution)
    prose = _MATH_SPAN.sub(" ", text)
    words = re.findall(r"[A-Za-z]{2,}", re.sub(r"\\[a-zA-Z]+", " ", prose))
    symbols = re.findall(r"[0-9=+\-*/^<>()]", prose)
    math_tokens = len(re.findall(r"\S+", text)) - len(re.findall(r"\S+", prose))
    lines = [line for line in text.splitlines() if line.strip()]
    return len(words) / max(1, len(lines)), len(words) / max(1, len(words) + len(symbols) + max(0, math_tokens))


def detect_source_type(solution: str | None, config: CotRewritesConfig) -> str:
    """none | informal | symbolic (see CotRewritesConfig for the thresholds)."""
    if not solution or not solution.strip():
        return "none"
    words_per_line, prose_ratio = source_stats(solution)
    if words_per_line < config.terse_words_per_line or prose_ratio < config.terse_prose_ratio:
        return "symbolic"
    return "informal"


# ---------------------------------------------------------------- parser (pure, never raises)

_STEP = re.compile(r"^[ \t>*_#]*step[ \t]*(\d+)[ \t*_]*[:.)][ \t*_]*", re.IGNORECASE | re.MULTILINE)
_FINAL = re.compile(r"^[ \t>*_#]*(?:the )?final answer(?:[ \t*_]*[:：]|[ \t]+is\b)[ \t*_]*(.*?)[ \t]*$",
                    re.IGNORECASE | re.MULTILINE)  # "Final answer: X", or "The final answer is X."


def parse_steps(text: str | None) -> dict:
    """Parse `Step k: ...` lines and the first `Final answer:` line of a full rewrite (prefill included).

    Returns {"rewritten_text", "steps", "final_answer", "parse_error"}: rewritten_text is the text up
    to and including the final answer line (what follows it is dropped); a step runs until the next
    step or the final answer line; parse_error is None | "no_steps" | "missing_answer".
    """
    if text is None or not text.strip():
        return {"rewritten_text": None, "steps": [], "final_answer": None, "parse_error": "no_steps"}
    final = _FINAL.search(text)
    body = text[: final.start()] if final else text
    rewritten = (text[: final.end()] if final else text).strip()
    marks = list(_STEP.finditer(body))
    steps = []
    for mark, nxt in zip(marks, marks[1:] + [None]):
        content = body[mark.end(): nxt.start() if nxt else len(body)].strip()
        if content:
            steps.append(re.sub(r"[ \t]*\n[ \t]*", "\n", content))
    answer = final.group(1).strip() if final else None
    if answer:
        answer = last_boxed(answer) or answer.strip("*_ ").rstrip(".").strip()
        if len(answer) > 1 and answer.startswith("$") and answer.endswith("$"):
            answer = answer.strip("$").strip()
    if not steps:
        return {"rewritten_text": rewritten, "steps": [], "final_answer": answer, "parse_error": "no_steps"}
    if not answer:
        return {"rewritten_text": rewritten, "steps": steps, "final_answer": None, "parse_error": "missing_answer"}
    return {"rewritten_text": rewritten, "steps": steps, "final_answer": answer, "parse_error": None}


def judge(parsed: dict, gold: str) -> dict:
    """Parse result -> extracted_answer, answer_match, kept, rejection_reason."""
    if parsed["parse_error"] == "no_steps":
        return {"extracted_answer": parsed["final_answer"], "answer_match": None, "kept": False,
                "rejection_reason": "no_steps"}
    verdict = verify_parsed(parsed["rewritten_text"], parsed["steps"], parsed["final_answer"], gold)
    return {"extracted_answer": verdict.extracted_answer, "answer_match": verdict.answer_match,
            "kept": verdict.kept, "rejection_reason": verdict.reason}


def _fingerprint(text: str | None) -> str:
    return re.sub(r"\s+", " ", text or "").strip().lower()


# ---------------------------------------------------------------- the per-row program


async def rewrite_item(item: dict, engine: Engine, config: CotRewritesConfig) -> dict:
    """One item's whole job, in the LLM actor: `rewrites` completions in one request, each parsed and
    verified (off the event loop: math-verify), repeats of a kept rewrite marked `duplicate`, and with
    step labels on, every rewrite labelled (each its own first-error search, all at once)."""
    params = config.sampling()
    group = await engine.generate(build_messages(item, config.templates), params)
    parsed = [parse_steps(PREFILL + completion.text) for completion in group]
    verdicts = await asyncio.to_thread(lambda: [judge(p, item["gold_answer"]) for p in parsed])
    item["rewrites"], seen = [], set()
    for attempt, (completion, p, verdict) in enumerate(zip(group, parsed, verdicts)):
        fingerprint = _fingerprint(p["rewritten_text"])
        if completion.finish_reason == "request_failed":  # the endpoint never answered: nothing to judge
            verdict = {**verdict, "kept": False, "rejection_reason": "request_failed"}
        if verdict["kept"] and fingerprint in seen:  # n > 1: keep distinct rewrites only
            verdict = {**verdict, "kept": False, "rejection_reason": "duplicate"}
        seen.add(fingerprint)
        item["rewrites"].append({
            "attempt": attempt, "temperature": params.temperature, "top_p": params.top_p, "seed": params.seed,
            "raw_output": completion.text, **p, **verdict,
            "prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens,
            "finish_reason": completion.finish_reason,
        })
    if config.step_labels:
        await asyncio.gather(*(label_rewrite(item, rewrite, engine, config) for rewrite in item["rewrites"]))
    return item


# ---------------------------------------------------------------- records

LABEL_FIELDS = ("root_value", "step_values", "first_error_step", "label_status", "label_continuations")


def record_id(source_id: str, config_hash: str, attempt: int) -> str:
    return hashlib.sha256(f"{source_id}|{GENERATOR}|{config_hash}|{attempt}".encode()).hexdigest()[:32]


def to_records(item: dict, lineage: dict, templates: str | None = None) -> list[dict]:
    """One row per rewrite. `lineage`: run_id, model, engine, config_hash, max_tokens, created_at."""
    rows = []
    for r in item["rewrites"]:
        rows.append({
            "record_id": record_id(item["source_id"], lineage["config_hash"], r["attempt"]),
            "source_id": item["source_id"], "source_file": item["source_file"], "source_row": item["source_row"],
            "generator": GENERATOR, "prompt_version": PROMPT_VERSION, **lineage,
            "temperature": r["temperature"], "top_p": r["top_p"], "seed": r["seed"],
            "question": item["question"], "gold_answer": item["gold_answer"],
            "source_type": item["source_type"], "route": item["route"], "route_forced": item["route_forced"],
            "task_family": item["task_family"], "template_id": template_id(item["task_family"], templates),
            "source_solution": item["source_solution"], "attempt": r["attempt"],
            **{k: r[k] for k in ("raw_output", "rewritten_text", "steps", "extracted_answer", "answer_match",
                                 "kept", "rejection_reason", "prompt_tokens", "completion_tokens", "finish_reason")},
            **{k: r.get(k) for k in LABEL_FIELDS},
        })
    return rows


__all__ = ["CotRewritesConfig", "build_messages", "detect_family", "detect_source_type", "judge", "load_items",
           "parse_steps", "record_id", "rewrite_item", "solve_messages", "to_records"]
