"""Explicit Arrow schemas of every datagen table. Writers always pass these; nothing is inferred.

Each table is a folder of Parquet files under the data dir, one sub-folder per run
(`<data_dir>/<table>/run_id=<run_id>/part-....parquet`). Every generated row starts with the same
lineage columns, so any row can be traced to its source row, run, model, prompt and sampling.

Example (one `math_programs` row, abridged):
    {"record_id": "5c1f...", "source_id": "gsm8k-3f2a...", "run_id": "20261127-231501-ab12",
     "generator": "math_programs", "model": "SmolLM2-135M-Instruct", "prompt_version": "math-programs/v1",
     "pass": "fixed", "attempt": 0, "program": "def solution(): ...", "exec_status": "ok", "correct": true}

Bump a table's `version` when its columns change; the version is stored in each file's metadata.
"""
from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

TIMESTAMP = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class TableSchema:
    name: str
    version: int
    schema: pa.Schema

    @property
    def arrow(self) -> pa.Schema:
        """The schema with its name and version in the Parquet metadata."""
        return self.schema.with_metadata(
            {b"datagen.table": self.name.encode(), b"datagen.schema_version": str(self.version).encode()}
        )


LINEAGE_FIELDS = [
    pa.field("record_id", pa.string(), nullable=False),  # sha256(source_id|generator|config_hash|pass|attempt)
    pa.field("source_id", pa.string(), nullable=False),
    pa.field("source_file", pa.string()),
    pa.field("source_row", pa.int64()),  # 1-based line (JSONL) or row index (Parquet) in source_file
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("generator", pa.string(), nullable=False),
    pa.field("model", pa.string(), nullable=False),
    pa.field("engine", pa.string(), nullable=False),
    pa.field("prompt_version", pa.string(), nullable=False),
    pa.field("config_hash", pa.string(), nullable=False),  # hash of every setting that shapes the output
    pa.field("temperature", pa.float64()),
    pa.field("top_p", pa.float64()),
    pa.field("max_tokens", pa.int32()),
    pa.field("seed", pa.int64()),
    pa.field("created_at", TIMESTAMP, nullable=False),
]

MATH_PROGRAMS = TableSchema(
    name="math_programs",
    version=1,
    schema=pa.schema(
        LINEAGE_FIELDS
        + [
            pa.field("question", pa.string(), nullable=False),
            pa.field("gold_answer", pa.float64(), nullable=False),
            pa.field("pass", pa.string(), nullable=False),  # fixed | dynamic
            pa.field("attempt", pa.int32(), nullable=False),  # 0 = greedy, 1.. = sampled
            pa.field("exemplar_ids", pa.list_(pa.string())),  # ids of the few-shot exemplars in the prompt
            pa.field("raw_output", pa.string()),  # the model's text as generated (kept for audit)
            pa.field("program", pa.string()),  # null when no program could be parsed
            pa.field("parse_error", pa.string()),
            pa.field("exec_status", pa.string(), nullable=False),  # ok | error | timeout | wrong | no_program
            pa.field("exec_result", pa.string()),  # repr of the returned value
            pa.field("exec_value", pa.float64()),
            pa.field("exec_error", pa.string()),
            pa.field("exec_seconds", pa.float64()),
            pa.field("correct", pa.bool_(), nullable=False),
            pa.field("prompt_tokens", pa.int32()),
            pa.field("completion_tokens", pa.int32()),
            pa.field("finish_reason", pa.string()),
            pa.field("mean_logprob", pa.float64()),  # mean log-probability of the generated tokens
        ]
    ),
)

RUNS = TableSchema(
    name="runs",
    version=1,
    schema=pa.schema(
        [
            pa.field("run_id", pa.string(), nullable=False),
            pa.field("flow", pa.string(), nullable=False),
            pa.field("status", pa.string(), nullable=False),  # running | completed | failed
            pa.field("parameters", pa.string()),  # JSON of the flow's settings
            pa.field("model", pa.string()),
            pa.field("engine", pa.string()),
            pa.field("prefect_flow_run_id", pa.string()),
            pa.field("started_at", TIMESTAMP, nullable=False),
            pa.field("ended_at", TIMESTAMP),
            pa.field("wall_seconds", pa.float64()),
            pa.field("rows_in", pa.int64()),  # source rows read (after --limit)
            pa.field("rows_skipped", pa.int64()),  # source rows whose records were already committed
            pa.field("rows_out", pa.int64()),  # records written by this run
            pa.field("dropped_by_reason", pa.map_(pa.string(), pa.int64())),
            pa.field("counts", pa.map_(pa.string(), pa.int64())),  # generator-specific tallies
            pa.field("tokens_generated", pa.int64()),
            pa.field("error", pa.string()),
        ]
    ),
)

TABLES: dict[str, TableSchema] = {t.name: t for t in (MATH_PROGRAMS, RUNS)}
