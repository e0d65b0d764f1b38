"""Proves the cot-rewrites generator's pure logic: the exact prompt of each route (and of the
step-label continuation), routing on real rows of each type (MATH-500 informal and symbolic, GSM8K,
answer-only) and its column / flag overrides, task-family detection and configurable templates, the
`Step k:` parser over messy output, input errors naming file and row, and — with a scripted
FakeEngine — that the per-row program turns every rewrite into a schema-valid row with a reason,
duplicates marked, while several items run at once each at its own pace; and, on the embedded model,
greedy, that it writes exactly the records the old sync batch step wrote (tests/golden/)."""
from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone

import pytest

from schemas.tables import COT_REWRITES
from tasks.generators.cot_rewrites import messages as cm
from tasks.generators.cot_rewrites import program as cr
from tasks.engines.fake import FakeEngine
from tasks.runtime.inputs import InputError, RowChecks
from schemas.store import TableStore

CONFIG = cr.CotRewritesConfig()
SYSTEM = ('You write clear, correct step-by-step solutions to math problems.\n'
          'Write one step per line: "Step 1: ...", "Step 2: ...", and so on. Each step makes one deduction '
          'or one calculation and states its result.\n'
          'After the last step, write one line "Final answer: " followed by the answer only.\n')
ARITHMETIC = ("For an arithmetic word problem: first state the quantities given; then compute one quantity per "
              "step, writing the operation and its result with its unit.")
ITEM = {"question": "What is 2+3?", "gold_answer": "5", "task_family": "arithmetic"}


def test_expand_prompt_is_pinned():
    assert cm.build_messages({**ITEM, "route": "expand", "source_solution": None}) == [
        {"role": "system", "content": SYSTEM + ARITHMETIC},
        {"role": "user", "content": "Problem: What is 2+3?\n\nThe correct final answer is 5. Write a step-by-step "
                                    "solution that derives this answer from the problem. Do not assume the answer: compute it."},
        {"role": "assistant", "content": "Step 1:"},
    ]


def test_rewrite_prompt_is_pinned():
    messages = cm.build_messages({**ITEM, "route": "rewrite", "source_solution": "We add 2 and 3 to get 5."})
    assert messages[1:] == [
        {"role": "user", "content": "Problem: What is 2+3?\n\nInformal solution:\nWe add 2 and 3 to get 5.\n\n"
                                    "Rewrite this solution as strict step-by-step logic. Keep its reasoning and its final answer, 5."},
        {"role": "assistant", "content": "Step 1:"},
    ]
    assert messages[0] == {"role": "system", "content": SYSTEM + ARITHMETIC}


def test_unify_prompt_is_pinned_and_cleans_the_source():
    messages = cm.build_messages({**ITEM, "route": "unify", "task_family": "geometry",
                                  "source_solution": "2+3 = <<2+3=5>>5\n[asy]draw(a--b);[/asy]"})
    assert messages == [
        {"role": "system", "content": SYSTEM + "For a geometry problem: list the given lengths, angles and properties "
                                               "of the figure; in each step name the theorem or formula you use, then compute with it."},
        {"role": "user", "content": "Problem: What is 2+3?\n\nTerse solution:\n2+3 = 5\n[figure]\n\nTurn these "
                                    "calculations into clear steps in plain language, one calculation per step. Keep every "
                                    "result and the final answer, 5."},
        {"role": "assistant", "content": "Step 1:"},
    ]


def test_solve_prompt_prefills_the_prefix_without_the_gold():
    messages = cm.solve_messages("What is 2+3?", "generic", ["Add 2 and 3.", "That is 5."])
    assert messages[1:] == [{"role": "user", "content": "Problem: What is 2+3?\n\nSolve it step by step."},
                            {"role": "assistant", "content": "Step 1: Add 2 and 3.\nStep 2: That is 5.\nStep 3:"}]
    assert cm.solve_messages("q", "generic", [])[-1] == {"role": "assistant", "content": "Step 1:"}
    assert "5" not in json.dumps(cm.solve_messages("What is 2+3?", "generic", []))


def _write(tmp_path, rows, name="in.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_routing_on_real_rows(tmp_path, shared_data):
    math_rows = [json.loads(line) for line in (shared_data / "math500" / "test500.jsonl").read_text().splitlines()]
    gsm_rows = [json.loads(line) for line in (shared_data / "gsm8k" / "train.jsonl").read_text().splitlines()[:50]]
    informal = next(r for r in math_rows if r["unique_id"] == "test/precalculus/807.json")  # prose + a figure
    symbolic = next(r for r in math_rows if r["unique_id"] == "test/intermediate_algebra/1994.json")  # align blocks
    rows = [informal, symbolic, gsm_rows[0], {"id": "a1", "question": "What is 6 times 7?", "answer": "42"}]
    items = {i["source_id"]: i for i in cr.load_items(_write(tmp_path, rows), CONFIG).rows}
    assert items["test/precalculus/807.json"]["route"] == "rewrite"
    assert items["test/precalculus/807.json"]["source_type"] == "informal"
    assert items["test/precalculus/807.json"]["gold_answer"] == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert items["test/intermediate_algebra/1994.json"]["route"] == "unify"
    gsm = next(i for i in items.values() if i["source_id"].startswith("cot-"))
    assert gsm["gold_answer"] == "72" and gsm["task_family"] == "arithmetic"
    assert "<<" not in gsm["source_solution"] and "####" not in gsm["source_solution"]
    assert (items["a1"]["route"], items["a1"]["source_type"], items["a1"]["source_solution"]) == ("expand", "none", None)
    # routes over the whole sets: MATH-500 has both kinds, every row routes somewhere
    all_math = cr.load_items(shared_data / "math500" / "test500.jsonl", CONFIG).rows
    routes = {i["route"] for i in all_math}
    assert routes == {"rewrite", "unify"} and len(all_math) == 500


def test_route_column_and_forced_route(tmp_path):
    rows = [{"id": "x", "question": "2+3?", "solution": "We add them and get 5.", "answer": "5", "route": "unify"},
            {"id": "y", "question": "2+4?", "solution": "We add them and get 6.", "answer": "6", "route": None}]
    items = {i["source_id"]: i for i in cr.load_items(_write(tmp_path, rows), CONFIG).rows}
    assert (items["x"]["route"], items["x"]["route_forced"]) == ("unify", True)
    assert items["y"]["route_forced"] is False
    forced = cr.load_items(_write(tmp_path, rows), cr.CotRewritesConfig(route="expand")).rows
    assert {i["route"] for i in forced} == {"expand"} and all(i["route_forced"] for i in forced)
    other_column = cr.load_items(_write(tmp_path, [{**rows[0], "mode": "rewrite"}]), cr.CotRewritesConfig(route_column="mode")).rows
    assert other_column[0]["route"] == "rewrite"


@pytest.mark.parametrize(
    "rows, row, message",
    [
        ([{"question": "a?", "answer": "1"}, "{oops"], 2, "invalid JSON"),
        ([{"text": "a?", "answer": "1"}], 1, "missing column"),
        ([{"question": "a?", "solution": "no box here"}], 1, "no gold answer"),
        ([{"question": "a?", "answer": "Half of it.\n####  "}], 1, "nothing after '####'"),
        ([{"question": "  ", "answer": "1"}], 1, "empty"),
        ([{"question": "a?", "answer": "1", "route": "summarize"}], 1, "route 'summarize'"),
        ([{"question": "a?", "answer": "1", "route": "rewrite"}], 1, "needs a source solution"),
    ],
)
def test_bad_rows_name_file_and_row(tmp_path, rows, row, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    with pytest.raises(InputError, match=f"{path}: row {row}: .*{message}"):
        cr.load_items(path, CONFIG)


def test_gold_from_boxed_solution_and_duplicate_ids(tmp_path):
    rows = [{"id": "d", "problem": "p?", "solution": "so it is $\\boxed{\\frac{1}{2}}$."},
            {"id": "d", "problem": "p again?", "solution": "$\\boxed{3}$"}]
    path = _write(tmp_path, rows)
    with pytest.raises(InputError, match=f"{path}: row 2: id 'd' repeats row 1"):
        cr.load_items(path, CONFIG)
    source = cr.load_items(path, CONFIG, checks=RowChecks(drop_duplicates=True))
    assert [(i["source_id"], i["gold_answer"]) for i in source.rows] == [("d", "\\frac{1}{2}")]
    assert source.rejects == [{"source_file": str(path), "source_row": 2, "reason": "duplicate_id"}]


@pytest.mark.parametrize(
    "question, subject, gsm8k, family",
    [
        ("What is the area of a circle of radius 2?", None, False, "geometry"),
        ("Solve the equation $x^2 - 4 = 0$.", None, False, "algebra"),
        ("Tom buys 3 apples at 2 dollars each. How much does he pay in total?", None, False, "arithmetic"),
        ("Anything at all.", "Geometry", False, "geometry"),  # the row's subject wins
        ("Solve it.", None, True, "arithmetic"),  # GSM8K rows are word problems
        ("Which of the following is a mammal?", None, False, "generic"),
    ],
)
def test_family_detection(question, subject, gsm8k, family):
    assert cm.detect_family(question, subject, gsm8k=gsm8k) == family


def test_templates_are_configurable(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"version": "mine/v2", "families": {
        "logic": {"guidance": "Name each premise.", "keywords": ["premise"]},
        "generic": {"guidance": "Be clear."}}}))
    config = cr.CotRewritesConfig(templates=str(path))
    assert cm.detect_family("From this premise, what follows?", templates=str(path)) == "logic"
    assert cm.template_id("logic", str(path)) == "logic@mine/v2"
    assert cm.system_message("logic", str(path))["content"].endswith("Name each premise.")
    assert config.config_hash("m") != CONFIG.config_hash("m")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"families": {"logic": {"guidance": "x"}}}))
    with pytest.raises(ValueError, match="generic"):
        cr.CotRewritesConfig(templates=str(bad))


@pytest.mark.parametrize(
    "text, steps, answer, error",
    [
        ("Step 1: 2+3=5\nStep 2: So 5.\nFinal answer: 5", ["2+3=5", "So 5."], "5", None),
        ("Step 1: a\ncontinued\nStep 2: b\nFinal answer: \\boxed{\\frac{1}{2}}\nThanks for asking!",
         ["a\ncontinued", "b"], "\\frac{1}{2}", None),
        ("**Step 1:** x = 2\n**Final Answer:** $4$.", ["x = 2"], "4", None),
        ("Step 1: a\nStep 2: b", ["a", "b"], None, "missing_answer"),  # truncated before the answer
        ("Step 1: a\nFinal answer:", ["a"], None, "missing_answer"),
        ("Step 1:\nFinal answer: 5", [], "5", "no_steps"),
        ("The answer is 5.", [], None, "no_steps"),
        ("", [], None, "no_steps"),
        (None, [], None, "no_steps"),
        ("Step 1: a\nStep 3: b\nFinal answer: 2", ["a", "b"], "2", None),  # numbering gaps are tolerated
        ("Step 1: a\n\nThe final answer is $\\frac{1}{2}$.", ["a"], "\\frac{1}{2}", None),
    ],
)
def test_parse_steps_never_raises(text, steps, answer, error):
    parsed = cr.parse_steps(text)
    assert (parsed["steps"], parsed["final_answer"], parsed["parse_error"]) == (steps, answer, error)


def test_rewritten_text_ends_at_the_final_answer_line():
    parsed = cr.parse_steps("Step 1: a\nFinal answer: 5\n\nThe original solution was wrong.")
    assert parsed["rewritten_text"] == "Step 1: a\nFinal answer: 5"


def test_config_validates_and_hash_tracks_shaping_settings():
    for bad in ({"rewrites": 0}, {"route": "paraphrase"}, {"continuations": 0}, {"templates": "/no/such.json"}):
        with pytest.raises(ValueError):
            cr.CotRewritesConfig(**bad)
    assert CONFIG.config_hash("m") == cr.CotRewritesConfig().config_hash("m")
    assert CONFIG.config_hash("m") != cr.CotRewritesConfig(rewrites=2).config_hash("m")
    assert CONFIG.config_hash("m") != cr.CotRewritesConfig(step_labels=True).config_hash("m")
    assert CONFIG.config_hash("m") != CONFIG.config_hash("other")
    assert CONFIG.sampling().temperature == 0.0 and CONFIG.sampling().n == 1
    sampled = cr.CotRewritesConfig(rewrites=3, temperature=0.9).sampling()
    assert (sampled.n, sampled.temperature, sampled.seed) == (3, 0.9, 0)


def _item(source_id="s1", gold="5", route="unify"):
    return {"source_id": source_id, "source_file": "f.jsonl", "source_row": 1, "question": "2+3?",
            "gold_answer": gold, "source_solution": "2+3=5", "source_type": "symbolic", "route": route,
            "route_forced": False, "task_family": "arithmetic"}


def test_rewrite_item_with_a_scripted_engine(tmp_path):
    replies = [
        " 2+3=5\nFinal answer: 5",  # kept
        " 2+3=5\nFinal answer: 5",  # the same again: duplicate
        " 2+3=6\nFinal answer: 6",  # wrong answer
        " Let me assume the answer.\nFinal answer: 5",  # hedging
        " add\nStep 2: add them now please\nStep 3: add them now please\nFinal answer: 5",  # loop
        " 2+3",  # no final answer
    ]
    engine = FakeEngine(replies=replies)
    config = cr.CotRewritesConfig(rewrites=6)
    item = asyncio.run(cr.rewrite_item(_item(), engine, config))
    [(conversation, params)] = engine.calls  # the n rewrites are one request
    assert conversation == cm.build_messages(_item()) and params.n == 6 and params.temperature == 0.8
    assert [(r["kept"], r["rejection_reason"]) for r in item["rewrites"]] == [
        (True, None), (False, "duplicate"), (False, "answer_mismatch"), (False, "hedging"), (False, "loop"),
        (False, "missing_answer")]
    assert item["rewrites"][0]["rewritten_text"] == "Step 1: 2+3=5\nFinal answer: 5"
    assert item["rewrites"][2]["answer_match"] is False and item["rewrites"][5]["answer_match"] is None

    lineage = {"run_id": "r1", "model": "fake", "engine": "fake", "config_hash": "h", "max_tokens": 384,
               "created_at": datetime.now(timezone.utc)}
    records = cr.to_records(item, lineage)
    table = TableStore(tmp_path, COT_REWRITES).to_arrow(records)  # raises if a column is off
    assert table.num_rows == 6 and table.schema.equals(COT_REWRITES.arrow)
    assert len({r["record_id"] for r in records}) == 6 and records[0]["record_id"] == cr.record_id("s1", "h", 0)
    assert all((r["rejection_reason"] is None) == r["kept"] for r in records)
    assert records[0]["template_id"] == "arithmetic@cot-templates/v1" and records[0]["label_status"] is None


def test_items_run_at_once_each_at_its_own_pace():
    """Two items with step labels on one engine: each gets its own answers (the scripted model reads
    the prompt), and the second item's rewrite is requested before the first item's label probes."""
    items = [{**_item("s1", "5"), "question": "What is 2+3?"}, {**_item("s2", "7"), "question": "What is 3+4?"}]
    gold = {"What is 2+3?": "5", "What is 3+4?": "7"}

    def probe(conversation) -> bool:  # a continuation of a probed prefix (the solve prompt), not a rewrite
        return conversation[1]["content"].endswith("Solve it step by step.")

    def reply(conversation, params):
        answer = next(g for q, g in gold.items() if q in conversation[1]["content"])
        if probe(conversation):
            return f" so it is {answer}.\nFinal answer: {answer}"
        return f" first\nStep 2: then {answer}\nFinal answer: {answer}"

    engine = FakeEngine(reply=reply)
    config = cr.CotRewritesConfig(step_labels=True, continuations=2)

    async def run_all():
        return await asyncio.gather(*(cr.rewrite_item(dict(item), engine, config) for item in items))

    done = asyncio.run(run_all())
    assert [(i["source_id"], r["extracted_answer"], r["kept"], r["label_status"], r["label_continuations"])
            for i in done for r in i["rewrites"]] == [("s1", "5", True, "no_error", 2), ("s2", "7", True, "no_error", 2)]
    assert [probe(conv) for conv, _ in engine.calls] == [False, False, True, True]
    assert {params.n for conv, params in engine.calls if probe(conv)} == {2}


@pytest.mark.integration
def test_records_match_the_sync_steps_golden(golden_engine, golden):
    """Greedy, on the embedded model: the per-row program writes what the sync batch step wrote."""
    lineage, check = golden
    config = cr.CotRewritesConfig(max_tokens=128, step_labels=True, continuations=2, label_temperature=0,
                                  label_max_tokens=48)
    items = cr.load_items("samples/math_word_problems.jsonl", config, 2).rows

    async def run_all():
        return await asyncio.gather(*(cr.rewrite_item(item, golden_engine, config) for item in items))

    records = [r for item in asyncio.run(run_all()) for r in cr.to_records(item, {**lineage, "max_tokens": 128})]
    check("cot_rewrites", records)
