"""`datagen clean decontaminate|dedup`: the cleaning steps of tasks/clean/ from the command line and
from a recipe's `clean:` steps (flows/build.py), then the data cards of the runs whose records were
checked are written again (their "Cleaning" section changes).

    datagen clean decontaminate --data-dir ./datasets --table cot_rewrites --against data/math500/test500.jsonl
    datagen clean decontaminate --data-dir ./datasets --table math_programs --against a.jsonl,b.parquet --embedding
    datagen clean dedup --data-dir ./datasets --table math_programs [--threshold 0.8]
"""
from __future__ import annotations

import json
import sys

from tasks.clean.decontaminate import DecontaminationSettings
from tasks.clean.dedup import DedupSettings


def add_parsers(sub) -> None:
    """`datagen clean decontaminate` and `datagen clean dedup` under the CLI's subcommands."""
    clean = sub.add_parser("clean", help="decontaminate against evaluation sets, remove near-duplicates")
    clean.set_defaults(main="flows.clean:main")  # run by cli.cmd_command, like eval and export
    kinds = clean.add_subparsers(dest="clean", required=True)
    d = kinds.add_parser("decontaminate", help="flag records that copy or paraphrase evaluation items")
    d.add_argument("--data-dir", default="./datasets")
    d.add_argument("--table", required=True, help="the table to check (math_programs, cot_rewrites, ...)")
    d.add_argument("--against", required=True,
                   help="evaluation files, comma-separated (JSONL / Parquet, local or a URI)")
    d.add_argument("--column", help="the evaluation files' text column (default: the first of "
                                    "problem, question, text, input, query, prompt, instruction, turns)")
    d.add_argument("--id-column", help="their id column (default: id, unique_id, _id, question_id, task_id, else a hash)")
    d.add_argument("--fields", help="the table's text columns, comma-separated (default: the table's own)")
    d.add_argument("--ngram", type=int, default=13, help="words per n-gram (default 13)")
    d.add_argument("--min-ngrams", type=int, default=1, help="shared n-grams that flag a record (default 1)")
    d.add_argument("--embedding", action="store_true", help="also a MiniLM pass for paraphrases")
    d.add_argument("--threshold", type=float, default=0.85, help="cosine similarity of a paraphrase (default 0.85)")
    d.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    u = kinds.add_parser("dedup", help="cluster near-duplicate records, keep one per cluster")
    u.add_argument("--data-dir", default="./datasets")
    u.add_argument("--table", required=True)
    u.add_argument("--fields", help="the table's output columns to compare, comma-separated (default: the table's own)")
    u.add_argument("--threshold", type=float, default=0.8, help="Jaccard similarity of word 3-gram shingles (default 0.8)")
    u.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def _split(text: str | None) -> list[str] | None:
    return [p.strip() for p in text.split(",") if p.strip()] if text else None


def settings_of(args):
    fields = tuple(_split(args.fields)) if args.fields else None
    if args.clean == "decontaminate":
        return DecontaminationSettings(n=args.ngram, min_ngrams=args.min_ngrams, embedding=args.embedding,
                                       threshold=args.threshold, column=args.column, id_column=args.id_column,
                                       fields=fields)
    return DedupSettings(threshold=args.threshold, fields=fields)


def recipe_steps(clean) -> list[tuple[str, object, list[str] | None]]:
    """(kind, settings, against) of a recipe generator's `clean:` steps (tasks/recipes.CleanSteps), in order."""
    steps = []
    if d := clean.decontaminate:
        steps.append(("decontaminate", DecontaminationSettings(
            n=d.ngram, min_ngrams=d.min_ngrams, embedding=d.embedding, threshold=d.threshold, column=d.column,
            id_column=d.id_column), list(d.against)))
    if u := clean.dedup:
        steps.append(("dedup", DedupSettings(threshold=u.threshold), None))
    return steps


def preflight_step(clean) -> None:
    """Read every evaluation file of a recipe generator's `clean:` steps before anything starts: a bad
    one is an InputError naming the file and the row."""
    from tasks.clean.decontaminate import read_eval_items

    if clean is not None and (d := clean.decontaminate):
        for path in d.against:
            read_eval_items(path, d.column, d.id_column)


def brief(generator: str, summary: dict) -> dict:
    """One line of a build's summary: records checked and flagged by a cleaning step."""
    if summary["kind"] == "decontaminate":
        checked = sum(c["checked"] for c in summary["checks"])
        flagged = sum(c["contaminated"] for c in summary["checks"])
    else:
        checked, flagged = summary["checked"], summary["duplicates"]
    return {"generator": generator, "step": summary["kind"], "table": summary["table"], "run_id": summary["run_id"],
            "checked": checked, "flagged": flagged}


def run_step(data_dir, kind: str, table: str, settings, against=None, log=print) -> dict:
    """One cleaning step, then the data cards of the generator runs it checked, written again."""
    from tasks.clean.runner import clean_table

    summary = clean_table(data_dir, kind, table, settings, against=against, log=log)
    summary["cards"] = refresh_cards(data_dir, summary.get("source_runs", []))
    return summary


def refresh_cards(data_dir, run_ids) -> list[str]:
    """Write the data card of each generator run again (a run whose generator cannot load is skipped)."""
    from tasks.generators import load_generator
    from tasks.runtime.report import read_run, write_report

    written = []
    for run_id in run_ids:
        try:
            run = read_run(data_dir, run_id)
            written.append(write_report(data_dir, run_id, load_generator(run["flow"])(json.loads(run["parameters"]))))
        except Exception as exc:  # noqa: BLE001 - a card that cannot be drawn never fails the cleaning
            print(f"datagen clean: no data card for run {run_id}: {type(exc).__name__}: {exc}", file=sys.stderr)
    return written


def main(args) -> int:
    from tasks.clean.scan import CleanError
    from tasks.runtime.inputs import InputError

    try:
        settings = settings_of(args)
        against = _split(getattr(args, "against", None))
        summary = run_step(args.data_dir, args.clean, args.table, settings, against,
                           log=(lambda _: None) if args.json else print)
    except InputError:
        raise  # main() prints it as "datagen: bad input: FILE: row N: ..."
    except (CleanError, ValueError) as exc:
        print(f"datagen clean {args.clean}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        print(f"run {summary['run_id']}: see `datagen sql --data-dir {args.data_dir} \"SELECT * FROM {args.table}_clean\"`")
    return 0
