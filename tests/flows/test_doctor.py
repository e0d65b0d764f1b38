"""Proves `datagen doctor` reports this machine as it is: every check is there, the engine `auto` picks
is the one a run would pick, the sandbox line comes from a real probe, an unreachable PREFECT_API_URL is
a failure (exit 1) with the URL named, and a missing optional engine is a note, not a failure."""
from __future__ import annotations

import socket

from flows import doctor
from flows.cli import main
from tasks.engines import choose_backend
from tasks.engines.base import DEFAULT_MODEL


def test_every_check_reports_and_this_machine_passes(capsys, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    names = [line.split()[1] for line in out.splitlines()]
    assert names == ["python", "packages", "torch", "vllm", "engine", "model", "sandbox", "ray", "prefect"]
    backend, why = choose_backend("auto", DEFAULT_MODEL)
    assert f"engine auto  {backend} ({why.removeprefix('auto: ')})" in out
    assert "a probe program ran isolated (user, pid, mount" in out


def test_an_unreachable_prefect_server_fails_with_its_url(capsys, monkeypatch):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{port}/api")
    assert main(["doctor"]) == 1
    [line] = [x for x in capsys.readouterr().out.splitlines() if x.split()[1] == "prefect"]
    assert line.startswith("FAIL") and f"http://127.0.0.1:{port}/api is not reachable" in line


def test_a_missing_optional_engine_is_a_note(monkeypatch):
    monkeypatch.setattr(doctor.importlib.util, "find_spec", lambda name: None if name == "vllm" else True)
    check = doctor.check_vllm()
    assert not check.ok and not check.required and "transformers engine runs instead" in check.detail
