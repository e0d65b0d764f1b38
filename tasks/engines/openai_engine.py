"""The OpenAI backend: a model someone already serves behind an OpenAI-compatible endpoint (`vllm serve`,
SGLang, a Ray Serve LLM deployment, a hosted API), on the same async engine interface as the others.

Example:
    engine = OpenAIEngine(EngineSpec(backend="openai", base_url="http://127.0.0.1:8000/v1", model="smol",
                                     api_key_env="MY_KEY", price_in=0.15, price_out=0.6))
    [c] = await engine.generate([{"role": "user", "content": "2+2?"}], SamplingParams(max_tokens=8, logprobs=True))
    s = await engine.score(conv + [{"role": "assistant", "content": "The better response is Response"}], [" A", " B"])
    engine.stats.snapshot()   # {"http_requests": 2, "retries": 0, "throttled": 0, ..., "prompt_tokens": 61, ...}

`generate` is one chat completion with n samples and the sampled tokens' log-probabilities (always
asked: their count is each sample's completion_tokens). A trailing assistant message is continued with
vLLM's and SGLang's `continue_final_message` extension (sent only then). Greedy n > 1 asks once and
copies, as the in-process engines do. Prompt and completion tokens come from the response's `usage`.

`score` reads the continuations' log-probabilities: first from the top log-probabilities (`logprobs` +
`top_logprobs`, 20) of one generated token, when every continuation is one of those tokens (" A", " B");
otherwise, when the server is vLLM or Ray Serve LLM (it answers `/tokenize`), by appending each continuation's token ids
to the rendered prompt and reading vLLM's `prompt_logprobs` extension on `/v1/completions` — exactly
what the in-process vLLM engine does. A server that can do neither raises `EndpointError` saying so.

Failures. Each endpoint and model gets an adaptive limit of requests in flight (tasks/engines/limiter.py:
AIMD, starting at `spec.requests_in_flight`). A 429, a 5xx, a timeout or a lost connection is retried
up to `spec.max_retries` times, after the server's `Retry-After` when it sends one, else an exponential
back-off with jitter; a request still failing then returns empty completions with finish_reason
"request_failed" (base.request_failed) — the row's program drops the row with a reason, the run goes on.
A prompt over the model's context (a 400 that says so) is "prompt_too_long", as on the other engines.
401 / 403 / 404 (a wrong key, URL or model name) fail every request alike: they raise `EndpointError`.

The key. `spec.api_key_env` names an environment variable; its value is read here, sent in the
Authorization header, and kept nowhere else: not in the spec, the records, the runs table or a log line.

HTTP client: httpx (already a dependency, through Prefect) rather than the `openai` package: raw JSON
keeps vLLM's extensions (`prompt_logprobs`, `continue_final_message`) and the status and `Retry-After`
of every answer in view, and no retry loop of its own hides what the limiter must see.

Run its tests: .venv/bin/python -m pytest tests/tasks/engines/test_openai_engine.py (starts `vllm serve`)
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import re
import weakref
from dataclasses import asdict, dataclass
from typing import Sequence

from .base import (
    Completion, ContinuationScores, EngineSpec, Message, SamplingParams, prompt_too_long, request_failed, split_prefill,
    unscorable,
)
from .limiter import AIMDLimiter, AsyncGate

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 409, 429}) | frozenset(range(500, 600))
CONFIG_STATUSES = {401: "the key was refused", 403: "the key may not use this model", 404: "no such URL or model"}
BACKOFF_BASE_S = 0.5  # first back-off without Retry-After; doubles per retry, with jitter
BACKOFF_MAX_S = 60.0  # and never more, Retry-After included
TOP_LOGPROBS = 20  # OpenAI's cap for top_logprobs; vLLM's default max_logprobs


class EndpointError(RuntimeError):
    """The endpoint cannot serve this run at all (wrong key, URL, model; no way to score)."""


@dataclass
class EndpointStats:
    """What the endpoint did for one engine (cumulative): the run's `endpoint_*` and usage columns."""

    http_requests: int = 0  # HTTP requests sent, retries included
    retries: int = 0
    throttled: int = 0  # 429 answers
    server_errors: int = 0  # 5xx answers
    timeouts: int = 0  # timeouts and lost connections
    failed: int = 0  # engine requests that failed after their retries (rows' request_failed)
    prompt_tokens: int = 0  # from the responses' usage
    completion_tokens: int = 0
    max_in_flight: int = 0  # most HTTP requests in flight at once
    limit: float = 0.0  # the adaptive limit at the snapshot

    def snapshot(self) -> dict:
        return asdict(self)


@dataclass
class _Failure:
    kind: str  # "too_long" | "failed"
    detail: str
    prompt_tokens: int = 0


class OpenAIEngine:
    def __init__(self, spec: EngineSpec, limiter: AIMDLimiter | None = None):
        import httpx

        if not spec.base_url:
            raise EndpointError("--engine openai needs --base-url (e.g. http://127.0.0.1:8000/v1)")
        self.spec = spec
        self.base_url = spec.base_url.rstrip("/")
        self.root_url = re.sub(r"/v1$", "", self.base_url)  # vLLM's /tokenize and /version live at the root
        headers = {"Content-Type": "application/json"}
        if spec.api_key_env:
            key = os.environ.get(spec.api_key_env)
            if not key:
                raise EndpointError(f"--api-key-env {spec.api_key_env}: that environment variable is not set")
            headers["Authorization"] = f"Bearer {key}"
        self._headers = headers
        self._timeout = httpx.Timeout(spec.request_timeout, connect=min(30.0, spec.request_timeout))
        self._clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop -> AsyncClient
        self.gate = AsyncGate(limiter or AIMDLimiter(spec.requests_in_flight,
                                                     maximum=max(spec.requests_in_flight, spec.max_requests_in_flight)))
        self.stats = EndpointStats(limit=self.gate.limiter.limit)
        self._is_vllm: bool | None = None
        self.tokenizer = None  # the model's tokenizer is the server's: programs estimate token counts
        # httpx logs every request at INFO (URL and status): one line per request in the run's log
        logging.getLogger("httpx").setLevel(logging.WARNING)

    # ------------------------------------------------------------------ the interface
    async def generate(self, conversation: list[Message], params: SamplingParams) -> list[Completion]:
        """`params.n` completions of one conversation: one chat completion request."""
        copies = params.n if params.temperature == 0 else 1  # greedy samples are identical: ask once
        body = self._chat_body(conversation, n=params.n // copies, temperature=params.temperature,
                               top_p=params.top_p, max_tokens=params.max_tokens, stop=list(params.stop) or None,
                               seed=_request_seed(params.seed, conversation), logprobs=True, top_logprobs=0)
        answer = await self._post("/chat/completions", body)
        if isinstance(answer, _Failure):
            return prompt_too_long(answer.prompt_tokens, params) if answer.kind == "too_long" else request_failed(params)
        usage = answer.get("usage") or {}
        choices = sorted(answer.get("choices") or [], key=lambda c: c.get("index", 0))
        out = []
        for choice in choices:
            content = ((choice.get("logprobs") or {}).get("content")) or []
            tokens = len(content) if content else _share(usage.get("completion_tokens", 0), len(choices))
            out += [Completion(
                text=(choice.get("message") or {}).get("content") or "",
                prompt_tokens=int(usage.get("prompt_tokens", 0)),
                completion_tokens=tokens,
                finish_reason="stop" if choice.get("finish_reason") == "stop" else "length",
                token_logprobs=[float(t["logprob"]) for t in content] if params.logprobs else None,
            )] * copies
        if len(out) != params.n:  # a server that ignores n: a failed request, never a short row
            self.stats.failed += 1
            log.warning("endpoint %s returned %d choices for n=%d", self.base_url, len(out), params.n)
            return request_failed(params)
        return [Completion(**asdict(c)) for c in out]  # copies are separate objects

    async def score(self, conversation: list[Message], continuations: Sequence[str]) -> ContinuationScores:
        """log P(continuation | conversation): from the top log-probabilities of one generated token when
        every continuation is among them, else (vLLM) from prompt_logprobs over the appended tokens."""
        if not continuations or any(not c for c in continuations):
            raise ValueError(f"continuations {list(continuations)!r}: each must be a non-empty string")
        body = self._chat_body(conversation, n=1, temperature=0.0, max_tokens=1, logprobs=True,
                               top_logprobs=TOP_LOGPROBS)
        answer = await self._post("/chat/completions", body)
        if isinstance(answer, _Failure):
            return unscorable(answer.prompt_tokens, continuations)
        prompt_tokens = int((answer.get("usage") or {}).get("prompt_tokens", 0))
        choice = (answer.get("choices") or [{}])[0]
        content = (choice.get("logprobs") or {}).get("content") or []
        top = {}
        for entry in (content[0].get("top_logprobs") or []) if content else []:
            top.setdefault(entry["token"], float(entry["logprob"]))  # the most likely of equal strings
        if all(c in top for c in continuations):
            return ContinuationScores(logprobs=[top[c] for c in continuations], prompt_tokens=prompt_tokens)
        if not content:
            raise EndpointError(f"{self.base_url} returns no log-probabilities: it cannot score continuations")
        if not await self._server_is_vllm():
            raise EndpointError(
                f"{self.base_url}: continuations {list(continuations)!r} are not among the top {TOP_LOGPROBS} "
                "next tokens, and the server has no prompt_logprobs (a vLLM extension) to score them exactly")
        return await self._score_with_prompt_logprobs(conversation, continuations)

    def close(self) -> None:
        """Close the HTTP clients of loops that are not running (a running loop's closes with it)."""
        for loop, client in list(self._clients.items()):
            if not loop.is_closed() and not loop.is_running():
                loop.run_until_complete(client.aclose())
        self._clients.clear()

    # ------------------------------------------------------------------ vLLM's exact scoring
    async def _score_with_prompt_logprobs(self, conversation, continuations) -> ContinuationScores:
        messages, prefill = split_prefill(conversation)
        rendered = await self._post_root("/tokenize", {
            "model": self.spec.model, "messages": messages, "add_generation_prompt": prefill is None,
            "continue_final_message": prefill is not None, "add_special_tokens": False})
        if isinstance(rendered, _Failure):
            return unscorable(0, continuations)
        prompt = rendered["tokens"]
        conts = []
        for text in continuations:
            ids = await self._post_root("/tokenize", {"model": self.spec.model, "prompt": text, "add_special_tokens": False})
            if isinstance(ids, _Failure):
                return unscorable(len(prompt), continuations)
            if not ids["tokens"]:
                raise ValueError(f"continuation {text!r} has no tokens to score")
            conts.append(ids["tokens"])
        answers = await asyncio.gather(*(self._post("/completions", {
            "model": self.spec.model, "prompt": prompt + cont, "max_tokens": 1, "temperature": 0.0,
            "prompt_logprobs": 0}) for cont in conts))
        logprobs = []
        for cont, answer in zip(conts, answers):
            if isinstance(answer, _Failure):
                return unscorable(len(prompt), continuations)
            positions = answer["choices"][0].get("prompt_logprobs") or answer.get("prompt_logprobs")
            if positions is None:
                raise EndpointError(f"{self.base_url} ignored prompt_logprobs: it cannot score continuations")
            logprobs.append(float(sum(positions[len(prompt) + t][str(token)]["logprob"]
                                      for t, token in enumerate(cont))))
        return ContinuationScores(logprobs=logprobs, prompt_tokens=len(prompt))

    async def _server_is_vllm(self) -> bool:
        """Whether the server tokenizes for us (vLLM's `/tokenize`, which Ray Serve LLM's ingress has too)."""
        if self._is_vllm is None:
            answer = await self._request(self.root_url + "/tokenize", {"model": self.spec.model, "prompt": "a"},
                                         probe=True)
            self._is_vllm = not isinstance(answer, _Failure) and isinstance(answer.get("tokens"), list)
        return self._is_vllm

    # ------------------------------------------------------------------ HTTP with retries
    def _chat_body(self, conversation: list[Message], **options) -> dict:
        messages, prefill = split_prefill(conversation)
        body = {"model": self.spec.model, "messages": messages,
                **{k: v for k, v in options.items() if v is not None}}
        if prefill is not None:  # vLLM / SGLang: continue the last assistant message
            body.update(add_generation_prompt=False, continue_final_message=True)
        return body

    def _client(self):
        import httpx

        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
            client = self._clients[loop] = httpx.AsyncClient(headers=self._headers, timeout=self._timeout,
                                                             limits=limits)
        return client

    async def _post_root(self, path: str, body: dict):
        return await self._request(self.root_url + path, body)

    async def _post(self, path: str, body: dict):
        return await self._request(self.base_url + path, body)

    async def _request(self, url: str, body: dict | None, probe: bool = False):
        """The JSON answer, or a `_Failure` (too long; failed after retries). Config errors raise. A
        `probe` (is this vLLM?) is asked once, without retries, and any error is only its answer."""
        import httpx

        attempt = 0
        while True:
            ticket = await self.gate.acquire()
            self.stats.max_in_flight = max(self.stats.max_in_flight, self.gate.limiter.in_flight)
            self.stats.http_requests += 1
            retry_after, detail = None, ""
            try:
                if body is None:
                    response = await self._client().get(url)
                else:
                    response = await self._client().post(url, content=json.dumps(body))
            except httpx.TimeoutException as exc:
                self.stats.timeouts += 1
                detail = f"timeout ({type(exc).__name__})"
            except httpx.TransportError as exc:
                self.stats.timeouts += 1
                detail = f"connection: {type(exc).__name__}: {exc}"
            else:
                status = response.status_code
                if status < 400:
                    await self.gate.release(ticket, "ok")
                    self.stats.limit = self.gate.limiter.limit
                    answer = response.json()
                    self._count_usage(answer)
                    return answer
                detail = f"HTTP {status}: {response.text[:300]}"
                if status in RETRY_STATUSES:
                    self.stats.throttled += status == 429
                    self.stats.server_errors += status >= 500
                    retry_after = _retry_after(response.headers.get("retry-after"))
                else:
                    await self.gate.release(ticket, "neutral")
                    if probe:
                        return _Failure("failed", detail)
                    if status in CONFIG_STATUSES:
                        raise EndpointError(f"{url}: {CONFIG_STATUSES[status]} ({detail})")
                    if status == 400 and _too_long(response.text):
                        return _Failure("too_long", detail, _prompt_tokens_in(response.text))
                    return self._failed(url, detail)  # a request the server will never take
            await self.gate.release(ticket, "throttled", retry_after)
            self.stats.limit = self.gate.limiter.limit
            if probe:
                return _Failure("failed", detail)
            if attempt >= self.spec.max_retries:
                return self._failed(url, f"{detail} after {attempt} retries")
            attempt += 1
            self.stats.retries += 1
            delay = retry_after if retry_after is not None else BACKOFF_BASE_S * 2 ** (attempt - 1) * random.uniform(0.5, 1.0)
            await asyncio.sleep(min(delay, BACKOFF_MAX_S))

    def _failed(self, url: str, detail: str) -> _Failure:
        self.stats.failed += 1
        log.warning("request to %s failed: %s", url, detail)
        return _Failure("failed", detail)

    def _count_usage(self, answer: dict) -> None:
        usage = answer.get("usage") if isinstance(answer, dict) else None
        if usage:
            self.stats.prompt_tokens += int(usage.get("prompt_tokens") or 0)
            self.stats.completion_tokens += int(usage.get("completion_tokens") or 0)

    def endpoint_stats(self) -> dict:
        return self.stats.snapshot()


def endpoint_problem(base_url: str, model: str, api_key_env: str | None, timeout: float = 10.0) -> str | None:
    """Why a run cannot use this endpoint, in one line, or None: asked before anything starts (preflight).
    Reads `/models`: the server must answer, accept the key and serve `model`."""
    import httpx

    headers = {}
    if api_key_env:
        key = os.environ.get(api_key_env)
        if not key:
            return f"--api-key-env {api_key_env}: that environment variable is not set"
        headers["Authorization"] = f"Bearer {key}"
    url = base_url.rstrip("/") + "/models"
    try:
        response = httpx.get(url, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        return f"no answer from {url} ({type(exc).__name__})"
    if response.status_code in CONFIG_STATUSES:
        return f"{url}: HTTP {response.status_code}: {CONFIG_STATUSES[response.status_code]}"
    if response.status_code >= 400:
        return None  # some gateways have no /models: the first request will tell
    try:
        served = [m.get("id") for m in response.json().get("data", [])]
    except (ValueError, AttributeError):
        return None
    if served and model not in served:
        return f"the server does not serve model {model!r} (it serves {', '.join(map(str, served[:8]))})"
    return None


def _share(total: int, parts: int) -> int:
    return int(total) // max(1, parts)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from datetime import datetime, timezone
    from email.utils import parsedate_to_datetime

    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(timezone.utc)).total_seconds())
    except (TypeError, ValueError):
        return None


_TOO_LONG = re.compile(r"context length|maximum context|too long|max_model_len|context window", re.I)


def _too_long(text: str) -> bool:
    return bool(_TOO_LONG.search(text))


def _prompt_tokens_in(text: str) -> int:
    """The prompt's token count when the error message names it (vLLM: "... 3000 tokens in the messages")."""
    match = re.search(r"(\d+)\s+(?:tokens\s+)?in the (?:messages|prompt)", text) or \
        re.search(r"(\d+)\s+input\s+tokens", text) or re.search(r"prompt (?:contains|has) (?:at least )?(\d+)", text)
    return int(match.group(1)) if match else 0


def _request_seed(seed: int | None, conversation: list[Message]) -> int | None:
    """A request's seed: the caller's seed mixed with its conversation (as the vLLM engine mixes it with
    the prompt's tokens), so prompts do not share one random stream."""
    if seed is None:
        return None
    digest = hashlib.sha256(f"{seed}:{json.dumps(conversation, sort_keys=True)}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


__all__ = ["EndpointError", "EndpointStats", "OpenAIEngine", "endpoint_problem"]
