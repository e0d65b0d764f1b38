"""Runs LLM-written programs (`def solution(): ... return answer`) outside the pipeline's process.

One fork server per pipeline process (`zygote.py`) runs inside bubblewrap (`bwrap`): its own user,
pid, network (loopback only), IPC, UTS and cgroup namespaces, and a filesystem that holds only the
interpreter, the system libraries and the allowed site-packages, read-only, and an empty /tmp. No
project sources, no data, no home directory, no Ray session sockets, no /etc. The server has already
started Python and imported the allowed modules (stdlib + sympy + numpy when installed), so each
program is two forks away: it runs as pid 1 of its own pid namespace with its own /proc, /tmp and
/dev/shm, rlimits, no capabilities, no_new_privs and a seccomp filter that refuses fork, exec,
sockets, ptrace, mounts and namespaces (zygote.py lists every layer). The same layers hold whether
the pipeline runs as root or as an ordinary user. The result comes back on a descriptor of its own,
read by the server only after the program has exited: nothing a program prints is a result.

Example:
    run_program("def solution():\\n    return 48 / 2 + 48\\n")
    # ExecResult(status='ok', value=72.0, result_repr='72.0', error=None, stdout='', wall_s=0.003)
`datagen sandbox-check` prints the isolation report and runs the hostile-program checks (checks.py).
Run its tests: .venv/bin/python -m pytest tests/tasks/sandbox -q
"""
from __future__ import annotations

import atexit
import concurrent.futures
import functools
import importlib.metadata
import importlib.util
import itertools
import json
import math
import os
import queue
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

from tasks.answers import parse_number

ZYGOTE_PATH = Path(__file__).resolve().with_name("zygote.py")
ZYGOTE_INSIDE = "/datagen/zygote.py"
FRAME = struct.Struct(">I")
PYTHON_FLAGS = ("-I", "-S", "-B")  # isolated mode, no site (allowed site-packages are added by path)
# Third-party modules a program may import, when installed; DATAGEN_SANDBOX_IMPORTS overrides
# (comma-separated; empty = stdlib only).
DEFAULT_IMPORTS = ("sympy", "numpy")
# Imported by the server before any program runs, so that programs pay nothing for them.
PRELOADED_STDLIB = (
    "math", "cmath", "fractions", "decimal", "statistics", "random", "itertools", "functools",
    "operator", "collections", "heapq", "bisect", "datetime", "re", "string", "typing", "numbers",
    "copy", "calendar", "unicodedata", "threading", "json", "dataclasses", "enum",
)
MAX_SOURCE_CHARS = 1_000_000
STARTUP_TIMEOUT_S = 120.0  # bwrap + the interpreter + sympy/numpy imports, on a loaded 2-core box
REPLY_GRACE_S = 30.0  # beyond a program's timeout before a silent server is declared stuck
INSTALL_HINT = "install bubblewrap: `apt-get install bubblewrap` (Debian/Ubuntu) or `dnf install bubblewrap`"
PROBE_SOURCE = """
import os
def solution():
    with open("/proc/self/status") as handle:
        status = dict(line.split(":", 1) for line in handle if ":" in line)
    return (f"pid={os.getpid()} cap_eff={status['CapEff'].strip()} seccomp={status['Seccomp'].strip()} "
            f"no_new_privs={status['NoNewPrivs'].strip()} procs={len([p for p in os.listdir('/proc') if p.isdigit()])}")
"""


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot run programs on this machine (no bwrap, no user namespaces, a failed probe)."""


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 5.0  # wall clock; kills the program's whole pid namespace
    memory_mb: int = 512  # RLIMIT_AS above what the preloaded interpreter already maps
    cpu_s: int | None = None  # RLIMIT_CPU; None -> ceil(timeout_s) + 1, a backstop behind the wall clock
    max_output_bytes: int = 16_384  # captured stdout bound
    max_processes: int = 16  # RLIMIT_NPROC (threads; new processes are refused by seccomp anyway)
    tmp_mb: int = 16  # the program's private /tmp and /dev/shm, each

    def __post_init__(self):
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.memory_mb < 16:
            raise ValueError(f"memory_mb must be >= 16, got {self.memory_mb}")
        if self.cpu_s is not None and self.cpu_s < 1:
            raise ValueError(f"cpu_s must be >= 1 or None, got {self.cpu_s}")
        if self.max_output_bytes < 0 or self.max_processes < 1 or self.tmp_mb < 1:
            raise ValueError("max_output_bytes must be >= 0, max_processes >= 1 and tmp_mb >= 1")

    @property
    def cpu_seconds(self) -> int:
        return self.cpu_s if self.cpu_s is not None else math.ceil(self.timeout_s) + 1

    def wire(self, max_parallel: int) -> dict:
        file_bytes = max(1 << 20, 4 * self.max_output_bytes)
        return {
            "timeout_s": self.timeout_s, "memory_mb": self.memory_mb, "cpu_s": self.cpu_seconds,
            "max_output_bytes": self.max_output_bytes, "file_bytes": file_bytes, "open_files": 64,
            # counted per user across the server's user namespace: this program's threads plus the
            # other programs running beside it and the server
            "processes": self.max_processes + 2 * max_parallel + 2, "tmp_mb": self.tmp_mb,
        }


@dataclass
class ExecResult:
    status: Literal["ok", "error", "timeout"]  # ok = ran and returned; error = raised / killed / bad output
    value: float | None  # finite real return value (int, float, Fraction, Decimal, numeric str; not bool)
    result_repr: str | None  # repr() of the return value, truncated to 200 chars
    error: str | None  # short reason, e.g. "ZeroDivisionError: division by zero", "timeout after 5.0s"
    stdout: str  # what the program printed, truncated to the bound
    wall_s: float


def allowed_imports() -> tuple[str, ...]:
    configured = os.environ.get("DATAGEN_SANDBOX_IMPORTS")
    if configured is None:
        return DEFAULT_IMPORTS
    return tuple(name.strip() for name in configured.split(",") if name.strip())


def run_program(source: str, entry: str = "solution", limits: SandboxLimits = SandboxLimits()) -> ExecResult:
    """Runs `source` in the sandbox and returns what `entry()` returned or why it failed."""
    return run_programs([source], entry, limits)[0]


def run_programs(
    sources: Sequence[str],
    entry: str = "solution",
    limits: SandboxLimits = SandboxLimits(),
    max_workers: int | None = None,
) -> list[ExecResult]:
    """Every source through the sandbox, up to `max_workers` (default 2 per core) at once; input order."""
    if not sources:
        return []
    imports = allowed_imports()
    parallel = max_workers or 2 * (os.cpu_count() or 1)
    # Two servers: one with the allowed packages preloaded, for the programs that name them, and a
    # lighter one (stdlib only preloaded: each fork copies a fifth of the memory) for the rest. Either
    # one allows the same imports; the split only decides who pays for sympy's import up front.
    heavy_pattern = _imports_pattern(imports)
    heavy = [bool(heavy_pattern and isinstance(s, str) and heavy_pattern.search(s)) for s in sources]
    results: list[ExecResult | None] = [None] * len(sources)
    for preload in (False, True):
        indexes = [i for i, is_heavy in enumerate(heavy) if is_heavy == preload]
        if indexes:
            server = _server(imports, parallel, preload)
            for index, result in zip(indexes, server.run_many([sources[i] for i in indexes], entry, limits)):
                results[index] = result
    return results  # type: ignore[return-value]


def isolation_report() -> dict:
    """What isolates a program on this machine, as checked from inside by a probe program."""
    return dict(_server(allowed_imports(), 2 * (os.cpu_count() or 1), True).report)


@functools.lru_cache(maxsize=8)
def _imports_pattern(imports: tuple[str, ...]) -> re.Pattern | None:
    if not imports:
        return None
    names = "|".join(re.escape(name) for name in imports)
    return re.compile(rf"\b(?:import|from)\s+(?:{names})\b|__import__|importlib")


# ----------------------------------------------------------------------------------- the server
_SERVERS: dict[tuple, "_Server"] = {}
_SERVERS_LOCK = threading.Lock()


def _server(imports: tuple[str, ...], max_parallel: int, preload: bool) -> "_Server":
    key = (os.getpid(), imports, max_parallel, preload)
    with _SERVERS_LOCK:
        server = _SERVERS.get(key)
        if server is None or not server.alive:
            server = _SERVERS[key] = _Server(imports, max_parallel, preload)
        return server


@atexit.register
def _close_servers() -> None:
    for server in list(_SERVERS.values()):
        server.close()


class _Server:
    """The host side of one fork server: starts bwrap, sends requests, matches replies to futures."""

    def __init__(self, imports: tuple[str, ...], max_parallel: int, preload: bool = True):
        self.imports = imports
        self.max_parallel = max_parallel
        self.alive = False
        self._pending: dict[int, concurrent.futures.Future] = {}
        self._lock = threading.Lock()  # _pending
        self._write_lock = threading.Lock()  # the server's stdin
        self._ids = itertools.count()
        self._ready = threading.Event()
        self._failure: str | None = None
        self._stderr = tempfile.TemporaryFile()
        self.facts: dict = {}
        self.preload = preload
        command, self.binds = _bwrap_command(imports, max_parallel, preload)
        # The thread that starts bwrap must outlive it: --die-with-parent follows the starting thread.
        self._thread = threading.Thread(target=self._own, args=(command,), name="sandbox-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(STARTUP_TIMEOUT_S):
            self.close()
            raise SandboxUnavailable(f"the sandbox server did not start within {STARTUP_TIMEOUT_S:.0f}s")
        if self._failure:
            raise SandboxUnavailable(f"the sandbox server did not start: {self._failure}")
        self.report = self._probe()

    # -- lifecycle
    def _own(self, command: list[str]) -> None:
        try:
            self._process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                env={"PATH": "/usr/bin:/bin"}, close_fds=True, start_new_session=True,
            )
            hello = self._read_frame()
            if not hello or not hello.get("ready"):
                raise SandboxUnavailable(f"no greeting from the server: {self._stderr_tail()}")
            self.facts = hello
            self.alive = True
        except BaseException as exc:  # noqa: BLE001 - reported to the constructor
            self._failure = str(exc) or type(exc).__name__
            self._ready.set()
            return
        self._ready.set()
        while True:
            try:
                reply = self._read_frame()
            except (OSError, ValueError) as exc:
                reply, why = None, f"unreadable reply: {exc}"
            else:
                why = "exited"
            if reply is None:
                self._fail_all(f"the sandbox server {why}: {self._stderr_tail()}")
                return
            with self._lock:
                future = self._pending.pop(reply.get("id"), None)
            if future is not None:
                future.set_result(reply)

    def _read_frame(self) -> dict | None:
        head = self._process.stdout.read(4)
        if len(head) < 4:
            return None
        (size,) = FRAME.unpack(head)
        body = self._process.stdout.read(size)
        if len(body) < size:
            return None
        payload = json.loads(body)
        if not isinstance(payload, dict):
            raise ValueError("a reply that is not an object")
        return payload

    def _stderr_tail(self) -> str:
        try:
            self._stderr.seek(0, os.SEEK_END)
            self._stderr.seek(max(0, self._stderr.tell() - 2000))
            lines = self._stderr.read().decode("utf-8", "replace").strip().splitlines()
        except (OSError, ValueError):
            return "no error output"
        return lines[-1] if lines else "no error output"

    def _fail_all(self, why: str) -> None:
        self.alive = False
        with self._lock:
            pending, self._pending = self._pending, {}
        for future in pending.values():
            future.set_exception(SandboxUnavailable(why))

    def close(self) -> None:
        self.alive = False
        process = getattr(self, "_process", None)
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    # -- requests
    def submit(self, source: str, entry: str, limits: SandboxLimits) -> concurrent.futures.Future:
        return self.submit_many([source], entry, limits)[0]

    def submit_many(self, sources: Sequence[str], entry: str, limits: SandboxLimits) -> list[concurrent.futures.Future]:
        """One future per source, the requests written to the server in one go."""
        wire = limits.wire(self.max_parallel)
        futures, frames = [], []
        for source in sources:
            request_id = next(self._ids)
            data = json.dumps({"id": request_id, "source": source, "entry": entry, "limits": wire},
                              ensure_ascii=True).encode("ascii")
            frames.append(FRAME.pack(len(data)) + data)
            futures.append((request_id, concurrent.futures.Future()))
        with self._lock:
            if not self.alive:
                raise SandboxUnavailable(f"the sandbox server is not running: {self._stderr_tail()}")
            self._pending.update(futures)
        try:
            # outside self._lock: the reader thread takes it for every reply while this write may wait
            # for the server to read (and the server for the reader)
            with self._write_lock:
                self._process.stdin.write(b"".join(frames))
                self._process.stdin.flush()
        except OSError as exc:
            with self._lock:
                for request_id, _ in futures:
                    self._pending.pop(request_id, None)
            raise SandboxUnavailable(f"the sandbox server stopped taking programs: {exc}") from exc
        return [future for _, future in futures]

    def run_many(self, sources: Sequence[str], entry: str, limits: SandboxLimits) -> list[ExecResult]:
        results: list[ExecResult | None] = [None] * len(sources)
        indexes = []
        for index, source in enumerate(sources):
            refused = _refuse(source)
            if refused is not None:
                results[index] = refused
            else:
                indexes.append(index)
        finished: queue.SimpleQueue = queue.SimpleQueue()
        futures = self.submit_many([sources[i] for i in indexes], entry, limits) if indexes else []
        for index, future in zip(indexes, futures):
            future.add_done_callback(lambda future, index=index: finished.put((index, future)))
        for _ in futures:
            try:
                index, future = finished.get(timeout=limits.timeout_s + REPLY_GRACE_S)
            except queue.Empty:  # no program finished in a whole timeout and more: the server is stuck
                self.close()
                self._fail_all(f"the sandbox server sent nothing for {limits.timeout_s + REPLY_GRACE_S:.0f}s")
                index, future = finished.get()  # every pending future has just failed
            results[index] = _to_result(future)
        return results  # type: ignore[return-value]

    def _probe(self) -> dict:
        result = self.run_many([PROBE_SOURCE], "solution", SandboxLimits(timeout_s=30.0))[0]
        if result.status != "ok" or not result.result_repr:
            raise SandboxUnavailable(f"the probe program failed: {result.status}: {result.error}")
        facts = dict(part.split("=", 1) for part in result.result_repr.strip("'\"").split())
        problems = []
        if facts.get("pid") != "1" or facts.get("procs") != "1":
            problems.append(f"not alone in its pid namespace ({result.result_repr})")
        if int(facts.get("cap_eff", "1"), 16) != 0:
            problems.append(f"capabilities left: {facts.get('cap_eff')}")
        if facts.get("no_new_privs") != "1":
            problems.append("no_new_privs not set")
        if self.facts.get("seccomp") and facts.get("seccomp") != "2":
            problems.append("seccomp filter not loaded")
        if problems:
            self.close()
            raise SandboxUnavailable("the probe program found: " + "; ".join(problems))
        return {
            "bwrap": shutil.which("bwrap"),
            "namespaces": ["user", "pid (one per program)", "mount (one per program)", "ipc (one per program)",
                           "net (loopback only)", "uts", "cgroup"],
            "filesystem": sorted(self.binds),
            "root_listing": self.facts.get("root"),
            "private_tmp_per_program": True,
            "uid_outside": os.getuid(),
            "uid_inside": self.facts.get("uid"),
            "capabilities": "none",
            "no_new_privs": True,
            "seccomp": bool(self.facts.get("seccomp")),
            "seccomp_note": self.facts.get("seccomp_reason"),
            "rlimits": ["AS", "CPU", "FSIZE", "NOFILE", "NPROC", "CORE"],
            "allowed_imports": ["stdlib", *self.imports],
            "preloaded": self.facts.get("preloaded"),
            "python": self.facts.get("python"),
            "server_pid_outside": self._process.pid,
        }


def _refuse(source) -> ExecResult | None:
    if not isinstance(source, str):
        return ExecResult("error", None, None, f"program is {type(source).__name__}, not text", "", 0.0)
    if len(source) > MAX_SOURCE_CHARS:
        return ExecResult("error", None, None, f"program too large ({len(source)} characters)", "", 0.0)
    return None


def _to_result(future: concurrent.futures.Future) -> ExecResult:
    """A reply as an ExecResult; a reply of the wrong shape is an error result, never an exception."""
    try:
        reply = future.result()
    except SandboxUnavailable as exc:
        return ExecResult("error", None, None, f"sandbox unavailable: {exc}"[:300], "", 0.0)
    status = reply.get("status")
    value, text, result_repr = reply.get("value"), reply.get("text"), reply.get("repr")
    error, stdout, wall_s = reply.get("error"), reply.get("stdout"), reply.get("wall_s")
    well_formed = (
        status in ("ok", "error", "timeout")
        and (value is None or (isinstance(value, float) and math.isfinite(value)))
        and all(item is None or isinstance(item, str) for item in (text, result_repr, error))
        and isinstance(stdout, str)
        and isinstance(wall_s, (int, float))
    )
    if not well_formed:
        return ExecResult("error", None, None, "the sandbox server sent a malformed reply", "", 0.0)
    text, result_repr, error, stdout = (_clean(item) for item in (text, result_repr, error, stdout))
    if status == "ok" and value is None and text is not None:
        value = parse_number(text)
    return ExecResult(status, value, result_repr, error, stdout, float(wall_s))


def _clean(text: str | None) -> str | None:
    """Text a table can hold: a lone surrogate (valid in a Python str, not in UTF-8) becomes U+FFFD."""
    return None if text is None else text.encode("utf-8", "replace").decode("utf-8")


def _with_dependencies(imports: tuple[str, ...]) -> list[str]:
    """The allowed modules and what their distributions require (sympy needs mpmath), as module names."""
    found, todo = [], list(imports)
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.append(name)
        try:
            requirements = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for requirement in requirements:
            if "extra ==" not in requirement:
                todo.append(re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0].lower().replace("-", "_"))
    return found


def _under(path: str, roots: Sequence[str]) -> bool:
    """`path` is one of `roots` or inside one."""
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def _bwrap_command(imports: tuple[str, ...], max_parallel: int, preload: bool = True) -> tuple[list[str], list[str]]:
    """The bwrap command line that starts the server, and the host paths it shows read-only."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailable(f"bubblewrap (bwrap) is not installed; {INSTALL_HINT}")
    python = os.path.realpath(sys.executable)
    shown: list[str] = []

    def show(path: str) -> None:
        path = os.path.realpath(path)
        if os.path.exists(path) and not _under(path, shown):
            shown[:] = [p for p in shown if not _under(p, [path])] + [path]

    show("/usr")
    show(sys.base_prefix)
    show(python)
    site_dirs = []  # (host path, path inside)
    for module in imports:
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.origin and spec.has_location:
            package = bool(spec.submodule_search_locations)
            site = os.path.realpath(Path(spec.origin).parent.parent if package else Path(spec.origin).parent)
            if site in (host for host, _ in site_dirs):
                continue
            covered = _under(site, shown)
            # a venv's site-packages is shown under /datagen, so that nothing inside the project's
            # checkout is reachable by its own path (the host path's name still appears in
            # /proc/self/mountinfo: names only, see the README's threat model)
            site_dirs.append((site, site if covered else f"/datagen/site-{len(site_dirs)}"))
    args = [
        bwrap, "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
        "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--hostname", "sandbox",
        # the server needs these two inside its own user namespace (mounts and namespaces per
        # program, dropping the bounding set); every program gives up all of them before it runs
        "--cap-add", "CAP_SYS_ADMIN", "--cap-add", "CAP_SETPCAP",
        "--clearenv", "--setenv", "OPENBLAS_NUM_THREADS", "1", "--setenv", "OMP_NUM_THREADS", "1",
        "--setenv", "MKL_NUM_THREADS", "1",
    ]
    for path in sorted(shown):
        args += ["--ro-bind", path, path]
    for host, inside in site_dirs:
        if host != inside:
            args += ["--ro-bind", host, inside]
    for top in ("/lib", "/lib64", "/lib32", "/bin", "/sbin"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top) and not _under(top, shown):
            args += ["--ro-bind", top, top]
            shown.append(top)
    args += ["--ro-bind", str(ZYGOTE_PATH), ZYGOTE_INSIDE, "--proc", "/proc", "--dev", "/dev",
             "--tmpfs", "/tmp", "--remount-ro", "/", "--chdir", "/tmp"]
    config = {
        "preload": [*PRELOADED_STDLIB, *(imports if preload else ())], "allowed": _with_dependencies(imports), "paths": [inside for _, inside in site_dirs],
        "max_parallel": max_parallel, "seccomp": True,
    }
    visible = shown + [host for host, inside in site_dirs if host != inside]
    return [*args, python, *PYTHON_FLAGS, ZYGOTE_INSIDE, json.dumps(config)], visible
