"""The `datagen` command line. Every `datagen run <generator>` is built from that generator's settings
model (tasks/generators/), and `datagen eval` / `datagen export` from the commands generators offer.

    datagen run math-programs --input samples/math_word_problems.jsonl --limit 5 --data-dir ./datasets
    datagen run --generator examples/passage_qa/generator.py:PassageQA --input examples/passage_qa/passages.jsonl
    datagen sql --data-dir ./datasets "SELECT exec_status, count(*) FROM math_programs GROUP BY 1"
    datagen sql --data-dir ./datasets          # interactive prompt; end statements with ';'
    datagen runs --data-dir ./datasets         # the latest runs and how they ended
    datagen -v run ...                         # the engines' and Ray's logs on the terminal too
    datagen doctor                             # what this machine can run
    datagen report RUN_ID --data-dir ./datasets      # the run's data card (written after every run too)
    datagen diff RUN_A RUN_B --data-dir ./datasets   # settings, counts and drops that differ
    datagen clean decontaminate --table T --against EVAL.jsonl   # flag eval copies (tasks/clean/)

A run ends cleanly on SIGTERM or Ctrl-C (its row says `interrupted`, Ray and Prefect's temporary server
stop); after a driver killed outright, the next `datagen run` or `datagen runs` on the host stops what
it left running and marks its row `interrupted` (tasks/runtime/lifecycle.py).
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import sys

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


def add_settings_arguments(parser: argparse.ArgumentParser, model) -> None:
    """One option per field of a settings model: `--field-name` (or the flags a field lists under
    `json_schema_extra={"cli": [...]}`), its type, choices for a Literal, --x/--no-x for a bool,
    required when the field has no default, help from its description. Options left out are left
    to the model's defaults, so an option is declared once: in the model."""
    from tasks.runtime.settings import RUN_FIELDS

    own = parser.add_argument_group("generator options")
    common = parser.add_argument_group("run options (every generator)")
    fields = sorted(model.model_fields.items(), key=lambda kv: (kv[0] in RUN_FIELDS, not kv[1].is_required()))
    for name, field in fields:
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        flags = list(extra.get("cli") or [f"--{name.replace('_', '-')}"])
        kind, choices = _option_type(field.annotation)
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        help_text = field.description or ""
        if not field.is_required() and default is not None and kind is not bool:
            help_text = f"{help_text} (default {default})".strip()
        kwargs = {"dest": name, "help": help_text or None, "default": argparse.SUPPRESS}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs.update(type=kind, required=field.is_required())
            if choices:
                kwargs["choices"] = choices
        (common if name in RUN_FIELDS else own).add_argument(*flags, **kwargs)


def _option_type(annotation) -> tuple[type, list | None]:
    """(type, choices) of a field's annotation: Optional[X] is X; Literal["a", "b"] gives choices."""
    import types
    import typing

    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return _option_type(args[0])
    if typing.get_origin(annotation) is typing.Literal:
        return type(args[0]), list(args)
    if annotation in (bool, int, float, str):
        return annotation, None
    return str, None


def _generators() -> dict:
    """name -> generator class, for every named generator (built-in and installed); one that fails
    to import is reported and left out instead of breaking every command."""
    from tasks.generators import installed, load_generator

    found = {}
    for name in installed():
        try:
            found[name] = load_generator(name)
        except Exception as exc:  # noqa: BLE001 - an installed plug-in's bug must not break the CLI
            print(f"datagen: generator {name!r} not available: {exc}", file=sys.stderr)
    return found


def _add_commands(sub, kind: str, generators: dict) -> None:
    """`datagen eval|export <name>` for every Command the generators offer."""
    for cls in generators.values():
        for command in getattr(cls, kind):
            p = sub.add_parser(command.name, help=command.help)
            command.add_arguments(p)
            p.set_defaults(main=command.main)
            if kind == "exports":  # where the rows go: a file, a Hub folder, the Hub (tasks/runtime/exports.py)
                from tasks.runtime.exports import add_output_arguments

                add_output_arguments(p)
                p.set_defaults(export_generator=cls.name, export_help=command.help)


def parser(user_generator: str | None = None) -> argparse.ArgumentParser:
    """The CLI. With `user_generator` (a `file.py:Class` or `module:Class` reference), the parser of
    `datagen run --generator REF [options]` instead."""
    if user_generator is not None:
        from tasks.generators import load_generator

        cls = load_generator(user_generator)
        ap = argparse.ArgumentParser(prog=f"datagen run --generator {user_generator}",
                                     description=cls.description or cls.name)
        add_settings_arguments(ap, cls.Settings)
        ap.set_defaults(command="run", flow=user_generator)
        return ap
    generators = _generators()
    ap = argparse.ArgumentParser(prog="datagen", description="Build LLM training datasets into Parquet tables.")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="stream the engines' and Ray's logs here too (by default they stay in Ray's log folder)")
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a generator (or a recipe: run build)",
                         description="datagen run GENERATOR [options], or datagen run --generator "
                                     "path/to/file.py:ClassName [options] for a generator of your own")
    flows = run.add_subparsers(dest="flow", required=True, metavar="GENERATOR")
    for name, cls in generators.items():
        add_settings_arguments(flows.add_parser(name, help=cls.description), cls.Settings)
    build = flows.add_parser("build", help="run a dataset recipe: several generators as one DAG")
    build.add_argument("--recipe", required=True, help="recipe YAML, e.g. deploy/recipes/cpu-demo.yaml")
    build.add_argument("--data-dir", help="override the recipe's data_dir")
    build.add_argument("--ray-address", help="join a running Ray cluster (default: start a local one)")
    evals = sub.add_parser("eval", help="evaluate a dataset against real labels").add_subparsers(dest="eval", required=True)
    _add_commands(evals, "evals", generators)
    exports = sub.add_parser("export", help="export a table for a trainer").add_subparsers(dest="export", required=True)
    _add_commands(exports, "exports", generators)
    from flows.clean import add_parsers as add_clean_parsers

    add_clean_parsers(sub)  # datagen clean decontaminate | dedup
    serve = sub.add_parser("serve", help="serve the deployments of deploy/prefect.yaml with their schedules")
    serve.add_argument("--file", help="a prefect.yaml (default: the repo's deploy/prefect.yaml)")
    serve.add_argument("--only", action="append", help="serve only this deployment (name or flow/name); repeatable")
    serve.add_argument("--limit", type=int, help="at most this many flow runs at once")
    serve_model = sub.add_parser("serve-model", help="serve a model on the Ray cluster (Ray Serve LLM, OpenAI-"
                                 "compatible) for --engine openai; runs until Ctrl-C")
    from tasks.runtime.serve_model import ServeModel

    add_settings_arguments(serve_model, ServeModel)
    serve_model.add_argument("--ray-address", help="join this Ray cluster instead of starting a local one")
    sql = sub.add_parser("sql", help="query the tables with DuckDB (interactive without a query)")
    sql.add_argument("--data-dir", default="./datasets")
    sql.add_argument("query", nargs="?")
    sub.add_parser("doctor", help="what this machine can run: packages, GPU, engines, model, sandbox, Ray, Prefect")
    runs = sub.add_parser("runs", help="the latest runs of a data dir: status, rows, errors")
    runs.add_argument("--data-dir", default="./datasets")
    runs.add_argument("--last", type=int, default=20, help="how many runs to show (default 20)")
    report = sub.add_parser("report", help="write a run's data card: one self-contained HTML file")
    report.add_argument("run_id")
    report.add_argument("--data-dir", default="./datasets")
    diff = sub.add_parser("diff", help="what changed between two runs: settings, counts, drops, speed")
    diff.add_argument("run_a")
    diff.add_argument("run_b")
    diff.add_argument("--data-dir", default="./datasets")
    compact = sub.add_parser("compact", help="merge each finished run's small part files into one (atomically)")
    compact.add_argument("--data-dir", default="./datasets")
    compact.add_argument("--table", action="append", help="only this table (repeatable; default: every table)")
    check = sub.add_parser("sandbox-check", help="print the sandbox's isolation report and run the hostile-program checks")
    check.add_argument("--json", action="store_true", help="one JSON object instead of the report and table")
    return ap


def cmd_run(args) -> int:
    from pydantic import ValidationError

    from tasks.generators import load_generator

    if args.flow == "build":
        return _run_build(args)
    cls = load_generator(args.flow)
    try:
        settings = cls.Settings(**{k: v for k, v in vars(args).items() if k not in ("command", "flow", "verbose")})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}" for e in exc.errors())
        print(f"datagen run {cls.name}: bad options: {problems}", file=sys.stderr)
        return 2
    from tasks.runtime.preflight import PreflightError, preflight

    try:  # the model, the data dir and the whole input, before Prefect, Ray or a model start
        preflight(cls(settings))  # an InputError goes to main(): "datagen: bad input: ..."
    except PreflightError as exc:
        print(f"datagen run {cls.name}: {exc}", file=sys.stderr)
        return 2
    from flows.generate import flow_for

    backend, why = settings.engine_choice()
    print(f"engine: {backend} ({why})", flush=True)
    _quiet_prefect_console()
    summary = flow_for(args.flow)(generator=args.flow, settings=settings.model_dump())
    _print_summary(settings.data_dir, cls, summary)
    return 0


def _run_build(args) -> int:
    from flows.build import BuildSettings, build, load_recipe
    from tasks.runtime.inputs import InputError

    from flows.clean import preflight_step as preflight_clean
    from tasks.generators import load_generator
    from tasks.runtime.preflight import PreflightError, preflight

    try:
        recipe = load_recipe(args.recipe)  # checked before anything starts; the error names the file
        if args.data_dir:
            recipe = recipe.model_copy(update={"data_dir": args.data_dir})
        for step in recipe.generators:  # each step's model, data dir and input, as `datagen run` checks them
            placeholder = {"pairs": "(written by the recipe)"} if step.pairs_from else {}
            generator = load_generator(step.flow)(recipe.settings_params(step, **placeholder))
            try:
                preflight(generator, load=not step.pairs_from)  # an InputError goes to main()
                preflight_clean(step.clean)  # its `clean:` steps' evaluation files, read whole
            except PreflightError as exc:
                print(f"datagen: recipe {args.recipe}: generator {step.name}: {exc}", file=sys.stderr)
                return 2
    except (ValueError, OSError) as exc:
        if isinstance(exc, InputError):
            raise
        print(f"datagen: bad recipe: {exc}", file=sys.stderr)
        return 2
    _quiet_prefect_console()
    summary = build(BuildSettings(recipe=args.recipe, data_dir=args.data_dir, ray_address=args.ray_address))
    print(f"\nrecipe {summary['recipe']}: {summary['rows_out']} records written to {summary['data_dir']}")
    for g in summary["generators"]:
        print(f"  {g['generator']:<24} {g['flow']:<18} run {g['run_id']}: {g['rows_in']} in, {g['rows_skipped']} already done, "
              f"{g['rows_out']} written, {g['wall_seconds']:.1f} s")
    for c in summary.get("clean", []):
        print(f"  {c['generator']:<24} clean {c['step']:<12} run {c['run_id']}: {c['checked']} checked, {c['flagged']} flagged")
    return 0


def cmd_command(args) -> int:
    """`datagen eval|export <name>`: the generator's command, imported only now."""
    import importlib

    if args.command == "export":
        from tasks.runtime.exports import output_problem

        if problem := output_problem(args):
            print(f"datagen export {args.export}: {problem}", file=sys.stderr)
            return 2
    module, fn = args.main.split(":")
    return getattr(importlib.import_module(module), fn)(args)


def _print_summary(data_dir: str, generator, summary: dict) -> None:
    from schemas.catalog import CATALOG_FILE, connect
    from schemas.datadir import DataDir

    d, table = DataDir(data_dir), generator.table.name
    print(f"\nrun {summary['run_id']}: {summary['rows_in']} source rows, {summary['rows_skipped']} already done, "
          f"{summary['rows_out']} records written, {summary['tokens_generated']} tokens, {summary['wall_seconds']:.1f} s")
    if summary.get("engine_requests"):
        print(f"engine:  {summary['engine']}: {summary['engine_requests']} requests, "
              f"{summary['engine_mean_in_flight']:.1f} in flight on average, "
              f"busy {summary['engine_busy_fraction']:.0%} of its time")
    if summary.get("endpoint_http_requests") is not None:  # --engine openai
        cost = f", cost {summary['cost']:.6g} ({summary['cost_per_kept_record'] or 0:.3g} per kept record)" \
            if summary.get("cost") is not None else ""
        print(f"endpoint: {summary['endpoint_http_requests']} HTTP requests, {summary['endpoint_retries']} retries, "
              f"{summary['endpoint_throttled']} throttled, {summary['endpoint_failed_requests']} failed; usage "
              f"{summary['usage_prompt_tokens']} prompt + {summary['usage_completion_tokens']} completion tokens{cost}")
    print(f"table:   {d.url(d.join(table))}")
    print(f"catalog: {d.url(d.join(CATALOG_FILE))}   (datagen sql --data-dir {data_dir})")
    if summary.get("report"):
        print(f"card:    {summary['report']}")
    con = connect(data_dir)
    views = {r[0] for r in con.sql("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    if generator.summary_sql and table in views:
        con.sql(generator.summary_sql.format(run_id=summary["run_id"])).show(max_width=160)


def cmd_sandbox_check(args) -> int:
    from tasks.sandbox import SandboxUnavailable
    from tasks.sandbox.checks import format_checks, run_checks

    try:
        outcome = run_checks()
    except SandboxUnavailable as exc:
        print(f"datagen: the sandbox cannot run programs here: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(outcome))
    else:
        print("isolation:")
        for key, value in outcome["report"].items():
            print(f"  {key}: {value}")
        print(format_checks(outcome))
    return 0 if outcome["passed"] else 1


def cmd_sql(args) -> int:
    import duckdb

    from schemas.catalog import ReadOnlyError, check_read_only, connect
    from schemas.datadir import DataDir
    from schemas.store import retry_vanished

    if not DataDir(args.data_dir).exists():
        print(f"datagen sql: data dir {args.data_dir} does not exist", file=sys.stderr)
        return 2
    skipped: dict[str, str] = {}
    con = connect(args.data_dir, read_only=True, skipped=skipped)
    for file, why in skipped.items():
        print(f"datagen sql: left out damaged file {file} ({why}); the next run of its generator moves it "
              "to _quarantine and redoes its rows", file=sys.stderr)
    if args.query:
        try:
            check_read_only(con, args.query)
            retry_vanished(lambda: _print_result(con.sql(args.query)))  # a compaction may swap a run's folder meanwhile
        except (duckdb.Error, ReadOnlyError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    return _repl(con)


def _print_result(result) -> None:
    if result is not None:
        result.show(max_width=200, max_rows=200)


def cmd_compact(args) -> int:
    """Compact every table's finished runs (a run still `running` under a live driver is left alone)."""
    from schemas.catalog import refresh_catalog
    from schemas.datadir import DataDir
    from schemas.store import CompactionUnsupported, TableStore
    from schemas.tables import RUNS, TABLES
    from tasks.runtime.runs import mark_stale_runs

    d = DataDir(args.data_dir)
    if not d.exists():
        print(f"datagen compact: data dir {args.data_dir} does not exist", file=sys.stderr)
        return 2
    tables = {**TABLES, **{cls.table.name: cls.table for cls in _generators().values()}}
    unknown = sorted(set(args.table or ()) - set(tables))
    if unknown:
        print(f"datagen compact: no table {', '.join(unknown)} (tables: {', '.join(sorted(tables))})", file=sys.stderr)
        return 2
    mark_stale_runs(args.data_dir)
    runs = TableStore(d, RUNS).read(columns=["run_id", "status"]).to_pylist()
    running = {r["run_id"] for r in runs if r["status"] == "running"}
    for name in args.table or sorted(t for t in tables if t != RUNS.name):
        store = TableStore(d, tables[name])
        finished = {f.rsplit("/run_id=", 1)[1].split("/", 1)[0] for f in store.files()} - running
        try:
            done = store.compact(finished)
        except CompactionUnsupported as exc:
            print(f"datagen compact: {exc}", file=sys.stderr)
            return 2
        if done:
            before, after = sum(b for b, _ in done.values()), sum(a for _, a in done.values())
            print(f"{name}: {len(done)} runs, {before} part files -> {after}")
    if running:
        print(f"left alone (still running): {', '.join(sorted(running))}")
    refresh_catalog(args.data_dir)
    return 0


def cmd_runs(args) -> int:
    """The latest runs, after stopping what dead drivers left and marking their rows `interrupted`."""
    from schemas.catalog import connect
    from schemas.datadir import DataDir
    from tasks.runtime.runs import mark_stale_runs

    if not DataDir(args.data_dir).exists():
        print(f"datagen runs: data dir {args.data_dir} does not exist", file=sys.stderr)
        return 2
    for run_id in mark_stale_runs(args.data_dir):
        print(f"run {run_id}: its driver died; marked interrupted")
    con = connect(args.data_dir)
    if "runs" not in {r[0] for r in con.sql("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}:
        print(f"no runs in {args.data_dir} yet")
        return 0
    con.sql("SELECT run_id, flow, status, started_at::TIMESTAMP(0) AS started, round(wall_seconds, 1) AS seconds, "
            "rows_in, rows_skipped, rows_out, left(coalesce(error, ''), 80) AS error FROM runs "
            f"ORDER BY started_at DESC LIMIT {int(args.last)}").show(max_width=200, max_rows=args.last)
    return 0


def cmd_diff(args) -> int:
    """Two runs side by side: every setting, count and drop reason that differs, and the totals."""
    from schemas.store import TableStore
    from schemas.tables import RUNS

    rows = {r["run_id"]: r for r in TableStore(args.data_dir, RUNS).read().to_pylist()}
    missing = [run_id for run_id in (args.run_a, args.run_b) if run_id not in rows]
    if missing:
        print(f"datagen diff: no run {', '.join(missing)} in {args.data_dir} (datagen runs lists them)", file=sys.stderr)
        return 2
    a, b = rows[args.run_a], rows[args.run_b]
    sides = {
        **{f"setting {k}": v for k, v in _flat(a, b, lambda r: json.loads(r["parameters"] or "{}")).items()},
        **{f"count {k}": v for k, v in _flat(a, b, lambda r: dict(r["counts"] or [])).items()},
        **{f"dropped {k}": v for k, v in _flat(a, b, lambda r: dict(r["dropped_by_reason"] or [])).items()},
        **{k: (a[k], b[k]) for k in ("flow", "status", "model", "engine", "rows_in", "rows_skipped", "rows_out",
                                     "tokens_generated", "wall_seconds", "engine_busy_fraction") if a[k] != b[k]},
    }
    width = max([len(k) for k in sides] + [4])
    print(f"{'':<{width}}  {args.run_a:<24}  {args.run_b}")
    for key, (left, right) in sides.items():
        print(f"{key:<{width}}  {_show(left):<24}  {_show(right)}")
    if not sides:
        print("(no difference in settings, counts or totals)")
    return 0


def _flat(a: dict, b: dict, part) -> dict:
    left, right = part(a), part(b)
    return {k: (left.get(k), right.get(k)) for k in sorted(set(left) | set(right)) if left.get(k) != right.get(k)}


def _show(value) -> str:
    return "-" if value is None else (f"{value:.3g}" if isinstance(value, float) else str(value))


def _repl(con) -> int:
    from schemas.catalog import check_read_only

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
            check_read_only(con, statement)
            result = con.sql(statement)
            if result is not None:
                result.show(max_width=200, max_rows=200)
        except Exception as exc:  # any DuckDB error is shown; the prompt stays open
            print(f"error: {exc}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-v"], ["--verbose"]):  # before the command: read by the Ray session (ray_stage.verbose)
        os.environ["DATAGEN_VERBOSE"] = "1"
        argv = argv[1:]
    user_generator = None
    if argv[:1] == ["run"] and len(argv) > 1 and argv[1].startswith("--generator"):
        # datagen run --generator path/to/file.py:Class [options]
        if "=" in argv[1]:
            user_generator, argv = argv[1].split("=", 1)[1], argv[2:]
        elif len(argv) > 2:
            user_generator, argv = argv[2], argv[3:]
        else:
            print("datagen run --generator: give path/to/file.py:ClassName", file=sys.stderr)
            return 2
    from tasks.runtime.inputs import InputError

    try:
        args = parser(user_generator).parse_args(argv)
    except ValueError as exc:  # a generator reference that does not load
        print(f"datagen: {exc}", file=sys.stderr)
        return 2
    if args.command == "sql":
        return cmd_sql(args)
    if args.command == "sandbox-check":
        return cmd_sandbox_check(args)
    if args.command == "doctor":
        from flows.doctor import main as doctor

        return doctor()
    if args.command == "diff":
        return cmd_diff(args)
    if args.command == "compact":
        return cmd_compact(args)
    if args.command == "report":
        from tasks.generators import load_generator
        from tasks.runtime.report import read_run, write_report

        try:
            run = read_run(args.data_dir, args.run_id)
            generator = load_generator(run["flow"])(json.loads(run["parameters"]))
            print(write_report(args.data_dir, args.run_id, generator))
        except ValueError as exc:
            print(f"datagen report: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.command in ("run", "runs"):
        _reap_dead_drivers()
    if args.command == "runs":
        return cmd_runs(args)
    if args.command == "serve-model":
        from flows.serve_model import serve_model

        return serve_model(args)
    if args.command == "serve":
        from flows.serve import DEFAULT_FILE, serve_all

        serve_all(args.file or DEFAULT_FILE, only=args.only, limit=args.limit)
        return 0
    from tasks.runtime.lifecycle import claim_driver, interruption, stop_on_signals

    claim_driver()  # what this process starts (Ray, Prefect's server) carries its token
    verbose = _verbose()
    try:
        with stop_on_signals():
            return cmd_run(args) if args.command == "run" else cmd_command(args)
    except InputError as exc:
        print(f"datagen: bad input: {exc}", file=sys.stderr)
        return 2
    except BaseException as exc:  # one handler: a `raise` inside one except clause skips its siblings
        if name := interruption(exc):
            print(f"datagen: interrupted by {name}: the run is marked interrupted and what it committed is kept; "
                  "rerun the same command to do the rest", file=sys.stderr)
            return 128 + getattr(signal, name)
        if isinstance(exc, OSError) and _disk_full(exc):
            print(f"datagen: disk full: {exc}. Nothing partial was committed; free some space and rerun the same "
                  "command to do the rest", file=sys.stderr)
            return 1
        if verbose or not isinstance(exc, Exception):
            raise
        hint = ("a run's row in `runs` says failed; the engines' and Ray's logs are in the folder printed above; "
                if args.command == "run" else "")
        print(f"datagen: {args.command} failed: {_root_cause(exc)}\n  ({hint}datagen -v shows the traceback)",
              file=sys.stderr)
        return 2


def _disk_full(exc: OSError) -> bool:
    return exc.errno == errno.ENOSPC or "No space left" in str(exc)


def _root_cause(exc: BaseException) -> str:
    """The failure in one line: the last `SomeError: message` line of its text and its causes' (a Ray
    error carries the remote traceback as text, whose last such line is where it began)."""
    import re
    import traceback

    text = "".join(traceback.format_exception(exc))
    found = re.findall(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit)\b:?.*)$", text, flags=re.M)
    return (found[-1] if found else f"{type(exc).__name__}: {exc}").strip()[:300]


def _verbose() -> bool:
    return os.environ.get("DATAGEN_VERBOSE", "") not in ("", "0")


def _quiet_prefect_console() -> None:
    """Unless verbose: Prefect's console copies of a failure (every task and the flow log its traceback)
    are left out; they still reach the Prefect API, and the CLI says what failed in one line."""
    import logging

    if _verbose():
        return
    from prefect.logging.configuration import setup_logging

    setup_logging()
    for handler in logging.getLogger().handlers:
        if type(handler).__name__ == "PrefectConsoleHandler":
            handler.addFilter(lambda record: not (record.levelno >= logging.ERROR and record.name.startswith("prefect")))


def _reap_dead_drivers() -> None:
    from tasks.runtime.lifecycle import reap_orphans

    if pids := reap_orphans():
        print(f"datagen: stopped {len(pids)} processes left running by a datagen driver that died "
              f"(pids {' '.join(map(str, pids))})", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
