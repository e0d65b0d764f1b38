"""`datagen export math-programs`: the verified programs as SFT chat rows (TRL's SFTTrainer reads the
`messages` column), question -> program, with their lineage.

    datagen export math-programs --data-dir ./datasets --out sft.jsonl [--run RUN_ID] [--one-per-problem]
    -> {"messages": [{"role": "user", "content": "Tom has 3 apples ..."},
                     {"role": "assistant", "content": "def solution():\\n    return 3 + 4"}],
        "source_id": "gsm8k-3f2a...", "record_id": "5c1f...", "run_id": "20261127-231501-ab12",
        "config_hash": "9d0e..."}

Only rows that verified (`correct`); the same program written twice for one problem is exported once.
Written atomically (a temporary file renamed into place); no verified program: one line, exit code 2.
"""
from __future__ import annotations

import sys

import pyarrow as pa
import pyarrow.compute as pc

from schemas.datadir import DataDir
from schemas.flags import flagged_records
from schemas.store import TableStore, only_runs
from schemas.tables import MATH_PROGRAMS
from tasks.runtime.exports import deliver

LINEAGE = ("source_id", "record_id", "run_id", "config_hash")
MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
SFT_SCHEMA = pa.schema([pa.field("messages", MESSAGES)] + [pa.field(c, pa.string()) for c in LINEAGE])


def add_arguments(p) -> None:
    p.add_argument("--data-dir", default="./datasets")
    p.add_argument("--run", action="append", help="only these runs (repeatable; default: all)")
    p.add_argument("--config-hash", action="append", help="only rows of this config hash (repeatable; default: all)")
    p.add_argument("--one-per-problem", action="store_true",
                   help="one program per problem: its first verified one (earliest, fixed pass, lowest attempt)")
    p.add_argument("--system", help="a system message to put first in every conversation")
    p.add_argument("--include-flagged", action="store_true",
                   help="keep records a `datagen clean` step flagged (contaminated, or a duplicate's copy)")


def to_sft(row: dict, system: str | None = None) -> dict:
    """A verified row as an SFT conversation (question -> program) with its lineage columns."""
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": row["question"]}, {"role": "assistant", "content": row["program"]}]
    return {"messages": messages, **{c: row[c] for c in LINEAGE}}


def export_rows(data_dir: str, run_ids: list[str] | None = None, config_hashes: list[str] | None = None,
                one_per_problem: bool = False, system: str | None = None, include_flagged: bool = False) -> list[dict]:
    """SFT rows of the verified programs, problems in source-id order, each problem's programs first
    verified first; a program repeated for a problem (another run or config) is kept once. Records a
    cleaning step flagged are left out unless `include_flagged`."""
    condition = (pc.field("correct") == True) & pc.field("program").is_valid()  # noqa: E712 - Arrow expression
    flagged = None if include_flagged else flagged_records(data_dir, MATH_PROGRAMS.name)
    condition = only_runs(condition, run_ids, config_hashes, flagged)
    rows = TableStore(data_dir, MATH_PROGRAMS).read(
        columns=[*LINEAGE, "question", "program", "pass", "attempt", "created_at"], filter=condition).to_pylist()
    # "fixed" < "dynamic" in this order: the fixed pass ran first
    rows.sort(key=lambda r: (r["source_id"], r["created_at"], r["pass"] != "fixed", r["attempt"], r["record_id"]))
    seen: set = set()
    out = []
    for r in rows:
        key = r["source_id"] if one_per_problem else (r["source_id"], r["program"])
        if key not in seen:
            seen.add(key)
            out.append(to_sft(r, system))
    return out


def main(args) -> int:
    """`datagen export math-programs --data-dir D --out FILE(.jsonl|.parquet)`."""
    rows = export_rows(args.data_dir, args.run, args.config_hash, args.one_per_problem, args.system,
                       args.include_flagged)
    if not rows:
        where = DataDir(args.data_dir).url(TableStore(args.data_dir, MATH_PROGRAMS).root)
        print(f"datagen export math-programs: no verified programs in {where}"
              f"{' for the given --run / --config-hash' if args.run or args.config_hash else ''}", file=sys.stderr)
        return 2
    what = "SFT conversations (verified programs)"
    print(f"{len(rows)} {what} -> {', '.join(deliver(rows, args, SFT_SCHEMA, what))}")
    return 0
