"""`datagen export preferences`: the labelled pairs as TRL's conversational preference rows
(RewardTrainer, DPOTrainer), ties left out.

    datagen export preferences --data-dir ./datasets --out prefs.jsonl [--margin] [--consistent-only]
    datagen export preferences --data-dir ./datasets --hub-folder ./hub/prefs   (a Hugging Face dataset folder)
    -> {"prompt": [{"role": "user", "content": "How do I boil an egg?"}],
        "chosen": [{"role": "assistant", "content": "Boil it for 8 minutes."}],
        "rejected": [{"role": "assistant", "content": "No idea."}], "margin": 1.6}
"""
from __future__ import annotations

from schemas.flags import flagged_records
from schemas.tables import PREFERENCE_LABELS
from tasks.runtime.exports import deliver

from .eval import labelled_rows
from .program import MODES


def add_arguments(p) -> None:
    p.add_argument("--data-dir", default="./datasets")
    p.add_argument("--run", action="append", help="only these runs (repeatable; default: all)")
    p.add_argument("--mode", choices=MODES, default="self-reference",
                   help="the labels of this mode (default self-reference)")
    p.add_argument("--consistent-only", action="store_true", help="only pairs both orders agreed on")
    p.add_argument("--min-strength", type=float, default=0.0, help="only pairs at least this strong")
    p.add_argument("--margin", action="store_true", help="add the strength as TRL's reward-model `margin` column")
    p.add_argument("--include-flagged", action="store_true",
                   help="keep records a `datagen clean` step flagged (contaminated, or a duplicate's copy)")


def to_trl(row: dict, margin: bool = False) -> dict | None:
    """A labelled row in TRL's conversational preference format (RewardTrainer, DPOTrainer):
    {"prompt": [messages], "chosen": [assistant msg], "rejected": [assistant msg]}; None for a tie.
    `margin` adds the strength as TRL's reward-model `margin` column."""
    if row["chosen"] not in ("a", "b"):
        return None
    good, bad = ((row["response_a"], row["response_b"]) if row["chosen"] == "a"
                 else (row["response_b"], row["response_a"]))
    out = {"prompt": [{"role": m["role"], "content": m["content"]} for m in row["conversation"]],
           "chosen": [{"role": "assistant", "content": good}],
           "rejected": [{"role": "assistant", "content": bad}]}
    if margin:
        out["margin"] = row["strength"]
    return out


def export_rows(data_dir: str, run_ids: list[str] | None = None, mode: str = "self-reference",
                consistent_only: bool = False, min_strength: float = 0.0, margin: bool = False,
                include_flagged: bool = False) -> list[dict]:
    """TRL preference rows (prompt / chosen / rejected messages) from the labelled, non-tie pairs of
    one mode: one per pair (its latest label when several runs labelled it), in pair-id order."""
    latest: dict[str, dict] = {}
    flagged = set() if include_flagged else flagged_records(data_dir, PREFERENCE_LABELS.name)
    for r in labelled_rows(data_dir):
        if (run_ids and r["run_id"] not in run_ids) or r["mode"] != mode or r["record_id"] in flagged:
            continue
        if r["source_id"] not in latest or r["created_at"] > latest[r["source_id"]]["created_at"]:
            latest[r["source_id"]] = r
    out = []
    for _, r in sorted(latest.items()):
        if (consistent_only and not r["consistent"]) or r["strength"] < min_strength:
            continue
        if (trl := to_trl(r, margin=margin)) is not None:
            out.append(trl)
    return out


def main(args) -> int:
    """`datagen export preferences --data-dir D --out FILE(.jsonl|.parquet)`."""
    rows = export_rows(args.data_dir, args.run, args.mode, args.consistent_only, args.min_strength, args.margin,
                       args.include_flagged)
    print(f"{len(rows)} preference pairs -> {', '.join(deliver(rows, args, None, 'preference pairs'))}")
    return 0
