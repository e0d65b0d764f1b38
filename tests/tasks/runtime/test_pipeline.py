"""Proves the one runtime under every generator with a toy generator (scripted FakeEngine, so the
numbers are known) on a real Ray cluster, a real Prefect API and real Parquet files: the stages run in
order (engine actor, then a CPU task), each record carries its lineage, rejected input rows and
dropped records are counted in one `dropped_<reason>` vocabulary, the run's row and artifact hold
every count, each step is its own Prefect task run, a rerun skips what is committed, and a failing stage marks the run failed with its error."""
from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from collections import Counter
from functools import partial

import pyarrow as pa
import pytest
from prefect import flow
from pydantic import Field
from ray import cloudpickle

from schemas.store import TableStore
from schemas.tables import LINEAGE_FIELDS, RUNS, TableSchema
from tasks.engines.base import EngineSpec, SamplingParams
from tasks.runtime import CPUStage, Generator, LLMStage, RunSettings, Source, read_rows
from tasks.runtime.pipeline import artifact_key, run_generator

# Ray workers cannot import a test module: its step functions travel by value (as a user's file does).
cloudpickle.register_pickle_by_value(sys.modules[__name__])

TOY = TableSchema("toy_echo", 1, pa.schema(LINEAGE_FIELDS + [
    pa.field("attempt", pa.int32(), nullable=False),
    pa.field("text", pa.string()),
    pa.field("kept", pa.bool_(), nullable=False),
    pa.field("drop_reason", pa.string()),
    pa.field("completion_tokens", pa.int32()),
]))


class ToySettings(RunSettings):
    input: str = Field(description="JSONL of {id, text}")
    samples: int = 2
    fail: bool = False

    def engine_spec(self) -> EngineSpec:
        return EngineSpec(backend="fake", model="fake", fake_replies=("hello world", "no"))


async def echo(row, engine, samples, fail):
    if fail:
        raise RuntimeError("the stage broke")
    group = await engine.generate([{"role": "user", "content": row["text"]}], SamplingParams(n=samples))
    row["samples"] = [{"text": c.text, "tokens": c.completion_tokens} for c in group]
    return row


def shout(rows):
    for row in rows:
        for s in row["samples"]:
            s["text"] = s["text"].upper()
    return rows


class Toy(Generator):
    name = "toy-echo"
    table = TOY
    Settings = ToySettings
    drop_reasons = ("too_short",)
    card_columns = {"completion_tokens": "tokens per sample"}

    def load(self) -> Source:
        rows, rejects = [], []
        for n, row in read_rows(self.settings.input):
            if not row["text"]:
                rejects.append({"source_file": self.settings.input, "source_row": n, "reason": "empty_text"})
            else:
                rows.append({"source_id": row["id"], "source_file": self.settings.input, "source_row": n, **row})
        return Source(rows, rejects)

    def stages(self, pass_name):
        return [LLMStage(partial(echo, samples=self.settings.samples, fail=self.settings.fail)), CPUStage(shout)]

    def to_records(self, row, lineage):
        return [{"record_id": hashlib.sha256(f"{row['source_id']}|{lineage['config_hash']}|{i}".encode()).hexdigest(),
                 "source_id": row["source_id"], "source_file": row["source_file"], "source_row": row["source_row"],
                 "generator": self.name, "prompt_version": "toy/v1", **lineage, "attempt": i, "text": s["text"],
                 "kept": len(s["text"]) >= 3, "drop_reason": None if len(s["text"]) >= 3 else "too_short",
                 "completion_tokens": s["tokens"]} for i, s in enumerate(row["samples"])]

    def drop_reason(self, record):
        return record["drop_reason"]

    def row_counts(self, row, records):
        return Counter(rows_with_kept=int(any(r["kept"] for r in records)))

    def finish(self, source, store):
        return Counter(finished=1)


@flow(name="toy-echo")
def toy_flow(settings: dict) -> dict:
    return run_generator(Toy, settings)


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "a", "text": "one"}, {"id": "b", "text": ""}, {"id": "c", "text": "two"}, {"id": "d", "text": "three"}]))
    return path


async def _task_run_names(flow_run_id: str) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return sorted(r.name for r in runs)


async def _artifact(key: str) -> list[dict]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async with get_client() as client:
        [artifact] = await client.read_latest_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data


async def _markdown_artifact(key: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async with get_client() as client:
        [artifact] = await client.read_latest_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return artifact


def test_a_run_counts_commits_and_reruns(ray_cluster, prefect_harness, source, tmp_path):
    settings = {"input": str(source), "data_dir": str(tmp_path / "d"), "batch_size": 2}
    state = toy_flow(settings, return_state=True)
    summary = state.result()
    assert summary["status"] == "completed" and summary["flow"] == "toy-echo"
    assert (summary["rows_in"], summary["rows_skipped"], summary["rows_out"]) == (4, 0, 6)
    assert summary["dropped_by_reason"] == {"empty_text": 1, "too_short": 3}
    assert summary["counts"] == {"kept": 3, "rows_with_kept": 3, "finished": 1}
    assert summary["tokens_generated"] == 3 * (2 + 1)  # "hello world" is 2 words, "no" 1, per row
    # one request per row; the engine's occupancy came back from the actor with the rows
    assert summary["engine_requests"] == 3 and summary["engine_mean_in_flight"] > 0
    assert 0 < summary["engine_busy_fraction"] <= 1
    assert summary["engine_choice"] is None  # the toy's settings pick the fake engine themselves

    store = TableStore(tmp_path / "d", TOY)
    rows = store.read().to_pylist()
    assert len(rows) == len({r["record_id"] for r in rows}) == 6
    assert sorted(r["text"] for r in rows) == ["HELLO WORLD"] * 3 + ["NO"] * 3  # both stages ran, in order
    generator = Toy(settings)
    assert {(r["run_id"], r["config_hash"], r["model"], r["engine"]) for r in rows} == {
        (summary["run_id"], generator.config_hash(), "fake", "fake")}
    assert all(r["kept"] == (r["drop_reason"] is None) for r in rows)

    names = asyncio.run(_task_run_names(str(state.state_details.flow_run_id)))
    assert names == sorted(["load-toy-echo", "plan-main", "generate-main", "finish-toy-echo", "summarize-toy-echo"])
    metrics = {m["metric"]: m["value"] for m in asyncio.run(_artifact(artifact_key("toy-echo")))}
    assert metrics["dropped_too_short"] == 3 and metrics["dropped_empty_text"] == 1 and metrics["kept"] == 3
    assert metrics["engine_requests"] == 3
    assert metrics[f"not used: {source}: row 2"] == "empty_text"
    card = asyncio.run(_markdown_artifact("toy-echo-data-card"))
    assert card.description == f"toy-echo run {summary['run_id']}: data card {summary['report']}"
    assert "| kept | 3 |" in card.data and "| too_short | 3 |" in card.data
    assert "| source rows with a kept record (pass rate) | 3 of 3 (100%) |" in card.data
    assert "| tokens per sample | 1 | 2 | 2 | 6 |" in card.data  # min, median, max, n of completion_tokens

    again = toy_flow(settings)
    assert (again["rows_skipped"], again["rows_out"], again["counts"]) == (3, 0, {"finished": 1})
    assert again["engine_requests"] == 0 and again["engine_mean_in_flight"] is None  # no engine ran
    assert len(store.read().to_pylist()) == 6


def test_a_failing_stage_marks_the_run_failed(ray_cluster, prefect_harness, source, tmp_path):
    settings = {"input": str(source), "data_dir": str(tmp_path / "d"), "fail": True}
    with pytest.raises(Exception, match="the stage broke"):
        toy_flow(settings)
    [run] = TableStore(tmp_path / "d", RUNS).read().to_pylist()
    assert run["status"] == "failed" and "the stage broke" in run["error"]
    assert TableStore(tmp_path / "d", TOY).read().num_rows == 0


def test_settings_are_checked_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match="samplez"):
        Toy({"input": "x", "samplez": 3})
    with pytest.raises(ValueError, match="input"):
        Toy({})
