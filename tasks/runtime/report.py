"""A data card per run: one self-contained HTML file (no script, no CDN, no network) that says what the
run made — records kept and dropped per reason, the pass rate over source rows, completion-length
histogram, the distributions of the generator's own scores (`Generator.card_columns`: preference
strength, retrieval rank and score, log-probabilities ...), cost (tokens, engine-seconds per kept record
and the engine-hours a million kept records would take at this rate), sample kept and dropped records,
the settings and lineage. Inside a Prefect flow the same numbers are published as a markdown artifact
(key `<generator>-data-card`).

The numbers come from the run's own records through the generator's `drop_reason` (so every
generator, the user's own included, gets a card without writing one) and from its `runs` row.

Example:
    html, stats = build_report("./datasets", "20261204T170411-b79d09", MathPrograms(settings))
    write_report("./datasets", run_id, generator)   # -> ./datasets/reports/<run_id>.html
"""
from __future__ import annotations

import html
import json
import math
from collections import Counter

TEXT_COLUMNS = ("question", "query", "document", "program", "rewritten_text", "prompt", "raw_output")


def read_run(data_dir, run_id: str) -> dict:
    """The run's `runs` row, or a ValueError naming the data dir."""
    import pyarrow.dataset as pads

    from schemas.store import TableStore
    from schemas.tables import RUNS

    runs = TableStore(data_dir, RUNS).read(filter=pads.field("run_id") == run_id).to_pylist()
    if not runs:
        raise ValueError(f"no run {run_id} in {data_dir} (datagen runs lists them)")
    return runs[0]


BATCH_ROWS = 4_096  # records the card holds as Python dicts at once: it streams the run's records


def run_stats(data_dir, run: dict, generator) -> tuple[list[dict], dict]:
    """(a few sample records, stats): kept / dropped per reason (the generator's drop_reason), completion
    tokens, cost. The run's records are read 4,096 at a time: what is kept of them is numbers in arrays
    (8 bytes a record), source ids as 64-bit hashes, record ids in Arrow, and the first samples."""
    from array import array

    import numpy as np
    import pyarrow as pa
    import pyarrow.dataset as pads

    from schemas.store import TableStore

    store = TableStore(data_dir, generator.table)
    files = store.files()
    batches = store.dataset(files).to_batches(filter=pads.field("run_id") == run["run_id"],
                                              batch_size=BATCH_ROWS) if files else ()
    key = generator.key_column
    outcomes, tokens, samples = Counter(), array("q"), {"kept": [], "dropped": []}
    distributions = {column: array("d") for column in generator.card_columns}
    source_hashes, kept_hashes, record_ids, config_hashes, count = [], [], [], set(), 0
    for batch in batches:
        if not batch.num_rows:
            continue
        records = batch.to_pylist()
        count += len(records)
        record_ids.append(batch.column("record_id"))
        reasons = [generator.drop_reason(r) for r in records]
        outcomes.update(reason or "kept" for reason in reasons)
        tokens.extend(r["completion_tokens"] for r in records if r.get("completion_tokens") is not None)
        for column, values in distributions.items():
            values.extend(float(r[column]) for r in records if _number(r.get(column)))
        hashes = np.array([hash(r[key]) for r in records], dtype=np.int64)
        source_hashes.append(np.unique(hashes))
        kept_hashes.append(np.unique(hashes[[reason is None for reason in reasons]]))
        config_hashes.update(r["config_hash"] for r in records)
        for r, reason in zip(records, reasons):
            side = samples["kept" if reason is None else "dropped"]
            if len(side) < SAMPLES_PER_SIDE:
                side.append(r)
    sources = len(np.unique(np.concatenate(source_hashes))) if source_hashes else 0
    sources_kept = len(np.unique(np.concatenate(kept_hashes))) if kept_hashes else 0
    kept = outcomes.get("kept", 0)
    wall = run.get("wall_seconds") or 0.0
    per_kept = wall / kept if kept else None
    stats = {
        "records": count, "kept": kept, "outcomes": dict(outcomes.most_common()),
        "sources": sources, "sources_kept": sources_kept,
        "pass_rate": round(sources_kept / sources, 4) if sources else None,
        "completion_tokens": tokens, "tokens_generated": run.get("tokens_generated") or 0,
        "wall_seconds": wall, "engine_seconds_per_kept": round(per_kept, 3) if per_kept is not None else None,
        "engine_hours_per_million_kept": round(per_kept * 1e6 / 3600, 1) if per_kept is not None else None,
        "distributions": distributions,
        "table": generator.table.name,
        "record_ids": pa.chunked_array(record_ids, pa.string()) if record_ids else pa.chunked_array([], pa.string()),
        "config_hashes": sorted(config_hashes),
    }
    return samples["kept"] + samples["dropped"], stats


SAMPLES_PER_SIDE = 3


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def clean_stats(data_dir, table: str, record_ids) -> dict:
    """What the cleaning steps found among these records: per eval file and pass, records checked and
    contaminated; per dedup setting, records checked and duplicates (exact, near). Empty: never checked."""
    import pyarrow.dataset as pads

    from schemas.store import TableStore
    from schemas.tables import CONTAMINATION, DUPLICATES

    if not isinstance(record_ids, (list, tuple)):  # an Arrow array of the run's ids: kept out of Python
        record_ids = record_ids.combine_chunks() if hasattr(record_ids, "combine_chunks") else record_ids
    mine = (pads.field("source_table") == table) & pads.field("record_id").isin(record_ids)
    out: dict[str, str] = {}
    checked: dict[tuple, set] = {}
    flagged: dict[tuple, set] = {}
    for r in TableStore(data_dir, CONTAMINATION).read(columns=["record_id", "eval_file", "method", "contaminated"],
                                                      filter=mine).to_pylist():
        key = (r["eval_file"], r["method"])
        checked.setdefault(key, set()).add(r["record_id"])
        if r["contaminated"]:
            flagged.setdefault(key, set()).add(r["record_id"])
    for path, method in sorted(checked):
        out[f"contaminated: {path.rsplit('/', 1)[-1]} ({method})"] = (
            f"{len(flagged.get((path, method), ()))} of {len(checked[(path, method)])} checked")
    dups = TableStore(data_dir, DUPLICATES).read(columns=["record_id", "match"], filter=mine).to_pylist()
    if dups:
        kinds = {r["record_id"]: r["match"] for r in dups if r["match"]}
        tally = Counter(kinds.values())
        out["near-duplicates left out"] = (f"{len(kinds)} of {len({r['record_id'] for r in dups})} checked "
                                           f"({tally['exact']} exact, {tally['near']} near)")
    return out


def build_report(data_dir, run_id: str, generator) -> tuple[str, dict]:
    """The card of run `run_id`, made by `generator` (an instance with the run's settings)."""
    run = read_run(data_dir, run_id)
    records, stats = run_stats(data_dir, run, generator)
    parts = [f"<h1>{_e(run['flow'])} — run {_e(run_id)}</h1>",
             f"<p class=meta>{_e(run['status'])} · model {_e(run['model'])} · engine {_e(run['engine'])} · "
             f"started {run['started_at']:%Y-%m-%d %H:%M:%S} UTC · {stats['wall_seconds']:.1f} s</p>",
             "<h2>Records</h2>", _table(_summary_rows(run, stats), "summary"),
             "<h2>Kept and dropped, by reason</h2>", _bars(stats["outcomes"], "outcomes"),
             "<h2>Completion length (tokens)</h2>", _bars(_histogram(stats["completion_tokens"]), "lengths")]
    for column, title in generator.card_columns.items():
        parts += [f"<h2>{_e(title)} <code>{_e(column)}</code></h2>",
                  _bars(_value_histogram(stats["distributions"][column]), f"dist-{column}")]
    stats["cleaning"] = clean_stats(data_dir, stats["table"], stats.pop("record_ids"))
    if stats["cleaning"]:  # after a `datagen clean` step (tasks/clean/) checked this run's records
        parts += ["<h2>Cleaning</h2>", _table(stats["cleaning"].items(), "cleaning")]
    parts += ["<h2>Cost</h2>", _table(_cost_rows(run, stats), "cost"),
              "<h2>Sample records</h2>", _samples(records, generator)]
    parts += ["<h2>Settings</h2>", _table(sorted(json.loads(run["parameters"] or "{}").items()), "settings"),
              "<h2>Lineage</h2>", _table([("run_id", run_id), ("table", stats["table"]),
                                          ("config hashes", ", ".join(stats["config_hashes"])),
                                          ("driver", run.get("driver")), ("engine choice", run.get("engine_choice"))], "lineage")]
    page = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>datagen {_e(run_id)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")
    return page, stats


def _summary_rows(run: dict, stats: dict) -> list[tuple]:
    rate = f"{stats['sources_kept']} of {stats['sources']}" + (f" ({stats['pass_rate']:.0%})" if stats["sources"] else "")
    return [("records written", stats["records"]), ("kept", stats["kept"]),
            ("source rows in", run.get("rows_in")), ("already done", run.get("rows_skipped")),
            ("source rows with a kept record (pass rate)", rate)]


def _cost_rows(run: dict, stats: dict) -> list[tuple]:
    nothing = "— (nothing kept)"
    hours = stats["engine_hours_per_million_kept"]
    return [("tokens generated", stats["tokens_generated"]), ("wall seconds", round(stats["wall_seconds"], 1)),
            ("engine-seconds per kept record", nothing if hours is None else stats["engine_seconds_per_kept"]),
            (f"engine-hours per million kept records ({run['engine']}, this machine, this rate)",
             nothing if hours is None else hours)]


def write_report(data_dir, run_id: str, generator, publish: bool = False) -> str:
    """Write the card to <data_dir>/reports/<run_id>.html (atomically); returns where, as a user writes it.
    `publish`: also a Prefect markdown artifact of its numbers (inside a flow run)."""
    from schemas.datadir import DataDir

    d = DataDir(data_dir)
    page, stats = build_report(data_dir, run_id, generator)
    where = d.url(d.write_bytes(page.encode(), d.join("reports", f"{run_id}.html")))
    if publish:
        from prefect.artifacts import create_markdown_artifact

        run = read_run(data_dir, run_id)
        create_markdown_artifact(key=f"{generator.name}-data-card".lower().replace("_", "-"),
                                 markdown=card_markdown(run, stats, generator, where),
                                 description=f"{generator.name} run {run_id}: data card {where}")
    return where


def card_markdown(run: dict, stats: dict, generator, where: str) -> str:
    """The card's numbers as markdown (the Prefect artifact): summary, outcomes, distributions, cost."""
    def table(header: tuple, rows) -> list[str]:
        return [f"| {' | '.join(header)} |", f"|{'---|' * len(header)}",
                *(f"| {' | '.join(str(c).replace('|', '/') for c in row)} |" for row in rows), ""]

    lines = [f"# {generator.name} — run {run['run_id']}", "",
             f"{run['status']} · model `{run['model']}` · engine {run['engine']} · card: `{where}`", ""]
    lines += table(("", ""), _summary_rows(run, stats))
    lines += table(("outcome", "records"), stats["outcomes"].items())
    for column, values in stats["distributions"].items():
        if values:
            lines += table((column, "min", "median", "max", "n"),
                           [(generator.card_columns[column], f"{min(values):.4g}",
                             f"{sorted(values)[len(values) // 2]:.4g}", f"{max(values):.4g}", len(values))])
    lines += table(("cost", ""), _cost_rows(run, stats))
    return "\n".join(lines)


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


def _table(rows, css_id: str) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f"<table id={css_id}>{body}</table>"


def _bars(counts: dict, css_id: str) -> str:
    """A horizontal bar chart as inline SVG, one bar per (label, count)."""
    if not counts:
        return f"<p id={css_id}>none</p>"
    top, height = max(counts.values()) or 1, 22
    rows = []
    for i, (label, count) in enumerate(counts.items()):
        width = 420 * count / top
        rows.append(f"<text x=0 y={i * height + 15}>{_e(label)}</text>"
                    f"<rect x=170 y={i * height + 4} width={width:.1f} height=14></rect>"
                    f"<text x={176 + width:.1f} y={i * height + 15} data-count={count}>{count}</text>")
    return (f"<svg id={css_id} role=img width=660 height={len(counts) * height + 6} "
            f"xmlns='http://www.w3.org/2000/svg'>{''.join(rows)}</svg>")


def _histogram(values: list[int], bins: int = 8) -> dict:
    if not values:
        return {}
    low, high = min(values), max(values)
    step = max(1, -(-(high - low + 1) // bins))
    counts = Counter((v - low) // step for v in values)
    return {f"{low + b * step}–{low + (b + 1) * step - 1}": counts.get(b, 0) for b in range((high - low) // step + 1)}


def _value_histogram(values: list[float], bins: int = 8) -> dict:
    """Equal-width bins over [min, max] of any numbers (whole numbers: _histogram's integer bins)."""
    if not values or all(float(v).is_integer() for v in values):
        return _histogram([int(v) for v in values], bins)
    low, high = min(values), max(values)
    width = (high - low) / bins or 1.0
    counts = Counter(min(int((v - low) / width), bins - 1) for v in values)
    return {f"{low + b * width:.3g} – {low + (b + 1) * width:.3g}": counts.get(b, 0) for b in range(bins)}


def _samples(records: list[dict], generator, per_side: int = SAMPLES_PER_SIDE) -> str:
    picked = {"kept": [], "dropped": []}
    for r in records:
        side = "kept" if generator.drop_reason(r) is None else "dropped"
        if len(picked[side]) < per_side:
            picked[side].append(r)
    out = []
    for side, rows in picked.items():
        for r in rows:
            seen, texts = set(), ""  # a text shown once (raw_output only where it differs from the parsed one)
            for column in TEXT_COLUMNS:
                text = str(r[column]).strip() if r.get(column) else ""
                if text and text not in seen:
                    seen.add(text)
                    texts += f"<dt>{_e(column)}</dt><dd>{_e(text[:600])}</dd>"
            reason = generator.drop_reason(r)
            out.append(f"<div class='sample {side}'><b>{side}{'' if reason is None else ': ' + _e(reason)}</b> "
                       f"<code>{_e(r['source_id'])}</code><dl>{texts}</dl></div>")
    return "".join(out) or "<p>no records</p>"


STYLE = """body{font:14px/1.45 system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:22px}h2{font-size:17px;margin-top:1.6em;border-bottom:1px solid #ddd}.meta{color:#666}
table{border-collapse:collapse}th,td{padding:3px 10px;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
th{font-weight:600;color:#444}svg text{font-size:12px}svg rect{fill:#4a7fb5}
.sample{border-left:4px solid #4a7fb5;padding:4px 10px;margin:10px 0;background:#fafafa}
.sample.dropped{border-color:#c0504d}dt{font-weight:600;color:#555}dd{margin:0 0 6px 0;white-space:pre-wrap}"""
