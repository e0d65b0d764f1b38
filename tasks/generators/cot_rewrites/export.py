"""`datagen export cot-rewrites` and `datagen export step-labels`: the kept rewrites as SFT chat rows,
and the step-labelled rewrites in the format of TRL's PRMTrainer.

    datagen export cot-rewrites --data-dir ./datasets --out sft.jsonl [--run RUN_ID] [--one-per-problem]
    -> {"messages": [{"role": "user", "content": "What is 12 * 6?"},
                     {"role": "assistant", "content": "Step 1: 12 * 6 = 72.\\nFinal answer: 72"}],
        "source_id": "gsm8k-3f2a...", "record_id": "5c1f...", "run_id": "20261127-...", "config_hash": "9d0e..."}

    datagen export step-labels --data-dir ./datasets --out prm.jsonl [--run RUN_ID] [--all-steps]
    -> {"prompt": "What is 12 * 6?", "completions": ["12 * 6 = 70.", "Final answer: 70"],
        "labels": [false], ...lineage}

SFT: only kept rewrites (the answer was preserved). PRM: every rewrite the first-error search labelled
(`label_status` no_error or error_found; kept or not, since a wrong chain teaches where it went wrong):
steps before the first bad step are true, the first bad step false, and the steps after it are left
out (their label says nothing new; `--all-steps` keeps them, labelled false). Rows the search could
not label (`unsolved`: the model never solves the question; `no_steps`) are counted, not exported.
Written atomically; nothing to export: one line, exit code 2.
"""
from __future__ import annotations

import sys

import pyarrow as pa
import pyarrow.compute as pc

from schemas.datadir import DataDir
from schemas.flags import flagged_records
from schemas.store import TableStore, only_runs
from schemas.tables import COT_REWRITES
from tasks.runtime.exports import deliver

LINEAGE = ("source_id", "record_id", "run_id", "config_hash")
MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
SFT_SCHEMA = pa.schema([pa.field("messages", MESSAGES)] + [pa.field(c, pa.string()) for c in LINEAGE])
PRM_SCHEMA = pa.schema([pa.field("prompt", pa.string()), pa.field("completions", pa.list_(pa.string())),
                        pa.field("labels", pa.list_(pa.bool_()))] + [pa.field(c, pa.string()) for c in LINEAGE])
LABELLED = ("no_error", "error_found")


def _common_arguments(p) -> None:
    p.add_argument("--data-dir", default="./datasets")
    p.add_argument("--run", action="append", help="only these runs (repeatable; default: all)")
    p.add_argument("--config-hash", action="append", help="only rows of this config hash (repeatable; default: all)")
    p.add_argument("--include-flagged", action="store_true",
                   help="keep records a `datagen clean` step flagged (contaminated, or a duplicate's copy)")


def add_arguments(p) -> None:
    """`datagen export cot-rewrites` (SFT)."""
    _common_arguments(p)
    p.add_argument("--one-per-problem", action="store_true",
                   help="one rewrite per problem: its first kept one (earliest, lowest attempt)")
    p.add_argument("--system", help="a system message to put first in every conversation")


def add_step_labels_arguments(p) -> None:
    """`datagen export step-labels` (PRM)."""
    _common_arguments(p)
    p.add_argument("--all-steps", action="store_true",
                   help="keep the steps after the first bad one, labelled false (default: cut after it)")


def _read(data_dir: str, condition, columns: list[str], run_ids, config_hashes, include_flagged: bool = False) -> list[dict]:
    """Rows matching `condition`, without the records a cleaning step flagged unless `include_flagged`."""
    flagged = None if include_flagged else flagged_records(data_dir, COT_REWRITES.name)
    condition = only_runs(condition, run_ids, config_hashes, flagged)
    rows = TableStore(data_dir, COT_REWRITES).read(
        columns=[*LINEAGE, "question", "attempt", "created_at", *columns], filter=condition).to_pylist()
    rows.sort(key=lambda r: (r["source_id"], r["created_at"], r["attempt"], r["record_id"]))
    return rows


def to_sft(row: dict, system: str | None = None) -> dict:
    """A kept rewrite as an SFT conversation (question -> rewrite) with its lineage columns."""
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": row["question"]}, {"role": "assistant", "content": row["rewritten_text"]}]
    return {"messages": messages, **{c: row[c] for c in LINEAGE}}


def sft_rows(data_dir: str, run_ids: list[str] | None = None, config_hashes: list[str] | None = None,
             one_per_problem: bool = False, system: str | None = None, include_flagged: bool = False) -> list[dict]:
    """SFT rows of the kept rewrites, problems in source-id order; a rewrite text repeated for a
    problem (another run or config) is kept once."""
    condition = (pc.field("kept") == True) & pc.field("rewritten_text").is_valid()  # noqa: E712 - Arrow expression
    seen: set = set()
    out = []
    for r in _read(data_dir, condition, ["rewritten_text"], run_ids, config_hashes, include_flagged):
        key = r["source_id"] if one_per_problem else (r["source_id"], r["rewritten_text"])
        if key not in seen:
            seen.add(key)
            out.append(to_sft(r, system))
    return out


def to_prm(row: dict, all_steps: bool = False) -> dict | None:
    """A step-labelled rewrite in TRL's PRM format (prompt, completions = the steps, one bool label per
    step); None when the search gave no usable labels (unsolved, no steps, a bad step index)."""
    steps = row["steps"] or []
    if row["label_status"] not in LABELLED or not steps:
        return None
    if row["label_status"] == "no_error":
        labels = [True] * len(steps)
    else:
        bad = row["first_error_step"]  # 1-based
        if bad is None or not 1 <= bad <= len(steps):
            return None
        labels = [True] * (bad - 1) + [False] * (len(steps) - bad + 1)
        if not all_steps:
            steps, labels = steps[:bad], labels[:bad]
    return {"prompt": row["question"], "completions": list(steps), "labels": labels, **{c: row[c] for c in LINEAGE}}


def prm_rows(data_dir: str, run_ids: list[str] | None = None, config_hashes: list[str] | None = None,
             all_steps: bool = False, include_flagged: bool = False) -> tuple[list[dict], dict[str, int]]:
    """PRM rows of the step-labelled rewrites, and the labelled-or-not tally of what was read
    ({"no_error": n, "error_found": n, "unsolved": n, "no_steps": n, "unusable": n})."""
    rows = _read(data_dir, pc.field("label_status").is_valid(), ["steps", "label_status", "first_error_step"],
                 run_ids, config_hashes, include_flagged)
    out, tally = [], {}
    for r in rows:
        prm = to_prm(r, all_steps)
        status = r["label_status"] if prm is not None or r["label_status"] not in LABELLED else "unusable"
        tally[status] = tally.get(status, 0) + 1
        if prm is not None:
            out.append(prm)
    return out, tally


def _nothing(command: str, what: str, args) -> int:
    where = DataDir(args.data_dir).url(TableStore(args.data_dir, COT_REWRITES).root)
    print(f"datagen export {command}: no {what} in {where}"
          f"{' for the given --run / --config-hash' if args.run or args.config_hash else ''}", file=sys.stderr)
    return 2


def main(args) -> int:
    """`datagen export cot-rewrites --data-dir D --out FILE(.jsonl|.parquet)`."""
    rows = sft_rows(args.data_dir, args.run, args.config_hash, args.one_per_problem, args.system, args.include_flagged)
    if not rows:
        return _nothing("cot-rewrites", "kept rewrites", args)
    what = "SFT conversations (kept rewrites)"
    print(f"{len(rows)} {what} -> {', '.join(deliver(rows, args, SFT_SCHEMA, what))}")
    return 0


def main_step_labels(args) -> int:
    """`datagen export step-labels --data-dir D --out FILE(.jsonl|.parquet)`."""
    rows, tally = prm_rows(args.data_dir, args.run, args.config_hash, args.all_steps, args.include_flagged)
    if not rows:
        return _nothing("step-labels", "step-labelled rewrites (run with --step-labels)", args)
    left_out = ", ".join(f"{n} {s}" for s, n in sorted(tally.items()) if s not in LABELLED)
    out = deliver(rows, args, PRM_SCHEMA, "PRM rows (step-labelled rewrites)")
    print(f"{len(rows)} PRM rows ({tally.get('error_found', 0)} with a first bad step, {tally.get('no_error', 0)} "
          f"without; left out: {left_out or 'none'}) -> {', '.join(out)}")
    return 0
