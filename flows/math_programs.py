"""The math-programs flow: PAL-style programs per problem, executed in a sandbox, kept with their
verdict, then a dynamic-exemplar pass for what is still unsolved. Thin: it only wires tasks.

Run it:
    datagen run math-programs --input samples/math_word_problems.jsonl --data-dir ./datasets
or from Python:
    from flows.math_programs import math_programs, MathProgramsSettings
    math_programs(MathProgramsSettings(input="samples/math_word_problems.jsonl"))
"""
from __future__ import annotations

from prefect import flow
from pydantic import Field

from flows.common import EngineSettings
from schemas.catalog import refresh_catalog
from tasks.math_programs import MathProgramsConfig
from tasks.math_programs_tasks import (
    execute_programs, generate_programs, load_problems, plan_dynamic_pass, plan_fixed_pass,
    summarize, write_records,
)
from tasks.ray_stage import ray_session
from tasks.runs import recorded_run


class MathProgramsSettings(EngineSettings):
    input: str = Field(description="JSONL/Parquet of problems: question, answer (GSM8K '#### N' or a number), optional id")
    data_dir: str = "./datasets"
    limit: int | None = Field(None, ge=1, description="only the first N problems of the input")
    samples: int = Field(4, ge=1, le=64, description="programs per problem and pass: 1 greedy + k-1 sampled")
    temperature: float = Field(0.5, ge=0, description="temperature of the k-1 sampled programs")
    max_tokens: int = Field(256, ge=16)
    exemplars: int = Field(8, ge=1, le=8, description="few-shot exemplars (fixed pass) / retrieved (dynamic pass)")
    dynamic: bool = Field(True, description="run the dynamic-exemplar pass on unsolved problems")
    seed: int = 0
    timeout_s: float = Field(5.0, gt=0, description="sandbox wall clock per program")

    def generator_config(self) -> MathProgramsConfig:
        return MathProgramsConfig(samples=self.samples, temperature=self.temperature, max_tokens=self.max_tokens,
                                  seed=self.seed, n_exemplars=self.exemplars, timeout_s=self.timeout_s)


@flow(name="math-programs", log_prints=True)
def math_programs(settings: MathProgramsSettings) -> dict:
    spec, config = settings.engine_spec(), settings.generator_config()
    config_hash = config.config_hash(spec.model_id)
    with recorded_run("math-programs", settings, spec) as run:  # failures are recorded, then re-raised
        problems = load_problems(settings.input, settings.limit)
        run.rows_in = len(problems)
        pass_stats = {}
        with ray_session(settings.ray_address):
            fixed = plan_fixed_pass(problems, settings.data_dir, config, config_hash)
            run.rows_skipped = len(problems) - len(fixed)
            pass_stats["fixed"] = _run_pass(fixed, settings, spec, config, config_hash, run)
            if settings.dynamic:
                dynamic, skipped = plan_dynamic_pass(problems, settings.data_dir, config, config_hash)
                run.counts["dynamic_skipped_no_exemplars"] = skipped
                pass_stats["dynamic"] = _run_pass(dynamic, settings, spec, config, config_hash, run)
        summary = summarize(run, settings.data_dir, pass_stats)
    refresh_catalog(settings.data_dir)
    return summary


def _run_pass(problems, settings, spec, config, config_hash, run) -> dict:
    if not problems:
        return {}
    ds = generate_programs(problems, spec, config, settings.batch_size, settings.pool_size)
    ds = execute_programs(ds, config, settings.batch_size)
    return write_records(ds, settings.data_dir, run, config, config_hash)


__all__ = ["MathProgramsConfig", "MathProgramsSettings", "math_programs"]
