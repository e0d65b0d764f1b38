"""preference-labels: self-reference AI preference labels, both orders, with a strength (Bao et al. 2024).

    prompts/        the judge's turns as templates: request, reference, critique (both modes), verdict
    sources.py      reading --pairs (hh-rlhf, TRL, response_a/response_b) and --prompts; prompt groups
    program.py      options, the prompt builders, verdicts and their aggregation, the engine steps, records
    eval.py         `datagen eval preferences`
    export.py       `datagen export preferences` (TRL rows)
    generator.py    the Generator the runtime runs
"""
from .generator import PreferenceLabels, PreferenceLabelsSettings

__all__ = ["PreferenceLabels", "PreferenceLabelsSettings"]
