"""Model files: the embedded GGUF is found without importing its package, model ids are cheap and
stable, unknown folders fail clearly, and materializing the embedded model is atomic: a process that
loses the race to a finished folder keeps it and leaves no temporary folder behind."""
import shutil
import time

import pytest

from tasks.engines import model_files
from tasks.engines.model_files import EMBEDDED, embedded_gguf, model_id, resolve_model_dir


def test_embedded_gguf_is_in_the_wheel():
    path = embedded_gguf()
    assert path.name.endswith(".gguf") and path.stat().st_size > 50_000_000


def test_model_id_is_cheap_and_stable(tmp_path):
    start = time.perf_counter()
    assert model_id(EMBEDDED) == "HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1, embedded)"
    assert model_id(str(tmp_path / "my-model")) == "my-model"
    assert time.perf_counter() - start < 0.1


def test_missing_local_folder_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="local model folder"):
        resolve_model_dir(str(tmp_path / "nope"))
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model_dir(str(tmp_path)) == tmp_path


@pytest.mark.integration
def test_losing_the_race_keeps_the_winner_and_cleans_up(tmp_path, monkeypatch):
    winner = resolve_model_dir(EMBEDDED)  # the shared cache, built once
    monkeypatch.setenv("DATAGEN_CACHE_DIR", str(tmp_path))
    target = tmp_path / "models" / winner.name
    shutil.copytree(winner, target)  # another process finished first ...
    marker = (target / "config.json").stat().st_mtime_ns
    model_files._materialize_embedded(target)  # ... while this one was still converting
    assert (target / "config.json").stat().st_mtime_ns == marker
    assert sorted(p.name for p in target.parent.iterdir()) == [winner.name]
    assert resolve_model_dir(EMBEDDED) == target
