"""The generator protocol: what one kind of training data needs to say, and nothing the runtime does.

A generator is a class. It declares its name, its table, its settings model and its drop reasons, and
implements three hooks; the runtime (tasks/runtime/pipeline.py) does everything else — load → plan
(skip what is committed) → the Ray stages → commit → count → summarize → artifact — the same way for
every generator, built-in or the user's own.

    class QuestionAnswers(Generator):
        name = "question-answers"                  # `datagen run question-answers`, the Prefect flow's name
        table = QA_TABLE                           # an explicit TableSchema: LINEAGE_FIELDS + its own columns
        Settings = QASettings                      # a RunSettings subclass: its options, declared once
        drop_reasons = ("no_answer", "wrong")      # the `dropped_<reason>` counters it can raise

        def load(self) -> Source:                  # source rows, each with a unique "source_id" (inputs.select_rows)
        def stages(self, pass_name) -> list:       # [LLMStage(program)] or [LLMStage(...), CPUStage(...)]
        def to_records(self, row, lineage):        # one finished row -> table rows (lineage included)
        def drop_reason(self, record):             # None = kept, else one of drop_reasons

Stages run in Ray workers. `LLMStage.program` is a per-row program, `async def program(row, engine)
-> row`: it awaits `engine.generate(conversation, params)` / `engine.score(conversation, continuations)`
as often as the row needs (sample, verify, ask again, judge both orders ...), and the engine actor runs
the programs of many rows at once, so each row goes at its own pace and the engine stays full. CPU-heavy
checks inside a program go off the event loop (`await asyncio.to_thread(...)`). `CPUStage.step(rows) ->
rows` runs in Ray tasks (work that should spread over the cluster's CPUs, e.g. the sandbox). Both are
pickled, so make them module-level functions (or functools.partial of one) and pass settings as
arguments. A program never writes files, starts actors or parses arguments.

Optional hooks: `passes()` (several rounds over the source, e.g. math-programs' fixed then dynamic
exemplars), `plan()` (what still needs doing; default: rows with no committed record under this
config), `config_hash()`, `row_counts()`, `record_counts()`, `tokens()`, `finish()` (a last step over
the committed table, e.g. retrieval-queries' round-trip filter).

Counters use one vocabulary for every generator: `dropped_<reason>` for each record (or input row)
left out with a reason — it stays in the table, or in the run's artifact for rejected input — and
plain names for everything else. The runs table keeps the first in `dropped_by_reason`, the rest in
`counts`. Every generator's input rows may also be dropped as `duplicate_id` (with --drop-duplicates)
or `input_too_long` (over --max-input-chars): `load()` reads through `inputs.select_rows`.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ClassVar, Sequence

from schemas.tables import TableSchema
from tasks.engines.base import EngineSpec

from .inputs import Source
from .settings import RunSettings

if TYPE_CHECKING:
    from schemas.store import TableStore


class Plan:
    """One pass's work: `rows` go through the stages (a row may group several source rows);
    `skipped` source rows were already committed; `counts` are added to the run's counts.

    A plan from `plan_todo` (tasks/runtime/planning.py) holds `staged` Parquet files instead of a
    list, and `extra`: fields every row gets when it enters the stages (the same exemplars for all
    rows, say), so they are not copied a million times into the files. `rows` reads them back (with
    `extra`) only when asked; the runtime streams the files to Ray instead."""

    def __init__(self, rows: list[dict] | None = None, skipped: int = 0, counts: dict | None = None,
                 staged=None, extra: dict | None = None):
        self._rows = rows if rows is not None or staged is not None else []
        self.staged, self.skipped, self.extra = staged, skipped, dict(extra or {})
        self.counts = dict(counts or {})

    @property
    def rows(self) -> list[dict]:
        if self._rows is None:
            from .planning import read_staged

            self._rows = [{**row, **self.extra} for batch in read_staged(self.staged.files) for row in batch]
        return self._rows

    def __len__(self) -> int:
        return len(self._rows) if self._rows is not None else self.staged.count


def plan_todo(source: Source, store: "TableStore", done: list[dict], key_column: str = "source_id",
              skip: list[dict] | None = None, extra: dict | None = None, counts: dict | None = None) -> Plan:
    """The source rows with no committed record matching any of `done` (column -> value dicts, e.g.
    {"config_hash": h, "pass": "fixed"}): a DuckDB anti-join of the staged source and the table's files.
    `skipped` counts the rows matching `skip` (default: `done`)."""
    from .planning import anti_join, count_matching

    files, folder = source.staged_files(), source.staging_folder()
    todo = anti_join(files, store, folder, done, key_column=key_column)
    if skip is None:
        skipped = len(source) - todo.count
    else:
        skipped = count_matching(files, store, folder, skip, key_column=key_column)
    return Plan(staged=todo, skipped=skipped, counts=counts, extra=extra)


@dataclass(frozen=True)
class LLMStage:
    """`async program(row, engine) -> row | None`: one source row's whole job (every turn it needs),
    run in an engine actor beside many other rows' programs; `engine` defaults to the run's engine."""

    program: Callable
    engine: EngineSpec | None = None


@dataclass(frozen=True)
class CPUStage:
    """`step(rows) -> rows`, run in Ray CPU tasks (sandbox runs, filters)."""

    step: Callable
    num_cpus: float = 0.5


@dataclass(frozen=True)
class Command:
    """A `datagen eval <name>` or `datagen export <name>` command a generator offers. `main` is
    "module:function" (imported only when the command runs); it takes the parsed arguments and
    returns the exit code. `add_arguments(parser)` declares its options."""

    name: str
    help: str
    add_arguments: Callable
    main: str


class Generator:
    name: ClassVar[str]
    table: ClassVar[TableSchema]
    Settings: ClassVar[type[RunSettings]]
    description: ClassVar[str] = ""  # one line: the CLI's help for `datagen run <name>`
    drop_reasons: ClassVar[tuple[str, ...]] = ()
    key_column: ClassVar[str] = "source_id"  # the table column holding a record's source row id
    prompt_version: ClassVar[str] = ""  # goes into the config hash: bump it when a template changes
    summary_sql: ClassVar[str | None] = None  # shown after a CLI run; {run_id} is filled in
    # numeric columns the data card charts, column -> title (tasks/runtime/report.py)
    card_columns: ClassVar[dict[str, str]] = {}
    evals: ClassVar[Sequence[Command]] = ()
    exports: ClassVar[Sequence[Command]] = ()

    def __init__(self, settings: RunSettings):
        if not isinstance(settings, self.Settings):
            settings = self.Settings.model_validate(settings)
        self.settings = settings
        self.engine_spec = settings.engine_spec()

    # ------------------------------------------------------------ required hooks

    def load(self) -> Source:
        raise NotImplementedError

    def stages(self, pass_name: str) -> list[LLMStage | CPUStage]:
        raise NotImplementedError

    def to_records(self, row: dict, lineage: dict) -> list[dict]:
        """Table rows of one finished row. `lineage`: run_id, model, engine, config_hash, created_at."""
        raise NotImplementedError

    def drop_reason(self, record: dict) -> str | None:
        """None when the record is kept, else why it is not (one of `drop_reasons`)."""
        return None

    # ------------------------------------------------------------ optional hooks

    def passes(self) -> Sequence[str]:
        return ("main",)

    def config_hash(self) -> str:
        """Hash of everything that shapes the records: model, generator, prompt version and the
        generator's own options (a rerun under the same hash skips what is committed)."""
        blob = json.dumps({"model": self.engine_spec.model_id, "generator": self.name,
                           "prompt": self.prompt_version, **self.settings.generator_options()},
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def plan(self, source: Source, store: TableStore, pass_name: str) -> Plan:
        """Default: the source rows with no committed record under this config hash."""
        return plan_todo(source, store, [{"config_hash": self.config_hash()}], key_column=self.key_column)

    def record_counts(self, record: dict) -> Counter:
        reason = self.drop_reason(record)
        return Counter({"kept" if reason is None else f"dropped_{reason}": 1})

    def row_counts(self, row: dict, records: list[dict]) -> Counter:
        """Extra counts for one finished row (e.g. problems solved)."""
        return Counter()

    def tokens(self, row: dict, records: list[dict]) -> int:
        """Tokens generated for one finished row."""
        return sum(r.get("completion_tokens") or 0 for r in records)

    def finish(self, source: Source, store: TableStore) -> Counter:
        """After every pass has committed: a last step over the table (runs in the driver)."""
        return Counter()
