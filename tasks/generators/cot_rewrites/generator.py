"""The cot-rewrites generator: answer-preserving chain-of-thought rewrites, one row per rewrite.

Each item is routed (expand / rewrite / unify), rewritten into `Step k:` lines with its family's step
template, verified against the gold answer and, with `--step-labels`, labelled step by step — one
item's whole job is the per-row program `program.rewrite_item`, run in the engine actor beside many
other items'. Every rewrite is a row of `cot_rewrites`; a rejected one keeps its `rejection_reason`
(the drop reason).

Run: `datagen run cot-rewrites --input samples/math_word_problems.jsonl --limit 5 --data-dir ./datasets`
"""
from __future__ import annotations

from collections import Counter
from functools import partial

from pydantic import Field

from schemas.tables import COT_REWRITES
from tasks.runtime.generator import Command, Generator, LLMStage, Source
from tasks.runtime.settings import RunSettings

from . import eval as cot_eval
from . import export as cot_export
from . import program as cr
from .verify import REJECTION_REASONS


class CotRewritesSettings(RunSettings, cr.CotRewritesConfig):
    input: str = Field(description="JSONL/Parquet: MATH-style (problem, solution, answer), GSM8K-style "
                                   "(question, answer ending '#### N') or answer-only (question, answer)")

    def config(self) -> cr.CotRewritesConfig:
        return cr.CotRewritesConfig(**self.model_dump(include=set(cr.CotRewritesConfig.model_fields)))


class CotRewrites(Generator):
    name = "cot-rewrites"
    description = "answer-preserving step-by-step rewrites, verified; optional step labels"
    table = COT_REWRITES
    Settings = CotRewritesSettings
    drop_reasons = REJECTION_REASONS
    prompt_version = cr.PROMPT_VERSION
    card_columns = {  # charted on the data card
        "first_error_step": "first bad step found by the step labels",
        "root_value": "solve rate of the question (step-label search root)",
    }
    summary_sql = (
        "SELECT route, coalesce(rejection_reason, 'kept') AS outcome, count(*) AS rewrites, "
        "count(DISTINCT source_id) AS items FROM cot_rewrites WHERE run_id = '{run_id}' GROUP BY ALL "
        "ORDER BY route, rewrites DESC"
    )
    evals = (
        Command("cot-answers", "verifier on reference solutions: accept own gold, reject another's",
                cot_eval.add_answers_arguments, "tasks.generators.cot_rewrites.eval:main_answers"),
        Command("step-labels", "first-error search vs BIG-Bench Mistake human labels",
                cot_eval.add_step_labels_arguments, "tasks.generators.cot_rewrites.eval:main_step_labels"),
    )
    exports = (
        Command("cot-rewrites", "kept rewrites as SFT chat messages (question -> rewrite)",
                cot_export.add_arguments, "tasks.generators.cot_rewrites.export:main"),
        Command("step-labels", "step-labelled rewrites as TRL PRM rows (prompt, completions, labels)",
                cot_export.add_step_labels_arguments, "tasks.generators.cot_rewrites.export:main_step_labels"),
    )

    def __init__(self, settings):
        super().__init__(settings)
        self.config = self.settings.config()

    def config_hash(self) -> str:
        return self.config.config_hash(self.engine_spec.model_id)

    def load(self) -> Source:
        return cr.load_items(self.settings.input, self.config, self.settings.limit, self.settings.row_checks())

    def stages(self, pass_name: str) -> list:
        # per item: generate, parse, verify and (with step labels) label, in the engine actor
        return [LLMStage(partial(cr.rewrite_item, config=self.config))]

    def to_records(self, row: dict, lineage: dict) -> list[dict]:
        return cr.to_records(row, {**lineage, "max_tokens": self.config.max_tokens}, self.config.templates)

    def drop_reason(self, record: dict) -> str | None:
        return None if record["kept"] else record["rejection_reason"]

    def row_counts(self, row: dict, records: list[dict]) -> Counter:
        counts = Counter(items=1, items_with_kept=int(any(r["kept"] for r in records)))
        for r in records:
            counts[f"route_{r['route']}"] += 1
            if r["label_status"]:
                counts[f"label_{r['label_status']}"] += 1
                counts["label_continuations"] += r["label_continuations"] or 0
        return counts
