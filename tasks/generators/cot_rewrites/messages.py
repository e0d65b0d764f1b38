"""The cot-rewrites prompts: template files (prompts/), the step templates per task family, and the pure
message builders — the rewrite prompt and the step-label continuation prompt.

Example: build_messages({"question": "What is 2+3?", "gold_answer": "5", "route": "expand",
    "source_solution": None, "task_family": "generic"})
    -> [system (format + generic step template), user (expand.txt), assistant "Step 1:" (pre-filled)]
"""
from __future__ import annotations

import hashlib
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Sequence

PROMPTS = Path(__file__).parent / "prompts"
PREFILL = "Step 1:"  # without it the embedded model mostly answers in free prose
_CALCULATOR = re.compile(r"<<[^<>]*>>")  # GSM8K's calculator notes
_ASY = re.compile(r"\[asy\].*?\[/asy\]", re.S)  # MATH's figure code



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


# ---------------------------------------------------------------- families and messages (pure)


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
