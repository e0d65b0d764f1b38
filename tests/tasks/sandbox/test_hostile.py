"""Runs the hostile-program catalog (tasks/sandbox/checks.py) against the real sandbox, twice:

- as this test process's user (root on CI);
- as an unprivileged user with a home directory holding a secret: as root, the test creates the user
  `datagen-sandbox-test` (useradd -m) and runs `python -m tasks.sandbox.checks --json` as that user
  with the system's python3, from a world-readable copy of the sandbox's sources; as an ordinary user,
  it runs the same command as itself.

Each check asserts the verdict its program must get (the catalog names it and why), then one test per
run asserts what must hold outside: no marker file a program tried to write exists, the data
directory, the home directory and the secret are unchanged, nobody connected to the host listeners,
and the sandbox server is the same process afterwards.
"""
from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tasks.sandbox.checks import HOSTILE, run_checks

REPO = Path(__file__).resolve().parents[3]
TEST_USER = "datagen-sandbox-test"
SOURCES = ("tasks/__init__.py", "tasks/answers.py", "tasks/sandbox/__init__.py", "tasks/sandbox/zygote.py",
           "tasks/sandbox/checks.py")


@pytest.fixture(scope="module")
def as_this_user() -> dict:
    return run_checks()


@pytest.fixture(scope="module")
def as_unprivileged_user() -> dict:
    if os.getuid() != 0:  # already an ordinary user with a home directory
        command = [sys.executable, "-m", "tasks.sandbox.checks", "--json"]
        return _run_json(command, cwd=REPO)
    python = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
    assert python, "a system python3 is needed to run the checks as an unprivileged user"
    try:
        pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", TEST_USER], check=True)
    home = Path(pwd.getpwnam(TEST_USER).pw_dir)
    assert home.is_dir() and home.stat().st_uid == pwd.getpwnam(TEST_USER).pw_uid
    copy = Path(tempfile.mkdtemp(prefix="datagen-sandbox-src-"))
    try:
        copy.chmod(0o755)
        for relative in SOURCES:
            target = copy / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.parent.chmod(0o755)
            shutil.copy(REPO / relative, target)
            target.chmod(0o644)
        command = ["su", TEST_USER, "-s", "/bin/sh", "-c", f"cd {copy} && {python} -m tasks.sandbox.checks --json"]
        outcome = _run_json(command, cwd=copy)
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    assert outcome["uid"] == pwd.getpwnam(TEST_USER).pw_uid != 0
    return outcome


def _run_json(command: list[str], cwd: Path) -> dict:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"})
    assert done.stdout.strip(), f"no output (exit {done.returncode}): {done.stderr[-2000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def _outcome(run: dict, name: str) -> dict:
    return next(item for item in run["outcomes"] if item["name"] == name)


def test_the_catalog_is_large_and_covers_every_kind():
    assert len(HOSTILE) >= 40
    assert len({check.name for check in HOSTILE}) == len(HOSTILE)
    assert {check.kind for check in HOSTILE} == {"forgery", "processes", "resources", "network", "read", "write",
                                                "signals", "output", "values", "source", "imports"}


@pytest.mark.parametrize("name", [check.name for check in HOSTILE])
def test_hostile_program_as_this_user(as_this_user, name):
    outcome = _outcome(as_this_user, name)
    assert outcome["passed"], outcome


@pytest.mark.parametrize("name", [check.name for check in HOSTILE])
def test_hostile_program_as_an_unprivileged_user(as_unprivileged_user, name):
    outcome = _outcome(as_unprivileged_user, name)
    assert outcome["passed"], outcome


@pytest.mark.parametrize("who", ["as_this_user", "as_unprivileged_user"])
def test_nothing_outside_changed(who, request):
    run = request.getfixturevalue(who)
    assert run["outside"] == {
        "markers_outside": [],
        "data_dir_changed": False,
        "home_changed": [],
        "secret_unchanged": True,
        "connections_accepted": 0,
        "server_same_process": True,
    }
    assert run["passed"]
