"""Self-reference AI preference labels (Bao et al. 2024), debiased for position, with a strength.

For each pair (a prompt or conversation, two candidate responses) the annotator model:
  1. **Reference** (mode `self-reference` only): answers the prompt itself, once per prompt; every
     pair of that prompt reuses the answer (greedy: one best guess, shared).
  2. **Critique**: in the same conversation, is shown the two candidates as Response A and Response B
     and critiques each against its own answer under one principle (default "best for humanity").
  3. **Verdict**: is asked which response is better, with its answer pre-filled up to
     "The better response is Response"; we read the probabilities of the next tokens " A" and " B"
     (`engine.score`) instead of parsing text. When those two tokens carry almost none
     of the probability (< `min_choice_mass`), a short greedy free-text answer is parsed instead and
     the judgment is recorded with verdict_source = "free_text" ("none" when that fails too).
Both orders (a shown as A, then b shown as A) are judged, `samples_per_order` critiques each
(temperature 0.1, top_p 0.9 as in the paper's code). Every judgment is mapped back to the input's
response_a / response_b:

    p_a(j)   = P(" A") / (P(" A") + P(" B")) when a was shown as A, else P(" B") / (P(" A") + P(" B"))
    vote(j)  = "a" if p_a(j) > 0.5, "b" if < 0.5 (free text: the letter named, p_a = 1 or 0)
    chosen   = majority of the votes over both orders x samples; "tie" when they split evenly
    consistent = the majority within each order is the same non-tie label (no position flip)
    p_a      = mean of p_a(j) over all judgments with a verdict
    strength = max(0, ln(p / (1 - p))),  p = p_a if chosen == "a" else 1 - p_a  (clamped to [1e-6, 1-1e-6]);
               0 for a tie. The log-odds that the chosen response is better, averaged over orders and
               samples: the margin a Bradley-Terry reward model would need (TRL's `margin` column).
               0 also when the mean disagrees with the vote majority (no usable margin).
The paper grades strength by the annotator's "semantic perplexity"; its exact formula could not be
recovered, hence this documented substitute. Swapping a and b in the input gives the mirrored label
and the same strength: both orders are always judged, and in a canonical order (by text).

`--mode direct` is the baseline: no reference turn, the critique turn shows the conversation itself.

This module: the options (`PreferenceConfig`, declared once: the run's settings subclass it), the
prompt builders over the template files in prompts/ (`reference_messages`, `critique_messages`,
`verdict_messages`; pinned by a test), the verdict parser `parse_free_verdict` (never raises),
`aggregate`, and the per-row programs run in the engine actor, each on one row and awaiting its own
requests: `label_group(group, engine, config)` (one prompt group: the reference once, then every pair
in both orders at once — critique, verdict per critique sample, free text only where that verdict
needs it), `sample_candidates(prompt, engine, config, policy_model)` and `sample_then_label` (both on
one engine); `to_records` turns a labelled prompt group into rows. The inputs are read by sources.py.

Example record: see schemas/tables.py (PREFERENCE_LABELS).
Run: `datagen run preference-labels --pairs pairs.jsonl --data-dir ./datasets`
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tasks.engines.base import Engine, SamplingParams

from .sources import group_by_prompt, pairs_from_candidates

GENERATOR = "preference_labels"
# Goes into the config hash: bump it when a template in prompts/ changes what the judge is shown.
PROMPT_VERSION = "preference-labels/v1"
MODES = ("self-reference", "direct")
DEFAULT_PRINCIPLE = "best for humanity"
FREE_TEXT_MAX_TOKENS = 16
# Candidates for `--prompts` are sampled diversely: a pair is uninformative if both are the same.
CANDIDATE_TEMPERATURE = 0.8
CANDIDATE_TOP_P = 0.95

# ---------------------------------------------------------------- prompts (files in prompts/, pinned by a test)

PROMPTS = Path(__file__).parent / "prompts"


@lru_cache(maxsize=None)
def template(name: str) -> str:
    """prompts/<name>.txt without the file's final newline (a `str.format` template)."""
    return (PROMPTS / f"{name}.txt").read_text(encoding="utf-8").removesuffix("\n")


VERDICT_PREFILL = template("verdict_prefill")  # "The better response is Response"
CHOICES = (" A", " B")  # the two choice tokens read after VERDICT_PREFILL


# ---------------------------------------------------------------- options


class PreferenceConfig(BaseModel):
    """The generator's options, declared once: `datagen run preference-labels --<option>`, recipe params
    and deployment parameters all name these fields (PreferenceLabelsSettings subclasses this model).
    Unit tests build one without an input file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal[MODES] = Field("self-reference", description="self-reference (the annotator answers first) "
                                                               "or direct (baseline: no reference turn)")
    principle: str = Field(DEFAULT_PRINCIPLE, min_length=1, description="the one principle the responses are judged by")
    # s = 2 critiques (and verdicts) per order, as in the paper's code; engine work grows linearly with it
    samples_per_order: int = Field(2, ge=1, le=16, description="critiques + verdicts per order")
    temperature: float = Field(0.1, ge=0, description="critique sampling temperature (0 = greedy; 0.1 as in "
                                                      "the paper's code)")
    top_p: float = Field(0.9, gt=0, le=1, description="critique sampling top-p")
    # the critiques are most of the generated tokens
    max_tokens: int = Field(160, ge=16, description="token budget of the reference, each critique and each candidate")
    seed: int = Field(0, description="sampling seed (critiques and candidates)")
    candidates: int = Field(2, ge=2, le=8, description="with --prompts: candidates per prompt, every pair labelled")
    # Below this much probability on " A" + " B" the verdict is not in the choice tokens: parse free text.
    min_choice_mass: float = Field(0.05, ge=0, lt=1, description="below this probability on ' A' + ' B' the "
                                                                 "verdict is read from a short free-text answer")
    # Character budgets that keep the judge's conversation inside the model's context (2k tokens for
    # the embedded model): the conversation keeps its end (the latest turns), a response its start.
    max_conversation_chars: int = Field(2000, ge=1, description="the conversation shown to the judge keeps its "
                                                                "last N characters")
    max_response_chars: int = Field(1200, ge=1, description="each response shown to the judge keeps its first "
                                                            "N characters")

    @field_validator("principle")
    @classmethod
    def _principle_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("principle must not be empty")
        return value

    def reference_params(self) -> SamplingParams:
        """Turn 1: greedy, one best guess shared by every pair of the prompt."""
        return SamplingParams(temperature=0.0, max_tokens=self.max_tokens)

    def critique_params(self) -> SamplingParams:
        return SamplingParams(n=self.samples_per_order, temperature=self.temperature, top_p=self.top_p,
                              max_tokens=self.max_tokens, seed=self.seed)

    def free_text_params(self) -> SamplingParams:
        return SamplingParams(temperature=0.0, max_tokens=FREE_TEXT_MAX_TOKENS)

    def candidate_params(self) -> SamplingParams:
        """`--prompts`: k sampled responses per prompt from the policy model."""
        return SamplingParams(n=self.candidates, temperature=CANDIDATE_TEMPERATURE, top_p=CANDIDATE_TOP_P,
                              max_tokens=self.max_tokens, seed=self.seed)

    def config_hash(self, model_id: str, policy_model: str | None = None) -> str:
        """Hash of everything that shapes the records; `policy_model` (the model id writing the
        candidates) only with `--prompts`, when candidate generation runs. The dict is the one the
        labels were always hashed under (its key names are part of every existing record id)."""
        shaping = {
            "model": model_id, "prompt": PROMPT_VERSION,
            "mode": self.mode, "principle": self.principle, "samples_per_order": self.samples_per_order,
            "temperature": self.temperature, "top_p": self.top_p,
            "reference_max_tokens": self.max_tokens, "critique_max_tokens": self.max_tokens, "seed": self.seed,
            "min_choice_mass": self.min_choice_mass, "max_conversation_chars": self.max_conversation_chars,
            "max_response_chars": self.max_response_chars,
            "candidates": None if policy_model is None else {
                "candidates": self.candidates, "policy_model": policy_model, "temperature": CANDIDATE_TEMPERATURE,
                "top_p": CANDIDATE_TOP_P, "max_tokens": self.max_tokens, "seed": self.seed},
        }
        return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- prompt builders (pure)


def clip(text: str, limit: int, keep: str = "head") -> tuple[str, bool]:
    """(text cut to `limit` characters keeping its start or its end, was it cut)."""
    if len(text) <= limit:
        return text, False
    return (text[:limit] + " […]", True) if keep == "head" else ("[…] " + text[-limit:], True)


def transcript(conversation: Sequence[dict]) -> str:
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in conversation)


def request_text(conversation: Sequence[dict], config: PreferenceConfig) -> tuple[str, bool]:
    """How the judge is shown the request (the single prompt, or the conversation so far)."""
    if len(conversation) == 1:
        prompt, cut = clip(conversation[0]["content"], config.max_conversation_chars, keep="head")
        return template("request_single").format(prompt=prompt), cut
    text, cut = clip(transcript(conversation), config.max_conversation_chars, keep="tail")
    return template("request_multi").format(transcript=text), cut


def reference_messages(conversation: Sequence[dict], config: PreferenceConfig) -> list[dict]:
    """Turn 1: the annotator answers the request itself (a single prompt is asked as it is)."""
    if len(conversation) == 1:
        return [{"role": "user", "content": clip(conversation[0]["content"], config.max_conversation_chars)[0]}]
    request = request_text(conversation, config)[0]
    return [{"role": "user", "content": template("reference_multi_turn").format(request=request)}]


def critique_messages(conversation: Sequence[dict], reference: str | None, first: str, second: str,
                      config: PreferenceConfig) -> list[dict]:
    """Turn 2: the candidates shown as Response A (`first`) and B (`second`), critiqued under the principle."""
    responses = template("responses").format(first=clip(first, config.max_response_chars)[0],
                                             second=clip(second, config.max_response_chars)[0])
    if config.mode == "self-reference":
        critique = template("critique_self_reference").format(principle=config.principle, responses=responses)
        return reference_messages(conversation, config) + [
            {"role": "assistant", "content": reference or ""},
            {"role": "user", "content": critique},
        ]
    return [{"role": "user", "content": template("critique_direct").format(
        request=request_text(conversation, config)[0], principle=config.principle, responses=responses)}]


def verdict_messages(critique_conversation: list[dict], critique: str, config: PreferenceConfig,
                     prefill: bool = True) -> list[dict]:
    """Turn 3: which is better; pre-filled up to the choice token (or not, for the free-text fallback)."""
    messages = critique_conversation + [
        {"role": "assistant", "content": critique},
        {"role": "user", "content": template("verdict").format(principle=config.principle)},
    ]
    return messages + [{"role": "assistant", "content": VERDICT_PREFILL}] if prefill else messages


# ---------------------------------------------------------------- verdicts and aggregation (pure)


def read_verdict(logprob_first: float, logprob_second: float) -> tuple[float, float]:
    """(P(first shown is better) normalised over the two choice tokens, their total probability)."""
    mass = math.exp(logprob_first) + math.exp(logprob_second)
    p_first = 1.0 / (1.0 + math.exp(max(-700.0, min(700.0, logprob_second - logprob_first))))
    return p_first, mass


_NAMED = re.compile(r"\bresponse\s*\(?([AB])\b", re.I)
_LEADING = re.compile(r"^\W*([AB])(?=[.):\]*,!]|\s*$)")  # "B." "(A)" "A" - not the article in "A good..."


def parse_free_verdict(text: str | None) -> str | None:
    """'A' or 'B' from a free-text verdict ("Response B is better", "A."), else None. Never raises."""
    if not text:
        return None
    named = {m.upper() for m in _NAMED.findall(text)}
    if len(named) == 1:
        return named.pop()
    if not named and (m := _LEADING.match(text.strip())):
        return m.group(1)
    return None  # no letter, or both named: not a verdict


def _majority(votes: Sequence[str]) -> str:
    a, b = votes.count("a"), votes.count("b")
    return "a" if a > b else "b" if b > a else "tie"


def strength_of(chosen: str, p_a: float | None) -> float:
    """max(0, log-odds that `chosen` is better), from the mean P(a better); 0 for a tie (see module doc)."""
    if chosen == "tie" or p_a is None:
        return 0.0
    p = p_a if chosen == "a" else 1.0 - p_a
    p = min(max(p, 1e-6), 1 - 1e-6)
    return max(0.0, math.log(p / (1 - p)))


def aggregate(judgments: Sequence[dict]) -> dict:
    """Votes over both orders x samples, mapped back to a/b: chosen, consistent, p_a, strength."""
    votes = [j["vote"] for j in judgments]
    by_order = {o: _majority([j["vote"] for j in judgments if j["order"] == o]) for o in ("ab", "ba")}
    chosen = _majority(votes)
    known = [j["p_a"] for j in judgments if j["p_a"] is not None]
    p_a = sum(known) / len(known) if known else None
    return {
        "votes_a": votes.count("a"), "votes_b": votes.count("b"),
        "votes_abstain": len(votes) - votes.count("a") - votes.count("b"),
        "chosen": chosen,
        "consistent": by_order["ab"] == by_order["ba"] != "tie",
        "p_a": p_a,
        "strength": strength_of(chosen, p_a),
    }


def _vote(p_a: float | None) -> str:
    if p_a is None:
        return "none"
    return "a" if p_a > 0.5 else "b" if p_a < 0.5 else "tie"


def canonical_orders(pair: dict) -> list[str]:
    """Both orders, the one showing the (textually) smaller response first leading: the judge's
    calls are then the same whichever way round the input gave the pair."""
    return ["ab", "ba"] if pair["response_a"] <= pair["response_b"] else ["ba", "ab"]


# ---------------------------------------------------------------- the per-row programs


def _usage(requests: int = 0, prompt_tokens: int = 0, completion_tokens: int = 0) -> dict:
    return {"requests": requests, "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}


def _add(usage: dict, other: dict) -> None:
    for key in ("requests", "prompt_tokens", "completion_tokens"):
        usage[key] += other[key]


async def _verdict(critique_conversation: list[dict], judgment: dict, engine: Engine, config: PreferenceConfig) -> dict:
    """Turn 3 of one critique sample: score the two choice tokens after it, and only when they carry
    less than `min_choice_mass`, ask for a short greedy free-text answer. Fills `judgment`; returns
    the usage of its requests."""
    conversation = verdict_messages(critique_conversation, judgment["critique"], config, prefill=False)
    score = await engine.score(conversation + [{"role": "assistant", "content": VERDICT_PREFILL}], CHOICES)
    usage = _usage(1, score.prompt_tokens)
    p_first, mass = read_verdict(*score.logprobs)
    judgment.update(logprob_first=score.logprobs[0], logprob_second=score.logprobs[1], choice_mass=mass,
                    p_first=p_first, verdict_source="probs", verdict_text=None)
    if mass < config.min_choice_mass:
        [completion] = await engine.generate(conversation, config.free_text_params())
        _add(usage, _usage(1, completion.prompt_tokens, completion.completion_tokens))
        letter = parse_free_verdict(completion.text)
        judgment.update(verdict_text=completion.text, verdict_source="free_text" if letter else "none",
                        p_first=None if letter is None else float(letter == "A"))
    return usage


async def _judge_order(conversation: list[dict], reference: str | None, pair: dict, order: str, engine: Engine,
                       config: PreferenceConfig) -> tuple[list[dict], dict]:
    """Turn 2 and 3 of one pair in one order: one critique request (n = samples_per_order), then every
    sample's verdict at once. Returns (the judgments in sample order, the usage of the requests)."""
    first, second = ((pair["response_a"], pair["response_b"]) if order == "ab"
                     else (pair["response_b"], pair["response_a"]))
    critique_conversation = critique_messages(conversation, reference, first, second, config)
    samples = await engine.generate(critique_conversation, config.critique_params())
    usage = _usage(1, sum(c.prompt_tokens for c in samples), sum(c.completion_tokens for c in samples))
    judgments = [{"order": order, "sample": k, "critique": c.text.strip(), "critique_tokens": c.completion_tokens,
                  "critique_finish": c.finish_reason} for k, c in enumerate(samples)]
    for verdict_usage in await asyncio.gather(*(_verdict(critique_conversation, j, engine, config) for j in judgments)):
        _add(usage, verdict_usage)
    return judgments, usage


async def label_group(group: dict, engine: Engine, config: PreferenceConfig) -> dict:
    """One prompt group's labels (see group_by_prompt), in the LLM actor. The reference first (self-
    reference mode: one request, shared by every pair of the prompt), then every pair x both orders at
    once: a critique request (n = s), then per critique sample a verdict scoring and, only where that
    verdict needs it, a free-text request. Each pair gets `judgments` (in canonical order, then sample
    index, whatever order they finished in), the aggregate and its `usage`: its requests and tokens
    (the reference's on the prompt's first pair) and `engine_calls_share` = its own requests plus its
    share of the reference (reference requests / pairs of the prompt). The group gets its `reference`
    and `engine_calls`: the requests it made (the shares add up to it)."""
    reference = None
    reference_usage = _usage()
    if config.mode == "self-reference":
        [completion] = await engine.generate(reference_messages(group["conversation"], config),
                                             config.reference_params())
        reference = completion.text.strip()
        reference_usage = _usage(1, completion.prompt_tokens, completion.completion_tokens)
    jobs = [(pair, order) for pair in group["pairs"] for order in canonical_orders(pair)]
    done = await asyncio.gather(*(_judge_order(group["conversation"], reference, pair, order, engine, config)
                                  for pair, order in jobs))
    for pair in group["pairs"]:
        pair["judgments"], pair["usage"] = [], _usage()
    for (pair, _), (judgments, usage) in zip(jobs, done):  # jobs are in canonical order: so are the judgments
        pair["judgments"] += judgments
        _add(pair["usage"], usage)
    n_pairs = len(group["pairs"])
    for index, pair in enumerate(group["pairs"]):
        for j in pair["judgments"]:
            j["p_a"] = None if j["p_first"] is None else (j["p_first"] if j["order"] == "ab" else 1 - j["p_first"])
            j["vote"] = _vote(j["p_a"])
        pair.update(aggregate(pair["judgments"]))
        pair["usage"]["engine_calls_share"] = pair["usage"]["requests"] + reference_usage["requests"] / n_pairs
        if index == 0:  # the shared reference is counted once, on its prompt's first pair
            _add(pair["usage"], reference_usage)
    group["reference"] = reference
    group["engine_calls"] = reference_usage["requests"] + sum(usage["requests"] for _, usage in done)
    return group


async def sample_candidates(prompt: dict, engine: Engine, config: PreferenceConfig, policy_model: str) -> dict | None:
    """In the policy model's actor: k = `config.candidates` sampled responses to one prompt (one
    request), returned as the prompt group of all their pairs (ready for label_group) with its
    `candidate_tokens`; None when there is no pair. `policy_model`: the model id recorded in every pair."""
    samples = await engine.generate(prompt["conversation"], config.candidate_params())
    pairs = pairs_from_candidates(prompt, [c.text for c in samples], policy_model)
    if not pairs:
        return None
    group = group_by_prompt(pairs)[0]
    group["candidate_tokens"] = sum(c.completion_tokens for c in samples)
    return group


async def sample_then_label(prompt: dict, engine: Engine, config: PreferenceConfig, policy_model: str) -> dict | None:
    """One actor, one engine: the policy is the annotator's own model, so sample and label in place."""
    group = await sample_candidates(prompt, engine, config, policy_model)
    return None if group is None else await label_group(group, engine, config)


# ---------------------------------------------------------------- records


def record_id(source_id: str, config_hash: str) -> str:
    return hashlib.sha256(f"{source_id}|{GENERATOR}|{config_hash}".encode()).hexdigest()[:32]


def to_records(group: dict, lineage: dict, config: PreferenceConfig) -> list[dict]:
    """One table row per pair. `lineage`: run_id, model, engine, config_hash, created_at."""
    rows = []
    truncated_request = request_text(group["conversation"], config)[1]
    for pair in group["pairs"]:
        usage = pair["usage"]
        rows.append({
            "record_id": record_id(pair["source_id"], lineage["config_hash"]),
            "source_id": pair["source_id"], "source_file": pair["source_file"], "source_row": pair["source_row"],
            "generator": GENERATOR, "prompt_version": PROMPT_VERSION, **lineage,
            "temperature": config.temperature, "top_p": config.top_p, "max_tokens": config.max_tokens,
            "seed": config.seed,
            "prompt_id": group["prompt_id"],
            "conversation": group["conversation"],
            "prompt": group["conversation"][-1]["content"],
            "response_a": pair["response_a"], "response_b": pair["response_b"],
            "policy_model": pair.get("policy_model"),
            "human_choice": pair.get("human_choice"),
            "reference": group.get("reference"),
            "judgments": [{k: j.get(k) for k in JUDGMENT_FIELDS} for j in pair["judgments"]],
            **{k: pair[k] for k in ("votes_a", "votes_b", "votes_abstain", "p_a", "consistent", "chosen", "strength")},
            "principle": config.principle, "mode": config.mode,
            "truncated": truncated_request or any(
                len(pair[k]) > config.max_response_chars for k in ("response_a", "response_b")),
            "engine_requests": usage["requests"],
            "engine_calls_share": usage["engine_calls_share"],
            "prompt_tokens": usage["prompt_tokens"], "completion_tokens": usage["completion_tokens"],
        })
    return rows


JUDGMENT_FIELDS = ("order", "sample", "critique", "critique_tokens", "critique_finish", "logprob_first",
                   "logprob_second", "choice_mass", "p_first", "p_a", "vote", "verdict_source", "verdict_text")


