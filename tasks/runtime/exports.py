"""Where an export goes: a file (`--out`), a Hugging Face dataset folder (`--hub-folder`), the Hub
itself (`--push-to-hub`). Every `datagen export <name>` builds its rows and hands them to `deliver`.

    datagen export math-programs --data-dir ./datasets --hub-folder ./hub/gsm8k-programs
    -> ./hub/gsm8k-programs/data/train-00000-of-00001.parquet
       ./hub/gsm8k-programs/README.md   (a dataset card: YAML metadata + how the data was made)
    datasets.load_dataset("./hub/gsm8k-programs")["train"]   # reads it, features as declared
    datagen export math-programs --data-dir ./datasets --push-to-hub my-org/gsm8k-programs [--private]

The card's YAML is what the Hub and `datasets` read: `configs` (the data files of the train split),
`dataset_info.features` (from the export's explicit Arrow schema, in the Hub's own notation) and the
split size; its text says how the rows were made: generator, model and engine, every run that wrote
them (from the `runs` table) with its settings, and the lineage columns a row carries. Uploading uses
huggingface_hub with the machine's own login (HF_TOKEN or `hf auth login`): datagen never reads,
stores or prints the token.
"""
from __future__ import annotations

import json
import tempfile

import pyarrow as pa

DATA_FILE = "data/train-00000-of-00001.parquet"
# The Hub's scalar type names where they differ from Arrow's (datasets.Value)
_HUB_DTYPES = {"double": "float64", "float": "float32", "halffloat": "float16"}


def add_output_arguments(p) -> None:
    """The options every `datagen export` takes for where its rows go."""
    p.add_argument("--out", help="write a .jsonl or .parquet file")
    p.add_argument("--hub-folder", metavar="DIR",
                   help="write a Hugging Face dataset folder: data/*.parquet + README.md card (datasets.load_dataset(DIR))")
    p.add_argument("--push-to-hub", metavar="REPO",
                   help="upload that folder as the dataset repo REPO (owner/name), with the machine's Hugging Face login")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")


def output_problem(args) -> str | None:
    """Why the output options cannot work, before any row is read."""
    if not (args.out or args.hub_folder or args.push_to_hub):
        return "say where the rows go: --out FILE, --hub-folder DIR and/or --push-to-hub REPO"
    if args.private and not args.push_to_hub:
        return "--private goes with --push-to-hub"
    return None


def deliver(rows: list[dict], args, schema: pa.Schema | None, what: str) -> list[str]:
    """Write `rows` wherever `args` says; returns what was written, as the user would write it.
    `what` describes a row for the card ("SFT conversations (verified programs)")."""
    from schemas.datadir import write_rows

    written = []
    if args.out:
        written.append(write_rows(rows, args.out, schema))
    if args.hub_folder or args.push_to_hub:
        folder = args.hub_folder or tempfile.mkdtemp(prefix="datagen-hub-")
        table = pa.Table.from_pylist(rows, schema=schema)
        card = dataset_card(table, args, what)
        written.append(write_hub_folder(table, card, folder))
        if args.push_to_hub:
            written.append(push_to_hub(folder, args.push_to_hub, private=args.private,
                                       message=f"datagen export {args.export}: {len(rows)} {what}"))
    return written


def write_hub_folder(table: pa.Table, card: str, folder: str) -> str:
    """The folder a dataset repo holds: the rows as one Parquet file of the train split, and the card.
    Both written atomically; other files in the folder are left as they are."""
    from schemas.datadir import DataDir

    d = DataDir(folder)
    d.write_parquet(table, d.join(DATA_FILE))
    d.write_bytes(card.encode(), d.join("README.md"))
    return d.url()


def push_to_hub(folder: str, repo_id: str, private: bool = False, message: str = "datagen export",
                api=None) -> str:
    """Create the dataset repo (if new) and upload the folder as one commit; returns the commit's URL."""
    from huggingface_hub import HfApi

    api = api or HfApi()  # its token: HF_TOKEN or the saved login, never passed through datagen
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    commit = api.upload_folder(folder_path=folder, repo_id=repo_id, repo_type="dataset", commit_message=message)
    return str(getattr(commit, "commit_url", commit))


def hub_features(schema: pa.Schema) -> list[dict]:
    """An Arrow schema in the Hub's YAML notation (`dataset_info.features`, as datasets writes it)."""
    return [{"name": f.name, **_feature(f.type)} for f in schema]


def _feature(t: pa.DataType) -> dict:
    if pa.types.is_struct(t):
        return {"struct": [{"name": f.name, **_feature(f.type)} for f in t]}
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        inner = _feature(t.value_type)
        return {"list": inner.get("dtype") or inner.get("struct") or inner}
    if pa.types.is_map(t) or pa.types.is_dictionary(t) or pa.types.is_union(t):
        raise ValueError(f"no Hugging Face feature for Arrow type {t}")
    return {"dtype": _HUB_DTYPES.get(str(t), str(t))}


def dataset_card(table: pa.Table, args, what: str) -> str:
    """README.md of the dataset folder: YAML metadata, then how the rows were made."""
    import yaml

    runs = export_runs(args.data_dir, args.export_generator, table, getattr(args, "run", None))
    models = sorted({r["model"] for r in runs if r.get("model")})
    engines = sorted({r["engine"] for r in runs if r.get("engine")})
    meta = {
        "tags": ["synthetic", "datagen", args.export_generator],
        "size_categories": [_size_category(table.num_rows)],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*.parquet"}]}],
        "dataset_info": {"features": hub_features(table.schema),
                         "splits": [{"name": "train", "num_examples": table.num_rows}]},
    }
    lines = [
        "---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---", "",
        f"# {args.export_generator}: {what}", "",
        f"{table.num_rows} rows written by `datagen export {args.export}` ({args.export_help}).", "",
        "## How it was made", "",
        f"- Generator: `{args.export_generator}` (datagen)",
        f"- Model: {', '.join(f'`{m}`' for m in models) or 'unknown (no runs recorded)'}; engine: "
        f"{', '.join(engines) or 'unknown'}",
        f"- Runs: {len(runs)}, listed below with their settings (the data dir's `runs` table holds the rest).",
        "- Lineage: " + (", ".join(f"`{c}`" for c in table.column_names if c in _LINEAGE_COLUMNS)
                         or "none in these rows; export with lineage columns to keep it") + ".",
        "", "| run | started | status | records | settings |", "|---|---|---|---|---|",
    ]
    for r in runs:
        settings = json.dumps(json.loads(r["parameters"] or "{}"), sort_keys=True).replace("|", "\\|")
        lines.append(f"| `{r['run_id']}` | {r['started_at']:%Y-%m-%d %H:%M} UTC | {r['status']} | {r['rows_out']} | "
                     f"`{settings}` |")
    lines += ["", "## Use", "", "```python", "from datasets import load_dataset", "",
              f"rows = load_dataset(\"{args.push_to_hub or 'path/to/this/folder'}\")[\"train\"]", "```", ""]
    return "\n".join(lines)


_LINEAGE_COLUMNS = ("record_id", "source_id", "run_id", "config_hash", "doc_id", "negative_ids")


def export_runs(data_dir: str, flow: str, table: pa.Table, run_ids: list[str] | None) -> list[dict]:
    """The `runs` rows behind an export: the runs its rows name, or (rows without a run_id column)
    every run of the generator that --run allows; oldest first."""
    import pyarrow.dataset as pads

    from schemas.store import TableStore
    from schemas.tables import RUNS

    wanted = set(table.column("run_id").to_pylist()) if "run_id" in table.column_names else None
    runs = TableStore(data_dir, RUNS).read(filter=pads.field("flow") == flow).to_pylist()
    runs = [r for r in runs if (wanted is None or r["run_id"] in wanted) and (not run_ids or r["run_id"] in run_ids)]
    return sorted(runs, key=lambda r: r["started_at"])


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                        (10_000_000, "1M<n<10M")):
        if n < limit:
            return name
    return "n>10M"
