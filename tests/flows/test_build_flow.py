"""The shipped CPU demo recipe as one DAG with the real model (smaller limits): every generator writes
its table; the independent generators run at the same time (their Prefect task runs overlap); the
consumer labels pairs made only from the producer's committed rows; the programs' `clean:` dedup step
runs after them over every program; a rerun writes nothing and checks nothing again."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import yaml

from flows.build import BuildSettings, build
from schemas.tables import COT_REWRITES, TABLES
from schemas.store import TableStore

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    spec = yaml.safe_load((REPO / "deploy" / "recipes" / "cpu-demo.yaml").read_text())
    tmp = tmp_path_factory.mktemp("build")
    spec["data_dir"] = str(tmp / "datasets")
    for g in spec["generators"]:
        for key in ("input", "corpus", "examples"):
            if key in g["params"]:
                g["params"][key] = str(REPO / g["params"][key])
        # two target documents: the example documents (3 of the first 5) get no queries
        g["params"]["limit"] = 5 if g["flow"] == "retrieval-queries" else 2
        g["params"]["max_tokens"] = 64 if g["flow"] != "retrieval-queries" else 32
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


async def _task_runs(flow_run_id: str) -> dict[str, tuple]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name: (r.start_time, r.end_time) for r in runs}


def test_demo_recipe_dag(ray_cluster, prefect_harness, recipe):
    state = build(BuildSettings(recipe=str(recipe), ray_address=ray_cluster), return_state=True)
    summary = state.result()
    data_dir = Path(yaml.safe_load(recipe.read_text())["data_dir"])
    by_name = {g["generator"]: g for g in summary["generators"]}
    assert set(by_name) == {"programs", "queries", "rewrites", "rewrite-preferences"}
    for name, g in by_name.items():
        assert g["rows_out"] > 0, (name, g)
        table = TABLES[g["flow"].replace("-", "_")]
        assert TableStore(data_dir, table).read(columns=["record_id"]).num_rows >= g["rows_out"]

    # the consumer's pairs come from the producer's committed rows, and every label is for one of them
    pairs_file = data_dir / "_inputs" / "cpu-demo.rewrite-preferences.pairs.jsonl"
    pairs = [json.loads(line) for line in pairs_file.read_text().splitlines()]
    committed = TableStore(data_dir, COT_REWRITES).read(
        columns=["record_id", "source_id", "question", "attempt", "rewritten_text", "kept"]).to_pylist()
    # Expected independently of rewrite_pairs: per problem, its first two distinct non-empty rewrites in
    # attempt order (max_pairs_per_item 1, kept_only false), as prompt / response_a / response_b.
    expected = {}
    for source_id in {r["source_id"] for r in committed}:
        rows = sorted((r for r in committed if r["source_id"] == source_id), key=lambda r: r["attempt"])
        texts = list(dict.fromkeys(t for r in rows if (t := (r["rewritten_text"] or "").strip())))
        if len(texts) >= 2:
            expected[source_id] = (rows[0]["question"], texts[0], texts[1])
    assert expected, "the demo's 2 sampled rewrites per problem should give at least one pair"
    got = {p["id"].split("-pair-")[0]: (p["prompt"], p["response_a"], p["response_b"]) for p in pairs}
    assert len(pairs) == len(got) and got == expected
    labelled = TableStore(data_dir, TABLES["preference_labels"]).read(columns=["source_id"]).column(0).to_pylist()
    assert set(labelled) == {p["id"] for p in pairs}

    # generators without a dependency ran at the same time
    spans = asyncio.run(_task_runs(str(state.state_details.flow_run_id)))
    independent = [spans[f"generate-{n}"] for n in ("programs", "queries", "rewrites")]
    latest_start = max(s for s, _ in independent)
    earliest_end = min(e for _, e in independent)
    assert latest_start < earliest_end, spans  # all three were running at one moment
    assert spans["generate-rewrite-preferences"][0] >= spans["generate-rewrites"][1]
    assert spans["clean-programs"][0] >= spans["generate-programs"][1]
    programs = TableStore(data_dir, TABLES["math_programs"]).read(columns=["record_id"]).num_rows
    assert [(c["generator"], c["step"], c["checked"]) for c in summary["clean"]] == [("programs", "dedup", programs)]

    again = build(BuildSettings(recipe=str(recipe), ray_address=ray_cluster))
    assert [g["rows_out"] for g in again["generators"]] == [0, 0, 0, 0]
    assert [c["checked"] for c in again["clean"]] == [0]
