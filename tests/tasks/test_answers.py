"""Proves tasks/answers.py reads numbers the way datasets and models write them, reads GSM8K golds,
and compares answers with the documented tolerance: 1e-3 relative, 1e-3 absolute below |gold| = 1,
never more than 0.01 absolute (so an off-by-one on a large integer gold never matches)."""
from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest

from tasks.answers import answers_match, parse_gold, parse_number


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1,000", 1000.0),
        ("12,345.50", 12345.5),
        ("$5", 5.0),
        ("\\$5", 5.0),
        ("$ 5", 5.0),
        ("-$3", -3.0),
        ("$-3", -3.0),
        ("5.0", 5.0),
        ("-3", -3.0),
        ("+4", 4.0),
        ("\u22123", -3.0),  # unicode minus
        ("3/4", 0.75),
        ("-3/4", -0.75),
        ("50%", 50.0),
        ("50\\%", 50.0),
        (" 12 ", 12.0),
        ("1 000", 1000.0),
        ("72.", 72.0),
        (".5", 0.5),
        ("1e3", 1000.0),
        ("€20", 20.0),
        (7, 7.0),
        (2.5, 2.5),
        (Fraction(1, 8), 0.125),
        (Decimal("0.10"), 0.1),
    ],
)
def test_parse_number_reads_written_numbers(text, expected):
    assert parse_number(text) == expected


@pytest.mark.parametrize(
    "text",
    [None, "", "   ", "abc", "$", "5 apples", "x = 5", "1,00", "1,0000", "3/0", "1/2/3", "nan", "inf",
     float("nan"), float("inf"), True, False, [5], {"a": 1}, "5..0", "--5", "12 34"],
)
def test_parse_number_gives_none_and_never_raises(text):
    assert parse_number(text) is None


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72", 72.0),
        ("... so $<<0.2*50=10>>10.\n#### 10", 10.0),
        ("steps\n#### 1,000", 1000.0),
        ("steps\n####-3", -3.0),
        ("#### 0.5", 0.5),
        ("a #### 5 then #### 6", 6.0),  # the last marker wins
        ("42", 42.0),
        ("$5", 5.0),
        (18, 18.0),
        (2.25, 2.25),
    ],
)
def test_parse_gold(answer, expected):
    assert parse_gold(answer) == expected


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("worked answer without a final line", "no '####' line"),
        ("steps\n#### ", "no number after '####'"),
        ("steps\n#### twelve", "no number after '####'"),
        ("", "not a number"),
        (None, "type NoneType"),
        (True, "bool"),
        (float("nan"), "not a finite number"),
    ],
)
def test_parse_gold_raises_with_a_reason(answer, reason):
    with pytest.raises(ValueError, match=reason):
        parse_gold(answer)


@pytest.mark.parametrize(
    ("pred", "gold", "match"),
    [
        (72.0, 72.0, True),
        (72.0001, 72.0, True),
        (72.01, 72.0, False),  # past the 0.01 cap
        (73.0, 72.0, False),
        (5.005, 5.0, True),  # relative: 1e-3 * 5
        (5.006, 5.0, False),
        (0.3333333, 0.33, False),  # |gold| < 1: absolute 1e-3 floor, and 0.0033 is past it
        (0.3305, 0.33, True),
        (0.00075, 0.0, True),  # gold 0: absolute floor
        (0.0011, 0.0, False),
        (-3.0, -3.0, True),
        (3.0, -3.0, False),
        (1000.005, 1000.0, True),  # float noise and cent rounding on large golds still match
        (1001.0, 1000.0, False),  # the uncapped 1e-3 * 1000 = 1 would accept this off-by-one
        (50_049.0, 50_000.0, False),
        (1_000_000.0000001, 1_000_000.0, True),
        (None, 5.0, False),
        (float("nan"), 5.0, False),
        (float("inf"), 5.0, False),
        (5.0, float("nan"), False),
        (True, 1.0, False),
        (1, 1.0, True),
    ],
)
def test_answers_match_tolerance(pred, gold, match):
    assert answers_match(pred, gold) is match


@pytest.mark.parametrize("gold", [0.0, 0.5, 4.0, 1234.0, -80_000.0])
def test_tolerance_edge(gold):
    tolerance = min(1e-3 * max(1.0, abs(gold)), 0.01)
    assert answers_match(gold + tolerance * 0.999, gold)
    assert answers_match(gold - tolerance * 0.999, gold)
    assert not answers_match(gold + tolerance * 1.001, gold)
    assert not answers_match(gold + 1, gold)
