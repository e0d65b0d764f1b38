"""math-programs: program-annotated math solutions (PAL, Gao et al. 2022; Jie & Lu 2023).

    prompts/        system.txt and the 8 hand-written exemplars (exemplars.jsonl)
    program.py      options, input loading, the message builder, the parser, the engine and sandbox steps, records
    exemplars.py    BM25 retrieval of the dynamic pass's exemplars
    eval.py         `datagen eval math-programs`: solve rate, greedy and majority-vote accuracy per run and pass
    generator.py    the Generator the runtime runs (passes: fixed, then dynamic)
"""
from .generator import MathPrograms, MathProgramsSettings

__all__ = ["MathPrograms", "MathProgramsSettings"]
