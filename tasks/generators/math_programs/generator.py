"""The math-programs generator: PAL-style programs per problem, run in the sandbox, one row per attempt.

Two passes over the problems. `fixed`: the hand-written exemplars (prompts/exemplars.jsonl), for every
problem with no fixed-pass records under this config. `dynamic` (unless --no-dynamic): the problems
still unsolved, prompted with the verified programs of their most similar solved problems (from any
run in the data dir; exemplars.py). Each pass is an LLMStage (each problem's per-row program writes its
k programs, program.write_programs) then a CPUStage (run and check them, program.execute_attempts). Every attempt is a row of
`math_programs`; one that did not verify keeps its `exec_status` (the drop reason).

Counts: `fixed_problems` / `fixed_solved`, `dynamic_problems` / `dynamic_solved`,
`dynamic_skipped_no_exemplars` (unsolved problems with nothing verified to learn from),
`verified_programs` (= `kept`), and `dropped_<status>` for wrong, error, timeout, no_program.

Run: `datagen run math-programs --input samples/math_word_problems.jsonl --limit 5 --data-dir ./datasets`
"""
from __future__ import annotations

from collections import Counter
from functools import partial
from typing import TYPE_CHECKING

import pyarrow.dataset as pads
from pydantic import Field

from schemas.tables import MATH_PROGRAMS
from tasks.runtime.generator import Command, CPUStage, Generator, LLMStage, Plan, Source, plan_todo
from tasks.runtime.planning import anti_join, count_matching, read_staged, stage_rows
from tasks.runtime.settings import RunSettings

from . import eval as mp_eval
from . import export as mp_export
from . import program as mp
from .exemplars import pick_exemplars, verified_pool

if TYPE_CHECKING:
    from schemas.store import TableStore

DROP_REASONS = tuple(s for s in mp.EXEC_STATUSES if s != "ok")  # wrong, error, timeout, no_program


class MathProgramsSettings(RunSettings, mp.MathProgramsConfig):
    input: str = Field(description="JSONL/Parquet of problems: question, answer (GSM8K '#### N' or a number), "
                                   "optional id")
    dynamic: bool = Field(True, description="run the dynamic-exemplar pass on unsolved problems")

    def config(self) -> mp.MathProgramsConfig:
        """The options the steps need, without the run's (what travels to the Ray workers)."""
        return mp.MathProgramsConfig(**self.model_dump(include=set(mp.MathProgramsConfig.model_fields)))


class MathPrograms(Generator):
    name = "math-programs"
    description = "PAL-style programs, executed and verified against gold answers"
    table = MATH_PROGRAMS
    Settings = MathProgramsSettings
    drop_reasons = DROP_REASONS
    prompt_version = mp.PROMPT_VERSION
    card_columns = {  # charted on the data card
        "mean_logprob": "mean token log-probability of the program",
        "exec_seconds": "sandbox seconds per program",
    }
    summary_sql = (
        "SELECT pass, exec_status, count(*) AS attempts, count(DISTINCT source_id) AS problems "
        "FROM math_programs WHERE run_id = '{run_id}' GROUP BY ALL ORDER BY pass DESC, exec_status"
    )
    evals = (
        Command("math-programs", "solve rate (pass@k), greedy and majority-vote accuracy per run and pass",
                mp_eval.add_arguments, "tasks.generators.math_programs.eval:main"),
    )
    exports = (
        Command("math-programs", "verified programs as SFT chat messages (question -> program)",
                mp_export.add_arguments, "tasks.generators.math_programs.export:main"),
    )

    def __init__(self, settings):
        super().__init__(settings)
        self.config = self.settings.config()

    def config_hash(self) -> str:
        return self.config.config_hash(self.engine_spec.model_id)

    def load(self) -> Source:
        return mp.load_problems(self.settings.input, self.settings.limit, self.settings.row_checks())

    def passes(self) -> tuple[str, ...]:
        return ("fixed", "dynamic") if self.settings.dynamic else ("fixed",)

    def plan(self, source: Source, store: TableStore, pass_name: str) -> Plan:
        return self._plan_fixed(source, store) if pass_name == "fixed" else self._plan_dynamic(source, store)

    def _plan_fixed(self, source: Source, store: TableStore) -> Plan:
        """Problems with no committed fixed-pass records yet, with the fixed exemplars attached."""
        exemplars = list(mp.fixed_exemplars()[: self.config.exemplars])
        # a rerun with nothing to do still reports these, as 0
        zeros = {"fixed_problems": 0, "fixed_solved": 0, "verified_programs": 0}
        return plan_todo(source, store, [{"config_hash": self.config_hash(), "pass": "fixed"}],
                         extra={"pass": "fixed", "exemplars": exemplars}, counts=zeros)

    def _plan_dynamic(self, source: Source, store: TableStore) -> Plan:
        """Problems still unsolved after the fixed pass and without dynamic records, each with the
        top-k most similar verified problems as exemplars. Unsolved problems are skipped (and counted)
        when nothing in the data dir is verified yet."""
        config_hash = self.config_hash()
        dynamic_done = {"config_hash": config_hash, "pass": "dynamic"}
        files, folder = source.staged_files(), source.staging_folder()
        unsolved = anti_join(files, store, folder, [{"config_hash": config_hash, "correct": True}, dynamic_done])
        counts = {"dynamic_problems": 0, "dynamic_solved": 0, "dynamic_skipped_no_exemplars": 0}
        skipped = count_matching(files, store, folder, [dynamic_done])
        if not unsolved.count:
            return Plan([], skipped=skipped, counts=counts)
        verified = store.read(columns=["source_id", "question", "program", "pass", "attempt"],
                              filter=pads.field("correct"))
        pool = verified_pool(verified.to_pylist())
        if not pool:
            return Plan([], skipped=skipped, counts={**counts, "dynamic_skipped_no_exemplars": unsolved.count})

        def with_exemplars():  # a chunk of unsolved problems at a time, never all of them
            for problems in read_staged(unsolved.files):
                chosen = pick_exemplars([p["question"] for p in problems], pool, self.config.exemplars)
                yield from ({**p, "exemplars": exemplars} for p, exemplars in zip(problems, chosen))

        todo = stage_rows(with_exemplars(), folder, name="dynamic")
        return Plan(staged=todo, skipped=skipped, counts=counts, extra={"pass": "dynamic"})

    def stages(self, pass_name: str) -> list:
        # the engine writes k programs per problem; Ray CPU tasks run them in the sandbox and check them
        return [LLMStage(partial(mp.write_programs, config=self.config)),
                CPUStage(partial(mp.execute_attempts, config=self.config))]

    def to_records(self, row: dict, lineage: dict) -> list[dict]:
        return mp.to_records(row, {**lineage, "max_tokens": self.config.max_tokens})

    def drop_reason(self, record: dict) -> str | None:
        return None if record["exec_status"] == "ok" else record["exec_status"]

    def record_counts(self, record: dict) -> Counter:
        counts = super().record_counts(record)
        counts["verified_programs"] += int(record["exec_status"] == "ok")
        return counts

    def row_counts(self, row: dict, records: list[dict]) -> Counter:
        return Counter({f"{row['pass']}_problems": 1,
                        f"{row['pass']}_solved": int(any(a["correct"] for a in row["attempts"]))})
