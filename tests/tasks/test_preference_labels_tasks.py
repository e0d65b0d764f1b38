"""Proves planning against the committed table: pairs already labelled under the same config are
skipped (another config's labels do not count), the rest are grouped by prompt so each prompt's
reference is made once; prompts whose candidate pairs are committed are skipped."""
from __future__ import annotations

from datetime import datetime, timezone

from schemas.tables import PREFERENCE_LABELS
from tasks import preference_labels as pl
from tasks.engines.fake import FakeEngine
from tasks.preference_labels_tasks import plan_pairs, plan_prompts
from tasks.store import TableStore

SINGLE = [{"role": "user", "content": "How do I boil an egg?"}]
OTHER = [{"role": "user", "content": "Name a prime."}]


def _pair(sid, conversation, a="x", b="y"):
    return {"source_id": sid, "source_file": "f.jsonl", "source_row": 1, "conversation": conversation,
            "response_a": a, "response_b": b, "human_choice": None, "policy_model": None}


def _commit(data_dir, pairs, config_hash):
    groups = pl.label_groups(pl.group_by_prompt(pairs), FakeEngine(replies=["r"]), pl.PreferenceConfig())
    lineage = {"run_id": "r", "model": "m", "engine": "fake", "config_hash": config_hash,
               "created_at": datetime.now(timezone.utc)}
    TableStore(data_dir, PREFERENCE_LABELS).commit(
        [r for g in groups for r in pl.to_records(g, lineage, pl.PreferenceConfig())], "r")


def test_plan_pairs_skips_committed_and_groups_by_prompt(tmp_path):
    pairs = [_pair("p1", SINGLE), _pair("p2", SINGLE, "z"), _pair("p3", OTHER), _pair("p4", OTHER, "w")]
    _commit(tmp_path, [pairs[0]], "h")
    _commit(tmp_path, [pairs[2]], "other-config")
    groups = plan_pairs.fn(pairs, str(tmp_path), "h")
    assert {g["prompt_id"]: sorted(p["source_id"] for p in g["pairs"]) for g in groups} == {
        pl.prompt_key(SINGLE): ["p2"], pl.prompt_key(OTHER): ["p3", "p4"]}
    assert all(g["source_id"] == g["prompt_id"] for g in groups)


def test_plan_prompts_skips_prompts_with_committed_candidate_pairs(tmp_path):
    prompts = [{"source_id": "81", "source_file": "q", "source_row": 1, "conversation": SINGLE},
               {"source_id": "82", "source_file": "q", "source_row": 2, "conversation": OTHER}]
    _commit(tmp_path, pl.pairs_from_candidates(prompts[0], ["one", "two"], "pm"), "h")
    assert [p["source_id"] for p in plan_prompts.fn(prompts, str(tmp_path), "h")] == ["82"]
    assert len(plan_prompts.fn(prompts, str(tmp_path), "other")) == 2
