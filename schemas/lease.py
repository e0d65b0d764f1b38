"""One writer at a time per (table, config hash): a lease in the data dir.

Two runs of the same generator and config into one data dir (a scheduled run and a manual one) would
both plan the same rows and both write them. A run therefore holds a lease on
`<table>/_leases/<config hash>` from before it plans until it has committed: a second run waits for it,
saying who holds it, then plans — and finds the first run's records committed, so it does only what
is left. Runs of other configs, or into other tables, do not wait for each other.

- Local and shared POSIX filesystems: an exclusive `flock` on `<config hash>.lock`. The kernel (or the
  NFS lock manager) drops it when its holder dies, however it dies, so there is nothing stale to
  break. The file holds the holder's description, for the message of whoever waits.
- Object stores and other fsspec filesystems: `<config hash>.json` created only if absent (fsspec's
  exclusive "xb" mode: S3's and GCS's conditional writes), refreshed every `ttl_s / 3` by a thread
  and deleted at the end. A lease whose refresh is older than `ttl_s` belonged to a dead run: a waiter
  deletes it and tries again. A filesystem with no exclusive create gets no lease, and a warning.

Example:
    with acquire_lease(DataDir("./datasets"), "math_programs", "9f3a0c...", {"run_id": run_id}):
        plan(); generate(); commit()
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Callable, Iterator

from .datadir import DataDir

log = logging.getLogger(__name__)


def _describe(holder: dict) -> str:
    since = holder.get("since", "?")
    return (f"run {holder.get('run_id', '?')} (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
            f"since {since})")


@contextmanager
def acquire_lease(data_dir: DataDir, table: str, key: str, holder: dict, *, poll_s: float = 1.0,
                  ttl_s: float = 120.0, on_wait: Callable[[str], None] = print) -> Iterator[dict]:
    """Hold the lease on (table, key) for the block; wait while another holder has it. `on_wait(text)`
    is told once who holds it. Yields the holder record written (with pid, host and since added)."""
    holder = {**holder, "pid": os.getpid(), "host": socket.gethostname(),
              "since": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")}
    lease = _flock_lease if data_dir.local else _object_lease
    with lease(data_dir, table, key, holder, poll_s, ttl_s, on_wait):
        yield holder


@contextmanager
def _flock_lease(data_dir, table, key, holder, poll_s, ttl_s, on_wait):
    import fcntl

    folder = data_dir.join(table, "_leases")
    os.makedirs(folder, exist_ok=True)
    fd = os.open(f"{folder}/{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told:
                    on_wait(_waiting(table, key, _read_holder(os.pread(fd, 4096, 0))))
                    told = True
                time.sleep(poll_s)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextmanager
def _object_lease(data_dir, table, key, holder, poll_s, ttl_s, on_wait):
    fs = data_dir.fsspec
    if fs is None:
        log.warning("%s: no exclusive create on %s://, so no lease: two runs of the same config at once "
                    "may both write the same rows", data_dir, data_dir.scheme)
        yield
        return
    path = data_dir.join(table, "_leases", f"{key}.json")
    told = False
    while not _create_exclusive(fs, path, holder):
        current = _read_holder(_cat(fs, path))
        if current and time.time() - current.get("refreshed", 0) > ttl_s:
            log.warning("lease %s of %s expired (no refresh for %.0f s): taking it over",
                        path, _describe(current), ttl_s)
            _rm(fs, path)
            continue
        if not told:
            on_wait(_waiting(table, key, current))
            told = True
        time.sleep(poll_s)
    stop = threading.Event()

    def refresh():
        while not stop.wait(ttl_s / 3):
            with fs.open(path, "wb") as fh:
                fh.write(json.dumps({**holder, "refreshed": time.time()}).encode())

    thread = threading.Thread(target=refresh, name=f"lease-{key}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        _rm(fs, path)


def _create_exclusive(fs, path: str, holder: dict) -> bool:
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    try:
        with fs.open(path, "xb") as fh:
            fh.write(json.dumps({**holder, "refreshed": time.time()}).encode())
        return True
    except FileExistsError:
        return False


def _cat(fs, path: str) -> bytes:
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        return b""


def _rm(fs, path: str) -> None:
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        pass


def _read_holder(blob: bytes) -> dict:
    try:
        holder = json.loads(blob.rstrip(b"\0") or b"{}")
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _waiting(table: str, key: str, holder: dict) -> str:
    who = _describe(holder) if holder else "another run"
    return (f"waiting: {who} is writing {table} under config {key}; this run goes on when it ends "
            "and does only the rows it leaves")
