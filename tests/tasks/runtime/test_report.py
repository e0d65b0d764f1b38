"""Proves the data card's pure parts: the length histogram covers every value once in equal bins, and
the bar chart is inline SVG with one bar and one exact count per label; a score histogram bins
fractional values (strengths, retriever scores) into equal-width bins and whole ones (ranks) as integers. (The whole card of a real run,
checked against SQL and rendered in headless Chromium: tests/flows/test_faults.py.)"""
from __future__ import annotations

import re

from tasks.runtime.report import _bars, _histogram, _value_histogram


def test_histogram_bins_every_value_once():
    values = [15, 16, 40, 45, 46, 230, 262]
    bins = _histogram(values, bins=8)
    assert sum(bins.values()) == len(values)
    assert list(bins)[0].startswith("15–") and list(bins)[-1].endswith("262")
    assert _histogram([]) == {} and _histogram([7, 7]) == {"7–7": 2}


def test_bars_are_inline_svg_with_exact_counts():
    svg = _bars({"kept": 4, "wrong": 63, "<script>": 1}, "outcomes")
    assert svg.startswith("<svg id=outcomes") and "http" not in svg.replace("http://www.w3.org/2000/svg", "")
    assert re.findall(r"data-count=(\d+)", svg) == ["4", "63", "1"] and "&lt;script&gt;" in svg
    assert _bars({}, "x") == "<p id=x>none</p>"


def test_value_histogram_bins_scores_and_ranks():
    strengths = [0.0, 0.05, 0.4, 1.2, 1.25, 2.9, 3.2]
    bins = _value_histogram(strengths, bins=4)
    assert list(bins.values()) == [3, 2, 0, 2] and sum(bins.values()) == len(strengths)
    assert list(bins)[0] == "0 – 0.8" and list(bins)[-1] == "2.4 – 3.2"
    assert _value_histogram([1.0, 1.0, 2.0, 5.0]) == _histogram([1, 1, 2, 5])  # ranks stay whole numbers
    assert _value_histogram([]) == {}
