"""Verify a chain-of-thought rewrite: does it keep the gold answer, and does it get there honestly?

A rewrite is rejected, with one reason (the first that applies, in this order), when:
  - `loop`               a step (or line) repeats: the model went round in circles;
  - `missing_answer`     no final answer can be found (no `Final answer:` line, `\\boxed{}`, `#### N`
                         or "the answer is ...");
  - `unparseable_answer` the final answer is there but cannot be read as a number or as math;
  - `hedging`            it leans on the answer instead of deriving it ("let me assume", "we must trust
                         the answer" — HEDGING_PHRASES, below, is the documented list);
  - `answer_mismatch`    the final answer differs from the gold.
Numbers are compared with tasks/answers.py (its capped tolerance); everything else — LaTeX fractions,
`\\boxed{}`, intervals, tuples, expressions — with HuggingFace's `math-verify`, never by string rules.

math-verify bounds its sympy work with `signal.alarm`, which only works in a process's main thread;
Ray Data may call a UDF from another thread. `_timeout()` passes the timeout only on the main thread
and None (no signals) elsewhere, and answers that could make sympy compute forever (huge powers,
very long strings) never reach sympy.

Example:
    check_answer("\\\\frac{6}{8}", "\\\\frac{3}{4}")          # AnswerCheck(extracted='\\\\frac{6}{8}', match=True, reason=None)
    verify_text("Step 1: 2+2=4\\nFinal answer: 4", "4")    # Verdict(extracted_answer='4', answer_match=True, reason=None)
    verify_parsed(text, steps, final_answer, gold)         # the same on a parsed rewrite (program.py)
Run its tests: .venv/bin/python -m pytest tests/tasks/test_cot_verify.py -q
"""
from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from typing import Sequence

from tasks.answers import answers_match, parse_number

# In the order they are checked (no_steps by the parser in program.py; duplicate there too).
# request_failed: the endpoint gave no answer after its retries (--engine openai), checked first.
REJECTION_REASONS = ("no_steps", "loop", "missing_answer", "unparseable_answer", "hedging", "answer_mismatch",
                     "duplicate", "request_failed")

# Forced assumptions and appeals to the given answer (URSA's filter: "let me assume", "we must trust the
# answer"). Each is a regex matched case-insensitively on word boundaries. Kept narrow on purpose: real
# solutions say "assume x > 0" and "we may assume", so bare "assume" is not on the list. Checked against
# all 500 MATH-500 reference solutions and GSM8K train solutions (tests/tasks/test_cot_answer_preservation.py).
HEDGING_PHRASES = (
    r"let me (?:just )?assume",
    r"let'?s just assume",  # plain "let's assume the number of apples is x" introduces a variable: fine
    r"i(?:'ll| will) (?:just )?assume",
    r"we (?:must|have to|should|need to) (?:just )?trust",
    r"trust (?:the|that the) (?:given |provided |stated |expected )?answer",
    r"(?:the )?(?:given|provided|stated|expected) answer",
    r"(?:match|matches|reach|get|obtain) the (?:given|provided|expected|correct|target) answer",
    r"since the answer is (?:given|known|provided)",
    r"we are told the answer",
    r"work(?:ing)? backwards? from the answer",
    r"(?:assume|suppose|pretend) (?:that )?the answer is",
    r"for the answer to be",
    r"the answer (?:must|should) be .{0,40}? (?:so|since|because) (?:we|it|that) (?:was|is) (?:given|told)",
    r"without (?:any )?(?:further )?(?:calculation|computation|verification)",
)
_HEDGING = re.compile(r"\b(?:" + "|".join(HEDGING_PHRASES) + r")\b", re.IGNORECASE)

# "Final answer: X" (the format asked for) or "The final answer is X".
_FINAL_LINE = re.compile(r"^[ \t>*_#]*(?:the )?final answer(?:[ \t*_]*[:：]|[ \t]+is\b)[ \t*_]*(?P<ans>.*?)[ \t]*$",
                         re.IGNORECASE | re.MULTILINE)
_HASHES = re.compile(r"^####[ \t]*(?P<ans>.+?)[ \t]*$", re.MULTILINE)
_ANSWER_IS = re.compile(r"\bthe (?:final )?answer is[ \t]*[:：]?[ \t]*(?P<ans>[^\n]+)", re.IGNORECASE)
# Answers sympy could spend forever on: big integer powers, factorials of big numbers, power towers.
_EXPLOSIVE = re.compile(r"(?:\^|\*\*)\s*\{?\s*[\d(]{4,}|\d{3,}\s*!|(?:\^|\*\*)\s*[\w.]+\s*(?:\^|\*\*)")
MAX_ANSWER_CHARS = 300  # an answer longer than this is prose, not a result

logging.getLogger("math_verify").setLevel(logging.ERROR)  # "Timeout is disabled" notice off the main thread


@dataclass(frozen=True)
class AnswerCheck:
    extracted: str | None
    match: bool | None  # None: no answer, or one that could not be read
    reason: str | None  # None | missing_answer | unparseable_answer | answer_mismatch


@dataclass(frozen=True)
class Verdict:
    extracted_answer: str | None
    answer_match: bool | None
    reason: str | None  # None when the rewrite is kept

    @property
    def kept(self) -> bool:
        return self.reason is None


# ---------------------------------------------------------------- extraction


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`), braces balanced; None if none."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    brace = text.find("{", start)
    if brace < 0:
        rest = text[start + len("\\boxed"):].strip()  # "\boxed 5"
        return rest.split()[0].rstrip("$.") if rest else None
    depth = 0
    for i in range(brace, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[brace + 1:i].strip()
    return None  # unbalanced: truncated output


def extract_answer(text: str | None) -> str | None:
    """The final answer a text states, or None. First that applies: the last `Final answer:` line,
    the last `\\boxed{}`, a GSM8K `#### N` line, the last "the answer is ...". Never raises."""
    if not text:
        return None
    finals = [m["ans"] for m in _FINAL_LINE.finditer(text) if m["ans"].strip()]
    if finals:
        final = finals[-1]
        return last_boxed(final) or _strip_sentence(final)
    boxed = last_boxed(text)
    if boxed:
        return boxed
    hashes = _HASHES.findall(text)
    if hashes:
        return hashes[-1].strip()
    said = _ANSWER_IS.findall(text)
    if said:
        return _strip_sentence(said[-1])
    return None


def _strip_sentence(answer: str) -> str:
    answer = answer.strip().strip("*_ ").rstrip(".").strip()
    if answer.startswith("$") and answer.endswith("$") and len(answer) > 1:  # "$\frac{1}{2}$" -> the LaTeX
        return answer.strip("$").strip().rstrip(".").strip()
    return answer


# ---------------------------------------------------------------- comparison


def _explosive(answer: str) -> bool:
    """True for answers sympy may evaluate forever (off the main thread there is no timeout)."""
    if _EXPLOSIVE.search(answer):
        return True
    for start in (m.end() for m in re.finditer(r"\^\s*\{", answer)):  # an exponent holding a power
        depth, i = 1, start
        while i < len(answer) and depth:
            depth += {"{": 1, "}": -1}.get(answer[i], 0)
            i += 1
        if "^" in answer[start:i]:
            return True
    return False


def _timeout() -> int | None:
    """math-verify's signal-based timeout only works on the main thread; elsewhere run without it."""
    return 5 if threading.current_thread() is threading.main_thread() else None


def _plain_number(answer: str) -> float | None:
    """A number written plainly: "72", "$1,000", "\\$5", "50\\%", "3/4", "72 clips" is NOT one."""
    cleaned = answer.strip().strip("$").strip()
    cleaned = re.sub(r"^\\text\{\s*(.*?)\s*\}$", r"\1", cleaned)
    cleaned = cleaned.replace("\\!", "").replace("{,}", ",").replace("\\%", "%").rstrip(".")
    return parse_number(cleaned)


def _parse_math(answer: str, fallback: bool):
    """math-verify's reading of one answer. `fallback`: keep the raw string when it does not parse
    (golds such as `\\text{Evelyn}`); a prediction without it that does not parse is unreadable."""
    from math_verify import parse

    body = answer.strip()
    if body.startswith("$") and body.endswith("$"):
        body = body.strip("$")
    return parse("\\boxed{" + body + "}", fallback_mode="first_match" if fallback else "no_fallback",
                 parsing_timeout=_timeout())


def _normal(answer: str) -> str:
    return re.sub(r"\s+|\\[,;!: ]|\\left|\\right|\$", "", answer).rstrip(".").lower()


def answers_equivalent(pred: str, gold: str) -> bool | None:
    """True / False when both can be read; None when `pred` cannot be read as a number or math."""
    if _normal(pred) == _normal(gold) and _normal(gold):
        return True
    pred_number, gold_number = _plain_number(pred), _plain_number(gold)
    if pred_number is not None and gold_number is not None:
        return answers_match(pred_number, gold_number)
    if any(len(a) > MAX_ANSWER_CHARS or _explosive(a) for a in (pred, gold)):
        return None  # only the string comparison above is safe for these
    from math_verify import verify

    gold_parsed = _parse_math(gold, fallback=True)
    pred_parsed = _parse_math(pred, fallback=False)
    if not pred_parsed:
        return None
    if not gold_parsed:  # a gold math-verify cannot read (plain words): the string comparison decided
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=_timeout()))


def check_answer(extracted: str | None, gold: str) -> AnswerCheck:
    if extracted is None or not extracted.strip():
        return AnswerCheck(None, None, "missing_answer")
    try:
        same = answers_equivalent(extracted, gold)
    except Exception:  # noqa: BLE001 - a bad model answer must never crash a run; it is counted
        same = None
    if same is None:
        return AnswerCheck(extracted, None, "unparseable_answer")
    return AnswerCheck(extracted, same, None if same else "answer_mismatch")


# ---------------------------------------------------------------- hedging and loops


def hedging_phrase(text: str) -> str | None:
    """The first documented hedging phrase in `text` (as written), or None."""
    match = _HEDGING.search(text or "")
    return match.group(0) if match else None


_STEP_LABEL = re.compile(r"^\s*step\s*\d+\s*[:.)]\s*", re.IGNORECASE)
_ASY = re.compile(r"\[asy\].*?\[/asy\]", re.S)  # Asymptote figure code repeats draw() lines by nature
_LATEX_COMMAND = re.compile(r"\\[a-zA-Z]+")
_TAIL_REPEAT = re.compile(r"(.{6,80}?)\1{3,}", re.S)


def _normal_segment(segment: str) -> str:
    return re.sub(r"\s+", " ", _STEP_LABEL.sub("", segment)).strip().lower()


def _is_prose(segment: str) -> bool:
    """At least three words: `\\begin{align*}` or `\\end{align*}` repeating is layout, not a loop."""
    return len(re.findall(r"[a-z]{2,}", _LATEX_COMMAND.sub(" ", segment))) >= 3


def has_loop(steps: Sequence[str] | None, text: str = "") -> bool:
    """True when the reasoning repeats itself: one step (or, without steps, one line of at least three
    words) appears twice in a row or three times anywhere, or the text ends in one phrase repeated
    four or more times (degenerate generation without line breaks)."""
    text = _ASY.sub("", text or "")
    if steps:  # a rewrite's own steps: any repeated step is a loop, words or symbols
        segments = [s for s in (_normal_segment(s) for s in steps) if s]
    else:  # free text: only lines of prose count (layout such as `\\end{align*}` repeats by nature)
        segments = [s for s in (_normal_segment(s) for s in text.splitlines()) if _is_prose(s)]
    if any(a == b for a, b in zip(segments, segments[1:])):
        return True
    counts: dict[str, int] = {}
    for s in segments:
        counts[s] = counts.get(s, 0) + 1
        if counts[s] >= 3:
            return True
    return any(re.search(r"[a-zA-Z]{3}", _LATEX_COMMAND.sub(" ", m.group(1))) for m in _TAIL_REPEAT.finditer(text[-600:]))


# ---------------------------------------------------------------- the verdict


def _verdict(check: AnswerCheck, steps: Sequence[str] | None, text: str) -> Verdict:
    # A loop first: a looping generation usually also runs out of tokens before its answer line, and
    # "loop" says why. Then the answer's presence, then hedging, then the answer itself.
    if has_loop(steps, text):
        return Verdict(check.extracted, check.match, "loop")
    if check.reason in ("missing_answer", "unparseable_answer"):
        return Verdict(check.extracted, check.match, check.reason)
    if hedging_phrase(text):
        return Verdict(check.extracted, check.match, "hedging")
    return Verdict(check.extracted, check.match, check.reason)


def verify_text(text: str | None, gold: str) -> Verdict:
    """Verdict on a free-form solution (a reference solution fed as a rewrite): its answer is
    extracted from the text (`Final answer:`, `\\boxed{}`, `#### N`, "the answer is")."""
    return _verdict(check_answer(extract_answer(text), gold), None, text or "")


def verify_parsed(text: str | None, steps: Sequence[str], final_answer: str | None, gold: str) -> Verdict:
    """Verdict on a parsed rewrite: its answer is the `Final answer:` line only (None: missing)."""
    return _verdict(check_answer(final_answer, gold), steps, text or "")


def answer_reached(text: str | None, gold: str) -> bool:
    """Did a (continuation) text end on the gold answer? For step labels: only the answer counts."""
    return check_answer(extract_answer(text), gold).match is True
