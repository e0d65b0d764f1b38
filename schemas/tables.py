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

RETRIEVAL_QUERIES = TableSchema(
    name="retrieval_queries",
    version=1,
    schema=pa.schema(
        LINEAGE_FIELDS  # record_id = sha256(doc_id|generator|config_hash|sample)
        + [
            pa.field("doc_id", pa.string(), nullable=False),  # the corpus document the query was written for
            pa.field("task", pa.string(), nullable=False),  # scifact, arguana, ... (prefix table) or generic
            pa.field("prefix_id", pa.string(), nullable=False),  # the task name, or custom-<hash>
            pa.field("doc_prefix", pa.string()),
            pa.field("query_prefix", pa.string()),
            pa.field("example_ids", pa.list_(pa.string())),  # few-shot examples in the prompt ([] = zero-shot)
            pa.field("examples_dropped", pa.int32()),  # examples left out to fit the prompt budget
            pa.field("doc_truncated", pa.bool_()),  # the target document was cut to fit
            pa.field("sample", pa.int32(), nullable=False),  # 0..n-1 among the document's samples
            pa.field("raw_output", pa.string()),  # the model's text as generated (kept for audit)
            pa.field("query", pa.string()),  # null when no query could be parsed
            pa.field("copied_span", pa.int32()),  # longest run of words copied verbatim from the document
            pa.field("mean_logprob", pa.float64()),  # mean token log-probability of the output
            pa.field("prompt_tokens", pa.int32()),
            pa.field("completion_tokens", pa.int32()),
            pa.field("finish_reason", pa.string()),
            pa.field("filter_retriever", pa.string()),  # finetuned | dense | bm25 (null: not filtered)
            pa.field("filter_k", pa.int32()),
            pa.field("filter_rank", pa.int32()),  # rank of doc_id for the query over the whole corpus (1 = top)
            pa.field("filter_score", pa.float64()),  # the retriever's score of doc_id for the query
            pa.field("kept", pa.bool_()),  # null while the round-trip filter has not judged the row yet
            pa.field("drop_reason", pa.string()),  # null when kept; see tasks/generators/retrieval_queries/program.py DROP_REASONS
            pa.field("negatives", pa.list_(pa.string())),  # top retrieved doc ids other than doc_id (hard negatives)
        ]
    ),
)

COT_REWRITES = TableSchema(
    name="cot_rewrites",
    version=1,
    schema=pa.schema(
        LINEAGE_FIELDS  # record_id = sha256(source_id|generator|config_hash|attempt)
        + [
            pa.field("question", pa.string(), nullable=False),
            pa.field("gold_answer", pa.string(), nullable=False),  # as the source states it ("72", "\\frac{3}{4}")
            pa.field("source_type", pa.string(), nullable=False),  # none | informal | symbolic
            pa.field("route", pa.string(), nullable=False),  # expand | rewrite | unify
            pa.field("route_forced", pa.bool_(), nullable=False),  # set by --route or the route column
            pa.field("task_family", pa.string(), nullable=False),  # arithmetic | algebra | geometry | generic | ...
            pa.field("template_id", pa.string(), nullable=False),  # <family>@<templates version>
            pa.field("source_solution", pa.string()),  # null for answer-only items
            pa.field("attempt", pa.int32(), nullable=False),  # 0..n-1 among the item's rewrites
            pa.field("raw_output", pa.string()),  # the model's text after the pre-filled "Step 1:" (audit)
            pa.field("rewritten_text", pa.string()),  # "Step 1: ..." through the Final answer line
            pa.field("steps", pa.list_(pa.string())),  # step texts without their "Step k:" labels
            pa.field("extracted_answer", pa.string()),
            pa.field("answer_match", pa.bool_()),  # null when there was no readable answer
            pa.field("kept", pa.bool_(), nullable=False),
            pa.field("rejection_reason", pa.string()),  # null only when kept; see tasks/generators/cot_rewrites/verify.py REJECTION_REASONS
            pa.field("prompt_tokens", pa.int32()),
            pa.field("completion_tokens", pa.int32()),
            pa.field("finish_reason", pa.string()),
            # --step-labels (null without): Monte-Carlo success of the question alone and after each step
            # (null where the binary search did not probe), the first bad step (1-based), how it ended.
            pa.field("root_value", pa.float64()),
            pa.field("step_values", pa.list_(pa.float64())),
            pa.field("first_error_step", pa.int32()),
            pa.field("label_status", pa.string()),  # no_error | error_found | unsolved | no_steps
            pa.field("label_continuations", pa.int32()),  # continuations sampled for this rewrite
        ]
    ),
)

PREFERENCE_LABELS = TableSchema(
    name="preference_labels",
    version=1,
    schema=pa.schema(
        LINEAGE_FIELDS  # temperature/top_p/seed: critique sampling; max_tokens: critique budget
        + [
            pa.field("prompt_id", pa.string(), nullable=False),  # hash of the conversation: pairs share it
            pa.field("conversation", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
            pa.field("prompt", pa.string()),  # the last user message
            pa.field("response_a", pa.string(), nullable=False),
            pa.field("response_b", pa.string(), nullable=False),
            pa.field("policy_model", pa.string()),  # who wrote the candidates (null: they came with the input)
            pa.field("human_choice", pa.string()),  # a | b when the input says (hh-rlhf: its `chosen`)
            pa.field("reference", pa.string()),  # the annotator's own answer (null in direct mode)
            pa.field("judgments", pa.list_(pa.struct([  # one per order x sample
                ("order", pa.string()),  # ab: response_a shown as A; ba: response_b shown as A
                ("sample", pa.int32()),
                ("critique", pa.string()),
                ("critique_tokens", pa.int32()),
                ("critique_finish", pa.string()),
                ("logprob_first", pa.float64()),  # log P(" A") after the verdict prefill
                ("logprob_second", pa.float64()),  # log P(" B")
                ("choice_mass", pa.float64()),  # P(" A") + P(" B")
                ("p_first", pa.float64()),  # P(A better), normalised over the two choice tokens
                ("p_a", pa.float64()),  # the same, mapped back to response_a
                ("vote", pa.string()),  # a | b | tie | none
                ("verdict_source", pa.string()),  # probs | free_text | none
                ("verdict_text", pa.string()),  # the free-text verdict, when the fallback ran
            ]))),
            pa.field("votes_a", pa.int32()),
            pa.field("votes_b", pa.int32()),
            pa.field("votes_abstain", pa.int32()),
            pa.field("p_a", pa.float64()),  # mean P(a better) over the judgments
            pa.field("consistent", pa.bool_(), nullable=False),  # both orders' majorities agree
            pa.field("chosen", pa.string(), nullable=False),  # a | b | tie (response_a / response_b)
            pa.field("strength", pa.float64(), nullable=False),  # max(0, log-odds of the chosen); see README
            pa.field("principle", pa.string(), nullable=False),
            pa.field("mode", pa.string(), nullable=False),  # self-reference | direct
            pa.field("truncated", pa.bool_()),  # the judge saw a clipped conversation or response
            pa.field("engine_requests", pa.int32()),  # requests made for this pair (the reference on its prompt's first pair)
            pa.field("engine_calls_share", pa.float64()),  # this pair's requests + its prompt's reference requests / its pairs
            pa.field("prompt_tokens", pa.int64()),
            pa.field("completion_tokens", pa.int64()),
        ]
    ),
)

RUNS = TableSchema(
    name="runs",
    # 2: engine_choice and the engine's occupancy; 3: driver and heartbeat_at; 4: the endpoint's counts,
    # usage and cost (--engine openai). Older files read with the new columns null (the store reads every
    # file with this schema).
    version=4,
    schema=pa.schema(
        [
            pa.field("run_id", pa.string(), nullable=False),
            pa.field("flow", pa.string(), nullable=False),
            pa.field("status", pa.string(), nullable=False),  # running | completed | failed | interrupted
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
            pa.field("engine_choice", pa.string()),  # why this engine ("auto: vLLM 0.32.0 is installed and ...")
            pa.field("engine_requests", pa.int64()),  # requests the generators made to their engines
            pa.field("engine_mean_in_flight", pa.float64()),  # mean requests in flight per engine
            pa.field("engine_busy_fraction", pa.float64()),  # share of its wall time an engine had work
            pa.field("driver", pa.string()),  # host:pid:start of the process that ran it (tasks/runtime/lifecycle.py)
            pa.field("heartbeat_at", TIMESTAMP),  # refreshed while it runs: a stale one means the driver died
            # --engine openai only (null otherwise): what the endpoint did, summed over the engine actors
            pa.field("endpoint_http_requests", pa.int64()),  # HTTP requests sent, retries included
            pa.field("endpoint_retries", pa.int64()),
            pa.field("endpoint_throttled", pa.int64()),  # 429 answers
            pa.field("endpoint_server_errors", pa.int64()),  # 5xx answers
            pa.field("endpoint_timeouts", pa.int64()),  # timeouts and lost connections
            pa.field("endpoint_failed_requests", pa.int64()),  # failed after their retries: rows' request_failed
            pa.field("endpoint_max_in_flight", pa.int64()),  # each actor's peak of requests in flight, summed
            pa.field("usage_prompt_tokens", pa.int64()),  # from the responses' usage
            pa.field("usage_completion_tokens", pa.int64()),
            pa.field("price_in", pa.float64()),  # per million prompt tokens, as given (--price-in)
            pa.field("price_out", pa.float64()),  # per million completion tokens (--price-out)
            pa.field("cost", pa.float64()),  # usage x prices, in the prices' currency; null without a price
            pa.field("cost_per_kept_record", pa.float64()),  # cost / kept records (null when none was kept)
        ]
    ),
)

# The cleaning tables (tasks/clean/): one row per (checked record, check). They never rewrite a
# generator's files; `<table>_clean` views and the exports leave out the records they flag.
CLEAN_LINEAGE = [
    pa.field("record_id", pa.string(), nullable=False),  # the checked record (of `source_table`)
    pa.field("source_table", pa.string(), nullable=False),  # the table the record is in
    pa.field("check_id", pa.string(), nullable=False),  # hash of the table, method, settings (and eval set)
    pa.field("method", pa.string(), nullable=False),  # ngram | embedding (contamination); minhash (duplicates)
    pa.field("settings", pa.string(), nullable=False),  # JSON of every setting that shaped the check
    pa.field("run_id", pa.string(), nullable=False),  # the `datagen clean` run that wrote the row
    pa.field("created_at", TIMESTAMP, nullable=False),
]

CONTAMINATION = TableSchema(
    name="contamination",
    version=1,
    schema=pa.schema(
        CLEAN_LINEAGE
        + [
            pa.field("eval_file", pa.string(), nullable=False),  # the evaluation file checked against
            pa.field("eval_fingerprint", pa.string(), nullable=False),  # sha256 of its (id, text) items
            pa.field("contaminated", pa.bool_(), nullable=False),
            pa.field("eval_item_id", pa.string()),  # the best-matching eval item (null: clean)
            pa.field("eval_row", pa.int64()),  # its 1-based row in eval_file
            pa.field("field", pa.string()),  # the record's column where it matched
            pa.field("ngram_count", pa.int32()),  # distinct n-grams shared with that item (ngram)
            pa.field("item_ngrams", pa.int32()),  # n-grams the item has (1 for an item shorter than n)
            pa.field("similarity", pa.float64()),  # cosine similarity to that item (embedding)
            pa.field("items_matched", pa.int32()),  # eval items over the threshold
        ]
    ),
)

DUPLICATES = TableSchema(
    name="duplicates",
    version=1,
    schema=pa.schema(
        CLEAN_LINEAGE
        + [
            pa.field("cluster_id", pa.string(), nullable=False),  # the representative's record_id
            pa.field("representative", pa.bool_(), nullable=False),  # the one row of its cluster kept
            pa.field("match", pa.string()),  # exact | near (to the representative); null: the representative
            pa.field("exact_hash", pa.int64(), nullable=False),  # of the normalised text
            pa.field("bands", pa.list_(pa.int64()), nullable=False),  # MinHash LSH band hashes
        ]
    ),
)

TABLES: dict[str, TableSchema] = {t.name: t for t in (MATH_PROGRAMS, RETRIEVAL_QUERIES, COT_REWRITES, PREFERENCE_LABELS, RUNS,
                                                              CONTAMINATION, DUPLICATES)}
