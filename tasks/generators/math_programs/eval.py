"""`datagen eval math-programs`: how well the model solved the problems, per run and pass, read from the
committed `math_programs` table (every attempt is a row, so nothing is re-run).

    datagen eval math-programs --data-dir ./datasets [--run RUN_ID ...] [--json eval.json]

Per run and pass (fixed, then dynamic — whose problems are the ones the fixed pass left unsolved):
- `problems`, and `solved`: problems with at least one verified program; `solve_rate` = solved / problems,
  i.e. pass@k over the k attempts (Chen et al. 2021 with n = k).
- `greedy_accuracy`: the greedy attempt (attempt 0) is correct: pass@1.
- `majority_accuracy`: self-consistency (Wang et al. 2023) over the executed results — the most common
  `exec_value` among the problem's attempts (values within the answer tolerance vote together; a tie
  goes to the answer an earlier attempt gave) matches the gold. A problem with no value is wrong.
- `verified_programs` (correct attempts), `attempts`, and how many attempts ended in each
  `exec_status` (ok, wrong, error, timeout, no_program).

Printed as a table, e.g.

    run_id                  pass     problems  solved  solve_rate  greedy_accuracy  majority_accuracy  ...
    20261127-231501-ab12    fixed          20      11       0.550            0.350              0.400  ...
"""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import pyarrow.dataset as pads

from schemas.store import TableStore
from schemas.tables import MATH_PROGRAMS
from tasks.answers import answers_match

from .program import EXEC_STATUSES

PASSES = ("fixed", "dynamic")
READ_COLUMNS = ["run_id", "pass", "source_id", "attempt", "gold_answer", "exec_status", "exec_value", "correct"]
EVAL_COLUMNS = ("run_id", "pass", "problems", "solved", "solve_rate", "greedy_accuracy", "majority_accuracy",
                "verified_programs", "attempts", *EXEC_STATUSES)


def add_arguments(p) -> None:
    p.add_argument("--data-dir", default="./datasets", help="the data dir holding the math_programs table")
    p.add_argument("--run", action="append", help="only this run (repeatable; default: every run)")
    p.add_argument("--json", help="also write the table as JSON here")


def majority_value(values: Sequence[float]) -> float | None:
    """The most common value; values within the answer tolerance of a group's first value join it, and
    a tie goes to the group formed first (the earlier attempt). None for no values."""
    groups: list[list[float]] = []
    for value in values:
        group = next((g for g in groups if answers_match(value, g[0])), None)
        if group is None:
            groups.append([value])
        else:
            group.append(value)
    best = max(groups, key=len, default=None)  # max keeps the first of equal lengths
    return None if best is None else best[0]


def evaluate(rows: Iterable[dict]) -> dict:
    """The metrics of one run's pass: `rows` are its attempts (READ_COLUMNS)."""
    by_problem: dict[str, list[dict]] = {}
    for row in rows:
        by_problem.setdefault(row["source_id"], []).append(row)
    statuses = Counter()
    solved = greedy_total = greedy_correct = majority_correct = verified = attempts = 0
    for attempts_of in by_problem.values():
        attempts_of.sort(key=lambda r: r["attempt"])
        statuses.update(r["exec_status"] for r in attempts_of)
        attempts += len(attempts_of)
        verified += sum(bool(r["correct"]) for r in attempts_of)
        solved += any(r["correct"] for r in attempts_of)
        greedy = [r for r in attempts_of if r["attempt"] == 0]
        if greedy:
            greedy_total += 1
            greedy_correct += bool(greedy[0]["correct"])
        vote = majority_value([r["exec_value"] for r in attempts_of if r["exec_value"] is not None])
        majority_correct += answers_match(vote, attempts_of[0]["gold_answer"])
    problems = len(by_problem)
    rate = lambda n, d: n / d if d else None  # noqa: E731
    return {
        "problems": problems,
        "solved": solved,
        "solve_rate": rate(solved, problems),
        "greedy_accuracy": rate(greedy_correct, greedy_total),
        "majority_accuracy": rate(majority_correct, problems),
        "verified_programs": verified,
        "attempts": attempts,
        **{status: statuses[status] for status in EXEC_STATUSES},
    }


def evaluation_table(data_dir: str, run_ids: Sequence[str] | None = None) -> list[dict]:
    """One row of metrics per run and pass, runs in id order (ids start with their start time), the
    fixed pass first. Raises KeyError naming the runs that have no records."""
    store = TableStore(data_dir, MATH_PROGRAMS)
    condition = pads.field("run_id").isin(list(run_ids)) if run_ids else None
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in store.read(columns=READ_COLUMNS, filter=condition).to_pylist():
        groups.setdefault((row["run_id"], row["pass"]), []).append(row)
    found = {run for run, _ in groups}
    missing = sorted(set(run_ids or ()) - found)
    if missing or not groups:
        raise KeyError(f"no math_programs records for run(s) {missing} in {data_dir}" if missing
                       else f"no math_programs records in {data_dir}")
    order = lambda key: (key[0], PASSES.index(key[1]) if key[1] in PASSES else len(PASSES), key[1])  # noqa: E731
    return [{"run_id": run, "pass": pass_name, **evaluate(groups[(run, pass_name)])}
            for run, pass_name in sorted(groups, key=order)]


def format_table(table: Sequence[dict]) -> str:
    fmt = lambda v: "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    cells = [[fmt(row[c]) for c in EVAL_COLUMNS] for row in table]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(EVAL_COLUMNS)]
    line = lambda values: "  ".join(  # noqa: E731
        f"{v:<{w}}" if i < 2 else f"{v:>{w}}" for i, (v, w) in enumerate(zip(values, widths)))
    return "\n".join([line(EVAL_COLUMNS), *(line(r) for r in cells)])


def main(args) -> int:
    """`datagen eval math-programs --data-dir D [--run RUN ...] [--json FILE]`: the table, printed."""
    try:
        table = evaluation_table(args.data_dir, args.run)
    except KeyError as exc:
        print(f"datagen eval math-programs: {exc.args[0]}", file=sys.stderr)
        return 2
    print(format_table(table))
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2))
    return 0
