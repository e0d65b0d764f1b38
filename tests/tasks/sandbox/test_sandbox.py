"""Proves tasks/sandbox/ (run_programs and its runner) runs untrusted programs in real, contained subprocesses.

Results: numeric return values become `value` (bool and non-numbers do not); exceptions, syntax
errors, a missing entry, the CPU-time limit and fatal signals come back as short errors.
Containment: an infinite loop, a memory bomb, fork loops (including a child that escapes the process
group) and print floods all return within their timeout and leave no process behind; a connection to
a socket listening on 127.0.0.1 fails with the audit hook on AND off (the network namespace alone
stops it); the environment is empty and writes land in a throwaway directory that is removed
afterwards. run_programs keeps input order. No mocks: every case starts real processes.
"""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

import pytest

from tasks.sandbox import SandboxLimits, isolation_report, run_program, run_programs

GENEROUS_MARGIN_S = 4.0  # start-up, kill and reap on a loaded 2-core CI box; not a performance claim


def _program(body: str, imports: str = "") -> str:
    lines = body.strip("\n").splitlines()
    return f"{imports}\ndef solution():\n" + "\n".join(f"    {line}" for line in lines) + "\n"


def _process_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, real uid) for every process visible in /proc, zombies included."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = dict(line.split(":", 1) for line in (entry / "status").read_text().splitlines() if ":" in line)
        except OSError:  # exited while we looked
            continue
        table[int(entry.name)] = (int(fields["PPid"]), int(fields["Uid"].split()[0]))
    return table


def _sandbox_processes() -> set[int]:
    """Processes that could belong to a sandbox: run by the sandbox uid, or descendants of this test."""
    table = _process_table()
    sandbox_uid = isolation_report()["uid"]
    found = {pid for pid, (_, uid) in table.items() if uid == sandbox_uid and uid != os.getuid()}
    frontier = [os.getpid()]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, (ppid, _) in table.items() if ppid == parent]
        found.update(children)
        frontier.extend(children)
    return found


@pytest.fixture
def no_stray_processes():
    before = _sandbox_processes()
    yield
    stray = _sandbox_processes() - before
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
        (_program("import numpy\nreturn 1"), "solution", "ModuleNotFoundError"),
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


# name -> (program body, status with the audit hook on, statuses allowed with it off)
FORK_LOOPS = {
    "fork-until-it-fails": ("while True:\n    os.fork()", "error", {"error"}),
    # PermissionError from the audit hook and EAGAIN from RLIMIT_NPROC are both swallowed: it spins.
    "fork-and-ignore-errors": (
        "while True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
        "timeout",
        {"timeout"},
    ),
    # The child leaves the process group and outlives the program: only the pid namespace
    # (or, without one, nothing) stops it from surviving the run.
    "child-escapes-group": ("if os.fork() == 0:\n    os.setsid()\n    time.sleep(600)\nreturn 1", "error", {"ok"}),
}


@pytest.mark.parametrize("audit_hook", [True, False], ids=["audit-on", "audit-off"])
@pytest.mark.parametrize(("body", "status_audit_on", "statuses_audit_off"), FORK_LOOPS.values(), ids=FORK_LOOPS.keys())
def test_fork_loops_return_and_leave_nothing_behind(
    body, status_audit_on, statuses_audit_off, audit_hook, no_stray_processes
):
    if "setsid" in body and not audit_hook and not isolation_report()["pidns"]:
        pytest.skip(f"no pid namespace here: {isolation_report()['fallback_reason']}")
    limits = SandboxLimits(timeout_s=2.0)
    started = time.monotonic()
    result = run_program(_program(body, "import os, time"), limits=limits, _audit_hook=audit_hook)
    assert time.monotonic() - started < limits.timeout_s + GENEROUS_MARGIN_S
    if audit_hook:
        assert result.status == status_audit_on, result
        if result.status == "error":
            assert "os.fork is not allowed" in result.error
    else:
        assert result.status in statuses_audit_off, result


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


@pytest.mark.parametrize(
    ("audit_hook", "preload", "error_start"),
    [
        # As deployed: the sandbox uid cannot even import socket from a private stdlib (or the hook stops it).
        (True, (), ""),
        # socket importable (as with a world-readable stdlib): the audit hook refuses it...
        (True, ("socket",), "PermissionError: sandbox: socket.__new__ is not allowed"),
        # ...and with the hook off, the network namespace alone: no interface is up.
        (False, ("socket",), "OSError: [Errno 101] Network is unreachable"),
    ],
    ids=["as-deployed", "audit-hook", "netns-only"],
)
def test_network_is_unreachable(listener, audit_hook, preload, error_start, no_stray_processes):
    if not audit_hook and not isolation_report()["netns"]:
        pytest.skip(f"no network namespace here: {isolation_report()['fallback_reason']}")
    port = listener.getsockname()[1]
    # A literal IPv4 address: create_connection() would first need the idna codec (a late import).
    body = f"client = socket.socket()\nclient.settimeout(2)\nclient.connect(('127.0.0.1', {port}))\nreturn 'connected'"
    result = run_program(_program(body, "import socket"), _audit_hook=audit_hook, _preload=preload)
    assert result.status == "error", result
    assert result.error.startswith(error_start), result.error
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


def test_working_directory_is_throwaway(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    body = "with open('marker.txt', 'w') as handle:\n    handle.write('hi')\nreturn os.getcwd()"
    result = run_program(_program(body, "import os"))
    assert result.status == "ok", result.error
    sandbox_cwd = Path(eval(result.result_repr))  # a str repr, produced by the test's own program
    assert sandbox_cwd != tmp_path
    assert not sandbox_cwd.exists()  # removed after the run
    assert list(tmp_path.iterdir()) == []


def test_temporary_directories_are_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where run_program makes its directories
    run_program(_program("open('left.txt', 'w').write('x')\nreturn 1"))
    endless = _program("open('left.txt', 'w').write('x')\nwhile True:\n    pass")
    assert run_program(endless, limits=SandboxLimits(timeout_s=0.5)).status == "timeout"
    assert list(tmp_path.iterdir()) == []


def test_program_runs_unprivileged():
    report = isolation_report()
    result = run_program(_program("return os.getuid()", "import os"))
    assert result.value == report["uid"]
    if os.getuid() == 0:
        assert report["uid"] != 0


@pytest.mark.skipif(
    os.getuid() != 0 or shutil.which("unshare") is None, reason="namespaces are expected only as root with unshare"
)
def test_isolation_report_as_root_has_every_layer():
    report = isolation_report()
    assert report["netns"] and report["pidns"], report["fallback_reason"]
    assert report["nproc_enforced"] and report["uid"] != 0
    assert report["fallback_reason"] is None


def test_run_programs_keeps_input_order():
    count = 16
    # Earlier programs sleep longer, so completion order is the reverse of input order.
    sources = [_program(f"time.sleep({(count - i) * 0.02})\nreturn {i}", "import time") for i in range(count)]
    results = run_programs(sources, max_workers=8)
    assert [r.value for r in results] == [float(i) for i in range(count)]
    assert run_programs([]) == []


@pytest.mark.parametrize(
    "kwargs",
    [{"timeout_s": 0}, {"memory_mb": 10}, {"cpu_s": 0}, {"max_processes": 0}, {"max_output_bytes": -1}],
)
def test_invalid_limits_are_refused(kwargs):
    with pytest.raises(ValueError):
        SandboxLimits(**kwargs)


def test_cpu_limit_defaults_to_timeout_plus_one():
    assert SandboxLimits(timeout_s=2.5).cpu_seconds == 4
    assert SandboxLimits(cpu_s=7).cpu_seconds == 7
