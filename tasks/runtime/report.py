"""A data card per run: one self-contained HTML file (no script, no CDN, no network) that says what the
run made — records kept and dropped per reason, completion-length histogram, cost, sample kept and
dropped records, the settings and lineage.

The numbers come from the run's own records through the generator's `drop_reason` (so every
generator, the user's own included, gets a card without writing one) and from its `runs` row.

Example:
    html, stats = build_report("./datasets", "20261204T170411-b79d09", MathPrograms(settings))
    write_report("./datasets", run_id, generator)   # -> ./datasets/reports/<run_id>.html
"""
from __future__ import annotations

import html
import json
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


def run_stats(data_dir, run: dict, generator) -> tuple[list[dict], dict]:
    """(the run's records, stats): kept / dropped per reason (the generator's drop_reason), completion
    tokens, cost."""
    import pyarrow.dataset as pads

    from schemas.store import TableStore

    records = TableStore(data_dir, generator.table).read(filter=pads.field("run_id") == run["run_id"]).to_pylist()
    outcomes = Counter(generator.drop_reason(r) or "kept" for r in records)
    tokens = [r["completion_tokens"] for r in records if r.get("completion_tokens") is not None]
    kept = outcomes.get("kept", 0)
    wall = run.get("wall_seconds") or 0.0
    stats = {
        "records": len(records), "kept": kept, "outcomes": dict(outcomes.most_common()),
        "completion_tokens": tokens, "tokens_generated": run.get("tokens_generated") or 0,
        "wall_seconds": wall, "engine_seconds_per_kept": round(wall / kept, 3) if kept else None,
        "table": generator.table.name,
    }
    return records, stats


def clean_stats(data_dir, table: str, record_ids: list[str]) -> dict:
    """What the cleaning steps found among these records: per eval file and pass, records checked and
    contaminated; per dedup setting, records checked and duplicates (exact, near). Empty: never checked."""
    import pyarrow.dataset as pads

    from schemas.store import TableStore
    from schemas.tables import CONTAMINATION, DUPLICATES

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
             f"started {_e(run['started_at'])} · {stats['wall_seconds']:.1f} s</p>",
             "<h2>Records</h2>", _table([("records written", stats["records"]), ("kept", stats["kept"]),
                                         ("source rows in", run.get("rows_in")), ("already done", run.get("rows_skipped")),
                                         ("tokens generated", stats["tokens_generated"]),
                                         ("wall seconds per kept record", stats["engine_seconds_per_kept"])], "summary"),
             "<h2>Kept and dropped, by reason</h2>", _bars(stats["outcomes"], "outcomes"),
             "<h2>Completion length (tokens)</h2>", _bars(_histogram(stats["completion_tokens"]), "lengths"),
             "<h2>Sample records</h2>", _samples(records, generator)]
    stats["cleaning"] = clean_stats(data_dir, stats["table"], [r["record_id"] for r in records])
    if stats["cleaning"]:  # after a `datagen clean` step (tasks/clean/) checked this run's records
        parts[-2:-2] = ["<h2>Cleaning</h2>", _table(stats["cleaning"].items(), "cleaning")]
    parts += ["<h2>Settings</h2>", _table(sorted(json.loads(run["parameters"] or "{}").items()), "settings"),
              "<h2>Lineage</h2>", _table([("run_id", run_id), ("table", stats["table"]),
                                          ("config hashes", ", ".join(sorted({r['config_hash'] for r in records}))),
                                          ("driver", run.get("driver")), ("engine choice", run.get("engine_choice"))], "lineage")]
    page = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>datagen {_e(run_id)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")
    return page, stats


def write_report(data_dir, run_id: str, generator) -> str:
    """Write the card to <data_dir>/reports/<run_id>.html (atomically); returns where, as a user writes it."""
    from schemas.datadir import DataDir

    d = DataDir(data_dir)
    page, _ = build_report(data_dir, run_id, generator)
    return d.url(d.write_bytes(page.encode(), d.join("reports", f"{run_id}.html")))


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


def _samples(records: list[dict], generator, per_side: int = 3) -> str:
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
