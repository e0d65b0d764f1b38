"""Recipe parsing and validation, and the pairs a consumer reads from a producer's rewrites (pure)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tasks.recipes import load_recipe, rewrite_pairs

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["cpu-demo", "one-gpu"])
def test_shipped_recipes_are_valid(name):
    recipe = load_recipe(REPO / "deploy" / "recipes" / f"{name}.yaml")
    consumers = [g for g in recipe.generators if g.pairs_from]
    assert consumers and all(g.flow == "preference-labels" for g in consumers)
    for g in recipe.generators:  # every input a recipe names ships with the repo or lies in the user's data/
        for key in ("input", "corpus", "examples", "pairs"):
            if key in g.params and not g.params[key].startswith("data/"):
                assert (REPO / g.params[key]).exists(), g.params[key]


def _write(tmp_path, generators, **top) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "engines": {"e": {"backend": "transformers"}},
                                    "generators": generators, **top}))
    return path


@pytest.mark.parametrize("generators, message", [
    ([{"name": "a", "flow": "nope"}], "unknown flow 'nope'"),
    ([{"name": "a", "flow": "math-programs", "engine": "x"}], "unknown engine 'x'"),
    ([{"name": "a", "flow": "math-programs"}, {"name": "a", "flow": "cot-rewrites"}], "named twice"),
    ([{"name": "p", "flow": "preference-labels", "pairs_from": {"generator": "r"}},
      {"name": "r", "flow": "cot-rewrites"}], "must name an earlier generator"),
    ([{"name": "r", "flow": "math-programs"},
      {"name": "p", "flow": "preference-labels", "pairs_from": {"generator": "r"}}], "cot-rewrites producer"),
    ([{"name": "a", "flow": "math-programs", "params": {"data_dir": "x"}}], "at the recipe level"),
    ([{"name": "a", "flow": "math-programs", "typo": 1}], "typo"),
])
def test_bad_recipes_name_the_file_and_the_problem(tmp_path, generators, message):
    path = _write(tmp_path, generators)
    with pytest.raises(ValueError) as err:
        load_recipe(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_not_yaml_names_the_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: [unclosed")
    with pytest.raises(ValueError, match=str(path)):
        load_recipe(path)


def test_settings_params_take_engine_and_data_dir_from_the_recipe(tmp_path):
    recipe = load_recipe(_write(tmp_path, [{"name": "a", "flow": "math-programs", "engine": "e",
                                            "params": {"input": "x.jsonl", "samples": 2}}], data_dir="/d"))
    assert recipe.settings_params(recipe.generators[0]) == {
        "input": "x.jsonl", "samples": 2, "engine": "transformers", "model": "smollm2-135m", "device": "auto",
        "data_dir": "/d"}


def _row(source, attempt, text, kept=True):
    return {"record_id": f"{source}-{attempt}", "source_id": source, "question": f"q {source}",
            "attempt": attempt, "rewritten_text": text, "kept": kept}


def test_rewrite_pairs_pair_distinct_rewrites_per_problem():
    rows = [_row("p1", 1, "Step 1: b"), _row("p1", 0, "Step 1: a"), _row("p1", 2, "Step 1: a"),  # duplicate text
            _row("p2", 0, "Step 1: only one"), _row("p3", 0, None), _row("p3", 1, "Step 1: c"),
            _row("p4", 0, "Step 1: x", kept=False), _row("p4", 1, "Step 1: y")]
    pairs = rewrite_pairs(rows)
    assert [(p["prompt"], p["response_a"], p["response_b"]) for p in pairs] == [
        ("q p1", "Step 1: a", "Step 1: b"), ("q p4", "Step 1: x", "Step 1: y")]
    assert rewrite_pairs(list(reversed(rows))) == pairs  # ids and order do not depend on row order
    assert len({p["id"] for p in pairs}) == 2
    assert [p["prompt"] for p in rewrite_pairs(rows, kept_only=True)] == ["q p1"]


def test_rewrite_pairs_more_than_one_pair_per_problem():
    rows = [_row("p1", i, f"Step 1: {i}") for i in range(4)]
    assert len(rewrite_pairs(rows)) == 1
    assert [(p["response_a"], p["response_b"]) for p in rewrite_pairs(rows, max_pairs_per_item=3)] == [
        ("Step 1: 0", "Step 1: 1"), ("Step 1: 0", "Step 1: 2"), ("Step 1: 0", "Step 1: 3")]
