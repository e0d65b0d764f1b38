"""Self-reference AI preference labels (Bao et al. 2024), debiased for position, with a strength.

For each pair (a prompt or conversation, two candidate responses) the annotator model:
  1. **Reference** (mode `self-reference` only): answers the prompt itself, once per prompt; every
     pair of that prompt reuses the answer (greedy: one best guess, shared).
  2. **Critique**: in the same conversation, is shown the two candidates as Response A and Response B
     and critiques each against its own answer under one principle (default "best for humanity").
  3. **Verdict**: is asked which response is better, with its answer pre-filled up to
     "The better response is Response"; we read the probabilities of the next tokens " A" and " B"
     (`engine.score_continuations`) instead of parsing text. When those two tokens carry almost none
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

Pure parts (no I/O besides reading the input): `load_pairs`, `load_prompts`, `group_by_prompt`, the
three prompt builders, `read_verdict`, `parse_free_verdict`, `aggregate`, `to_records`, `evaluate`,
`to_trl`. Engine-driven steps, `step(rows, engine)` as in math_programs: `label_groups(groups,
engine, config)` and `generate_candidates(prompts, engine, config)`.

Example record: see schemas/tables.py (PREFERENCE_LABELS).
Run: `datagen run preference-labels --pairs pairs.jsonl --data-dir ./datasets`
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass
from itertools import combinations
from pathlib import Path
from typing import Sequence

from .engines.base import Engine, SamplingParams
from .inputs import InputError, content_id, read_rows

GENERATOR = "preference_labels"
PROMPT_VERSION = "preference-labels/v1"
MODES = ("self-reference", "direct")
DEFAULT_PRINCIPLE = "best for humanity"
CHOICES = (" A", " B")  # the two choice tokens read after VERDICT_PREFILL
VERDICT_PREFILL = "The better response is Response"
FREE_TEXT_MAX_TOKENS = 16

# ---------------------------------------------------------------- prompts (data: pinned by a test)

REFERENCE_MULTI_TURN = "{request}\n\nWrite the assistant's next reply to the user."
REQUEST_SINGLE = "A user asked:\n\n{prompt}"
REQUEST_MULTI = "Here is a conversation between a user and an AI assistant:\n\n{transcript}"
RESPONSES = "[Response A]\n{first}\n[End of Response A]\n\n[Response B]\n{second}\n[End of Response B]"
CRITIQUE_SELF_REFERENCE = (
    "Two AI assistants also replied to the user's last message. Using your own reply above as the "
    "reference, critique each of their replies under the principle: {principle}.\n\n{responses}\n\n"
    "Write a short critique of Response A, then a short critique of Response B."
)
CRITIQUE_DIRECT = (
    "{request}\n\nTwo AI assistants replied to the user's last message. Critique each of their replies "
    "under the principle: {principle}.\n\n{responses}\n\n"
    "Write a short critique of Response A, then a short critique of Response B."
)
VERDICT = 'Which response is better under the principle: {principle}? Answer "Response A" or "Response B".'


@dataclass(frozen=True)
class PreferenceConfig:
    mode: str = "self-reference"
    principle: str = DEFAULT_PRINCIPLE
    samples_per_order: int = 2  # s critiques (and verdicts) per order, as in the paper's code
    temperature: float = 0.1  # critique sampling, as in the paper's code (0 = greedy)
    top_p: float = 0.9
    reference_max_tokens: int = 160  # the annotator's own answer
    critique_max_tokens: int = 160  # one short critique of both responses
    seed: int = 0
    # Below this much probability on " A" + " B" the verdict is not in the choice tokens: parse free text.
    min_choice_mass: float = 0.05
    # Character budgets that keep the judge's conversation inside the model's context (2k tokens for
    # the embedded model): the conversation keeps its end (the latest turns), a response its start.
    max_conversation_chars: int = 2000
    max_response_chars: int = 1200

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not self.principle.strip():
            raise ValueError("principle must not be empty")
        if self.samples_per_order < 1:
            raise ValueError(f"samples_per_order must be >= 1, got {self.samples_per_order}")
        if not 0 <= self.min_choice_mass < 1:
            raise ValueError(f"min_choice_mass must be in [0, 1), got {self.min_choice_mass}")

    def config_hash(self, model_id: str, candidates: "CandidateConfig | None" = None) -> str:
        """Hash of everything that shapes the records (candidate generation included when it ran)."""
        shaping = {"model": model_id, "prompt": PROMPT_VERSION, **asdict(self),
                   "candidates": candidates.shaping() if candidates else None}
        return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]

    def critique_params(self) -> SamplingParams:
        return SamplingParams(n=self.samples_per_order, temperature=self.temperature, top_p=self.top_p,
                              max_tokens=self.critique_max_tokens, seed=self.seed)


@dataclass(frozen=True)
class CandidateConfig:
    """`--prompts FILE --candidates k`: k sampled responses per prompt from the policy model."""

    candidates: int = 2
    policy_model: str = "smollm2-135m"  # recorded in every row (model id)
    temperature: float = 0.8  # diverse candidates; the pair is uninformative if both are the same
    top_p: float = 0.95
    max_tokens: int = 160
    seed: int = 0

    def __post_init__(self):
        if self.candidates < 2:
            raise ValueError(f"candidates must be >= 2, got {self.candidates}")

    def shaping(self) -> dict:
        return asdict(self)

    def params(self) -> SamplingParams:
        return SamplingParams(n=self.candidates, temperature=self.temperature, top_p=self.top_p,
                              max_tokens=self.max_tokens, seed=self.seed)


# ---------------------------------------------------------------- inputs

_TURN = re.compile(r"(?:^|\n\n)(Human|User|Assistant):[ \t]?")
_ROLE = {"human": "user", "user": "user", "assistant": "assistant"}


def parse_dialogue(text: str) -> list[dict] | None:
    """'\\n\\nHuman: ...\\n\\nAssistant: ...' (hh-rlhf; also 'User:') -> chat messages; None if the text
    is not such a transcript (a plain single prompt)."""
    marks = list(_TURN.finditer(text))
    if not marks or text[: marks[0].start()].strip():
        return None
    messages = []
    for mark, nxt in zip(marks, marks[1:] + [None]):
        content = text[mark.end(): nxt.start() if nxt else len(text)]
        messages.append({"role": _ROLE[mark.group(1).lower()], "content": content.strip()})
    return messages


def split_hh_dialogues(chosen: str, rejected: str) -> tuple[list[dict], str, str] | str:
    """hh-rlhf `chosen`/`rejected` full dialogues -> (shared conversation, chosen turn, rejected turn),
    or the reason they cannot be split honestly (never a mangled pair)."""
    c, r = parse_dialogue(chosen), parse_dialogue(rejected)
    if c is None or r is None:
        return "not_a_dialogue"
    if c[-1]["role"] != "assistant" or r[-1]["role"] != "assistant":
        return "no_final_assistant_turn"
    if c[:-1] != r[:-1]:
        return "dialogues_differ_before_last_turn"
    if not c[:-1] or c[-2]["role"] != "user":
        return "no_user_turn_before_the_responses"
    if c[-1]["content"] == r[-1]["content"]:
        return "identical_responses"
    return c[:-1], c[-1]["content"], r[-1]["content"]


def _messages(path, row_number, value) -> list[dict]:
    """A prompt column: text (single prompt or a Human:/Assistant: transcript) or chat messages."""
    if isinstance(value, str):
        if not value.strip():
            raise InputError(path, row_number, "prompt is empty")
        return parse_dialogue(value) or [{"role": "user", "content": value.strip()}]
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        messages = []
        for m in value:
            role = _ROLE.get(str(m.get("role", "")).lower()) or ("system" if m.get("role") == "system" else None)
            if role is None or not isinstance(m.get("content"), str):
                raise InputError(path, row_number, f"prompt message {m!r} needs role user/assistant/system and text content")
            messages.append({"role": role, "content": m["content"]})
        if messages[-1]["role"] != "user":
            raise InputError(path, row_number, "prompt conversation must end with a user message")
        return messages
    raise InputError(path, row_number, "prompt must be text or a list of {role, content} messages")


def _response(path, row_number, row, column) -> str:
    value = row[column]
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):  # TRL conversational
        value = value[0].get("content")
    if not isinstance(value, str):
        raise InputError(path, row_number, f"column {column!r} must be text")
    return value.strip()


def _human_first(source_id: str) -> bool:
    """Where the human-preferred response goes (a or b): a stable coin from the id, so that the
    human choice is not always `a` (which a position-biased judge would match for free)."""
    return int(hashlib.sha1(source_id.encode()).hexdigest(), 16) % 2 == 0


def load_pairs(path: str | Path, limit: int | None = None) -> tuple[list[dict], list[dict]]:
    """Pairs from JSONL/Parquet. Columns: `prompt` (text, Human:/Assistant: transcript, or chat
    messages) + `response_a`/`response_b`; or `prompt` + `chosen`/`rejected` (TRL); or hh-rlhf's
    `chosen`/`rejected` full dialogues alone, split into the shared conversation and the two final
    assistant turns. Optional `id`. Returns (pairs, rejects): a malformed row raises InputError naming
    the file and row; an hh-rlhf row whose dialogues cannot be split (they differ before the last
    turn, ...) is returned in `rejects` with its reason, not mangled."""
    pairs, rejects, seen = [], [], set()
    for row_number, row in read_rows(path):
        if limit is not None and len(pairs) >= limit:
            break
        human = None
        if "response_a" in row or "response_b" in row:
            if "prompt" not in row or "response_b" not in row or "response_a" not in row:
                raise InputError(path, row_number, f"needs prompt, response_a, response_b; row has {sorted(row)}")
            conversation = _messages(path, row_number, row["prompt"])
            a, b = _response(path, row_number, row, "response_a"), _response(path, row_number, row, "response_b")
            if row.get("human_choice") in ("a", "b"):
                human = row["human_choice"]
        elif "chosen" in row and "rejected" in row:
            chosen, rejected = _response(path, row_number, row, "chosen"), _response(path, row_number, row, "rejected")
            if "prompt" in row:
                conversation = _messages(path, row_number, row["prompt"])
            else:
                split = split_hh_dialogues(row["chosen"], row["rejected"])
                if isinstance(split, str):
                    rejects.append({"source_file": str(path), "source_row": row_number, "reason": split})
                    continue
                conversation, chosen, rejected = split
            a, b, human = chosen, rejected, "a"
        else:
            raise InputError(path, row_number,
                             f"expected prompt/response_a/response_b or chosen/rejected columns, row has {sorted(row)}")
        source_id = (str(row["id"]) if row.get("id") not in (None, "")
                     else content_id("pair", json.dumps([conversation, sorted([a, b])])))
        if source_id in seen:
            continue
        seen.add(source_id)
        if human == "a" and not _human_first(source_id):
            a, b, human = b, a, "b"
        pairs.append({"source_id": source_id, "source_file": str(path), "source_row": row_number,
                      "conversation": conversation, "response_a": a, "response_b": b,
                      "human_choice": human, "policy_model": None})
    return pairs, rejects


PROMPT_COLUMNS = ("prompt", "question", "instruction", "turns", "messages")


def load_prompts(path: str | Path, limit: int | None = None) -> list[dict]:
    """Prompts for `--prompts FILE`: `prompt`/`question`/`instruction` (text or messages), or MT-Bench's
    `turns` (its first turn: later turns need the model's own earlier answers). Optional `id` or
    `question_id`."""
    prompts, seen = [], set()
    for row_number, row in read_rows(path):
        if limit is not None and len(prompts) >= limit:
            break
        column = next((c for c in PROMPT_COLUMNS if c in row), None)
        if column is None:
            raise InputError(path, row_number, f"missing column: expected one of {list(PROMPT_COLUMNS)}, row has {sorted(row)}")
        value = row[column]
        if column == "turns":
            if not isinstance(value, list) or not value or not isinstance(value[0], str):
                raise InputError(path, row_number, "turns must be a non-empty list of text")
            value = value[0]
        conversation = _messages(path, row_number, value)
        raw_id = row.get("id", row.get("question_id"))
        source_id = str(raw_id) if raw_id not in (None, "") else prompt_key(conversation)
        if source_id in seen:
            continue
        seen.add(source_id)
        prompts.append({"source_id": source_id, "source_file": str(path), "source_row": row_number,
                        "conversation": conversation})
    return prompts


def prompt_key(conversation: list[dict]) -> str:
    return content_id("prompt", json.dumps(conversation, sort_keys=True))


def group_by_prompt(pairs: Sequence[dict]) -> list[dict]:
    """One row per distinct prompt with all its pairs: the unit the LLM stage works on, so that a
    prompt's reference is generated once and reused by every pair of that prompt."""
    groups: dict[str, dict] = {}
    for pair in pairs:
        key = prompt_key(pair["conversation"])
        group = groups.setdefault(key, {"source_id": key, "prompt_id": key,
                                        "conversation": pair["conversation"], "pairs": []})
        group["pairs"].append(pair)
    return list(groups.values())


def pairs_from_candidates(prompt: dict, responses: Sequence[str], policy_model: str) -> list[dict]:
    """Every unordered pair of a prompt's sampled candidates (k candidates -> k(k-1)/2 pairs)."""
    return [{"source_id": f"{prompt['source_id']}/c{i}-c{j}", "source_file": prompt["source_file"],
             "source_row": prompt["source_row"], "conversation": prompt["conversation"],
             "response_a": responses[i].strip(), "response_b": responses[j].strip(), "human_choice": None,
             "policy_model": policy_model}
            for i, j in combinations(range(len(responses)), 2)]


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
        return REQUEST_SINGLE.format(prompt=prompt), cut
    text, cut = clip(transcript(conversation), config.max_conversation_chars, keep="tail")
    return REQUEST_MULTI.format(transcript=text), cut


def reference_messages(conversation: Sequence[dict], config: PreferenceConfig) -> list[dict]:
    """Turn 1: the annotator answers the request itself (a single prompt is asked as it is)."""
    if len(conversation) == 1:
        return [{"role": "user", "content": clip(conversation[0]["content"], config.max_conversation_chars)[0]}]
    return [{"role": "user", "content": REFERENCE_MULTI_TURN.format(request=request_text(conversation, config)[0])}]


def critique_messages(conversation: Sequence[dict], reference: str | None, first: str, second: str,
                      config: PreferenceConfig) -> list[dict]:
    """Turn 2: the candidates shown as Response A (`first`) and B (`second`), critiqued under the principle."""
    responses = RESPONSES.format(first=clip(first, config.max_response_chars)[0],
                                 second=clip(second, config.max_response_chars)[0])
    if config.mode == "self-reference":
        return reference_messages(conversation, config) + [
            {"role": "assistant", "content": reference or ""},
            {"role": "user", "content": CRITIQUE_SELF_REFERENCE.format(principle=config.principle, responses=responses)},
        ]
    return [{"role": "user", "content": CRITIQUE_DIRECT.format(
        request=request_text(conversation, config)[0], principle=config.principle, responses=responses)}]


def verdict_messages(critique_conversation: list[dict], critique: str, config: PreferenceConfig,
                     prefill: bool = True) -> list[dict]:
    """Turn 3: which is better; pre-filled up to the choice token (or not, for the free-text fallback)."""
    messages = critique_conversation + [
        {"role": "assistant", "content": critique},
        {"role": "user", "content": VERDICT.format(principle=config.principle)},
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


# ---------------------------------------------------------------- engine steps


def label_groups(groups: list[dict], engine: Engine, config: PreferenceConfig) -> list[dict]:
    """Runs inside the LLM actor, on a batch of prompt groups (see group_by_prompt). Engine calls per
    batch, whatever its size: 1 reference generate (self-reference mode), 1 critique generate (n = s),
    1 verdict scoring, and 1 free-text generate only if some verdict needs the fallback. Each pair
    gets `judgments` and the aggregate; each group its `usage` (requests, tokens, its share of calls)."""
    calls = 0
    references: dict[str, dict] = {}
    if config.mode == "self-reference" and groups:
        params = SamplingParams(temperature=0.0, max_tokens=config.reference_max_tokens)
        outs = engine.generate([reference_messages(g["conversation"], config) for g in groups], params)
        calls += 1
        for group, [completion] in zip(groups, outs):
            references[group["prompt_id"]] = {"text": completion.text.strip(), "prompt_tokens": completion.prompt_tokens,
                                              "completion_tokens": completion.completion_tokens}
    # Turn 2: one critique request (n = s samples) per pair and order.
    jobs = []  # (group, pair, order, critique conversation)
    for group in groups:
        reference = references.get(group["prompt_id"], {}).get("text")
        for pair in group["pairs"]:
            pair["judgments"], pair["usage"] = [], {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
            for order in canonical_orders(pair):
                first, second = ((pair["response_a"], pair["response_b"]) if order == "ab"
                                 else (pair["response_b"], pair["response_a"]))
                jobs.append((pair, order, critique_messages(group["conversation"], reference, first, second, config)))
    critiques = engine.generate([conv for _, _, conv in jobs], config.critique_params()) if jobs else []
    calls += bool(jobs)
    # Turn 3: score the two choice tokens after every critique sample.
    verdict_jobs = []  # (pair, judgment, verdict conversation without prefill)
    for (pair, order, conv), samples in zip(jobs, critiques):
        pair["usage"]["requests"] += 1
        for k, completion in enumerate(samples):
            pair["usage"]["prompt_tokens"] += completion.prompt_tokens
            pair["usage"]["completion_tokens"] += completion.completion_tokens
            judgment = {"order": order, "sample": k, "critique": completion.text.strip(),
                        "critique_tokens": completion.completion_tokens, "critique_finish": completion.finish_reason}
            pair["judgments"].append(judgment)
            verdict_jobs.append((pair, judgment, verdict_messages(conv, judgment["critique"], config, prefill=False)))
    scores = engine.score_continuations(
        [conv + [{"role": "assistant", "content": VERDICT_PREFILL}] for _, _, conv in verdict_jobs], CHOICES
    ) if verdict_jobs else []
    calls += bool(verdict_jobs)
    fallback = []
    for (pair, judgment, conv), score in zip(verdict_jobs, scores):
        pair["usage"]["requests"] += 1
        pair["usage"]["prompt_tokens"] += score.prompt_tokens
        p_first, mass = read_verdict(*score.logprobs)
        judgment.update(logprob_first=score.logprobs[0], logprob_second=score.logprobs[1], choice_mass=mass,
                        p_first=p_first, verdict_source="probs", verdict_text=None)
        if mass < config.min_choice_mass:
            fallback.append((pair, judgment, conv))
    if fallback:
        outs = engine.generate([conv for _, _, conv in fallback],
                               SamplingParams(temperature=0.0, max_tokens=FREE_TEXT_MAX_TOKENS))
        calls += 1
        for (pair, judgment, _), [completion] in zip(fallback, outs):
            pair["usage"]["requests"] += 1
            pair["usage"]["prompt_tokens"] += completion.prompt_tokens
            pair["usage"]["completion_tokens"] += completion.completion_tokens
            letter = parse_free_verdict(completion.text)
            judgment.update(verdict_text=completion.text, verdict_source="free_text" if letter else "none",
                            p_first=None if letter is None else float(letter == "A"))
    n_pairs = sum(len(g["pairs"]) for g in groups)
    for group in groups:
        reference = references.get(group["prompt_id"])
        group["reference"] = reference["text"] if reference else None
        for index, pair in enumerate(group["pairs"]):
            for j in pair["judgments"]:
                j["p_a"] = None if j["p_first"] is None else (j["p_first"] if j["order"] == "ab" else 1 - j["p_first"])
                j["vote"] = _vote(j["p_a"])
            pair.update(aggregate(pair["judgments"]))
            if reference and index == 0:  # the shared reference is counted once, on its prompt's first pair
                pair["usage"]["requests"] += 1
                pair["usage"]["prompt_tokens"] += reference["prompt_tokens"]
                pair["usage"]["completion_tokens"] += reference["completion_tokens"]
            pair["usage"]["engine_calls_share"] = calls / n_pairs
    return groups


def generate_candidates(prompts: list[dict], engine: Engine, config: CandidateConfig) -> list[dict]:
    """Runs inside the policy model's actor: k sampled responses per prompt, returned as prompt groups
    of all their pairs (ready for label_groups). One engine call per batch."""
    outs = engine.generate([p["conversation"] for p in prompts], config.params()) if prompts else []
    groups = []
    for prompt, samples in zip(prompts, outs):
        pairs = pairs_from_candidates(prompt, [c.text for c in samples], config.policy_model)
        tokens = sum(c.completion_tokens for c in samples)
        group = group_by_prompt(pairs)[0] if pairs else None
        if group is None:
            continue
        group["candidate_tokens"] = tokens
        groups.append(group)
    return groups


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
            "temperature": config.temperature, "top_p": config.top_p, "max_tokens": config.critique_max_tokens,
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


# ---------------------------------------------------------------- evaluation and export (pure)


def evaluate(rows: Sequence[dict]) -> dict:
    """Agreement with the human labels (rows that have one), ties, position consistency, strength."""
    labelled = [r for r in rows if r.get("human_choice") in ("a", "b")]
    decided = [r for r in labelled if r["chosen"] != "tie"]
    consistent = [r for r in labelled if r["consistent"]]
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    free = sum(1 for r in rows for j in r["judgments"] if j["verdict_source"] != "probs")
    judgments = sum(len(r["judgments"]) for r in rows)
    return {
        "pairs": len(rows),
        "human_labelled": len(labelled),
        "agreement": mean([r["chosen"] == r["human_choice"] for r in labelled]),
        "ties": mean([r["chosen"] == "tie" for r in rows]),
        "agreement_decided": mean([r["chosen"] == r["human_choice"] for r in decided]),
        "consistency": mean([bool(r["consistent"]) for r in rows]),
        "agreement_consistent": mean([r["chosen"] == r["human_choice"] for r in consistent]),
        "mean_strength": mean([r["strength"] for r in rows]),
        "free_text_verdicts": free / judgments if judgments else None,
        "requests_per_pair": mean([r["engine_requests"] for r in rows]),
        "engine_calls_per_pair": mean([r["engine_calls_share"] for r in rows]),
        "tokens_per_pair": mean([(r["prompt_tokens"] or 0) + (r["completion_tokens"] or 0) for r in rows]),
        "generated_tokens_per_pair": mean([r["completion_tokens"] or 0 for r in rows]),
    }


def to_trl(row: dict, margin: bool = False) -> dict | None:
    """A labelled row in TRL's conversational preference format (RewardTrainer, DPOTrainer):
    {"prompt": [messages], "chosen": [assistant msg], "rejected": [assistant msg]}; None for a tie.
    `margin` adds the strength as TRL's reward-model `margin` column."""
    if row["chosen"] not in ("a", "b"):
        return None
    good, bad = ((row["response_a"], row["response_b"]) if row["chosen"] == "a"
                 else (row["response_b"], row["response_a"]))
    out = {"prompt": [{"role": m["role"], "content": m["content"]} for m in row["conversation"]],
           "chosen": [{"role": "assistant", "content": good}],
           "rejected": [{"role": "assistant", "content": bad}]}
    if margin:
        out["margin"] = row["strength"]
    return out
