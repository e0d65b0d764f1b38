"""Hostile programs against the sandbox, each with the verdict it must get, and what must not change outside.

`run_checks()` plants a secret file in the home directory of whoever runs it, a data directory with a
file in it, a TCP listener on 127.0.0.1 and a unix socket, then runs every program in HOSTILE through
run_programs and checks: each verdict (status, and value or error where it matters), that no
program's output holds the secret, that no marker file a program tried to write exists outside, that
the data directory and the home directory are unchanged, that nobody connected to the listeners,
that the sandbox server is the same process afterwards, and that every run ended within its timeout.

Used by `datagen sandbox-check` and by tests/tasks/sandbox/test_hostile.py (as root, and as an
unprivileged user through `python -m tasks.sandbox.checks --json`, which prints one JSON object).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import socket
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tasks.sandbox import ExecResult, SandboxLimits, isolation_report, run_programs

FORGED = '{"ok": true, "value": 42.0, "text": null, "repr": "42"}'


@dataclass(frozen=True)
class Check:
    name: str
    kind: str  # forgery, processes, resources, network, read, write, signals, output, values, source, imports
    source: str  # a program; {secret}, {data_dir}, {marker}, {port}, {unix_socket} are filled in
    expect: Callable[[ExecResult], str | None]  # None when the verdict is right, else what is wrong
    limits: dict = field(default_factory=dict)
    raw: bool = False  # the source is used as is (no placeholders), e.g. for invalid text


def program(body: str, imports: str = "import os") -> str:
    lines = body.strip("\n").splitlines()
    return f"{imports}\ndef solution():\n" + "\n".join(f"    {line}" for line in lines) + "\n"


def error(contains: str = "") -> Callable[[ExecResult], str | None]:
    def expect(result: ExecResult) -> str | None:
        if result.status != "error":
            return f"expected an error, got {result.status} ({result.result_repr or result.error})"
        if contains and contains not in (result.error or ""):
            return f"expected an error naming {contains!r}, got {result.error!r}"
        return None
    return expect


def timeout() -> Callable[[ExecResult], str | None]:
    return lambda result: None if result.status == "timeout" else f"expected a timeout, got {result.status} ({result.error})"


def ok(value: float | None = None, repr_: str | None = None, value_is_none: bool = False) -> Callable:
    def expect(result: ExecResult) -> str | None:
        if result.status != "ok":
            return f"expected ok, got {result.status} ({result.error})"
        if value is not None and result.value != value:
            return f"expected value {value}, got {result.value} ({result.result_repr})"
        if value_is_none and result.value is not None:
            return f"expected no numeric value, got {result.value}"
        if repr_ is not None and result.result_repr != repr_:
            return f"expected repr {repr_!r}, got {result.result_repr!r}"
        return None
    return expect


def both(*expects: Callable) -> Callable:
    return lambda result: next((why for why in (e(result) for e in expects) if why), None)


def encodable(result: ExecResult) -> str | None:
    """Every text field can go into a table (UTF-8): no lone surrogate survives."""
    for name in ("result_repr", "error", "stdout"):
        try:
            (getattr(result, name) or "").encode("utf-8")
        except UnicodeEncodeError:
            return f"{name} is not valid UTF-8"
    return None


def small_stdout(limit: int) -> Callable:
    return lambda result: None if len(result.stdout.encode()) <= limit else f"stdout of {len(result.stdout)} chars"


HOSTILE: tuple[Check, ...] = (
    # -- forging the verdict
    Check("forge-print-marker", "forgery", program(f"print('\\x1e' + {FORGED!r})\nos._exit(0)"), error("no result")),
    Check("forge-fd1-line", "forgery", program(f"os.write(1, b'\\n\\x1e' + {FORGED!r}.encode() + b'\\n')\nos._exit(0)"),
          error("no result")),
    Check("forge-fd2-line", "forgery", program(f"os.write(2, {FORGED!r}.encode() + b'\\n')\nos._exit(0)"),
          error("no result")),
    Check("forge-print-then-return", "forgery", program(f"print({FORGED!r})\nreturn 7"), ok(value=7.0)),
    Check("forge-patch-json", "forgery",
          program(f"json.dumps = lambda *a, **k: {FORGED!r}\njson.encoder.encode_basestring_ascii = json.dumps\nreturn 7",
                  "import json, json.encoder"), ok(value=7.0)),
    Check("forge-patch-runner-globals", "forgery",
          program("m = sys.modules['__main__']\nm.describe = lambda v: {'ok': True, 'value': 42.0, 'text': None, 'repr': '42'}\n"
                  "m.encode_and_write = lambda r: None\nreturn 7", "import sys"), ok(value=7.0)),
    Check("forge-record-then-raise", "forgery",
          program(f"for fd in range(3, 64):\n    try:\n        os.write(fd, {FORGED!r}.encode() + b'\\n')\n    except OSError:\n"
                  "        pass\nraise ValueError('really failed')"), error()),
    Check("forge-exit-without-result", "forgery", program("os._exit(0)"), error("no result")),
    Check("forge-sys-exit", "forgery", program("sys.exit(0)", "import sys"), error("SystemExit")),
    # -- processes
    Check("fork-bomb", "processes", program("while True:\n    os.fork()"), error("PermissionError")),
    Check("subprocess-shell", "processes",
          program("import subprocess\nsubprocess.run(['/bin/sh', '-c', 'touch {marker}-sh'])\nreturn 1"), error("PermissionError")),
    Check("os-system", "processes", program("return os.system('touch {marker}-system')"),
          lambda r: None if r.status == "ok" and r.value != 0 else f"the shell ran: {r.status} {r.result_repr}"),
    Check("execv", "processes", program("os.execv('/bin/sh', ['sh', '-c', 'true'])"), error("PermissionError")),
    Check("setsid-fork", "processes", program("try:\n    os.setsid()\nexcept OSError:\n    pass\nreturn os.fork()"),
          error("PermissionError")),
    Check("thread-bomb", "processes",
          program("import threading, time\nfor _ in range(100000):\n    threading.Thread(target=time.sleep, args=(30,), daemon=True).start()"),
          error(), {"timeout_s": 10.0}),
    Check("threads-work", "processes",
          program("import threading\nout = []\nts = [threading.Thread(target=lambda i=i: out.append(i * i)) for i in range(4)]\n"
                  "[t.start() for t in ts]\n[t.join() for t in ts]\nreturn sum(out)"), ok(value=14.0)),
    Check("unshare-user-namespace", "processes",
          program("import ctypes\nreturn ctypes.CDLL(None).unshare(0x10000000)"), ok(value=-1.0)),
    Check("mount-tmpfs", "processes",
          program("import ctypes\nreturn ctypes.CDLL(None).mount(b'none', b'/usr', b'tmpfs', 0, None)"), ok(value=-1.0)),
    Check("ptrace-attach", "processes",
          program("import ctypes\nreturn ctypes.CDLL(None).ptrace(16, 1, None, None)"), ok(value=-1.0)),
    # -- resources
    Check("memory-bomb-one-block", "resources", program("return len(bytearray(10 ** 10))"), error("MemoryError")),
    Check("memory-bomb-growth", "resources", program("x = []\nwhile True:\n    x.append(' ' * 10 ** 6)"), error("MemoryError")),
    Check("cpu-loop", "resources", program("while True:\n    pass"), timeout(), {"timeout_s": 1.0}),
    Check("cpu-limit", "resources", program("while True:\n    pass"), error("CpuTimeLimitExceeded"),
          {"timeout_s": 10.0, "cpu_s": 1}),
    Check("sleep", "resources", program("time.sleep(60)", "import time"), timeout(), {"timeout_s": 1.0}),
    Check("deep-recursion", "resources", program("def f(n):\n    return f(n + 1)\nreturn f(0)"), error("RecursionError")),
    Check("stack-overflow", "resources",
          program("sys.setrecursionlimit(10 ** 8)\ndef f(n):\n    return f(n + 1)\nreturn f(0)", "import sys"), error(),
          {"timeout_s": 10.0, "memory_mb": 128}),  # ~4 s to fill 512 MiB of frames: keep it well inside the timeout
    Check("tmp-fill", "resources", program("with open('/tmp/fill', 'wb') as f:\n    f.write(b'x' * (64 << 20))"), error()),
    Check("shm-fill", "resources", program("with open('/dev/shm/fill', 'wb') as f:\n    f.write(b'x' * (64 << 20))"), error()),
    # -- network
    Check("tcp-to-host", "network",
          program("import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\nreturn 1"), error()),
    Check("unix-socket-to-host", "network",
          program("import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect('{unix_socket}')\nreturn 1"), error()),
    Check("dns", "network", program("import socket\nreturn repr(socket.getaddrinfo('example.com', 80))"), error()),
    Check("raw-socket-syscall", "network",
          program("import ctypes\nreturn ctypes.CDLL(None).socket(2, 1, 0)"), ok(value=-1.0)),
    # -- reading what is outside
    Check("read-secret", "read", program("return open('{secret}').read()"), error("FileNotFoundError")),
    Check("list-home", "read", program("return repr(os.listdir('/home') + os.listdir('/root'))"), error()),
    Check("read-etc-passwd", "read", program("return open('/etc/passwd').read()"), error("FileNotFoundError")),
    Check("read-data-dir", "read", program("return repr(os.listdir('{data_dir}'))"), error("FileNotFoundError")),
    Check("environment", "read", program("return repr(dict(os.environ))"), ok(repr_="'{}'")),
    Check("proc-processes", "read", program("return repr(sorted(p for p in os.listdir('/proc') if p.isdigit()))"),
          ok(repr_="\"['1']\"")),
    Check("proc-sysctl", "read", program("return open('/proc/sys/kernel/hostname').read()"), error()),
    Check("proc-sysrq-trigger", "read", program("open('/proc/sysrq-trigger', 'w')\nreturn 1"), error()),
    Check("ray-session-sockets", "read", program("return repr(os.listdir('/tmp/ray'))"), error("FileNotFoundError")),
    Check("project-sources", "read",
          program("return sum(os.path.exists(p) for p in ('{project}/pyproject.toml', '{project}/flows', '{project}/.git'))"),
          ok(value=0.0)),
    # -- writing outside
    Check("write-tmp", "write", program("open('/tmp/{marker_name}-tmp', 'w').write('x')\nreturn 1"), ok(value=1.0)),
    Check("write-dev-shm", "write", program("open('/dev/shm/{marker_name}-shm', 'w').write('x')\nreturn 1"), ok(value=1.0)),
    Check("tmp-is-private", "write", program("return len(os.listdir('/tmp')) + len(os.listdir('/dev/shm'))"), ok(value=1.0)),
    Check("write-home", "write", program("open('{home}/{marker_name}-home', 'w').write('x')\nreturn 1"), error()),
    Check("write-data-dir", "write", program("open('{data_dir}/{marker_name}-data', 'w').write('x')\nreturn 1"), error()),
    Check("write-usr", "write", program("open('/usr/{marker_name}-usr', 'w').write('x')\nreturn 1"), error()),
    Check("overwrite-sandbox-code", "write", program("open('/datagen/zygote.py', 'a').write('x')\nreturn 1"), error()),
    # -- signals
    Check("kill-everything", "signals",
          program("import signal\nfor pid in range(-1, 4000):\n    try:\n        os.kill(pid, signal.SIGKILL)\n    except OSError:\n"
                  "        pass\nreturn 5"), ok(value=5.0)),
    # its parent is outside its pid namespace: getppid() is 0, and kill(0) is its own process group
    Check("kill-parent", "signals", program("os.kill(os.getppid(), 9)\nreturn os.getppid()"), ok(value=0.0)),
    # -- output
    Check("print-flood", "output", program("for _ in range(10 ** 5):\n    print('x' * 100)\nreturn 1"),
          both(ok(value=1.0), small_stdout(16_384))),
    Check("raw-write-flood", "output", program("while True:\n    os.write(1, b'x' * 65536)"), error("File too large")),
    Check("result-fd-flood", "output", program("while True:\n    os.write(3, b'x' * 65536)"), error()),
    # -- weird return values
    Check("return-nan", "values", program("return float('nan')"), ok(value_is_none=True, repr_="nan")),
    Check("return-huge-int", "values", program("return 10 ** 5000"), ok(value_is_none=True)),
    Check("return-bad-repr", "values",
          program("class A:\n    def __repr__(self):\n        raise RuntimeError('no')\nreturn A()"), ok(value_is_none=True)),
    Check("return-repr-not-str", "values",
          program("class A:\n    def __repr__(self):\n        return 42\nreturn A()"), ok(value_is_none=True)),
    Check("return-list", "values", program("return [1, 2]"), ok(value_is_none=True, repr_="[1, 2]")),
    Check("return-bool", "values", program("return True"), ok(value_is_none=True, repr_="True")),
    Check("return-numeric-text", "values", program("return '42'"), ok(value=42.0)),
    Check("return-huge-text", "values", program("return 'x' * 10 ** 7"), ok(value_is_none=True)),
    Check("return-float-subclass", "values",
          program("class F(float):\n    def __repr__(self):\n        return '42'\nreturn F(7)"), ok(value=7.0)),
    Check("return-bytes", "values", program("return b'\\xff\\x00'"), ok(value_is_none=True)),
    Check("surrogates-everywhere", "values",
          program("print('\\ud800')\nraise ValueError('\\udfff' * 3)"),
          both(error(), encodable)),
    # -- bad program text (used as is)
    Check("lone-surrogate", "source", "def solution():\n    return '\ud800'\n", both(error(), encodable), raw=True),
    Check("nul-byte", "source", "def solution():\n    return 1\x00\n", error(), raw=True),
    Check("binary-garbage", "source", bytes(range(256)).decode("latin-1"), error(), raw=True),
    Check("empty", "source", "", error("NameError"), raw=True),
    Check("no-entry", "source", "x = 1\n", error("NameError"), raw=True),
    Check("huge-source", "source", "# " + "x" * 2_000_000 + "\n", error("too large"), raw=True),
    # -- imports
    Check("import-not-allowed", "imports", program("import pydantic\nreturn 1", ""), error("ModuleNotFoundError")),
    Check("import-stdlib-and-allowed", "imports",
          program("import copy, calendar, unicodedata, itertools\nreturn len(list(itertools.permutations(range(4)))) + "
                  "calendar.monthrange(2024, 2)[1] + len(unicodedata.name('a')) + copy.copy(1)", ""),
          ok(value=24.0 + 29 + 20 + 1)),
)


@dataclass
class Outcome:
    name: str
    kind: str
    passed: bool
    why: str | None
    status: str
    error: str | None


def fill(check: Check, context: dict) -> str:
    if check.raw:
        return check.source
    text = check.source
    for key, value in context.items():
        text = text.replace("{" + key + "}", str(value))
    return text


def run_checks(checks: tuple[Check, ...] = HOSTILE) -> dict:
    """Every check, plus what must hold outside afterwards; {"passed", "outcomes", "outside", "report"}."""
    report = isolation_report()
    home = Path(os.path.expanduser("~"))
    secret_value = "datagen-secret-" + secrets.token_hex(8)
    secret_path = home / f".datagen-sandbox-check-{secrets.token_hex(4)}"
    data_dir = Path(tempfile.mkdtemp(prefix="datagen-check-data-"))
    (data_dir / "rows.jsonl").write_text('{"gold": 42}\n')
    socket_dir = Path(tempfile.mkdtemp(prefix="datagen-check-sock-"))
    marker_name = "datagen-hostile-" + secrets.token_hex(4)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    unix_listener = socket.socket(socket.AF_UNIX)
    unix_listener.bind(str(socket_dir / "s.sock"))
    unix_listener.listen(8)
    os.chmod(socket_dir / "s.sock", 0o777)
    accepted = []
    for server in (listener, unix_listener):
        threading.Thread(target=_accept, args=(server, accepted), daemon=True).start()
    home_before = _listing(home)
    context = {"secret": secret_path, "data_dir": data_dir, "marker": f"/tmp/{marker_name}", "marker_name": marker_name,
               "port": listener.getsockname()[1], "unix_socket": socket_dir / "s.sock", "home": home,
               "project": Path(__file__).resolve().parents[2]}
    try:
        secret_path.write_text(secret_value)
        secret_path.chmod(0o600)
        outcomes = []
        for check in checks:  # one at a time: a check's verdict must not depend on its neighbours
            limits = SandboxLimits(**{"timeout_s": 5.0, **check.limits})
            result = run_programs([fill(check, context)], limits=limits)[0]
            why = check.expect(result)
            if why is None and result.wall_s > limits.timeout_s + 2.0:
                why = f"took {result.wall_s:.1f}s against a {limits.timeout_s}s timeout"
            leaked = [name for name in ("result_repr", "error", "stdout") if secret_value in (getattr(result, name) or "")]
            if why is None and leaked:
                why = f"the secret appeared in {leaked}"
            outcomes.append(Outcome(check.name, check.kind, why is None, why, result.status, result.error))
        outside = {
            "markers_outside": sorted(str(p) for root in (Path("/tmp"), Path("/dev/shm"), home, data_dir)
                                      for p in root.glob(f"{marker_name}*")),
            "data_dir_changed": sorted(p.name for p in data_dir.iterdir()) != ["rows.jsonl"],
            # another sandbox check running at the same time plants (and removes) its own secret here
            "home_changed": sorted(name for name in set(_listing(home)) - set(home_before) - {secret_path.name}
                                   if not re.fullmatch(r"\.datagen-sandbox-check-[0-9a-f]{8}", name)),
            "secret_unchanged": secret_path.read_text() == secret_value,
            "connections_accepted": len(accepted),
            "server_same_process": isolation_report()["server_pid_outside"] == report["server_pid_outside"],
        }
    finally:
        secret_path.unlink(missing_ok=True)
        listener.close()
        unix_listener.close()
        shutil.rmtree(data_dir, ignore_errors=True)
        shutil.rmtree(socket_dir, ignore_errors=True)
        for stray in list(Path("/tmp").glob(f"{marker_name}*")) + list(Path("/dev/shm").glob(f"{marker_name}*")):
            stray.unlink(missing_ok=True)
    outside_ok = (not outside["markers_outside"] and not outside["data_dir_changed"] and not outside["home_changed"]
                  and outside["secret_unchanged"] and outside["connections_accepted"] == 0
                  and outside["server_same_process"])
    return {
        "passed": outside_ok and all(o.passed for o in outcomes),
        "outcomes": [o.__dict__ for o in outcomes],
        "outside": outside,
        "report": report,
        "uid": os.getuid(),
    }


def _accept(server: socket.socket, accepted: list) -> None:
    try:
        while True:
            connection, _ = server.accept()
            accepted.append(1)
            connection.close()
    except OSError:
        return


def _listing(path: Path) -> list[str]:
    try:
        return [p.name for p in path.iterdir()]
    except OSError:
        return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the hostile-program checks against the sandbox.")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    outcome = run_checks()
    if args.json:
        print(json.dumps(outcome))
    else:
        print(format_checks(outcome))
    return 0 if outcome["passed"] else 1


def format_checks(outcome: dict) -> str:
    lines = []
    for item in outcome["outcomes"]:
        mark = "pass" if item["passed"] else "FAIL"
        lines.append(f"  {mark}  {item['kind']:<10} {item['name']:<28} {item['status']:<8} {item['why'] or ''}")
    passed = sum(item["passed"] for item in outcome["outcomes"])
    lines.append(f"{passed} of {len(outcome['outcomes'])} hostile programs got the right verdict")
    for key, value in outcome["outside"].items():
        lines.append(f"  outside: {key} = {value}")
    lines.append("sandbox check: " + ("PASSED" if outcome["passed"] else "FAILED"))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
