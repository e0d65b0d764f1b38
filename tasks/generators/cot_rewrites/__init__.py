"""cot-rewrites: answer-preserving chain-of-thought rewrites (URSA 2025; Supervised CoT).

    prompts/        system, route instructions (expand / rewrite / unify), step-label prompt, templates.json
    messages.py     prompt files and the pure message builders
    program.py      options, input loading and routing, the step parser, the per-row program
    verify.py       the answer check and the rejection reasons
    step_labels.py  Monte-Carlo step values, first bad step by binary search
    eval.py         `datagen eval cot-answers`, `datagen eval step-labels`
    generator.py    the Generator the runtime runs
"""
from .generator import CotRewrites, CotRewritesSettings

__all__ = ["CotRewrites", "CotRewritesSettings"]
