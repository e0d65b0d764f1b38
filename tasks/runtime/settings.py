"""Options every generator run takes: which engine runs the model, how work is batched, where Ray is,
where the tables go, and which input rows are dropped rather than stop the run (tasks/runtime/inputs.py).
A generator's settings model subclasses `RunSettings` and declares only its own options; the CLI builds
`datagen run <generator>` from that one model (help from each field's description), and recipes and
Prefect deployments pass the same field names.

Example:
    class MySettings(RunSettings):
        input: str = Field(description="JSONL of questions")
        samples: int = Field(2, ge=1, description="answers per question")
    MySettings(input="q.jsonl", engine="vllm").engine_spec()   # EngineSpec(backend="vllm", ...)
"""
from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tasks.engines import choose_backend
from tasks.engines.base import BACKENDS, DEFAULT_BACKEND, DEFAULT_MODEL, DEVICES, EngineSpec

from .inputs import RowChecks


class RunSettings(BaseModel):
    # A misspelt option in a recipe or a deployment fails at once instead of being ignored.
    model_config = ConfigDict(extra="forbid")

    data_dir: str = Field("./datasets", description="where the tables go: a folder, or an s3:// gs:// ... URI")
    limit: int | None = Field(None, ge=1, description="only the first N source rows of the input")
    # DATAGEN_ENGINE sets a machine-wide default (e.g. transformers on a box whose vLLM is for other work).
    engine: Literal[BACKENDS] = Field(default_factory=lambda: os.environ.get("DATAGEN_ENGINE", DEFAULT_BACKEND),
                                      validate_default=True,
                                      description="the engine that runs the model (auto: vLLM when installed and "
                                                  "able to run it, else transformers)")
    model: str = Field(DEFAULT_MODEL, description=f"'{DEFAULT_MODEL}' (embedded) or a local model folder; with "
                                                  "--engine openai, the name the endpoint serves")
    device: Literal[DEVICES] = Field("auto", description="where the engine runs (auto: a GPU when Ray has one)")
    batch_size: int = Field(8, ge=1, description="source rows per Ray block and per committed file")
    pool_size: int = Field(1, ge=1, description="engine actors (one model copy each)")
    # Enough rows that the engine always holds a full batch: vLLM schedules up to 256 sequences, and a
    # row asks for 1-16 of them at a time (a row waiting on the sandbox or a verifier asks for none).
    rows_in_flight: int = Field(256, ge=1, description="source rows each engine actor works on at once")
    ray_address: str | None = Field(None, description="join this Ray cluster instead of starting a local one")
    # A row this long is almost surely a broken file (a whole book in one cell), and would not fit a
    # small model's context anyway: 20,000 characters are ~5,000 tokens, and SmolLM2 takes 8,192.
    max_input_chars: int = Field(20_000, ge=1, description="a source row whose texts are longer than this is "
                                                           "not used (counted as dropped_input_too_long)")
    # --engine openai: a model served behind an OpenAI-compatible endpoint (tasks/engines/openai_engine.py).
    base_url: str | None = Field(None, description="--engine openai: the endpoint, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str | None = Field(None, description="--engine openai: the environment variable that holds the "
                                                      "API key (the key itself is never stored or logged)")
    price_in: float | None = Field(None, ge=0, description="--engine openai: price per million prompt tokens "
                                                           "(gives the run's cost; none: no cost)")
    price_out: float | None = Field(None, ge=0, description="--engine openai: price per million completion tokens")
    # Where the adaptive (AIMD) limit of requests in flight starts; it grows on success up to the max and
    # halves on 429 / 5xx / timeouts. Per engine actor: --pool-size N sends up to N times as many.
    requests_in_flight: int = Field(16, ge=1, description="--engine openai: requests in flight to start with")
    max_requests_in_flight: int = Field(256, ge=1, description="--engine openai: the most requests in flight")
    request_timeout: float = Field(600.0, gt=0, description="--engine openai: seconds for one request (retried)")
    max_retries: int = Field(5, ge=0, description="--engine openai: retries after a 429, 5xx or timeout; then the "
                                                  "row is kept with finish_reason request_failed")
    drop_duplicates: bool = Field(False, description="a source row whose id repeats an earlier row's is dropped "
                                                     "(counted as dropped_duplicate_id) instead of stopping the run")

    @model_validator(mode="after")
    def _endpoint_options(self):
        if self.engine == "openai" and not self.base_url:
            raise ValueError("--engine openai needs --base-url (the endpoint, e.g. http://127.0.0.1:8000/v1)")
        if self.engine == "openai" and "model" not in self.model_fields_set:
            raise ValueError("--engine openai needs --model: the model name the endpoint serves")
        return self

    def engine_spec(self) -> EngineSpec:
        """The engine to run, with `auto` resolved (engine_choice says why)."""
        backend = self.engine_choice()[0]
        if backend != "openai":
            return EngineSpec(backend=backend, model=self.model, device=self.device)
        return EngineSpec(backend=backend, model=self.model, **{k: getattr(self, k) for k in ENDPOINT_FIELDS})

    def engine_choice(self) -> tuple[str, str]:
        """(backend, why): `--engine auto` picks vLLM when it is installed and can run the model."""
        return choose_backend(self.engine, self.model)

    def row_checks(self) -> RowChecks:
        """What `load()` checks on every source row besides its generator's own rules."""
        return RowChecks(max_chars=self.max_input_chars, drop_duplicates=self.drop_duplicates)

    def model_options(self) -> dict[str, str]:
        """The option name and value of every model the run loads (checked before anything starts); a
        served model (--engine openai) is checked at its endpoint instead (preflight)."""
        return {} if self.engine == "openai" else {"model": self.model}

    def generator_options(self) -> dict:
        """The generator's own options: every field a subclass adds to these."""
        return self.model_dump(exclude=set(RunSettings.model_fields))


RUN_FIELDS = tuple(RunSettings.model_fields)
ENDPOINT_FIELDS = ("base_url", "api_key_env", "price_in", "price_out", "requests_in_flight",
                   "max_requests_in_flight", "request_timeout", "max_retries")
ENGINE_FIELDS = ("engine", "model", "device", *ENDPOINT_FIELDS)
