"""`datagen eval preferences`: how the labels of a run compare with the human labels (hh-rlhf's
chosen/rejected), how often the judge ties or flips with the order, and what a pair cost.

    datagen eval preferences --data-dir ./datasets --run <RUN_ID> [--run <RUN_ID_2>] [--json eval.json]

With one run, the run of the other mode that labelled the most of the same pairs is added, and both
are measured on the pairs they share. Printed transposed (metrics as rows), e.g.

    run_id          20250101T000000-abc123  20250101T000500-def456
    mode                    self-reference                  direct
    agreement                        0.090                   0.100
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

from schemas.store import TableStore
from schemas.tables import PREFERENCE_LABELS

EVAL_COLUMNS = ("run_id", "mode", "pairs", "human_labelled", "agreement", "ties", "agreement_decided",
                "consistency", "agreement_consistent", "mean_strength", "free_text_verdicts",
                "requests_per_pair", "engine_calls_per_pair", "tokens_per_pair", "generated_tokens_per_pair")


def add_arguments(p) -> None:
    p.add_argument("--data-dir", default="./datasets")
    p.add_argument("--run", action="append", required=True,
                   help="run id (repeat to compare; one run is compared with the other mode's run on the same pairs)")
    p.add_argument("--json", help="also write the table as JSON here")


def labelled_rows(data_dir: str) -> list[dict]:
    """Every row of the preference_labels table."""
    return TableStore(data_dir, PREFERENCE_LABELS).read().to_pylist()


def evaluate(rows: Sequence[dict]) -> dict:
    """Agreement with the human labels (rows that have one), ties, position consistency, strength."""
    labelled = [r for r in rows if r.get("human_choice") in ("a", "b")]
    decided = [r for r in labelled if r["chosen"] != "tie"]
    consistent = [r for r in labelled if r["consistent"]]
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    free = sum(1 for r in rows for j in r["judgments"] if j["verdict_source"] != "probs")
    judgments = sum(len(r["judgments"]) for r in rows)
    return {
        "pairs": len(rows),
        "human_labelled": len(labelled),
        "agreement": mean([r["chosen"] == r["human_choice"] for r in labelled]),
        "ties": mean([r["chosen"] == "tie" for r in rows]),
        "agreement_decided": mean([r["chosen"] == r["human_choice"] for r in decided]),
        "consistency": mean([bool(r["consistent"]) for r in rows]),
        "agreement_consistent": mean([r["chosen"] == r["human_choice"] for r in consistent]),
        "mean_strength": mean([r["strength"] for r in rows]),
        "free_text_verdicts": free / judgments if judgments else None,
        "requests_per_pair": mean([r["engine_requests"] for r in rows]),
        "engine_calls_per_pair": mean([r["engine_calls_share"] for r in rows]),
        "tokens_per_pair": mean([(r["prompt_tokens"] or 0) + (r["completion_tokens"] or 0) for r in rows]),
        "generated_tokens_per_pair": mean([r["completion_tokens"] or 0 for r in rows]),
    }


def evaluation_table(data_dir: str, run_ids: list[str]) -> list[dict]:
    """One row of metrics per run. With a single run, the run of the other mode that labelled the most
    of the same pairs is added, and both are measured on the pairs they share."""
    by_run: dict[str, list[dict]] = {}
    for r in labelled_rows(data_dir):
        by_run.setdefault(r["run_id"], []).append(r)
    missing = [r for r in run_ids if r not in by_run]
    if missing:
        raise KeyError(f"no preference_labels rows for run(s) {missing} in {data_dir} (runs: {sorted(by_run)})")
    if len(run_ids) == 1:
        mine = by_run[run_ids[0]]
        ids, mode = {r["source_id"] for r in mine}, mine[0]["mode"]
        others = [(len(ids & {r["source_id"] for r in rs}), rid) for rid, rs in by_run.items()
                  if rs[0]["mode"] != mode]
        best = max(others, default=(0, None))
        if best[0]:
            run_ids = run_ids + [best[1]]
    shared = set.intersection(*({r["source_id"] for r in by_run[rid]} for rid in run_ids))
    return [{"run_id": rid, "mode": by_run[rid][0]["mode"],
             **evaluate([r for r in by_run[rid] if r["source_id"] in shared])} for rid in run_ids]


def main(args) -> int:
    """`datagen eval preferences --data-dir D --run RUN [--run RUN2]`: a small table of metrics."""
    try:
        table = evaluation_table(args.data_dir, args.run)
    except KeyError as exc:
        print(f"datagen eval preferences: {exc.args[0]}", file=sys.stderr)
        return 2
    fmt = lambda v: "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    cells = [[fmt(row[c]) for c in EVAL_COLUMNS] for row in table]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(EVAL_COLUMNS)]
    # Transposed (metrics as rows): two or three runs side by side stay readable in a terminal.
    label_width = max(len(c) for c in EVAL_COLUMNS)
    for i, column in enumerate(EVAL_COLUMNS):
        print(f"{column:<{label_width}}  " + "  ".join(f"{r[i]:>{max(widths[0], 12)}}" for r in cells))
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2))
    return 0
