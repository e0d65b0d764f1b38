"""Proves the PreferenceLabels generator's hooks without Ray: its options are declared once (every old
flag is a field; exactly one of pairs / prompts; the config hash equals the one the old code computed,
pinned); load() keeps unsplittable hh-rlhf rows as rejects with their reason; plan() skips pairs
already labelled under the same config (another config's labels do not count) and groups the rest by
prompt so each prompt's reference is made once, and skips prompts whose candidate pairs are
committed; stages() picks one engine or two (policy model); and the per-row programs' rows become
records that fit the table, with the counts the runs table keeps (a group's engine calls are the
requests it made, and its pairs' shares add up to them). The engine is a scripted FakeEngine that
replies from the request, since every row's program runs at once."""
from __future__ import annotations

import asyncio
import json
import pickle
from collections import Counter
from datetime import datetime, timezone
from functools import partial

import pytest
from pydantic import ValidationError

from schemas.store import TableStore
from schemas.tables import PREFERENCE_LABELS
from tasks.engines import choose_backend
from tasks.engines.base import EngineSpec
from tasks.engines.fake import FakeEngine
from tasks.generators.preference_labels import PreferenceLabels, PreferenceLabelsSettings
from tasks.generators.preference_labels import program as pl
from tasks.generators.preference_labels import sources
from tasks.runtime.generator import LLMStage, Source

SINGLE = [{"role": "user", "content": "How do I boil an egg?"}]
OTHER = [{"role": "user", "content": "Name a prime."}]


def _pair(sid, conversation, a="x", b="y"):
    return {"source_id": sid, "source_file": "f.jsonl", "source_row": 1, "conversation": conversation,
            "response_a": a, "response_b": b, "human_choice": None, "policy_model": None}


def _records(groups, config_hash, config=pl.PreferenceConfig()):
    lineage = {"run_id": "r", "model": "m", "engine": "fake", "config_hash": config_hash,
               "created_at": datetime.now(timezone.utc)}
    return [r for g in groups for r in pl.to_records(g, lineage, config)]


def _run(program, rows, engine) -> list[dict]:
    """What the engine actor does with a stage's rows: every row's program at once (None: no row)."""
    async def run_all():
        return await asyncio.gather(*(program(row, engine) for row in rows))

    return [row for row in asyncio.run(run_all()) if row is not None]


def _commit(data_dir, pairs, config_hash):
    groups = _run(partial(pl.label_group, config=pl.PreferenceConfig()), sources.group_by_prompt(pairs),
                  FakeEngine(replies=["r"]))
    TableStore(data_dir, PREFERENCE_LABELS).commit(_records(groups, config_hash), "r")


# ---------------------------------------------------------------- options and config hash


def test_every_old_flag_is_a_settings_field_and_one_input_is_required():
    old_flags = {"pairs", "prompts", "candidates", "policy_model", "mode", "principle", "samples_per_order",
                 "temperature", "top_p", "max_tokens", "limit", "seed", "data_dir", "engine", "model", "device",
                 "batch_size", "pool_size", "ray_address"}
    assert old_flags <= set(PreferenceLabelsSettings.model_fields)
    for name in old_flags:  # each is `--field-name`: no field renames its flag
        extra = PreferenceLabelsSettings.model_fields[name].json_schema_extra
        assert not (isinstance(extra, dict) and "cli" in extra), name
    for kwargs in ({}, {"pairs": "p.jsonl", "prompts": "q.jsonl"}):
        with pytest.raises(ValidationError, match="exactly one of --pairs FILE or --prompts FILE"):
            PreferenceLabelsSettings(**kwargs)
    with pytest.raises(ValidationError, match="candidates"):
        PreferenceLabelsSettings(prompts="q.jsonl", candidates=1)
    with pytest.raises(ValidationError, match="principle"):
        PreferenceLabelsSettings(pairs="p.jsonl", principle="  ")
    with pytest.raises(ValidationError, match="mode"):
        PreferenceLabelsSettings(pairs="p.jsonl", mode="pairwise")


def test_config_hash_is_the_one_the_old_code_computed():
    # Values computed with the code before the move (git show HEAD:tasks/preference_labels.py):
    #   PreferenceConfig().config_hash(EngineSpec().model_id)                                  (--pairs)
    #   ... .config_hash(model_id, CandidateConfig(policy_model=model_id, max_tokens=160, seed=0))  (--prompts)
    assert PreferenceLabels(PreferenceLabelsSettings(pairs="p.jsonl")).config_hash() == "5dec5cae57e73d03"
    assert PreferenceLabels(PreferenceLabelsSettings(prompts="q.jsonl")).config_hash() == "b83e1abdfff84b5a"
    # Every option: PreferenceConfig(mode="direct", principle="most honest", samples_per_order=3, temperature=0.0,
    #   top_p=0.5, reference_max_tokens=64, critique_max_tokens=64, seed=7).config_hash("annotator",
    #   CandidateConfig(candidates=4, policy_model="policy", max_tokens=64, seed=7)), and without candidates.
    config = pl.PreferenceConfig(mode="direct", principle="most honest", samples_per_order=3, temperature=0,
                                 top_p=0.5, max_tokens=64, seed=7, candidates=4)
    assert config.config_hash("annotator", "policy") == "f822f537295c9142"
    assert config.config_hash("annotator") == "ca2711acab3c996c"
    # The settings put their options (not the input paths or run options) and the model ids into the hash.
    options = dict(mode="direct", principle="most honest", samples_per_order=3, temperature=0, top_p=0.5,
                   max_tokens=64, seed=7, candidates=4, model="/models/annotator", batch_size=64, data_dir="elsewhere")
    prompts = PreferenceLabelsSettings(prompts="q.jsonl", policy_model="/models/policy", **options)
    assert PreferenceLabels(prompts).config_hash() == "f822f537295c9142"
    assert PreferenceLabels(PreferenceLabelsSettings(pairs="p.jsonl", **options)).config_hash() == "ca2711acab3c996c"


# ---------------------------------------------------------------- load


def test_load_pairs_keeps_unsplittable_hh_rows_as_rejects(tmp_path):
    path = tmp_path / "hh.jsonl"
    rows = [{"chosen": "\n\nHuman: hi\n\nAssistant: hello there", "rejected": "\n\nHuman: hi\n\nAssistant: go away"},
            {"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nHuman: hello\n\nAssistant: b"},
            {"chosen": "\n\nHuman: egg?\n\nAssistant: boil it", "rejected": "\n\nHuman: egg?\n\nAssistant: no"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    source = PreferenceLabels(PreferenceLabelsSettings(pairs=str(path))).load()
    assert [p["source_row"] for p in source.rows] == [1, 3]
    assert source.rejects == [
        {"source_file": str(path), "source_row": 2, "reason": "dialogues_differ_before_last_turn"}]
    assert {r["reason"] for r in source.rejects} <= set(PreferenceLabels.drop_reasons)
    assert len(PreferenceLabels(PreferenceLabelsSettings(pairs=str(path), limit=1)).load().rows) == 1


def test_load_prompts(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"question_id": 81, "turns": ["Name a prime.", "Another?"]}) + "\n")
    source = PreferenceLabels(PreferenceLabelsSettings(prompts=str(path))).load()
    assert source.rows == [{"source_id": "81", "source_file": str(path), "source_row": 1, "conversation": OTHER}]
    assert source.rejects == []


# ---------------------------------------------------------------- plan


def test_plan_pairs_skips_committed_and_groups_by_prompt(tmp_path):
    generator = PreferenceLabels(PreferenceLabelsSettings(pairs="p.jsonl", data_dir=str(tmp_path)))
    store = TableStore(tmp_path, PREFERENCE_LABELS)
    pairs = [_pair("p1", SINGLE), _pair("p2", SINGLE, "z"), _pair("p3", OTHER), _pair("p4", OTHER, "w")]
    _commit(tmp_path, [pairs[0]], generator.config_hash())
    _commit(tmp_path, [pairs[2]], "other-config")
    plan = generator.plan(Source(pairs), store, "main")
    assert {g["prompt_id"]: sorted(p["source_id"] for p in g["pairs"]) for g in plan.rows} == {
        sources.prompt_key(SINGLE): ["p2"], sources.prompt_key(OTHER): ["p3", "p4"]}
    assert all(g["source_id"] == g["prompt_id"] for g in plan.rows)
    assert plan.skipped == 1  # pairs, not groups


def test_plan_prompts_skips_prompts_with_committed_candidate_pairs(tmp_path):
    prompts = [{"source_id": "81", "source_file": "q", "source_row": 1, "conversation": SINGLE},
               {"source_id": "82", "source_file": "q", "source_row": 2, "conversation": OTHER}]
    store = TableStore(tmp_path, PREFERENCE_LABELS)
    generator = PreferenceLabels(PreferenceLabelsSettings(prompts="q.jsonl", data_dir=str(tmp_path)))
    _commit(tmp_path, sources.pairs_from_candidates(prompts[0], ["one", "two"], "pm"), generator.config_hash())
    plan = generator.plan(Source(prompts), store, "main")
    assert [p["source_id"] for p in plan.rows] == ["82"] and plan.skipped == 1
    other = PreferenceLabels(PreferenceLabelsSettings(prompts="q.jsonl", data_dir=str(tmp_path), mode="direct"))
    assert len(other.plan(Source(prompts), store, "main").rows) == 2


# ---------------------------------------------------------------- stages


def test_stages_one_engine_or_two():
    [label] = PreferenceLabels(PreferenceLabelsSettings(pairs="p.jsonl")).stages("main")
    assert isinstance(label, LLMStage) and label.engine is None and label.program.func is pl.label_group
    for engine in ("auto", "transformers"):  # `auto` is resolved alike for the policy and the annotator
        [both] = PreferenceLabels(PreferenceLabelsSettings(prompts="q.jsonl", engine=engine)).stages("main")
        assert both.engine is None and both.program.func is pl.sample_then_label  # the policy is the annotator's model
        assert both.program.keywords["policy_model"] == EngineSpec().model_id
    other_policy = PreferenceLabelsSettings(prompts="q.jsonl", policy_model="/m/policy")
    sample, label = PreferenceLabels(other_policy).stages("main")
    assert sample.program.func is pl.sample_candidates
    assert sample.engine == EngineSpec(backend=choose_backend(other_policy.engine, "/m/policy")[0], model="/m/policy")
    assert sample.program.keywords["policy_model"] == "policy"
    assert label.program.func is pl.label_group and label.engine is None
    for stage in (label, both, sample):  # programs travel to Ray workers
        assert pickle.loads(pickle.dumps(stage.program)).func is stage.program.func


# ---------------------------------------------------------------- records and counts


def _shown_first(conversation) -> str:
    return next(m["content"] for m in conversation if "[Response A]" in m["content"]).split("[Response A]\n", 1)[1]


def prefers_good(conversation, continuations):
    return [-0.2, -1.8] if _shown_first(conversation).startswith("good") else [-1.8, -0.2]


def judge_reply(conversation, params) -> str:
    """The scripted annotator, read from the request: a reference, a critique, or a free-text verdict."""
    last = conversation[-1]["content"]
    if "[Response A]" in last:
        return "a critique"
    if last.startswith("Which response is better"):  # free text: name the one shown second
        return "Response B is better." if _shown_first(conversation).startswith("good") else "Neither."
    return "reference"


def _finish(generator, rows):
    """What the runtime does with a finished batch: records and the counts."""
    lineage = {"run_id": "r", "model": "m", "engine": "fake", "config_hash": generator.config_hash(),
               "created_at": datetime.now(timezone.utc)}
    counts, records = Counter(), []
    for row in rows:
        row_records = generator.to_records(row, lineage)
        records += row_records
        counts["tokens"] += generator.tokens(row, row_records)
        counts.update(generator.row_counts(row, row_records))
        for record in row_records:
            counts.update(generator.record_counts(record))
    return records, counts


def test_pairs_records_fit_the_table_with_the_counts():
    generator = PreferenceLabels(PreferenceLabelsSettings(pairs="p.jsonl"))
    pairs = [_pair("p1", SINGLE, "good x", "y"), _pair("p2", SINGLE, "z", "good w"), _pair("p3", OTHER, "good u", "v")]
    plan = generator.plan(Source(pairs), TableStore("/nonexistent", PREFERENCE_LABELS), "main")
    [stage] = generator.stages("main")
    rows = _run(stage.program, plan.rows, FakeEngine(reply=judge_reply, scorer=prefers_good))
    records, counts = _finish(generator, rows)
    TableStore("/nonexistent", PREFERENCE_LABELS).to_arrow(records)  # raises on a schema mismatch
    assert {r["record_id"] for r in records} == {pl.record_id(s, generator.config_hash()) for s in ("p1", "p2", "p3")}
    assert sum(r["completion_tokens"] for r in records) == counts["tokens"] > 0
    assert sum(r["engine_calls_share"] for r in records) == pytest.approx(counts["engine_calls"])
    assert counts == Counter({
        "prompts": 2, "references": 2, "candidate_tokens": 0,
        "engine_calls": 2 + 3 * 2 + 3 * 4,  # the requests the groups made: every one of them
        "chosen_a": 2, "chosen_b": 1, "consistent": 3,
        "engine_requests": 2 + 3 * 2 + 3 * 4,  # references + critique requests + verdicts
        "prompt_tokens": sum(r["prompt_tokens"] for r in records), "truncated": 0,
        "judgments": 12, "verdict_probs": 12, "verdicts_not_from_probs": 0, "tokens": counts["tokens"]})


def test_free_text_verdicts_are_counted_as_not_from_probs():
    generator = PreferenceLabels(PreferenceLabelsSettings(pairs="p.jsonl", mode="direct", samples_per_order=1))
    [stage] = generator.stages("main")
    engine = FakeEngine(reply=judge_reply, scorer=lambda conv, conts: [-9.0, -9.0])  # no mass on " A" / " B": free text
    rows = _run(stage.program, sources.group_by_prompt([_pair("p", SINGLE, "good x", "y")]), engine)
    _, counts = _finish(generator, rows)
    assert (counts["verdict_free_text"], counts["verdict_none"], counts["verdicts_not_from_probs"]) == (1, 1, 2)
    assert counts["engine_calls"] == 2 + 2 + 2  # critiques, scorings, free-text verdicts
    assert counts["references"] == 0 and "verdict_probs" not in counts


@pytest.mark.parametrize("policy_model", [None, "/m/policy"])
def test_prompts_sample_candidates_then_label(policy_model):
    generator = PreferenceLabels(PreferenceLabelsSettings(prompts="q.jsonl", candidates=3, samples_per_order=1,
                                                          policy_model=policy_model))
    prompts = [{"source_id": "81", "source_file": "q.jsonl", "source_row": 1, "conversation": SINGLE}]
    candidates = iter(["one two", "three", "four five six"])

    def reply(conversation, params):  # the policy's candidates (sampled diversely), or the annotator's turns
        return next(candidates) if params.temperature == pl.CANDIDATE_TEMPERATURE else judge_reply(conversation, params)

    engine = FakeEngine(reply=reply, scorer=prefers_good)
    rows = prompts
    for stage in generator.stages("main"):  # the same fake plays the policy and the annotator
        rows = _run(stage.program, rows, engine)
    records, counts = _finish(generator, rows)
    assert sorted(r["source_id"] for r in records) == ["81/c0-c1", "81/c0-c2", "81/c1-c2"]
    assert {r["policy_model"] for r in records} == {generator.policy_spec.model_id}
    assert counts["candidate_tokens"] == 6 and counts["prompts"] == 1
    assert counts["tokens"] == 6 + sum(r["completion_tokens"] for r in records)
