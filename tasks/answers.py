"""Gold answers and numeric answer checking for math generators.

parse_number reads one number written the way people and datasets write them ("1,000", "$5", "50%",
"3/4"); parse_gold reads a GSM8K worked answer's final "#### N"; answers_match compares a program's
result with the gold within a small tolerance (see ABSOLUTE_TOLERANCE_CAP for why it is capped).

Example:
    gold = parse_gold("48/2 = <<48/2=24>>24 ...\\n#### 72")     # 72.0
    answers_match(72.00001, gold)                              # True
    answers_match(parse_number("$73"), gold)                   # False
Run its tests: .venv/bin/python -m pytest tests/tasks/test_answers.py -q
"""
from __future__ import annotations

import math
import re
from decimal import Decimal
from fractions import Fraction

# Programs compute in floating point, so answers are compared with a tolerance: 1e-3 relative, with
# a 1e-3 absolute floor for |gold| < 1, and capped at 0.01 absolute. Without the cap the tolerance
# reaches 1 at |gold| = 1000 and an off-by-one (or, at 50,000, off-by-50) answer would match: all
# 7473 GSM8K train golds are integers and 797 of them are >= 1000. 0.01 still absorbs float noise
# and golds rounded to cents.
RELATIVE_TOLERANCE = 1e-3
ABSOLUTE_TOLERANCE_CAP = 0.01

_PLAIN = r"\d+(?:\.\d*)?|\.\d+"
# Thousands groups with commas ("1,000", "12,345.5") or single spaces ("1 000"); only well-formed groups.
_GROUPED = r"\d{1,3}(?:,\d{3})+(?:\.\d*)?|\d{1,3}(?: \d{3})+(?:\.\d*)?"
_NUMBER = re.compile(rf"(?P<sign>[-+]?)(?P<body>{_GROUPED}|{_PLAIN})(?:[eE](?P<exp>[-+]?\d+))?")
_FRACTION = re.compile(r"(?P<sign>[-+]?)(?P<num>\d+)\s*/\s*(?P<den>\d+)")
_CURRENCY_PREFIX = re.compile(r"^(?:\\?\$|€|£|¥)\s*")
_UNIT_SUFFIX = re.compile(r"\s*(?:\\?%|percent)$", re.IGNORECASE)


def parse_number(text) -> float | None:
    """The number `text` states, or None. Never raises.

    Accepts ints/floats/Fractions/Decimals (bool is not a number here) and strings such as
    "1,000", "$5", "\\$5", "5.0", "-3", "-$3", "3/4", "50%", " 12 ", "1 000", "1e3", "72.".
    Text around the number ("5 apples", "x = 5") is NOT searched: this reads a stated answer,
    it does not extract one from prose. Non-finite values (nan, inf) give None.
    """
    if isinstance(text, bool) or text is None:
        return None
    if isinstance(text, (int, float, Fraction, Decimal)):
        try:
            value = float(text)
        except (OverflowError, ValueError, ArithmeticError):
            return None
        return value if math.isfinite(value) else None
    if not isinstance(text, str):
        return None
    cleaned = text.strip().replace("\u2212", "-")  # unicode minus sign
    sign = ""
    if cleaned.startswith(("-", "+")):  # "-$5"
        sign, cleaned = cleaned[0], cleaned[1:].lstrip()
    cleaned = _UNIT_SUFFIX.sub("", _CURRENCY_PREFIX.sub("", cleaned))
    if not sign and cleaned.startswith(("-", "+")):  # "$-5"
        sign, cleaned = cleaned[0], cleaned[1:]
    candidate = sign + cleaned
    match = _NUMBER.fullmatch(candidate)
    if match:
        body = match["body"].replace(",", "").replace(" ", "")
        exponent = f"e{match['exp']}" if match["exp"] else ""
        try:
            value = float(f"{match['sign']}{body}{exponent}")
        except (ValueError, OverflowError):
            return None
        return value if math.isfinite(value) else None
    match = _FRACTION.fullmatch(candidate)
    if match and int(match["den"]) != 0:
        value = int(match["num"]) / int(match["den"])
        return -value if match["sign"] == "-" else value
    return None


def parse_gold(answer) -> float:
    """The gold number of a GSM8K worked answer ("... #### 72") or of a plain number / numeric string.

    Raises ValueError saying why when no number can be read.
    """
    if isinstance(answer, bool):
        raise ValueError(f"gold answer is a bool ({answer!r}), not a number")
    if isinstance(answer, (int, float, Fraction, Decimal)):
        value = parse_number(answer)
        if value is None:
            raise ValueError(f"gold answer {answer!r} is not a finite number")
        return value
    if not isinstance(answer, str):
        raise ValueError(f"gold answer has type {type(answer).__name__}, expected str or number")
    if "####" in answer:
        final = answer.rsplit("####", 1)[1].strip()
        value = parse_number(final)
        if value is None:
            raise ValueError(f"no number after '####' in gold answer: {final[:80]!r}")
        return value
    value = parse_number(answer)
    if value is None:
        raise ValueError(f"gold answer has no '####' line and is not a number: {answer[:80]!r}")
    return value


def answers_match(pred: float | None, gold: float) -> bool:
    """|pred - gold| <= min(1e-3 * max(1, |gold|), 0.01); None, bool, nan and inf never match."""
    if pred is None or isinstance(pred, bool) or isinstance(gold, bool):
        return False
    try:
        pred, gold = float(pred), float(gold)
    except (TypeError, ValueError, OverflowError):
        return False
    if not (math.isfinite(pred) and math.isfinite(gold)):
        return False
    tolerance = min(RELATIVE_TOLERANCE * max(1.0, abs(gold)), ABSOLUTE_TOLERANCE_CAP)
    return abs(pred - gold) <= tolerance
