"""SimEngine keeps vLLM's time on one GPU: continuous batching up to max_num_seqs at the calibrated step
cost (≈12.3k tok/s at 256 sequences, ≈8 ms per token alone), n samples as n slots (greedy: one), lengths
drawn reproducibly from a source and cut at max_tokens, score as one prefill, a new event loop per
asyncio.run, and a blocking batch interface that takes as long as the same batch through the scheduler.
Times are checked on the engine's simulated counters; wall clock only with generous bounds."""
import asyncio
import json
import math
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.engines import EngineSpec, SamplingParams, make_engine
from tasks.engines.sim import DEFAULT_LENGTHS, SimEngine, load_lengths, prompt_tokens

USER = [{"role": "user", "content": "two plus two"}]  # 12 characters: 3 + 4 template tokens
BASE, PER_SEQ, PREFILL = 0.008, 0.00005, 50_000.0  # the defaults


def sim(**fields) -> SimEngine:
    return SimEngine(EngineSpec(backend="sim", model="sim", **fields))


def ask(n: int) -> list[dict]:
    return [{"role": "user", "content": f"question {n}"}]


def test_make_engine_builds_it_with_the_default_lengths_and_scripted_replies():
    engine = make_engine(EngineSpec(backend="sim", model="sim", fake_replies=("a b", "c"), sim_speed=1000))
    assert isinstance(engine, SimEngine) and engine.lengths == DEFAULT_LENGTHS and engine.tokenizer is None
    out = asyncio.run(engine.generate(USER, SamplingParams(n=2, temperature=0.7, stop=("b",))))
    assert [c.text for c in out] == ["a ", "c"]  # cycled, cut at the stop string, whatever the length
    assert all(c.completion_tokens in DEFAULT_LENGTHS and c.prompt_tokens == prompt_tokens(USER) == 7 for c in out)
    by_prompt = SimEngine(EngineSpec(backend="sim", model="sim", sim_speed=1000),
                          reply=lambda conv, params: conv[-1]["content"].upper())
    [c] = asyncio.run(by_prompt.generate(USER, SamplingParams()))
    assert c.text == "TWO PLUS TWO"


def test_256_concurrent_requests_decode_at_the_calibrated_throughput():
    length, speed = 200, 50
    engine = sim(sim_lengths=(length,), sim_speed=speed)

    async def main():
        return await asyncio.gather(*(engine.generate(USER, SamplingParams(max_tokens=1000)) for _ in range(256)))

    started = time.monotonic()
    out = asyncio.run(main())
    wall = time.monotonic() - started
    stats, step = engine.stats, BASE + 256 * PER_SEQ
    assert all(c.completion_tokens == length and c.finish_reason == "stop" for [c] in out)
    assert stats.steps == length and stats.tokens_generated == 256 * length and stats.peak_running == 256
    assert stats.busy_s == pytest.approx(length * step + 256 * 7 / PREFILL)
    assert stats.tokens_generated / stats.busy_s == pytest.approx(256 / step, rel=0.03)  # ≈12.3k tok/s
    assert 256 / step == pytest.approx(12_300, rel=0.01)
    assert wall >= 0.9 * stats.busy_s / speed  # real waiting, not just bookkeeping


def test_one_request_alone_takes_its_length_in_steps():
    length, speed = 100, 10
    engine = sim(sim_lengths=(length,), sim_speed=speed)
    started = time.monotonic()
    [c] = asyncio.run(engine.generate(USER, SamplingParams(max_tokens=length)))
    wall = time.monotonic() - started
    assert c.completion_tokens == length and c.finish_reason == "stop"
    expected = length * (BASE + PER_SEQ) + 7 / PREFILL  # ≈ 0.805 s simulated
    assert engine.stats.steps == length and engine.stats.busy_s == pytest.approx(expected)
    assert 0.9 * expected / speed <= wall <= expected / speed + 1.0


def test_max_num_seqs_makes_the_rest_wait_for_a_free_slot():
    length = 20
    engine = sim(sim_lengths=(length,), sim_speed=50)
    finished: list[int] = []

    async def one(i):
        await engine.generate(ask(i), SamplingParams())
        finished.append(i)

    async def main():
        await asyncio.gather(*(one(i) for i in range(300)))

    asyncio.run(main())
    assert engine.stats.peak_running == 256
    assert engine.stats.steps == 2 * length  # the last 44 start when the first 256 end
    assert set(finished[:256]) == set(range(256)) and set(finished[256:]) == set(range(256, 300))


def test_a_request_arriving_mid_run_joins_the_running_batch():
    engine = sim(sim_lengths=(200,), sim_speed=10)
    order: list[str] = []

    async def one(name, max_tokens):
        await engine.generate(USER, SamplingParams(max_tokens=max_tokens))
        order.append(name)

    async def main():
        long = asyncio.ensure_future(one("long", 200))
        while engine.stats.steps < 5:
            await asyncio.sleep(0.001)
        await one("short", 10)
        await long

    asyncio.run(main())
    assert order == ["short", "long"]
    assert engine.stats.steps == 200 and engine.stats.tokens_generated == 210  # no step was added for it
    assert engine.stats.busy_s == pytest.approx(200 * (BASE + PER_SEQ) + 10 * PER_SEQ + 2 * 7 / PREFILL)


def test_n_samples_take_n_slots_and_greedy_takes_one():
    sampled = sim(sim_lengths=tuple(range(5, 60)), sim_speed=1000)
    out = asyncio.run(sampled.generate(USER, SamplingParams(n=4, temperature=0.8)))
    assert len(out) == 4 and sampled.stats.peak_running == 4
    assert sampled.stats.tokens_generated == sum(c.completion_tokens for c in out)
    assert sampled.stats.steps == max(c.completion_tokens for c in out)
    assert sampled.stats.prompt_tokens == 7  # the prompt is prefilled once for the four

    greedy = sim(sim_lengths=tuple(range(5, 60)), sim_speed=1000)
    out = asyncio.run(greedy.generate(USER, SamplingParams(n=4, logprobs=True)))
    assert len(out) == 4 and greedy.stats.peak_running == 1
    assert len({(c.text, c.completion_tokens) for c in out}) == 1
    assert greedy.stats.tokens_generated == out[0].completion_tokens == len(out[3].token_logprobs)

    narrow = sim(sim_lengths=(5,), sim_speed=1000, sim_max_num_seqs=2)  # more samples than slots
    assert len(asyncio.run(narrow.generate(USER, SamplingParams(n=4, temperature=1.0)))) == 4
    assert narrow.stats.peak_running == 2 and narrow.stats.steps == 10


def test_lengths_over_max_tokens_are_cut_with_finish_reason_length():
    engine = sim(sim_lengths=(100,), sim_speed=1000)
    [cut] = asyncio.run(engine.generate(USER, SamplingParams(max_tokens=10, logprobs=True)))
    assert cut.completion_tokens == 10 and cut.finish_reason == "length" and len(cut.token_logprobs) == 10
    assert engine.stats.steps == 10  # the GPU stops at the cut too
    [whole] = asyncio.run(engine.generate(USER, SamplingParams(max_tokens=100)))
    assert whole.completion_tokens == 100 and whole.finish_reason == "stop" and whole.token_logprobs is None


def test_draws_are_reproducible_per_seed_whatever_the_arrival_order():
    lengths = tuple(range(1, 500))
    greedy = SamplingParams(max_tokens=1000)
    sampled = SamplingParams(n=2, temperature=0.9, max_tokens=1000)
    seeded = SamplingParams(n=2, temperature=0.9, seed=7, max_tokens=1000)

    def run(seed, order):
        engine = sim(sim_lengths=lengths, sim_seed=seed, sim_speed=1000)

        async def main():
            outs = await asyncio.gather(*(engine.generate(ask(i), p) for i in order for p in (greedy, sampled)))
            return {(i, p.temperature): [c.completion_tokens for c in out]
                    for (i, p), out in zip([(i, p) for i in order for p in (greedy, sampled)], outs)}

        return asyncio.run(main()), engine

    forward, engine = run(0, range(20))
    backward, _ = run(0, list(reversed(range(20))))
    other, _ = run(1, range(20))
    assert forward == backward and forward != other

    async def again(params):
        return [c.completion_tokens for c in await engine.generate(ask(0), params)]

    assert asyncio.run(again(greedy)) == forward[(0, 0.0)]  # greedy: the same output again
    assert asyncio.run(again(sampled)) != forward[(0, 0.9)]  # unseeded sampling asked again draws anew
    assert asyncio.run(again(seeded)) == asyncio.run(again(seeded))  # a seed fixes the samples


def test_works_across_two_event_loops():
    engine = sim(sim_lengths=(3,), sim_speed=1000)
    for _ in range(2):
        [c] = asyncio.run(engine.generate(USER, SamplingParams()))
        assert c.completion_tokens == 3
    assert engine.stats.requests == 2 and engine.stats.steps == 6
    engine.close()


def test_score_is_one_prefill_with_scripted_or_uniform_logprobs():
    engine = sim(fake_scores=((-0.1, -2.0), (-3.0, -0.2)), sim_speed=1000)

    async def main():
        return await asyncio.gather(*(engine.score(USER, [" A", " B"]) for _ in range(3)))

    out = asyncio.run(main())
    assert [s.logprobs for s in out] == [[-0.1, -2.0], [-3.0, -0.2], [-0.1, -2.0]] and out[0].prompt_tokens == 7
    stats = engine.stats
    assert stats.steps == 1 and stats.tokens_generated == 0 and stats.prompt_tokens == 3 * (7 + 2)
    assert stats.busy_s == pytest.approx(BASE + 27 / PREFILL)
    [uniform] = sim(sim_speed=1000).score_batch([USER], ["x", "y", "z"])
    assert uniform.logprobs == [math.log(1 / 3)] * 3
    with pytest.raises(ValueError):
        asyncio.run(engine.score(USER, []))


def test_generate_batch_blocks_as_long_as_the_same_batch_through_the_scheduler():
    speed = 20
    conversations = [ask(i) for i in range(30)]
    params = SamplingParams(max_tokens=400)
    batch_engine, async_engine = sim(sim_speed=speed), sim(sim_speed=speed)

    started = time.monotonic()
    batch_out = batch_engine.generate_batch(conversations, params)
    batch_wall = time.monotonic() - started

    async def main():
        return await asyncio.gather(*(async_engine.generate(c, params) for c in conversations))

    started = time.monotonic()
    async_out = asyncio.run(main())
    async_wall = time.monotonic() - started

    def lengths(groups):
        return [[c.completion_tokens for c in group] for group in groups]

    assert lengths(batch_out) == lengths(async_out)
    simulated = batch_engine.stats.busy_s
    assert simulated == pytest.approx(async_engine.stats.busy_s) and simulated > 1.0
    assert batch_engine.stats.snapshot() == async_engine.stats.snapshot()
    assert batch_wall >= 0.95 * simulated / speed and async_wall >= 0.9 * simulated / speed
    assert 0.5 <= batch_wall / async_wall <= 2.0


def test_lengths_load_from_parquet_json_or_ints(tmp_path):
    table = tmp_path / "math_programs" / "run_id=1"
    table.mkdir(parents=True)
    pq.write_table(pa.table({"completion_tokens": pa.array([12, None, 0, 40], pa.int32())}), table / "part-a.parquet")
    pq.write_table(pa.table({"wall_seconds": [1.0]}), tmp_path / "runs.parquet")  # no such column: skipped
    assert sorted(load_lengths(str(tmp_path))) == [1, 12, 40]  # None dropped, 0 counted as one token
    assert load_lengths(str(table / "part-a.parquet")) == (12, 1, 40)
    (tmp_path / "lengths.json").write_text(json.dumps([5, 6]))
    assert load_lengths(str(tmp_path / "lengths.json")) == (5, 6)
    assert load_lengths("[7, 8]") == (7, 8) and load_lengths((9,)) == (9,)
    assert sim(sim_lengths=str(tmp_path)).lengths == load_lengths(str(tmp_path))
    with pytest.raises(ValueError):
        load_lengths("[]")
    with pytest.raises(FileNotFoundError):
        load_lengths(str(tmp_path / "nowhere"))


def test_bad_settings_fail_at_construction():
    for bad in ({"sim_speed": 0}, {"sim_max_num_seqs": 0}, {"sim_prefill_tok_s": 0}, {"sim_step_base_s": -1}):
        with pytest.raises(ValueError):
            sim(**bad)


def test_the_request_log_replays_as_the_same_work_all_at_once(tmp_path):
    """A benchmark logs what the pipeline asked (sim_log), then replays it at once: same sequences, same
    tokens, and no slower than the requests one after another."""
    log = tmp_path / "requests.jsonl"
    engine = sim(sim_lengths=(5, 40, 9), sim_speed=200, sim_log=str(log))

    async def one_by_one():
        for i in range(6):
            await engine.generate(ask(i), SamplingParams(n=2, temperature=0.7, seed=i))
        await engine.score(USER, [" A", " B"])

    asyncio.run(one_by_one())
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(logged) == 7 and logged[-1] == {"prompt": prompt_tokens(USER) + 2, "lengths": [0]}
    assert all(len(r["lengths"]) == 2 for r in logged[:6])
    sequential_steps = engine.stats.steps
    fresh = sim(sim_lengths=(5, 40, 9), sim_speed=200)
    asyncio.run(fresh.replay(logged))
    assert fresh.stats.tokens_generated == engine.stats.tokens_generated == sum(sum(r["lengths"]) for r in logged)
    assert fresh.stats.steps < sequential_steps  # together, the sequences share steps
