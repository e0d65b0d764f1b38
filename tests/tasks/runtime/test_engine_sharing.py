"""One engine actor shared by two generator stages gives the same records as two separate engines,
and loads the model once. Real Ray cluster, real embedded model (transformers, greedy)."""
from __future__ import annotations

import threading
import time
from functools import partial

import pytest

from tasks.generators.math_programs import program as mp
from tasks.engines.base import EngineSpec
from tasks.runtime.ray_stage import (
    iter_row_batches, llm_stage, release_shared_engines, rows_dataset, shared_engine_name,
)

pytestmark = pytest.mark.integration

# float32: greedy text must not depend on which requests share a forward pass (padding)
SPEC = EngineSpec(backend="transformers", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def problems(shared_data) -> list[dict]:
    return mp.load_problems(shared_data / "gsm8k" / "train.jsonl", limit=4).rows


def _generator_rows(problems, n_exemplars):
    exemplars = list(mp.fixed_exemplars()[:n_exemplars])
    return [{**p, "pass": "fixed", "exemplars": exemplars} for p in problems]


def _run_two_generators(problems, share: bool) -> dict[str, dict]:
    """Two 'generators' (the same program with 1 and 2 exemplars) streamed at the same time."""
    config = mp.MathProgramsConfig(samples=1, max_tokens=48)
    results: dict[str, dict] = {}
    errors: list[BaseException] = []

    def run(name: str, n_exemplars: int) -> None:
        try:
            ds = llm_stage(rows_dataset(_generator_rows(problems, n_exemplars), rows_per_block=2), SPEC,
                           partial(mp.write_programs, config=config), batch_size=2, share_engine=share)
            for batch in iter_row_batches(ds):
                for row in batch:
                    results[f"{name}/{row['source_id']}"] = row["attempts"][0]
        except BaseException as exc:  # surfaced by the test below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(f"g{n}", n)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


def test_shared_engine_matches_separate_engines(ray_cluster, problems):
    import ray

    separate = _run_two_generators(problems, share=False)
    shared = _run_two_generators(problems, share=True)
    servers = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == "datagen"]
    assert servers == [shared_engine_name(SPEC)]  # one model copy served both stages
    assert release_shared_engines() == 1
    assert len(separate) == len(shared) == 2 * len(problems)
    for key, attempt in separate.items():
        assert shared[key]["raw_output"] == attempt["raw_output"], key
        assert shared[key]["completion_tokens"] == attempt["completion_tokens"]
    # the two generators really were different prompts
    assert any(separate[f"g1/{p['source_id']}"]["prompt_tokens"] < separate[f"g2/{p['source_id']}"]["prompt_tokens"]
               for p in problems)
    with pytest.raises(ValueError):
        ray.get_actor(shared_engine_name(SPEC), namespace="datagen")


def test_concurrent_steps_sharing_an_engine_stream_staged_plans_to_the_end(ray_cluster, problems, tmp_path):
    """A recipe runs its steps at once over one EngineServer (1 CPU of the 2). Each step reads its staged
    plan with Ray Data tasks that ask for a whole CPU, so the forwarders must hold none: at 0.05 each,
    four of them left 0.8 of a CPU and every step's reads waited forever (CI hung on a fresh clone)."""
    import ray

    from tasks.runtime.generator import Plan
    from tasks.runtime.planning import stage_rows
    from tasks.runtime.ray_stage import plan_dataset, shared_engine_server

    spec = EngineSpec(backend="fake", fake_replies=("def solution():\n    return 4",))
    config = mp.MathProgramsConfig(samples=1, max_tokens=16)
    shared_engine_server(spec)
    results: dict[int, set[str]] = {}
    errors: list[BaseException] = []

    def step(n: int) -> None:
        try:
            plan = Plan(staged=stage_rows(problems, str(tmp_path / f"step{n}")),
                        extra={"pass": "fixed", "exemplars": list(mp.fixed_exemplars()[:1])})
            ds = llm_stage(plan_dataset(plan, rows_per_block=1), spec, partial(mp.write_programs, config=config),
                           batch_size=1, share_engine=True, stage=n)
            results[n] = {row["source_id"] for batch in iter_row_batches(ds) for row in batch}
        except BaseException as exc:  # surfaced by the test below
            errors.append(exc)

    threads = [threading.Thread(target=step, args=(n,), daemon=True) for n in range(4)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 240
        for t in threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in threads), f"steps still waiting: {ray.available_resources()}"
        assert not errors, errors
        assert results == {n: {p["source_id"] for p in problems} for n in range(4)}
    finally:
        release_shared_engines()
