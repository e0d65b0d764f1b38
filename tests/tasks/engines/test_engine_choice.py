"""`--engine auto` and how full an engine is kept: choose_backend picks vLLM only when it is installed
and its registry lists the model's architecture, and says why; Occupancy integrates requests in flight
over time (a scripted clock), and TrackedEngine counts every request of a real (fake) engine."""
import asyncio
import json

import pytest

import tasks.engines as engines
from tasks.engines import EngineSpec, Occupancy, SamplingParams, TrackedEngine, choose_backend, make_engine
from tasks.runtime.settings import RunSettings


@pytest.fixture(autouse=True)
def _fresh_choice():
    choose_backend.cache_clear()
    yield
    choose_backend.cache_clear()


def test_an_explicit_engine_is_taken_as_asked():
    assert choose_backend("transformers", "smollm2-135m") == ("transformers", "--engine transformers")
    assert choose_backend("vllm", "/anything") == ("vllm", "--engine vllm")


def test_auto_picks_vllm_for_the_embedded_model_when_installed():
    backend, why = choose_backend("auto", "smollm2-135m")
    assert backend == "vllm" and "LlamaForCausalLM" in why and engines.vllm_version() in why
    # the registry is read from the installed vLLM's source, not by importing it
    assert {"LlamaForCausalLM", "Qwen2ForCausalLM"} <= engines.vllm_architectures()


def test_auto_falls_back_to_transformers_and_says_why(tmp_path, monkeypatch):
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"architectures": ["NoSuchModelForCausalLM"]}))
    assert choose_backend("auto", str(odd)) == ("transformers", f"auto: vLLM {engines.vllm_version()} cannot run "
                                                                "NoSuchModelForCausalLM")
    assert choose_backend("auto", str(tmp_path))[1] == f"auto: {tmp_path} has no config.json naming its architecture"
    real_find_spec = engines.importlib.util.find_spec
    monkeypatch.setattr(engines.importlib.util, "find_spec",
                        lambda name, *a: None if name == "vllm" else real_find_spec(name, *a))
    assert choose_backend("auto", "smollm2-135m") == ("transformers", "auto: vLLM is not installed")


def test_settings_resolve_auto_into_the_engine_spec(monkeypatch):
    monkeypatch.delenv("DATAGEN_ENGINE", raising=False)
    settings = RunSettings()
    assert settings.engine == "auto" and settings.engine_spec().backend == "vllm"
    assert settings.engine_choice()[1].startswith("auto: vLLM")
    monkeypatch.setenv("DATAGEN_ENGINE", "transformers")  # a machine-wide default
    assert RunSettings().engine_spec().backend == "transformers"
    monkeypatch.setenv("DATAGEN_ENGINE", "tpu")
    with pytest.raises(ValueError, match="engine"):
        RunSettings()


def test_occupancy_integrates_requests_in_flight_over_time():
    now = [0.0]
    occupancy = Occupancy(clock=lambda: now[0])
    occupancy.begin()              # t=0: 1 in flight
    now[0] = 1.0
    occupancy.begin()              # t=1: 2
    now[0] = 3.0
    occupancy.end()                # t=3: 1
    now[0] = 4.0
    occupancy.end()                # t=4: 0 (idle until the next request)
    now[0] = 6.0
    occupancy.begin()
    now[0] = 7.0
    occupancy.end()
    snap = occupancy.snapshot()
    assert snap.pop("started_at") > 0  # wall clock of the first request, comparable across processes
    assert snap == {"requests": 3, "in_flight_seconds": 1 + 4 + 1 + 1, "busy_seconds": 5.0, "window_seconds": 7.0}
    assert Occupancy.combine([snap]) == {"requests": 3, "mean_in_flight": 1.0, "busy_fraction": 5 / 7}
    # two engines: the mean in flight per engine, weighted by their windows
    other = {"requests": 1, "in_flight_seconds": 3.0, "busy_seconds": 1.0, "window_seconds": 1.0}
    assert Occupancy.combine([snap, other]) == {"requests": 4, "mean_in_flight": 10 / 8, "busy_fraction": 6 / 8}
    assert Occupancy.combine([]) == {"requests": 0, "mean_in_flight": None, "busy_fraction": None}


def test_a_tracked_engine_counts_concurrent_requests():
    engine = TrackedEngine(make_engine(EngineSpec(backend="fake", model="fake", fake_replies=("ok",))))

    async def many():
        return await asyncio.gather(*(engine.generate([{"role": "user", "content": str(i)}], SamplingParams())
                                      for i in range(20)))

    assert all(group[0].text == "ok" for group in asyncio.run(many()))
    snap = engine.occupancy.snapshot()
    assert snap["requests"] == 20 and snap["window_seconds"] > 0
    assert Occupancy.combine([snap])["mean_in_flight"] > 1  # they were in flight together
