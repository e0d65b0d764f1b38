"""Proves the rewrite verifier: final answers are extracted from every documented form; numbers match
within tasks/answers.py's capped tolerance; LaTeX answers (fractions, \\boxed{}, intervals, tuples,
expressions, sqrt) are compared by math-verify, not by strings; hedging phrases, reasoning loops and
missing or unreadable answers are rejected with their reason; and math-verify works off the main
thread — in a plain thread and inside a real Ray Data stage's per-row program, which verifies off its
event loop (asyncio.to_thread) — where its signal-based timeout cannot."""
from __future__ import annotations

import asyncio
import threading

import pytest

from tasks.generators.cot_rewrites.verify import (
    HEDGING_PHRASES, answers_equivalent, check_answer, extract_answer, has_loop, hedging_phrase,
    last_boxed, verify_parsed, verify_text,
)


@pytest.mark.parametrize(
    "text, answer",
    [
        ("Step 1: 2+2=4\nFinal answer: 4", "4"),
        ("Step 1: ...\n**Final answer:** $\\frac{3}{4}$.", "\\frac{3}{4}"),
        ("Step 1: ...\nFinal Answer: \\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("so $x = \\boxed{\\frac{1}{2}}$ and we check \\boxed{7}.", "7"),  # the last box
        ("She earns 12*5 = <<12*5=60>>60 dollars.\n#### 60", "60"),
        ("Adding up, the answer is 1,024.", "1,024"),
        ("Step 5: so it is 90.\n\nThe final answer is 90^\\circ.", "90^\\circ"),
        ("Final answer: 3\nsome noise\nFinal answer: 5", "5"),  # the last final line
        ("no answer anywhere", None),
        ("", None),
        (None, None),
        ("Final answer:", None),
        ("truncated \\boxed{\\frac{1}{", None),
    ],
)
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer


def test_last_boxed_balances_braces():
    assert last_boxed("a \\boxed{\\frac{a}{b^{2}}} b") == "\\frac{a}{b^{2}}"
    assert last_boxed("\\fbox{12}") == "12"
    assert last_boxed("nothing") is None


@pytest.mark.parametrize(
    "pred, gold, same",
    [
        ("72", "72", True),
        ("72.0", "72", True),
        ("$1,000", "1000", True),
        ("\\$5", "5", True),
        ("1000.01", "1000", True),  # within the 0.01 cap
        ("1001", "1000", False),  # the capped tolerance: no off-by-one on large golds
        ("73", "72", False),
        ("0.75", "\\frac{3}{4}", True),
        ("\\frac{6}{8}", "\\frac{3}{4}", True),
        ("\\dfrac{3}{4}", "\\frac{3}{4}", True),
        ("3/4", "\\frac34", True),
        ("\\frac{4}{3}", "\\frac{3}{4}", False),
        ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}", True),
        ("(-\\infty, 2]", "(-\\infty,2]", True),
        ("(-\\infty, 2)", "(-\\infty,2]", False),
        ("[1, 3)", "[1,3)", True),
        ("(3, \\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
        ("(3, \\pi)", "\\left( 3, \\frac{\\pi}{2} \\right)", False),
        ("2x + 2", "2(x+1)", True),
        ("x^2 - 1", "(x-1)(x+1)", True),
        ("x^2 + 1", "(x-1)(x+1)", False),
        ("50\\%", "50", True),
        ("\\text{Evelyn}", "\\text{Evelyn}", True),
    ],
)
def test_answers_equivalent(pred, gold, same):
    assert answers_equivalent(pred, gold) is same


@pytest.mark.parametrize("answer", ["9^{9^{9^{9}}}", "2^{3^{4}}", "9^9^9", "2**3**4", "10^{100000}", "2**99999",
                                    "1000!", "x" * 400])
def test_explosive_answers_never_reach_sympy_off_the_main_thread(answer):
    """Off the main thread math-verify runs without a timeout: these must be decided without sympy."""
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("check", check_answer(answer, "5")))
    thread.start()
    thread.join(timeout=5)
    assert not thread.is_alive() and result["check"].match is not True


def test_unreadable_and_explosive_answers_are_not_compared_by_sympy():
    assert check_answer("???", "5").reason == "unparseable_answer"
    assert check_answer("9^{9^{9^{9}}}", "5").reason in ("unparseable_answer", "answer_mismatch")
    assert check_answer("x" * 400, "5").reason in ("unparseable_answer", "answer_mismatch")
    assert check_answer(None, "5") == check_answer("  ", "5")
    assert check_answer(None, "5").reason == "missing_answer"


@pytest.mark.parametrize(
    "text, phrase",
    [
        ("Step 1: Let me assume the answer is 12.", "Let me assume"),
        ("Step 2: We must trust the answer given.", "We must trust"),
        ("Step 3: To match the given answer, the total is 40.", "match the given answer"),
        ("Since the answer is given, x = 4.", "Since the answer is given"),
        ("We work backwards from the answer 10.", "work backwards from the answer"),
        ("I'll just assume it is 7.", "I'll just assume"),
        ("Assume that x > 0 and we may assume y is odd.", None),  # ordinary mathematics
        ("Let's assume the number of apples is x.", None),  # introducing a variable
        ("The answer is 5.", None),
    ],
)
def test_hedging_phrases(text, phrase):
    assert hedging_phrase(text) == phrase


def test_hedging_list_is_documented_regexes():
    assert len(HEDGING_PHRASES) >= 10 and any("assume" in p for p in HEDGING_PHRASES)


@pytest.mark.parametrize(
    "steps, text, looped",
    [
        (["Add 2 and 3 to get 5.", "Add 2 and 3 to get 5."], "", True),  # same step twice in a row
        (["Compute 12 pages a week", "Compute 6 pages a week"] * 3, "", True),  # alternating cycle
        (["Add 2 and 3 to get 5.", "Multiply 5 by 2 to get 10."], "", False),
        (["196 = 2^2 * 7", "196 = 2^2 * 7"], "", True),  # a rewrite's repeated step, symbols only
        (["2 - 3 = -2", "2 - 4 = -2", "2 - 6 = -2"] * 3, "", True),
        (["x = 2", "y = 3", "x + y = 5"], "", False),
        (None, "x = 2\nx = 2\nx = 2", False),  # free text: short symbol lines are layout, not a loop
        (None, "\\begin{align*}\na &= b\n\\end{align*}\n\\begin{align*}\nc &= d\n\\end{align*}\n\\begin{align*}", False),
        (None, "The answer is 5. The answer is 5. The answer is 5. The answer is 5. The answer is 5.", True),
        (None, "sum 1.5 + 1.5 + 1.5 + 1.5 + 1.5 + 1.5 + 1.5 + 1.5", False),  # numbers repeating: no words
        (None, "[asy]\ndraw(a--b, red);\ndraw(a--b, red);\ndraw(a--b, red);\n[/asy]\nSo it is 4.", False),
    ],
)
def test_loops(steps, text, looped):
    assert has_loop(steps, text) is looped


def test_verdicts_carry_one_reason_each():
    gold = "\\frac{3}{4}"
    ok = verify_parsed("Step 1: 3 of 4.\nFinal answer: 0.75", ["3 of 4."], "0.75", gold)
    assert ok.kept and ok.answer_match and ok.reason is None and ok.extracted_answer == "0.75"
    assert verify_parsed("Step 1: x\n", ["x"], None, gold).reason == "missing_answer"
    assert verify_parsed("Step 1: x\nFinal answer: \\frac{1}{2}", ["x"], "\\frac{1}{2}", gold).reason == "answer_mismatch"
    hedged = verify_parsed("Step 1: Let me assume it works.\nFinal answer: 3/4", ["Let me assume it works."], "3/4", gold)
    assert hedged.reason == "hedging" and hedged.answer_match is True  # the match is kept for audit
    loop = ["Divide three by four now.", "Divide three by four now."]
    assert verify_parsed("...", loop, "3/4", gold).reason == "loop"
    # parsed mode never falls back to a \boxed{} in the body: the format requires the final line
    assert verify_parsed("Step 1: \\boxed{3/4}", ["\\boxed{3/4}"], None, gold).reason == "missing_answer"
    assert verify_text("So it is $\\boxed{\\frac{3}{4}}$.", gold).kept


def test_math_verify_runs_off_the_main_thread():
    results = {}

    def work():
        results["same"] = answers_equivalent("\\frac{6}{8}", "\\frac{3}{4}")
        results["different"] = answers_equivalent("(1, 2)", "[1, 2]")

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=60)
    assert results == {"same": True, "different": False}


async def _verify_program(row, engine):
    """An LLM-stage per-row program (what rewrite_item is): verify off the event loop, note the thread."""
    def verify():
        return verify_text(row["text"], row["gold"]), threading.current_thread() is threading.main_thread()

    verdict, main_thread = await asyncio.to_thread(verify)
    return {**row, "kept": verdict.kept, "reason": verdict.reason, "main_thread": main_thread}


def test_verifier_inside_a_real_ray_actor_stage(ray_cluster):
    """A program verifies in a worker thread (asyncio.to_thread, in the actor's event loop), where
    math-verify's signal.alarm timeout would raise: the verdicts prove it ran and compared with sympy."""
    import sys

    import ray

    from tasks.engines.base import EngineSpec
    from tasks.runtime.ray_stage import iter_row_batches, llm_stage, rows_dataset

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # ship this test's program by value
    rows = [{"source_id": f"r{i}", "text": text, "gold": gold} for i, (text, gold) in enumerate([
        ("so $\\boxed{\\frac{6}{8}}$", "\\frac{3}{4}"),
        ("Final answer: (-\\infty, 2]", "(-\\infty,2]"),
        ("Final answer: x^2 + 1", "(x-1)(x+1)"),
        ("Final answer: 2x + 2", "2(x+1)"),
        ("#### 72", "72"),
    ])]
    ds = llm_stage(rows_dataset(rows), EngineSpec(backend="fake"), _verify_program, batch_size=2)
    out = [r for batch in iter_row_batches(ds) for r in batch]
    assert {r["source_id"]: (r["kept"], r["reason"]) for r in out} == {
        "r0": (True, None), "r1": (True, None), "r2": (False, "answer_mismatch"), "r3": (True, None), "r4": (True, None)}
    assert not any(r["main_thread"] for r in out)  # the case the thread-safe timeout exists for
