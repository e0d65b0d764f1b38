"""The preference-labels generator: self-reference AI preference labels over pairs, judged in both
orders, with a strength (the method: program.py). One row of `preference_labels` per pair.

Two inputs, exactly one per run:
- `--pairs FILE`: pairs to label. hh-rlhf rows whose dialogues cannot be split are not labelled: they
  are the Source's rejects, counted as `dropped_<reason>` and listed in the run's artifact.
- `--prompts FILE`: prompts; `--candidates k` responses are sampled per prompt from `--policy-model`
  (default: the annotator's model, and then one engine samples and labels in one stage) and all
  k(k-1)/2 pairs are labelled.
The Ray rows are prompt groups (a prompt with all its pairs) and the per-row program labels one group
(program.label_group): a prompt's reference is generated once and reused by all its pairs, whose
judgments then all run at once; a rerun labels only the pairs not committed yet. With --prompts the
row is a prompt, and its program samples the candidates first (program.sample_candidates).

Run: `datagen run preference-labels --pairs data/hh_rlhf/harmless-base/test.jsonl.gz --limit 20`
     `datagen run preference-labels --prompts data/mt_bench/question.jsonl --candidates 2`
"""
from __future__ import annotations

from collections import Counter
from functools import partial

from pydantic import Field, model_validator

from schemas.tables import PREFERENCE_LABELS
from tasks.engines import choose_backend
from tasks.engines.base import EngineSpec
from tasks.runtime.generator import Command, Generator, LLMStage, Plan, Source, plan_todo
from tasks.runtime.planning import anti_join
from tasks.runtime.settings import RunSettings

from . import eval as pl_eval
from . import export as pl_export
from . import program as pl
from .sources import REJECT_REASONS, group_by_prompt, load_pairs, load_prompts


class PreferenceLabelsSettings(RunSettings, pl.PreferenceConfig):
    pairs: str | None = Field(None, description="JSONL/Parquet of pairs: prompt + response_a/response_b, "
                                                "prompt + chosen/rejected, or hh-rlhf chosen/rejected dialogues")
    prompts: str | None = Field(None, description="JSONL/Parquet of prompts (prompt/question/instruction/turns): "
                                                  "candidates are sampled from the policy model, then labelled")
    policy_model: str | None = Field(None, description="with --prompts: the model writing the candidates "
                                                       "(default: --model)")

    @model_validator(mode="after")
    def _one_input(self):
        if (self.pairs is None) == (self.prompts is None):
            raise ValueError("give exactly one of --pairs FILE or --prompts FILE")
        return self

    def model_options(self) -> dict[str, str]:
        """The annotator's model and, with --prompts, the policy's (checked before anything starts)."""
        policy = {"policy_model": self.policy_model} if self.prompts is not None and self.policy_model else {}
        return {**super().model_options(), **policy}

    def config(self) -> pl.PreferenceConfig:
        """The options the engine steps need (no input paths): what travels to the Ray workers."""
        return pl.PreferenceConfig(**self.model_dump(include=set(pl.PreferenceConfig.model_fields)))

    def policy_spec(self) -> EngineSpec:
        """The policy's engine, `auto` resolved as for the annotator's (so that the same model on the
        same engine is recognised as one engine: stages())."""
        model = self.policy_model or self.model
        return EngineSpec(backend=choose_backend(self.engine, model)[0], model=model, device=self.device)


class PreferenceLabels(Generator):
    name = "preference-labels"
    description = "self-reference AI preference labels, both orders, with a strength"
    table = PREFERENCE_LABELS
    Settings = PreferenceLabelsSettings
    drop_reasons = REJECT_REASONS  # input rows only: every labelled pair is kept (a tie is a label)
    prompt_version = pl.PROMPT_VERSION
    card_columns = {  # charted on the data card
        "strength": "preference strength (log-odds of the chosen response)",
        "p_a": "P(response A is better), mean over judgments",
    }
    summary_sql = (
        "SELECT mode, chosen, consistent, count(*) AS pairs, round(avg(strength), 3) AS mean_strength, "
        "count(human_choice) FILTER (WHERE chosen = human_choice) AS agree_with_human "
        "FROM preference_labels WHERE run_id = '{run_id}' GROUP BY ALL ORDER BY ALL"
    )
    evals = (
        Command("preferences", "preference labels vs human labels (hh-rlhf), position consistency",
                pl_eval.add_arguments, "tasks.generators.preference_labels.eval:main"),
    )
    exports = (
        Command("preferences", "preference_labels as TRL prompt/chosen/rejected (ties left out)",
                pl_export.add_arguments, "tasks.generators.preference_labels.export:main"),
    )

    def __init__(self, settings):
        super().__init__(settings)
        self.config = self.settings.config()
        self.labels_pairs = self.settings.pairs is not None
        self.policy_spec = None if self.labels_pairs else self.settings.policy_spec()
        self._config_hash: str | None = None

    def config_hash(self) -> str:
        """The hash the labels were always written under: the annotator's model, the prompt version,
        the options, and the candidate options (with the policy's model id) when --prompts."""
        if self._config_hash is None:
            policy = None if self.policy_spec is None else self.policy_spec.model_id
            self._config_hash = self.config.config_hash(self.engine_spec.model_id, policy)
        return self._config_hash

    def load(self) -> Source:
        s = self.settings
        if self.labels_pairs:
            return load_pairs(s.pairs, s.limit, s.row_checks())
        return load_prompts(s.prompts, s.limit, s.row_checks())

    def plan(self, source: Source, store, pass_name: str) -> Plan:
        """Pairs: the prompt groups of the pairs with no committed record (skipped: pairs already
        labelled). Prompts: those none of whose candidate pairs (`<prompt id>/c<i>-c<j>`) is committed."""
        done = [{"config_hash": self.config_hash()}]
        if self.labels_pairs:  # the prompt groups are built in the driver from the pairs left to do
            plan = plan_todo(source, store, done)
            return Plan(group_by_prompt(plan.rows), skipped=plan.skipped)
        # a prompt is done when any of its candidate pairs (`<prompt id>/c<i>-c<j>`) is committed
        todo = anti_join(source.staged_files(), store, source.staging_folder(), done,
                         done_key_sql="regexp_replace(CAST(source_id AS VARCHAR), '/[^/]*$', '')")
        return Plan(staged=todo, skipped=len(source) - todo.count)

    def stages(self, pass_name: str) -> list[LLMStage]:
        label = LLMStage(partial(pl.label_group, config=self.config))
        if self.labels_pairs:
            return [label]
        policy = self.policy_spec.model_id
        if self.policy_spec == self.engine_spec:  # one actor, one engine samples and labels
            return [LLMStage(partial(pl.sample_then_label, config=self.config, policy_model=policy))]
        return [LLMStage(partial(pl.sample_candidates, config=self.config, policy_model=policy),
                         engine=self.policy_spec), label]

    def to_records(self, row: dict, lineage: dict) -> list[dict]:
        return pl.to_records(row, lineage, self.config)

    def row_counts(self, row: dict, records: list[dict]) -> Counter:
        """Per prompt group: the prompt, its reference, its candidates' tokens, and `engine_calls`: the
        requests its labels made (reference, critiques, verdicts, free-text fallbacks; the candidates'
        request is not counted, as their tokens are counted apart)."""
        return Counter(prompts=1, references=int(row.get("reference") is not None),
                       candidate_tokens=row.get("candidate_tokens", 0), engine_calls=row.get("engine_calls", 0))

    def record_counts(self, record: dict) -> Counter:
        """Per pair: its label, position consistency, engine work, and where each verdict came from."""
        counts = Counter({f"chosen_{record['chosen']}": 1, "consistent": int(record["consistent"]),
                          "engine_requests": record["engine_requests"], "prompt_tokens": record["prompt_tokens"],
                          "truncated": int(bool(record["truncated"])), "judgments": len(record["judgments"])})
        for j in record["judgments"]:
            counts[f"verdict_{j['verdict_source']}"] += 1
        counts["verdicts_not_from_probs"] = counts["verdict_free_text"] + counts["verdict_none"]
        return counts

    def tokens(self, row: dict, records: list[dict]) -> int:
        """Generated tokens: the labels' (references, critiques, free-text verdicts) + the candidates'."""
        return sum(r["completion_tokens"] or 0 for r in records) + row.get("candidate_tokens", 0)
