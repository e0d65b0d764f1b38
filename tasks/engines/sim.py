"""A GPU simulated in time: vLLM's continuous batching on one GPU, scripted text, real wall-clock waits.

It answers like the fake engine (scripted replies, uniform or scripted scores) but takes as long as
vLLM would on one GPU, so a benchmark can measure how well the pipeline keeps a GPU busy on any box,
in seconds (`sim_speed` > 1 runs faster than real time):

    engine = make_engine(EngineSpec(backend="sim", model="sim", sim_lengths="data/math_programs", sim_speed=4))
    [c] = await engine.generate([{"role": "user", "content": "2+2?"}], SamplingParams())
    c.completion_tokens                   # drawn from the source's completion_tokens column
    engine.stats.snapshot()               # requests, steps, tokens_generated, busy_s, mean_running, ...

The model (vLLM's scheduler reduced to time; one scheduler task per event loop):
- every request waits in one FCFS queue; each step admits waiting sequences while fewer than
  `sim_max_num_seqs` run (a request with n samples is n sequences, fanned out and admitted one by one
  as vLLM V1 does; greedy with n > 1 is one sequence copied n times, as tasks/engines/vllm_engine.py
  does). A request arriving during a step joins at the next one;
- a step costs `sim_step_base_s + sim_step_per_seq_s × decoding sequences`, plus the prompt tokens of
  the requests it admits at `sim_prefill_tok_s` (a request's prompt is charged once, not per sample);
  every running sequence decodes one token per step, the admitting step included (prefill yields the
  first token), so a request of L tokens alone takes L steps;
- the scheduler sleeps `step / sim_speed` of wall time per step against a running deadline: a late
  wake-up (the event loop busy elsewhere, timer granularity at high speed) is made up by the next
  steps, as a real GPU keeps computing while the host is busy, and a step that started (on the GPU's
  clock) before a request arrived does not admit it. With nothing to run the scheduler task ends (the
  next request starts it again); an idle GPU starts when the scheduler task next runs, so a burst
  submitted in one loop tick shares a step (and the host's time to submit a large burst shows as GPU
  idle time, ~50 µs per request here).
- `score` is one prefill of the conversation and its continuations: a slot for one step, no decode.

Output lengths come from a real run's `completion_tokens` (`sim_lengths`: a Parquet file or folder,
a .json file, an inline JSON list, or a tuple of ints; default `DEFAULT_LENGTHS`). Use a table with
one completion per row: math_programs, cot_rewrites, retrieval_queries (preference_labels' column sums
a pair's requests). Each draw is a hash of (sim_seed, params.seed, prompt, sample index): the same
requests get the same lengths whatever their arrival order; an unseeded sampled request asked again
draws anew (its repeat count is in the hash). A draw over params.max_tokens is cut there
(finish_reason "length"). The text does not depend on the length: it is `fake_replies` cycled (or
`reply(conversation, params)`), cut at stop strings; completion_tokens is the drawn length.
Prompt tokens are estimated without a tokenizer: ⌈characters / 4⌉ per message (the usual ~4
characters per token of English under BPE tokenizers) + 4 per message for the chat template's markers.

Calibration, to an order of magnitude: the defaults stand for an 8B model in bf16 under vLLM on one
H100. Sources:
- ≈12,500 output tok/s for Llama 3.1 8B (BF16) on 1×H100 80GB under vLLM (compiled third-party
  results, https://www.morphllm.com/vllm-benchmarks, 2026); vLLM's own v0.6.0 report benchmarks the
  same setting (Llama 3 8B, 1×H100, ShareGPT: https://blog.vllm.ai/2024/09/05/perf-update.html).
  Here: 256 sequences / (8 ms + 256 × 0.05 ms) = 256 / 20.8 ms ≈ 12,300 tok/s.
- one stream decodes at ≈75 tok/s (≈13 ms/token) for Llama-3.1-8B on an A100-40GB under vLLM
  (https://johnmusgrave.com/p/vllm-throughput-latency-sweep-on); decode at small batch is bound by
  reading the 16 GB of weights, and an H100 SXM reads 3.35 TB/s against the A100-40GB's 1.56 TB/s:
  ≈5–7 ms, 4.8 ms at the roofline; the v0.6.0 report names per-step CPU work as a large share of an
  8B model's step on an H100. Here: 8 ms + 0.05 ms ≈ 124 tok/s for one stream.
- prefill is compute-bound: 2 × 8e9 FLOP per prompt token; 50k tok/s is 800 TFLOP/s, ~80% of the
  H100's 989 dense bf16 TFLOP/s, the optimistic end (25–40k tok/s is as likely; lower
  `sim_prefill_tok_s` for a pessimistic run).
Not modelled: KV-cache capacity and preemption, the chunked-prefill token budget, attention cost
growing with context length, prefix caching across requests, CPU-side scheduling overhead.

`generate_batch` / `score_batch` are the old synchronous, batch-wise interface (and batching.py's
BatchBackend): they block (time.sleep) for as long as the same batch, arriving at once, takes through
the same model. Use either them or the async calls on one engine, one batch at a time: calls that
overlap are simulated as separate GPUs.

Run its tests: .venv/bin/python -m pytest tests/tasks/engines/test_sim_engine.py -q
"""
from __future__ import annotations

import asyncio
import hashlib
import heapq
import itertools
import json
import math
import time
from collections import deque
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

from .base import Completion, ContinuationScores, EngineSpec, Message, SamplingParams, truncate_at_stop
from .fake import Replier, Script, Scorer


# completion_tokens of every completion of a sample run of math_programs, cot_rewrites and
# retrieval_queries (the embedded SmolLM2-135M under vLLM on CPU, 46 completions): mostly short
# programs and queries, a tail of rewrites cut at their max_tokens (384). A small model's lengths under
# this pipeline's budgets: pass `sim_lengths` for a real model's run.
DEFAULT_LENGTHS = (
    6, 7, 8, 9, 9, 10, 10, 10, 10, 10, 10, 10, 11, 11, 13, 13, 14, 15, 15, 16, 16, 16, 16, 16, 16, 16,
    17, 19, 20, 23, 23, 23, 24, 24, 39, 41, 43, 48, 53, 86, 94, 95, 121, 384, 384, 384,
)
CHARS_PER_TOKEN = 4  # the usual rule of thumb for English text under BPE tokenizers
TEMPLATE_TOKENS_PER_MESSAGE = 4  # a chat template's role header and end-of-turn markers


@dataclass
class SimStats:
    """What the simulated GPU did, cumulative over the engine's life (all event loops, both interfaces)."""

    requests: int = 0  # generate and score requests received
    steps: int = 0  # forward passes
    tokens_generated: int = 0  # decoded tokens (a greedy request with n > 1 decodes one sequence)
    prompt_tokens: int = 0  # prefilled tokens
    busy_s: float = 0.0  # simulated seconds with at least one running sequence (the sum of step times)
    seq_steps: int = 0  # running sequences summed over steps: seq_steps / steps is the mean batch
    peak_running: int = 0  # most sequences running in one step

    def snapshot(self) -> dict:
        out = asdict(self)
        out["mean_running"] = self.seq_steps / self.steps if self.steps else 0.0
        out["tokens_per_busy_s"] = self.tokens_generated / self.busy_s if self.busy_s else 0.0
        return out


@dataclass(eq=False)
class _Request:
    prompt_tokens: int  # charged once, in the step that admits its first sequence
    lengths: list[int]  # tokens each of its sequences decodes; 0: prefill only (a score request)
    result: object  # what the caller gets once every sequence is done
    arrived: float = -math.inf  # wall clock; a step that started earlier does not admit it
    future: asyncio.Future | None = None
    prefilled: bool = False
    left: int = 0  # sequences not yet done


class _GPU:
    """vLLM's scheduler reduced to time: FCFS admission up to max_num_seqs, one token per running
    sequence per step. Pure bookkeeping in simulated seconds; the caller decides how to wait."""

    def __init__(self, spec: EngineSpec, stats: SimStats):
        self.spec, self.stats = spec, stats
        self.waiting: deque[tuple[_Request, int]] = deque()  # (request, its sequence's length)
        self.running: list[tuple[int, int, _Request, bool]] = []  # heap: (last step, tiebreak, request, decodes)
        self.decoding = 0  # running sequences that decode (score requests only prefill)
        self.step_no = 0
        self._tiebreak = itertools.count()

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.running

    def add(self, request: _Request) -> None:
        request.left = len(request.lengths)
        self.waiting.extend((request, length) for length in request.lengths)

    def pending(self) -> list[_Request]:
        return list({id(r): r for r in [w[0] for w in self.waiting] + [s[2] for s in self.running]}.values())

    def step(self, start: float = math.inf) -> tuple[float, list[_Request]]:
        """One forward pass: admit what fits and had arrived by `start`, prefill it, decode one token of
        every running sequence. (simulated seconds, requests now complete); (0.0, []) if nothing ran."""
        spec, prefill = self.spec, 0
        while self.waiting and len(self.running) < spec.sim_max_num_seqs:
            request, length = self.waiting[0]
            if request.arrived > start:
                break
            self.waiting.popleft()
            if request.future is not None and request.future.done():
                continue  # its caller gave up (cancelled): vLLM aborts it
            if not request.prefilled:
                prefill += request.prompt_tokens
                request.prefilled = True
            heapq.heappush(self.running, (self.step_no + max(length, 1) - 1, next(self._tiebreak), request, length > 0))
            self.decoding += length > 0
        if not self.running:
            return 0.0, []
        seconds = spec.sim_step_base_s + spec.sim_step_per_seq_s * self.decoding + prefill / spec.sim_prefill_tok_s
        stats = self.stats
        stats.steps += 1
        stats.tokens_generated += self.decoding
        stats.prompt_tokens += prefill
        stats.busy_s += seconds
        stats.seq_steps += len(self.running)
        stats.peak_running = max(stats.peak_running, len(self.running))
        finished = []
        while self.running and self.running[0][0] == self.step_no:
            _, _, request, decodes = heapq.heappop(self.running)
            self.decoding -= decodes
            request.left -= 1
            if request.left == 0:
                finished.append(request)
        self.step_no += 1
        return seconds, finished


class SimEngine:
    tokenizer = None  # none: prompt tokens are estimated from characters

    def __init__(self, spec: EngineSpec | None = None, reply: Replier | None = None, scorer: Scorer | None = None):
        self.spec = spec or EngineSpec(backend="sim", model="sim")
        _check(self.spec)
        self.lengths = load_lengths(self.spec.sim_lengths)
        self.stats = SimStats()
        self.script = Script(self.spec, scorer=scorer, reply=reply)
        self._asked: dict[bytes, int] = {}  # unseeded sampled requests per prompt: a repeat draws anew
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deadline = -math.inf
        self._gpu: _GPU | None = None
        self._worker: asyncio.Task | None = None

    # The async interface: one request per call, continuously batched by one scheduler task per loop.

    async def generate(self, conversation: list[Message], params: SamplingParams) -> list[Completion]:
        return await self._submit(self._generate_request(conversation, params))

    async def score(self, conversation: list[Message], continuations: Sequence[str]) -> ContinuationScores:
        return await self._submit(self._score_request(conversation, continuations))

    async def _submit(self, request: _Request):
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first call, or a new event loop (a second asyncio.run)
            self._loop, self._gpu, self._worker, self._deadline = loop, _GPU(self.spec, self.stats), None, -math.inf
        request.future = loop.create_future()
        request.arrived = time.monotonic()
        self.stats.requests += 1
        self._gpu.add(request)
        # The scheduler runs while the GPU has work: an idle engine leaves no pending task behind
        # (which the interpreter would report at exit).
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._run(self._gpu))
        return await request.future

    async def _run(self, gpu: _GPU) -> None:
        clock, speed = time.monotonic, self.spec.sim_speed
        try:
            while not gpu.idle:
                # A busy GPU starts its next step when the last one ends, even if this task woke late;
                # an idle one starts now. (`_deadline`: the wall time the simulated GPU has reached.)
                start = self._deadline if gpu.running else max(self._deadline, clock())
                seconds, finished = gpu.step(start)
                self._deadline = start + seconds / speed
                await asyncio.sleep(max(0.0, self._deadline - clock()))
                for request in finished:
                    if not request.future.done():
                        request.future.set_result(request.result)
        except BaseException as exc:
            for request in gpu.pending():
                if not request.future.done():
                    if isinstance(exc, asyncio.CancelledError):
                        request.future.cancel()
                    else:
                        request.future.set_exception(exc)
            raise

    # The synchronous, batch-wise interface: the old design, measured as a baseline.

    def generate_batch(self, conversations: Sequence[list[Message]], params: SamplingParams) -> list[list[Completion]]:
        """One list of params.n completions per conversation, after as long as the batch takes alone."""
        requests = [self._generate_request(c, params) for c in conversations]
        self._block(requests)
        return [r.result for r in requests]

    def score_batch(self, conversations: Sequence[list[Message]],
                    continuations: Sequence[str]) -> list[ContinuationScores]:
        requests = [self._score_request(c, continuations) for c in conversations]
        self._block(requests)
        return [r.result for r in requests]

    def _block(self, requests: list[_Request]) -> None:
        """Sleep for the simulated time of these requests arriving at once on an otherwise idle GPU."""
        gpu = _GPU(self.spec, self.stats)
        self.stats.requests += len(requests)
        for request in requests:
            gpu.add(request)
        seconds = 0.0
        while not gpu.idle:
            seconds += gpu.step()[0]
        time.sleep(seconds / self.spec.sim_speed)

    # Requests: what the caller gets, how long each sequence runs.

    def _generate_request(self, conversation: list[Message], params: SamplingParams) -> _Request:
        prompt = prompt_tokens(conversation)
        greedy = params.temperature == 0
        drawn = self._draw(conversation, params, 1 if greedy else params.n)
        group = []
        for i in range(params.n):
            if greedy and i:  # greedy samples are one sequence, copied
                first = group[0]
                group.append(replace(first, token_logprobs=list(first.token_logprobs) if params.logprobs else None))
                continue
            reply = self.script.text(conversation, params)
            text, _ = truncate_at_stop(reply, params.stop)
            tokens = min(drawn[i], params.max_tokens)
            group.append(Completion(
                text=text, prompt_tokens=prompt, completion_tokens=tokens,
                finish_reason="length" if drawn[i] > params.max_tokens else "stop",
                token_logprobs=[-0.5] * tokens if params.logprobs else None,
            ))
        return self._logged(_Request(prompt, [min(d, params.max_tokens) for d in drawn], group))

    def _score_request(self, conversation: list[Message], continuations: Sequence[str]) -> _Request:
        if not continuations:
            raise ValueError("score needs at least one continuation")
        logprobs = self.script.logprobs(conversation, continuations)
        prompt = prompt_tokens(conversation)
        prefill = prompt + sum(max(1, estimate_tokens(c)) for c in continuations)
        return self._logged(_Request(prefill, [0], ContinuationScores(logprobs=logprobs, prompt_tokens=prompt)))

    def _logged(self, request: _Request) -> _Request:
        """With `sim_log`: one JSON line per request (its prompt tokens and sequence lengths), so that a
        benchmark can `replay` the very same work all at once, as independent requests."""
        if self.spec.sim_log:
            with open(self.spec.sim_log, "a") as log:
                log.write(json.dumps({"prompt": request.prompt_tokens, "lengths": request.lengths}) + "\n")
        return request

    async def replay(self, requests: Sequence[dict]) -> None:
        """Submit logged requests ({"prompt", "lengths"}) all at once: the engine's saturated run of them."""
        await asyncio.gather(*(self._submit(_Request(r["prompt"], list(r["lengths"]), None)) for r in requests))

    def _draw(self, conversation: list[Message], params: SamplingParams, sequences: int) -> list[int]:
        """Lengths of a request's sequences: a hash of (seed, params.seed, prompt, sample, repeat)."""
        repeat = 0
        if params.temperature > 0 and params.seed is None:
            key = _digest(conversation)
            repeat = self._asked.get(key, 0)
            self._asked[key] = repeat + 1
        hashes = (_digest(self.spec.sim_seed, params.seed, repeat, i, conversation) for i in range(sequences))
        return [self.lengths[int.from_bytes(h, "big") % len(self.lengths)] for h in hashes]

    def close(self) -> None:
        if self._worker is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._worker.cancel)


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def prompt_tokens(conversation: list[Message]) -> int:
    """Tokens of a rendered conversation, estimated without a tokenizer."""
    return sum(estimate_tokens(m.get("content") or "") + TEMPLATE_TOKENS_PER_MESSAGE for m in conversation)


def load_lengths(source: str | Sequence[int] | None) -> tuple[int, ...]:
    """Output lengths to draw from (each at least 1): see `EngineSpec.sim_lengths`."""
    if source is None:
        return DEFAULT_LENGTHS
    if not isinstance(source, str):
        values = list(source)
    elif source.lstrip().startswith("["):
        values = json.loads(source)
    elif source.endswith(".json"):
        values = json.loads(Path(source).expanduser().read_text())
    else:
        values = _parquet_lengths(Path(source).expanduser())
    lengths = tuple(max(1, int(v)) for v in values if v is not None)
    if not lengths:
        raise ValueError(f"no output lengths in {source!r}")
    return lengths


def _parquet_lengths(path: Path) -> list:
    """`completion_tokens` of a Parquet file, or of every Parquet file under a folder that has one."""
    import pyarrow.parquet as pq

    if not path.exists():
        raise FileNotFoundError(f"sim_lengths: {path} does not exist")
    values: list = []
    for file in sorted(path.rglob("*.parquet")) if path.is_dir() else [path]:
        if "completion_tokens" in pq.read_schema(file).names:
            values += pq.ParquetFile(file).read(columns=["completion_tokens"]).column(0).to_pylist()
    return values


def _digest(*parts) -> bytes:
    return hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(), digest_size=8).digest()


def _check(spec: EngineSpec) -> None:
    if spec.sim_speed <= 0:
        raise ValueError(f"sim_speed must be > 0, got {spec.sim_speed}")
    if spec.sim_max_num_seqs < 1:
        raise ValueError(f"sim_max_num_seqs must be >= 1, got {spec.sim_max_num_seqs}")
    if spec.sim_step_base_s < 0 or spec.sim_step_per_seq_s < 0:
        raise ValueError("sim_step_base_s and sim_step_per_seq_s must be >= 0")
    if spec.sim_prefill_tok_s <= 0:
        raise ValueError(f"sim_prefill_tok_s must be > 0, got {spec.sim_prefill_tok_s}")
