"""One writer at a time per (table, config hash): a lease in the data dir.

Two runs of the same generator and config into one data dir (a scheduled run and a manual one) would
both plan the same rows and both write them. A run therefore holds a lease on
`<table>/_leases/<config hash>` from before it plans until it has committed: a second run waits for it,
saying who holds it, then plans — and finds the first run's records committed, so it does only what
is left. Runs of other configs, or into other tables, do not wait for each other.

- Local and shared POSIX filesystems: an exclusive `flock` on `<config hash>.lock`. The kernel (or the
  NFS lock manager) drops it when its holder dies, however it dies, so there is nothing stale to
  break. The file holds the holder's description, for the message of whoever waits.
- Object stores and other fsspec filesystems: `<config hash>.json` created only if absent (S3's
  conditional PUT, `If-None-Match: *`, through boto3 for `s3://`; fsspec's exclusive "xb" mode for
  the rest), refreshed every `ttl_s / 3` by a thread and deleted at the end. A lease whose refresh is
  older than `ttl_s` belonged to a dead run: a waiter deletes it and tries again. A store with no
  create-if-absent here (gs:// through pyarrow; s3:// without boto3) gets no lease, and a warning.

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
    objects = _exclusive_objects(data_dir)
    if objects is None:
        log.warning("%s: no create-if-absent on %s:// here (for s3:// install boto3), so no lease: two runs "
                    "of the same config at once may both write the same rows", data_dir, data_dir.scheme)
        yield
        return
    path = data_dir.join(table, "_leases", f"{key}.json")

    def record() -> bytes:
        return json.dumps({**holder, "refreshed": time.time()}).encode()

    told = False
    while not objects.create(path, record()):
        current = _read_holder(objects.read(path))
        if current and time.time() - current.get("refreshed", 0) > ttl_s:
            log.warning("lease %s of %s expired (no refresh for %.0f s): taking it over",
                        path, _describe(current), ttl_s)
            objects.delete(path)
            continue
        if not told:
            on_wait(_waiting(table, key, current))
            told = True
        time.sleep(poll_s)
    stop = threading.Event()

    def refresh():
        while not stop.wait(ttl_s / 3):
            objects.write(path, record())

    thread = threading.Thread(target=refresh, name=f"lease-{key}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        objects.delete(path)


def _exclusive_objects(data_dir):
    """Create-if-absent for the data dir's store: fsspec's "xb" mode, or S3's conditional PUT
    (If-None-Match: *) through boto3 for pyarrow's own S3 filesystem; None where neither is at hand."""
    if data_dir.fsspec is not None:
        return _FsspecObjects(data_dir.fsspec)
    if data_dir.scheme in ("s3", "s3a"):
        try:
            import boto3
        except ImportError:
            return None
        return _S3Objects(boto3.client("s3"))  # endpoint and credentials from the usual AWS_* environment
    return None


class _FsspecObjects:
    def __init__(self, fs):
        self.fs = fs

    def create(self, path: str, data: bytes) -> bool:
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        try:
            with self.fs.open(path, "xb") as fh:
                fh.write(data)
            return True
        except FileExistsError:
            return False

    def read(self, path: str) -> bytes:
        try:
            return self.fs.cat_file(path)
        except FileNotFoundError:
            return b""

    def write(self, path: str, data: bytes) -> None:
        self.fs.pipe_file(path, data)

    def delete(self, path: str) -> None:
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            pass


class _S3Objects:
    def __init__(self, client):
        self.client = client

    @staticmethod
    def _where(path: str) -> dict:
        bucket, key = path.split("/", 1)
        return {"Bucket": bucket, "Key": key}

    def create(self, path: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.put_object(**self._where(path), Body=data, IfNoneMatch="*")
            return True
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (409, 412):
                return False  # 412: it exists; 409: a concurrent conditional write is in progress
            raise

    def read(self, path: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(**self._where(path))["Body"].read()
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return b""
            raise

    def write(self, path: str, data: bytes) -> None:
        self.client.put_object(**self._where(path), Body=data)

    def delete(self, path: str) -> None:
        self.client.delete_object(**self._where(path))


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
