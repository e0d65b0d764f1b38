"""A driver's life: who it is, how it ends on a signal, and what is cleaned up after one that died.

Every process a driver starts (Prefect's temporary API server, a local Ray cluster's raylet, GCS,
agents and workers) inherits `DATAGEN_DRIVER=<host>:<pid>:<start ticks>` from its environment, and a
driver that starts a local Ray cluster notes its session folder in `<cache>/drivers/` (Ray's agents
rename themselves with setproctitle, which overwrites their environment; they keep their log files in
that folder open). When the driver is killed with SIGKILL nothing of it runs again, so the next
`datagen run` or `datagen runs` on the same host stops the processes whose driver is gone
(`reap_orphans`), and the runs table marks its `running` row `interrupted` (tasks/runtime/runs.py,
`mark_stale_runs`). SIGTERM and SIGINT end a run
the clean way: `stop_on_signals` turns them into `Interrupted` (a KeyboardInterrupt), the run row is
marked `interrupted`, the Ray session the driver started shuts down, and Prefect stops its server at exit.

Example:
    with stop_on_signals():                # SIGTERM / SIGINT -> Interrupted in the main thread
        reap_orphans()                     # [pid, ...] of processes left by dead drivers, now stopped
        claim_driver()                     # children started from here on carry this process's token
    with noted_ray_session("/tmp/ray/session_..."): ...   # around a local cluster this driver started
"""
from __future__ import annotations

import json
import os
import signal
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

DRIVER_ENV = "DATAGEN_DRIVER"


class Interrupted(KeyboardInterrupt):
    """The driver got SIGTERM or SIGINT; `signal_name` says which."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name


def interruption(exc: BaseException) -> str | None:
    """The signal that ended a run, when `exc` is how it arrived: our Interrupted, a plain
    KeyboardInterrupt (SIGINT), or Prefect's TerminationSignal (its task engine's own SIGTERM handler)."""
    if isinstance(exc, Interrupted):
        return exc.signal_name
    if isinstance(exc, KeyboardInterrupt):
        return "SIGINT"
    number = getattr(exc, "signal", None)
    if type(exc).__name__ == "TerminationSignal" and isinstance(number, int):
        return signal.Signals(number).name
    return None


def _start_ticks(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, /proc/PID/stat field 22); None if it is gone.
    pid and start together name one process: a reused pid has a later start."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def driver_token(pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid) or 0}"


def driver_alive(token: str | None) -> bool | None:
    """True / False for a driver of this host; None when it ran elsewhere (or the token is unreadable)."""
    try:
        host, pid, ticks = (token or "").rsplit(":", 2)
        pid_number = int(pid)
    except ValueError:
        return None
    if host != socket.gethostname():
        return None
    return _start_ticks(pid_number) == ticks


def claim_driver() -> str:
    """Mark this process as the driver of what it starts from now on; returns its token."""
    token = driver_token()
    os.environ[DRIVER_ENV] = token
    return token


def _drivers_dir() -> Path:
    from tasks.engines.model_files import cache_dir

    return cache_dir() / "drivers"


@contextmanager
def noted_ray_session(session_dir: str) -> Iterator[None]:
    """Note, while the block runs, that this driver's local Ray cluster lives in `session_dir`."""
    note = _drivers_dir() / f"{os.getpid()}-{_start_ticks(os.getpid()) or 0}.json"
    note.parent.mkdir(parents=True, exist_ok=True)
    note.write_text(json.dumps({"driver": driver_token(), "ray_session_dir": session_dir}))
    try:
        yield
    finally:
        note.unlink(missing_ok=True)


def orphans() -> dict[int, str]:
    """pid -> driver token of every process (readable to this user) whose datagen driver is dead:
    it carries the driver's token, or holds files open in a Ray session folder a dead driver noted."""
    dead_sessions = {}
    for note in sorted(_drivers_dir().glob("*.json")) if _drivers_dir().is_dir() else ():
        try:
            record = json.loads(note.read_text())
        except (OSError, ValueError):
            continue
        if driver_alive(record.get("driver")) is False:
            dead_sessions[record["ray_session_dir"].rstrip("/") + "/"] = record["driver"]
            note.unlink(missing_ok=True)
    found, me = {}, os.getpid()
    needle = f"{DRIVER_ENV}=".encode()
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        token = _token_of(entry, needle) or _session_of(entry, dead_sessions)
        if token and driver_alive(token) is False:
            found[int(entry.name)] = token
    return found


def _token_of(proc: Path, needle: bytes) -> str | None:
    try:
        environ = (proc / "environ").read_bytes()
    except OSError:
        return None
    for item in environ.split(b"\0"):
        if item.startswith(needle):
            return item[len(needle):].decode(errors="replace")
    return None


def _session_of(proc: Path, sessions: dict[str, str]) -> str | None:
    """The driver of the first noted Ray session folder `proc` holds a file open in."""
    if not sessions:
        return None
    try:
        fds = list((proc / "fd").iterdir())
    except OSError:
        return None
    for fd in fds:
        try:
            link = os.readlink(fd)
        except OSError:  # closed since the listing
            continue
        for folder, token in sessions.items():
            if link.startswith(folder):
                return token
    return None


def reap_orphans(grace_s: float = 3.0) -> list[int]:
    """Stop the processes of dead drivers on this host: SIGTERM, then SIGKILL after `grace_s`.
    Returns the pids found."""
    found = orphans()
    for pid in found:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_start_ticks(pid) for pid in found):
        time.sleep(0.1)
    for pid in found:
        _signal(pid, signal.SIGKILL)
    return sorted(found)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@contextmanager
def stop_on_signals(signals=(signal.SIGTERM, signal.SIGINT)) -> Iterator[None]:
    """Inside the block, the first SIGTERM / SIGINT raises `Interrupted` in the main thread (so the
    run unwinds: its row is marked, Ray and Prefect shut down); a second one while it unwinds takes
    the default action. Outside the main thread this does nothing."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        for sig in signals:
            signal.signal(sig, signal.SIG_DFL)
        raise Interrupted(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, interrupt) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
