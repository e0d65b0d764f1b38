"""The cot-rewrites flow: route each item (expand / rewrite / unify), rewrite it into `Step k:` lines
with its family's step template, verify the answer is kept, optionally label steps by Monte Carlo.
Thin: it only wires tasks.

Run it:
    datagen run cot-rewrites --input ../shared/data/math500/test500.jsonl --limit 50 --data-dir ./datasets
or from Python:
    from flows.cot_rewrites import cot_rewrites, CotRewritesSettings
    cot_rewrites(CotRewritesSettings(input="../shared/data/gsm8k/train.jsonl", limit=5))
"""
from __future__ import annotations

from typing import Literal

from prefect import flow
from pydantic import Field

from flows.common import EngineSettings
from schemas.catalog import refresh_catalog
from tasks.cot_rewrites import CotRewritesConfig
from tasks.cot_rewrites_tasks import generate_rewrites, load_items, plan_items, summarize, write_records
from tasks.ray_stage import ray_session
from tasks.runs import recorded_run


class CotRewritesSettings(EngineSettings):
    input: str = Field(description="JSONL/Parquet: MATH-style (problem, solution, answer), GSM8K-style "
                                   "(question, answer ending '#### N') or answer-only (question, answer)")
    data_dir: str = "./datasets"
    limit: int | None = Field(None, ge=1, description="only the first N items of the input")
    rewrites: int = Field(1, ge=1, le=32, description="rewrites per item: 1 greedy, or n sampled (distinct kept)")
    temperature: float = Field(0.8, ge=0, description="temperature of the n sampled rewrites (n > 1)")
    max_tokens: int = Field(384, ge=16)
    seed: int = 0
    route: Literal["expand", "rewrite", "unify"] | None = Field(None, description="force one route for all items")
    route_column: str = Field("route", description="input column that forces the route per row when set")
    templates: str | None = Field(None, description="a step-templates JSON of your own (see tasks/prompts/cot_rewrites/templates.json)")
    step_labels: bool = Field(False, description="Monte-Carlo step values and the first bad step (binary search)")
    continuations: int = Field(4, ge=1, le=64, description="continuations per probed prefix (step labels)")
    label_max_tokens: int = Field(256, ge=16, description="max tokens per continuation (step labels)")

    def generator_config(self) -> CotRewritesConfig:
        return CotRewritesConfig(rewrites=self.rewrites, temperature=self.temperature, max_tokens=self.max_tokens,
                                 seed=self.seed, route=self.route, route_column=self.route_column,
                                 templates=self.templates, step_labels=self.step_labels,
                                 continuations=self.continuations, label_max_tokens=self.label_max_tokens)


@flow(name="cot-rewrites", log_prints=True)
def cot_rewrites(settings: CotRewritesSettings) -> dict:
    spec, config = settings.engine_spec(), settings.generator_config()
    config_hash = config.config_hash(spec.model_id)
    with recorded_run("cot-rewrites", settings, spec) as run:  # failures are recorded, then re-raised
        items = load_items(settings.input, config, settings.limit)
        run.rows_in = len(items)
        stats = {}
        todo = plan_items(items, settings.data_dir, config_hash)
        run.rows_skipped = len(items) - len(todo)
        if todo:
            with ray_session(settings.ray_address):
                ds = generate_rewrites(todo, spec, config, settings.batch_size, settings.pool_size)
                stats = write_records(ds, settings.data_dir, run, config, config_hash)
        summary = summarize(run, settings.data_dir, stats)
    refresh_catalog(settings.data_dir)
    return summary


__all__ = ["CotRewritesConfig", "CotRewritesSettings", "cot_rewrites"]
