"""Proves the retrieval-queries generator's pure logic: the exact Promptagator prompt (messages) for a
2-example SciFact task and its zero-shot form, both read from the prompt files; the prefix table and
custom prefixes; the options model (task choices, custom tasks, bad values); the config hash pinned
to the values the code before the generator folder gave (existing data dirs stay valid); the token
budget (examples dropped before the target document is cut), the parser and drop rules over noise,
empty output, an echoed document and repeated queries, clear input errors naming file and row, and
records (stable ids, pending filter state) from a scripted engine."""
from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone

import pytest

from tasks.engines.base import EngineSpec
from tasks.engines.fake import FakeEngine
from tasks.generators.retrieval_queries import program as rq
from tasks.runtime.inputs import InputError

EXAMPLES = [
    {"id": "d1", "document": "Vitamin D levels were measured in 300 adults.", "query": "Vitamin D deficiency is common in adults."},
    {"id": "d2", "document": "Mice lacking TLR4 resisted sepsis.", "query": "TLR4 knockout protects mice from sepsis."},
]
TARGET = "Aspirin lowered the risk of colorectal cancer in a cohort of 5,000 patients."


def test_exact_prompt_two_example_scifact():
    out = rq.render_prompt(TARGET, EXAMPLES, rq.RetrievalQueriesConfig(task="scifact"))
    # No instruction text: the whole prompt is one assistant turn that the engine continues.
    assert rq.build_messages(out["prompt"]) == [{"role": "assistant", "content": (
        "Abstract: Vitamin D levels were measured in 300 adults.\n"
        "Finding: Vitamin D deficiency is common in adults.\n"
        "\n"
        "Abstract: Mice lacking TLR4 resisted sepsis.\n"
        "Finding: TLR4 knockout protects mice from sepsis.\n"
        "\n"
        "Abstract: Aspirin lowered the risk of colorectal cancer in a cohort of 5,000 patients.\n"
        "Finding:"
    )}]
    assert out["example_ids"] == ["d1", "d2"] and out["examples_dropped"] == 0 and not out["doc_truncated"]


def test_zero_shot_form_and_prefix_table():
    out = rq.render_prompt("Argument text here.", [], rq.RetrievalQueriesConfig(task="arguana"))
    assert rq.build_messages(out["prompt"]) == [{"role": "assistant", "content": (
        "Argument: Argument text here.\nRead the passage and generate a query.\nCounter argument:")}]
    assert rq.resolve_prefixes("fever") == rq.Prefixes("fever", "Evidence:", "Is it true that")
    assert rq.resolve_prefixes("scifact").query == "Finding:"
    # The table and the request are the prompt files, read as they are.
    table = json.loads((rq.PROMPTS / "task_prefixes.json").read_text())
    assert rq.TASK_PREFIXES == {task: (e["doc"], e["query"]) for task, e in table.items()} and len(table) == 15
    assert rq.ZERO_SHOT_REQUEST == (rq.PROMPTS / "zero_shot.txt").read_text().strip()
    assert rq.TASKS == tuple(sorted(table))


def test_custom_prefixes_get_their_own_id():
    custom = rq.resolve_prefixes("scifact", query_prefix="Claim:")
    assert custom.prefix_id.startswith("custom-") and (custom.doc, custom.query) == ("Abstract:", "Claim:")
    assert rq.resolve_prefixes("scifact", "Abstract:", "Finding:").prefix_id == "scifact"  # same as the table
    assert rq.resolve_prefixes("mytask", "Doc:", "Q:").prefix_id.startswith("custom-")
    with pytest.raises(ValueError, match="unknown task"):
        rq.RetrievalQueriesConfig(task="mytask")
    cfg = rq.RetrievalQueriesConfig(task="generic", doc_prefix="", query_prefix="Q:")
    assert rq.render_prompt("Body.", EXAMPLES[:1], cfg)["prompt"].startswith("Vitamin D levels")


def test_examples_are_dropped_before_the_document_is_cut():
    long_doc = " ".join(f"w{i}" for i in range(60))
    full = rq.render_prompt(long_doc, EXAMPLES, rq.RetrievalQueriesConfig())
    budget = rq.approx_tokens(full["prompt"]) - 5  # one example too many
    out = rq.render_prompt(long_doc, EXAMPLES, rq.RetrievalQueriesConfig(max_prompt_tokens=budget))
    assert out["example_ids"] == ["d2"] and out["examples_dropped"] == 1 and not out["doc_truncated"]
    assert long_doc in out["prompt"]
    # A budget too small for the document alone: no examples left, then the document is cut.
    out = rq.render_prompt(long_doc, EXAMPLES, rq.RetrievalQueriesConfig(max_prompt_tokens=64))
    assert out["example_ids"] == [] and out["doc_truncated"]
    assert rq.approx_tokens(out["prompt"]) <= 64 and "w0 w1" in out["prompt"] and "w59" not in out["prompt"]


def test_example_documents_are_cut_to_their_cap():
    ex = [{"id": "x", "document": " ".join(["word"] * 500), "query": "q?"}]
    out = rq.render_prompt(TARGET, ex, rq.RetrievalQueriesConfig(example_doc_tokens=30))
    first_block = out["prompt"].split("\n")[0]
    assert rq.approx_tokens(first_block.removeprefix("Abstract: ")) <= 30
    assert out["example_ids"] == ["x"]


PREFIXES = rq.resolve_prefixes("scifact")


@pytest.mark.parametrize("text,finish,query,reason", [
    (None, "stop", None, "empty_output"),
    ("", "stop", None, "empty_output"),
    ("   \n ", "stop", None, "empty_output"),
    (" ...!!! ??", "stop", None, "no_query"),
    (" 12 34 5", "stop", None, "no_query"),
    (" Abstract: Another document starts here", "stop", None, "no_query"),
    (' "Aspirin prevents colorectal cancer."', "stop", "Aspirin prevents colorectal cancer.", None),
    (" Finding: Aspirin prevents cancer.", "stop", "Aspirin prevents cancer.", None),
    (" Aspirin prevents cancer because it is a drug that and so on and on", "length",
     "Aspirin prevents cancer because it is a drug that and so on and on", "too_long"),
])
def test_parse_query(text, finish, query, reason):
    assert rq.parse_query(text, PREFIXES, finish) == {"query": query, "drop_reason": reason}


def test_drop_rules_duplicates_and_echoed_document():
    doc = ("Aspirin lowered the risk of colorectal cancer in a large cohort of five thousand patients "
           "followed for ten years.")
    samples = [{"raw_output": o, "finish_reason": "stop"} for o in (
        " Aspirin reduces colorectal cancer risk.",
        " aspirin reduces colorectal cancer RISK",  # same query, other case and punctuation
        " Aspirin lowered the risk of colorectal cancer in a large cohort of five thousand patients.",  # echo
        "",
        " Does aspirin protect against cancer?",
    )]
    out = rq.apply_drop_rules(samples, doc, rq.RetrievalQueriesConfig())
    assert [s["drop_reason"] for s in out] == [None, "duplicate", "copied_span", "empty_output", None]
    assert out[2]["copied_span"] == 15 and out[0]["copied_span"] == 2
    assert rq.longest_copied_span("x y z", doc) == 0


def _corpus_file(tmp_path, rows):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_load_corpus_beir_and_named_columns(tmp_path):
    path = _corpus_file(tmp_path, [{"_id": "1", "title": "Title one", "text": "Body\n one."},
                                   {"_id": "2", "title": "", "text": "Body two."}])
    docs = rq.load_corpus(path).rows
    assert [(d["source_id"], d["text"], d["source_row"]) for d in docs] == [("1", "Title one. Body one.", 1), ("2", "Body two.", 2)]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"pid": ["a"], "passage": ["P."]}), tmp_path / "c.parquet")
    assert rq.load_corpus(tmp_path / "c.parquet", id_column="pid").rows[0]["text"] == "P."


@pytest.mark.parametrize("rows,message", [
    ([{"_id": "1", "text": "a"}, {"_id": "1", "text": "b"}], "row 2: id '1' repeats row 1"),
    ([{"_id": "1", "text": "a"}, {"text": "b"}], "row 2: missing column"),
    ([{"_id": "", "text": "a"}], "row 1: column '_id' is empty"),
    ([{"_id": "1", "title": "", "text": "  "}], "row 1: document '1' has no text"),
])
def test_load_corpus_errors_name_file_and_row(tmp_path, rows, message):
    path = _corpus_file(tmp_path, rows)
    with pytest.raises(InputError, match=message) as err:
        rq.load_corpus(path)
    assert str(path) in str(err.value)


def test_load_examples(tmp_path):
    corpus = rq.load_corpus(_corpus_file(tmp_path, [{"_id": "7", "title": "T", "text": "Body."}])).rows
    path = tmp_path / "ex.jsonl"
    path.write_text(json.dumps({"query": "q1", "doc_id": "7"}) + "\n" + json.dumps({"query": "q2", "document": "Own doc."}) + "\n")
    ex = rq.load_examples(path, corpus)
    assert ex[0] == {"id": "7", "document": "T. Body.", "query": "q1"}
    assert ex[1]["document"] == "Own doc." and ex[1]["id"].startswith("ex-")
    path.write_text(json.dumps({"query": "q", "doc_id": "nope"}) + "\n")
    with pytest.raises(InputError, match=r"ex.jsonl: row 1: doc_id 'nope' is not in the corpus"):
        rq.load_examples(path, corpus)
    path.write_text("".join(json.dumps({"query": f"q{i}", "document": f"d{i}"}) + "\n" for i in range(9)))
    with pytest.raises(InputError, match="row 9: at most 8 examples"):
        rq.load_examples(path, corpus)
    path.write_text(json.dumps({"doc_id": "7"}) + "\n")
    with pytest.raises(InputError, match="row 1: missing column 'query'"):
        rq.load_examples(path, corpus)
    path.write_text(json.dumps({"query": "q1", "doc_id": "7"}) + "\n" + json.dumps({"query": "q2", "doc_id": 7}) + "\n")
    with pytest.raises(InputError, match="row 2: example '7' repeats row 1"):
        rq.load_examples(path, corpus)


def test_generate_with_scripted_engine_gives_pending_records():
    engine = FakeEngine(EngineSpec(backend="fake", model="fake"),
                        replies=[" Aspirin cuts cancer risk.", " Aspirin cuts cancer risk.", "", " ??"])
    config = rq.RetrievalQueriesConfig(samples=4)
    docs = [{"source_id": "t1", "source_file": "c.jsonl", "source_row": 1, "text": TARGET, "examples": EXAMPLES}]
    out = [asyncio.run(rq.write_queries(docs[0], engine, config))]
    [(conversation, params)] = engine.calls
    assert conversation[0]["content"].endswith("Finding:") and params.n == 4 and params.stop == ("\n",)
    assert params.temperature == 0.7 and params.logprobs and params.seed == 0
    lineage = {"run_id": "r", "model": "m", "engine": "fake", "config_hash": "h", "created_at": datetime.now(timezone.utc)}
    records = rq.to_records(out[0], lineage, config)
    assert [(r["sample"], r["kept"], r["drop_reason"]) for r in records] == [
        (0, None, rq.PENDING), (1, False, "duplicate"), (2, False, "empty_output"), (3, False, "no_query")]
    assert records[0]["mean_logprob"] == -0.5 and records[0]["example_ids"] == ["d1", "d2"]
    assert len({r["record_id"] for r in records}) == 4
    assert records[0]["record_id"] == rq.record_id("t1", "h", 0)

    from schemas.store import TableStore
    from schemas.tables import RETRIEVAL_QUERIES

    TableStore.to_arrow(TableStore("/nonexistent", RETRIEVAL_QUERIES), records)  # matches the table schema


@pytest.mark.integration
def test_records_match_the_sync_steps_golden(golden_engine, golden):
    """Greedy, on the embedded model: the per-row program writes what the sync batch step wrote."""
    lineage, check = golden
    config = rq.RetrievalQueriesConfig(task="generic", samples=2, temperature=0.0, max_tokens=32)
    corpus = rq.load_corpus("samples/retrieval_corpus.jsonl").rows
    examples = rq.load_examples("samples/retrieval_examples.jsonl", corpus)
    example_ids = {e["id"] for e in examples}
    docs = [{**d, "examples": examples} for d in corpus if d["source_id"] not in example_ids][:3]

    async def run_all():
        return await asyncio.gather(*(rq.write_queries(d, golden_engine, config) for d in docs))

    check("retrieval_queries", [r for d in asyncio.run(run_all()) for r in rq.to_records(d, lineage, config)])


def test_config_hash_covers_examples_model_and_filter():
    base = rq.RetrievalQueriesConfig()
    h = base.config_hash("m", ["a"])
    assert h == rq.RetrievalQueriesConfig().config_hash("m", ["a"])
    assert len({h, base.config_hash("m", ["b"]), base.config_hash("m2", ["a"]),
                rq.RetrievalQueriesConfig(filter_retriever="bm25").config_hash("m", ["a"]),
                rq.RetrievalQueriesConfig(query_prefix="Claim:").config_hash("m", ["a"])}) == 5


MODEL_ID = EngineSpec().model_id  # the default model's id, as every record's lineage names it


@pytest.mark.parametrize("options,example_ids,expected", [
    # Computed with the code before the generator folder (tasks/retrieval_queries.py at b1f4d51):
    # RetrievalQueriesConfig(**options).config_hash(EngineSpec().model_id, example_ids).
    ({}, [], "8b0d870987059af3"),
    ({}, ["d1", "d2"], "34a1a325f4d2d14c"),
    ({"task": "generic", "filter_retriever": "bm25", "samples": 2}, ["a"], "118bb01f81288f50"),
    ({"task": "scifact", "query_prefix": "Claim:", "temperature": 1}, ["a"], "90c27f6c13e4bf59"),
    ({"task": "mytask", "doc_prefix": "Doc:", "query_prefix": "Q:"}, [], "5bd90e291de65196"),
])
def test_config_hash_is_the_one_existing_data_dirs_have(options, example_ids, expected):
    assert rq.RetrievalQueriesConfig(**options).config_hash(MODEL_ID, example_ids) == expected


def test_options_model_checks_its_values():
    assert rq.RetrievalQueriesConfig(task="arguana").task == "arguana"
    # A task outside the table is a custom one only with both prefixes (as resolve_prefixes allows).
    custom = rq.RetrievalQueriesConfig(task="mytask", doc_prefix="Doc:", query_prefix="Q:")
    assert custom.prefixes.prefix_id.startswith("custom-") and custom.prefixes.doc == "Doc:"
    with pytest.raises(ValueError, match="unknown task 'mytask'"):
        rq.RetrievalQueriesConfig(task="mytask", query_prefix="Q:")
    with pytest.raises(ValueError, match="query prefix must not be empty"):
        rq.RetrievalQueriesConfig(query_prefix="  ")
    with pytest.raises(ValueError, match="filter_retriever"):
        rq.RetrievalQueriesConfig(filter_retriever="colbert")
    for bad in ({"samples": 0}, {"filter_k": 0}, {"negatives": -1}, {"max_prompt_tokens": 63},
                {"example_doc_tokens": 7}, {"copy_span_words": 2}, {"samplez": 3}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            rq.RetrievalQueriesConfig(**bad)
    params = rq.RetrievalQueriesConfig(samples=3, seed=5).sampling()
    assert (params.n, params.temperature, params.top_p, params.max_tokens, params.stop, params.seed, params.logprobs) == (
        3, 0.7, 1.0, 64, ("\n",), 5, True)
