"""Proves the verifier keeps real answers: all 500 MATH-500 reference solutions (LaTeX, \\boxed{})
and a 1,000-row GSM8K sample (#### N), fed as if they were rewrites, are accepted against their own
gold at >= 98% and rejected against another problem's gold at >= 98% (the issue's bar). The same
numbers are what `datagen eval cot-answers` prints."""
from __future__ import annotations

import pytest

from tasks.generators.cot_rewrites.eval import ACCEPT_THRESHOLD, REJECT_THRESHOLD, answer_preservation, reference_items


@pytest.fixture(scope="module")
def references(shared_data):
    return reference_items(shared_data / "math500" / "test500.jsonl", shared_data / "gsm8k" / "train.jsonl",
                           gsm8k_sample=1000, seed=0)


@pytest.mark.parametrize("dataset", ["math500", "gsm8k"])
def test_reference_solutions_keep_their_answer(references, dataset):
    result = answer_preservation(references[dataset])
    assert result["n"] == (500 if dataset == "math500" else 1000)
    assert result["accept_rate"] >= ACCEPT_THRESHOLD, result["own_failures"][:10]
    assert result["reject_rate"] >= REJECT_THRESHOLD, result["other_reasons"]
    # rejected against another gold because the answer differs, not by accident of another check
    assert result["other_reasons"].get("answer_mismatch", 0) >= REJECT_THRESHOLD * result["n"]


def test_a_changed_answer_is_caught_even_when_close(references):
    """Perturb each MATH-500 gold that is a plain integer by one: the reference must then be rejected."""
    items = [i for i in references["math500"] if i["gold"].lstrip("-").isdigit()]
    assert len(items) > 200
    shifted = [{**i, "gold": str(int(i["gold"]) + 1)} for i in items]
    from tasks.generators.cot_rewrites.verify import verify_text

    rejected = sum(verify_text(i["solution"], i["gold"]).reason == "answer_mismatch" for i in shifted)
    assert rejected / len(items) >= 0.98
