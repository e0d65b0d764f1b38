"""The math-programs flow: PAL-style programs per problem, executed in a sandbox, kept with their
verdict, then a dynamic-exemplar pass for what is still unsolved. The generator is
tasks/generators/math_programs/; the runtime runs it.

Run it:
    datagen run math-programs --input samples/math_word_problems.jsonl --data-dir ./datasets
or from Python:
    from flows.math_programs import math_programs, MathProgramsSettings
    math_programs(MathProgramsSettings(input="samples/math_word_problems.jsonl"))
"""
from __future__ import annotations

from prefect import flow

from tasks.generators.math_programs import MathPrograms, MathProgramsSettings
from tasks.runtime.pipeline import run_generator


@flow(name="math-programs", log_prints=True)
def math_programs(settings: MathProgramsSettings) -> dict:
    """PAL programs per problem, verified in the sandbox, into the math_programs table."""
    return run_generator(MathPrograms, settings)


__all__ = ["MathProgramsSettings", "math_programs"]
