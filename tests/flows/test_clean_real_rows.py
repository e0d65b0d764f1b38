"""Proves the cleaning steps on rows the embedded model really generated from the real public sets: 4
MATH-500 problems rewritten (cot-rewrites) and 4 GSM8K train problems turned into programs
(math-programs), with the real Prefect API, Ray and the transformers engine, then checked through the
CLI against MATH-500: every rewrite is flagged (positive control: its question is the item), no GSM8K
program is; against GSM8K train every program is. Each generator run's data card gains the counts."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.cli import main
from flows.cot_rewrites import CotRewritesSettings, cot_rewrites
from flows.math_programs import MathProgramsSettings, math_programs

pytestmark = pytest.mark.integration


def test_real_rewrites_and_programs_against_math500(ray_cluster, prefect_harness, shared_data, tmp_path, capsys):
    data_dir = tmp_path / "datasets"
    math500, gsm8k = shared_data / "math500" / "test500.jsonl", shared_data / "gsm8k" / "train.jsonl"
    rewrites = cot_rewrites(CotRewritesSettings(input=str(math500), limit=4, max_tokens=48, data_dir=str(data_dir)))
    programs = math_programs(MathProgramsSettings(input=str(gsm8k), limit=4, samples=1, dynamic=False, max_tokens=64,
                                                  data_dir=str(data_dir)))
    capsys.readouterr()
    found = {}
    for table, against in (("cot_rewrites", math500), ("math_programs", math500), ("math_programs", gsm8k)):
        assert main(["clean", "decontaminate", "--data-dir", str(data_dir), "--table", table, "--against", str(against),
                     "--json"]) == 0
        check = json.loads(capsys.readouterr().out)["checks"][0]
        found[(table, against.parent.name)] = (check["contaminated"], check["checked"])
    assert found == {("cot_rewrites", "math500"): (rewrites["rows_out"], rewrites["rows_out"]),
                     ("math_programs", "math500"): (0, programs["rows_out"]),
                     ("math_programs", "gsm8k"): (programs["rows_out"], programs["rows_out"])}
    card = (data_dir / "reports" / f"{rewrites['run_id']}.html").read_text()
    assert f"contaminated: test500.jsonl (ngram)</th><td>{rewrites['rows_out']} of {rewrites['rows_out']} checked" in card
    card = Path(data_dir / "reports" / f"{programs['run_id']}.html").read_text()
    assert f"contaminated: test500.jsonl (ngram)</th><td>0 of {programs['rows_out']} checked" in card
