"""The `datagen` command line.

    datagen run math-programs --input ../shared/data/gsm8k/train.jsonl --limit 20 --samples 4 --data-dir ./datasets
    datagen sql --data-dir ./datasets "SELECT exec_status, count(*) FROM math_programs GROUP BY 1"
    datagen sql --data-dir ./datasets          # interactive prompt; end statements with ';'
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Quiet, offline defaults, set before Prefect / Ray / transformers are imported. Users can override.
for _key, _value in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "RAY_AUTH_MODE": "disabled",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_DEDUP_LOGS": "1",
}.items():
    os.environ.setdefault(_key, _value)

# One entry per generator flow: `datagen run <name>` builds the flow's pydantic settings from the
# parsed options (every option's dest must be a settings field), runs the flow, and prints
# SUMMARY_SQL over the run's rows. Options are declared by the `_add_<name>` functions below,
# registered in `parser()`. Modules are imported only when their command runs (Prefect is slow to import).
FLOWS = {  # name -> (module, settings class, flow function, table)
    "math-programs": ("flows.math_programs", "MathProgramsSettings", "math_programs", "math_programs"),
}
SUMMARY_SQL = {
    "math_programs": (
        "SELECT pass, exec_status, count(*) AS attempts, count(DISTINCT source_id) AS problems "
        "FROM math_programs WHERE run_id = '{run_id}' GROUP BY ALL ORDER BY pass DESC, exec_status"
    ),
}
# `datagen eval <name> ...`: name -> "module:function"; the function takes the parsed args, prints its
# report and returns the exit code. Options are declared by `_add_eval_<name>` functions.
EVALS: dict[str, str] = {}


def _add_math_programs(sub) -> None:
    p = sub.add_parser("math-programs", help="PAL-style programs, executed and verified against gold answers")
    p.add_argument("--input", required=True, help="JSONL/Parquet with question, answer (GSM8K '#### N' or number), optional id")
    p.add_argument("--limit", type=int, help="only the first N problems")
    p.add_argument("--samples", type=int, default=4, help="programs per problem: 1 greedy + k-1 sampled (default 4)")
    p.add_argument("--temperature", type=float, default=0.5)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--exemplars", type=int, default=8, help="few-shot exemplars, 1..8 (default 8)")
    p.add_argument("--no-dynamic", dest="dynamic", action="store_false", help="skip the dynamic-exemplar pass")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", dest="timeout_s", type=float, default=5.0, help="sandbox seconds per program")
    _add_common(p)


def _add_common(p) -> None:
    p.add_argument("--data-dir", default="./datasets")
    p.add_argument("--engine", choices=["transformers", "vllm"], default="transformers")
    p.add_argument("--model", default="smollm2-135m", help="'smollm2-135m' (embedded) or a local model folder")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--batch-size", type=int, default=8, help="rows per engine call and per committed file")
    p.add_argument("--pool-size", type=int, default=1, help="engine actors (one model copy each)")
    p.add_argument("--ray-address", help="join a running Ray cluster (default: start a local one)")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="datagen", description="Build LLM training datasets into Parquet tables.")
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a generator flow")
    flows = run.add_subparsers(dest="flow", required=True)
    _add_math_programs(flows)
    evals = sub.add_parser("eval", help="evaluate a dataset against real labels").add_subparsers(dest="eval", required=True)
    del evals  # no evaluations registered yet: `_add_eval_<name>(evals)` calls go here
    sql = sub.add_parser("sql", help="query the tables with DuckDB (interactive without a query)")
    sql.add_argument("--data-dir", default="./datasets")
    sql.add_argument("query", nargs="?")
    return ap


def cmd_run(args) -> int:
    import importlib

    module, settings_cls, flow_fn, table = FLOWS[args.flow]
    mod = importlib.import_module(module)
    settings = getattr(mod, settings_cls)(**{k: v for k, v in vars(args).items() if k not in ("command", "flow")})
    summary = getattr(mod, flow_fn)(settings)
    _print_summary(args.data_dir, table, summary)
    return 0


def cmd_eval(args) -> int:
    import importlib

    module, fn = EVALS[args.eval].split(":")
    return getattr(importlib.import_module(module), fn)(args)


def _print_summary(data_dir: str, table: str, summary: dict) -> None:
    from schemas.catalog import CATALOG_FILE, connect

    root = Path(data_dir).resolve()
    print(f"\nrun {summary['run_id']}: {summary['rows_in']} source rows, {summary['rows_skipped']} already done, "
          f"{summary['rows_out']} records written, {summary['tokens_generated']} tokens, {summary['wall_seconds']:.1f} s")
    print(f"table:   {root / table}")
    print(f"catalog: {root / CATALOG_FILE}   (datagen sql --data-dir {data_dir})")
    con = connect(data_dir)
    if table in {r[0] for r in con.sql("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}:
        con.sql(SUMMARY_SQL[table].format(run_id=summary["run_id"])).show(max_width=160)


def cmd_sql(args) -> int:
    import duckdb

    from schemas.catalog import connect

    if not Path(args.data_dir).exists():
        print(f"datagen sql: data dir {args.data_dir} does not exist", file=sys.stderr)
        return 2
    con = connect(args.data_dir)
    if args.query:
        try:
            con.sql(args.query).show(max_width=200, max_rows=200)
        except duckdb.Error as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    return _repl(con)


def _repl(con) -> int:
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    tables = [r[0] for r in con.sql("SELECT view_name FROM duckdb_views() WHERE NOT internal ORDER BY 1").fetchall()]
    print(f"datagen sql — tables: {', '.join(tables) or '(none yet)'}. End statements with ';', .quit to leave.")
    buffer = []
    while True:
        try:
            line = input("datagen> " if not buffer else "     ...> ")
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if not buffer and line.strip() in (".quit", ".exit", "\\q"):
            return 0
        if not buffer and line.strip() == ".tables":
            print("\n".join(tables))
            continue
        buffer.append(line)
        statement = "\n".join(buffer).strip()
        if not statement.endswith(";"):
            continue
        buffer = []
        try:
            result = con.sql(statement)
            if result is not None:
                result.show(max_width=200, max_rows=200)
        except Exception as exc:  # any DuckDB error is shown; the prompt stays open
            print(f"error: {exc}")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "sql":
        return cmd_sql(args)
    from tasks.inputs import InputError

    try:
        return cmd_eval(args) if args.command == "eval" else cmd_run(args)
    except InputError as exc:
        print(f"datagen: bad input: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
