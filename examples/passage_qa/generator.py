"""An example generator of your own: reading-comprehension question-answer pairs from passages, kept
only when a verifier accepts them (SQuAD-style synthetic QA). It is everything a generator needs —
a settings model, a table, a prompt file, a pure message builder and parser, a verifier, a per-row
program and records — in one file, run by the same runtime as the built-in generators:

    datagen run --generator examples/passage_qa/generator.py:PassageQA \
        --input examples/passage_qa/passages.jsonl --samples 2 --data-dir ./datasets
    datagen sql --data-dir ./datasets "SELECT coalesce(drop_reason, 'kept') AS outcome, count(*) FROM passage_qa GROUP BY 1"

The verifier: the answer must be a short span copied from the passage (extractive QA), the question
must end with a question mark and must not already contain its answer. Every sample is a row; a
rejected one keeps its `drop_reason`, so you can audit what the model wrote.

Example record (abridged): {"source_id": "p05", "question": "How high is Mount Fuji?",
  "answer": "3,776 metres", "kept": true, "drop_reason": null, "attempt": 0}
"""
from __future__ import annotations

import asyncio
import hashlib
import re
from functools import partial
from pathlib import Path
from typing import Iterator

import pyarrow as pa
from pydantic import Field

from schemas.tables import LINEAGE_FIELDS, TableSchema
from tasks.engines.base import Engine, SamplingParams
from tasks.runtime import (
    Generator, LLMStage, RunSettings, Source, column_id, column_text, pick_column, read_rows, select_rows,
)

# Read once here: the program travels to Ray workers (maybe on other nodes) with the text, not the path.
PROMPT = Path(__file__).with_name("prompt.txt").read_text()
PREFILL = "Question:"  # the assistant turn starts here, so the model answers in the format
DROP_REASONS = ("no_question", "no_answer", "answer_too_long", "answer_not_in_passage", "answer_in_question")

TABLE = TableSchema("passage_qa", 1, pa.schema(LINEAGE_FIELDS + [
    pa.field("passage", pa.string(), nullable=False),
    pa.field("attempt", pa.int32(), nullable=False),  # 0..n-1 among the passage's samples
    pa.field("raw_output", pa.string()),  # what the model wrote: the question turn, then "Answer:" and its answer
    pa.field("question", pa.string()),
    pa.field("answer", pa.string()),
    pa.field("kept", pa.bool_(), nullable=False),
    pa.field("drop_reason", pa.string()),  # null only when kept
    pa.field("prompt_tokens", pa.int32()),
    pa.field("completion_tokens", pa.int32()),
    pa.field("finish_reason", pa.string()),
]))


class PassageQASettings(RunSettings):
    input: str = Field(description="JSONL/Parquet of passages: text (or passage), optional title and id")
    samples: int = Field(2, ge=1, le=16, description="question-answer pairs sampled per passage")
    temperature: float = Field(0.7, ge=0, description="sampling temperature")
    max_tokens: int = Field(64, ge=16, description="token budget of one question and answer")
    max_answer_words: int = Field(8, ge=1, description="a longer answer is not a span: dropped")
    seed: int = 0


# ---------------------------------------------------------------- pure: prompt, parser, verifier


def build_messages(passage: str, question: str | None = None) -> list[dict]:
    """The question turn (pre-filled "Question:"), or with `question` the answer turn after it."""
    prefill = PREFILL if question is None else f"{PREFILL} {question}\nAnswer:"
    return [{"role": "user", "content": PROMPT.format(passage=passage)}, {"role": "assistant", "content": prefill}]


def parse_line(text: str | None) -> str | None:
    """The first line the model wrote, trimmed; None when it wrote nothing. Never raises."""
    line = next((line for line in (text or "").splitlines() if line.strip()), "")
    return line.strip().strip("\"'").strip() or None


def _words(text: str) -> str:
    """Lowercase words, punctuation inside them kept ("3,776", "don't"), around them dropped."""
    return " ".join(re.findall(r"\w+(?:[,.'-]\w+)*", text.lower()))


def verify(question: str | None, answer: str | None, passage: str, max_answer_words: int) -> str | None:
    """None when the pair is kept, else the drop reason."""
    if not question or not question.endswith("?"):
        return "no_question"
    if not answer:
        return "no_answer"
    if len(answer.split()) > max_answer_words:
        return "answer_too_long"
    span = _words(answer)
    if not span or f" {span} " not in f" {_words(passage)} ":
        return "answer_not_in_passage"
    if f" {span} " in f" {_words(question)} ":
        return "answer_in_question"
    return None


def passages(path: str) -> Iterator[dict]:
    """JSONL/Parquet rows of `text` (or `passage`), optional `title` and `id`, as source rows."""
    for row_number, row in read_rows(path):
        column = pick_column(path, row_number, row, ("text", "passage"))
        text = column_text(path, row_number, row, column)
        title = column_text(path, row_number, row, "title", required=False)
        source_id = column_id(path, row_number, row, ("id",)) or hashlib.sha1(row[column].encode()).hexdigest()[:16]
        yield {"source_id": source_id, "source_file": str(path), "source_row": row_number,
               "passage": f"{title}. {text}" if title else text}


# ---------------------------------------------------------------- the per-row program (runs in the Ray actor)


async def write_pairs(row: dict, engine: Engine, options: dict) -> dict:
    """One passage's job: n questions in one request, then each question's answer (greedy) as soon as
    that question is written. `options`: the settings as a dict (plain data pickles to any Ray worker)."""
    ask = SamplingParams(n=options["samples"], temperature=options["temperature"], max_tokens=options["max_tokens"],
                         seed=options["seed"], stop=("\n",))
    answer = SamplingParams(n=1, temperature=0.0, max_tokens=options["max_tokens"], stop=("\n",))

    async def sample(attempt: int, c) -> dict:
        question = parse_line(c.text)
        a = (await engine.generate(build_messages(row["passage"], question), answer))[0] if question else None
        text = parse_line(a.text).strip(" .") if a is not None and parse_line(a.text) else None
        return {
            "attempt": attempt, "raw_output": c.text + (f"\nAnswer:{a.text}" if a is not None else ""),
            "question": question, "answer": text,
            "drop_reason": verify(question, text, row["passage"], options["max_answer_words"]),
            "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens + (a.completion_tokens if a else 0),
            "finish_reason": (a or c).finish_reason,
        }

    questions = await engine.generate(build_messages(row["passage"]), ask)
    row["samples"] = list(await asyncio.gather(*(sample(i, c) for i, c in enumerate(questions))))
    return row


# ---------------------------------------------------------------- the generator


class PassageQA(Generator):
    name = "passage-qa"
    description = "reading-comprehension question-answer pairs, kept when the answer is a span of the passage"
    table = TABLE
    Settings = PassageQASettings
    drop_reasons = DROP_REASONS
    prompt_version = "passage-qa/v1"
    summary_sql = ("SELECT coalesce(drop_reason, 'kept') AS outcome, count(*) AS pairs, count(DISTINCT source_id) "
                   "AS passages FROM passage_qa WHERE run_id = '{run_id}' GROUP BY ALL ORDER BY pairs DESC")

    def load(self) -> Source:
        """The passages; a bad row is an InputError naming file and row, and the runtime's row checks
        (a repeated id, an over-long passage) apply as for every generator."""
        s = self.settings
        return select_rows(s.input, passages(s.input), s.limit, s.row_checks())

    def stages(self, pass_name: str) -> list:
        return [LLMStage(partial(write_pairs, options=self.settings.model_dump()))]

    def to_records(self, row: dict, lineage: dict) -> list[dict]:
        s = self.settings
        return [{
            "record_id": hashlib.sha256(f"{row['source_id']}|{self.name}|{lineage['config_hash']}|{x['attempt']}".encode())
            .hexdigest()[:32],
            "source_id": row["source_id"], "source_file": row["source_file"], "source_row": row["source_row"],
            "generator": self.name, "prompt_version": self.prompt_version, **lineage,
            "temperature": s.temperature, "top_p": 1.0, "max_tokens": s.max_tokens, "seed": s.seed,
            "passage": row["passage"], "kept": x["drop_reason"] is None, **x,
        } for x in row["samples"]]

    def drop_reason(self, record: dict) -> str | None:
        return record["drop_reason"]
