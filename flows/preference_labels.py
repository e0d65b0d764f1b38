"""The preference-labels flow: self-reference AI preference labels over pairs, judged in both orders,
with a strength (see tasks/preference_labels.py for the method). Thin: it only wires tasks.
Also the `datagen eval preferences` and `datagen export preferences` commands.

Run it:
    datagen run preference-labels --pairs ../shared/data/hh_rlhf/harmless-base/test.jsonl.gz --limit 20 --data-dir ./datasets
    datagen run preference-labels --prompts ../shared/data/mt_bench/question.jsonl --candidates 2 --data-dir ./datasets
    datagen eval preferences --data-dir ./datasets --run <RUN_ID>
    datagen export preferences --data-dir ./datasets --out prefs.jsonl
or from Python:
    from flows.preference_labels import preference_labels, PreferenceLabelsSettings
    preference_labels(PreferenceLabelsSettings(pairs="pairs.jsonl"))
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Literal

from prefect import flow
from pydantic import Field, model_validator

from flows.common import EngineSettings
from schemas.catalog import refresh_catalog
from tasks.engines.base import EngineSpec
from tasks.preference_labels import DEFAULT_PRINCIPLE, CandidateConfig, PreferenceConfig
from tasks.preference_labels_tasks import (
    candidates_and_label_stage, label_stage, load_pairs, load_prompts, plan_pairs, plan_prompts, summarize,
    write_records,
)
from tasks.ray_stage import ray_session
from tasks.runs import recorded_run


class PreferenceLabelsSettings(EngineSettings):
    pairs: str | None = Field(None, description="JSONL/Parquet of pairs: prompt + response_a/response_b, or hh-rlhf chosen/rejected")
    prompts: str | None = Field(None, description="JSONL/Parquet of prompts: candidates are sampled from the policy model")
    candidates: int = Field(2, ge=2, le=8, description="candidates per prompt with --prompts (all pairs are labelled)")
    policy_model: str | None = Field(None, description="model that writes the candidates (default: --model)")
    data_dir: str = "./datasets"
    limit: int | None = Field(None, ge=1, description="only the first N pairs / prompts of the input")
    mode: Literal["self-reference", "direct"] = "self-reference"
    principle: str = Field(DEFAULT_PRINCIPLE, min_length=1)
    samples_per_order: int = Field(2, ge=1, le=16, description="critiques and verdicts per order")
    temperature: float = Field(0.1, ge=0, description="critique sampling temperature (0 = greedy)")
    top_p: float = Field(0.9, gt=0, le=1)
    max_tokens: int = Field(160, ge=16, description="critique (and reference, and candidate) token budget")
    seed: int = 0

    @model_validator(mode="after")
    def _one_input(self):
        if (self.pairs is None) == (self.prompts is None):
            raise ValueError("give exactly one of --pairs FILE or --prompts FILE")
        return self

    def policy_spec(self) -> EngineSpec:
        return EngineSpec(backend=self.engine, model=self.policy_model or self.model, device=self.device)

    def generator_config(self) -> PreferenceConfig:
        return PreferenceConfig(mode=self.mode, principle=self.principle, samples_per_order=self.samples_per_order,
                                temperature=self.temperature, top_p=self.top_p, seed=self.seed,
                                reference_max_tokens=self.max_tokens, critique_max_tokens=self.max_tokens)

    def candidate_config(self) -> CandidateConfig | None:
        if self.prompts is None:
            return None
        return CandidateConfig(candidates=self.candidates, policy_model=self.policy_spec().model_id,
                               max_tokens=self.max_tokens, seed=self.seed)


@flow(name="preference-labels", log_prints=True)
def preference_labels(settings: PreferenceLabelsSettings) -> dict:
    spec, config, candidates = settings.engine_spec(), settings.generator_config(), settings.candidate_config()
    config_hash = config.config_hash(spec.model_id, candidates)
    with recorded_run("preference-labels", settings, spec) as run:  # failures are recorded, then re-raised
        rejects: list[dict] = []
        if settings.pairs is not None:
            pairs, rejects = load_pairs(settings.pairs, settings.limit)
            for r in rejects:
                print(f"not labelled: {r['source_file']}: row {r['source_row']}: {r['reason']}")
            run.rows_in = len(pairs) + len(rejects)
            groups = plan_pairs(pairs, settings.data_dir, config_hash)
            run.rows_skipped = len(pairs) - sum(len(g["pairs"]) for g in groups)
        else:
            prompts = load_prompts(settings.prompts, settings.limit)
            run.rows_in = len(prompts)
            todo = plan_prompts(prompts, settings.data_dir, config_hash)
            run.rows_skipped = len(prompts) - len(todo)
        stats = {}
        work = groups if settings.pairs is not None else todo
        if work:
            with ray_session(settings.ray_address):
                if settings.pairs is not None:
                    ds = label_stage(groups, spec, config, settings.batch_size, settings.pool_size)
                else:
                    ds = candidates_and_label_stage(todo, spec, settings.policy_spec(), candidates, config,
                                                    settings.batch_size, settings.pool_size)
                stats = write_records(ds, settings.data_dir, run, config, config_hash)
        summary = summarize(run, settings.data_dir, stats, rejects)
    refresh_catalog(settings.data_dir)
    return summary


# ---------------------------------------------------------------- datagen eval / export preferences

_EVAL_COLUMNS = ("run_id", "mode", "pairs", "human_labelled", "agreement", "ties", "agreement_decided",
                 "consistency", "agreement_consistent", "mean_strength", "free_text_verdicts",
                 "requests_per_pair", "engine_calls_per_pair", "tokens_per_pair", "generated_tokens_per_pair")


def _labels(data_dir: str):
    from schemas.tables import PREFERENCE_LABELS
    from tasks.store import TableStore

    return TableStore(data_dir, PREFERENCE_LABELS).read().to_pylist()


def evaluation_table(data_dir: str, run_ids: list[str]) -> list[dict]:
    """One row of metrics per run. With a single run, the run of the other mode that labelled the most
    of the same pairs is added, and both are measured on the pairs they share."""
    from tasks.preference_labels import evaluate

    rows = _labels(data_dir)
    by_run: dict[str, list[dict]] = {}
    for r in rows:
        by_run.setdefault(r["run_id"], []).append(r)
    missing = [r for r in run_ids if r not in by_run]
    if missing:
        raise KeyError(f"no preference_labels rows for run(s) {missing} in {data_dir} (runs: {sorted(by_run)})")
    if len(run_ids) == 1:
        mine = by_run[run_ids[0]]
        ids, mode = {r["source_id"] for r in mine}, mine[0]["mode"]
        others = [(len(ids & {r["source_id"] for r in rs}), rid) for rid, rs in by_run.items()
                  if rs[0]["mode"] != mode]
        best = max(others, default=(0, None))
        if best[0]:
            run_ids = run_ids + [best[1]]
    shared = set.intersection(*({r["source_id"] for r in by_run[rid]} for rid in run_ids))
    return [{"run_id": rid, "mode": by_run[rid][0]["mode"],
             **evaluate([r for r in by_run[rid] if r["source_id"] in shared])} for rid in run_ids]


def eval_cli(args) -> int:
    """`datagen eval preferences --data-dir D --run RUN [--run RUN2]`: a small table of metrics."""
    try:
        table = evaluation_table(args.data_dir, args.run)
    except KeyError as exc:
        print(f"datagen eval preferences: {exc.args[0]}", file=sys.stderr)
        return 2
    fmt = lambda v: "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    cells = [[fmt(row[c]) for c in _EVAL_COLUMNS] for row in table]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(_EVAL_COLUMNS)]
    # Transposed (metrics as rows): two or three runs side by side stay readable in a terminal.
    for i, column in enumerate(_EVAL_COLUMNS):
        print(f"{column:<{max(len(c) for c in _EVAL_COLUMNS)}}  " + "  ".join(f"{r[i]:>{max(widths[0], 12)}}" for r in cells))
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2))
    return 0


def export_rows(data_dir: str, run_ids: list[str] | None = None, mode: str = "self-reference",
                consistent_only: bool = False, min_strength: float = 0.0, margin: bool = False) -> list[dict]:
    """TRL preference rows (prompt / chosen / rejected messages) from the labelled, non-tie pairs of
    one mode: one per pair (its latest label when several runs labelled it), in pair-id order."""
    from tasks.preference_labels import to_trl

    latest: dict[str, dict] = {}
    for r in _labels(data_dir):
        if (run_ids and r["run_id"] not in run_ids) or r["mode"] != mode:
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


def export_cli(args) -> int:
    """`datagen export preferences --data-dir D --out FILE(.jsonl|.parquet)`."""
    rows = export_rows(args.data_dir, args.run, args.mode, args.consistent_only, args.min_strength, args.margin)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), out)
    else:
        out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"{len(rows)} preference pairs -> {out}")
    return 0


__all__ = ["PreferenceLabelsSettings", "preference_labels", "eval_cli", "export_cli", "evaluation_table", "export_rows"]
