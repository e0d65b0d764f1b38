"""Dataset recipes: several generators, their inputs, parameters and engines, run as one DAG
(flows/build.py). Pure: parsing, validation, dependency order, and the pairs a consumer generator
reads from a producer's table.

A recipe (YAML):

    name: cpu-demo
    data_dir: ./datasets            # every generator writes its table here
    share_engines: true             # generators with the same engine share one engine actor
    engines:
      small: {backend: transformers, model: smollm2-135m, device: auto}
      # or a model served on the cluster by Ray Serve LLM for the build (autoscaling replicas), reached
      # over its OpenAI-compatible endpoint:
      # served: {backend: openai, model: smol, serve: {model: smollm2-135m, max_replicas: 4}}
    generators:
      - name: programs
        flow: math-programs         # any `datagen run` generator, or path/to/file.py:ClassName
        engine: small
        params: {input: samples/math_word_problems.jsonl, samples: 2}
      - name: rewrites
        flow: cot-rewrites
        engine: small
        params: {input: samples/math_word_problems.jsonl, rewrites: 2}
        clean:                      # optional, after the generator: tasks/clean/
          decontaminate: {against: [data/math500/test500.jsonl]}   # + embedding: true, threshold: 0.85
          dedup: {threshold: 0.8}
      - name: rewrite-preferences   # consumes the committed rows of `rewrites`
        flow: preference-labels
        engine: small
        pairs_from: {generator: rewrites}
        params: {samples_per_order: 1}

Relative paths in params (and in `against`) are relative to the directory the build runs from (the repo root for the
shipped recipes). Generators with no `pairs_from` edge between them run concurrently.
"""
from __future__ import annotations

import hashlib
import itertools
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tasks.engines.base import BACKENDS, DEFAULT_BACKEND, DEFAULT_MODEL, DEVICES
from tasks.generators import load_generator
from tasks.runtime.serve_model import ServeModel


class EngineConfig(BaseModel):
    """One engine of a recipe. `backend: openai` sends the generators' requests to an OpenAI-compatible
    endpoint (`base_url`, `model` = the served name, the key's environment variable, prices)."""

    model_config = ConfigDict(extra="forbid")
    backend: Literal[BACKENDS] = DEFAULT_BACKEND
    model: str = DEFAULT_MODEL
    device: Literal[DEVICES] = "auto"
    base_url: str | None = None
    api_key_env: str | None = None
    price_in: float | None = None
    price_out: float | None = None
    requests_in_flight: int | None = None
    max_requests_in_flight: int | None = None
    request_timeout: float | None = None
    max_retries: int | None = None
    # Start the model on the Ray cluster as a Ray Serve LLM deployment (tasks/runtime/serve_model.py) for
    # the build's duration; `backend: openai`, and base_url is filled in with its endpoint.
    serve: ServeModel | None = None

    @model_validator(mode="after")
    def _served(self):
        if self.serve is not None and self.backend != "openai":
            raise ValueError("an engine with `serve:` is reached through its endpoint: set backend: openai")
        if self.backend == "openai" and self.serve is None and not self.base_url:
            raise ValueError("backend: openai needs base_url (or serve: to start the model on the Ray cluster)")
        return self


class PairsFrom(BaseModel):
    """Preference pairs made from a cot-rewrites generator's multiple rewrites per problem."""

    model_config = ConfigDict(extra="forbid")
    generator: str
    kept_only: bool = Field(False, description="pair only rewrites that kept the answer")
    max_pairs_per_item: int = Field(1, ge=1, description="pairs per problem, from its distinct rewrites in order")


class DecontaminateStep(BaseModel):
    """`datagen clean decontaminate` on the generator's table once it has committed (tasks/clean/)."""

    model_config = ConfigDict(extra="forbid")
    against: list[str] = Field(min_length=1, description="evaluation files (JSONL / Parquet / URIs)")
    column: str | None = None
    id_column: str | None = None
    ngram: int = Field(13, ge=1)
    min_ngrams: int = Field(1, ge=1)
    embedding: bool = False
    threshold: float = Field(0.85, gt=0, le=1)


class DedupStep(BaseModel):
    """`datagen clean dedup` on the generator's table once it has committed (tasks/clean/)."""

    model_config = ConfigDict(extra="forbid")
    threshold: float = Field(0.8, gt=0, lt=1)


class CleanSteps(BaseModel):
    """A generator's optional cleaning steps, run after it (decontaminate, then dedup)."""

    model_config = ConfigDict(extra="forbid")
    decontaminate: DecontaminateStep | None = None
    dedup: DedupStep | None = None


class GeneratorStep(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    flow: str
    engine: str | None = None
    params: dict = Field(default_factory=dict)
    pairs_from: PairsFrom | None = None
    clean: CleanSteps | None = None


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    data_dir: str = "./datasets"
    share_engines: bool = True
    engines: dict[str, EngineConfig] = Field(default_factory=lambda: {"default": EngineConfig()})
    generators: list[GeneratorStep] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self):
        seen: dict[str, GeneratorStep] = {}
        for g in self.generators:
            if g.name in seen:
                raise ValueError(f"generator {g.name!r} is named twice")
            try:
                load_generator(g.flow)
            except ValueError as exc:
                raise ValueError(f"generator {g.name!r}: unknown flow {g.flow!r}: {exc}") from None
            if g.engine is not None and g.engine not in self.engines:
                raise ValueError(f"generator {g.name!r}: unknown engine {g.engine!r}")
            if reserved := {"data_dir", "engine", "ray_address", *EngineConfig.model_fields} & set(g.params):
                raise ValueError(f"generator {g.name!r}: set {sorted(reserved)} at the recipe level, not in params")
            if g.pairs_from:
                producer = seen.get(g.pairs_from.generator)
                if producer is None:
                    raise ValueError(f"generator {g.name!r}: pairs_from {g.pairs_from.generator!r} must name an "
                                     "earlier generator")
                if producer.flow != "cot-rewrites" or g.flow != "preference-labels":
                    raise ValueError(f"generator {g.name!r}: pairs_from links a cot-rewrites producer to a "
                                     "preference-labels consumer")
                if "pairs" in g.params or "prompts" in g.params:
                    raise ValueError(f"generator {g.name!r}: pairs_from replaces params.pairs/prompts")
            seen[g.name] = g
        return self

    def engine_for(self, step: GeneratorStep) -> EngineConfig:
        return self.engines[step.engine] if step.engine else next(iter(self.engines.values()))

    def settings_params(self, step: GeneratorStep, **extra) -> dict:
        """The generator flow's settings: its params, the recipe's data dir, its engine's fields."""
        return {**step.params, **self.engine_for(step).model_dump(exclude={"backend", "serve"}, exclude_none=True),
                "engine": self.engine_for(step).backend, "data_dir": self.data_dir, **extra}


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None
    try:
        return Recipe.model_validate(raw)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def rewrite_pairs(rows: list[dict], kept_only: bool = False, max_pairs_per_item: int = 1) -> list[dict]:
    """Preference pairs from cot_rewrites rows: per problem, its distinct non-empty rewrites in attempt
    order, paired (1st, 2nd), (1st, 3rd), ... up to `max_pairs_per_item`. Each pair's id hashes the two
    record ids, so a rerun over a grown table re-makes the same ids and the labeller skips them."""
    by_item: dict[str, list[dict]] = {}
    for row in sorted(rows, key=lambda r: (r["source_id"], r["attempt"])):
        text = (row.get("rewritten_text") or "").strip()
        if not text or (kept_only and not row.get("kept")):
            continue
        texts = by_item.setdefault(row["source_id"], [])
        if all(text != t["text"] for t in texts):
            texts.append({"text": text, "record_id": row["record_id"], "question": row["question"]})
    pairs = []
    for source_id, texts in by_item.items():
        for a, b in itertools.islice(itertools.combinations(texts, 2), max_pairs_per_item):
            digest = hashlib.sha256(f"{a['record_id']}|{b['record_id']}".encode()).hexdigest()[:16]
            pairs.append({"id": f"{source_id}-pair-{digest}", "prompt": a["question"],
                          "response_a": a["text"], "response_b": b["text"]})
    return pairs
