"""Few-shot retrieval queries (Promptagator, Dai et al. 2022): the generator's pure logic.

For every document of a corpus the model reads k <= 8 task examples written as
`<doc prefix> document` / `<query prefix> query` pairs, then the target document and the query
prefix, and writes n queries (default 8, temperature 0.7). No instruction text. Outputs that are
empty, hold no query, repeat another query of the same document or copy a long span of it are
dropped with a reason; the rest go to the round-trip filter (filter.py, run by the generator's finish).

Prompt text is data: prompts/task_prefixes.json (the prefixes per BEIR task) and prompts/zero_shot.txt
(the one-line request of the paper's zero-shot form).

Pure parts (no I/O): `RetrievalQueriesConfig`, `resolve_prefixes`, `render_prompt`, `build_messages`,
`parse_query`, `apply_drop_rules`, `record_id`, `to_records`. Loading: `load_corpus`, `load_examples`.
The per-row program: `await write_queries(doc, engine, config)` (in the engine actor, many docs at once).

Example record (abridged):
    {"doc_id": "4983", "task": "scifact", "prefix_id": "scifact", "sample": 3,
     "query": "Diffusion tensor MRI shows white matter maturation in newborns.",
     "mean_logprob": -1.42, "filter_retriever": "finetuned", "filter_rank": 1, "kept": true,
     "drop_reason": null, "negatives": ["7912", "1281"]}
Run: `datagen run retrieval-queries --corpus data/scifact/corpus.jsonl --task scifact --limit 20`
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Iterator, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tasks.engines.base import Engine, SamplingParams
from tasks.runtime.inputs import (
    InputError, RowChecks, Source, column_id, column_text, content_id, pick_column, read_rows, select_rows,
)

from .filter import RETRIEVERS

GENERATOR = "retrieval_queries"  # the records' `generator` column (and part of their record_id)
PROMPT_VERSION = "retrieval-queries/v1"
MAX_EXAMPLES = 8  # the paper's few-shot setting: at most 8 examples per task
STOP = ("\n",)  # a query is one line
PENDING = "pending_filter"  # drop_reason of a parsed query the round-trip filter has not judged yet
# Reasons a sample is dropped, in the order the rules are applied; then the filter's own.
# request_failed: the endpoint gave no answer after its retries (--engine openai; finish_reason says so)
DROP_REASONS = ("empty_output", "no_query", "too_long", "duplicate", "copied_span", "round_trip", "request_failed")

PROMPTS = Path(__file__).parent / "prompts"
# (doc prefix, query prefix) per BEIR task. SciFact, ArguAna and FEVER are the paper's (Table 4); the
# others follow the same idea (name what the document is and what the query is) and are datagen's
# choice, not quotations: each entry's "source" says which. `--doc-prefix` / `--query-prefix` override.
TASK_PREFIXES: dict[str, tuple[str, str]] = {
    task: (entry["doc"], entry["query"])
    for task, entry in json.loads((PROMPTS / "task_prefixes.json").read_text()).items()
}
TASKS = tuple(sorted(TASK_PREFIXES))  # the `--task` choices
# The paper's zero-shot form: the document, then this one-line request (no examples).
ZERO_SHOT_REQUEST = (PROMPTS / "zero_shot.txt").read_text().strip()


@dataclass(frozen=True)
class Prefixes:
    prefix_id: str  # the task name, or "custom-<hash>" when a prefix was given by hand
    doc: str
    query: str


def resolve_prefixes(task: str, doc_prefix: str | None = None, query_prefix: str | None = None) -> Prefixes:
    """The task's prefixes from TASK_PREFIXES, with any custom override (then the id says so)."""
    if task not in TASK_PREFIXES and (doc_prefix is None or query_prefix is None):
        raise ValueError(f"unknown task {task!r}: pick one of {sorted(TASK_PREFIXES)} "
                         "or give both --doc-prefix and --query-prefix")
    base_doc, base_query = TASK_PREFIXES.get(task, ("", ""))
    doc = base_doc if doc_prefix is None else doc_prefix.strip()
    query = base_query if query_prefix is None else query_prefix.strip()
    if not query:
        raise ValueError("the query prefix must not be empty (the model continues it)")
    if (doc, query) == TASK_PREFIXES.get(task):
        return Prefixes(task, doc, query)
    digest = hashlib.sha256(json.dumps([doc, query]).encode()).hexdigest()[:8]
    return Prefixes(f"custom-{digest}", doc, query)


class RetrievalQueriesConfig(BaseModel):
    """The options that shape the records (all of them go into the config hash). The run's settings
    (generator.py) add the inputs and the run options to these; unit tests build this alone."""

    model_config = ConfigDict(extra="forbid")

    # Declared before `task`: its check reads them (a task outside the table needs both).
    doc_prefix: str | None = Field(None, description="custom document prefix (overrides the task's)")
    query_prefix: str | None = Field(None, description="custom query prefix (overrides the task's)")
    task: Literal[TASKS] = Field(
        "scifact", description="BEIR task whose prefixes to use (prompts/task_prefixes.json)")
    samples: int = Field(8, ge=1, le=64, description="queries sampled per document")  # 8: the paper's n
    temperature: float = Field(0.7, ge=0, description="sampling temperature")  # the paper's
    # A query is a line; one that runs to 64 tokens is rambling ("too_long").
    max_tokens: int = Field(64, ge=8, description="token budget of one query; a longer one is dropped as too_long")
    seed: int = Field(0, description="sampling seed (each prompt's seed derives from it)")
    # Prompt budget in tokens (the model's own tokenizer): 1536 + 64 new tokens + the chat template
    # fit SmolLM2's 2048 context with room to spare. Over budget, examples are dropped (the first
    # ones first), and only with no example left is the target document cut.
    max_prompt_tokens: int = Field(1536, ge=64, description="prompt budget: examples are dropped first, then the document is cut")
    # Each example document is cut to this many tokens: 8 full SciFact abstracts (~350 tokens each)
    # would not fit the budget beside the target, and the query is written from the start of the text.
    example_doc_tokens: int = Field(128, ge=8, description="each example document is cut to this many tokens")
    # A query sharing this many consecutive words with its document is a copy, not a query.
    copy_span_words: int = Field(10, ge=3, description="drop a query that copies this many consecutive document words")
    # Round-trip filter (filter.py). The flag keeps its old name, --filter.
    filter_retriever: Literal[RETRIEVERS] = Field(
        "finetuned", json_schema_extra={"cli": ["--filter"]},
        description="round-trip retriever (finetuned: MiniLM fine-tuned on all pairs, the paper's recipe)")
    filter_k: int = Field(1, ge=1, description="keep a pair when its document ranks in the top K")  # the paper: K = 1
    negatives: int = Field(4, ge=0, description="hard negatives stored per filtered query")
    finetune_epochs: int = Field(1, ge=1, description="fine-tuning epochs of the finetuned filter")
    finetune_batch_size: int = Field(32, ge=2, description="fine-tuning batch size (in-batch negatives)")
    # Fixed, not options; still part of the config hash (as they always were).
    top_p: ClassVar[float] = 1.0
    finetune_lr: ClassVar[float] = 3e-5
    finetune_max_seq_length: ClassVar[int] = 256

    @field_validator("task", mode="wrap")
    @classmethod
    def _task_in_table_or_custom(cls, value, handler, info):
        """A task of the table; or, from Python or a recipe, any name when both prefixes are given
        (as `resolve_prefixes` allows: its prefix_id is then custom-<hash>)."""
        try:
            return handler(value)
        except ValidationError:
            data = info.data
            if isinstance(value, str) and data.get("doc_prefix") is not None and data.get("query_prefix") is not None:
                return value
            raise ValueError(f"unknown task {value!r}: pick one of {list(TASKS)} "
                             "or give both --doc-prefix and --query-prefix") from None

    @model_validator(mode="after")
    def _prefixes_resolve(self):
        resolve_prefixes(self.task, self.doc_prefix, self.query_prefix)  # e.g. an empty query prefix
        return self

    @property
    def prefixes(self) -> Prefixes:
        return resolve_prefixes(self.task, self.doc_prefix, self.query_prefix)

    def sampling(self) -> SamplingParams:
        return SamplingParams(n=self.samples, temperature=self.temperature, top_p=self.top_p,
                              max_tokens=self.max_tokens, stop=STOP, seed=self.seed, logprobs=True)

    def filter_options(self) -> dict:
        """The fine-tuning options of the `finetuned` filter (filter.make_scorer's keywords)."""
        return dict(epochs=self.finetune_epochs, batch_size=self.finetune_batch_size, lr=self.finetune_lr,
                    max_seq_length=self.finetune_max_seq_length, seed=self.seed)

    def config_hash(self, model_id: str, example_ids: Sequence[str]) -> str:
        """Hash of everything that shapes the records: model, prompt, examples, sampling, filter.
        The same dict as ever (the fields of the former config dataclass, prefixes resolved), so
        existing data dirs and record ids stay valid."""
        shaping = {name: getattr(self, name) for name in HASHED_OPTIONS}
        shaping.update(doc_prefix=self.prefixes.doc, query_prefix=self.prefixes.query)
        blob = json.dumps({"model": model_id, "prompt": PROMPT_VERSION, "examples": list(example_ids), **shaping},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# The option names the config hash has always covered: a new option changes every hash, so it is
# added here only on purpose.
HASHED_OPTIONS = ("task", "doc_prefix", "query_prefix", "samples", "temperature", "top_p", "max_tokens", "seed",
                  "max_prompt_tokens", "example_doc_tokens", "copy_span_words", "filter_retriever", "filter_k",
                  "negatives", "finetune_epochs", "finetune_batch_size", "finetune_lr", "finetune_max_seq_length")


# ---------------------------------------------------------------- inputs

ID_COLUMNS = ("_id", "id", "doc_id", "docid")
TEXT_COLUMNS = ("text", "document", "passage", "contents", "body")


def clean_text(text) -> str:
    """One line of text: the prompt is line-structured, so newlines and runs of spaces become one space."""
    return " ".join(str(text or "").split())


def load_corpus(path: str | Path, id_column: str | None = None, text_column: str | None = None,
                title_column: str | None = "title", checks: RowChecks = RowChecks()) -> Source:
    """Documents from BEIR JSONL (`_id`, `title`, `text`) or Parquet/JSONL with named columns.

    A document's text is "title. text" when it has a title. Bad rows (no id, no text, text that is
    not a string) raise InputError naming the file and row; a repeated id and an over-long document
    follow `checks` (tasks/runtime/inputs.py: an error, or a counted reject)."""
    return select_rows(path, _documents(path, id_column, text_column, title_column), checks=checks)


def _documents(path: str | Path, id_column: str | None, text_column: str | None,
               title_column: str | None) -> Iterator[dict]:
    for row_number, row in read_rows(path):
        id_col = id_column or pick_column(path, row_number, row, ID_COLUMNS)
        text_col = text_column or pick_column(path, row_number, row, TEXT_COLUMNS)
        for col in (id_col, text_col):
            if col not in row:
                raise InputError(path, row_number, f"missing column {col!r}, row has {sorted(row)}")
        doc_id = column_id(path, row_number, row, (id_col,))
        if doc_id is None:
            raise InputError(path, row_number, f"column {id_col!r} is empty")
        title = clean_text(column_text(path, row_number, row, title_column, required=False)) if title_column else ""
        body = clean_text(column_text(path, row_number, row, text_col, required=False))
        if not body and not title:
            raise InputError(path, row_number, f"document {doc_id!r} has no text")
        text = f"{title.rstrip('.')}. {body}" if title and body else (body or title)
        yield {"source_id": doc_id, "source_file": str(path), "source_row": row_number, "text": text}


def load_examples(path: str | Path, corpus: Sequence[dict]) -> list[dict]:
    """Few-shot examples: JSONL/Parquet rows of `query` and either `doc_id` (looked up in the corpus)
    or `document`. At most 8, each id once (an example's id is part of the config hash). Returns
    [{"id", "document", "query"}]."""
    by_id = {d["source_id"]: d["text"] for d in corpus}
    examples, first_row = [], {}
    for row_number, row in read_rows(path):
        query = clean_text(column_text(path, row_number, row, "query"))
        doc_id = column_id(path, row_number, row, ("doc_id",))
        document = clean_text(column_text(path, row_number, row, "document", required=False))
        if doc_id is not None:
            if doc_id not in by_id:
                raise InputError(path, row_number, f"doc_id {doc_id!r} is not in the corpus")
            example = {"id": doc_id, "document": by_id[doc_id], "query": query}
        elif document:
            example = {"id": column_id(path, row_number, row, ("id",)) or content_id("ex", document),
                       "document": document, "query": query}
        else:
            raise InputError(path, row_number, "each example needs 'doc_id' (a corpus id) or 'document'")
        if example["id"] in first_row:
            raise InputError(path, row_number, f"example {example['id']!r} repeats row {first_row[example['id']]}")
        first_row[example["id"]] = row_number
        examples.append(example)
        if len(examples) > MAX_EXAMPLES:
            raise InputError(path, row_number, f"at most {MAX_EXAMPLES} examples (the paper's few-shot setting)")
    return examples


# ---------------------------------------------------------------- prompt (pure)

TokenCounter = Callable[[str], int]


def approx_tokens(text: str) -> int:
    """Token estimate when no tokenizer is at hand (unit tests): ~1.3 tokens per English word."""
    return (len(text.split()) * 4 + 2) // 3


def cut_to_tokens(text: str, limit: int, count: TokenCounter) -> str:
    """The longest word prefix of `text` that is at most `limit` tokens (binary search on words)."""
    if count(text) <= limit:
        return text
    words = text.split()
    lo, hi = 0, len(words)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(" ".join(words[:mid])) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])


def _line(prefix: str, text: str) -> str:
    return f"{prefix} {text}" if prefix else text


def _assemble(examples: Sequence[dict], document: str, prefixes: Prefixes) -> str:
    blocks = [f"{_line(prefixes.doc, ex['document'])}\n{_line(prefixes.query, ex['query'])}" for ex in examples]
    if examples:
        blocks.append(f"{_line(prefixes.doc, document)}\n{prefixes.query}")
    else:
        blocks.append(f"{_line(prefixes.doc, document)}\n{ZERO_SHOT_REQUEST}\n{prefixes.query}")
    return "\n\n".join(blocks)


def render_prompt(document: str, examples: Sequence[dict], config: RetrievalQueriesConfig,
                  count: TokenCounter = approx_tokens) -> dict:
    """The prompt text for one document, within the token budget.

    Returns {"prompt", "example_ids" (the examples actually used), "examples_dropped", "doc_truncated"}.
    """
    prefixes = config.prefixes
    shots = [{**ex, "document": cut_to_tokens(ex["document"], config.example_doc_tokens, count)} for ex in examples]
    dropped = 0
    while shots and count(_assemble(shots, document, prefixes)) > config.max_prompt_tokens:
        shots.pop(0)  # examples go before the target document is cut; the nearest ones stay
        dropped += 1
    doc = document
    if not shots and count(_assemble(shots, doc, prefixes)) > config.max_prompt_tokens:
        frame = count(_assemble(shots, "", prefixes))
        doc = cut_to_tokens(document, max(1, config.max_prompt_tokens - frame), count)
    return {"prompt": _assemble(shots, doc, prefixes), "example_ids": [ex["id"] for ex in shots],
            "examples_dropped": dropped, "doc_truncated": doc != document}


def build_messages(prompt: str) -> list[dict]:
    """The prompt as text to continue: one assistant turn the engine carries on (prefill), so the
    chat model sees no instruction, as in the paper's plain language-model prompt."""
    return [{"role": "assistant", "content": prompt}]


# ---------------------------------------------------------------- parser and drop rules (pure)

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_QUOTES = "\"'“”‘’`"


def parse_query(text: str | None, prefixes: Prefixes, finish_reason: str = "stop") -> dict:
    """One sample's query. Never raises: {"query": str | None, "drop_reason": str | None}."""
    if finish_reason == "request_failed":
        return {"query": None, "drop_reason": "request_failed"}
    if text is None or not text.strip():
        return {"query": None, "drop_reason": "empty_output"}
    line = next(ln for ln in text.splitlines() if ln.strip()).strip()
    for prefix in (prefixes.query,):  # the model sometimes repeats the prefix it was given
        if prefix and line.lower().startswith(prefix.lower()):
            line = line[len(prefix):].strip()
    line = line.strip(_QUOTES).strip()
    if prefixes.doc and line.lower().startswith(prefixes.doc.lower()):
        return {"query": None, "drop_reason": "no_query"}  # it began a new document, not a query
    if not any(len(w) >= 2 and any(c.isalpha() for c in w) for w in _WORD.findall(line)):
        return {"query": None, "drop_reason": "no_query"}  # noise: punctuation, numbers, one letter
    if finish_reason == "length":
        return {"query": line, "drop_reason": "too_long"}  # never ended its line within max_tokens
    return {"query": line, "drop_reason": None}


def normalize(text: str) -> str:
    return " ".join(w.lower() for w in _WORD.findall(text))


def longest_copied_span(query: str, document: str) -> int:
    """Length in words of the longest run of consecutive query words found verbatim in the document."""
    q, d = normalize(query).split(), normalize(document).split()
    if not q or not d:
        return 0
    best, prev = 0, [0] * (len(d) + 1)
    for qw in q:  # longest common substring over words, O(|q|·|d|)
        cur = [0] * (len(d) + 1)
        for j, dw in enumerate(d, start=1):
            if qw == dw:
                cur[j] = prev[j - 1] + 1
                best = max(best, cur[j])
        prev = cur
    return best


def apply_drop_rules(samples: Sequence[dict], document: str, config: RetrievalQueriesConfig) -> list[dict]:
    """Parse every sample of one document; drop duplicates and copies. Each sample gets `query`,
    `drop_reason` (None: goes on to the filter) and `copied_span` (words)."""
    prefixes, seen, out = config.prefixes, set(), []
    for s in samples:
        parsed = parse_query(s.get("raw_output"), prefixes, s.get("finish_reason") or "stop")
        span = longest_copied_span(parsed["query"], document) if parsed["query"] else 0
        if parsed["drop_reason"] is None:
            key = normalize(parsed["query"])
            if key in seen:
                parsed["drop_reason"] = "duplicate"
            elif span >= config.copy_span_words:
                parsed["drop_reason"] = "copied_span"
            seen.add(key)
        out.append({**s, **parsed, "copied_span": span})
    return out


# ---------------------------------------------------------------- the per-row program


def token_counter(engine) -> TokenCounter:
    """Count with the engine's own tokenizer when it has one (transformers, vLLM), else estimate."""
    tokenizer = getattr(engine, "tokenizer", None)
    if tokenizer is None:
        return approx_tokens
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


async def write_queries(doc: dict, engine: Engine, config: RetrievalQueriesConfig) -> dict:
    """The per-row program (runs in the engine actor beside many others): the doc (with its `examples`)
    gets `samples`, parsed and judged by the drop rules (the round-trip filter comes later, over the
    whole corpus). One request of n samples."""
    doc.update(render_prompt(doc["text"], doc["examples"], config, token_counter(engine)))
    params = config.sampling()  # the engines derive each prompt's seed from (seed, prompt)
    group = await engine.generate(build_messages(doc["prompt"]), params)
    raw = []
    for index, completion in enumerate(group):
        logprobs = completion.token_logprobs or []
        raw.append({"sample": index, "raw_output": completion.text, "finish_reason": completion.finish_reason,
                    "prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens,
                    "mean_logprob": (sum(logprobs) / len(logprobs)) if logprobs else None})
    doc["samples"] = apply_drop_rules(raw, doc["text"], config)
    doc["seed"] = params.seed
    return doc


# ---------------------------------------------------------------- records


def record_id(doc_id: str, config_hash: str, sample: int) -> str:
    key = f"{doc_id}|{GENERATOR}|{config_hash}|{sample}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def to_records(doc: dict, lineage: dict, config: RetrievalQueriesConfig) -> list[dict]:
    """One row per sample. Parsed queries wait for the filter: kept NULL, drop_reason 'pending_filter'.
    `lineage`: run_id, model, engine, config_hash, created_at."""
    prefixes = config.prefixes
    rows = []
    for s in doc["samples"]:
        rows.append({
            "record_id": record_id(doc["source_id"], lineage["config_hash"], s["sample"]),
            "source_id": doc["source_id"], "source_file": doc["source_file"], "source_row": doc["source_row"],
            "generator": GENERATOR, "prompt_version": PROMPT_VERSION, **lineage,
            "temperature": config.temperature, "top_p": config.top_p, "max_tokens": config.max_tokens,
            "seed": doc.get("seed", config.seed),
            "doc_id": doc["source_id"], "task": config.task, "prefix_id": prefixes.prefix_id,
            "doc_prefix": prefixes.doc, "query_prefix": prefixes.query,
            "example_ids": doc["example_ids"], "examples_dropped": doc["examples_dropped"],
            "doc_truncated": doc["doc_truncated"], "sample": s["sample"],
            "raw_output": s["raw_output"], "query": s["query"], "copied_span": s["copied_span"],
            "mean_logprob": s["mean_logprob"], "prompt_tokens": s["prompt_tokens"],
            "completion_tokens": s["completion_tokens"], "finish_reason": s["finish_reason"],
            "filter_retriever": None, "filter_k": None, "filter_rank": None, "filter_score": None,
            "kept": False if s["drop_reason"] else None,
            "drop_reason": s["drop_reason"] or PENDING,
            "negatives": None,
        })
    return rows

