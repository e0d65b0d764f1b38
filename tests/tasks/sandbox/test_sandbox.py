"""Proves tasks/sandbox/ (run_programs and its fork server) runs untrusted programs in real, contained processes.

Results: numeric return values become `value` (bool and non-numbers do not); exceptions, syntax
errors, a missing entry, the CPU-time limit and fatal signals come back as short errors.
Containment: an infinite loop, a memory bomb, fork loops and print floods all return within their
timeout and leave no process behind; a connection to a socket listening on 127.0.0.1 fails; the
environment is empty and writes land in the program's own /tmp, never the host's. The server comes
back after it is killed, and a request in flight then gets an error result, not an exception.
Imports follow the policy (stdlib + sympy + numpy by default, DATAGEN_SANDBOX_IMPORTS to change it).
tests/tasks/sandbox/test_hostile.py runs the hostile-program catalog, as root and as an ordinary user.
No mocks: every case starts real processes in a real bubblewrap sandbox.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tasks.sandbox as sandbox
from tasks.sandbox import SandboxLimits, SandboxUnavailable, isolation_report, run_program, run_programs

GENEROUS_MARGIN_S = 4.0  # start-up, kill and reap on a loaded 2-core CI box; not a performance claim


def _program(body: str, imports: str = "") -> str:
    lines = body.strip("\n").splitlines()
    return f"{imports}\ndef solution():\n" + "\n".join(f"    {line}" for line in lines) + "\n"


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, frontier = set(), [root]
    while frontier:
        for child in children.get(frontier.pop(), []):
            found.add(child)
            frontier.append(child)
    return found


def _server_trees() -> set[int]:
    """Every process under this process's sandbox servers (bwrap, its init, the server, programs)."""
    return set().union(*(_descendants(s._process.pid) for s in sandbox._SERVERS.values() if s.alive))


@pytest.fixture
def no_stray_processes():
    """After the test, the servers' process trees are what they were before: bwrap, its init and the server."""
    run_programs([_program("return 1"), _program("return int(numpy.int64(1))", "import numpy")])  # both servers up
    before = _server_trees()
    yield
    deadline = time.monotonic() + 5.0
    while (stray := _server_trees() - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not stray, f"processes left behind: {sorted(stray)}"


@pytest.mark.parametrize(
    ("body", "imports", "value", "result_repr"),
    [
        ("return 72", "", 72.0, "72"),
        ("return 0.25", "", 0.25, "0.25"),
        ("return -3", "", -3.0, "-3"),
        ("return Fraction(3, 4)", "from fractions import Fraction", 0.75, "Fraction(3, 4)"),
        ("return Decimal('2.50')", "from decimal import Decimal", 2.5, "Decimal('2.50')"),
        ("return '1,000'", "", 1000.0, "'1,000'"),
        ("return '42'", "", 42.0, "'42'"),
        ("return True", "", None, "True"),
        ("return False", "", None, "False"),
        ("return 'abc'", "", None, "'abc'"),
        ("return None", "", None, "None"),
        ("return [1, 2]", "", None, "[1, 2]"),
        ("return float('inf')", "", None, "inf"),
        ("return math.sqrt(16)", "import math", 4.0, "4.0"),
    ],
)
def test_return_value_is_read_as_a_number_only_when_it_is_one(body, imports, value, result_repr):
    result = run_program(_program(body, imports))
    assert result.status == "ok", result.error
    assert result.value == value
    assert result.result_repr == result_repr
    assert result.error is None


def test_long_repr_is_truncated_and_prints_are_captured():
    result = run_program(_program("print('working', 6 * 7)\nreturn 'x' * 1000"))
    assert result.status == "ok"
    assert result.stdout == "working 42\n"
    assert len(result.result_repr) == 200


@pytest.mark.parametrize(
    ("source", "entry", "error_start"),
    [
        (_program("return 1 / 0"), "solution", "ZeroDivisionError: division by zero"),
        (_program("raise ValueError('bad input')"), "solution", "ValueError: bad input"),
        (_program("return undefined_name"), "solution", "NameError: name 'undefined_name'"),
        (_program("import sys\nsys.exit(3)"), "solution", "SystemExit: 3"),
        ("def solution(:\n    return 1\n", "solution", "SyntaxError: "),
        ("x = 1\n", "solution", "NameError: entry function 'solution' is not defined"),
        (_program("return 1"), "main", "NameError: entry function 'main' is not defined"),
        (_program("import pydantic\nreturn 1"), "solution", "ModuleNotFoundError: sandbox: module 'pydantic' is not allowed"),
    ],
)
def test_failures_come_back_as_short_errors(source, entry, error_start):
    result = run_program(source, entry=entry)
    assert result.status == "error"
    assert result.error.startswith(error_start), result.error
    assert result.value is None and result.result_repr is None


def test_custom_entry_function_is_called():
    result = run_program("def main():\n    return 5\n", entry="main")
    assert (result.status, result.value) == ("ok", 5.0)


def test_infinite_loop_times_out(no_stray_processes):
    limits = SandboxLimits(timeout_s=1.0)
    started = time.monotonic()
    result = run_program(_program("while True:\n    pass"), limits=limits)
    elapsed = time.monotonic() - started
    assert result.status == "timeout"
    assert result.error == "timeout after 1.0s"
    assert elapsed < limits.timeout_s + GENEROUS_MARGIN_S


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ("while True:\n    pass", "CpuTimeLimitExceeded: CPU time limit exceeded"),
        # Ignoring SIGXCPU does not help: the hard limit's SIGKILL follows a second later.
        ("signal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True:\n    pass", "killed by signal 9 (SIGKILL)"),
        ("faulthandler._read_null()", "killed by signal 11 (SIGSEGV)"),
    ],
    ids=["cpu-limit", "cpu-limit-sigxcpu-ignored", "segfault"],
)
def test_cpu_limit_and_crashes_are_reported(body, error, no_stray_processes):
    limits = SandboxLimits(timeout_s=8.0, cpu_s=1)  # the CPU limit, not the wall clock, must stop these
    result = run_program(_program(body, "import faulthandler, signal"), limits=limits)
    assert (result.status, result.error) == ("error", error)


@pytest.mark.parametrize(
    "body",
    [
        "return len([0] * 10**10)",
        "return len(bytearray(10**10))",
        "chunks = []\nwhile True:\n    chunks.append(' ' * 10**6)",
    ],
    ids=["one-huge-list", "one-huge-bytearray", "growing-list"],
)
def test_memory_bomb_is_an_error_not_a_crash(body, no_stray_processes):
    limits = SandboxLimits(timeout_s=5.0, memory_mb=256)
    started = time.monotonic()
    result = run_program(_program(body), limits=limits)
    assert result.status == "error"
    assert "MemoryError" in result.error or "killed by signal" in result.error
    assert time.monotonic() - started < limits.timeout_s + GENEROUS_MARGIN_S


# name -> (program body, status): seccomp refuses new processes, whatever the program does about it
FORK_LOOPS = {
    "fork-until-it-fails": ("while True:\n    os.fork()", "error"),
    "fork-and-ignore-errors": ("while True:\n    try:\n        os.fork()\n    except OSError:\n        pass", "timeout"),
    "child-escapes-group": ("if os.fork() == 0:\n    os.setsid()\n    time.sleep(600)\nreturn 1", "error"),
    "spawn-a-shell": ("return subprocess.run(['/bin/sh', '-c', 'sleep 600']).returncode", "error"),
}


@pytest.mark.parametrize(("body", "status"), FORK_LOOPS.values(), ids=FORK_LOOPS.keys())
def test_fork_loops_return_and_leave_nothing_behind(body, status, no_stray_processes):
    limits = SandboxLimits(timeout_s=2.0)
    started = time.monotonic()
    result = run_program(_program(body, "import os, subprocess, time"), limits=limits)
    assert time.monotonic() - started < limits.timeout_s + GENEROUS_MARGIN_S
    assert result.status == status, result
    if status == "error":
        assert result.error.startswith("PermissionError: [Errno 1] Operation not permitted"), result.error


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ("for i in range(200_000):\n    print(i)\nreturn 7", "ok"),
        ("while True:\n    print('x' * 1000)", "timeout"),
        ("while True:\n    os.write(1, b'x' * 100_000)", "error"),  # past RLIMIT_FSIZE: EFBIG
    ],
    ids=["finite-flood", "endless-print", "endless-raw-write"],
)
def test_print_flood_is_bounded(body, status, no_stray_processes):
    limits = SandboxLimits(timeout_s=2.0, max_output_bytes=4096)
    started = time.monotonic()
    result = run_program(_program(body, "import os"), limits=limits)
    assert time.monotonic() - started < limits.timeout_s + GENEROUS_MARGIN_S
    assert result.status == status, result.error
    assert 0 < len(result.stdout.encode()) <= limits.max_output_bytes
    if status == "ok":
        assert result.value == 7.0
        assert result.stdout.startswith("0\n1\n2\n")


@pytest.fixture
def listener():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    yield server
    server.close()


def test_network_is_unreachable(listener, no_stray_processes):
    port = listener.getsockname()[1]
    body = f"client = socket.socket()\nclient.settimeout(2)\nclient.connect(('127.0.0.1', {port}))\nreturn 'connected'"
    result = run_program(_program(body, "import socket"))
    assert (result.status, result.error) == ("error", "PermissionError: [Errno 1] Operation not permitted")
    with pytest.raises(BlockingIOError):
        listener.accept()  # nothing arrived
    with socket.create_connection(listener.getsockname(), timeout=2):  # control: it is reachable from here
        time.sleep(0.05)
        connection, _ = listener.accept()
        connection.close()


def test_environment_is_empty():
    result = run_program(_program("return repr(dict(os.environ))", "import os"))
    assert result.status == "ok"
    assert result.result_repr == repr("{}")


def test_writes_stay_in_the_programs_own_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = f"datagen-test-{os.getpid()}-{time.monotonic_ns()}"
    body = f"open('{marker}', 'w').write('hi')\nopen('/tmp/{marker}', 'w').write('hi')\nreturn os.getcwd()"
    first = run_program(_program(body, "import os"))
    assert (first.status, first.result_repr) == ("ok", "'/tmp/work'"), first.error
    second = run_program(_program("return sorted(os.listdir('/tmp')) + os.listdir('/tmp/work')", "import os"))
    assert second.result_repr == "['work']"  # the first program's files are gone: each has its own /tmp
    assert list(tmp_path.iterdir()) == []
    assert not (Path("/tmp") / marker).exists()


def test_program_is_alone_without_capabilities():
    report = isolation_report()
    result = run_program(_program("return os.getuid()", "import os"))
    assert result.value == report["uid_inside"] == os.getuid()  # the same uid, in a user namespace of its own
    probe = run_program(sandbox.PROBE_SOURCE)
    assert probe.status == "ok", probe.error
    facts = dict(part.split("=", 1) for part in probe.result_repr.strip("'").split())
    assert facts == {"pid": "1", "cap_eff": "0000000000000000", "seccomp": "2", "no_new_privs": "1", "procs": "1"}
    assert report["seccomp"] and report["capabilities"] == "none"
    assert "/home" not in report["filesystem"] and not any(p.startswith("/etc") for p in report["filesystem"])
    assert set(report["root_listing"]) <= {"bin", "datagen", "dev", "lib", "lib32", "lib64", "proc", "root", "sbin",
                                           "tmp", "usr", "home", "opt"}


@pytest.mark.parametrize(
    "imports",
    ["import copy, calendar, unicodedata, itertools", "import sympy", "import numpy"],
)
def test_programs_importing_stdlib_sympy_and_numpy_run(imports):
    body = {
        "import copy, calendar, unicodedata, itertools": "return calendar.monthrange(2024, 2)[1] + len(copy.deepcopy([1]))",
        "import sympy": "x = sympy.symbols('x')\nreturn float(sympy.solve(2 * x - 60, x)[0])",
        "import numpy": "return float(numpy.array([10, 20]).sum())",
    }[imports]
    result = run_program(_program(body, imports))
    assert (result.status, result.error) == ("ok", None)
    assert result.value == {"import sympy": 30.0, "import numpy": 30.0}.get(imports, 30.0)


def test_import_policy_is_configurable(monkeypatch):
    monkeypatch.setenv("DATAGEN_SANDBOX_IMPORTS", "")
    result = run_program(_program("return float(numpy.array([1]).sum())", "import numpy"))
    assert (result.status, result.error) == ("error", "ModuleNotFoundError: sandbox: module 'numpy' is not allowed")
    assert isolation_report()["allowed_imports"] == ["stdlib"]


def test_programs_naming_the_allowed_packages_go_to_the_server_that_preloaded_them():
    plain, heavy = run_programs([_program("return 1"), _program("return 2", "import sympy")])
    assert (plain.value, heavy.value) == (1.0, 2.0)
    servers = {key[3]: server for key, server in sandbox._SERVERS.items()
               if key[:2] == (os.getpid(), sandbox.allowed_imports()) and server.alive}
    assert set(servers) == {False, True}
    assert "sympy" in servers[True].facts["preloaded"] and "sympy" not in servers[False].facts["preloaded"]
    # the light server allows the same imports; it only pays for them when a program makes one
    late = run_program(_program("return float(importlib.import_module('sympy').Integer(4))", "import importlib"))
    assert (late.status, late.value) == ("ok", 4.0)


def test_server_comes_back_after_it_is_killed():
    report = isolation_report()
    os.kill(report["server_pid_outside"], signal.SIGKILL)
    deadline = time.monotonic() + 5
    while sandbox._SERVERS and any(s.alive for s in sandbox._SERVERS.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    result = run_program(_program("return int(numpy.int64(3))", "import numpy"))  # the server with numpy loaded
    assert (result.status, result.value) == ("ok", 3.0)
    assert isolation_report()["server_pid_outside"] != report["server_pid_outside"]


def test_a_program_in_flight_when_the_server_dies_gets_an_error_result():
    pid = isolation_report()["server_pid_outside"]
    killer = subprocess.Popen([sys.executable, "-c", f"import os, time; time.sleep(1); os.kill({pid}, 9)"])
    result = run_program(_program("time.sleep(3)\nreturn 1", "import numpy, time"))
    killer.wait()
    assert result.status == "error" and result.error.startswith("sandbox unavailable: the sandbox server exited")


def test_a_missing_bwrap_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    with pytest.raises(SandboxUnavailable, match="bubblewrap .bwrap. is not installed; install bubblewrap"):
        sandbox._Server(("numpy",), 2)


def test_run_programs_keeps_input_order():
    count = 16
    # Earlier programs sleep longer, so completion order is the reverse of input order.
    sources = [_program(f"time.sleep({(count - i) * 0.02})\nreturn {i}", "import time") for i in range(count)]
    results = run_programs(sources, max_workers=8)
    assert [r.value for r in results] == [float(i) for i in range(count)]
    assert run_programs([]) == []


@pytest.mark.parametrize(
    "kwargs",
    [{"timeout_s": 0}, {"memory_mb": 10}, {"cpu_s": 0}, {"max_processes": 0}, {"max_output_bytes": -1}, {"tmp_mb": 0}],
)
def test_invalid_limits_are_refused(kwargs):
    with pytest.raises(ValueError):
        SandboxLimits(**kwargs)


def test_cpu_limit_defaults_to_timeout_plus_one():
    assert SandboxLimits(timeout_s=2.5).cpu_seconds == 4
    assert SandboxLimits(cpu_s=7).cpu_seconds == 7


def test_a_batch_larger_than_a_pipe_buffer_comes_back_whole():
    """4,000 requests (about 1 MB) written in one go while the replies stream back: nothing blocks."""
    sources = [_program(f"x = {i}\nreturn x * 2  # {'padding ' * 20}") for i in range(4000)]
    results = run_programs(sources)
    assert [r.value for r in results] == [float(2 * i) for i in range(4000)]


def test_a_silent_server_fails_its_programs_instead_of_hanging(monkeypatch):
    """A server that stops answering (here: stopped by SIGSTOP) makes its programs error results after
    one timeout and a grace, and is replaced by the next call."""
    monkeypatch.setattr(sandbox, "REPLY_GRACE_S", 0.5)
    stopped = sandbox._Server(sandbox.allowed_imports(), 2, preload=False)
    try:
        zygotes = [pid for pid in _descendants(stopped._process.pid)
                   if "zygote.py" in Path(f"/proc/{pid}/cmdline").read_text()]
        for pid in zygotes:
            os.kill(pid, signal.SIGSTOP)
        started = time.monotonic()
        results = stopped.run_many([_program("return 1")] * 3, "solution", SandboxLimits(timeout_s=0.5))
        assert time.monotonic() - started < 1.0 + GENEROUS_MARGIN_S
        assert [r.status for r in results] == ["error"] * 3
        assert all(r.error.startswith("sandbox unavailable: the sandbox server sent nothing for 1s") for r in results)
        assert not stopped.alive
    finally:
        stopped.close()
