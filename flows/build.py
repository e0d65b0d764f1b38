"""The `build` flow: a dataset recipe (tasks/recipes.py) run as one Prefect DAG.

Each generator runs as a task that calls its generator flow (a subflow, visible in Prefect as its own
flow run). Tasks go to a thread pool, so generators that do not depend on each other run at the same
time on one Ray cluster; a consumer (`pairs_from`) waits for its producer and reads only the rows the
producer committed. With `share_engines`, every generator stage of this build that uses the same
engine sends its calls to one EngineServer actor: the model is loaded once (one GPU, one copy).

    datagen run build --recipe deploy/recipes/cpu-demo.yaml
"""
from __future__ import annotations

import json
import re

import pyarrow.dataset as pads
from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, Field

from flows.generate import flow_for
from schemas.catalog import refresh_catalog
from schemas.datadir import DataDir
from schemas.store import TableStore
from schemas.tables import COT_REWRITES
from tasks.generators import load_generator
from tasks.recipes import GeneratorStep, Recipe, load_recipe, rewrite_pairs
from tasks.runtime.ray_stage import ray_session, release_shared_engines, sharing_engines


class BuildSettings(BaseModel):
    recipe: str = Field(description="a recipe YAML (see deploy/recipes/)")
    data_dir: str | None = Field(None, description="override the recipe's data_dir")
    ray_address: str | None = Field(None, description="join this Ray cluster instead of starting a local one")


def _generator(step: GeneratorStep, recipe: Recipe, **extra):
    """The step's generator, built with its settings (validated: a bad param fails here)."""
    return load_generator(step.flow)(recipe.settings_params(step, **extra))


@task(cache_policy=NO_CACHE, task_run_name="generate-{step.name}")
def run_generator(step: GeneratorStep, recipe: Recipe, pairs_file: str | None = None) -> dict:
    generator = _generator(step, recipe, **({"pairs": pairs_file} if pairs_file else {}))
    summary = flow_for(step.flow)(generator=step.flow, settings=generator.settings.model_dump())
    return {"generator": step.name, "flow": step.flow, **summary}


@task(cache_policy=NO_CACHE, task_run_name="pairs-from-{producer.name}")
def pairs_from_rewrites(consumer: GeneratorStep, producer: GeneratorStep, recipe: Recipe,
                        producer_summary: dict) -> str:
    """Write the consumer's pairs file from the producer's committed cot_rewrites rows (its config only;
    files still being written are hidden temp files, never read). `producer_summary` orders the task."""
    config_hash = _generator(producer, recipe).config_hash()
    rows = TableStore(recipe.data_dir, COT_REWRITES).read(
        columns=["record_id", "source_id", "question", "attempt", "rewritten_text", "kept"],
        filter=pads.field("config_hash") == config_hash,
    ).to_pylist()
    pairs = rewrite_pairs(rows, consumer.pairs_from.kept_only, consumer.pairs_from.max_pairs_per_item)
    data_dir = DataDir(recipe.data_dir)
    path = data_dir.write_bytes("".join(json.dumps(p) + "\n" for p in pairs).encode(),
                                data_dir.join("_inputs", f"{recipe.name}.{consumer.name}.pairs.jsonl"))
    path = data_dir.url(path)
    print(f"{consumer.name}: {len(pairs)} pairs from {len(rows)} committed {producer.name} rows -> {path}")
    return str(path)


def serve_engines(recipe: Recipe) -> tuple[Recipe, list[str]]:
    """Start every engine that has `serve:` as a Ray Serve LLM deployment on the session's cluster and
    point it at its endpoint; (the recipe with base URLs filled in, the engines started)."""
    from tasks.runtime.serve_model import start

    engines, served = dict(recipe.engines), []
    for name, engine in recipe.engines.items():
        if engine.serve is not None:
            url = start(engine.serve)
            print(f"engine {name}: {engine.serve.model} served by Ray Serve LLM at {url} as {engine.serve.name!r}")
            engines[name] = engine.model_copy(update={"base_url": url, "model": engine.serve.name})
            served.append(name)
    return recipe.model_copy(update={"engines": engines}), served


@task(cache_policy=NO_CACHE, task_run_name="clean-{step.name}")
def clean_generator(step: GeneratorStep, recipe: Recipe, producer_summary: dict) -> list[dict]:
    """The step's `clean:` steps over its table, once it has committed (`producer_summary` orders the task)."""
    from flows.clean import brief, recipe_steps, run_step

    table = load_generator(step.flow).table.name
    return [brief(step.name, run_step(recipe.data_dir, kind, table, settings, against))
            for kind, settings, against in recipe_steps(step.clean)]


@flow(name="build", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=8))
def build(settings: BuildSettings) -> dict:
    recipe = load_recipe(settings.recipe)
    if settings.data_dir:
        recipe = recipe.model_copy(update={"data_dir": settings.data_dir})
    steps = {g.name: g for g in recipe.generators}
    futures = {}
    with ray_session(settings.ray_address), sharing_engines(recipe.share_engines):
        recipe, served = serve_engines(recipe)
        try:
            for step in recipe.generators:  # validated: producers come before their consumers
                if step.pairs_from:
                    producer = steps[step.pairs_from.generator]
                    pairs = pairs_from_rewrites.submit(step, producer, recipe, futures[producer.name])
                    futures[step.name] = run_generator.submit(step, recipe, pairs)
                else:
                    futures[step.name] = run_generator.submit(step, recipe)
            cleaned = {name: clean_generator.submit(steps[name], recipe, futures[name])
                       for name in steps if steps[name].clean}
            summaries = [futures[name].result() for name in steps]
            clean_summaries = [line for name in cleaned for line in cleaned[name].result()]
        finally:
            release_shared_engines()
            if served:
                from tasks.runtime.serve_model import stop

                stop()
    refresh_catalog(recipe.data_dir)
    columns = ["generator", "flow", "run_id", "rows_in", "rows_skipped", "rows_out", "tokens_generated", "wall_seconds"]
    table = [{c: s.get(c) for c in columns} for s in summaries]
    create_table_artifact(key=re.sub(r"[^a-z0-9-]+", "-", f"build-{recipe.name}".lower()), table=table,
                          description=f"recipe {recipe.name}: one row per generator run")
    return {"recipe": recipe.name, "data_dir": recipe.data_dir, "generators": table,
            "rows_out": sum(s["rows_out"] for s in summaries), "clean": clean_summaries}
