"""Answer-preserving chain-of-thought rewrites (URSA 2025; Supervised Chain of Thought): the logic.

Each item is routed by what its source solution is — none (answer only) -> `expand` into a trajectory
that reaches the given answer; an informal analysis -> `rewrite` into strict steps; a terse or symbolic
chain -> `unify` into natural-language steps — and gets a step template chosen by its task family
(arithmetic, algebra, geometry, generic; prompts/cot_rewrites/templates.json). The model writes
`Step 1: ... Step k: ...` and a `Final answer:` line (the assistant turn is pre-filled with `Step 1:`).
Every rewrite is verified (tasks/cot_verify.py) and kept as a row, with its rejection reason when
it changed the answer, hedged, looped, or ended without a readable answer. With step labels on,
tasks/step_labels.py estimates per-prefix success by Monte Carlo and finds the first bad step.

Pure parts (no I/O but the prompt files): `load_items`, `detect_source_type`, `detect_family`,
`build_messages`, `parse_steps`, `to_records`. Engine-driven: `generate_rewrites(items, engine, config)`
(runs inside the Ray LLM actor: generate -> parse -> verify -> label).

Example record (abridged): {"source_id": "test/algebra/1004.json", "route": "rewrite",
  "template_id": "algebra@cot-templates/v1", "steps": ["Let $x$ be ...", "..."], "extracted_answer": "4",
  "answer_match": true, "kept": true, "rejection_reason": null, "first_error_step": null}
Run: `datagen run cot-rewrites --input ../shared/data/math500/test500.jsonl --limit 50 --data-dir ./datasets`
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from .cot_verify import last_boxed, verify_parsed
from .engines.base import Engine, SamplingParams
from .inputs import InputError, content_id, pick_column, read_rows

GENERATOR = "cot_rewrites"
PROMPT_VERSION = "cot-rewrites/v1"
PROMPTS = Path(__file__).parent / "prompts" / "cot_rewrites"
ROUTES = ("expand", "rewrite", "unify")
SOURCE_TYPES = {"none": "expand", "informal": "rewrite", "symbolic": "unify"}
PREFILL = "Step 1:"  # without it the embedded model mostly answers in free prose


@dataclass(frozen=True)
class CotRewritesConfig:
    rewrites: int = 1  # 1 = one greedy rewrite; n > 1 = n samples at `temperature`, distinct ones kept
    temperature: float = 0.8  # only for n > 1: diversity between the samples
    top_p: float = 0.95
    max_tokens: int = 384  # a MATH-500 solution in steps is ~100-300 tokens
    seed: int = 0
    route: str | None = None  # force one route for every item (expand | rewrite | unify)
    route_column: str = "route"  # an input column that forces the route per row, when present and set
    templates: str | None = None  # a templates.json of your own (same shape); default the bundled one
    # Source-type detection: a solution is a terse/symbolic chain when its lines carry fewer than
    # `terse_words_per_line` prose words on average (GSM8K: median 8; MATH-500: median 12) or when
    # prose words are under `terse_prose_ratio` of its tokens (math spans counted as tokens).
    terse_words_per_line: float = 7.0
    terse_prose_ratio: float = 0.35
    step_labels: bool = False  # Monte-Carlo per-prefix success + binary search for the first bad step
    continuations: int = 4  # N continuations per probed prefix
    label_temperature: float = 0.7
    label_max_tokens: int = 256

    def __post_init__(self):
        if self.rewrites < 1:
            raise ValueError(f"rewrites must be >= 1, got {self.rewrites}")
        if self.route is not None and self.route not in ROUTES:
            raise ValueError(f"route must be one of {ROUTES}, got {self.route!r}")
        if self.continuations < 1:
            raise ValueError(f"continuations must be >= 1, got {self.continuations}")
        if self.templates is not None and not Path(self.templates).is_file():
            raise ValueError(f"templates file not found: {self.templates}")
        load_templates(self.templates)  # a bad templates file fails here, before any work

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
        shaping = {k: v for k, v in asdict(self).items() if k != "templates"}
        blob = json.dumps({"model": model_id, "prompt": PROMPT_VERSION, "prompt_files": prompt_files_hash(),
                           "templates": load_templates(self.templates), **shaping}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- prompt files


@lru_cache(maxsize=None)
def prompt_file(name: str) -> str:
    return (PROMPTS / name).read_text().strip()


def prompt_files_hash() -> str:
    blob = "".join(prompt_file(n) for n in ("system.txt", "expand.txt", "rewrite.txt", "unify.txt", "solve.txt"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


@lru_cache(maxsize=8)
def load_templates(path: str | None = None) -> dict:
    """{"version": str, "families": {name: {"guidance", "subjects", "keywords"}}}; must have `generic`."""
    source = Path(path) if path else PROMPTS / "templates.json"
    try:
        data = json.loads(source.read_text())
        families = data["families"]
        for name, fam in families.items():
            if not isinstance(fam.get("guidance"), str):
                raise ValueError(f"family {name!r} has no 'guidance' text")
            fam.setdefault("subjects", [])
            fam.setdefault("keywords", [])
        if "generic" not in families:
            raise ValueError("a 'generic' family is required (the fallback)")
        data.setdefault("version", source.stem)
    except (OSError, KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
        raise ValueError(f"templates file {source}: {exc}") from None
    return data


# ---------------------------------------------------------------- inputs

QUESTION_COLUMNS = ("question", "problem", "input")
SOLUTION_COLUMNS = ("solution", "rationale", "explanation")
GOLD_COLUMNS = ("answer", "gold", "gold_answer", "final_answer", "target")
SUBJECT_COLUMNS = ("subject", "type", "category", "family")
ID_COLUMNS = ("id", "unique_id")
_CALCULATOR = re.compile(r"<<[^<>]*>>")
_ASY = re.compile(r"\[asy\].*?\[/asy\]", re.S)


def _text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:g}" if isinstance(value, float) else str(value)
    return value.strip() if isinstance(value, str) and value.strip() else None


def load_items(path: str | Path, config: CotRewritesConfig, limit: int | None = None) -> list[dict]:
    """Items from JSONL/Parquet. MATH-style rows: `problem`, `solution`, `answer` (LaTeX gold).
    GSM8K-style rows: `question`, `answer` = worked solution ending `#### N`. Answer-only rows:
    `question`, `answer`. Optional: `id`/`unique_id`, `subject`, and the route column. A bad row raises
    InputError naming the file and row; a repeated id is skipped (the id is a record's key)."""
    items, seen = [], set()
    for row_number, row in read_rows(path):
        if limit is not None and len(items) >= limit:
            break
        qcol = pick_column(path, row_number, row, QUESTION_COLUMNS)
        question = _text(row[qcol]) if isinstance(row[qcol], str) else None
        if not question:
            raise InputError(path, row_number, f"column {qcol!r} is empty or not text")
        solution_col = next((c for c in SOLUTION_COLUMNS if _text(row.get(c))), None)
        solution = _text(row[solution_col]) if solution_col else None
        gold_col = next((c for c in GOLD_COLUMNS if c in row), None)
        gold_raw = _text(row.get(gold_col)) if gold_col else None
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
        id_col = next((c for c in ID_COLUMNS if _text(row.get(c))), None)
        source_id = _text(row[id_col]) if id_col else content_id("cot", question)
        if source_id in seen:
            continue
        seen.add(source_id)
        subject = next((_text(row[c]) for c in SUBJECT_COLUMNS if _text(row.get(c))), None)
        family = detect_family(question, subject, gsm8k=bool(gold_raw and "####" in gold_raw),
                               templates=config.templates)
        items.append({
            "source_id": source_id, "source_file": str(path), "source_row": row_number,
            "question": question, "gold_answer": gold, "source_solution": solution,
            "source_type": source_type, "route": route, "route_forced": forced is not None,
            "task_family": family,
        })
    return items


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


def detect_family(question: str, subject: str | None = None, gsm8k: bool = False,
                  templates: str | None = None) -> str:
    """The task family: the row's subject if a family lists it; GSM8K rows are arithmetic word
    problems; else the family whose keywords occur most in the question (ties: file order); else generic."""
    families = load_templates(templates)["families"]
    if subject:
        for name, fam in families.items():
            if subject.strip().lower() in (s.lower() for s in fam["subjects"]):
                return name
    if gsm8k and "arithmetic" in families:
        return "arithmetic"
    text = question.lower()
    scores = {name: sum(text.count(k.lower()) for k in fam["keywords"]) for name, fam in families.items()}
    best = max(scores, key=lambda n: scores[n])
    return best if scores[best] > 0 else "generic"


def template_id(family: str, templates: str | None = None) -> str:
    return f"{family}@{load_templates(templates)['version']}"


def clean_solution(solution: str) -> str:
    """The source solution as shown in the prompt: figure code out, calculator annotations out."""
    return _CALCULATOR.sub("", _ASY.sub("[figure]", solution)).strip()


def system_message(family: str, templates: str | None = None) -> dict:
    guidance = load_templates(templates)["families"][family]["guidance"]
    return {"role": "system", "content": prompt_file("system.txt").format(family_guidance=guidance)}


def build_messages(item: dict, templates: str | None = None) -> list[dict]:
    """System (format + the family's step template), the route's instruction, the pre-filled `Step 1:`."""
    user = prompt_file(f"{item['route']}.txt").format(
        question=item["question"], answer=item["gold_answer"],
        solution=clean_solution(item["source_solution"] or ""))
    return [system_message(item["task_family"], templates), {"role": "user", "content": user},
            {"role": "assistant", "content": PREFILL}]


def solve_messages(question: str, family: str, steps: Sequence[str], templates: str | None = None) -> list[dict]:
    """The step-label prompt: the question alone (no gold, no source) with the first steps pre-filled,
    ending on `Step p+1:` so the model continues from exactly that prefix."""
    prefix = "".join(f"Step {i}: {s}\n" for i, s in enumerate(steps, start=1))
    return [system_message(family, templates),
            {"role": "user", "content": prompt_file("solve.txt").format(question=question)},
            {"role": "assistant", "content": f"{prefix}Step {len(steps) + 1}:"}]


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


# ---------------------------------------------------------------- engine step


def generate_rewrites(items: list[dict], engine: Engine, config: CotRewritesConfig) -> list[dict]:
    """Runs inside the LLM actor: generate `rewrites` per item, parse, verify, mark duplicates, and
    (with step labels on) label every rewrite that has steps."""
    params = config.sampling()
    groups = engine.generate([build_messages(item, config.templates) for item in items], params)
    for item, group in zip(items, groups):
        item["rewrites"], seen = [], set()
        for attempt, completion in enumerate(group):
            parsed = parse_steps(PREFILL + completion.text)
            verdict = judge(parsed, item["gold_answer"])
            fingerprint = _fingerprint(parsed["rewritten_text"])
            if verdict["kept"] and fingerprint in seen:  # n > 1: keep distinct rewrites only
                verdict = {**verdict, "kept": False, "rejection_reason": "duplicate"}
            seen.add(fingerprint)
            item["rewrites"].append({
                "attempt": attempt, "temperature": params.temperature, "top_p": params.top_p, "seed": params.seed,
                "raw_output": completion.text, **parsed, **verdict,
                "prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens,
                "finish_reason": completion.finish_reason,
            })
    if config.step_labels:
        from .step_labels import label_rewrites

        label_rewrites(items, engine, config)
    return items


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


__all__ = ["CotRewritesConfig", "build_messages", "detect_family", "detect_source_type", "generate_rewrites",
           "judge", "load_items", "parse_steps", "record_id", "solve_messages", "to_records"]
