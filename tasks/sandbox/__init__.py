"""Runs LLM-written programs (`def solution(): ... return answer`) outside the pipeline's process.

Each program gets its own short-lived process, `python -I -S -B tasks/sandbox/runner.py`, and these
layers, each of which must hold on its own:
  - a network namespace with no interfaces up, and a pid namespace whose init is the runner, so that
    killing it kills every process the program started (`unshare --net --pid --fork --kill-child`,
    probed once; without it the run falls back to the other layers and says why in isolation_report);
  - when the pipeline runs as root, the runner drops to uid/gid nobody before the program runs, so that
    RLIMIT_NPROC (ignored for root) caps fork loops and the program cannot read root-owned files;
  - rlimits: address space, CPU seconds, file size, open files, processes, no core dumps;
  - an empty environment and a throwaway working directory, removed afterwards;
  - prints go through a bounded writer to a file (never a pipe), so an output flood cannot fill memory;
  - a wall-clock timeout that SIGKILLs the whole process group;
  - an audit hook refusing sockets, subprocesses, exec, fork and ctypes (second layer only).

Example:
    run_program("def solution():\\n    return 48 / 2 + 48\\n")
    # ExecResult(status='ok', value=72.0, result_repr='72.0', error=None, stdout='', wall_s=0.03)
Run its tests: .venv/bin/python -m pytest tests/tasks/test_sandbox.py -q
"""
from __future__ import annotations

import functools
import json
import math
import os
import pwd
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

from tasks.answers import parse_number

RUNNER_PATH = Path(__file__).resolve().with_name("runner.py")
RESULT_MARKER = b"\x1e"  # must equal runner.RESULT_MARKER
PYTHON_FLAGS = ("-I", "-S", "-B")  # isolated mode, no site-packages, no .pyc writes
UNSHARE_FLAGS = ("--net", "--pid", "--fork", "--kill-child")
NOBODY_FALLBACK_ID = 65534
MAX_OPEN_FILES = 64
# The program's output file may hold its bounded prints, the result line and whatever it writes to
# fd 1 directly; RLIMIT_FSIZE also caps every file it writes in its working directory.
MIN_FILE_SIZE_LIMIT = 1 << 20
# Stdlib modules imported by the runner before the privilege drop: after it, an interpreter installed
# under a private home (here /root/.pyenv) cannot load anything new from its stdlib. Each costs
# start-up time (this set ~3 ms on top of the runner's own ~25 ms; dataclasses alone would add 8 ms).
PRELOADED_MODULES = (
    "math", "cmath", "fractions", "decimal", "statistics", "random", "itertools", "functools",
    "operator", "collections", "heapq", "bisect", "datetime", "re", "string", "typing", "numbers",
)
PROBE_SOURCE = """
def solution():
    import os
    with open("/proc/self/net/dev") as handle:
        interfaces = [line.split(":")[0].strip() for line in handle.readlines()[2:]]
    return f"pid={os.getpid()} uid={os.getuid()} interfaces={','.join(interfaces)}"
"""


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 5.0  # wall clock; kills the whole process group / pid namespace
    memory_mb: int = 512  # RLIMIT_AS: address space, not resident memory
    cpu_s: int | None = None  # RLIMIT_CPU; None -> ceil(timeout_s) + 1, a backstop behind the wall clock
    max_output_bytes: int = 16_384  # captured stdout bound
    max_processes: int = 16  # RLIMIT_NPROC, counted per uid: only enforced because root drops to nobody

    def __post_init__(self):
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.memory_mb < 64:
            raise ValueError(f"memory_mb must be >= 64 (the interpreter needs it), got {self.memory_mb}")
        if self.cpu_s is not None and self.cpu_s < 1:
            raise ValueError(f"cpu_s must be >= 1 or None, got {self.cpu_s}")
        if self.max_output_bytes < 0 or self.max_processes < 1:
            raise ValueError("max_output_bytes must be >= 0 and max_processes >= 1")

    @property
    def cpu_seconds(self) -> int:
        return self.cpu_s if self.cpu_s is not None else math.ceil(self.timeout_s) + 1


@dataclass
class ExecResult:
    status: Literal["ok", "error", "timeout"]  # ok = ran and returned; error = raised / killed / bad output
    value: float | None  # finite real return value (int, float, Fraction, Decimal, numeric str; not bool)
    result_repr: str | None  # repr() of the return value, truncated to 200 chars
    error: str | None  # short reason, e.g. "ZeroDivisionError: division by zero", "timeout after 5.0s"
    stdout: str  # what the program printed, truncated to the bound
    wall_s: float


@dataclass(frozen=True)
class _Isolation:
    prefix: tuple[str, ...]  # the unshare command line, or () without namespaces
    drop_to: tuple[int, int] | None  # (uid, gid) the runner switches to, when we are root
    fallback_reason: str | None  # why namespaces are not in use


def run_program(
    source: str,
    entry: str = "solution",
    limits: SandboxLimits = SandboxLimits(),
    *,
    _audit_hook: bool = True,
    _preload: Sequence[str] = (),
) -> ExecResult:
    """Runs `source` in a fresh sandboxed process and returns what `entry()` returned or why it failed.

    Private knobs for tests that prove each OS-level layer on its own: `_audit_hook=False` turns the
    audit hook off; `_preload` imports extra modules (e.g. "socket") before the privilege drop, as
    if the interpreter's stdlib were world-readable, so the network namespace is what stops them.
    """
    return _run(source, entry, limits, _isolation(), audit_hook=_audit_hook, preload=tuple(_preload))


def run_programs(
    sources: Sequence[str],
    entry: str = "solution",
    limits: SandboxLimits = SandboxLimits(),
    max_workers: int | None = None,
    *,
    _audit_hook: bool = True,
) -> list[ExecResult]:
    """run_program over many sources on a thread pool (each thread waits on one subprocess); input order."""
    if not sources:
        return []
    isolation = _isolation()
    workers = max_workers or min(len(sources), os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox") as pool:
        return list(pool.map(lambda src: _run(src, entry, limits, isolation, audit_hook=_audit_hook), sources))


def isolation_report() -> dict:
    """Which isolation layers are active on this machine (probed once per process)."""
    isolation = _isolation()
    namespaces = bool(isolation.prefix)
    return {
        "separate_process": True,
        "process_group_kill": True,
        "empty_env": True,
        "throwaway_cwd": True,
        "bounded_output_files": True,
        "rlimits": ["AS", "CPU", "FSIZE", "NOFILE", "CORE", "NPROC"],
        "netns": namespaces,
        "pidns": namespaces,
        "uid": isolation.drop_to[0] if isolation.drop_to else os.getuid(),
        "nproc_enforced": isolation.drop_to is not None or os.getuid() != 0,
        "audit_hook": True,
        "python": [sys.executable, *PYTHON_FLAGS],
        "unshare": list(isolation.prefix),
        "fallback_reason": isolation.fallback_reason,
    }


@functools.lru_cache(maxsize=1)
def _isolation() -> _Isolation:
    drop_to = _nobody_ids() if os.getuid() == 0 else None
    unshare = shutil.which("unshare")
    if unshare is None:
        reason = "unshare not found on PATH"
    else:
        flags = UNSHARE_FLAGS if os.getuid() == 0 else ("--user", *UNSHARE_FLAGS)
        candidate = _Isolation(prefix=(unshare, *flags), drop_to=drop_to, fallback_reason=None)
        reason = _probe_failure(candidate, expect_namespaces=True)
        if reason is None:
            return candidate
    plain = _Isolation(prefix=(), drop_to=drop_to, fallback_reason=reason)
    failure = _probe_failure(plain, expect_namespaces=False)
    if failure is not None:
        raise RuntimeError(f"sandbox cannot run programs here: {failure} (namespaces: {reason})")
    return plain


def _nobody_ids() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        return NOBODY_FALLBACK_ID, NOBODY_FALLBACK_ID


def _probe_failure(isolation: _Isolation, expect_namespaces: bool) -> str | None:
    """None when a probe program runs under `isolation` with the expected pid, uid and interfaces."""
    limits = SandboxLimits(timeout_s=15.0)
    result = _run(PROBE_SOURCE, "solution", limits, isolation, audit_hook=False)
    if result.status != "ok" or not result.result_repr:
        return f"probe run failed: {result.status}: {result.error}"
    facts = dict(part.split("=", 1) for part in result.result_repr.strip("'\"").split())
    if isolation.drop_to and facts.get("uid") != str(isolation.drop_to[0]):
        return f"privilege drop failed: {result.result_repr}"
    if expect_namespaces:
        if facts.get("pid") != "1":
            return f"no pid namespace: {result.result_repr}"
        if set(facts.get("interfaces", "").split(",")) - {"lo"}:
            return f"network interfaces visible: {result.result_repr}"
    return None


def _run(
    source: str,
    entry: str,
    limits: SandboxLimits,
    isolation: _Isolation,
    audit_hook: bool,
    preload: tuple[str, ...] = (),
) -> ExecResult:
    started = time.monotonic()
    file_size_limit = max(MIN_FILE_SIZE_LIMIT, 4 * limits.max_output_bytes)
    # base/ (ours, 0711: enterable, not listable) holds the program and the output files; base/work/
    # is the program's cwd and the only directory the sandbox uid owns, so it cannot rewrite them.
    base = Path(tempfile.mkdtemp(prefix="datagen-sandbox-"))
    try:
        base.chmod(0o711)
        workdir = base / "work"
        workdir.mkdir(mode=0o700)
        if isolation.drop_to:
            os.chown(workdir, *isolation.drop_to)
        program = base / "program.py"
        program.write_text(source, encoding="utf-8", errors="surrogateescape")
        program.chmod(0o600)
        config = {
            "program": str(program),
            "entry": entry,
            "uid": isolation.drop_to[0] if isolation.drop_to else None,
            "gid": isolation.drop_to[1] if isolation.drop_to else None,
            "rlimits": {  # name: (soft, hard)
                "RLIMIT_AS": (limits.memory_mb * 1024 * 1024,) * 2,
                # SIGXCPU at the soft limit (the runner turns it into an error), SIGKILL one second later.
                "RLIMIT_CPU": (limits.cpu_seconds, limits.cpu_seconds + 1),
                "RLIMIT_FSIZE": (file_size_limit,) * 2,
                "RLIMIT_NOFILE": (MAX_OPEN_FILES,) * 2,
                "RLIMIT_CORE": (0, 0),
            },
            "max_processes": limits.max_processes,
            "max_output_bytes": limits.max_output_bytes,
            "audit_hook": audit_hook,
            "preload": PRELOADED_MODULES + preload,
        }
        command = [*isolation.prefix, sys.executable, *PYTHON_FLAGS, str(RUNNER_PATH), json.dumps(config)]
        with open(base / "stdout", "w+b") as out, open(base / "stderr", "w+b") as err:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=workdir,
                env={},
                start_new_session=True,  # its own process group, so one killpg reaches every process
                close_fds=True,
            )
            try:
                timed_out = not _wait_for_exit(process, limits.timeout_s)
                if timed_out:
                    _kill_sandbox(process, isolation)
            finally:
                if not isolation.prefix:
                    _kill_group(process.pid)  # without a pid namespace, reap leftovers by group
                process.wait()
            wall_s = time.monotonic() - started
            out.seek(0)
            output = out.read(file_size_limit + 1)
            err.seek(0, os.SEEK_END)
            err.seek(max(0, err.tell() - 2048))
            error_tail = err.read().decode("utf-8", "replace").strip().splitlines()
    finally:
        shutil.rmtree(base, ignore_errors=True)

    printed, payload = _split_result(output)
    stdout = printed[: limits.max_output_bytes].decode("utf-8", "replace")
    if timed_out:
        return ExecResult("timeout", None, None, f"timeout after {limits.timeout_s}s", stdout, wall_s)
    if payload is None:
        return ExecResult("error", None, None, _crash_reason(process.returncode, error_tail), stdout, wall_s)
    if not payload.get("ok"):
        return ExecResult("error", None, None, str(payload.get("error")), stdout, wall_s)
    value = payload.get("value")
    if value is None and payload.get("text") is not None:
        value = parse_number(payload["text"])
    return ExecResult("ok", value, payload.get("repr"), None, stdout, wall_s)


def _wait_for_exit(process: subprocess.Popen, timeout_s: float) -> bool:
    """True if the process exited within timeout_s. Does not reap it.

    A pidfd wakes us the moment it exits; Popen.wait(timeout) polls with sleeps growing to 50 ms,
    which would add tens of milliseconds to every ~20 ms program.
    """
    try:
        pidfd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):  # pre-5.3 kernels, non-Linux
        try:
            process.wait(timeout=timeout_s)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        return bool(poller.poll(timeout_s * 1000))
    finally:
        os.close(pidfd)


def _kill_sandbox(process: subprocess.Popen, isolation: _Isolation) -> None:
    """SIGKILLs everything the run started.

    With namespaces, the pid namespace's init (unshare's child, the runner) goes first: the kernel
    kills the rest of the namespace, unshare reaps it and exits, and no zombie is left to an outside
    reaper. Killing the group is the backstop (and the only means without namespaces).
    """
    if isolation.prefix:
        try:
            children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        except OSError:
            children = []
        for child in children:
            try:
                os.kill(int(child), signal.SIGKILL)
            except ProcessLookupError:
                pass
        if children:
            _wait_for_exit(process, 1.0)
    _kill_group(process.pid)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _split_result(output: bytes) -> tuple[bytes, dict | None]:
    """(what the program printed, the runner's result) — the result only if it is the final line."""
    if not output.endswith(b"\n"):
        return output, None
    start = output.rfind(b"\n" + RESULT_MARKER, 0, len(output) - 1)
    if start < 0 or b"\n" in output[start + 2 : -1]:
        return output, None
    try:
        payload = json.loads(output[start + 2 : -1])
    except ValueError:
        return output, None
    return (output[:start], payload) if isinstance(payload, dict) else (output, None)


# unshare re-raises its child's fatal signal on itself, which it cannot do for SIGKILL: it exits 1
# with this message instead (util-linux 2.38).
UNSHARE_SIGKILL_MESSAGE = "sigprocmask unblock failed"


def _crash_reason(returncode: int, stderr_tail: list[str]) -> str:
    if returncode == 1 and stderr_tail and UNSHARE_SIGKILL_MESSAGE in stderr_tail[-1]:
        returncode = -signal.SIGKILL
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown"
        return f"killed by signal {-returncode} ({name})"
    detail = f": {stderr_tail[-1][:200]}" if stderr_tail else ""
    return f"runner exited with code {returncode} without a result{detail}"
