"""Proves the per-pass progress: away from a terminal it logs a plain line (rows done of planned, kept,
dropped, tokens/s, requests, ETA) at most every `every_s` and once at the end; on a terminal it draws a
rich bar and logs nothing."""
from __future__ import annotations

from tasks.runtime.progress import PassProgress


def test_plain_lines_away_from_a_terminal():
    lines = []
    with PassProgress("math-programs fixed", planned=4, log=lines.append, every_s=0, interactive=False) as p:
        p.advance(1, kept=1, dropped=3, tokens=100, requests=8)
        p.advance(3, kept=2, dropped=10, tokens=300, requests=20)
    assert len(lines) == 3  # one per batch (every_s=0), one at the end
    assert lines[0].startswith("math-programs fixed: 1/4 rows · kept 1, dropped 3 · ") and "ETA" in lines[0]
    assert "4/4 rows · kept 3, dropped 13" in lines[-1] and "20 requests" in lines[-1]


def test_lines_are_rate_limited_and_a_pass_with_nothing_done_says_nothing():
    lines = []
    with PassProgress("p", planned=10, log=lines.append, every_s=3600, interactive=False) as p:
        for _ in range(5):
            p.advance(1)
    assert len(lines) == 1 and lines[0].startswith("p: 5/10 rows")
    lines.clear()
    with PassProgress("p", planned=10, log=lines.append, interactive=False):
        pass
    assert lines == []


def test_a_terminal_gets_a_bar_and_no_log_lines(capsys):
    lines = []
    with PassProgress("p", planned=2, log=lines.append, every_s=0, interactive=True) as p:
        p.advance(2, kept=2, tokens=10, requests=2)
    assert lines == [] and "p" in capsys.readouterr().err
