"""Proves the preference-labels flow end to end with real components: the embedded SmolLM2 in a Ray
actor, a real Prefect API, Parquet files and DuckDB, on 4 real hh-rlhf pairs (two prompts with two
pairs each, plus one row whose dialogues differ before the last turn, which is reported and not
labelled). One reference per prompt, a rerun adds no rows, `datagen eval preferences` compares the
self-reference run with a direct-mode run, `datagen export preferences` writes TRL rows, and
`--prompts --candidates 2` samples candidates (MT-Bench questions) and labels them."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import duckdb
import pytest

from flows.cli import main as datagen
from flows.preference_labels import PreferenceLabelsSettings, preference_labels
from schemas.catalog import CATALOG_FILE

pytestmark = pytest.mark.integration

ROWS = (251, 1484, 1263, 1453, 1255)  # 1-based lines of harmless-base/test; 1255 cannot be split


@pytest.fixture(scope="module")
def hh_pairs(tmp_path_factory, shared_data) -> Path:
    lines = gzip.open(shared_data / "hh_rlhf" / "harmless-base" / "test.jsonl.gz", "rt").read().splitlines()
    path = tmp_path_factory.mktemp("input") / "hh5.jsonl"
    path.write_text("".join(lines[row - 1] + "\n" for row in ROWS))
    return path


def _settings(data_dir, **overrides) -> PreferenceLabelsSettings:
    return PreferenceLabelsSettings(data_dir=str(data_dir), max_tokens=32, batch_size=4, **overrides)


def _sql(data_dir, query):
    con = duckdb.connect(str(Path(data_dir) / CATALOG_FILE), read_only=True)
    try:
        rel = con.sql(query)
        return [dict(zip(rel.columns, row)) for row in rel.fetchall()]
    finally:
        con.close()


def test_labels_hh_pairs_rerun_eval_and_export(ray_cluster, prefect_harness, hh_pairs, tmp_path, capsys):
    data_dir = tmp_path / "datasets"
    first = preference_labels(_settings(data_dir, pairs=str(hh_pairs)))
    rows = _sql(data_dir, "SELECT * FROM preference_labels")
    assert first["status"] == "completed" and first["rows_in"] == 5 and first["rows_out"] == 4 == len(rows)
    assert first["dropped_by_reason"] == {"dialogues_differ_before_last_turn": 1}
    assert {r["source_row"] for r in rows} == {1, 2, 3, 4}  # the input file's lines
    assert {r["chosen"] for r in rows} <= {"a", "b", "tie"} and all(r["human_choice"] in ("a", "b") for r in rows)
    for r in rows:
        assert len(r["judgments"]) == 4 and {j["order"] for j in r["judgments"]} == {"ab", "ba"}
        assert all(j["verdict_source"] in ("probs", "free_text", "none") for j in r["judgments"])
        assert r["strength"] >= 0 and r["mode"] == "self-reference" and r["principle"] == "best for humanity"
        assert r["reference"] and r["engine"] == "transformers"
    # One reference per prompt: the two pairs of a prompt carry the same reference, made by one request.
    by_prompt = {}
    for r in rows:
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    assert sorted(len(v) for v in by_prompt.values()) == [2, 2]
    assert all(len({r["reference"] for r in v}) == 1 for v in by_prompt.values())
    assert first["counts"]["references"] == 2
    # Every request is counted: a group's engine calls are its pairs' requests, references included.
    assert first["counts"]["engine_calls"] == sum(r["engine_requests"] for r in rows)
    assert sum(r["engine_requests"] for r in rows) == 2 + 4 * 2 + 4 * 4 + first["counts"].get("verdicts_not_from_probs", 0)

    again = preference_labels(_settings(data_dir, pairs=str(hh_pairs)))
    assert again["rows_out"] == 0 and again["rows_skipped"] == 4
    assert len(_sql(data_dir, "SELECT * FROM preference_labels")) == 4

    direct = preference_labels(_settings(data_dir, pairs=str(hh_pairs), mode="direct", samples_per_order=1))
    assert direct["rows_out"] == 4 and direct["counts"].get("references", 0) == 0
    capsys.readouterr()
    assert datagen(["eval", "preferences", "--data-dir", str(data_dir), "--run", first["run_id"],
                    "--json", str(tmp_path / "eval.json")]) == 0
    table = json.loads((tmp_path / "eval.json").read_text())
    assert [(t["run_id"], t["mode"], t["pairs"], t["human_labelled"]) for t in table] == [
        (first["run_id"], "self-reference", 4, 4), (direct["run_id"], "direct", 4, 4)]
    labels = {r["source_id"]: r for r in rows}
    assert table[0]["agreement"] == sum(r["chosen"] == r["human_choice"] for r in labels.values()) / 4
    assert table[0]["consistency"] == sum(r["consistent"] for r in labels.values()) / 4
    out = capsys.readouterr().out
    assert "agreement" in out and "consistency" in out and direct["run_id"] in out

    trl_path = tmp_path / "prefs.jsonl"
    assert datagen(["export", "preferences", "--data-dir", str(data_dir), "--out", str(trl_path), "--margin"]) == 0
    exported = [json.loads(line) for line in trl_path.read_text().splitlines()]
    decided = [r for r in rows if r["chosen"] != "tie"]
    assert len(exported) == len(decided)
    for e in exported:
        assert set(e) == {"prompt", "chosen", "rejected", "margin"} and e["prompt"][-1]["role"] == "user"
        assert e["chosen"][0]["role"] == "assistant" and e["chosen"] != e["rejected"]
    assert {e["chosen"][0]["content"] for e in exported} == {
        r["response_a"] if r["chosen"] == "a" else r["response_b"] for r in decided}

    runs = _sql(data_dir, "SELECT status, rows_out FROM runs ORDER BY started_at")
    assert runs == [{"status": "completed", "rows_out": n} for n in (4, 0, 4)]


def test_prompts_mode_samples_candidates_then_labels(ray_cluster, prefect_harness, shared_data, tmp_path):
    data_dir = tmp_path / "datasets"
    settings = _settings(data_dir, prompts=str(shared_data / "mt_bench" / "question.jsonl"), limit=2,
                         candidates=2, samples_per_order=1)
    summary = preference_labels(settings)
    rows = _sql(data_dir, "SELECT source_id, response_a, response_b, policy_model, chosen, reference FROM preference_labels")
    assert sorted(r["source_id"] for r in rows) == ["81/c0-c1", "82/c0-c1"]
    assert all(r["response_a"] and r["response_b"] and r["policy_model"].startswith("HuggingFaceTB/SmolLM2") for r in rows)
    assert summary["counts"]["candidate_tokens"] > 0 and summary["tokens_generated"] > summary["counts"]["candidate_tokens"]
    assert preference_labels(settings)["rows_out"] == 0
