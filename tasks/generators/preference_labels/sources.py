"""The preference-labels inputs: pairs (`--pairs`) and prompts (`--prompts`), read and checked, and the
prompt groups the engine step works on. Pure apart from reading the file.

    load_pairs("pairs.jsonl").rows  -> [{"source_id": "p1", "source_file": "pairs.jsonl", "source_row": 1,
                                         "conversation": [{"role": "user", "content": "How do I boil an egg?"}],
                                         "response_a": "Boil it.", "response_b": "No idea.", "human_choice": None,
                                         "policy_model": None}]

A malformed row raises InputError naming the file and row. An hh-rlhf row whose two dialogues cannot
be split honestly is one of the Source's `rejects`, with one of REJECT_REASONS (the run counts it as
`dropped_<reason>` and lists it in its artifact), never mangled.
"""
from __future__ import annotations

import hashlib
import json
import re
from itertools import combinations
from pathlib import Path
from typing import Iterator, Sequence

from tasks.runtime.inputs import (
    InputError, Rejected, RowChecks, Source, column_id, content_id, describe, pick_column, read_rows, select_rows,
)

# Why an hh-rlhf row is not labelled (split_hh_dialogues).
REJECT_REASONS = ("not_a_dialogue", "no_final_assistant_turn", "dialogues_differ_before_last_turn",
                  "no_user_turn_before_the_responses", "identical_responses")

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


def _messages(path, row_number, row: dict, column: str) -> list[dict]:
    """A prompt column: text (single prompt or a Human:/Assistant: transcript) or chat messages."""
    value = row[column]
    if isinstance(value, str):
        if not value.strip():
            raise InputError(path, row_number, f"column {column!r} is empty")
        return parse_dialogue(value) or [{"role": "user", "content": value.strip()}]
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        messages = []
        for m in value:
            role = _ROLE.get(str(m.get("role", "")).lower()) or ("system" if m.get("role") == "system" else None)
            if role is None or not isinstance(m.get("content"), str):
                raise InputError(path, row_number, f"column {column!r}: message {m!r} needs role user/assistant/system "
                                                   "and text content")
            messages.append({"role": role, "content": m["content"]})
        if messages[-1]["role"] != "user":
            raise InputError(path, row_number, f"column {column!r}: the conversation must end with a user message")
        return messages
    raise InputError(path, row_number, f"column {column!r} must be text or a list of {{role, content}} messages, "
                                       f"got {describe(value)}")


def _response(path, row_number, row, column) -> str:
    value = row[column]
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):  # TRL conversational
        value = value[0].get("content")
    if not isinstance(value, str):
        raise InputError(path, row_number, f"column {column!r} must be text, got {describe(value)}")
    return value.strip()


def _human_first(source_id: str) -> bool:
    """Where the human-preferred response goes (a or b): a stable coin from the id, so that the
    human choice is not always `a` (which a position-biased judge would match for free)."""
    return int(hashlib.sha1(source_id.encode()).hexdigest(), 16) % 2 == 0


def load_pairs(path: str | Path, limit: int | None = None, checks: RowChecks = RowChecks()) -> Source:
    """Pairs from JSONL/Parquet. Columns: `prompt` (text, Human:/Assistant: transcript, or chat
    messages) + `response_a`/`response_b`; or `prompt` + `chosen`/`rejected` (TRL); or hh-rlhf's
    `chosen`/`rejected` full dialogues alone, split into the shared conversation and the two final
    assistant turns. Optional `id`. A malformed row raises InputError naming the file and row; an
    hh-rlhf row whose dialogues cannot be split (they differ before the last turn, ...) is a reject
    with its reason, not mangled; a repeated id and an over-long pair follow `checks`."""
    return select_rows(path, _pairs(path), limit, checks)


def _pairs(path: str | Path) -> Iterator[dict | Rejected]:
    for row_number, row in read_rows(path):
        human = None
        if "response_a" in row or "response_b" in row:
            if "prompt" not in row or "response_b" not in row or "response_a" not in row:
                raise InputError(path, row_number, f"needs prompt, response_a, response_b; row has {sorted(row)}")
            conversation = _messages(path, row_number, row, "prompt")
            a, b = _response(path, row_number, row, "response_a"), _response(path, row_number, row, "response_b")
            if row.get("human_choice") in ("a", "b"):
                human = row["human_choice"]
        elif "chosen" in row and "rejected" in row:
            chosen, rejected = _response(path, row_number, row, "chosen"), _response(path, row_number, row, "rejected")
            if "prompt" in row:
                conversation = _messages(path, row_number, row, "prompt")
            else:
                split = split_hh_dialogues(row["chosen"], row["rejected"])
                if isinstance(split, str):
                    yield Rejected(row_number, split)
                    continue
                conversation, chosen, rejected = split
            a, b, human = chosen, rejected, "a"
        else:
            raise InputError(path, row_number,
                             f"expected prompt/response_a/response_b or chosen/rejected columns, row has {sorted(row)}")
        source_id = (column_id(path, row_number, row, ("id",))
                     or content_id("pair", json.dumps([conversation, sorted([a, b])])))
        if human == "a" and not _human_first(source_id):
            a, b, human = b, a, "b"
        yield {"source_id": source_id, "source_file": str(path), "source_row": row_number,
               "conversation": conversation, "response_a": a, "response_b": b,
               "human_choice": human, "policy_model": None}


PROMPT_COLUMNS = ("prompt", "question", "instruction", "turns", "messages")


def load_prompts(path: str | Path, limit: int | None = None, checks: RowChecks = RowChecks()) -> Source:
    """Prompts for `--prompts FILE`: `prompt`/`question`/`instruction` (text or messages), or MT-Bench's
    `turns` (its first turn: later turns need the model's own earlier answers). Optional `id` or
    `question_id`. A repeated id and an over-long prompt follow `checks`."""
    return select_rows(path, _prompts(path), limit, checks)


def _prompts(path: str | Path) -> Iterator[dict]:
    for row_number, row in read_rows(path):
        column = pick_column(path, row_number, row, PROMPT_COLUMNS)
        if column == "turns":
            turns = row[column]
            if not isinstance(turns, list) or not turns or not isinstance(turns[0], str):
                got = describe(turns) if not isinstance(turns, list) else repr(turns)[:80]
                raise InputError(path, row_number, f"column 'turns' must be a non-empty list of text, got {got}")
            conversation = _messages(path, row_number, {column: turns[0]}, column)
        else:
            conversation = _messages(path, row_number, row, column)
        yield {"source_id": column_id(path, row_number, row, ("id", "question_id")) or prompt_key(conversation),
               "source_file": str(path), "source_row": row_number, "conversation": conversation}


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
