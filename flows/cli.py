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
    "retrieval-queries": ("flows.retrieval_queries", "RetrievalQueriesSettings", "retrieval_queries", "retrieval_queries"),
    "cot-rewrites": ("flows.cot_rewrites", "CotRewritesSettings", "cot_rewrites", "cot_rewrites"),
    "preference-labels": ("flows.preference_labels", "PreferenceLabelsSettings", "preference_labels", "preference_labels"),
}
# `datagen run build --recipe FILE`: several of the flows above as one DAG (flows/build.py).
BUILD = ("flows.build", "BuildSettings", "build")
SUMMARY_SQL = {
    "cot_rewrites": (
        "SELECT route, coalesce(rejection_reason, 'kept') AS outcome, count(*) AS rewrites, "
        "count(DISTINCT source_id) AS items FROM cot_rewrites WHERE run_id = '{run_id}' GROUP BY ALL ORDER BY route, rewrites DESC"
    ),
    "math_programs": (
        "SELECT pass, exec_status, count(*) AS attempts, count(DISTINCT source_id) AS problems "
        "FROM math_programs WHERE run_id = '{run_id}' GROUP BY ALL ORDER BY pass DESC, exec_status"
    ),
    "preference_labels": (
        "SELECT mode, chosen, consistent, count(*) AS pairs, round(avg(strength), 3) AS mean_strength, "
        "count(human_choice) FILTER (WHERE chosen = human_choice) AS agree_with_human "
        "FROM preference_labels WHERE run_id = '{run_id}' GROUP BY ALL ORDER BY ALL"
    ),
    "retrieval_queries": (
        "SELECT coalesce(drop_reason, 'kept') AS outcome, count(*) AS queries, count(DISTINCT doc_id) AS documents "
        "FROM retrieval_queries WHERE run_id = '{run_id}' GROUP BY ALL ORDER BY queries DESC"
    ),
}
# `datagen eval <name> ...`: name -> "module:function"; the function takes the parsed args, prints its
# report and returns the exit code. Options are declared by `_add_eval_<name>` functions.
EVALS: dict[str, str] = {
    "retrieval": "tasks.retrieval_eval:main",
    "cot-answers": "tasks.cot_eval:main_answers",
    "step-labels": "tasks.cot_eval:main_step_labels",
    "preferences": "flows.preference_labels:eval_cli",
}
# `datagen export <name> ...`: name -> "module:function", like EVALS; options from `_add_export_<name>`.
EXPORTS: dict[str, str] = {
    "preferences": "flows.preference_labels:export_cli",
}


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


def _add_retrieval_queries(sub) -> None:
    from tasks.retrieval_queries import TASK_PREFIXES

    p = sub.add_parser("retrieval-queries", help="Promptagator few-shot queries per document + round-trip filter")
    p.add_argument("--corpus", required=True, help="BEIR JSONL (_id, title, text) or JSONL/Parquet with named columns")
    p.add_argument("--examples", help="JSONL of <= 8 rows: query + doc_id (in the corpus) or document (default: zero-shot)")
    p.add_argument("--task", choices=sorted(TASK_PREFIXES), default="scifact", help="BEIR task whose prefixes to use")
    p.add_argument("--doc-prefix", help="custom document prefix (overrides the task's)")
    p.add_argument("--query-prefix", help="custom query prefix (overrides the task's)")
    p.add_argument("--id-column", help="corpus id column (default: _id, id, doc_id or docid)")
    p.add_argument("--text-column", help="corpus text column (default: text, document, passage, contents or body)")
    p.add_argument("--title-column", default="title", help="corpus title column, prepended to the text (default title)")
    p.add_argument("--limit", type=int, help="queries for the first N documents only (the filter indexes the whole corpus)")
    p.add_argument("--samples", type=int, default=8, help="queries sampled per document (default 8)")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--max-prompt-tokens", type=int, default=1536, help="prompt budget: examples dropped first, then the document cut")
    p.add_argument("--example-doc-tokens", type=int, default=128, help="each example document is cut to this many tokens")
    p.add_argument("--copy-span-words", type=int, default=10, help="drop queries copying this many consecutive document words")
    p.add_argument("--filter", dest="filter_retriever", choices=["finetuned", "dense", "bm25"], default="finetuned",
                   help="round-trip retriever (default finetuned: MiniLM fine-tuned on all pairs, the paper's recipe)")
    p.add_argument("--filter-k", type=int, default=1, help="keep a pair when its document is in the top K (default 1)")
    p.add_argument("--negatives", type=int, default=4, help="hard negatives stored per query (default 4)")
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--finetune-batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    _add_common(p)


def _add_eval_retrieval(sub) -> None:
    p = sub.add_parser("retrieval", help="fine-tune MiniLM on kept queries; nDCG@10 / Recall@100 vs BM25 and MiniLM")
    p.add_argument("--data-dir", default="./datasets")
    p.add_argument("--qrels", required=True, help="BEIR qrels TSV (query-id, corpus-id, score)")
    p.add_argument("--queries", required=True, help="BEIR queries JSONL (_id, text)")
    p.add_argument("--corpus", help="the corpus (default: the one the kept rows were generated from)")
    p.add_argument("--run", help="train on this run's kept rows (default: the latest config's kept rows)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)


def _add_cot_rewrites(sub) -> None:
    p = sub.add_parser("cot-rewrites", help="answer-preserving step-by-step rewrites, verified; optional step labels")
    p.add_argument("--input", required=True, help="JSONL/Parquet: MATH (problem, solution, answer), GSM8K (question, "
                                                  "answer ending '#### N') or answer-only (question, answer)")
    p.add_argument("--limit", type=int, help="only the first N items")
    p.add_argument("--rewrites", type=int, default=1, help="rewrites per item: 1 greedy (default) or n sampled, distinct kept")
    p.add_argument("--temperature", type=float, default=0.8, help="temperature of the n sampled rewrites (n > 1)")
    p.add_argument("--max-tokens", type=int, default=384)
    p.add_argument("--route", choices=["expand", "rewrite", "unify"], help="force one route for every item")
    p.add_argument("--route-column", default="route", help="input column forcing the route per row when set (default route)")
    p.add_argument("--templates", help="your own step-templates JSON (shape of tasks/prompts/cot_rewrites/templates.json)")
    p.add_argument("--step-labels", action="store_true", help="Monte-Carlo step values + first bad step by binary search")
    p.add_argument("--continuations", type=int, default=4, help="continuations per probed prefix (default 4)")
    p.add_argument("--label-max-tokens", type=int, default=256, help="max tokens per continuation")
    p.add_argument("--seed", type=int, default=0)
    _add_common(p)


def _add_eval_cot_answers(sub) -> None:
    from tasks.cot_eval import default_path

    p = sub.add_parser("cot-answers", help="verifier on reference solutions: accept own gold, reject another's")
    p.add_argument("--math500", default=default_path("math500", "test500.jsonl"), help="MATH-500 JSONL (all rows)")
    p.add_argument("--gsm8k", default=default_path("gsm8k", "train.jsonl"), help="GSM8K JSONL")
    p.add_argument("--gsm8k-sample", type=int, default=1000, help="GSM8K rows sampled (0 = all)")
    p.add_argument("--seed", type=int, default=0)


def _add_eval_step_labels(sub) -> None:
    from tasks.cot_eval import default_path

    p = sub.add_parser("step-labels", help="first-error search vs BIG-Bench Mistake human labels")
    p.add_argument("--input", default=default_path("big_bench_mistake", "multistep_arithmetic.jsonl"))
    p.add_argument("--limit", type=int, default=30, help="traces sampled (default 30)")
    p.add_argument("--continuations", type=int, default=4, help="continuations per probed prefix (default 4)")
    p.add_argument("--max-tokens", type=int, default=128, help="max tokens per continuation")
    p.add_argument("--out", help="write per-trace results as JSONL")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--engine", choices=["transformers", "vllm"], default="transformers")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")


def _add_preference_labels(sub) -> None:
    p = sub.add_parser("preference-labels", help="self-reference AI preference labels, both orders, with a strength")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--pairs", help="JSONL/Parquet: prompt + response_a/response_b, or hh-rlhf chosen/rejected dialogues")
    src.add_argument("--prompts", help="JSONL/Parquet of prompts (prompt/question/turns): candidates sampled, then labelled")
    p.add_argument("--candidates", type=int, default=2, help="with --prompts: candidates per prompt, every pair labelled (default 2)")
    p.add_argument("--policy-model", help="with --prompts: model writing the candidates (default: --model)")
    p.add_argument("--mode", choices=["self-reference", "direct"], default="self-reference",
                   help="self-reference (annotator answers first, default) or direct (baseline: no reference turn)")
    p.add_argument("--principle", default="best for humanity", help="the one principle judged by (default 'best for humanity')")
    p.add_argument("--samples-per-order", type=int, default=2, help="critiques + verdicts per order (default 2)")
    p.add_argument("--temperature", type=float, default=0.1, help="critique sampling temperature (default 0.1)")
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--max-tokens", type=int, default=160, help="reference / critique / candidate token budget")
    p.add_argument("--limit", type=int, help="only the first N pairs (or prompts)")
    p.add_argument("--seed", type=int, default=0)
    _add_common(p)


def _add_eval_preferences(sub) -> None:
    p = sub.add_parser("preferences", help="preference labels vs human labels (hh-rlhf), position consistency")
    p.add_argument("--data-dir", default="./datasets")
    p.add_argument("--run", action="append", required=True,
                   help="run id (repeat to compare; one run is compared with the other mode's run on the same pairs)")
    p.add_argument("--json", help="also write the table as JSON here")


def _add_export_preferences(sub) -> None:
    p = sub.add_parser("preferences", help="preference_labels as TRL prompt/chosen/rejected (ties left out)")
    p.add_argument("--data-dir", default="./datasets")
    p.add_argument("--out", required=True, help="output .jsonl or .parquet")
    p.add_argument("--run", action="append", help="only these runs (repeatable; default: all)")
    p.add_argument("--mode", choices=["self-reference", "direct"], default="self-reference")
    p.add_argument("--consistent-only", action="store_true", help="only pairs both orders agreed on")
    p.add_argument("--min-strength", type=float, default=0.0, help="only pairs at least this strong")
    p.add_argument("--margin", action="store_true", help="add the strength as TRL's reward-model `margin` column")


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
    _add_retrieval_queries(flows)
    _add_cot_rewrites(flows)
    _add_preference_labels(flows)
    build = flows.add_parser("build", help="run a dataset recipe: several generators as one DAG")
    build.add_argument("--recipe", required=True, help="recipe YAML, e.g. deploy/recipes/cpu-demo.yaml")
    build.add_argument("--data-dir", help="override the recipe's data_dir")
    build.add_argument("--ray-address", help="join a running Ray cluster (default: start a local one)")
    evals = sub.add_parser("eval", help="evaluate a dataset against real labels").add_subparsers(dest="eval", required=True)
    _add_eval_retrieval(evals)
    _add_eval_cot_answers(evals)
    _add_eval_step_labels(evals)
    _add_eval_preferences(evals)
    exports = sub.add_parser("export", help="export a table for a trainer").add_subparsers(dest="export", required=True)
    _add_export_preferences(exports)
    serve = sub.add_parser("serve", help="serve the deployments of deploy/prefect.yaml with their schedules")
    serve.add_argument("--file", help="a prefect.yaml (default: the repo's deploy/prefect.yaml)")
    serve.add_argument("--only", action="append", help="serve only this deployment (name or flow/name); repeatable")
    serve.add_argument("--limit", type=int, help="at most this many flow runs at once")
    sql = sub.add_parser("sql", help="query the tables with DuckDB (interactive without a query)")
    sql.add_argument("--data-dir", default="./datasets")
    sql.add_argument("query", nargs="?")
    return ap


def cmd_run(args) -> int:
    import importlib

    if args.flow == "build":
        return _run_build(args)
    module, settings_cls, flow_fn, table = FLOWS[args.flow]
    mod = importlib.import_module(module)
    settings = getattr(mod, settings_cls)(**{k: v for k, v in vars(args).items() if k not in ("command", "flow")})
    summary = getattr(mod, flow_fn)(settings)
    _print_summary(args.data_dir, table, summary)
    return 0


def _run_build(args) -> int:
    import importlib

    module, settings_cls, flow_fn = BUILD
    mod = importlib.import_module(module)
    try:
        mod.load_recipe(args.recipe)  # checked before anything starts; the error names the file
    except (ValueError, OSError) as exc:
        print(f"datagen: bad recipe: {exc}", file=sys.stderr)
        return 2
    settings = getattr(mod, settings_cls)(recipe=args.recipe, data_dir=args.data_dir, ray_address=args.ray_address)
    summary = getattr(mod, flow_fn)(settings)
    print(f"\nrecipe {summary['recipe']}: {summary['rows_out']} records written to {summary['data_dir']}")
    for g in summary["generators"]:
        print(f"  {g['generator']:<24} {g['flow']:<18} run {g['run_id']}: {g['rows_in']} in, {g['rows_skipped']} already done, "
              f"{g['rows_out']} written, {g['wall_seconds']:.1f} s")
    return 0


def cmd_eval(args) -> int:
    import importlib

    module, fn = EVALS[args.eval].split(":")
    return getattr(importlib.import_module(module), fn)(args)


def cmd_export(args) -> int:
    import importlib

    module, fn = EXPORTS[args.export].split(":")
    return getattr(importlib.import_module(module), fn)(args)


def _print_summary(data_dir: str, table: str, summary: dict) -> None:
    from schemas.catalog import CATALOG_FILE, connect
    from tasks.datadir import DataDir

    d = DataDir(data_dir)
    print(f"\nrun {summary['run_id']}: {summary['rows_in']} source rows, {summary['rows_skipped']} already done, "
          f"{summary['rows_out']} records written, {summary['tokens_generated']} tokens, {summary['wall_seconds']:.1f} s")
    print(f"table:   {d.url(d.join(table))}")
    print(f"catalog: {d.url(d.join(CATALOG_FILE))}   (datagen sql --data-dir {data_dir})")
    con = connect(data_dir)
    if table in {r[0] for r in con.sql("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}:
        con.sql(SUMMARY_SQL[table].format(run_id=summary["run_id"])).show(max_width=160)


def cmd_sql(args) -> int:
    import duckdb

    from schemas.catalog import connect
    from tasks.datadir import DataDir

    if not DataDir(args.data_dir).exists():
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
    if args.command == "serve":
        from flows.serve import DEFAULT_FILE, serve_all

        serve_all(args.file or DEFAULT_FILE, only=args.only, limit=args.limit)
        return 0
    from tasks.inputs import InputError

    try:
        if args.command == "export":
            return cmd_export(args)
        return cmd_eval(args) if args.command == "eval" else cmd_run(args)
    except InputError as exc:
        print(f"datagen: bad input: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
